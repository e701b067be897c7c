//! The shared token agents present to the controller.

use rand::Rng;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Default token file, relative to the working directory.
pub const DEFAULT_PATH: &str = ".faultline/token";

/// Reads the token at `path`, creating a random one (mode 0600) when the file does not exist.
/// Returns the token and whether it was created.
pub fn load_or_create(path: &Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Ok((t.trim().to_string(), false)),
        Ok(_) => Err(std::io::Error::other(format!(
            "the token file {} is empty",
            path.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            let bytes: [u8; 24] = rand::rng().random();
            let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)?;
            f.write_all(token.as_bytes())?;
            f.write_all(b"\n")?;
            Ok((token, true))
        }
        Err(e) => Err(e),
    }
}

/// A random id with a prefix, e.g. `EXP3f9a2c4d5e6b`.
pub fn random_id(prefix: &str) -> String {
    let n: u64 = rand::rng().random();
    format!("{prefix}{:012x}", n & 0xffff_ffff_ffff)
}
