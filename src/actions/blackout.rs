//! `faultline:az:blackout`: cut every host of an AZ off from everything outside it.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::blackout;
use faultline_agent::protocol::FaultKind;
use ipnet::IpNet;
use std::net::IpAddr;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:az:blackout",
    aliases: &[],
    target: Some(ResourceType::Az),
    summary: "Cuts every host of the AZ off from all but the AZ's other hosts (and the controller).",
    params: &[DURATION, KEEP_CONTROL_PLANE],
    build,
};

const KEEP_CONTROL_PLANE: Param = Param {
    name: "keepControlPlane",
    kind: Kind::Bool,
    required: false,
    default: Some("true"),
    description: "Keep the controller reachable during the blackout.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let keep_control_plane = p.flag(&KEEP_CONTROL_PLANE);
    Some(ActionSpec {
        action_id: ActionId::Blackout,
        duration: duration?,
        effect: Effect::Blackout {
            keep_control_plane: keep_control_plane?,
            other_azs_only: false,
        },
    })
}

/// The fault each host of a blacked-out AZ receives: `allow` are the AZ's hosts, `deny` the
/// other AZs' hosts when only those are cut (empty: everything else is).
pub fn wire_fault(keep_control_plane: bool, allow: Vec<IpAddr>, deny: Vec<IpAddr>) -> FaultKind {
    blackout::Params {
        allow,
        keep_control_plane,
        deny: deny.into_iter().map(IpNet::from).collect(),
    }
    .into()
}
