//! Mutual authentication of an agent and its controller (docs/wire.md, "Handshake").
//!
//! Both sides know the shared token; neither ever sends it. Each side sends a fresh random
//! nonce, and each proves knowledge of the token with an HMAC-SHA256 over both nonces and its
//! own role, so a proof cannot be replayed on another connection nor reflected back as the
//! other side's. The controller proves itself first: an agent tells nothing about its host
//! to a peer that has not.

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use sha2::Sha256;

/// Version of the handshake; part of every proof, so proofs of two versions never match.
pub const HANDSHAKE_VERSION: u32 = 1;

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

fn mac(token: &str, role: Role, agent_nonce: &str, controller_nonce: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("HMAC takes keys of any length");
    // Length-prefixed fields: no two different inputs give the same message.
    for part in [
        format!("faultline-auth-v{HANDSHAKE_VERSION}").as_str(),
        role.label(),
        agent_nonce,
        controller_nonce,
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    mac
}

/// The proof `role` sends for this pair of nonces, hex-encoded.
pub fn prove(token: &str, role: Role, agent_nonce: &str, controller_nonce: &str) -> String {
    hex::encode(mac(token, role, agent_nonce, controller_nonce).finalize().into_bytes())
}

/// Whether `proof` is `role`'s proof for this pair of nonces; compared in constant time.
pub fn verify(token: &str, role: Role, agent_nonce: &str, controller_nonce: &str, proof: &str) -> bool {
    let Ok(bytes) = hex::decode(proof) else {
        return false;
    };
    mac(token, role, agent_nonce, controller_nonce)
        .verify_slice(&bytes)
        .is_ok()
}

/// Whether a nonce has the right shape: hex of [`NONCE_BYTES`] bytes.
pub fn well_formed(nonce: &str) -> bool {
    nonce.len() == NONCE_BYTES * 2 && nonce.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_for_its_token_role_and_nonces() {
        let (a, c) = (nonce(), nonce());
        assert!(well_formed(&a) && a != c);
        let p = prove("secret", Role::Controller, &a, &c);
        assert!(verify("secret", Role::Controller, &a, &c, &p));
        assert!(!verify("other", Role::Controller, &a, &c, &p), "another token");
        assert!(!verify("secret", Role::Agent, &a, &c, &p), "reflected as the agent's");
        assert!(!verify("secret", Role::Controller, &c, &a, &p), "nonces swapped");
        assert!(
            !verify("secret", Role::Controller, &a, &nonce(), &p),
            "another connection"
        );
        assert!(!verify("secret", Role::Controller, &a, &c, "zz"), "not hex");
        assert!(!verify("secret", Role::Controller, &a, &c, ""), "empty");
    }

    #[test]
    fn the_token_does_not_appear_in_a_proof() {
        let token = "0123456789abcdef";
        let p = prove(token, Role::Agent, &nonce(), &nonce());
        assert!(!p.contains(token));
    }
}
