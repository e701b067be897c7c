//! `faultline:host:disk-fill`: fill a filesystem to a percent, as FIS's Disk-Fill.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::disk_fill;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:disk-fill",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Fills the filesystem of a directory with one file up to a percent (never past a safety margin); the file is deleted on every removal path.",
    params: &[DURATION, PERCENT, PATH],
    build,
};

const PERCENT: Param = Param {
    name: "percent",
    kind: Kind::Integer(disk_fill::PERCENT),
    required: false,
    default: Some("95"),
    description: "How full the filesystem gets, as df's Use% shows it (reserved blocks not counted as free); refused when it is already this full, or when it would leave less than 1 % (at least 16 MiB) free.",
    unit: Some("%"),
};

const PATH: Param = Param {
    name: "path",
    kind: Kind::Path,
    required: false,
    default: Some("/tmp"),
    description: "An existing directory on the filesystem to fill; the file has no name (df sees it, ls and du do not).",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let percent = p.int(&PERCENT);
    let path = p.path(&PATH);
    Some(ActionSpec {
        action_id: ActionId::DiskFill,
        duration: duration?,
        effect: Effect::Fault(
            disk_fill::Params {
                // The range above fits this type.
                percent: percent? as u8,
                path: path?,
            }
            .into(),
        ),
    })
}
