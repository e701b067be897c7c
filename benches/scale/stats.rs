//! Figures over repeated runs, and what the kernel says about processes and cgroups.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// min / median / p99 of a figure's samples.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub p99: f64,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Summary {
        assert!(!samples.is_empty(), "a figure without samples");
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let at = |p: f64| v[((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
        Summary {
            min: v[0],
            median: at(0.5),
            p99: at(0.99),
        }
    }
}

/// Lets this process (and what it starts) hold 10,000 connections and more.
pub(crate) fn raise_nofile() {
    let limit = libc::rlimit {
        rlim_cur: 1 << 20,
        rlim_max: 1 << 20,
    };
    // SAFETY: setrlimit reads one valid rlimit.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let mut have = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one valid rlimit.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut have) };
        have.rlim_cur = have.rlim_max;
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &have) };
    }
}

/// Resident set of a process, in bytes (`self` for this one).
pub(crate) fn rss_bytes(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// CPU time a process has used (user + system, all threads).
pub(crate) fn cpu_time(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0)).collect();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    f.get(11..13)
        .map_or(Duration::ZERO, |t| Duration::from_secs_f64((t[0] + t[1]) as f64 / hz))
}

/// A cgroup (v1 `cpu` + `cpuacct`, or v2) for one measured workload: an optional CPU limit,
/// and the CPU time everything in it used. Removed on drop.
pub(crate) struct Cgroup {
    dirs: Vec<PathBuf>,
    usage: PathBuf,
    v2: bool,
}

impl Cgroup {
    /// A fresh cgroup limited to `cpus` CPUs (`None`: no limit), or why there is none.
    pub(crate) fn new(name: &str, cpus: Option<f64>) -> Result<Cgroup, String> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.subtree_control").exists();
        let (dirs, usage) = if v2 {
            let d = PathBuf::from("/sys/fs/cgroup").join(name);
            (vec![d.clone()], d.join("cpu.stat"))
        } else {
            let cpu = PathBuf::from("/sys/fs/cgroup/cpu").join(name);
            let acct = PathBuf::from("/sys/fs/cgroup/cpuacct").join(name);
            let usage = acct.join("cpuacct.usage");
            (vec![cpu, acct], usage)
        };
        for d in &dirs {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let group = Cgroup { dirs, usage, v2 };
        if let Some(cpus) = cpus {
            let period = 100_000u64;
            let quota = (cpus * period as f64) as u64;
            let r = if v2 {
                std::fs::write(group.dirs[0].join("cpu.max"), format!("{quota} {period}"))
            } else {
                std::fs::write(group.dirs[0].join("cpu.cfs_period_us"), period.to_string())
                    .and_then(|_| std::fs::write(group.dirs[0].join("cpu.cfs_quota_us"), quota.to_string()))
            };
            r.map_err(|e| format!("CPU limit: {e}"))?;
        }
        Ok(group)
    }

    /// Starts `cmd` inside the group: it joins between fork and exec, so every process and
    /// thread it starts is counted (moving it in after the start missed the workers that
    /// stress-ng forks at once).
    pub(crate) fn spawn(&self, cmd: &mut Command) -> Result<Child, String> {
        use std::os::unix::io::AsRawFd;
        use std::os::unix::process::CommandExt;
        let procs = self
            .dirs
            .iter()
            .map(|d| {
                let path = d.join("cgroup.procs");
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fds: Vec<i32> = procs.iter().map(|f| f.as_raw_fd()).collect();
        // SAFETY: between fork and exec the closure only calls write(2), which is
        // async-signal-safe, on descriptors the parent keeps open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &fds {
                    // "0" is the writing process itself.
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| format!("{cmd:?}: {e}"));
        drop(procs);
        child
    }

    /// CPU time used by the group so far.
    pub(crate) fn usage(&self) -> Duration {
        let text = std::fs::read_to_string(&self.usage).unwrap_or_default();
        if self.v2 {
            let usec = text
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            Duration::from_micros(usec)
        } else {
            Duration::from_nanos(text.trim().parse().unwrap_or(0))
        }
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        for d in &self.dirs {
            for _ in 0..50 {
                if std::fs::remove_dir(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
