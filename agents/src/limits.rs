//! The ranges every fault parameter must fall in: the controller's validator checks
//! templates against them, and the agent checks every command it receives against them
//! again, so that a forged or buggy frame cannot ask for four billion workers or a
//! hundred-day blackout.

use crate::protocol::{FaultKind, FaultSpec, MemoryAmount};
use std::time::Duration;

/// The longest action (and fault) a template may ask for.
pub const MAX_DURATION: Duration = Duration::from_secs(12 * 3600);
/// `loadPercent` of a CPU stress.
pub const LOAD_PERCENT: (u64, u64) = (1, 100);
/// `workers` of a CPU stress; 0 means one per CPU.
pub const CPU_WORKERS: (u64, u64) = (0, 1024);
/// `workers` of a memory stress; 0 means one.
pub const MEMORY_WORKERS: (u64, u64) = (0, 256);
/// `percent` of a memory stress.
pub const MEMORY_PERCENT: (u64, u64) = (1, 100);
/// `sizeMiB` of a memory stress: 16 TiB, far above any host, and small enough that the
/// size in bytes never overflows.
pub const MEMORY_MIB: (u64, u64) = (1, 1 << 24);
/// `workers` of an I/O stress.
pub const IO_WORKERS: (u64, u64) = (1, 64);
/// `percent` of an I/O stress: of the free space.
pub const IO_PERCENT: (u64, u64) = (1, 100);
/// `percent` of a disk fill: how full the filesystem gets. Never 100: see the safety margin
/// in the agent's `faults/disk_fill.rs`.
pub const FILL_PERCENT: (u64, u64) = (1, 99);
/// Length of a `path` (an absolute directory), in bytes.
pub const PATH_BYTES: (u64, u64) = (1, 4096);
/// `delayMilliseconds` and `jitterMilliseconds` of a latency: ten minutes.
pub const DELAY_MS: (u64, u64) = (0, 600_000);
/// `lossPercent` of a latency.
pub const LOSS_PERCENT: (f64, f64) = (0.0, 100.0);
/// `port` of a port blackhole.
pub const PORT: (u64, u64) = (1, 65535);
/// `lossPercent` of a packet loss (FIS's default is 7).
pub const PACKET_LOSS_PERCENT: (f64, f64) = (0.0, 100.0);
/// Entries of a `sources` list once AZ names are resolved (an AZ's hosts, networks).
pub const SOURCES: (u64, u64) = (0, 4096);
/// Addresses a blackout may keep reachable: far more than the hosts of an AZ.
pub const BLACKOUT_ALLOW: (u64, u64) = (1, 4096);
/// Length of a process name a kill or pause matches (argv[0] basenames can be long).
pub const PROCESS_NAME_BYTES: (u64, u64) = (1, 255);
/// Length of a fault id (`EXPERIMENT/ACTION/HOST` from a controller), in bytes.
pub const FAULT_ID_BYTES: (u64, u64) = (1, 512);
/// Signals a kill refuses: a stopped process is never resumed by a kill, so stopping is
/// the job of `faultline:process:pause`, which resumes what it stops.
pub const STOP_SIGNALS: [&str; 2] = ["SIGSTOP", "SIGTSTP"];

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

fn int(field: &'static str, value: u64, (min, max): (u64, u64)) -> Result<(), OutOfRange> {
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

fn number(field: &'static str, value: f64, (min, max): (f64, f64)) -> Result<(), OutOfRange> {
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

/// Checks a fault against these limits and against `max_duration` (the agent's own cap,
/// at most [`MAX_DURATION`]).
pub fn check(spec: &FaultSpec, max_duration: Duration) -> Result<(), OutOfRange> {
    let cap = max_duration.min(MAX_DURATION);
    int("fault_id", spec.fault_id.len() as u64, FAULT_ID_BYTES).map_err(|e| OutOfRange {
        value: format!("{} bytes long", spec.fault_id.len()),
        limit: format!("it must be {}-{} bytes long", FAULT_ID_BYTES.0, FAULT_ID_BYTES.1),
        ..e
    })?;
    match (&spec.kind, spec.duration_ms) {
        (FaultKind::Kill { .. }, _) => {}
        (_, None) => {
            return Err(OutOfRange {
                field: "duration_ms",
                value: "absent".into(),
                limit: format!("a `{}` fault needs a duration", spec.kind.capability()),
            })
        }
        (_, Some(ms)) if ms == 0 || u128::from(ms) > cap.as_millis() => {
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
    match &spec.kind {
        FaultKind::Kill { process_name, signal } => {
            process_name_ok(process_name)?;
            if STOP_SIGNALS.contains(&signal.as_str()) {
                return Err(OutOfRange {
                    field: "signal",
                    value: signal.clone(),
                    limit: "a kill never stops a process; use faultline:process:pause, which resumes it".into(),
                });
            }
            if !crate::protocol::SIGNALS.contains(&signal.as_str()) {
                return Err(OutOfRange {
                    field: "signal",
                    value: signal.clone(),
                    limit: format!("it must be one of {}", crate::protocol::SIGNALS.join(", ")),
                });
            }
        }
        FaultKind::Pause { process_name } => process_name_ok(process_name)?,
        FaultKind::Cpu { load_percent, workers } => {
            int("load_percent", u64::from(*load_percent), LOAD_PERCENT)?;
            int("workers", u64::from(*workers), CPU_WORKERS)?;
        }
        FaultKind::Memory { amount, workers } => {
            match amount {
                MemoryAmount::SizeMib(m) => int("size_mib", *m, MEMORY_MIB)?,
                MemoryAmount::Percent(p) => int("percent", u64::from(*p), MEMORY_PERCENT)?,
            }
            int("workers", u64::from(*workers), MEMORY_WORKERS)?;
        }
        FaultKind::IoStress { workers, percent, path } => {
            int("workers", u64::from(*workers), IO_WORKERS)?;
            int("percent", u64::from(*percent), IO_PERCENT)?;
            path_ok(path)?;
        }
        FaultKind::DiskFill { percent, path } => {
            int("percent", u64::from(*percent), FILL_PERCENT)?;
            path_ok(path)?;
        }
        FaultKind::Latency {
            delay_ms,
            jitter_ms,
            loss_percent,
            sources,
        } => {
            int("delay_ms", *delay_ms, DELAY_MS)?;
            int("jitter_ms", *jitter_ms, (DELAY_MS.0, *delay_ms))?;
            number("loss_percent", *loss_percent, LOSS_PERCENT)?;
            int("sources", sources.len() as u64, SOURCES)?;
        }
        FaultKind::BlackholePort { port, .. } => int("port", u64::from(*port), PORT)?,
        FaultKind::PacketLoss { loss_percent, sources } => {
            number("loss_percent", *loss_percent, PACKET_LOSS_PERCENT)?;
            int("sources", sources.len() as u64, SOURCES)?;
        }
        FaultKind::Blackout { allow, deny, .. } => {
            int("deny", deny.len() as u64, SOURCES)?;
            int("allow", allow.len() as u64, BLACKOUT_ALLOW).map_err(|e| OutOfRange {
                value: format!("a list of {} addresses", allow.len()),
                limit: format!(
                    "it must list {}-{} addresses (the other hosts of the AZ)",
                    BLACKOUT_ALLOW.0, BLACKOUT_ALLOW.1
                ),
                ..e
            })?
        }
    }
    Ok(())
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

fn process_name_ok(name: &str) -> Result<(), OutOfRange> {
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
    use proptest::prelude::*;

    fn spec(kind: FaultKind, duration_ms: Option<u64>) -> FaultSpec {
        FaultSpec {
            fault_id: "e/a/h".into(),
            duration_ms,
            kind,
        }
    }

    const H12: Duration = MAX_DURATION;

    #[test]
    fn absurd_values_are_refused_with_field_value_and_limit() {
        let cases = [
            (
                spec(
                    FaultKind::Cpu {
                        load_percent: 50,
                        workers: 4_000_000_000,
                    },
                    Some(1000),
                ),
                "workers is 4000000000; it must be 0-1024",
            ),
            (
                spec(
                    FaultKind::Latency {
                        delay_ms: 10,
                        jitter_ms: 0,
                        loss_percent: 0.0,
                        sources: vec![],
                    },
                    Some(100 * 86_400_000),
                ),
                "duration_ms is 8640000000; it must be 1-43200000",
            ),
            (
                spec(
                    FaultKind::Blackout {
                        allow: vec![],
                        keep_control_plane: true,
                        deny: vec![],
                    },
                    Some(1000),
                ),
                "allow is a list of 0 addresses",
            ),
            (
                spec(
                    FaultKind::Kill {
                        process_name: "x".into(),
                        signal: "SIGSTOP".into(),
                    },
                    None,
                ),
                "faultline:process:pause",
            ),
            (
                spec(
                    FaultKind::Memory {
                        amount: MemoryAmount::SizeMib(u64::MAX),
                        workers: 0,
                    },
                    Some(1000),
                ),
                "size_mib is 18446744073709551615",
            ),
            (
                spec(
                    FaultKind::Latency {
                        delay_ms: 10,
                        jitter_ms: 0,
                        loss_percent: f64::NAN,
                        sources: vec![],
                    },
                    Some(1000),
                ),
                "loss_percent is NaN",
            ),
            (
                spec(
                    FaultKind::Pause {
                        process_name: "web".into(),
                    },
                    None,
                ),
                "needs a duration",
            ),
            (
                spec(
                    FaultKind::BlackholePort {
                        protocol: crate::protocol::Transport::Tcp,
                        port: 0,
                        traffic: crate::protocol::Direction::Ingress,
                    },
                    Some(1000),
                ),
                "port is 0; it must be 1-65535",
            ),
            (
                spec(
                    FaultKind::PacketLoss {
                        loss_percent: 100.5,
                        sources: vec![],
                    },
                    Some(1000),
                ),
                "loss_percent is 100.5",
            ),
        ];
        for (s, want) in cases {
            let e = check(&s, H12).expect_err(want).to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn the_agents_own_cap_is_below_twelve_hours() {
        let s = spec(
            FaultKind::Pause {
                process_name: "web".into(),
            },
            Some(61_000),
        );
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
            let cpu = spec(FaultKind::Cpu { load_percent: load, workers }, d);
            if check(&cpu, H12).is_ok() {
                prop_assert!((1..=100).contains(&load) && workers <= 1024);
                prop_assert!(d.is_some_and(|d| d > 0 && d <= 43_200_000));
            }
            let lat = spec(FaultKind::Latency { delay_ms: delay, jitter_ms: jitter, loss_percent: loss, sources: vec![] }, d);
            if check(&lat, H12).is_ok() {
                prop_assert!(delay <= 600_000 && jitter <= delay && (0.0..=100.0).contains(&loss));
            }
            let mem = spec(FaultKind::Memory { amount: MemoryAmount::SizeMib(mib), workers }, d);
            if check(&mem, H12).is_ok() {
                prop_assert!((1..=1 << 24).contains(&mib) && workers <= 256);
            }
        }
    }
}
