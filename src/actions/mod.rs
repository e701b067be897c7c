//! The action catalog: one file per action, each with its id, target type, parameter table,
//! parameter checks and the wire fault it maps to. `validate`, `plan`, the engine, the JSON
//! Schema (`faultline schema`) and the README's action table all read from here.
//!
//! The native action of each fault is declared by the fault's line in the agent's fault list
//! (`agents/src/faults/mod.rs`, through `faultline_agent::for_each_fault!`): its file here
//! has the fault's module name, and its [`ActionId`] variant the fault's `FaultKind` name.
//! Any other action is a file with a `DEF` and one line in `catalog!` below. See
//! `docs/creating-faults.md`.

mod params;
mod resource;
pub mod schema;

pub use blackout::wire_fault as blackout_fault;
pub use params::Params;
pub use resource::ResourceType;

use faultline_agent::faults;
use faultline_agent::limits;
use faultline_agent::protocol::FaultKind;
use serde::Serialize;
use std::time::Duration;

/// Declares each action's module, its [`ActionId`] variant, its place in [`ActionId::ALL`]
/// and its arm in [`ActionId::def`] from one line, so none of them can be forgotten: first
/// the faults' native actions, from the agent's fault list, then the other actions.
macro_rules! catalog {
    ({ $($(#[$odoc:meta])* $ovariant:ident => $omodule:ident,)* } $($(#[$fdoc:meta])* $fvariant:ident => $fmodule:ident,)*) => {
        catalog! { @all $($(#[$fdoc])* $fvariant => $fmodule,)* $($(#[$odoc])* $ovariant => $omodule,)* }
    };
    (@all $($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        $(mod $module;)*

        /// An action faultline knows.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum ActionId {
            $($(#[$doc])* $variant,)*
        }

        impl ActionId {
            /// Every action, in the order the docs list them.
            pub const ALL: &'static [ActionId] = &[$(ActionId::$variant,)*];

            /// Its catalog entry.
            pub const fn def(self) -> &'static ActionDef {
                match self {
                    $(ActionId::$variant => &$module::DEF,)*
                }
            }
        }
    };
}

// The faults' native actions come from the fault list; these are the actions that are not
// one fault.
faultline_agent::for_each_fault!(catalog! {
    /// `aws:ssm:send-command`
    SsmSendCommand => ssm_send_command,
    /// `aws:network:disrupt-connectivity`
    DisruptConnectivity => disrupt_connectivity,
    /// `faultline:host:stop`
    HostStop => host_stop,
    /// `faultline:host:terminate`
    HostTerminate => host_terminate,
    /// `faultline:host:reboot`
    HostReboot => host_reboot,
    /// `aws:fis:wait`
    Wait => wait,
});

impl ActionId {
    /// The action a template's `actionId` names, by its id or one of its aliases.
    pub fn find(name: &str) -> Option<ActionId> {
        Self::ALL
            .iter()
            .copied()
            .find(|a| a.def().id == name || a.def().aliases.contains(&name))
    }

    /// The id templates use.
    pub const fn as_str(self) -> &'static str {
        self.def().id
    }
}

impl Serialize for ActionId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// One catalog entry.
#[derive(Debug)]
pub struct ActionDef {
    /// The id templates use, e.g. `faultline:host:cpu-stress`.
    pub id: &'static str,
    /// Other ids accepted for it.
    pub aliases: &'static [&'static str],
    /// The resource type its `targets` must name; `None` for an action without targets.
    pub target: Option<ResourceType>,
    /// What it does, in one line (docs and schema).
    pub summary: &'static str,
    /// Its parameters.
    pub params: &'static [Param],
    /// Checks the parameters (each error reported through `Params`) and builds the action.
    pub build: fn(&mut Params<'_>) -> Option<ActionSpec>,
}

/// One parameter of an action.
#[derive(Debug)]
pub struct Param {
    /// Its key in `parameters`.
    pub name: &'static str,
    /// Its type and range.
    pub kind: Kind,
    /// Whether a template must give it.
    pub required: bool,
    /// The value used when it is absent, as a template writes it.
    pub default: Option<&'static str>,
    /// What it does, in one line.
    pub description: &'static str,
    /// Its unit, e.g. `ms`.
    pub unit: Option<&'static str>,
}

/// The type and range of a parameter (all parameters are strings in a template, as in FIS).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An ISO 8601 duration, longer than zero and at most [`limits::MAX_DURATION`].
    Duration,
    /// An ISO 8601 duration of at least this many seconds and at most [`limits::MAX_DURATION`].
    DurationFrom(u64),
    /// A whole number in this range.
    Integer((u64, u64)),
    /// A decimal number in this range.
    Number((f64, f64)),
    /// `true` or `false`.
    Bool,
    /// A process name: no '/', [`limits::PROCESS_NAME_BYTES`] long.
    ProcessName,
    /// A signal name from [`faults::kill::SIGNALS`], `SIG` optional.
    Signal,
    /// Text the action reads itself (an ARN, a JSON document).
    Text,
    /// An absolute directory path, without `..`, [`limits::PATH_BYTES`] long.
    Path,
    /// One of these words.
    Choice(&'static [&'static str]),
    /// Peers, comma-separated: addresses, CIDRs, AZ names (their hosts' addresses), or `ALL`.
    Sources,
}

impl Kind {
    /// The type as the docs name it.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Duration | Kind::DurationFrom(_) => "ISO 8601 duration",
            Kind::Integer(_) => "integer",
            Kind::Number(_) => "number",
            Kind::Bool => "boolean",
            Kind::ProcessName => "process name",
            Kind::Signal => "signal name",
            Kind::Text => "string",
            Kind::Path => "absolute path",
            Kind::Choice(_) => "one of",
            Kind::Sources => "source list",
        }
    }

    /// The accepted values, as the docs write them.
    pub fn range(self) -> String {
        match self {
            Kind::Duration => format!("> 0, <= {}", crate::duration::format(limits::MAX_DURATION)),
            Kind::DurationFrom(min) => format!(
                ">= {}, <= {}",
                crate::duration::format(Duration::from_secs(min)),
                crate::duration::format(limits::MAX_DURATION)
            ),
            Kind::Integer((min, max)) => format!("{min}-{max}"),
            Kind::Number((min, max)) => format!("{min}-{max}"),
            Kind::Bool => "true, false".into(),
            Kind::ProcessName => {
                let (min, max) = limits::PROCESS_NAME_BYTES;
                format!("{min}-{max} bytes, no '/'")
            }
            Kind::Signal => format!("not {}", faults::kill::STOP_SIGNALS.join(", ")),
            Kind::Text => "see description".into(),
            Kind::Path => {
                let (min, max) = limits::PATH_BYTES;
                format!("starts with '/', no '..', {min}-{max} bytes")
            }
            Kind::Choice(words) => words.join(", "),
            Kind::Sources => format!(
                "ALL, or up to {} comma-separated addresses, CIDRs and AZ names",
                limits::SOURCES.1
            ),
        }
    }
}

/// The `duration` parameter every lasting action has.
pub const DURATION: Param = Param {
    name: "duration",
    kind: Kind::Duration,
    required: true,
    default: None,
    description: "How long the action lasts.",
    unit: None,
};

/// An action with its parameters checked: what it is, how long it lasts, what it does.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionSpec {
    /// Which action.
    pub action_id: ActionId,
    /// How long it lasts; zero for an instant action (a kill).
    pub duration: Duration,
    /// What the agents do.
    pub effect: Effect,
}

/// What an action does on its targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Effect {
    /// The same fault on every selected host.
    Fault(FaultKind),
    /// A blackout of the selected AZs: its wire fault needs the AZ's hosts ([`blackout_fault`]).
    Blackout {
        /// Keep the controller reachable.
        keep_control_plane: bool,
        /// Cut only the traffic with the other AZs' hosts, not everything outside the AZ.
        other_azs_only: bool,
    },
    /// The same fault on every selected host for part of the action's span (an SSM
    /// document's `DurationSeconds` within the action's `duration`).
    Bounded {
        fault: FaultKind,
        /// How long the fault lasts, at most the action's duration; zero for a kill.
        fault_duration: Duration,
    },
    /// An instance action, done by the hosts' platform rather than by their agents.
    Instances {
        /// What the platform does; a stop with a duration is followed by a start.
        operation: crate::platform::Operation,
        /// A stop's restart finding a host terminated does not fail the action.
        complete_if_terminated: bool,
    },
    /// The same fault on every selected host, whose `sources` also take the addresses of
    /// the hosts of these AZs ([`with_sources`]).
    Sourced {
        /// The fault, with the sources the template named by address.
        fault: FaultKind,
        /// The AZs the template named among its sources.
        azs: Vec<String>,
    },
    /// Nothing: the action only takes time.
    Wait,
}

impl ActionSpec {
    /// The FIS-style action id.
    pub fn action_id(&self) -> &'static str {
        self.action_id.as_str()
    }

    /// How long the action lasts; zero for a kill.
    pub fn duration(&self) -> Duration {
        self.duration
    }

    /// How long its fault lasts: the action's duration, or less for an [`Effect::Bounded`].
    pub fn fault_duration(&self) -> Duration {
        match &self.effect {
            Effect::Bounded { fault_duration, .. } => *fault_duration,
            _ => self.duration,
        }
    }

    /// Whether its fault is over once applied (nothing to remove).
    pub fn is_instant(&self) -> bool {
        self.fault_duration().is_zero()
    }

    /// The fault an agent injects on each selected host; `None` for a wait, for a
    /// blackout, whose allow-list depends on the AZ's hosts (see [`blackout_fault`]), and
    /// for a fault whose sources name AZs (see [`with_sources`]).
    pub fn host_fault(&self) -> Option<FaultKind> {
        match &self.effect {
            Effect::Fault(f) | Effect::Bounded { fault: f, .. } => Some(f.clone()),
            Effect::Blackout { .. } | Effect::Instances { .. } | Effect::Sourced { .. } | Effect::Wait => None,
        }
    }
}

/// `fault` with `more` added to its sources (the addresses of the AZs a template named).
pub fn with_sources(mut fault: FaultKind, more: impl IntoIterator<Item = std::net::IpAddr>) -> FaultKind {
    let sources = match &mut fault {
        FaultKind::Latency(faults::latency::Params { sources, .. })
        | FaultKind::PacketLoss(faults::packet_loss::Params { sources, .. }) => sources,
        _ => return fault,
    };
    sources.extend(more.into_iter().map(ipnet::IpNet::from));
    fault
}

/// The effect of a fault with a `sources` parameter: by address alone, or with AZs to
/// resolve once the hosts are known.
pub fn sourced(fault: FaultKind, azs: Vec<String>) -> Effect {
    if azs.is_empty() {
        Effect::Fault(fault)
    } else {
        Effect::Sourced { fault, azs }
    }
}

/// Every action id, in catalog order.
pub const IDS: [&str; ActionId::ALL.len()] = {
    let mut out = [""; ActionId::ALL.len()];
    let mut i = 0;
    while i < out.len() {
        out[i] = ActionId::ALL[i].as_str();
        i += 1;
    }
    out
};

/// The README's action table: one row per action, its target and parameters.
pub fn markdown_table() -> String {
    let mut out = String::from("| actionId | target | parameters | what it does |\n|---|---|---|---|\n");
    for &a in ActionId::ALL {
        let d = a.def();
        let target = d.target.map_or("none", ResourceType::target_key);
        let params: Vec<String> = d
            .params
            .iter()
            .map(|p| match p.default {
                Some(v) => format!("`{}` ({v})", p.name),
                None => format!("`{}`", p.name),
            })
            .collect();
        out += &format!("| `{}` | {target} | {} | {} |\n", d.id, params.join(", "), d.summary);
    }
    out
}

/// The parameter reference of `docs/actions.md`: per action, every parameter's type, range,
/// default, unit and description.
pub fn markdown_reference() -> String {
    let mut out = String::new();
    for &a in ActionId::ALL {
        let d = a.def();
        out += &format!("## `{}`\n\n{}\n\n", d.id, d.summary);
        if !d.aliases.is_empty() {
            out += &format!("Also accepted as: `{}`.\n\n", d.aliases.join("`, `"));
        }
        out += &format!(
            "Target: {}.\n\n",
            d.target
                .map_or("none".to_string(), |t| format!("`{}` ({})", t.target_key(), t.as_str()))
        );
        out += "| parameter | type | range | default | unit | description |\n|---|---|---|---|---|---|\n";
        for p in d.params {
            let default = match (p.default, p.required) {
                (Some(v), _) => v.to_string(),
                (None, true) => "required".into(),
                (None, false) => "none".into(),
            };
            out += &format!(
                "| `{}` | {} | {} | {default} | {} | {} |\n",
                p.name,
                p.kind.type_name(),
                p.kind.range(),
                p.unit.unwrap_or(""),
                p.description
            );
        }
        out += "\n";
        if a == ActionId::SsmSendCommand {
            out += &ssm_send_command::markdown_documents();
            out += "\n";
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn ids_and_aliases_are_unique() {
        let mut seen = BTreeSet::new();
        for &a in ActionId::ALL {
            for name in std::iter::once(a.def().id).chain(a.def().aliases.iter().copied()) {
                assert!(seen.insert(name), "{name} is named twice");
                assert_eq!(ActionId::find(name), Some(a));
            }
        }
    }

    #[test]
    fn every_default_is_accepted_by_its_own_parameter() {
        for &a in ActionId::ALL {
            for p in a.def().params {
                assert!(
                    !(p.required && p.default.is_some()),
                    "{}: required with a default",
                    p.name
                );
                if let Some(v) = p.default {
                    let mut diags = Vec::new();
                    let map = serde_json::Map::from_iter([(p.name.to_string(), v.into())]);
                    let mut params = Params::new(&mut diags, "/p".into(), &map);
                    assert!(params.check(p), "{}: default {v} refused: {diags:?}", p.name);
                }
            }
        }
    }

    #[test]
    fn sources_take_addresses_networks_and_azs_and_azs_resolve_to_their_hosts() {
        let build = |sources: &str| {
            let map = serde_json::Map::from_iter([
                ("duration".to_string(), "PT1S".into()),
                ("sources".to_string(), sources.into()),
            ]);
            let mut diags = Vec::new();
            let spec = (ActionId::PacketLoss.def().build)(&mut Params::new(&mut diags, "/p".into(), &map));
            (spec, diags)
        };
        let (spec, _) = build("10.0.0.5, 10.1.0.0/16, az-b");
        let Some(Effect::Sourced { fault, azs }) = spec.map(|s| s.effect) else {
            panic!()
        };
        assert_eq!(azs, vec!["az-b".to_string()]);
        let fault = with_sources(fault, ["10.2.0.7".parse().unwrap()]);
        let FaultKind::PacketLoss(faults::packet_loss::Params { loss_percent, sources }) = fault else {
            panic!()
        };
        assert_eq!(loss_percent, 7.0, "FIS's default");
        let want: Vec<ipnet::IpNet> = ["10.0.0.5/32", "10.1.0.0/16", "10.2.0.7/32"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(sources, want);
        let (spec, _) = build("ALL");
        assert_eq!(
            spec.unwrap().host_fault(),
            Some(FaultKind::PacketLoss(faults::packet_loss::Params {
                loss_percent: 7.0,
                sources: vec![]
            }))
        );
        for bad in ["ALL, 10.0.0.1", "10.0.0", "10.0.0.1/40", "a b"] {
            let (spec, diags) = build(bad);
            assert!(spec.is_none(), "{bad} accepted");
            assert!(diags[0].to_string().contains("/p/sources"), "{bad}: {diags:?}");
        }
    }

    #[test]
    fn every_action_builds_from_its_required_parameters() {
        for &a in ActionId::ALL {
            let d = a.def();
            let spec = build_from_required(a);
            assert_eq!(spec.action_id, a);
            let platform = matches!(spec.effect, Effect::Instances { .. });
            assert_eq!(spec.is_instant(), a == ActionId::Kill || platform);
            assert_eq!(
                spec.host_fault().is_some(),
                d.target == Some(ResourceType::Host) && !platform,
                "{}: a host action maps to a wire fault or to its platform",
                d.id
            );
        }
    }

    #[test]
    fn each_faults_native_action_injects_that_fault() {
        // The fault list declares the faults' native actions first, in its own order.
        for (&a, capability) in ActionId::ALL.iter().zip(faults::CAPABILITIES) {
            let fault = match build_from_required(a).effect {
                Effect::Fault(f) | Effect::Sourced { fault: f, .. } => f,
                Effect::Blackout {
                    keep_control_plane,
                    other_azs_only,
                } => {
                    // The default: the controller kept, everything outside the AZ cut.
                    assert!(keep_control_plane && !other_azs_only, "{}", a.as_str());
                    // The wire fault the engine gives a host of the AZ, against one written
                    // out here, so a wrong mapping (a flag or the lists swapped) fails.
                    let fault = blackout_fault(
                        keep_control_plane,
                        vec!["10.0.0.2".parse().unwrap()],
                        vec!["10.1.0.3".parse().unwrap()],
                    );
                    assert_eq!(
                        fault,
                        FaultKind::Blackout(faults::blackout::Params {
                            allow: vec!["10.0.0.2".parse().unwrap()],
                            keep_control_plane: true,
                            deny: vec!["10.1.0.3/32".parse().unwrap()],
                        }),
                        "{}",
                        a.as_str()
                    );
                    fault
                }
                other => panic!("{}: {other:?} is no fault", a.as_str()),
            };
            assert_eq!(fault.capability(), capability, "{}", a.as_str());
        }
    }

    /// The action `a` built from a sample of each of its required parameters.
    fn build_from_required(a: ActionId) -> ActionSpec {
        let d = a.def();
        let mut map = serde_json::Map::new();
        for p in d.params.iter().filter(|p| p.required) {
            let v = match p.kind {
                Kind::Duration => "PT1S",
                Kind::ProcessName => "web",
                Kind::Text if a == ActionId::SsmSendCommand => "arn:aws:ssm:us-east-1::document/AWSFIS-Run-CPU-Stress",
                Kind::Text if a == ActionId::DisruptConnectivity => "all",
                Kind::Integer((min, _)) => &min.to_string(),
                Kind::Choice(words) => words[0],
                _ => panic!("{}: no sample for a required {:?}", p.name, p.kind),
            };
            map.insert(p.name.into(), v.to_string().into());
        }
        if a == ActionId::Memory {
            map.insert("sizeMiB".into(), "1".into());
        }
        if a == ActionId::SsmSendCommand {
            map.insert("documentParameters".into(), "{\"DurationSeconds\": \"1\"}".into());
        }
        let mut diags = Vec::new();
        let spec = (d.build)(&mut Params::new(&mut diags, "/p".into(), &map));
        spec.unwrap_or_else(|| panic!("{}: {diags:?}", d.id))
    }
}
