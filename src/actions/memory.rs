//! `faultline:host:memory-stress`: hold resident memory.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::memory::{self, MemoryAmount};

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:memory-stress",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Holds resident memory: give percent or sizeMiB.",
    params: &[DURATION, PERCENT, SIZE_MIB, WORKERS],
    build,
};

const PERCENT: Param = Param {
    name: "percent",
    kind: Kind::Integer(memory::PERCENT),
    required: false,
    default: None,
    description: "Share of the host's memory (its cgroup limit if it has one) to hold; or give sizeMiB.",
    unit: Some("%"),
};

const SIZE_MIB: Param = Param {
    name: "sizeMiB",
    kind: Kind::Integer(memory::SIZE_MIB),
    required: false,
    default: None,
    description: "Memory to hold; or give percent.",
    unit: Some("MiB"),
};

const WORKERS: Param = Param {
    name: "workers",
    kind: Kind::Integer(memory::WORKERS),
    required: false,
    default: Some("0"),
    description: "Threads that touch the memory; 0 means one.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let workers = p.int(&WORKERS);
    let amount = match (p.has(PERCENT.name), p.has(SIZE_MIB.name)) {
        (true, false) => p.int(&PERCENT).map(|n| MemoryAmount::Percent(n as u8)),
        (false, true) => p.int(&SIZE_MIB).map(MemoryAmount::SizeMib),
        (both, _) => {
            let msg = if both {
                "give percent or sizeMiB, not both"
            } else {
                "memory-stress needs percent or sizeMiB"
            };
            p.fail(
                "",
                msg.into(),
                Some("e.g. \"sizeMiB\": \"256\" or \"percent\": \"30\"".into()),
            );
            None
        }
    };
    Some(ActionSpec {
        action_id: ActionId::Memory,
        duration: duration?,
        effect: Effect::Fault(
            memory::Params {
                amount: amount?,
                workers: workers? as u32,
            }
            .into(),
        ),
    })
}
