//! `faultline:host:memory-stress`: allocate, touch and keep resident an amount of memory.

use super::{Answer, Apply, Env, Fault, FaultError, FaultKind, Kind, Started, WireParams};
use crate::holder::{self, Bond, Deadline, Holder, Holding, Work};
use crate::limits::{self, OutOfRange};
use crate::protocol::{Observed, Outcome};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::BufRead;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::oneshot;

/// The wire parameters: `{"kind":"memory","amount":{"size_mib":256},"workers":0}` or
/// `{"kind":"memory","amount":{"percent":30},"workers":0}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// How much.
    pub amount: MemoryAmount,
    /// Threads touching the memory; 0 means one ([`WORKERS`]).
    pub workers: u32,
}

/// An amount of memory to hold.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum MemoryAmount {
    /// Absolute size in MiB ([`SIZE_MIB`]).
    SizeMib(u64),
    /// Percent of the memory available to the host, its cgroup limit when it has one
    /// ([`PERCENT`]).
    Percent(u8),
}

/// `workers`; 0 means one.
pub const WORKERS: (u64, u64) = (0, 256);
/// `percent` (`amount.percent`).
pub const PERCENT: (u64, u64) = (1, 100);
/// `size_mib` (`sizeMiB` in a template): 16 TiB, far above any host, and small enough that
/// the size in bytes never overflows.
pub const SIZE_MIB: (u64, u64) = (1, 1 << 24);

impl WireParams for Params {
    const CAPABILITY: &'static str = "memory";

    fn check(&self) -> Result<(), OutOfRange> {
        match self.amount {
            MemoryAmount::SizeMib(m) => limits::int("size_mib", m, SIZE_MIB)?,
            MemoryAmount::Percent(p) => limits::int("percent", u64::from(p), PERCENT)?,
        }
        limits::int("workers", u64::from(self.workers), WORKERS)
    }
}

/// The kind: its holder fills the memory, answers once resident, and dies with the agent.
#[derive(Debug, Default)]
pub struct Memory;

impl Kind for Memory {
    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, _env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Memory(Params { amount, workers }) = a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let bytes = Budget::read()
            .map_err(FaultError::io("cannot read the memory budget"))?
            .less(a.memory_pending)
            .bytes_for(amount)
            .map_err(FaultError::refused)?;
        let what = format!("cannot start the memory stress process for {} MiB", bytes >> 20);
        let work = Work {
            kind: Params::CAPABILITY,
            params: serde_json::json!({ "bytes": bytes, "workers": workers }),
            bond: Bond::Death,
        };
        let (holder, stdout) = Holder::spawn(&a.hash, &work, a.until).map_err(FaultError::io(&what))?;
        let filled = Arc::new(AtomicBool::new(false));
        let (tx, rx) = oneshot::channel();
        watch_filling(stdout, bytes, filled.clone(), tx).map_err(FaultError::io(what))?;
        Ok(Started {
            fault: Box::new(Held {
                holder: Some(holder),
                bytes,
                filled,
                resident: 0,
            }),
            answer: Answer::Later(rx),
        })
    }

    fn hold(&self, params: &serde_json::Value, holding: &Holding) -> std::io::Result<()> {
        let field = |name: &str| holder::u64_param(params, name);
        let workers = u32::try_from(field("workers")?).map_err(std::io::Error::other)?;
        hold_until(field("bytes")?, workers, holding.until, || holding.ready())
    }
}

/// A memory stress in effect. `filled` once the holder stops filling up: its memory is
/// resident, or it is gone.
#[derive(Debug)]
struct Held {
    holder: Option<Holder>,
    bytes: u64,
    filled: Arc<AtomicBool>,
    /// The last resident size seen, kept once the holder is gone.
    resident: u64,
}

impl Fault for Held {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        if let Some(h) = self.holder.take() {
            h.stop();
        }
        Ok(())
    }

    fn observed(&mut self) -> Observed {
        if let Some(h) = &self.holder {
            let status = fs::read_to_string(format!("/proc/{}/status", h.pid())).unwrap_or_default();
            if let Some(rss) = kb_field(&status, "VmRSS:") {
                self.resident = rss;
            }
        }
        Observed::default().with("resident_bytes", "bytes", Some(self.bytes as f64), self.resident as f64)
    }

    fn memory_pending(&self) -> u64 {
        if self.filled.load(Ordering::Acquire) {
            0
        } else {
            self.bytes
        }
    }
}

/// Answers a memory fault's apply once its holder says the memory is resident, or that it
/// failed; either way the fault stops counting as filling up.
fn watch_filling(
    stdout: std::process::ChildStdout,
    bytes: u64,
    filled: Arc<AtomicBool>,
    answer: oneshot::Sender<Outcome>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memory-filling".into())
        .spawn(move || {
            let mut line = String::new();
            let ready = std::io::BufReader::new(stdout).read_line(&mut line).is_ok() && line.trim() == holder::READY;
            filled.store(true, Ordering::Release);
            let _ = answer.send(if ready {
                Outcome::Applied {
                    detail: format!("holding {} MiB resident", bytes >> 20),
                    pids: vec![],
                }
            } else {
                Outcome::Failed {
                    message: "the memory stress process ended before the memory was resident (removed, or killed for lack of memory)".into(),
                }
            });
        })?;
    Ok(())
}

const MIB: u64 = 1 << 20;
/// Never leave less than this free, whatever the percentage of the host.
const MIN_MARGIN: u64 = 64 * MIB;

/// What memory this host has, as the agent may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Memory of the host, or its cgroup limit when lower.
    pub total: u64,
    /// What is free now within that.
    pub free: u64,
}

impl Budget {
    /// Reads `/proc/meminfo` and the cgroup limit (v2 or v1) of this process.
    pub fn read() -> std::io::Result<Budget> {
        let meminfo = fs::read_to_string("/proc/meminfo")?;
        let total = kb_field(&meminfo, "MemTotal:").unwrap_or(0);
        let available = kb_field(&meminfo, "MemAvailable:").unwrap_or(total);
        Ok(match cgroup_limit() {
            Some((limit, usage)) if limit < total => Budget {
                total: limit,
                free: available.min(limit.saturating_sub(usage)),
            },
            _ => Budget { total, free: available },
        })
    }

    /// The budget once `filling` more bytes are resident: memory faults in effect that are
    /// still filling up are not free.
    pub fn less(self, filling: u64) -> Budget {
        Budget {
            total: self.total,
            free: self.free.saturating_sub(filling),
        }
    }

    /// The safety margin: 5 % of the total, at least 64 MiB.
    pub fn margin(&self) -> u64 {
        (self.total / 20).max(MIN_MARGIN)
    }

    /// Bytes to hold for `amount`, or why that would be unsafe.
    pub fn bytes_for(&self, amount: MemoryAmount) -> Result<u64, UnsafeAmount> {
        let bytes = match amount {
            MemoryAmount::SizeMib(m) => m.saturating_mul(MIB),
            MemoryAmount::Percent(p) => self.total / 100 * u64::from(p),
        };
        let margin = self.margin();
        if bytes.saturating_add(margin) > self.free {
            return Err(UnsafeAmount {
                asked_mib: bytes / MIB,
                left_mib: self.free.saturating_sub(bytes) / MIB,
                total_mib: self.total / MIB,
                margin_mib: margin / MIB,
                at_most_mib: self.free.saturating_sub(margin) / MIB,
            });
        }
        Ok(bytes)
    }
}

/// An amount of memory that would leave less than the safety margin free.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "holding {asked_mib} MiB would leave {left_mib} MiB free of {total_mib} MiB, under the safety margin of \
     {margin_mib} MiB; ask for at most {at_most_mib} MiB"
)]
pub struct UnsafeAmount {
    /// What was asked for.
    pub asked_mib: u64,
    /// What would be left free.
    pub left_mib: u64,
    /// The host's (or cgroup's) memory.
    pub total_mib: u64,
    /// The margin that must stay free.
    pub margin_mib: u64,
    /// The most that may be asked for now.
    pub at_most_mib: u64,
}

/// A `Name:   123 kB` line of a /proc file (meminfo, status), in bytes.
fn kb_field(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let kb = l.strip_prefix(name)?.trim().strip_suffix("kB")?.trim();
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    })
}

/// The memory cgroup limit and usage of this process, when it has a limit.
fn cgroup_limit() -> Option<(u64, u64)> {
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let read_u64 = |p: String| fs::read_to_string(p).ok()?.trim().parse::<u64>().ok();
    // cgroup v2: "0::/path"
    if let Some(path) = own.lines().find_map(|l| l.strip_prefix("0::")) {
        for base in [format!("/sys/fs/cgroup{path}"), "/sys/fs/cgroup".into()] {
            if let (Some(limit), Some(usage)) = (
                read_u64(format!("{base}/memory.max")),
                read_u64(format!("{base}/memory.current")),
            ) {
                return Some((limit, usage));
            }
        }
    }
    // cgroup v1: "N:memory:/path"; inside a container the own path is mounted at the root.
    let v1 = own
        .lines()
        .find_map(|l| l.split_once(":memory:").map(|(_, p)| p.to_string()));
    if let Some(path) = v1 {
        for base in [format!("/sys/fs/cgroup/memory{path}"), "/sys/fs/cgroup/memory".into()] {
            let limit = read_u64(format!("{base}/memory.limit_in_bytes"));
            let usage = read_u64(format!("{base}/memory.usage_in_bytes"));
            if let (Some(limit), Some(usage)) = (limit, usage) {
                // v1 writes "no limit" as a huge page-rounded number.
                return (limit < 1 << 60).then_some((limit, usage));
            }
        }
    }
    None
}

/// Anonymous memory made resident; unmapped on drop.
#[derive(Debug)]
pub struct Resident {
    base: usize,
    len: usize,
}

impl Resident {
    /// Maps `bytes` and has `workers` threads (0 = one) write every page; returns once all
    /// are resident, or once `until` has passed (a fault never outlives its deadline).
    pub fn fill(bytes: u64, workers: u32, until: Deadline) -> std::io::Result<Resident> {
        let len = usize::try_from(bytes).map_err(std::io::Error::other)?.max(1);
        let size = std::num::NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty mapping"))?;
        use nix::sys::mman::{MapFlags, ProtFlags};
        // SAFETY: a new anonymous private mapping aliases nothing; the returned value owns it.
        let ptr = unsafe {
            nix::sys::mman::mmap_anonymous(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_PRIVATE,
            )
        }?;
        let resident = Resident {
            base: ptr.as_ptr() as usize,
            len,
        };
        let page = 4096usize;
        let workers = (workers.max(1) as usize).min(len.div_ceil(page));
        let chunk = len.div_ceil(workers).next_multiple_of(page);
        let base = resident.base;
        std::thread::scope(|s| {
            for w in 0..workers {
                let (start, end) = (w * chunk, ((w + 1) * chunk).min(len));
                s.spawn(move || {
                    let mut at = start;
                    while at < end {
                        // SAFETY: `at` is inside the mapping, which outlives this scope.
                        unsafe { std::ptr::write_volatile((base + at) as *mut u8, 0xA5) };
                        at += page;
                        // Checking the clock every 256 pages costs nothing next to the faults.
                        if at % (256 * page) == 0 && until.passed() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(resident)
    }
}

impl Drop for Resident {
    fn drop(&mut self) {
        if let Some(base) = std::ptr::NonNull::new(self.base as *mut std::ffi::c_void) {
            // SAFETY: the mapping was created by `fill` with this base and length, and no
            // thread touches it any more.
            let _ = unsafe { nix::sys::mman::munmap(base, self.len) };
        }
    }
}

/// In the holder: offers this process to the OOM killer first, fills `bytes`, says so with
/// `ready`, and holds the memory until `until`.
pub fn hold_until(bytes: u64, workers: u32, until: Deadline, ready: impl FnOnce()) -> std::io::Result<()> {
    // The OOM killer then takes this holder, never the agent and its proxy.
    fs::write("/proc/self/oom_score_adj", "1000")?;
    let resident = Resident::fill(bytes, workers, until)?;
    ready();
    until.sleep();
    drop(resident);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_would_eat_the_margin() {
        let b = Budget {
            total: 1000 * MIB,
            free: 500 * MIB,
        };
        assert_eq!(b.margin(), 64 * MIB);
        assert_eq!(b.bytes_for(MemoryAmount::SizeMib(400)), Ok(400 * MIB));
        let err = b.bytes_for(MemoryAmount::SizeMib(450)).unwrap_err().to_string();
        assert!(err.contains("ask for at most 436 MiB"), "{err}");
        assert_eq!(b.bytes_for(MemoryAmount::Percent(10)), Ok(100 * MIB));
        assert!(b.bytes_for(MemoryAmount::Percent(50)).is_err());
    }

    #[test]
    fn memory_still_filling_is_not_free() {
        let b = Budget {
            total: 1000 * MIB,
            free: 500 * MIB,
        };
        assert!(b.less(100 * MIB).bytes_for(MemoryAmount::SizeMib(400)).is_err());
        assert_eq!(b.less(100 * MIB).bytes_for(MemoryAmount::SizeMib(300)), Ok(300 * MIB));
    }

    #[test]
    fn fills_resident_and_releases() {
        let rss = || kb_field(&fs::read_to_string("/proc/self/status").unwrap(), "VmRSS:").unwrap();
        let before = rss();
        let held = Resident::fill(64 * MIB, 2, Deadline::after(std::time::Duration::from_secs(60))).unwrap();
        assert!(rss() >= before + 60 * MIB);
        drop(held);
        assert!(rss() < before + 16 * MIB);
    }
}
