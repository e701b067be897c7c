//! `faultline:host:cpu-stress`: hold a CPU load.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::cpu;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:cpu-stress",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Holds a CPU load with worker threads.",
    params: &[DURATION, LOAD_PERCENT, WORKERS],
    build,
};

const LOAD_PERCENT: Param = Param {
    name: "loadPercent",
    kind: Kind::Integer(cpu::LOAD_PERCENT),
    required: false,
    default: Some("100"),
    description: "CPU load each worker holds.",
    unit: Some("%"),
};

const WORKERS: Param = Param {
    name: "workers",
    kind: Kind::Integer(cpu::WORKERS),
    required: false,
    default: Some("0"),
    description: "Worker threads; 0 means one per CPU.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let load = p.int(&LOAD_PERCENT);
    let workers = p.int(&WORKERS);
    Some(ActionSpec {
        action_id: ActionId::Cpu,
        duration: duration?,
        effect: Effect::Fault(
            cpu::Params {
                // The ranges above fit these types.
                load_percent: load? as u8,
                workers: workers? as u32,
            }
            .into(),
        ),
    })
}
