//! `faultline:process:pause`: stop every process with a name for a while, then resume it.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::pause;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:process:pause",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Stops every process with that name (SIGSTOP), and resumes it (SIGCONT) on every removal path.",
    params: &[PROCESS_NAME, DURATION],
    build,
};

const PROCESS_NAME: Param = Param {
    name: "processName",
    kind: Kind::ProcessName,
    required: true,
    default: None,
    description: "Name of the processes to stop and resume: /proc/PID/comm or the basename of argv[0].",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let process_name = p.process_name(&PROCESS_NAME);
    Some(ActionSpec {
        action_id: ActionId::Pause,
        duration: duration?,
        effect: Effect::Fault(
            pause::Params {
                process_name: process_name?,
            }
            .into(),
        ),
    })
}
