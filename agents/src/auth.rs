//! Mutual authentication of an agent and its controller (docs/wire.md, "Handshake").
//!
//! Both sides know the shared token; neither ever sends it. Each side sends a fresh random
//! nonce, and each proves knowledge of the token with an HMAC-SHA256 over both nonces, the
//! controller address the agent dialed and its own role, so a proof cannot be replayed on
//! another connection, reflected back as the other side's, nor relayed from a controller at
//! another address. The controller proves itself first: an agent tells nothing about its
//! host to a peer that has not.

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

/// Version of the handshake; part of every proof, so proofs of two versions never match.
pub const HANDSHAKE_VERSION: u32 = 2;

/// Bytes in a nonce.
pub const NONCE_BYTES: usize = 32;

/// Which side a proof is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The controller, answering the agent's hello.
    Controller,
    /// The agent, registering.
    Agent,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Controller => "controller",
            Role::Agent => "agent",
        }
    }
}

/// A fresh nonce from the operating system's generator, hex-encoded.
pub fn nonce() -> String {
    let mut bytes = [0u8; NONCE_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .expect("the operating system's random generator is available");
    hex::encode(bytes)
}

/// What both proofs of one connection are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transcript<'a> {
    /// The agent's nonce (hex).
    pub agent_nonce: &'a str,
    /// The controller's nonce (hex).
    pub controller_nonce: &'a str,
    /// The controller's socket address as the agent dialed it, e.g. `10.42.0.1:7700`: a
    /// challenge obtained from a controller at another address does not verify.
    pub dialed: &'a str,
}

fn mac(token: &str, role: Role, t: &Transcript<'_>) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    // Length-prefixed fields: no two different inputs give the same message.
    for part in [
        format!("faultline-auth-v{HANDSHAKE_VERSION}").as_str(),
        role.label(),
        t.agent_nonce,
        t.controller_nonce,
        t.dialed,
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

/// The proof `role` sends for this transcript, hex-encoded.
pub fn prove(token: &str, role: Role, t: &Transcript<'_>) -> String {
    hex::encode(mac(token, role, t).finalize().into_bytes())
}

/// Whether `proof` is `role`'s proof for this transcript; compared in constant time.
pub fn verify(token: &str, role: Role, t: &Transcript<'_>, proof: &str) -> bool {
    let Ok(bytes) = hex::decode(proof) else {
        return false;
    };
    mac(token, role, t).verify_slice(&bytes).is_ok()
}

/// A socket address as both sides write it in a [`Transcript`]: IPv4-mapped IPv6 addresses as
/// plain IPv4, so a dual-stack listener and an IPv4 agent agree.
pub fn address(addr: std::net::SocketAddr) -> String {
    std::net::SocketAddr::new(addr.ip().to_canonical(), addr.port()).to_string()
}

/// Whether a nonce has the right shape: hex of [`NONCE_BYTES`] bytes.
pub fn well_formed(nonce: &str) -> bool {
    nonce.len() == NONCE_BYTES * 2 && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t<'a>(a: &'a str, c: &'a str, dialed: &'a str) -> Transcript<'a> {
        Transcript {
            agent_nonce: a,
            controller_nonce: c,
            dialed,
        }
    }

    #[test]
    fn a_proof_verifies_only_for_its_token_role_nonces_and_address() {
        let (a, c, other) = (nonce(), nonce(), nonce());
        assert!(well_formed(&a) && a != c);
        let here = "10.42.0.1:7700";
        let p = prove("secret", Role::Controller, &t(&a, &c, here));
        assert!(verify("secret", Role::Controller, &t(&a, &c, here), &p));
        assert!(
            !verify("other", Role::Controller, &t(&a, &c, here), &p),
            "another token"
        );
        assert!(
            !verify("secret", Role::Agent, &t(&a, &c, here), &p),
            "reflected as the agent's"
        );
        assert!(
            !verify("secret", Role::Controller, &t(&c, &a, here), &p),
            "nonces swapped"
        );
        assert!(
            !verify("secret", Role::Controller, &t(&a, &other, here), &p),
            "another connection"
        );
        assert!(
            !verify("secret", Role::Controller, &t(&a, &c, "10.42.0.9:7700"), &p),
            "relayed from a controller at another address"
        );
        assert!(!verify("secret", Role::Controller, &t(&a, &c, here), "zz"), "not hex");
        assert!(!verify("secret", Role::Controller, &t(&a, &c, here), ""), "empty");
    }

    #[test]
    fn the_token_does_not_appear_in_a_proof() {
        let token = "0123456789abcdef";
        let (a, c) = (nonce(), nonce());
        let p = prove(token, Role::Agent, &t(&a, &c, "127.0.0.1:1"));
        assert!(!p.contains(token));
    }

    #[test]
    fn mapped_addresses_are_written_as_ipv4() {
        let mapped: std::net::SocketAddr = "[::ffff:10.42.0.1]:7700".parse().unwrap();
        assert_eq!(address(mapped), "10.42.0.1:7700");
        let v6: std::net::SocketAddr = "[2001:db8::1]:7700".parse().unwrap();
        assert_eq!(address(v6), "[2001:db8::1]:7700");
    }
}
