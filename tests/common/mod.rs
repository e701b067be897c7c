//! Test harness: real controller and agent processes, their output read line by line as it
//! comes, and effects measured from outside through /proc.

#![allow(dead_code)] // each test file uses a different part of the harness

pub(crate) mod fake_agent;
pub(crate) mod fis;
pub(crate) mod handshake;
pub(crate) mod netns;

use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub(crate) const FAULTLINE: &str = env!("CARGO_BIN_EXE_faultline");

/// A binary of the agent or demo package. `cargo test` builds only this package's
/// binaries, so these are built here, once per test process, always by the same command (a
/// different package selection would resolve features differently and rebuild them), and
/// before anything whose timer is running is started.
pub(crate) fn workspace_bin(bin: &str) -> PathBuf {
    use std::sync::Once;
    static BUILT: Once = Once::new();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "--bins",
            "-p",
            "faultline-agent",
            "-p",
            "faultline-demo",
        ]);
        if FAULTLINE.contains("/release/") {
            cmd.arg("--release");
        }
        let status = cmd.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
        assert!(status.success(), "cannot build the agent and demo binaries");
    });
    Path::new(FAULTLINE).with_file_name(bin)
}

/// The agent binary.
pub(crate) fn agent_bin() -> PathBuf {
    workspace_bin("faultline-agent")
}

/// A scratch directory, removed when dropped.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "faultline-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub(crate) fn write_json(&self, name: &str, v: &Value) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, serde_json::to_string_pretty(v).unwrap()).unwrap();
        p
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child process whose stderr is read line by line and stdout collected.
pub(crate) struct Proc {
    pub name: String,
    child: Option<Child>,
    lines: Receiver<String>,
    pub seen: Vec<String>,
    stdout: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stderr = child.stderr.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let (tx, rx) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        Proc {
            name: name.into(),
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            stdout: Some(stdout),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Waits for a stderr line matching `pred`; panics with everything seen on timeout.
    pub(crate) fn wait_line(&mut self, what: &str, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "{}: no line with {what} within {timeout:?}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "{}: exited before a line with {what}; saw:\n{}",
                    self.name,
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Waits for a line containing `text`.
    pub(crate) fn expect(&mut self, text: &str, timeout: Duration) -> String {
        self.wait_line(text, timeout, |l| l.contains(text))
    }

    /// Waits for the controller's "listening" line; the port agents dial.
    pub(crate) fn controller_port(&mut self) -> u16 {
        let line = self.expect("controller listening on ws://", Duration::from_secs(30));
        let port = line
            .rsplit(':')
            .next()
            .and_then(|s| s.split('/').next())
            .and_then(|p| p.parse().ok());
        port.unwrap_or_else(|| panic!("no port in {line}"))
    }

    /// Waits for a line with `what` and returns the port of its `listen=HOST:PORT` field.
    pub(crate) fn listen_port(&mut self, what: &str) -> u16 {
        let line = self.expect(what, Duration::from_secs(30));
        let port = line
            .split("listen=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok());
        port.unwrap_or_else(|| panic!("no listen=HOST:PORT in {line}"))
    }

    /// Sends a signal.
    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid() as i32, sig) };
    }

    /// Waits for exit (killing it after `timeout`), returning status, stdout and the rest of stderr.
    pub(crate) fn finish(mut self, timeout: Duration) -> (ExitStatus, String, Vec<String>) {
        let mut child = self.child.take().unwrap();
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            // Stderr lines arrive until exit; waiting on them paces this loop.
            match self.lines.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => self.seen.push(l),
                Err(_) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let s = child.wait().unwrap();
                    panic!(
                        "{} did not exit within {timeout:?} ({s}); saw:\n{}",
                        self.name,
                        self.seen.join("\n")
                    );
                }
                Err(_) => {}
            }
        };
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(l);
        }
        let out = self.stdout.take().unwrap().join().unwrap();
        (status, out, std::mem::take(&mut self.seen))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts `faultline run` on a free loopback port; returns it and the port agents dial.
pub(crate) fn controller(scratch: &Scratch, template: &Path, wait_agents: usize, extra: &[&str]) -> (Proc, u16) {
    // Build the agent before the controller's wait for agents starts counting.
    agent_bin();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["run", "--listen", "127.0.0.1:0", "--format", "json", "--seed", "1"])
        .arg("--token-file")
        .arg(scratch.path("token"))
        .arg("--journal")
        .arg(scratch.path("journal.jsonl"))
        .args(["--wait-agents", &wait_agents.to_string()])
        .args(extra)
        .arg(template)
        .current_dir(&scratch.0);
    let mut p = Proc::spawn("controller", cmd);
    let port = p.controller_port();
    (p, port)
}

/// Starts an agent dialing `port`, with the scratch token and its own state dir.
pub(crate) fn agent(scratch: &Scratch, port: u16, host: &str, az: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--controller", &format!("ws://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(scratch.path("token"))
        .args(["--host-id", host, "--az", az, "--tag", "tier=web", "--lease", "PT3S"])
        .arg("--state-dir")
        .arg(scratch.path(&format!("state-{host}")))
        .args(extra);
    Proc::spawn(host, cmd)
}

/// Runs `template` with one agent, web-a1 in az-a, to its end: exit status, stdout, stderr.
pub(crate) fn run_with_one_agent(
    scratch: &Scratch,
    template: &Path,
    agent_args: &[&str],
) -> (ExitStatus, String, Vec<String>) {
    let (ctl, port) = controller(scratch, template, 1, &[]);
    let _agent = agent(scratch, port, "web-a1", "az-a", agent_args);
    ctl.finish(Duration::from_secs(30))
}

/// A one-action template against one host by id.
pub(crate) fn single_action(host: &str, action_id: &str, params: Value) -> Value {
    serde_json::json!({
        "description": format!("test {action_id}"),
        "targets": { "T": { "resourceType": "faultline:host", "resourceIds": [host], "selectionMode": "ALL" } },
        "actions": { "A": { "actionId": action_id, "parameters": params, "targets": { "Hosts": "T" } } },
        "stopConditions": [{ "source": "none" }]
    })
}

/// Parses the JSON report a controller printed; without one, shows what it said instead.
pub(crate) fn report(stdout: &str, stderr: &[String]) -> Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); stdout:\n{stdout}\nstderr:\n{}",
            stderr.join("\n")
        )
    })
}

/// CPU seconds a process has used (user + system), from /proc.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14 and stime 15 (1-based in proc(5)).
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf has no preconditions.
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// CPUs a process used on average over `window` (1.0 = one full CPU).
pub(crate) fn cpu_load(pid: u32, window: Duration) -> f64 {
    let (c0, t0) = (cpu_seconds(pid), Instant::now());
    std::thread::sleep(window);
    (cpu_seconds(pid) - c0) / t0.elapsed().as_secs_f64()
}

/// Resident set size of a process, bytes.
pub(crate) fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("VmRSS:")?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse::<u64>()
                .ok()
        })
        .unwrap()
        * 1024
}

/// Files left in an agent's state dir.
pub(crate) fn state_files(scratch: &Scratch, host: &str) -> Vec<PathBuf> {
    let dir = scratch.path(&format!("state-{host}/faults"));
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("state dir {} cannot be read (did the agent start?): {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect()
}

/// The journal's events.
pub(crate) fn journal(scratch: &Scratch) -> Vec<Value> {
    let path = scratch.path("journal.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| {
            panic!(
                "journal {} cannot be read (did the controller run?): {e}",
                path.display()
            )
        })
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Whether the tests must not skip privileged parts (CI runs as root and says so).
pub(crate) fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Whether this process is root (network namespaces, nf_tables).
pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A demo web service under a name of its own (argv[0]), on a free loopback port.
pub(crate) fn web_service(name: &str) -> (Proc, u16) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(workspace_bin("demo-web"));
    cmd.arg0(name).args(["--listen", "127.0.0.1:0", "--name", name]);
    let mut p = Proc::spawn(name, cmd);
    let port = p.listen_port("serving");
    (p, port)
}

/// A name no other test process uses, for processes a test kills by name.
pub(crate) fn unique_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("fl-{what}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

/// Fields of /proc/PID/stat after the command name (proc(5) field 3 is index 0); `None` once
/// the process is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether a process exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f[0] != "Z")
}

/// A process and all its live descendants (the agent and its holder processes).
pub(crate) fn process_tree(root: u32) -> Vec<u32> {
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, stat_fields(pid)?.get(1)?.parse().ok()?)))
        .collect();
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parents.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree
}

/// CPU seconds used by a process and its descendants, live or reaped: a reaped child's time
/// moves into its parent's cutime/cstime, so the sum never drops when a holder ends.
pub(crate) fn tree_cpu_seconds(root: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let tck = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    process_tree(root)
        .into_iter()
        .filter_map(stat_fields)
        // utime, stime, cutime, cstime: proc(5) fields 14 to 17.
        .map(|f| f[11..15].iter().map(|v| v.parse::<f64>().unwrap_or(0.0)).sum::<f64>() / tck)
        .sum()
}

/// CPUs a process and its descendants used on average over `window` (1.0 = one full CPU).
pub(crate) fn tree_cpu_load(root: u32, window: Duration) -> f64 {
    let (c0, t0) = (tree_cpu_seconds(root), Instant::now());
    std::thread::sleep(window);
    (tree_cpu_seconds(root) - c0) / t0.elapsed().as_secs_f64()
}

/// Resident set size of a process and its descendants, bytes.
pub(crate) fn tree_rss(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|p| {
            let status = std::fs::read_to_string(format!("/proc/{p}/status")).ok()?;
            let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            kb.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()
        })
        .sum::<u64>()
        * 1024
}

/// Bytes a process has written through write calls (tmpfs has no storage to count).
pub(crate) fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("wchar:"))?.trim().parse().ok())
        .unwrap_or(0)
}

/// Live holder processes of the agent `agent_pid` (`faultline-agent hold ... --parent PID`),
/// found by their command line, so also after the agent is gone.
pub(crate) fn holders(agent_pid: u32) -> Vec<u32> {
    let parent = agent_pid.to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.get(1) == Some(&&b"hold"[..])
                && args
                    .windows(2)
                    .any(|w| w[0] == b"--parent" && w[1] == parent.as_bytes())
        })
        .filter(|pid| alive(*pid))
        .collect()
}

/// Polls `check` every 200 ms until it holds; fails the test when `limit` passes first.
pub(crate) fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what} did not happen within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A TCP connection to `to` from the local address `from` (a 127.0.x.y address standing in
/// for a host), or the error connecting.
pub(crate) fn connect_from(
    from: std::net::Ipv4Addr,
    to: std::net::SocketAddrV4,
) -> std::io::Result<std::net::TcpStream> {
    let sockaddr = |a: std::net::SocketAddrV4| libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
    // SAFETY: plain socket calls on a descriptor owned by the returned stream from the start.
    unsafe {
        use std::os::fd::FromRawFd;
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = std::net::TcpStream::from_raw_fd(fd);
        let local = sockaddr(std::net::SocketAddrV4::new(from, 0));
        if libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let remote = sockaddr(to);
        if libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

/// An echo server on loopback; each connection echoes until closed.
pub(crate) fn echo_server() -> u16 {
    use std::io::Write;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while let Ok(n) = c.read(&mut buf) {
                    if n == 0 || c.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

/// The round trip of a small message through 127.0.0.1:`port` (to an [`echo_server`]), on a
/// fresh connection from `from` (a 127.0.0.x: distinct peers to a proxy).
pub(crate) fn round_trip_from(from: std::net::Ipv4Addr, port: u16) -> Duration {
    use std::io::Write;
    let mut c = connect_from(from, std::net::SocketAddrV4::new([127, 0, 0, 1].into(), port)).unwrap();
    c.set_nodelay(true).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let t = Instant::now();
    c.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    c.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    t.elapsed()
}

/// Held while a test runs `faultline demo`: its hosts listen on fixed ports of their loopback
/// addresses, so two demos of one test binary at once would take each other's ports.
pub(crate) fn one_demo_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());
    DEMO.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asserts that a demo world run from `s` left nothing: no process whose working directory is
/// `s`, no `demo-*` work directory under its `.faultline/`.
pub(crate) fn nothing_of_the_demo_is_left(s: &Scratch) {
    let here = std::fs::canonicalize(&s.0).unwrap();
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd == here))
        .map(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "processes of the demo are still running: {left:?}");
    let dirs: Vec<_> = std::fs::read_dir(s.path(".faultline"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("demo-"))
        .collect();
    assert!(dirs.is_empty(), "{dirs:?}");
}
