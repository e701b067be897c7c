//! `faultline:process:kill`: signal every process with a name, once.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params};
use super::ResourceType;
use faultline_agent::faults::kill;
use std::time::Duration;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:process:kill",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Sends a signal to every process with that name, once.",
    params: &[PROCESS_NAME, SIGNAL],
    build,
};

const PROCESS_NAME: Param = Param {
    name: "processName",
    kind: Kind::ProcessName,
    required: true,
    default: None,
    description: "Name of the processes to signal: /proc/PID/comm or the basename of argv[0].",
    unit: None,
};

const SIGNAL: Param = Param {
    name: "signal",
    kind: Kind::Signal,
    required: false,
    default: Some("SIGKILL"),
    description: "Signal to send, e.g. SIGKILL, SIGTERM, SIGHUP. Not SIGSTOP or SIGTSTP: use faultline:process:pause.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let signal = p.signal(&SIGNAL);
    let process_name = p.process_name(&PROCESS_NAME)?;
    Some(ActionSpec {
        action_id: ActionId::Kill,
        duration: Duration::ZERO,
        effect: Effect::Fault(
            kill::Params {
                process_name,
                signal: signal?,
            }
            .into(),
        ),
    })
}
