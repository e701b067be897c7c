//! The settings of `faultline serve`: flags and environment first, then an optional TOML
//! file, then the defaults.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why the configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// It is not the TOML expected.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// What is wrong, with the line.
        message: String,
    },
}

/// The settings, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The one port: agents, API, dashboard.
    pub listen: SocketAddr,
    /// An extra address for agents only.
    pub agents_listen: Option<SocketAddr>,
    /// The database URL.
    pub database: String,
    /// The agents' token file.
    pub token_file: PathBuf,
    /// The API's token file.
    pub api_token_file: PathBuf,
    /// Journals of running experiments.
    pub journals: PathBuf,
    /// Shutdown drain.
    pub drain: Duration,
    /// The agents' TLS certificate.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// Settings, each optional: one layer of flags, of a file, or the defaults.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Layer {
    /// The one port.
    pub listen: Option<SocketAddr>,
    /// An extra address for agents only.
    pub agents_listen: Option<SocketAddr>,
    /// The database URL.
    pub database: Option<String>,
    /// The agents' token file.
    pub token_file: Option<PathBuf>,
    /// The API's token file.
    pub api_token_file: Option<PathBuf>,
    /// Journals of running experiments.
    pub journals: Option<PathBuf>,
    /// Shutdown drain, ISO 8601.
    #[serde(default, deserialize_with = "iso_duration")]
    pub drain: Option<Duration>,
    /// The agents' TLS certificate.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

fn iso_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::duration::parse(&s).map(Some).map_err(serde::de::Error::custom)
}

impl Layer {
    /// Reads a TOML file.
    pub fn load(path: &Path) -> Result<Layer, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The settings: this layer's, else the defaults.
    pub fn resolve(self) -> Settings {
        Settings {
            listen: self.listen.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 7800))),
            agents_listen: self.agents_listen,
            database: self.database.unwrap_or_else(|| "sqlite:.faultline/faultline.db".into()),
            token_file: self.token_file.unwrap_or_else(|| crate::token::DEFAULT_PATH.into()),
            api_token_file: self.api_token_file.unwrap_or_else(|| ".faultline/api-token".into()),
            journals: self.journals.unwrap_or_else(|| ".faultline/journals".into()),
            drain: self.drain.unwrap_or(Duration::from_secs(60)),
            tls_cert: self.tls_cert,
            tls_key: self.tls_key,
        }
    }

    /// Each setting from this layer, else from `under`.
    pub fn over(self, under: Layer) -> Layer {
        Layer {
            listen: self.listen.or(under.listen),
            agents_listen: self.agents_listen.or(under.agents_listen),
            database: self.database.or(under.database),
            token_file: self.token_file.or(under.token_file),
            api_token_file: self.api_token_file.or(under.api_token_file),
            journals: self.journals.or(under.journals),
            drain: self.drain.or(under.drain),
            tls_cert: self.tls_cert.or(under.tls_cert),
            tls_key: self.tls_key.or(under.tls_key),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_file_which_wins_over_the_defaults() {
        let file: Layer =
            toml::from_str("listen = \"127.0.0.1:9000\"\ndatabase = \"postgres://f@db/f\"\ndrain = \"PT5S\"\n")
                .unwrap();
        let flags = Layer {
            listen: Some("127.0.0.1:9100".parse().unwrap()),
            ..Layer::default()
        };
        let s = flags.over(file).resolve();
        assert_eq!(s.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(s.database, "postgres://f@db/f");
        assert_eq!(s.drain, Duration::from_secs(5));
        assert_eq!(s.agents_listen, None, "agents use the one port unless told otherwise");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(toml::from_str::<Layer>("listn = \"x\"")
            .unwrap_err()
            .to_string()
            .contains("listn"));
        assert!(toml::from_str::<Layer>("drain = \"soon\"").is_err());
    }
}
