//! Dialing the controller: TCP (and TLS for `wss://`), the websocket upgrade, then the first
//! half of the handshake (docs/wire.md): the agent's hello and the controller's proof of the
//! token. A peer that cannot prove the token learns nothing about this host and is never
//! obeyed. Failures back off exponentially with jitter, capped so a controller that starts
//! finds every agent within seconds; while nothing listens at the controller's address the
//! cap is much lower, so a `faultline run` started later finds a waiting agent at once.

use faultline_agent::auth::{self, Role};
use faultline_agent::faults::nft;
use faultline_agent::protocol::{decode, AgentMessage, ControllerMessage, Frame, AGENT_PATH, MAX_FRAME_BYTES};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::either::Either;
use tokio_util::sync::CancellationToken;

/// The byte stream under the websocket: plain TCP for `ws://`, TLS for `wss://`.
pub(crate) type Stream = Either<TcpStream, TlsStream<TcpStream>>;

/// The websocket to the controller.
pub(crate) type Ws = WebSocketStream<Stream>;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Cap of the backoff: a restarted controller sees every agent within about this long.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Cap of the backoff while the controller's address refuses connections (nothing listens):
/// a refused dial costs that host one reset and no controller any work, so the agent may
/// retry often, and a controller that starts finds it within this long.
const ABSENT_BACKOFF: Duration = Duration::from_millis(250);
/// How long the connection, the upgrade and the controller's proof may take together.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to a controller that proved the token; the agent registers next.
pub(crate) struct Connected {
    /// The websocket.
    pub(crate) ws: Ws,
    /// The controller's address, kept reachable by blackouts that keep the control plane.
    pub(crate) controller_ip: IpAddr,
    /// This end's address, registered when `--address` is not given.
    pub(crate) local_ip: IpAddr,
    /// This agent's proof of the token for this connection, sent with the registration.
    pub(crate) proof: String,
}

/// The endpoint URL: the controller address with the agent path when none is given.
pub(crate) fn endpoint(controller: &str) -> String {
    let has_path = controller
        .split_once("://")
        .is_some_and(|(_, rest)| rest.trim_end_matches('/').contains('/'));
    if has_path {
        controller.to_string()
    } else {
        format!("{}{AGENT_PATH}", controller.trim_end_matches('/'))
    }
}

/// Backoff before attempt `n` (0-based): exponential, capped at `cap`, with the upper half
/// jittered.
pub(crate) fn backoff(attempt: u32, cap: Duration, rng: &mut impl Rng) -> Duration {
    let base = FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(16)).min(cap);
    base / 2 + base.mul_f64(rng.random_range(0.0..0.5))
}

/// How the agent trusts a `wss://` controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trust {
    /// Certificates signed by the CA in this PEM file.
    Ca(std::path::PathBuf),
    /// Exactly the certificate with this SHA-256 fingerprint of its DER encoding.
    Pin([u8; 32]),
}

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    /// The CA file cannot be read or holds no certificate.
    #[error("--ca {path}: {why}")]
    Ca {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// `--ca` or `--pin-sha256` with a `ws://` controller, where nothing would be checked.
    #[error("--ca and --pin-sha256 check a TLS controller, but --controller is ws://; use wss://")]
    NotTls,
    /// `wss://` without a way to check the controller.
    #[error("--controller is wss://, so give --ca FILE or --pin-sha256 FINGERPRINT to check its certificate")]
    NoTrust,
}

/// The client configuration for `wss://`, checked at start-up so a bad file fails at once.
pub(crate) fn tls_config(trust: &Trust) -> Result<Arc<rustls::ClientConfig>, TlsSetupError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions");
    let config = match trust {
        Trust::Ca(path) => {
            let ca_err = |why: String| TlsSetupError::Ca {
                path: path.display().to_string(),
                why,
            };
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path).map_err(|e| ca_err(e.to_string()))? {
                let cert = cert.map_err(|e| ca_err(e.to_string()))?;
                roots.add(cert).map_err(|e| ca_err(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(ca_err("no certificate in the file".into()));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Pin(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                fingerprint: *fingerprint,
                provider,
            }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Parses a SHA-256 fingerprint: 64 hex digits, colons allowed (as `openssl x509 -fingerprint`
/// prints it).
pub(crate) fn parse_pin(s: &str) -> Result<[u8; 32], String> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex).map_err(|_| format!("`{s}` is not a hex SHA-256 fingerprint"))?;
    bytes
        .try_into()
        .map_err(|_| format!("`{s}` is not 32 bytes; give the SHA-256 fingerprint of the controller's certificate"))
}

/// Accepts exactly one certificate, by fingerprint; signatures are still checked, so the peer
/// must hold its private key.
#[derive(Debug)]
struct Pinned {
    fingerprint: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        let seen: [u8; 32] = sha2::Sha256::digest(end_entity.as_ref()).into();
        if seen == self.fingerprint {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the controller's certificate has fingerprint {}, not the pinned one",
                hex::encode(seen)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Where and how to dial.
#[derive(Clone)]
pub(crate) struct Dialer {
    /// The endpoint URL, `ws://` or `wss://`.
    pub(crate) url: String,
    /// The shared token; never sent.
    pub(crate) token: String,
    /// For `wss://`.
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
}

impl Dialer {
    /// Dials, after `first_wait`, until a controller proves the token or until cancelled.
    pub(crate) async fn connect(&self, cancel: &CancellationToken, first_wait: Duration) -> Option<Connected> {
        let mut rng = rand::rngs::SmallRng::from_os_rng();
        let mut attempt = 0u32;
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = tokio::time::sleep(first_wait) => {}
        }
        loop {
            let mut cap = MAX_BACKOFF;
            match tokio::time::timeout(DIAL_TIMEOUT, self.dial()).await {
                Ok(Ok(c)) => {
                    tracing::info!(controller = %self.url, "connected; the controller proved the token");
                    return Some(c);
                }
                Ok(Err(DialError::Impostor)) => tracing::error!(
                    controller = %self.url,
                    "the peer could not prove that it knows the token: not registering. Check that both \
                     sides use the same token file, or find what else answers on this address"
                ),
                Ok(Err(DialError::Refused(why))) => {
                    tracing::error!(controller = %self.url, reason = %why, "the controller refused this agent")
                }
                Ok(Err(DialError::Absent(e))) => {
                    cap = ABSENT_BACKOFF;
                    if attempt == 0 {
                        tracing::warn!(controller = %self.url, error = %e, "no controller listens yet; retrying");
                    } else {
                        tracing::debug!(controller = %self.url, error = %e, attempt, "retrying");
                    }
                }
                Ok(Err(e)) if attempt == 0 => {
                    tracing::warn!(controller = %self.url, error = %e, "cannot reach the controller; retrying")
                }
                Ok(Err(e)) => tracing::debug!(controller = %self.url, error = %e, attempt, "retrying"),
                Err(_) => tracing::debug!(controller = %self.url, attempt, "dial timed out; retrying"),
            }
            let wait = backoff(attempt, cap, &mut rng);
            attempt = attempt.saturating_add(1);
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn dial(&self) -> Result<Connected, DialError> {
        let request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| DialError::Url(e.to_string()))?;
        let uri = request.uri().clone();
        let host = uri.host().ok_or_else(|| DialError::Url("no host".into()))?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(DialError::Url("the controller URL starts with ws:// or wss://".into())),
        };
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        let tcp = connect_marked(&host, port).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                DialError::Absent(e.to_string())
            } else {
                DialError::Other(e.to_string())
            }
        })?;
        // Acks go out at once: small frames must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let controller_addr = tcp.peer_addr().map_err(|e| DialError::Other(e.to_string()))?;
        let controller_ip = controller_addr.ip();
        let dialed = auth::address(controller_addr);
        let local_ip = tcp.local_addr().map_err(|e| DialError::Other(e.to_string()))?.ip();
        let stream: Stream = if secure {
            let config = self
                .tls
                .clone()
                .ok_or(DialError::Url("wss:// needs --ca or --pin-sha256".into()))?;
            let name = ServerName::try_from(host.clone()).map_err(|e| DialError::Url(e.to_string()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| DialError::Tls(e.to_string()))?;
            Either::Right(tls)
        } else {
            Either::Left(tcp)
        };
        let config = WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => {
                    DialError::Other(format!("the controller answered HTTP {}", r.status()))
                }
                other => DialError::Other(other.to_string()),
            })?;

        let agent_nonce = auth::nonce();
        let hello = Frame::new(
            1,
            AgentMessage::Hello {
                nonce: agent_nonce.clone(),
                dialed: dialed.clone(),
            },
        );
        ws.send(Message::text(hello.encode()))
            .await
            .map_err(|e| DialError::Other(e.to_string()))?;
        let (controller_nonce, proof) = loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => match decode::<ControllerMessage>(t.as_str()) {
                    Ok(Frame {
                        msg: ControllerMessage::Challenge { nonce, proof },
                        ..
                    }) => break (nonce, proof),
                    Ok(Frame {
                        msg: ControllerMessage::Error { message, .. },
                        ..
                    }) => return Err(DialError::Refused(message)),
                    _ => return Err(DialError::Impostor),
                },
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(_)) => return Err(DialError::Impostor),
                Some(Err(e)) => return Err(DialError::Other(e.to_string())),
                None => return Err(DialError::Other("closed during the handshake".into())),
            }
        };
        let transcript = auth::Transcript {
            agent_nonce: &agent_nonce,
            controller_nonce: &controller_nonce,
            dialed: &dialed,
        };
        if !auth::well_formed(&controller_nonce)
            || controller_nonce == agent_nonce
            || !auth::verify(&self.token, Role::Controller, &transcript, &proof)
        {
            let _ = ws.close(None).await;
            return Err(DialError::Impostor);
        }
        Ok(Connected {
            ws,
            controller_ip,
            local_ip,
            proof: auth::prove(&self.token, Role::Agent, &transcript),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum DialError {
    #[error("bad controller URL: {0}")]
    Url(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("the peer did not prove the token")]
    Impostor,
    #[error("refused: {0}")]
    Refused(String),
    /// The controller's host refused the TCP connection: nothing listens there.
    #[error("{0}")]
    Absent(String),
    #[error("{0}")]
    Other(String),
}

/// Connects to `host:port` (each address it resolves to in turn) from a socket marked
/// [`nft::CONTROL_MARK`] before its first packet, so the agent's network faults let exactly
/// this connection through. Setting the mark needs CAP_NET_ADMIN, as nf_tables does: without
/// it there is no nf_tables fault to pass, and the connection goes unmarked.
async fn connect_marked(host: &str, port: u16) -> std::io::Result<TcpStream> {
    use std::os::fd::AsRawFd;
    let mut last = std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} resolves to no address"));
    for addr in tokio::net::lookup_host((host, port)).await? {
        let socket = if addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        let mark = nft::CONTROL_MARK;
        // SAFETY: setsockopt on a socket we own, with a c_uint of the size given.
        let set = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_MARK,
                (&mark as *const u32).cast(),
                std::mem::size_of::<u32>() as libc::socklen_t,
            )
        };
        if set != 0 && nft::has_net_admin() {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot mark the control connection; a network fault may slow it down");
        }
        match socket.connect(addr).await {
            Ok(tcp) => return Ok(tcp),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The TCP socket under the websocket.
fn tcp(ws: &Ws) -> &TcpStream {
    match ws.get_ref() {
        Either::Left(tcp) => tcp,
        Either::Right(tls) => tls.get_ref().0,
    }
}

/// Waits (up to 200 ms) until the kernel has sent everything written to the connection,
/// so a blackout installed next cannot swallow it.
pub(crate) async fn wait_sent(ws: &Ws) {
    use std::os::fd::AsRawFd;
    const SIOCOUTQNSD: libc::c_ulong = 0x894B;
    let fd = tcp(ws).as_raw_fd();
    for _ in 0..200 {
        let mut unsent: libc::c_int = 0;
        // SAFETY: SIOCOUTQNSD writes one int for a TCP socket we own.
        if unsafe { libc::ioctl(fd, SIOCOUTQNSD, &mut unsent) } != 0 || unsent == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Reads the trust settings of the command line into a TLS configuration, when `url` needs one.
pub(crate) fn tls_for(
    url: &str,
    ca: Option<&Path>,
    pin: Option<[u8; 32]>,
) -> Result<Option<Arc<rustls::ClientConfig>>, TlsSetupError> {
    let trust = match (ca, pin) {
        (_, Some(pin)) => Some(Trust::Pin(pin)),
        (Some(ca), None) => Some(Trust::Ca(ca.to_path_buf())),
        (None, None) => None,
    };
    match (url.starts_with("wss://"), trust) {
        (true, None) => Err(TlsSetupError::NoTrust),
        (true, Some(t)) => tls_config(&t).map(Some),
        // A certificate check the operator asked for must not be dropped without a word.
        (false, Some(_)) => Err(TlsSetupError::NotTls),
        (false, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let first = backoff(0, MAX_BACKOFF, &mut rng);
        assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
        for n in 5..40 {
            let b = backoff(n, MAX_BACKOFF, &mut rng);
            assert!(b >= MAX_BACKOFF / 2 && b <= MAX_BACKOFF, "{b:?}");
            let absent = backoff(n, ABSENT_BACKOFF, &mut rng);
            assert!(absent >= ABSENT_BACKOFF / 2 && absent <= ABSENT_BACKOFF, "{absent:?}");
        }
        let spread: std::collections::BTreeSet<_> = (0..20).map(|_| backoff(10, MAX_BACKOFF, &mut rng)).collect();
        assert!(spread.len() > 10, "jitter spreads reconnects");
    }

    #[test]
    fn endpoint_adds_the_agent_path() {
        assert_eq!(endpoint("ws://10.0.0.1:7700"), "ws://10.0.0.1:7700/v1/agents");
        assert_eq!(endpoint("ws://10.0.0.1:7700/"), "ws://10.0.0.1:7700/v1/agents");
        assert_eq!(endpoint("ws://h:1/custom"), "ws://h:1/custom");
    }

    #[test]
    fn pins_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_pin(&hex), Ok([0xab; 32]));
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_pin(&colons), Ok([0xab; 32]));
        assert!(parse_pin("abcd").is_err());
        assert!(parse_pin("zz").is_err());
    }
}
