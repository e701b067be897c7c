//! TLS for the agents' endpoint (`wss://`): the controller's certificate and key, and the
//! self-signed CA and certificates `faultline topology up` makes for its hosts.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why TLS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file cannot be read or parsed.
    #[error("{flag} {path}: {why}")]
    File {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The certificate and key do not go together, or rustls refused them.
    #[error("--tls-cert/--tls-key: {0}")]
    Config(String),
    /// Generating or writing the topology's certificates failed.
    #[error("cannot make the topology's certificates in {dir}: {why}")]
    Generate {
        /// Where they were to be written.
        dir: PathBuf,
        /// What failed.
        why: String,
    },
}

/// The server configuration for a certificate chain and its key, both PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let file_err = |flag: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |why: String| TlsError::File { flag, path, why }
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err("--tls-cert", cert)(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err("--tls-cert", cert)(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err("--tls-cert", cert)("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("--tls-key", key)(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(config))
}

/// Where the TLS files of a token file's world live: `tls/` beside the token.
pub fn dir_beside(token_file: &Path) -> PathBuf {
    token_file.parent().unwrap_or(Path::new(".")).join("tls")
}

/// Files of a generated CA and controller certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generated {
    /// The CA certificate agents trust (`--ca`).
    pub ca: PathBuf,
    /// The controller's certificate (`--tls-cert`).
    pub cert: PathBuf,
    /// The controller's key (`--tls-key`), mode 0600.
    pub key: PathBuf,
}

impl Generated {
    /// Where [`generate`] puts its files in `dir`.
    pub fn in_dir(dir: &Path) -> Generated {
        Generated {
            ca: dir.join("ca.pem"),
            cert: dir.join("controller.pem"),
            key: dir.join("controller-key.pem"),
        }
    }

    /// Whether all three files exist.
    pub fn exist(&self) -> bool {
        [&self.ca, &self.cert, &self.key].iter().all(|p| p.is_file())
    }
}

/// Makes a self-signed CA and a controller certificate it signs, valid for `ips` and `names`,
/// in `dir` (kept when they already exist, so agents that trust the CA keep trusting it).
pub fn generate(dir: &Path, ips: &[IpAddr], names: &[&str]) -> Result<Generated, TlsError> {
    let files = Generated::in_dir(dir);
    if files.exist() {
        return Ok(files);
    }
    let gen_err = |why: String| TlsError::Generate {
        dir: dir.to_path_buf(),
        why,
    };
    let ca_key = rcgen::KeyPair::generate().map_err(|e| gen_err(e.to_string()))?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| gen_err(e.to_string()))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "faultline topology CA");
    ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key).map_err(|e| gen_err(e.to_string()))?;

    let key = rcgen::KeyPair::generate().map_err(|e| gen_err(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
        .map_err(|e| gen_err(e.to_string()))?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| rcgen::SanType::IpAddress(*ip)));
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "faultline controller");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params
        .signed_by(&key, &ca, &ca_key)
        .map_err(|e| gen_err(e.to_string()))?;

    std::fs::create_dir_all(dir).map_err(|e| gen_err(e.to_string()))?;
    std::fs::write(&files.ca, ca.pem()).map_err(|e| gen_err(e.to_string()))?;
    std::fs::write(&files.cert, cert.pem()).map_err(|e| gen_err(e.to_string()))?;
    write_private(&files.key, key.serialize_pem().as_bytes()).map_err(|e| gen_err(e.to_string()))?;
    Ok(files)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_files_load_as_a_server_config_and_are_kept() {
        let dir = std::env::temp_dir().join(format!("fl-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let files = generate(&dir, &["127.0.0.1".parse().unwrap()], &["localhost"]).unwrap();
        assert!(files.exist());
        server_config(&files.cert, &files.key).unwrap();
        let ca_before = std::fs::read(&files.ca).unwrap();
        generate(&dir, &[], &[]).unwrap();
        assert_eq!(std::fs::read(&files.ca).unwrap(), ca_before, "an existing CA is kept");
        let err = server_config(&files.ca, &dir.join("missing.pem"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--tls-key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
