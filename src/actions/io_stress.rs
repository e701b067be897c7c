//! `faultline:host:io-stress`: write (with fsync) and read back files, as FIS's IO-Stress.

use super::{ActionDef, ActionId, ActionSpec, Effect, Kind, Param, Params, DURATION};
use super::ResourceType;
use faultline_agent::faults::io_stress;

pub(super) const DEF: ActionDef = ActionDef {
    id: "faultline:host:io-stress",
    aliases: &[],
    target: Some(ResourceType::Host),
    summary: "Writes files with fsync and reads them back under a directory; the files are deleted on every removal path.",
    params: &[DURATION, WORKERS, PERCENT, PATH],
    build,
};

const WORKERS: Param = Param {
    name: "workers",
    kind: Kind::Integer(io_stress::WORKERS),
    required: false,
    default: Some("1"),
    description: "Writer threads, each with a file of its own.",
    unit: None,
};

const PERCENT: Param = Param {
    name: "percent",
    kind: Kind::Integer(io_stress::PERCENT),
    required: false,
    default: Some("80"),
    description: "Share of the filesystem's free space the files take together (the agent keeps a safety margin free).",
    unit: Some("%"),
};

const PATH: Param = Param {
    name: "path",
    kind: Kind::Path,
    required: false,
    default: Some("/tmp"),
    description: "An existing directory on the filesystem to stress; the files have no name (df sees them, ls and du do not).",
    unit: None,
};

fn build(p: &mut Params<'_>) -> Option<ActionSpec> {
    let duration = p.duration();
    let workers = p.int(&WORKERS);
    let percent = p.int(&PERCENT);
    let path = p.path(&PATH);
    Some(ActionSpec {
        action_id: ActionId::IoStress,
        duration: duration?,
        effect: Effect::Fault(
            io_stress::Params {
                // The ranges above fit these types.
                workers: workers? as u32,
                percent: percent? as u8,
                path: path?,
            }
            .into(),
        ),
    })
}
