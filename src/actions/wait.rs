//! `aws:fis:wait`: only takes time.

use super::{ActionDef, ActionId, ActionSpec, Effect, Params, DURATION};

pub(super) const DEF: ActionDef = ActionDef {
    id: "aws:fis:wait",
    aliases: &[],
    target: None,
    summary: "Waits; nothing is injected.",
    params: &[DURATION],
    build,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    Some(ActionSpec {
        action_id: ActionId::Wait,
        duration: p.duration()?,
        effect: Effect::Wait,
    })
}
