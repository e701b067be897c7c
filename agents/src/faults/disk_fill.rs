//! `faultline:host:disk-fill`: fill the filesystem of a directory with one file until it is
//! `percent` full as `df`'s `Use%` shows it (FIS's measure: blocks reserved for root are not
//! free), for a while.
//!
//! The file has no name ([`anonymous_file`]): a holder process opens it, fills it
//! (fallocate, or writes where the filesystem cannot allocate), says so, and holds it until
//! the deadline or until the agent is gone (its stdin pipe closes). Its space is the
//! holder's only while the holder lives, so nothing (a `kill -9` of agent and holder, an
//! unreadable record) can leave it behind: `df` sees the fill, `ls` and `du` do not.
//! Where the filesystem has no `O_TMPFILE`, the file is created in `<path>/.faultline-<hash>`
//! (named in the record before it exists) and unlinked at once; the record's removal deletes
//! that directory if a crash came between the two (with an unreadable record too, that
//! empty-but-for-one-file directory would stay: a window of two system calls).
//!
//! Safety margin: a fill never leaves less than [`margin`] free (1 % of the filesystem, at
//! least 16 MiB), and is refused when the filesystem is already at or above the percent.

use super::{Answer, Apply, Env, Fault, FaultError, FaultKind, Kind, Started, WireParams};
use crate::holder::{self, Bond, Holder, Holding, Work};
use crate::limits::{self, OutOfRange};
use crate::protocol::{Observed, Outcome};
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const MIB: u64 = 1 << 20;
/// How long a removal waits for the holder to delete its files before it deletes them itself.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The space of a filesystem, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Its size.
    pub total: u64,
    /// In use (by anyone, reserved blocks included).
    pub used: u64,
    /// What an unprivileged writer may still take.
    pub available: u64,
}

impl Space {
    /// Reads the filesystem of `path` (statvfs).
    pub fn of(path: &Path) -> io::Result<Space> {
        let s = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
        let unit = s.fragment_size() as u64;
        Ok(Space {
            total: s.blocks() as u64 * unit,
            used: (s.blocks() as u64).saturating_sub(s.blocks_free() as u64) * unit,
            available: s.blocks_available() as u64 * unit,
        })
    }

    /// Percent in use as `df` shows it (`Use%`, FIS's Disk-Fill measure): of the space
    /// writers can use, so blocks reserved for root (5 % on ext4 by default) are not counted
    /// as free.
    pub fn used_percent(&self) -> f64 {
        let usable = self.used + self.available;
        if usable == 0 {
            return 0.0;
        }
        self.used as f64 * 100.0 / usable as f64
    }
}

/// What must stay free on a filesystem whatever a fault asks: 1 % of it, at least 16 MiB.
pub fn margin(total: u64) -> u64 {
    (total / 100).max(16 * MIB)
}

/// The directory of a fault under `path`, named after its hash.
pub fn fault_dir(path: &str, hash: &str) -> PathBuf {
    Path::new(path).join(format!(".faultline-{hash}"))
}

/// Checks that `path` is a directory and returns the fault's own directory under it.
pub fn prepare_dir(path: &str, hash: &str) -> Result<serde_json::Value, FaultError> {
    let meta = fs::metadata(path).map_err(FaultError::io(format!("cannot use path {path}")))?;
    if !meta.is_dir() {
        return Err(FaultError::Refused(format!("path {path} is not a directory")));
    }
    Ok(serde_json::json!({ "dir": fault_dir(path, hash) }))
}

/// The directory a record's undo data names.
pub fn dir_of(undo: &serde_json::Value) -> Option<PathBuf> {
    undo.get("dir")?.as_str().map(PathBuf::from)
}

/// Opens a file with no name on the filesystem of `path`, for reading and writing: its
/// space is freed when the last descriptor closes, however the process ends. Where the
/// filesystem has no `O_TMPFILE`, `dir/name` is created and unlinked at once.
pub fn anonymous_file(path: &Path, dir: &Path, name: &str) -> io::Result<fs::File> {
    use nix::fcntl::OFlag;
    use nix::sys::stat::Mode;
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    match nix::fcntl::open(path, flags, Mode::S_IRUSR | Mode::S_IWUSR) {
        Ok(fd) => return Ok(fs::File::from(fd)),
        // EISDIR: a kernel that predates O_TMPFILE; the others: a filesystem without it.
        Err(nix::errno::Errno::EOPNOTSUPP | nix::errno::Errno::EISDIR | nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(e.into()),
    }
    fs::create_dir_all(dir)?;
    let named = dir.join(name);
    let file = fs::OpenOptions::new()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&named)?;
    fs::remove_file(&named)?;
    Ok(file)
}

/// Deletes a fault's directory and everything in it; one already gone is no error.
pub fn remove_dir(dir: &Path) -> io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Bytes to add for the filesystem to reach `percent` as `df` shows it
/// ([`Space::used_percent`]), or why that is refused.
pub fn bytes_to_fill(space: Space, percent: u8) -> Result<u64, FaultError> {
    let usable = space.used + space.available;
    let target = usable / 100 * u64::from(percent);
    if space.used >= target {
        return Err(FaultError::Refused(format!(
            "refused: the filesystem is already {:.1} % full, at or above the {percent} % asked",
            space.used_percent()
        )));
    }
    let bytes = target - space.used;
    let margin = margin(space.total);
    if bytes.saturating_add(margin) > space.available {
        let at_most = space.used + space.available.saturating_sub(margin);
        return Err(FaultError::Refused(format!(
            "refused: filling to {percent} % would leave less than the safety margin of {} MiB free \
             ({} MiB available); ask for at most {} %",
            margin / MIB,
            space.available / MIB,
            at_most * 100 / usable.max(1)
        )));
    }
    Ok(bytes)
}

/// The wire parameters: `{"kind":"disk_fill","percent":95,"path":"/tmp"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// How full the filesystem is to be, as `df`'s `Use%` shows it ([`PERCENT`]).
    pub percent: u8,
    /// An existing directory on the filesystem to fill (absolute, [`limits::PATH_BYTES`] long).
    pub path: String,
}

/// `percent`: how full the filesystem gets. Never 100: see the safety margin ([`margin`]).
pub const PERCENT: (u64, u64) = (1, 99);

impl WireParams for Params {
    const CAPABILITY: &'static str = "disk";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("percent", u64::from(self.percent), PERCENT)?;
        limits::path_ok(&self.path)
    }
}

/// The kind.
#[derive(Debug, Default)]
pub struct DiskFill;

impl Kind for DiskFill {
    fn prepare(&self, a: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        let FaultKind::DiskFill(Params { path, .. }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        prepare_dir(path, &a.hash)
    }

    fn apply(&self, a: &Apply<'_>, undo: &serde_json::Value, _env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::DiskFill(Params { percent, path }) = &a.spec.kind else {
            return Err(super::mismatch(a.spec));
        };
        let dir = dir_of(undo).ok_or_else(|| super::mismatch(a.spec))?;
        let space =
            Space::of(Path::new(path)).map_err(FaultError::io(format!("cannot read the filesystem of {path}")))?;
        let bytes = bytes_to_fill(space, *percent)?;
        let work = Work {
            kind: Params::CAPABILITY,
            params: serde_json::json!({ "path": path, "dir": dir, "bytes": bytes }),
            bond: Bond::Pipe,
        };
        let (holder, stdout) =
            Holder::spawn(&a.hash, &work, a.until).map_err(FaultError::io("cannot start the disk fill process"))?;
        let (tx, rx) = oneshot::channel();
        let percent = *percent;
        // Measured as soon as the file is full: at the deadline the holder deletes it on its
        // own, maybe before the agent's removal looks.
        let at_ready = Arc::new(AtomicU64::new(0));
        let (sample, fs_path) = (at_ready.clone(), PathBuf::from(path));
        std::thread::Builder::new()
            .name("disk-filling".into())
            .spawn(move || {
                let mut line = String::new();
                let ready = io::BufReader::new(stdout).read_line(&mut line).is_ok() && line.trim() == holder::READY;
                if let (true, Ok(space)) = (ready, Space::of(&fs_path)) {
                    sample.store(space.used_percent().to_bits(), Ordering::Release);
                }
                let _ = tx.send(if ready {
                    Outcome::Applied {
                        detail: format!("filled {} MiB: the filesystem is at {percent} %", bytes / MIB),
                        pids: vec![],
                    }
                } else {
                    Outcome::Failed {
                        message: "the disk fill process ended before the file was full (removed, or no space)".into(),
                    }
                });
            })
            .map_err(FaultError::io("cannot watch the disk fill process"))?;
        Ok(Started {
            fault: Box::new(Filled {
                holder: Some(holder),
                dir,
                path: PathBuf::from(path),
                percent,
                at_ready,
            }),
            answer: Answer::Later(rx),
        })
    }

    fn restore(&self, _fault_id: &str, undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        match dir_of(&undo) {
            Some(dir) => Box::new(Leftover(dir)),
            None => Box::new(super::Gone),
        }
    }

    fn hold(&self, params: &serde_json::Value, holding: &Holding) -> io::Result<()> {
        let (path, dir) = (holder::path_param(params, "path")?, holder::path_param(params, "dir")?);
        let bytes = holder::u64_param(params, "bytes")?;
        let file = anonymous_file(path, dir, "fill");
        // The directory exists only where there is no O_TMPFILE, and only until the file
        // is open; whatever happened, nothing of it stays.
        let removed = remove_dir(dir);
        let filled = file.and_then(|f| fill(f, bytes, holding));
        if filled.is_ok() {
            holding.ready();
            holding.wait_end();
        }
        // The file closes here, and its space goes with it.
        filled.and(removed)
    }
}

/// In the holder: makes `file` `bytes` long, allocated, and returns it (its space is held
/// as long as it is open).
fn fill(mut file: fs::File, bytes: u64, holding: &Holding) -> io::Result<fs::File> {
    let len = i64::try_from(bytes).map_err(io::Error::other)?;
    match nix::fcntl::fallocate(&file, nix::fcntl::FallocateFlags::empty(), 0, len) {
        Ok(()) => return file.sync_all().map(|()| file),
        Err(nix::errno::Errno::EOPNOTSUPP) => {}
        Err(e) => return Err(e.into()),
    }
    // No fallocate here: write it, checking between chunks whether to stop.
    let chunk = vec![0u8; MIB as usize];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(MIB);
        file.write_all(&chunk[..n as usize])?;
        left -= n;
        if holding.should_stop(Duration::ZERO) {
            return Err(io::Error::other("stopped before the file was full"));
        }
    }
    file.sync_all()?;
    Ok(file)
}

/// A disk fill in effect.
#[derive(Debug)]
struct Filled {
    holder: Option<Holder>,
    dir: PathBuf,
    path: PathBuf,
    percent: u8,
    /// How full the filesystem was once the file was full (f64 bits; 0 until then).
    at_ready: Arc<AtomicU64>,
}

impl Fault for Filled {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        if let Some(h) = self.holder.take() {
            h.finish(PATIENCE);
        }
        remove_dir(&self.dir).map_err(FaultError::io(format!("cannot delete {}", self.dir.display())))
    }

    fn observed(&mut self) -> Observed {
        // The fill only adds: the fuller of the two readings is what it held.
        let now = Space::of(&self.path).map_or(0.0, |s| s.used_percent());
        let seen = f64::from_bits(self.at_ready.load(Ordering::Acquire)).max(now);
        Observed::default().with("filesystem_used_percent", "%", Some(f64::from(self.percent)), seen)
    }
}

/// The directory of a fault of a previous life.
#[derive(Debug)]
pub struct Leftover(pub PathBuf);

impl Fault for Leftover {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        remove_dir(&self.0).map_err(FaultError::io(format!("cannot delete {}", self.0.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_keeps_the_margin_and_refuses_a_full_filesystem() {
        let space = Space {
            total: 1000 * MIB,
            used: 400 * MIB,
            available: 600 * MIB,
        };
        assert_eq!(margin(space.total), 16 * MIB);
        assert_eq!(bytes_to_fill(space, 50).unwrap(), 100 * MIB);
        let full = bytes_to_fill(space, 40).unwrap_err().to_string();
        assert!(full.contains("already 40.0 % full"), "{full}");
        let tight = Space {
            available: 550 * MIB,
            ..space
        };
        let err = bytes_to_fill(tight, 99).unwrap_err().to_string();
        assert!(err.contains("safety margin of 16 MiB"), "{err}");
        assert!(err.contains("at most 98 %"), "{err}");
    }

    #[test]
    fn percent_is_dfs_use_so_fis_default_fits_a_disk_with_reserved_blocks() {
        // An ext4-like disk: 5 % reserved for root, so writers see 950 MiB.
        let space = Space {
            total: 1000 * MIB,
            used: 400 * MIB,
            available: 550 * MIB,
        };
        let used = space.used_percent();
        assert!((used - 42.1).abs() < 0.1, "{used}");
        // 95 % of what writers can use, as df shows it; 47.5 MiB stay free.
        let bytes = bytes_to_fill(space, 95).unwrap();
        assert_eq!(bytes, 950 * MIB / 100 * 95 - 400 * MIB);
        let after = Space {
            used: space.used + bytes,
            available: space.available - bytes,
            ..space
        };
        assert!((after.used_percent() - 95.0).abs() < 0.1, "{}", after.used_percent());
    }
}
