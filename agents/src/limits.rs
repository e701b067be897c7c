//! What every fault shares of its limits: the controller's validator checks templates
//! against them, and the agent checks every command it receives against them again, so
//! that a forged or buggy frame cannot ask for four billion workers or a hundred-day
//! blackout. Each fault's own ranges are consts of its file in [`crate::faults`], checked
//! by its `WireParams::check`, which [`check`] calls after the envelope.

use crate::protocol::FaultSpec;
use std::time::Duration;

/// The longest action (and fault) a template may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
/// Length of a `path` (an absolute directory), in bytes.
pub const PATH_BYTES: (u64, u64) = (1, 4096);
/// Entries of a `sources` list once AZ names are resolved (an AZ's hosts, networks).
pub const SOURCES: (u64, u64) = (0, 4096);
/// Length of a process name a kill or pause matches (argv[0] basenames can be long).
pub const PROCESS_NAME_BYTES: (u64, u64) = (1, 255);
/// Length of a fault id (`EXPERIMENT/ACTION/HOST` from a controller), in bytes.
pub const FAULT_ID_BYTES: (u64, u64) = (1, 512);

/// A parameter outside its range; the message names the field, the value and the limit.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} is {value}; {limit}")]
pub struct OutOfRange {
    /// The wire field, e.g. `workers`.
    pub field: &'static str,
    /// The value received, as text.
    pub value: String,
    /// What it must be, e.g. "it must be 0-1024".
    pub limit: String,
}

/// Checks a whole number against its range: `field` is its wire name.
pub fn int(field: &'static str, value: u64, (min, max): (u64, u64)) -> Result<(), OutOfRange> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(OutOfRange {
            field,
            value: value.to_string(),
            limit: format!("it must be {min}-{max}"),
        })
    }
}

/// Checks a decimal number against its range (NaN is outside every range).
pub fn number(field: &'static str, value: f64, (min, max): (f64, f64)) -> Result<(), OutOfRange> {
    // NaN fails this test too.
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(OutOfRange {
            field,
            value: value.to_string(),
            limit: format!("it must be {min}-{max}"),
        })
    }
}

/// Checks a fault: its id, its duration against `max_duration` (the agent's own cap, at
/// most [`MAX_DURATION`]), then its parameters against its kind's ranges.
pub fn check(spec: &FaultSpec, max_duration: Duration) -> Result<(), OutOfRange> {
    let cap = max_duration.min(MAX_DURATION);
    int("fault_id", spec.fault_id.len() as u64, FAULT_ID_BYTES).map_err(|e| OutOfRange {
        value: format!("{} bytes long", spec.fault_id.len()),
        limit: format!("it must be {}-{} bytes long", FAULT_ID_BYTES.0, FAULT_ID_BYTES.1),
        ..e
    })?;
    match (spec.kind.instant(), spec.duration_ms) {
        (true, _) => {}
        (false, None) => {
            return Err(OutOfRange {
                field: "duration_ms",
                value: "absent".into(),
                limit: format!("a `{}` fault needs a duration", spec.kind.capability()),
            })
        }
        (false, Some(ms)) if ms == 0 || u128::from(ms) > cap.as_millis() => {
            return Err(OutOfRange {
                field: "duration_ms",
                value: ms.to_string(),
                limit: format!(
                    "it must be 1-{} (the {} limit of this agent)",
                    cap.as_millis(),
                    crate::duration::format(cap)
                ),
            })
        }
        _ => {}
    }
    spec.kind.check()
}

/// A directory a fault writes under: absolute, no NUL, no `..` (the agent deletes what it
/// made there, so where that is must be plain).
pub fn path_ok(path: &str) -> Result<(), OutOfRange> {
    let bad = |limit: String| OutOfRange {
        field: "path",
        value: format!("{path:?}"),
        limit,
    };
    if !path.starts_with('/') || path.contains('\0') || path.split('/').any(|c| c == "..") {
        return Err(bad("it must be an absolute path, without `..`".into()));
    }
    if !(PATH_BYTES.0..=PATH_BYTES.1).contains(&(path.len() as u64)) {
        return Err(bad(format!("it must be {}-{} bytes long", PATH_BYTES.0, PATH_BYTES.1)));
    }
    Ok(())
}

/// A process name a kill or pause matches: no '/', no NUL, [`PROCESS_NAME_BYTES`] long.
pub fn process_name_ok(name: &str) -> Result<(), OutOfRange> {
    let bad = |limit: &str| OutOfRange {
        field: "process_name",
        value: format!("{name:?}"),
        limit: limit.into(),
    };
    if name.contains('/') || name.contains('\0') {
        return Err(bad("a process name has no '/' and no NUL"));
    }
    int("process_name", name.len() as u64, PROCESS_NAME_BYTES).map_err(|_| {
        bad(&format!(
            "it must be {}-{} bytes long",
            PROCESS_NAME_BYTES.0, PROCESS_NAME_BYTES.1
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::{cpu, latency, memory, pause, FaultKind};
    use proptest::prelude::*;

    fn spec(kind: impl Into<FaultKind>, duration_ms: Option<u64>) -> FaultSpec {
        FaultSpec {
            fault_id: "e/a/h".into(),
            duration_ms,
            kind: kind.into(),
        }
    }

    const H12: Duration = MAX_DURATION;

    fn cpu(load_percent: u8, workers: u32) -> cpu::Params {
        cpu::Params { load_percent, workers }
    }

    fn pause() -> pause::Params {
        pause::Params {
            process_name: "web".into(),
        }
    }

    #[test]
    fn the_envelope_and_then_the_kinds_ranges_are_checked() {
        let cases = [
            (
                spec(cpu(50, 1), Some(100 * 86_400_000)),
                "duration_ms is 8640000000; it must be 1-43200000",
            ),
            (spec(cpu(50, 1), Some(0)), "duration_ms is 0"),
            (spec(pause(), None), "a `pause` fault needs a duration"),
            (
                spec(cpu(50, 4_000_000_000), Some(1000)),
                "workers is 4000000000; it must be 0-1024",
            ),
            (
                FaultSpec {
                    fault_id: "x".repeat(513),
                    ..spec(cpu(50, 1), Some(1000))
                },
                "fault_id is 513 bytes long; it must be 1-512 bytes long",
            ),
        ];
        for (s, want) in cases {
            let e = check(&s, H12).expect_err(want).to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn the_agents_own_cap_is_below_twelve_hours() {
        let s = spec(pause(), Some(61_000));
        assert!(check(&s, Duration::from_secs(61)).is_ok());
        let e = check(&s, Duration::from_secs(60)).unwrap_err().to_string();
        assert!(e.contains("1-60000 (the PT1M limit"), "{e}");
    }

    proptest! {
        /// Whatever the numbers, the check answers (never panics), and what it accepts is
        /// inside the ranges.
        #[test]
        fn never_panics_and_accepts_only_ranges(
            d in proptest::option::of(any::<u64>()),
            load in any::<u8>(),
            workers in any::<u32>(),
            delay in any::<u64>(),
            jitter in any::<u64>(),
            loss in any::<f64>(),
            mib in any::<u64>(),
        ) {
            if check(&spec(cpu(load, workers), d), H12).is_ok() {
                prop_assert!((1..=100).contains(&load) && workers <= 1024);
                prop_assert!(d.is_some_and(|d| d > 0 && d <= 43_200_000));
            }
            let lat = latency::Params { delay_ms: delay, jitter_ms: jitter, loss_percent: loss, sources: vec![] };
            if check(&spec(lat, d), H12).is_ok() {
                prop_assert!(delay <= 600_000 && jitter <= delay && (0.0..=100.0).contains(&loss));
            }
            let mem = memory::Params { amount: memory::MemoryAmount::SizeMib(mib), workers };
            if check(&spec(mem, d), H12).is_ok() {
                prop_assert!((1..=1 << 24).contains(&mib) && workers <= 256);
            }
        }
    }
}
