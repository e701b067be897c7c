//! `faultline:network:blackhole-port`: drop the traffic of one port (FIS's
//! AWSFIS-Run-Network-Blackhole-Port).

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::blackhole_port::{self, Direction, Transport};

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:network:blackhole-port",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Drops every packet of one protocol to one port, arriving or sent, with nf_tables; without it, the agent's proxy holds the TCP connections arriving at one of its own ports.",
    params: &[DURATION, PROTOCOL, PORT, TRAFFIC_TYPE],
    build,
};

const PROTOCOL: Param = Param {
    name: "protocol",
    kind: Kind::Choice(&["tcp", "udp"]),
    required: true,
    default: None,
    description: "The transport protocol of the port.",
    unit: None,
};

const PORT: Param = Param {
    name: "port",
    kind: Kind::Integer(blackhole_port::PORT),
    required: true,
    default: None,
    description: "The destination port whose packets are dropped.",
    unit: None,
};

const TRAFFIC_TYPE: Param = Param {
    name: "trafficType",
    kind: Kind::Choice(&["ingress", "egress"]),
    required: false,
    default: Some("ingress"),
    description: "Packets arriving at the host's port (ingress) or sent to that port elsewhere (egress).",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let protocol = p.choice(&PROTOCOL).map(|w| match w {
        "udp" => Transport::Udp,
        _ => Transport::Tcp,
    });
    let port = p.int(&PORT);
    let traffic = p.choice(&TRAFFIC_TYPE).map(|w| match w {
        "egress" => Direction::Egress,
        _ => Direction::Ingress,
    });
    Some(ActionSpec {
        action_id: ActionId::BlackholePort,
        duration: duration?,
        effect: Effect::Fault(
            blackhole_port::Params {
                protocol: protocol?,
                port: u16::try_from(port?).ok()?,
                traffic: traffic?,
            }
            .into(),
        ),
    })
}
