//! `faultline:host:cpu-stress`: worker threads holding a load by duty cycle, in a holder
//! process (see [`crate::holder`]) that ends at the fault's deadline.

use super::{Answer, Apply, Env, Fault, FaultError, FaultKind, Kind, Started, WireParams};
use crate::holder::{self, Bond, Deadline, Holder, Holding, Work};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// The wire parameters: `{"kind":"cpu","load_percent":80,"workers":0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Duty cycle of each worker, percent ([`LOAD_PERCENT`]).
    pub load_percent: u8,
    /// Worker threads; 0 means one per CPU ([`WORKERS`]).
    pub workers: u32,
}

/// `load_percent` (`loadPercent` in a template).
pub const LOAD_PERCENT: (u64, u64) = (1, 100);
/// `workers`; 0 means one per CPU.
pub const WORKERS: (u64, u64) = (0, 1024);

impl WireParams for Params {
    const CAPABILITY: &'static str = "cpu";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("load_percent", u64::from(self.load_percent), LOAD_PERCENT)?;
        limits::int("workers", u64::from(self.workers), WORKERS)
    }
}

/// The kind: its holder burns the CPU and dies with the agent.
#[derive(Debug, Default)]
pub struct Cpu;

impl Kind for Cpu {
    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, _env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Cpu(Params { load_percent, workers }) = a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let work = Work {
            kind: Params::CAPABILITY,
            params: serde_json::json!({ "load_percent": load_percent, "workers": workers }),
            bond: Bond::Death,
        };
        let (holder, _) =
            Holder::spawn(&a.hash, &work, a.until).map_err(FaultError::io("cannot start the CPU stress process"))?;
        let meter = CpuMeter::start(holder.pid());
        Ok(Started {
            fault: Box::new(Burning {
                holder: Some(holder),
                meter,
                load_percent,
                workers: resolve_workers(workers),
            }),
            answer: Answer::Now(format!("cpu in effect for {} ms", a.duration.as_millis()), vec![]),
        })
    }

    fn hold(&self, params: &serde_json::Value, holding: &Holding) -> std::io::Result<()> {
        let field = |name: &str| holder::u64_param(params, name);
        let load_percent = u8::try_from(field("load_percent")?).map_err(std::io::Error::other)?;
        let workers = u32::try_from(field("workers")?).map_err(std::io::Error::other)?;
        burn_until(load_percent, workers, holding.until)
    }
}

/// A CPU stress in effect.
#[derive(Debug)]
struct Burning {
    holder: Option<Holder>,
    meter: CpuMeter,
    load_percent: u8,
    workers: usize,
}

impl Fault for Burning {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        if let Some(h) = self.holder.take() {
            h.stop();
        }
        Ok(())
    }

    fn observed(&mut self) -> Observed {
        // The load of each worker, averaged over the fault's life so far: CPU time of the
        // holder over wall time, per worker.
        let share = self.meter.cpus() / self.workers.max(1) as f64 * 100.0;
        Observed::default().with("cpu_percent_per_worker", "%", Some(f64::from(self.load_percent)), share)
    }
}

/// Workers a holder starts for `workers` (0 = one per CPU this process may use).
fn resolve_workers(workers: u32) -> usize {
    if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers as usize
    }
}

/// CPUs a process has used on average since the meter started, from /proc/PID/stat.
#[derive(Debug)]
pub struct CpuMeter {
    pid: u32,
    started: Instant,
    /// The last reading, in clock ticks: kept when the process is gone.
    ticks: u64,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: u32) -> CpuMeter {
        CpuMeter {
            pid,
            started: Instant::now(),
            ticks: 0,
        }
    }

    /// Average CPUs used since the start (1.0 = one CPU busy all the time).
    pub fn cpus(&mut self) -> f64 {
        if let Some(t) = process_ticks(self.pid) {
            self.ticks = t;
        }
        let secs = self.started.elapsed().as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        self.ticks as f64 / clock_ticks_per_second() / secs
    }
}

/// User plus system time of a process (all its threads), in clock ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 (utime, stime), counted from the state (field 3) at index 0.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// Short periods keep the load smooth as a sampler sees it.
const PERIOD: Duration = Duration::from_millis(100);

/// In the holder: starts `workers` threads (0 = one per CPU this process may use), each busy
/// `load_percent` of the time, and returns at `until`; the process exit ends the workers.
pub fn burn_until(load_percent: u8, workers: u32, until: Deadline) -> std::io::Result<()> {
    let workers = resolve_workers(workers);
    let busy = PERIOD * u32::from(load_percent.min(100)) / 100;
    for i in 0..workers {
        std::thread::Builder::new()
            .name(format!("cpu-stress-{i}"))
            .spawn(move || loop {
                burn_one_period(busy)
            })?;
    }
    until.sleep();
    Ok(())
}

/// Busy for `busy`, then idle for the rest of the period.
fn burn_one_period(busy: Duration) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let start = Instant::now();
    while start.elapsed() < busy {
        for _ in 0..1000 {
            x = std::hint::black_box(x.rotate_left(7) ^ x.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
    }
    std::thread::sleep(PERIOD.saturating_sub(start.elapsed()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_is_busy_for_its_share_then_idle() {
        let t = Instant::now();
        burn_one_period(PERIOD / 2);
        let took = t.elapsed();
        assert!(took >= PERIOD && took < PERIOD * 2, "{took:?}");
    }
}
