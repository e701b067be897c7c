//! `faultline:network:packet-loss`: drop a random share of the packets arriving from some
//! peers (FIS's AWSFIS-Run-Network-Packet-Loss and -Sources).

use super::{sourced, ActionDef, ActionId, ActionSpec, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::packet_loss;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:network:packet-loss",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Drops a random share of the packets arriving from some peers (all but loopback by default), with nf_tables; without it, the agent's proxy holds that share of new connections (connection-level loss).",
    params: &[DURATION, LOSS, SOURCES],
    build,
};

const LOSS: Param = Param {
    name: "lossPercent",
    kind: Kind::Number(packet_loss::LOSS_PERCENT),
    required: false,
    default: Some("7"),
    description: "Share of the arriving packets dropped, each packet drawn at random.",
    unit: Some("%"),
};

/// The `sources` parameter, shared with `faultline:network:latency`.
pub(super) const SOURCES: Param = Param {
    name: "sources",
    kind: Kind::Sources,
    required: false,
    default: Some("ALL"),
    description: "The peers affected: comma-separated addresses, CIDRs and AZ names (their hosts' addresses), or ALL.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let loss = p.number(&LOSS);
    let sources = p.sources(&SOURCES);
    let (nets, azs) = sources?;
    Some(ActionSpec {
        action_id: ActionId::PacketLoss,
        duration: duration?,
        effect: sourced(
            packet_loss::Params {
                loss_percent: loss?,
                sources: nets,
            }
            .into(),
            azs,
        ),
    })
}
