//! `faultline:host:stop` (`aws:ec2:stop-instances`): stop hosts through their platform, and
//! start them again after a while.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params};
use crate::platform::Operation;
use super::ResourceType;
use std::time::Duration;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:stop",
    aliases: &["aws:ec2:stop-instances"],
    target: Some(ResourceType::Host),
    summary: "Stops the hosts through their platform (container or demo process tree); starts them again after \
              startInstancesAfterDuration, or at once when the experiment stops. Without it they stay stopped.",
    params: &[START_AFTER, COMPLETE_IF_TERMINATED],
    build,
};

const START_AFTER: Param = Param {
    name: "startInstancesAfterDuration",
    kind: Kind::DurationFrom(60),
    required: false,
    default: None,
    description: "How long the hosts stay stopped before they are started again; absent, they stay stopped.",
    unit: None,
};

const COMPLETE_IF_TERMINATED: Param = Param {
    name: "completeIfInstancesTerminated",
    kind: Kind::Bool,
    required: false,
    default: Some("false"),
    description: "With startInstancesAfterDuration: a host terminated meanwhile does not fail the action.",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let restart = if p.has(START_AFTER.name) {
        Some(p.duration_from(&START_AFTER)?)
    } else {
        None
    };
    let complete_if_terminated = p.flag(&COMPLETE_IF_TERMINATED)?;
    if restart.is_none() && p.has(COMPLETE_IF_TERMINATED.name) {
        p.fail(
            COMPLETE_IF_TERMINATED.name,
            "completeIfInstancesTerminated only applies with startInstancesAfterDuration".into(),
            Some("add startInstancesAfterDuration, or remove this parameter".into()),
        );
        return None;
    }
    Some(ActionSpec {
        action_id: ActionId::HostStop,
        duration: restart.unwrap_or(Duration::ZERO),
        effect: Effect::Instances {
            operation: Operation::Stop,
            complete_if_terminated,
        },
    })
}
