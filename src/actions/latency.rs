//! `faultline:network:latency`: delay and drop the traffic of the host's service.

use super::packet_loss::SOURCES;
use super::{sourced, ActionDef, ActionId, ActionSpec, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::latency;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:network:latency",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Delays the service's traffic through the agent's proxy (from some peers, or all), and refuses a share of new connections.",
    params: &[DURATION, DELAY, JITTER, LOSS, SOURCES],
    build,
};

const DELAY: Param = Param {
    name: "delayMilliseconds",
    kind: Kind::Integer(latency::DELAY_MS),
    required: false,
    default: Some("0"),
    description: "Delay added to each direction of the service's traffic.",
    unit: Some("ms"),
};

const JITTER: Param = Param {
    name: "jitterMilliseconds",
    kind: Kind::Integer(latency::DELAY_MS),
    required: false,
    default: Some("0"),
    description: "Uniform jitter around the delay; at most delayMilliseconds.",
    unit: Some("ms"),
};

const LOSS: Param = Param {
    name: "lossPercent",
    kind: Kind::Number(latency::LOSS_PERCENT),
    required: false,
    default: Some("0"),
    description: "Share of new connections refused.",
    unit: Some("%"),
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let delay = p.int(&DELAY);
    let jitter = p.int(&JITTER);
    let loss = p.number(&LOSS);
    let sources = p.sources(&SOURCES);
    if let (Some(d), Some(j)) = (delay, jitter) {
        if j > d {
            p.fail(
                JITTER.name,
                format!("jitter ({j} ms) is larger than the delay ({d} ms)"),
                Some("jitter varies the delay by ± that much; keep it <= delayMilliseconds".into()),
            );
        }
    }
    let (nets, azs) = sources?;
    Some(ActionSpec {
        action_id: ActionId::Latency,
        duration: duration?,
        effect: sourced(
            latency::Params {
                delay_ms: delay?,
                jitter_ms: jitter?,
                loss_percent: loss?,
                sources: nets,
            }
            .into(),
            azs,
        ),
    })
}
