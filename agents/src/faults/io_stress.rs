//! `faultline:host:io-stress`: worker threads write files (with fsync) and read them back,
//! over and over, under a directory, for a while: real disk throughput taken from the
//! host's other writers.
//!
//! The files together take `percent` of the free space of `path`'s filesystem (never past
//! the safety margin of [`disk_fill::margin`]). They have no name
//! ([`disk_fill::anonymous_file`]): a holder process does the I/O until the deadline or
//! until the agent is gone (its stdin pipe closes), and their space goes with the holder
//! however it ends, so no crash or unreadable record can leave them behind.

use super::disk_fill::{self, Space};
use super::{Answer, Apply, Env, Fault, FaultError, FaultKind, Kind, Started, WireParams};
use crate::holder::{self, Bond, Holder, Holding, Work};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;
/// Each write is this big; every [`SYNC_EVERY`] writes are synced to the disk.
const CHUNK: usize = 1 << 20;
const SYNC_EVERY: u64 = 4;

/// The wire parameters: `{"kind":"io_stress","workers":1,"percent":80,"path":"/tmp"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Writer threads, each with its own file ([`WORKERS`]).
    pub workers: u32,
    /// Percent of the free space of `path`'s filesystem the files take together ([`PERCENT`]).
    pub percent: u8,
    /// An existing directory; the files go in a directory of the fault's own under it
    /// (absolute, [`limits::PATH_BYTES`] long).
    pub path: String,
}

/// `workers`.
pub const WORKERS: (u64, u64) = (1, 64);
/// `percent`: of the free space.
pub const PERCENT: (u64, u64) = (1, 100);

impl WireParams for Params {
    const CAPABILITY: &'static str = "io";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("workers", u64::from(self.workers), WORKERS)?;
        limits::int("percent", u64::from(self.percent), PERCENT)?;
        limits::path_ok(&self.path)
    }
}

/// The kind.
#[derive(Debug, Default)]
pub struct IoStress;

impl Kind for IoStress {
    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        let FaultKind::IoStress(Params { path, .. }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        disk_fill::prepare_dir(path, &a.hash)
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, _env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::IoStress(Params { workers, percent, path }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let dir = disk_fill::dir_of(undo).ok_or_else(|| super::mismatch(a.spec))?;
        let space =
            Space::of(Path::new(path)).map_err(FaultError::io(format!("cannot read the filesystem of {path}")))?;
        let bytes = (space.available / 100 * u64::from(*percent))
            .min(space.available.saturating_sub(disk_fill::margin(space.total)));
        let per_worker = bytes / u64::from((*workers).max(1));
        if per_worker < MIB {
            return Err(FaultError::Refused(format!(
                "refused: {percent} % of the free space of {path} ({} MiB available, {} MiB kept free) is less than 1 MiB per worker",
                space.available / MIB,
                disk_fill::margin(space.total) / MIB
            )));
        }
        let work = Work {
            kind: Params::CAPABILITY,
            params: serde_json::json!({ "path": path, "dir": dir, "workers": workers, "bytes_per_worker": per_worker }),
            bond: Bond::Pipe,
        };
        let (holder, _) =
            Holder::spawn(&a.hash, &work, a.until).map_err(FaultError::io("cannot start the I/O stress process"))?;
        let meter = IoMeter::start(holder.pid());
        Ok(Started {
            fault: Box::new(Stressing {
                holder: Some(holder),
                dir,
                meter,
            }),
            answer: Answer::Now(
                format!(
                    "io in effect for {} ms: {workers} worker(s) over {} MiB",
                    a.duration.as_millis(),
                    per_worker * u64::from(*workers) / MIB
                ),
                vec![],
            ),
        })
    }

    fn restore(&self, _fault_id: &str, undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        match disk_fill::dir_of(&undo) {
            Some(dir) => Box::new(disk_fill::Leftover(dir)),
            None => Box::new(super::Gone),
        }
    }

    fn hold(&self, params: &serde_json::Value, holding: &Holding) -> io::Result<()> {
        let (path, dir) = (holder::path_param(params, "path")?, holder::path_param(params, "dir")?);
        let workers = holder::u64_param(params, "workers")?;
        let per_worker = holder::u64_param(params, "bytes_per_worker")?;
        let files: io::Result<Vec<fs::File>> = (0..workers)
            .map(|i| disk_fill::anonymous_file(path, dir, &format!("worker-{i}")))
            .collect();
        // The directory exists only where there is no O_TMPFILE, and only until the files
        // are open.
        disk_fill::remove_dir(dir)?;
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = files?
            .into_iter()
            .map(|file| {
                let stop = stop.clone();
                std::thread::spawn(move || churn(file, per_worker, &stop))
            })
            .collect();
        // Ends at the deadline, when the agent is gone, or when every worker failed.
        while !holding.should_stop(Duration::from_millis(200)) && !threads.iter().all(|t| t.is_finished()) {}
        stop.store(true, Ordering::Release);
        let mut first_error = None;
        for t in threads {
            if let Ok(Err(e)) = t.join() {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// A worker: writes `bytes` to `f` (synced every few chunks), reads them back, and again,
/// until `stop`.
fn churn(mut f: fs::File, bytes: u64, stop: &AtomicBool) -> io::Result<()> {
    let mut chunk = vec![0u8; CHUNK];
    // Not all zeros, so no filesystem can skip the writes as holes.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in chunk.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let chunks = bytes / CHUNK as u64;
    while !stop.load(Ordering::Acquire) {
        f.rewind()?;
        for i in 0..chunks {
            f.write_all(&chunk)?;
            if i % SYNC_EVERY == SYNC_EVERY - 1 {
                f.sync_data()?;
            }
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        f.sync_data()?;
        f.rewind()?;
        for _ in 0..chunks {
            f.read_exact(&mut chunk)?;
            if stop.load(Ordering::Acquire) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// An I/O stress in effect.
#[derive(Debug)]
struct Stressing {
    holder: Option<Holder>,
    dir: PathBuf,
    meter: IoMeter,
}

impl Fault for Stressing {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        if let Some(h) = self.holder.take() {
            h.finish(disk_fill::PATIENCE);
        }
        disk_fill::remove_dir(&self.dir).map_err(FaultError::io(format!("cannot delete {}", self.dir.display())))
    }

    fn observed(&mut self) -> Observed {
        self.meter.read();
        let secs = self.meter.started.elapsed().as_secs_f64().max(0.001);
        Observed::default()
            .with("bytes_written", "bytes", None, self.meter.written as f64)
            .with(
                "write_bytes_per_second",
                "bytes/s",
                None,
                self.meter.written as f64 / secs,
            )
            .with("disk_bytes_written", "bytes", None, self.meter.disk_written as f64)
    }
}

/// What a process wrote, from /proc/PID/io: through write calls, and to storage.
#[derive(Debug)]
struct IoMeter {
    pid: u32,
    started: Instant,
    written: u64,
    disk_written: u64,
}

impl IoMeter {
    fn start(pid: u32) -> IoMeter {
        IoMeter {
            pid,
            started: Instant::now(),
            written: 0,
            disk_written: 0,
        }
    }

    /// Takes a reading; the last one stays once the process is gone.
    fn read(&mut self) {
        let Ok(text) = fs::read_to_string(format!("/proc/{}/io", self.pid)) else {
            return;
        };
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        if let (Some(w), Some(d)) = (field("wchar:"), field("write_bytes:")) {
            self.written = w;
            self.disk_written = d;
        }
    }
}
