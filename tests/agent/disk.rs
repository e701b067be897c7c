//! `faultline:host:disk-fill` and `faultline:host:io-stress` with real binaries, on a 64 MiB
//! tmpfs of each test's own (root): the filesystem fills and empties as seen by statvfs
//! from outside, the I/O is seen in the holder's /proc/PID/io, and no file is left behind
//! on any removal path: duration end, Ctrl-C, lease expiry, SIGTERM, and kill -9 of the
//! agent (with and without its holder) then a restart.

use crate::common;

use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

/// A 64 MiB tmpfs mounted in the scratch dir; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` (the test skips, loudly) without root; with CI=true root is required.
    fn new(s: &Scratch) -> Option<Tmpfs> {
        if !is_root() {
            assert!(!required(), "CI=true: the disk tests must run as root");
            eprintln!("SKIPPED: disk tests mount a tmpfs and need root");
            return None;
        }
        let dir = s.path("fs");
        std::fs::create_dir_all(&dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m", "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs at {}", dir.display());
        Some(Tmpfs(dir))
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }

    /// Percent of the filesystem in use, from statvfs.
    fn used_percent(&self) -> f64 {
        let c = std::ffi::CString::new(self.path()).unwrap();
        // SAFETY: a zeroed statvfs is a valid buffer for statvfs to fill.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a NUL-terminated path and a buffer owned by this frame.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
        (st.f_blocks - st.f_bfree) as f64 * 100.0 / st.f_blocks as f64
    }

    /// What is in the filesystem: nothing once every fault is gone.
    fn entries(&self) -> Vec<PathBuf> {
        std::fs::read_dir(&self.0).unwrap().map(|e| e.unwrap().path()).collect()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn fill_template(s: &Scratch, fs: &Tmpfs, percent: u32, duration: &str) -> PathBuf {
    s.write_json(
        "fill.json",
        &single_action(
            "web-a1",
            "faultline:host:disk-fill",
            json!({ "duration": duration, "percent": percent.to_string(), "path": fs.path() }),
        ),
    )
}

fn io_template(s: &Scratch, fs: &Tmpfs, duration: &str) -> PathBuf {
    s.write_json(
        "io.json",
        &single_action(
            "web-a1",
            "faultline:host:io-stress",
            json!({ "duration": duration, "workers": "2", "percent": "50", "path": fs.path() }),
        ),
    )
}

/// The figure `name` the journal recorded as observed (at removal, or when the agent ended
/// the fault), with what was asked.
fn observed(s: &Scratch, name: &str) -> Option<(f64, Option<f64>)> {
    journal(s).iter().find_map(|e| {
        let figures = e["observed"]["figures"].as_array()?;
        let f = figures.iter().find(|f| f["name"] == name)?;
        Some((f["observed"].as_f64()?, f["asked"].as_f64()))
    })
}

fn empty(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// Nothing of a fault left: no space taken (the files have no name, so only statvfs sees
/// them) and no entry.
fn released(fs: &Tmpfs) -> bool {
    fs.used_percent() < 1.0 && empty(&fs.0)
}

#[test]
fn a_disk_fill_reaches_its_percent_and_the_file_goes_at_its_end() {
    let s = Scratch::new("disk-fill-duration");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = fill_template(&s, &fs, 60, "PT3S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let _a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let used = fs.used_percent();
    assert!(
        (58.0..=62.0).contains(&used),
        "the filesystem is {used:.1} % full, asked 60 %"
    );
    let (status, out, lines) = ctl.finish(T);
    let r = report(&out, &lines);
    assert_eq!(status.code(), Some(0), "{r}");
    assert!(released(&fs), "left {:.1} %: {:?}", fs.used_percent(), fs.entries());
    assert!(state_files(&s, "web-a1").is_empty());
    let (seen, asked) = observed(&s, "filesystem_used_percent").expect("the observed fill is journaled");
    assert_eq!(asked, Some(60.0));
    assert!((58.0..=62.0).contains(&seen), "the agent saw {seen:.1} %");
}

#[test]
fn a_disk_fill_past_the_safety_margin_is_refused() {
    let s = Scratch::new("disk-fill-margin");
    let Some(fs) = Tmpfs::new(&s) else { return };
    // 99 % of 64 MiB would leave less than the 16 MiB margin.
    let template = fill_template(&s, &fs, 99, "PT3S");
    let (status, out, lines) = run_with_one_agent(&s, &template, &[]);
    assert_ne!(status.code(), Some(0));
    let text = out + &lines.join("\n");
    assert!(text.contains("safety margin"), "{text}");
    assert!(
        released(&fs),
        "left behind: {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
}

#[test]
fn stopping_a_disk_fill_deletes_the_file() {
    let s = Scratch::new("disk-fill-stop");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = fill_template(&s, &fs, 50, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(fs.used_percent() > 45.0);
    ctl.signal(libc::SIGINT);
    assert_eq!(ctl.finish(T).0.code(), Some(130));
    assert!(
        released(&fs),
        "Ctrl-C left {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
    let (seen, _) = observed(&s, "filesystem_used_percent").expect("the removal's ack carries what was seen");
    assert!(seen > 45.0, "the agent saw {seen:.1} %");
    a.signal(libc::SIGTERM);
    assert_eq!(a.finish(T).0.code(), Some(0));
}

#[test]
fn a_lapsed_lease_and_sigterm_delete_the_file() {
    let s = Scratch::new("disk-fill-lease");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = fill_template(&s, &fs, 50, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let mut a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    ctl.signal(libc::SIGKILL);
    a.expect("silent for the lease", T);
    eventually("the fill released", Duration::from_secs(5), || released(&fs));
    drop(ctl);

    let s2 = Scratch::new("disk-fill-sigterm");
    let template = fill_template(&s2, &fs, 50, "PT60S");
    let (mut ctl, port) = controller(&s2, &template, 1, &[]);
    let a = agent(&s2, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    assert!(fs.used_percent() > 45.0);
    a.signal(libc::SIGTERM);
    assert_eq!(a.finish(T).0.code(), Some(0));
    assert!(
        released(&fs),
        "SIGTERM left {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
    assert!(state_files(&s2, "web-a1").is_empty());
    ctl.signal(libc::SIGINT);
    ctl.finish(T);
}

#[test]
fn an_agent_killed_mid_fill_leaves_no_file_even_when_its_holder_dies_too() {
    let s = Scratch::new("disk-fill-kill9");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = fill_template(&s, &fs, 50, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    // The agent alone: its holder sees the agent gone and ends, and the space with it.
    a.signal(libc::SIGKILL);
    let agent_pid = a.pid();
    drop(a);
    eventually("the holder released the fill", Duration::from_secs(5), || {
        fs.used_percent() < 1.0
    });
    assert!(holders(agent_pid).is_empty());
    assert_eq!(state_files(&s, "web-a1").len(), 1, "the record stays for the restart");
    drop(ctl);

    // Agent and holder both, and a record the restart cannot read: the file has no name,
    // so its space went with the holder, and nothing is left for the restart to find.
    let template = fill_template(&s, &fs, 50, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let held = one_holder(a.pid());
    assert!(fs.used_percent() > 45.0, "the fill takes {:.1} %", fs.used_percent());
    kill_with_its_holders(a, &held);
    drop(ctl);
    released_soon(&fs, "the killed holder's fill released");
    let records = state_files(&s, "web-a1");
    assert_eq!(records.len(), 1, "the record stays for the restart");
    std::fs::write(&records[0], b"{\"fault_id\": tor").unwrap();
    let mut again = agent(&s, 1, "web-a1", "az-a", &[]);
    again.expect("an unreadable state file", T);
    eventually("the unreadable record discarded", T, || {
        state_files(&s, "web-a1").is_empty()
    });
    assert!(
        released(&fs),
        "the restart left {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
}

#[test]
fn an_io_stress_writes_and_reads_and_leaves_nothing() {
    let s = Scratch::new("io-stress");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = io_template(&s, &fs, "PT4S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let held = one_holder(a.pid());
    let before = written(held[0]);
    std::thread::sleep(Duration::from_secs(1));
    let rate = written(held[0]) - before;
    assert!(rate > 16 << 20, "the holder wrote only {rate} bytes in a second");
    assert!(fs.used_percent() > 10.0, "the files take {:.1} %", fs.used_percent());
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", report(&out, &lines));
    assert!(
        released(&fs),
        "left behind: {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
    let (bytes, _) = observed(&s, "bytes_written").expect("the observed I/O is journaled");
    assert!(bytes > f64::from(32 << 20), "the agent saw {bytes} bytes written");
    assert!(state_files(&s, "web-a1").is_empty());
}

#[test]
fn an_agent_killed_mid_io_stress_leaves_no_file() {
    let s = Scratch::new("io-stress-kill9");
    let Some(fs) = Tmpfs::new(&s) else { return };
    let template = io_template(&s, &fs, "PT60S");
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let a = agent(&s, port, "web-a1", "az-a", &[]);
    ctl.expect("action A running", T);
    let held = one_holder(a.pid());
    eventually("files written", Duration::from_secs(5), || fs.used_percent() > 10.0);
    kill_with_its_holders(a, &held);
    drop(ctl);
    released_soon(&fs, "the killed holder's files released");
    let mut again = agent(&s, 1, "web-a1", "az-a", &[]);
    again.expect("removed a fault left by the previous run", T);
    assert!(
        released(&fs),
        "the restart left {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
    assert!(state_files(&s, "web-a1").is_empty());
}

/// `kill -9` of an agent and its holders, together.
fn kill_with_its_holders(agent: Proc, held: &[u32]) {
    for pid in held.iter().copied().chain([agent.pid()]) {
        // SAFETY: kill with a pid of a process this test started (or its child).
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Waits until the space of killed holders is given back and nothing is left.
fn released_soon(fs: &Tmpfs, what: &str) {
    eventually(what, Duration::from_secs(5), || fs.used_percent() < 1.0);
    assert!(
        released(fs),
        "left behind: {:.1} %: {:?}",
        fs.used_percent(),
        fs.entries()
    );
}

/// The agent's one holder process, once it has started: the action runs from its dispatch,
/// and the holder's exec may come a moment later on a loaded machine.
fn one_holder(agent: u32) -> Vec<u32> {
    eventually("one holder does the work", T, || holders(agent).len() == 1);
    holders(agent)
}
