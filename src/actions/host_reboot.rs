//! `faultline:host:reboot` (`aws:ec2:reboot-instances`): restart hosts through their platform.

use super::{ActionDef, ActionId, ActionSpec, Effect, Params};
use crate::platform::Operation;
use super::ResourceType;
use std::time::Duration;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:reboot",
    aliases: &["aws:ec2:reboot-instances"],
    target: Some(ResourceType::Host),
    summary: "Reboots the hosts through their platform: every program of the host ends (its agent removes its \
              faults) and starts again.",
    params: &[],
    build,
};

fn build(_: &mut Params<'_>) -> Option<ActionSpec> {
    Some(ActionSpec {
        action_id: ActionId::HostReboot,
        duration: Duration::ZERO,
        effect: Effect::Instances {
            operation: Operation::Reboot,
            complete_if_terminated: false,
        },
    })
}
