//! `faultline:host:terminate` (`aws:ec2:terminate-instances`): end hosts for good; the
//! platform replaces each with a new host in the same AZ.

use super::{ActionDef, ActionId, ActionSpec, Effect, Params};
use crate::platform::Operation;
use super::ResourceType;
use std::time::Duration;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:terminate",
    aliases: &["aws:ec2:terminate-instances"],
    target: Some(ResourceType::Host),
    summary: "Terminates the hosts through their platform; as an Auto Scaling group, the platform launches a \
              replacement with a new id in the same AZ, on the same address, a few seconds later.",
    params: &[],
    build,
};

fn build(_: &mut Params<'_>) -> Option<ActionSpec> {
    Some(ActionSpec {
        action_id: ActionId::HostTerminate,
        duration: Duration::ZERO,
        effect: Effect::Instances {
            operation: Operation::Terminate,
            complete_if_terminated: false,
        },
    })
}
