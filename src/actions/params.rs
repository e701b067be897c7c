//! Reads and checks one action's parameters against its catalog entry.

use super::{Kind, Param};
use crate::diagnostic::did_you_mean;
use crate::diagnostic::{join, Diagnostic, Origin};
use crate::duration;
use faultline_agent::faults::kill::{SIGNALS, STOP_SIGNALS};
use faultline_agent::limits;
use ipnet::IpNet;
use serde_json::{Map, Value};
use std::net::IpAddr;
use std::time::Duration;

/// One action's `parameters`, with the diagnostics its checks add to.
pub struct Params<'a> {
    diags: &'a mut Vec<Diagnostic>,
    /// JSON pointer of the `parameters` object.
    base: String,
    params: &'a Map<String, Value>,
    /// What is accepted but has no effect here, for `validate` and `plan` to show.
    warnings: Vec<Diagnostic>,
}

impl<'a> Params<'a> {
    /// Reads `params`, found at the JSON pointer `base`; errors go to `diags`.
    pub fn new(diags: &'a mut Vec<Diagnostic>, base: String, params: &'a Map<String, Value>) -> Self {
        Params {
            diags,
            base,
            params,
            warnings: Vec::new(),
        }
    }

    /// Reports an error about the key `key` (the whole object when empty).
    pub fn fail(&mut self, key: &str, message: String, hint: Option<String>) {
        let pointer = if key.is_empty() {
            self.base.clone()
        } else {
            join(&self.base, key)
        };
        self.diags
            .push(Diagnostic::at(Origin::Template, pointer, message).maybe_hint(hint));
    }

    /// Notes something accepted that has no effect here, about the key `key`.
    pub fn warn(&mut self, key: &str, message: String) {
        self.warnings
            .push(Diagnostic::at(Origin::Template, join(&self.base, key), message));
    }

    /// The warnings gathered so far.
    pub fn into_warnings(self) -> Vec<Diagnostic> {
        self.warnings
    }

    /// Whether the template gives this key.
    pub fn has(&self, key: &str) -> bool {
        self.params.contains_key(key)
    }

    /// The parameter's text, when given as a string.
    pub fn text(&self, key: &str) -> Option<&'a str> {
        self.params.get(key).and_then(Value::as_str)
    }

    /// Checks a parameter on its own, whatever its kind; `true` when it is acceptable.
    pub fn check(&mut self, p: &Param) -> bool {
        match p.kind {
            Kind::Duration => self.duration().is_some(),
            Kind::DurationFrom(_) => self.duration_from(p).is_some(),
            Kind::Integer(_) => self.int(p).is_some(),
            Kind::Number(_) => self.number(p).is_some(),
            Kind::Bool => self.flag(p).is_some(),
            Kind::ProcessName => self.process_name(p).is_some(),
            Kind::Signal => self.signal(p).is_some(),
            Kind::Text => self.text(p.name).is_some(),
            Kind::Path => self.path(p).is_some(),
            Kind::Choice(_) => self.choice(p).is_some(),
            Kind::Sources => self.sources(p).is_some(),
        }
    }

    /// A process name (a kill's or a pause's): a name, not a path.
    pub fn process_name(&mut self, p: &Param) -> Option<String> {
        let key = p.name;
        let process_name = self.text(key)?.to_string();
        if process_name.contains('/') {
            self.fail(
                key,
                format!("`{process_name}` contains '/'"),
                Some("give the process name (e.g. nginx), not a path".into()),
            );
            return None;
        }
        let (min, max) = limits::PROCESS_NAME_BYTES;
        if !(min..=max).contains(&(process_name.len() as u64)) {
            self.fail(
                key,
                format!("{key} is {} bytes long; it must be {min}-{max}", process_name.len()),
                None,
            );
            return None;
        }
        Some(process_name)
    }

    /// An absolute directory path (its default when absent), checked as the agent checks it.
    pub fn path(&mut self, p: &Param) -> Option<String> {
        let key = p.name;
        let path = self.text(key).or(p.default)?.to_string();
        if let Err(e) = limits::path_ok(&path) {
            self.fail(
                key,
                format!("`{path}`: {}", e.limit),
                Some("give a directory on the filesystem to use, e.g. /var/tmp".into()),
            );
            return None;
        }
        Some(path)
    }

    /// A signal name, `SIG` added when missing; never a stop signal.
    pub fn signal(&mut self, p: &Param) -> Option<String> {
        let key = p.name;
        let signal = self.text(key).or(p.default)?;
        let normalized = if signal.starts_with("SIG") {
            signal.to_string()
        } else {
            format!("SIG{signal}")
        };
        if STOP_SIGNALS.contains(&normalized.as_str()) {
            self.fail(
                key,
                format!("a kill does not send {normalized}: nothing would ever resume the process"),
                Some("use faultline:process:pause with a duration; it resumes what it stops".into()),
            );
            None
        } else if !SIGNALS.contains(&normalized.as_str()) {
            let hint = did_you_mean(signal, SIGNALS)
                .map(|m| format!("did you mean `{m}`?"))
                .unwrap_or_else(|| format!("known signals: {}", SIGNALS.join(", ")));
            self.fail(key, format!("`{signal}` is not a known signal"), Some(hint));
            None
        } else {
            Some(normalized)
        }
    }

    /// A whole number in the parameter's range; its default when absent.
    pub fn int(&mut self, p: &Param) -> Option<u64> {
        let Kind::Integer((min, max)) = p.kind else {
            unreachable!("{} is not an integer parameter", p.name)
        };
        let key = p.name;
        let text = self.text(key).or(p.default)?;
        match text.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            Ok(n) => {
                self.fail(key, format!("{key} is {n}; it must be {min}-{max}"), None);
                None
            }
            Err(_) => {
                self.fail(
                    key,
                    format!("{key} `{text}` is not a whole number"),
                    Some("write a whole number such as \"50\"".into()),
                );
                None
            }
        }
    }

    /// A decimal number in the parameter's range; its default when absent.
    pub fn number(&mut self, p: &Param) -> Option<f64> {
        let Kind::Number((min, max)) = p.kind else {
            unreachable!("{} is not a number parameter", p.name)
        };
        let key = p.name;
        let text = self.text(key).or(p.default)?;
        match text.parse::<f64>() {
            Ok(n) if (min..=max).contains(&n) => Some(n),
            _ => {
                self.fail(
                    key,
                    format!("{key} `{text}` must be a number from {min} to {max}"),
                    None,
                );
                None
            }
        }
    }

    /// One of the parameter's words; its default when absent.
    pub fn choice(&mut self, p: &Param) -> Option<&'static str> {
        let Kind::Choice(words) = p.kind else {
            unreachable!("{} is not a choice parameter", p.name)
        };
        let text = self.text(p.name).or(p.default)?;
        let found = words.iter().copied().find(|w| *w == text);
        if found.is_none() {
            self.fail(
                p.name,
                format!("{} `{text}` is not one of {}", p.name, words.join(", ")),
                None,
            );
        }
        found
    }

    /// A `sources` list: the networks it names, and the AZs whose hosts it names; both
    /// empty for `ALL` or when absent.
    pub fn sources(&mut self, p: &Param) -> Option<(Vec<IpNet>, Vec<String>)> {
        let key = p.name;
        let Some(text) = self.text(key).or(p.default) else {
            return Some((Vec::new(), Vec::new()));
        };
        let entries: Vec<&str> = text.split(',').map(str::trim).collect();
        if entries == ["ALL"] {
            return Some((Vec::new(), Vec::new()));
        }
        let (mut nets, mut azs, mut ok) = (Vec::new(), Vec::new(), true);
        for e in &entries {
            if let Ok(net) = e.parse::<IpNet>() {
                nets.push(net);
            } else if let Ok(ip) = e.parse::<IpAddr>() {
                nets.push(IpNet::from(ip));
            } else if *e == "ALL" {
                ok = false;
                self.fail(
                    key,
                    "ALL is the whole list or nothing".into(),
                    Some(format!("write \"ALL\" alone, or drop it from `{text}`")),
                );
            } else if !e.is_empty()
                && e.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && e.chars().any(|c| c.is_ascii_alphabetic())
            {
                azs.push(e.to_string());
            } else {
                ok = false;
                self.fail(
                    key,
                    format!("{key}: `{e}` is not an address, a CIDR or an AZ name"),
                    Some("write e.g. \"10.0.0.5, 10.1.0.0/16, az-b\" or \"ALL\"".into()),
                );
            }
        }
        let most = limits::SOURCES.1;
        if entries.len() as u64 > most {
            ok = false;
            self.fail(
                key,
                format!("{key} lists {} entries; at most {most}", entries.len()),
                None,
            );
        }
        ok.then_some((nets, azs))
    }

    /// `true` or `false`; its default when absent.
    pub fn flag(&mut self, p: &Param) -> Option<bool> {
        match self.text(p.name).or(p.default)? {
            "true" => Some(true),
            "false" => Some(false),
            other => {
                self.fail(
                    p.name,
                    format!("`{other}` is not a boolean"),
                    Some("write \"true\" or \"false\"".into()),
                );
                None
            }
        }
    }

    /// The `duration` parameter.
    pub fn duration(&mut self) -> Option<Duration> {
        let text = self.text("duration")?;
        match duration::parse(text) {
            Ok(d) if d.is_zero() => {
                self.fail(
                    "duration",
                    "duration must be longer than zero".into(),
                    Some("write e.g. PT30S".into()),
                );
                None
            }
            Ok(d) if d > limits::MAX_DURATION => {
                self.fail(
                    "duration",
                    format!("duration {text} is longer than the 12 hour limit"),
                    Some("split it into several actions chained with startAfter".into()),
                );
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.fail("duration", e.to_string(), None);
                None
            }
        }
    }

    /// A duration parameter with a lower bound, such as FIS's PT1M–PT12H.
    pub fn duration_from(&mut self, p: &Param) -> Option<Duration> {
        let Kind::DurationFrom(min) = p.kind else {
            unreachable!("{} is not a bounded duration parameter", p.name)
        };
        let key = p.name;
        let text = self.text(key).or(p.default)?;
        match duration::parse(text) {
            Ok(d) if d < Duration::from_secs(min) || d > limits::MAX_DURATION => {
                self.fail(key, format!("{key} is {text}; it must be {}", p.kind.range()), None);
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.fail(key, e.to_string(), None);
                None
            }
        }
    }
}
