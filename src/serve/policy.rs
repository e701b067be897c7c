//! What a template that arrives over the API may make the server do: run no command (unless
//! `--allow-command-alarms`), and fetch only the addresses `--probe-allow` permits (by
//! default loopback and the fleet's own hosts). An API token is not a shell, nor a proxy.

use crate::template::{Experiment, MetricSource};
use faultline_agent::protocol::HostDescription;
use ipnet::IpNet;
use std::net::IpAddr;

/// The keyword of `--probe-allow` for 127.0.0.0/8, ::1 and `localhost`.
pub const LOOPBACK: &str = "loopback";
/// The keyword of `--probe-allow` for the addresses of the fleet's connected hosts.
pub const FLEET: &str = "fleet";

/// One entry of `--probe-allow`.
#[derive(Debug, Clone, PartialEq)]
enum Allowed {
    Loopback,
    Fleet,
    Net(IpNet),
    /// A host name, lower case: allowed as written, whatever it resolves to.
    Name(String),
}

/// What the server permits of templates that arrive over the API.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `--allow-command-alarms`: `command` alarm sources may run on the server.
    pub allow_commands: bool,
    allowed: Vec<Allowed>,
}

impl Default for Policy {
    /// No command; probes of loopback and of the fleet's hosts only.
    fn default() -> Self {
        Policy {
            allow_commands: false,
            allowed: vec![Allowed::Loopback, Allowed::Fleet],
        }
    }
}

/// Why a `--probe-allow` entry cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("--probe-allow {0:?}: expected a CIDR (10.0.0.0/8), an address, a host name, `loopback` or `fleet`")]
pub struct ProbeAllowError(String);

impl Policy {
    /// The policy of `--allow-command-alarms` and `--probe-allow` (none given: the default
    /// list, `loopback,fleet`).
    pub fn new(allow_commands: bool, probe_allow: &[String]) -> Result<Policy, ProbeAllowError> {
        if probe_allow.is_empty() {
            return Ok(Policy {
                allow_commands,
                ..Policy::default()
            });
        }
        let allowed = probe_allow
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| match e {
                LOOPBACK => Ok(Allowed::Loopback),
                FLEET => Ok(Allowed::Fleet),
                _ => {
                    if let Ok(net) = e.parse::<IpNet>() {
                        Ok(Allowed::Net(net))
                    } else if let Ok(ip) = e.parse::<IpAddr>() {
                        Ok(Allowed::Net(IpNet::from(ip)))
                    } else if is_host_name(e) {
                        Ok(Allowed::Name(e.to_ascii_lowercase()))
                    } else {
                        Err(ProbeAllowError(e.to_string()))
                    }
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy {
            allow_commands,
            allowed,
        })
    }

    /// Every reason the server may not run `experiment` for a caller of the API, given the
    /// hosts connected now; none when it may.
    pub fn refusals(&self, experiment: &Experiment, fleet: &[HostDescription]) -> Vec<String> {
        let mut refused = Vec::new();
        for (name, alarm) in &experiment.alarms {
            match &alarm.source {
                MetricSource::Command { run, .. } if !self.allow_commands => refused.push(format!(
                    "alarm {name} (/alarms/{name}) runs `{}` on the server: a template that arrives over the API runs no command unless the server is started with --allow-command-alarms",
                    run.first().map(String::as_str).unwrap_or_default()
                )),
                MetricSource::Command { .. } => {}
                MetricSource::Http { url, .. } | MetricSource::Prometheus { url, .. } => {
                    if let Err(why) = self.may_fetch(url, fleet) {
                        refused.push(format!("alarm {name} (/alarms/{name}) probes {url}: {why}"));
                    }
                }
            }
        }
        if let Some(ux) = &experiment.user_experience {
            if let Err(why) = self.may_fetch(&ux.url, fleet) {
                refused.push(format!("userExperience (/userExperience/url) reads {}: {why}", ux.url));
            }
        }
        refused
    }

    /// Whether the server may fetch `url`, or why not (naming the flag that would allow it).
    fn may_fetch(&self, url: &str, fleet: &[HostDescription]) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
        let Some(written) = parsed.host_str() else {
            return Err("the URL names no host".into());
        };
        let host = match written.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(written.trim_end_matches('.').to_ascii_lowercase()),
        };
        let allowed = self.allowed.iter().any(|a| match (a, &host) {
            (Allowed::Loopback, Host::Ip(ip)) => ip.is_loopback(),
            (Allowed::Loopback, Host::Name(n)) => n == "localhost",
            (Allowed::Fleet, h) => fleet.iter().any(|f| h.is(&f.address)),
            (Allowed::Net(net), Host::Ip(ip)) => net.contains(ip),
            (Allowed::Name(name), Host::Name(n)) => name == n,
            _ => false,
        });
        if allowed {
            return Ok(());
        }
        let shown = match &host {
            Host::Ip(ip) => ip.to_string(),
            Host::Name(n) => n.clone(),
        };
        Err(format!(
            "{shown} is not in the server's --probe-allow list ({}); start the server with --probe-allow {},{shown} to allow it",
            self.describe(),
            self.describe()
        ))
    }

    /// The list as `--probe-allow` would give it.
    fn describe(&self) -> String {
        let entries: Vec<String> = self
            .allowed
            .iter()
            .map(|a| match a {
                Allowed::Loopback => LOOPBACK.to_string(),
                Allowed::Fleet => FLEET.to_string(),
                Allowed::Net(n) => n.to_string(),
                Allowed::Name(n) => n.clone(),
            })
            .collect();
        entries.join(",")
    }
}

/// A URL's host: an address, or a name as written (never resolved: what a name resolves to
/// may change between the check and the fetch).
enum Host {
    Ip(IpAddr),
    Name(String),
}

impl Host {
    /// Whether this is the host a fleet member gives as its address (an IP or a name).
    fn is(&self, address: &str) -> bool {
        let address = address.trim();
        match self {
            Host::Ip(ip) => address.parse::<IpAddr>().is_ok_and(|a| a == *ip),
            Host::Name(n) => !address.is_empty() && address.eq_ignore_ascii_case(n),
        }
    }
}

fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn experiment(alarm_metric: serde_json::Value) -> Experiment {
        let t = json!({
            "description": "probe",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT1S" } } },
            "alarms": { "A": {
                "metric": alarm_metric,
                "threshold": 0, "comparisonOperator": "GreaterThanThreshold",
                "period": "PT5S", "evaluationPeriods": 1
            } },
            "stopConditions": [{ "source": "faultline:alarm", "value": "A" }]
        });
        crate::template::validate(&t, None).unwrap_or_else(|d| panic!("{d:?}"))
    }

    fn host(address: &str) -> HostDescription {
        serde_json::from_value(
            json!({ "HostId": "h", "Placement": { "AvailabilityZone": "az-a" }, "Address": address }),
        )
        .unwrap()
    }

    fn http(url: &str) -> Experiment {
        experiment(json!({ "http": { "url": url }, "statistic": "errorRate" }))
    }

    #[test]
    fn commands_need_the_flag() {
        let cmd = experiment(json!({ "command": { "run": ["id"] }, "statistic": "exitStatus" }));
        let refused = Policy::default().refusals(&cmd, &[]);
        assert_eq!(refused.len(), 1, "{refused:?}");
        assert!(refused[0].contains("--allow-command-alarms"), "{refused:?}");
        assert!(Policy::new(true, &[]).unwrap().refusals(&cmd, &[]).is_empty());
    }

    #[test]
    fn probes_reach_loopback_the_fleet_and_what_the_flag_lists() {
        let default = Policy::default();
        assert!(default.refusals(&http("http://127.0.0.1:8080/"), &[]).is_empty());
        assert!(default.refusals(&http("http://localhost/"), &[]).is_empty());
        assert!(default.refusals(&http("http://[::1]/"), &[]).is_empty());
        let far = http("http://169.254.169.254/latest/meta-data/");
        let refused = default.refusals(&far, &[]);
        assert!(
            refused[0].contains("--probe-allow loopback,fleet,169.254.169.254"),
            "{refused:?}"
        );
        assert!(default
            .refusals(&http("http://10.0.0.7/"), &[host("10.0.0.7")])
            .is_empty());
        assert!(!default
            .refusals(&http("http://10.0.0.8/"), &[host("10.0.0.7")])
            .is_empty());
        let listed = Policy::new(false, &["10.1.0.0/16".into(), "prom.internal".into()]).unwrap();
        assert!(listed.refusals(&http("http://10.1.2.3/"), &[]).is_empty());
        assert!(listed.refusals(&http("http://PROM.internal:9090/"), &[]).is_empty());
        assert!(
            !listed.refusals(&http("http://127.0.0.1/"), &[]).is_empty(),
            "the list replaces the default"
        );
        assert!(!listed.refusals(&http("http://prom.internal.evil/"), &[]).is_empty());
        assert!(Policy::new(false, &["10.0.0.0/33".into()]).is_err());
    }
}
