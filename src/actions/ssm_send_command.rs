//! `aws:ssm:send-command` with FIS's pre-configured `AWSFIS-Run-*` documents, each mapped to
//! a native action of the catalog.
//!
//! [`DOCUMENTS`] is the whole mapping, one entry per document. A document whose native
//! action (or one of the native parameters it maps to) is not in this build's catalog is
//! refused by name, so a native fault that lands later turns its documents on by itself.
//!
//! Two durations: the document's `DurationSeconds` is the fault's length, the action's
//! `duration` its span (as in FIS). A longer span waits the rest out with the fault gone; a
//! shorter one ends the fault with the action (FIS would leave the document running, but a
//! faultline fault never outlives its action), which validation reports as a warning.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params};
use crate::diagnostic::did_you_mean;
use super::ResourceType;
use serde_json::{Map, Value};

pub(super) const DEF: ActionDef = ActionDef {
    id: "aws:ssm:send-command",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Runs one of FIS's AWSFIS-Run-* documents as the native fault it maps to.",
    params: &[DOCUMENT_ARN, DOCUMENT_PARAMETERS, DOCUMENT_VERSION, DURATION],
    build,
};

const DOCUMENT_ARN: Param = Param {
    name: "documentArn",
    kind: Kind::Text,
    required: true,
    default: None,
    description: "arn:aws:ssm:REGION::document/AWSFIS-Run-NAME, e.g. AWSFIS-Run-CPU-Stress.",
    unit: None,
};

const DOCUMENT_PARAMETERS: Param = Param {
    name: "documentParameters",
    kind: Kind::Text,
    required: false,
    default: None,
    description: "The document's parameters: a JSON object, written as a string, whose values are strings.",
    unit: None,
};

const DOCUMENT_VERSION: Param = Param {
    name: "documentVersion",
    kind: Kind::Text,
    required: false,
    default: None,
    description: "Accepted and ignored: the built-in mapping of the document is used.",
    unit: None,
};

const DURATION: Param = Param {
    name: "duration",
    kind: Kind::Duration,
    required: false,
    default: None,
    description: "The action's span; the document's DurationSeconds is the fault's length (default: that length).",
    unit: None,
};

/// A pre-configured FIS document and the native action it runs as.
pub(super) struct Document {
    /// What follows `AWSFIS-Run-` in its name.
    pub name: &'static str,
    /// The native action's id.
    pub native: &'static str,
    /// Its parameters, as FIS documents them.
    pub params: &'static [DocParam],
}

/// One parameter of a document.
pub(super) struct DocParam {
    /// Its name in `documentParameters`.
    pub name: &'static str,
    /// Whether the document requires it.
    pub required: bool,
    /// The document's default.
    pub default: Option<&'static str>,
    /// What it becomes.
    pub to: To,
}

/// What a document parameter becomes on the native action.
pub(super) enum To {
    /// Whole seconds, the native `duration`: the fault's length.
    Seconds,
    /// This native parameter, as written.
    Param(&'static str),
    /// This native parameter, limited to the values the document allows.
    OneOf(&'static str, &'static [&'static str]),
    /// Only this value, which is what faultline does anyway; the reason others cannot be.
    Only(&'static str, &'static str),
    /// Nothing: accepted, and reported as ignored for this reason.
    Ignored(&'static str),
}

const INSTALL: DocParam = DocParam {
    name: "InstallDependencies",
    required: false,
    default: Some("True"),
    to: To::Ignored("the agent installs nothing; its faults are built in"),
};
const SECONDS: DocParam = DocParam {
    name: "DurationSeconds",
    required: true,
    default: None,
    to: To::Seconds,
};
const fn interface(default: &'static str) -> DocParam {
    DocParam {
        name: "Interface",
        required: false,
        default: Some(default),
        to: To::Ignored("the agent's proxy carries the service's traffic whatever the interface"),
    }
}
const SOURCES: DocParam = DocParam {
    name: "Sources",
    required: true,
    default: None,
    to: To::Param("sources"),
};
const FLOWS: DocParam = DocParam {
    name: "FlowsPercent",
    required: false,
    default: Some("100"),
    to: To::Only("100", "the agent's proxy affects every connection from the sources"),
};
const INGRESS: DocParam = DocParam {
    name: "TrafficType",
    required: false,
    default: Some("ingress"),
    to: To::Only("ingress", "the agent's proxy sits in front of the host's service, on its ingress"),
};
const fn param(name: &'static str, required: bool, default: Option<&'static str>, native: &'static str) -> DocParam {
    DocParam {
        name,
        required,
        default,
        to: To::Param(native),
    }
}

/// Every supported document, with FIS's parameter names and defaults.
pub(super) const DOCUMENTS: &[Document] = &[
    Document {
        name: "CPU-Stress",
        native: "faultline:host:cpu-stress",
        params: &[
            SECONDS,
            param("CPU", false, Some("0"), "workers"),
            param("LoadPercent", false, Some("100"), "loadPercent"),
            INSTALL,
        ],
    },
    Document {
        name: "Memory-Stress",
        native: "faultline:host:memory-stress",
        params: &[
            SECONDS,
            param("Percent", true, None, "percent"),
            param("Workers", false, Some("1"), "workers"),
            INSTALL,
        ],
    },
    Document {
        name: "IO-Stress",
        native: "faultline:host:io-stress",
        params: &[
            SECONDS,
            param("Workers", false, Some("1"), "workers"),
            param("Percent", false, Some("80"), "percent"),
            INSTALL,
        ],
    },
    Document {
        name: "Disk-Fill",
        native: "faultline:host:disk-fill",
        params: &[SECONDS, param("Percent", false, Some("95"), "percent"), INSTALL],
    },
    Document {
        name: "Kill-Process",
        native: "faultline:process:kill",
        params: &[
            param("ProcessName", true, None, "processName"),
            DocParam {
                name: "Signal",
                required: false,
                default: Some("SIGTERM"),
                to: To::OneOf("signal", &["SIGTERM", "SIGKILL"]),
            },
            INSTALL,
        ],
    },
    Document {
        name: "Network-Latency",
        native: "faultline:network:latency",
        params: &[
            SECONDS,
            param("DelayMilliseconds", false, Some("200"), "delayMilliseconds"),
            interface("eth0"),
            INSTALL,
        ],
    },
    Document {
        name: "Network-Latency-Sources",
        native: "faultline:network:latency",
        params: &[
            SECONDS,
            SOURCES,
            param("DelayMilliseconds", false, Some("200"), "delayMilliseconds"),
            param("JitterMilliseconds", false, Some("10"), "jitterMilliseconds"),
            FLOWS,
            INGRESS,
            interface("DEFAULT"),
            INSTALL,
        ],
    },
    Document {
        name: "Network-Packet-Loss",
        native: "faultline:network:packet-loss",
        params: &[
            SECONDS,
            param("LossPercent", false, Some("7"), "lossPercent"),
            interface("eth0"),
            INSTALL,
        ],
    },
    Document {
        name: "Network-Packet-Loss-Sources",
        native: "faultline:network:packet-loss",
        params: &[
            SECONDS,
            SOURCES,
            param("LossPercent", false, Some("7"), "lossPercent"),
            FLOWS,
            INGRESS,
            interface("DEFAULT"),
            INSTALL,
        ],
    },
    Document {
        name: "Network-Blackhole-Port",
        native: "faultline:network:blackhole-port",
        params: &[
            SECONDS,
            DocParam {
                name: "Protocol",
                required: true,
                default: None,
                to: To::OneOf("protocol", &["tcp", "udp"]),
            },
            param("Port", true, None, "port"),
            DocParam {
                name: "TrafficType",
                required: false,
                default: Some("ingress"),
                to: To::OneOf("trafficType", &["ingress", "egress"]),
            },
            INSTALL,
        ],
    },
];

impl Document {
    /// The native parameter a document parameter becomes, if any.
    fn native_param(p: &DocParam) -> Option<&'static str> {
        match p.to {
            To::Seconds => Some("duration"),
            To::Param(n) | To::OneOf(n, _) => Some(n),
            To::Only(..) | To::Ignored(_) => None,
        }
    }

    /// Why this build cannot run the document, when it cannot: its native action or one of
    /// the native parameters it needs is missing from the catalog.
    pub(super) fn missing(&self) -> Option<String> {
        let Some(native) = ActionId::find(self.native) else {
            return Some(format!(
                "AWSFIS-Run-{} maps to {}, which this build lacks",
                self.name, self.native
            ));
        };
        let lacking: Vec<&str> = self
            .params
            .iter()
            .filter_map(Self::native_param)
            .filter(|n| !native.def().params.iter().any(|p| p.name == *n))
            .collect();
        (!lacking.is_empty()).then(|| {
            format!(
                "AWSFIS-Run-{} maps to {} with `{}`, which this build's {} lacks",
                self.name,
                self.native,
                lacking.join("`, `"),
                self.native
            )
        })
    }

    /// The documents this build runs, by name.
    pub(super) fn supported() -> Vec<&'static str> {
        DOCUMENTS
            .iter()
            .filter(|d| d.missing().is_none())
            .map(|d| d.name)
            .collect()
    }
}

/// The documents' table for `docs/actions.md`: each document, its native action, its
/// parameters with their defaults, and whether this build runs it.
pub(super) fn markdown_documents() -> String {
    let mut out = String::from(
        "The documents (`documentArn` arn:aws:ssm:REGION::document/AWSFIS-Run-NAME; \
         `documentParameters` a JSON string; R = required). `DurationSeconds` is the fault's length, \
         the action's `duration` its span: a longer span waits the rest out, a shorter one ends the fault \
         with the action (a warning says so).\n\n\
         | document | runs as | parameters |\n|---|---|---|\n",
    );
    for d in DOCUMENTS {
        let params: Vec<String> = d
            .params
            .iter()
            .map(|p| {
                let note = match (&p.to, p.required, p.default) {
                    (To::Ignored(_), ..) => " ignored".to_string(),
                    (To::Only(only, _), ..) => format!(" (only {only})"),
                    (_, true, _) => " R".to_string(),
                    (_, false, Some(v)) => format!(" ({v})"),
                    (_, false, None) => String::new(),
                };
                format!("`{}`{note}", p.name)
            })
            .collect();
        let native = match d.missing() {
            None => format!("`{}`", d.native),
            Some(_) => format!("`{}` (not in this build)", d.native),
        };
        out += &format!("| AWSFIS-Run-{} | {native} | {} |\n", d.name, params.join(", "));
    }
    out
}

/// The document an ARN names: `arn:aws:ssm:REGION:ACCOUNT:document/AWSFIS-Run-NAME`.
fn document_name(arn: &str) -> Option<&str> {
    let mut parts = arn.strip_prefix("arn:")?.splitn(5, ':');
    let (_partition, service, _region, _account) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let name = parts.next()?.strip_prefix("document/")?;
    (service == "ssm").then_some(name)
}

fn supported_hint() -> String {
    format!(
        "supported documents: AWSFIS-Run-{}",
        Document::supported().join(", AWSFIS-Run-")
    )
}

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let span = p.has(DURATION.name).then(|| p.duration());
    if p.has(DOCUMENT_VERSION.name) {
        p.warn(
            DOCUMENT_VERSION.name,
            "documentVersion is ignored: faultline runs its built-in mapping of the document".into(),
        );
    }
    let arn = p.text(DOCUMENT_ARN.name)?;
    let Some(name) = document_name(arn) else {
        p.fail(
            DOCUMENT_ARN.name,
            format!("`{arn}` is not an SSM document ARN"),
            Some("write arn:aws:ssm:REGION::document/AWSFIS-Run-NAME, e.g. AWSFIS-Run-CPU-Stress".into()),
        );
        return None;
    };
    let Some(doc) = name
        .strip_prefix("AWSFIS-Run-")
        .and_then(|n| DOCUMENTS.iter().find(|d| d.name == n))
    else {
        p.fail(
            DOCUMENT_ARN.name,
            format!("document `{name}` is not supported: faultline runs FIS's pre-configured documents only"),
            Some(supported_hint()),
        );
        return None;
    };
    if let Some(why) = doc.missing() {
        p.fail(DOCUMENT_ARN.name, why, Some(supported_hint()));
        return None;
    }
    let native = ActionId::find(doc.native).expect("checked by missing()");
    let given = document_parameters(p, doc)?;
    let native_params = native_parameters(p, doc, &given)?;

    let mut diags = Vec::new();
    let spec = (native.def().build)(&mut Params::new(&mut diags, String::new(), &native_params));
    for d in diags {
        // The native action names its own keys; point at documentParameters and name the
        // document's key instead.
        let key = d.pointer().unwrap_or_default().trim_start_matches('/');
        let theirs = doc
            .params
            .iter()
            .find(|dp| Document::native_param(dp) == Some(key))
            .map_or(doc.name, |dp| dp.name);
        p.fail(
            DOCUMENT_PARAMETERS.name,
            format!("{theirs}: {}", d.message),
            d.hint,
        );
    }
    let spec = spec?;
    let fault = match spec.effect {
        Effect::Fault(f) => f,
        Effect::Sourced { azs, .. } => {
            p.fail(
                DOCUMENT_PARAMETERS.name,
                format!("Sources: {} names an availability zone, which a document's Sources cannot", azs.join(", ")),
                Some(format!(
                    "give addresses and CIDRs here, or use {} with sources for AZ names",
                    doc.native
                )),
            );
            return None;
        }
        Effect::Bounded { .. } | Effect::Blackout { .. } | Effect::Instances { .. } | Effect::Wait => {
            p.fail(
                DOCUMENT_ARN.name,
                format!("{} maps to {}, which is not a host fault", doc.name, doc.native),
                None,
            );
            return None;
        }
    };
    let span = match span {
        Some(s) => s?,
        None => spec.duration,
    };
    if span < spec.duration {
        p.warn(
            DURATION.name,
            format!(
                "DurationSeconds ({}) outlasts the action's duration ({}): the fault is removed when the action ends",
                crate::duration::format(spec.duration),
                crate::duration::format(span)
            ),
        );
    }
    Some(ActionSpec {
        action_id: ActionId::SsmSendCommand,
        duration: span,
        effect: Effect::Bounded {
            fault,
            fault_duration: spec.duration.min(span),
        },
    })
}

/// `documentParameters`, parsed: a JSON object of strings whose keys the document has.
fn document_parameters(p: &mut Params<'_>, doc: &Document) -> Option<Map<String, Value>> {
    let key = DOCUMENT_PARAMETERS.name;
    let given = match p.text(key) {
        None => Map::new(),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                p.fail(
                    key,
                    "documentParameters is not a JSON object".into(),
                    Some("write e.g. \"{\\\"DurationSeconds\\\": \\\"60\\\"}\"".into()),
                );
                return None;
            }
            Err(e) => {
                p.fail(
                    key,
                    format!("documentParameters is not valid JSON: {e}"),
                    Some("it is a JSON object written as a string, e.g. \"{\\\"DurationSeconds\\\": \\\"60\\\"}\"".into()),
                );
                return None;
            }
        },
    };
    let names: Vec<&str> = doc.params.iter().map(|d| d.name).collect();
    let mut ok = true;
    for (k, v) in &given {
        if !names.contains(&k.as_str()) {
            let hint = did_you_mean(k, names.iter().copied())
                .map(|m| format!("did you mean `{m}`? "))
                .unwrap_or_default();
            p.fail(
                key,
                format!("AWSFIS-Run-{} has no parameter `{k}`", doc.name),
                Some(format!("{hint}its parameters: {}", names.join(", "))),
            );
            ok = false;
        } else if !v.is_string() {
            p.fail(
                key,
                format!("{k} is {v}; document parameter values are strings"),
                Some(format!("write \"{k}\": \"{}\"", v.to_string().trim_matches('"'))),
            );
            ok = false;
        }
    }
    for d in doc.params.iter().filter(|d| d.required && !given.contains_key(d.name)) {
        p.fail(
            key,
            format!("AWSFIS-Run-{} requires {}", doc.name, d.name),
            Some(format!("add \"{}\" to documentParameters", d.name)),
        );
        ok = false;
    }
    ok.then_some(given)
}

/// The native action's parameters: each document parameter, or its default, translated.
fn native_parameters(p: &mut Params<'_>, doc: &Document, given: &Map<String, Value>) -> Option<Map<String, Value>> {
    let key = DOCUMENT_PARAMETERS.name;
    let mut out = Map::new();
    let mut ok = true;
    for d in doc.params {
        let value = given.get(d.name).and_then(Value::as_str);
        match &d.to {
            To::Ignored(why) => {
                if value.is_some() {
                    p.warn(key, format!("{} is ignored: {why}", d.name));
                }
            }
            To::Only(only, why) => {
                if let Some(v) = value.filter(|v| !v.eq_ignore_ascii_case(only)) {
                    p.fail(
                        key,
                        format!("{} `{v}` has no local equivalent: {why}", d.name),
                        Some(format!("leave it out or write \"{only}\"")),
                    );
                    ok = false;
                }
            }
            To::Seconds => {
                let Some(v) = value.or(d.default) else { continue };
                match v.parse::<u64>() {
                    Ok(n) if n > 0 => {
                        out.insert("duration".into(), format!("PT{n}S").into());
                    }
                    _ => {
                        p.fail(
                            key,
                            format!("{} `{v}` is not a whole number of seconds above 0", d.name),
                            Some(format!("write e.g. \"{}\": \"60\"", d.name)),
                        );
                        ok = false;
                    }
                }
            }
            To::Param(native) => {
                if let Some(v) = value.or(d.default) {
                    out.insert((*native).into(), v.into());
                }
            }
            To::OneOf(native, allowed) => {
                let Some(v) = value.or(d.default) else { continue };
                if allowed.contains(&v) {
                    out.insert((*native).into(), v.into());
                } else {
                    p.fail(
                        key,
                        format!("{} `{v}` is not one of {}", d.name, allowed.join(", ")),
                        None,
                    );
                    ok = false;
                }
            }
        }
    }
    ok.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Diagnostic;
    use faultline_agent::faults::{cpu, kill, latency};
    use faultline_agent::protocol::FaultKind;
    use std::time::Duration;

    fn build_with(params: Value) -> (Option<ActionSpec>, Vec<Diagnostic>, Vec<Diagnostic>) {
        let map = params.as_object().cloned().unwrap_or_default();
        let mut diags = Vec::new();
        let mut p = Params::new(&mut diags, "/p".into(), &map);
        let spec = build(&mut p);
        let warnings = p.into_warnings();
        (spec, diags, warnings)
    }

    fn arn(name: &str) -> String {
        format!("arn:aws:ssm:us-east-1::document/AWSFIS-Run-{name}")
    }

    #[test]
    fn cpu_stress_takes_fis_defaults_and_its_duration_seconds() {
        let (spec, diags, warnings) = build_with(serde_json::json!({
            "documentArn": arn("CPU-Stress"),
            "documentParameters": "{\"DurationSeconds\": \"120\", \"InstallDependencies\": \"True\"}",
            "duration": "PT5M",
        }));
        let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
        assert_eq!(spec.action_id, ActionId::SsmSendCommand);
        assert_eq!(spec.duration, Duration::from_secs(300));
        assert_eq!(spec.fault_duration(), Duration::from_secs(120));
        assert_eq!(
            spec.host_fault(),
            Some(FaultKind::Cpu(cpu::Params {
                load_percent: 100,
                workers: 0
            }))
        );
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].message.contains("InstallDependencies is ignored"));
    }

    #[test]
    fn a_shorter_action_cuts_the_fault_and_says_so() {
        let (spec, _, warnings) = build_with(serde_json::json!({
            "documentArn": arn("Network-Latency"),
            "documentParameters": "{\"DurationSeconds\": \"120\"}",
            "duration": "PT1M",
        }));
        let spec = spec.expect("valid");
        assert_eq!(spec.fault_duration(), Duration::from_secs(60));
        assert_eq!(
            spec.host_fault(),
            Some(FaultKind::Latency(latency::Params {
                delay_ms: 200,
                jitter_ms: 0,
                loss_percent: 0.0,
                sources: Vec::new(),
            }))
        );
        assert!(warnings[0].message.contains("outlasts"), "{warnings:?}");
    }

    #[test]
    fn kill_process_is_instant_without_a_duration() {
        let (spec, diags, _) = build_with(serde_json::json!({
            "documentArn": arn("Kill-Process"),
            "documentParameters": "{\"ProcessName\": \"demo-web\"}",
        }));
        let spec = spec.unwrap_or_else(|| panic!("{diags:?}"));
        assert!(spec.is_instant());
        assert_eq!(
            spec.host_fault(),
            Some(FaultKind::Kill(kill::Params {
                process_name: "demo-web".into(),
                signal: "SIGTERM".into()
            }))
        );
    }

    #[test]
    fn mistakes_name_the_document_and_its_parameters() {
        for (params, wanted) in [
            (
                serde_json::json!({"documentArn": arn("Reboot")}),
                "document `AWSFIS-Run-Reboot` is not supported",
            ),
            (
                serde_json::json!({"documentArn": "AWSFIS-Run-CPU-Stress"}),
                "is not an SSM document ARN",
            ),
            (
                serde_json::json!({"documentArn": arn("Memory-Stress"), "documentParameters": "{\"DurationSeconds\": \"60\"}"}),
                "AWSFIS-Run-Memory-Stress requires Percent",
            ),
            (
                serde_json::json!({"documentArn": arn("CPU-Stress"), "documentParameters": "{\"DurationSecond\": \"60\"}"}),
                "has no parameter `DurationSecond`",
            ),
            (
                serde_json::json!({"documentArn": arn("CPU-Stress"), "documentParameters": "{\"DurationSeconds\": 60}"}),
                "values are strings",
            ),
            (
                serde_json::json!({"documentArn": arn("CPU-Stress"), "documentParameters": "{\"DurationSeconds\": \"60\", \"LoadPercent\": \"101\"}"}),
                "LoadPercent: loadPercent is 101",
            ),
            (
                serde_json::json!({"documentArn": arn("Kill-Process"), "documentParameters": "{\"ProcessName\": \"x\", \"Signal\": \"SIGHUP\"}"}),
                "Signal `SIGHUP` is not one of SIGTERM, SIGKILL",
            ),
            (
                serde_json::json!({"documentArn": arn("CPU-Stress"), "documentParameters": "{not json"}),
                "not valid JSON",
            ),
        ] {
            let (spec, diags, _) = build_with(params.clone());
            assert!(spec.is_none(), "{params}");
            assert!(
                diags.iter().any(|d| d.message.contains(wanted)),
                "{params}: wanted `{wanted}` in {diags:?}"
            );
        }
    }

    #[test]
    fn every_document_maps_only_to_parameters_its_native_action_has_or_says_what_it_lacks() {
        for d in DOCUMENTS {
            match ActionId::find(d.native) {
                Some(native) => {
                    assert_eq!(native.def().target, Some(ResourceType::Host), "{}", d.name);
                    let all = d
                        .params
                        .iter()
                        .filter_map(Document::native_param)
                        .all(|n| native.def().params.iter().any(|p| p.name == n));
                    assert_eq!(all, d.missing().is_none(), "{}", d.name);
                }
                None => assert!(d.missing().is_some_and(|m| m.contains("which this build lacks"))),
            }
            let (spec, diags, _) = build_with(serde_json::json!({"documentArn": arn(d.name)}));
            if let Some(why) = d.missing() {
                assert!(spec.is_none());
                assert!(diags.iter().any(|x| x.message == why), "{diags:?}");
            }
        }
        assert!(Document::supported().contains(&"CPU-Stress"));
    }
}
