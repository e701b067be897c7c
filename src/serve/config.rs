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
    /// Templates from the API may use `command` alarm sources.
    pub allow_command_alarms: bool,
    /// What probes may fetch (`--probe-allow`); empty: the default, loopback and the fleet.
    pub probe_allow: Vec<String>,
    /// With TLS, the networks whose agents may dial plain `ws://` (empty: any).
    pub allow_plaintext_agents: Option<Vec<ipnet::IpNet>>,
    /// Connection cap of the port.
    pub max_connections: usize,
    /// The cap's share of one address.
    pub max_connections_per_address: usize,
    /// Time a request's headers may take.
    pub header_timeout: Duration,
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
    /// Templates from the API may use `command` alarm sources.
    pub allow_command_alarms: Option<bool>,
    /// What probes may fetch.
    pub probe_allow: Option<Vec<String>>,
    /// With TLS, the networks whose agents may dial plain `ws://` (empty: any).
    pub allow_plaintext_agents: Option<Vec<ipnet::IpNet>>,
    /// Connection cap of the port.
    pub max_connections: Option<usize>,
    /// The cap's share of one address.
    pub max_connections_per_address: Option<usize>,
    /// Time a request's headers may take, ISO 8601.
    #[serde(default, deserialize_with = "iso_duration")]
    pub header_timeout: Option<Duration>,
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
        let limits = super::port::Limits::default();
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
            allow_command_alarms: self.allow_command_alarms.unwrap_or(false),
            probe_allow: self.probe_allow.unwrap_or_default(),
            allow_plaintext_agents: self.allow_plaintext_agents,
            max_connections: self.max_connections.unwrap_or(limits.connections),
            max_connections_per_address: self.max_connections_per_address.unwrap_or(limits.per_address),
            header_timeout: self.header_timeout.unwrap_or(limits.header_timeout),
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
            allow_command_alarms: self.allow_command_alarms.or(under.allow_command_alarms),
            probe_allow: self.probe_allow.or(under.probe_allow),
            allow_plaintext_agents: self.allow_plaintext_agents.or(under.allow_plaintext_agents),
            max_connections: self.max_connections.or(under.max_connections),
            max_connections_per_address: self.max_connections_per_address.or(under.max_connections_per_address),
            header_timeout: self.header_timeout.or(under.header_timeout),
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
        assert!(!s.allow_command_alarms, "no command from the API unless told");
        assert!(s.probe_allow.is_empty(), "the default list");
        let file: Layer = toml::from_str(
            "allow-command-alarms = true\nprobe-allow = [\"10.0.0.0/8\"]\nallow-plaintext-agents = [\"127.0.0.0/8\"]\nheader-timeout = \"PT3S\"\n",
        )
        .unwrap();
        let s = Layer::default().over(file).resolve();
        assert!(s.allow_command_alarms);
        assert_eq!(s.probe_allow, ["10.0.0.0/8"]);
        assert_eq!(s.allow_plaintext_agents, Some(vec!["127.0.0.0/8".parse().unwrap()]));
        assert_eq!(s.header_timeout, Duration::from_secs(3));
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
