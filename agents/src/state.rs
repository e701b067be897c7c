//! The state directory: every fault is recorded here before it takes effect, so an agent
//! that is killed and restarted knows what its previous life left behind.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// What must be known to take a fault away after a crash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The controller's fault id.
    pub fault_id: String,
    /// The controller that owns it.
    pub owner: String,
    /// Capability name of the fault (`cpu`, `blackout`, ...).
    pub kind: String,
    /// What its kind needs to remove it after a crash (a table, a file), as the kind wrote it.
    #[serde(default)]
    pub undo: serde_json::Value,
    /// When it was applied, ms since the Unix epoch.
    pub applied_at_ms: u64,
}

/// Why the state directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Creating or reading the directory failed.
    #[error("state dir {dir}: {source}")]
    Io {
        /// The directory.
        dir: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// Another agent holds the lock.
    #[error("state dir {0} is in use by another agent; give each agent its own --state-dir")]
    Locked(PathBuf),
}

/// A locked state directory.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    faults: PathBuf,
    /// Held for the life of the agent: two agents sharing a directory would undo each other.
    _lock: nix::fcntl::Flock<File>,
}

impl StateDir {
    /// Creates (if needed) and locks the directory.
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        let io_err = |source| StateError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        let faults = dir.join("faults");
        fs::create_dir_all(&faults).map_err(io_err)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))
            .map_err(io_err)?;
        let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock)
            .map_err(|_| StateError::Locked(dir.to_path_buf()))?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            faults,
            _lock: lock,
        })
    }

    fn path(&self, fault_id: &str) -> PathBuf {
        self.faults.join(format!("{}.json", file_stem(fault_id)))
    }

    /// Durably records a fault: written, synced, renamed into place, directory synced.
    pub fn write(&self, record: &Record) -> io::Result<()> {
        let path = self.path(&record.fault_id);
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(record).map_err(io::Error::other)?)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)?;
        File::open(&self.faults)?.sync_all()
    }

    /// Forgets a fault once it is removed.
    pub fn remove(&self, fault_id: &str) -> io::Result<()> {
        match fs::remove_file(self.path(fault_id)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// Records left by a previous life, and files that cannot be read as records.
    pub fn leftovers(&self) -> io::Result<(Vec<Record>, Vec<PathBuf>)> {
        let mut records = Vec::new();
        let mut unreadable = Vec::new();
        for entry in fs::read_dir(&self.faults)? {
            let path = entry?.path();
            match fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
            {
                Some(r) if path.extension().is_some_and(|e| e == "json") => records.push(r),
                _ => unreadable.push(path),
            }
        }
        records.sort_by(|a, b| a.fault_id.cmp(&b.fault_id));
        Ok((records, unreadable))
    }

    /// Deletes a file [`StateDir::leftovers`] could not read (e.g. an interrupted write), or
    /// a marker ([`StateDir::mark`]) once what it marks is undone.
    pub fn discard(&self, path: &Path) -> io::Result<()> {
        match fs::remove_file(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    /// The marker file `tag` of `fault_id` in the marker set `set`:
    /// `<set>/<fault file stem>.<tag>`.
    pub fn marker(&self, set: &str, fault_id: &str, tag: &str) -> PathBuf {
        self.dir.join(set).join(format!("{}.{tag}", file_stem(fault_id)))
    }

    /// Durably marks `tag` for `fault_id` in the marker set `set` (a directory of its own):
    /// an empty file, written and synced with its directory. A kind marks each thing it is
    /// about to change when one record cannot say it (a pause: each process it stops), so
    /// that no corruption of a record can hide it from the next start.
    pub fn mark(&self, set: &str, fault_id: &str, tag: &str) -> io::Result<()> {
        let dir = self.dir.join(set);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            File::open(&self.dir)?.sync_all()?;
        }
        File::create(self.marker(set, fault_id, tag))?.sync_all()?;
        File::open(&dir)?.sync_all()
    }

    /// Every marker of the set `set`, with its tag (what follows the fault's file stem and
    /// its dot; `None` when the name has none), sorted.
    pub fn markers(&self, set: &str) -> io::Result<Vec<(PathBuf, Option<String>)>> {
        let entries = match fs::read_dir(self.dir.join(set)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            other => other?,
        };
        let mut out = Vec::new();
        for entry in entries {
            let path = entry?.path();
            let tag = path.extension().and_then(|e| e.to_str()).map(String::from);
            out.push((path, tag));
        }
        out.sort();
        Ok(out)
    }
}

/// The hash of the fault id whose record is (or was being written to) `path`, whatever the
/// file holds: its stem ends with it. What a kind names after the hash (a table, a file) can
/// so be found from an unreadable record.
pub fn hash_of_file(path: &Path) -> Option<String> {
    let stem = path.file_stem()?.to_str()?;
    let (_, hash) = stem.rsplit_once('-')?;
    (hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hash.to_string())
}

/// The hash of a fault id that names its holders, files and tables.
pub fn fault_hash(fault_id: &str) -> String {
    format!("{:016x}", fnv1a(fault_id.as_bytes()))
}

/// A file name for a fault id: readable where it can be, unique always.
fn file_stem(fault_id: &str) -> String {
    let readable: String = fault_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .take(64)
        .collect();
    format!("{readable}-{:016x}", fnv1a(fault_id.as_bytes()))
}

/// A short stable hash, used to name files, holders and tables after fault ids.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "fl-state-{}-{}",
            std::process::id(),
            fnv1a(format!("{:?}", std::thread::current().id()).as_bytes())
        ));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn records_survive_and_are_removed() {
        let dir = temp();
        let rec = Record {
            fault_id: "exp/a/web-a1".into(),
            owner: "c1".into(),
            kind: "blackout".into(),
            undo: serde_json::json!({"table": "fl_1"}),
            applied_at_ms: 1,
        };
        {
            let s = StateDir::open(&dir).unwrap();
            s.write(&rec).unwrap();
        }
        let s = StateDir::open(&dir).unwrap();
        assert_eq!(s.leftovers().unwrap().0, vec![rec.clone()]);
        s.remove(&rec.fault_id).unwrap();
        s.remove(&rec.fault_id).unwrap();
        assert_eq!(
            hash_of_file(&s.path(&rec.fault_id)),
            Some(fault_hash(&rec.fault_id)),
            "a corrupt record still names its fault's hash"
        );
        assert!(s.leftovers().unwrap().0.is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn markers_are_kept_per_set_and_fault_until_discarded() {
        let dir = temp();
        let s = StateDir::open(&dir).unwrap();
        assert!(s.markers("things").unwrap().is_empty(), "a set never marked is empty");
        s.mark("things", "e/a/h1", "42-777").unwrap();
        s.mark("things", "e/b/h1", "42-777").unwrap();
        s.mark("others", "e/a/h1", "1").unwrap();
        let tags: Vec<_> = s.markers("things").unwrap().into_iter().map(|(_, t)| t).collect();
        assert_eq!(tags, vec![Some("42-777".to_string()), Some("42-777".to_string())]);
        s.discard(&s.marker("things", "e/b/h1", "42-777")).unwrap();
        let left: Vec<_> = s.markers("things").unwrap().into_iter().map(|(p, _)| p).collect();
        assert_eq!(left, vec![s.marker("things", "e/a/h1", "42-777")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_agent_is_refused() {
        let dir = temp();
        let _first = StateDir::open(&dir).unwrap();
        assert!(matches!(StateDir::open(&dir), Err(StateError::Locked(_))));
        fs::remove_dir_all(&dir).unwrap();
    }
}
