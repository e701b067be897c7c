//! The start-up cost of `faultline validate`: wall time and peak RSS of one process that
//! validates one template, and of one that validates every example.
//!
//!     cargo bench --bench validate                 # 20 runs each
//!     FAULTLINE_BENCH_RUNS=100 cargo bench --bench validate

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `faultline validate FILES` `runs` times; the median wall time.
fn measure(files: &[PathBuf], runs: usize) -> Duration {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            let status = Command::new(env!("CARGO_BIN_EXE_faultline"))
                .arg("validate")
                .args(files)
                .stdout(Stdio::null())
                .status()
                .expect("faultline starts");
            assert!(status.success(), "validate failed: {status}");
            start.elapsed()
        })
        .collect();
    times.sort();
    times[runs / 2]
}

/// The largest peak RSS of the children reaped so far, in KiB.
fn children_peak_kib() -> u64 {
    // SAFETY: rusage is plain data, all zeroes valid; getrusage fills it in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pointer is valid for the call.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    assert_eq!(rc, 0, "getrusage: {}", std::io::Error::last_os_error());
    usage.ru_maxrss as u64
}

fn main() {
    let runs: usize = std::env::var("FAULTLINE_BENCH_RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(20)
        .max(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments");
    let mut all: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("experiments/")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    all.sort();
    for (what, files) in [
        ("one template (cpu-stress.json)", vec![dir.join("cpu-stress.json")]),
        ("every example", all),
    ] {
        // RUSAGE_CHILDREN keeps the largest child so far: the first figure is one
        // template's, the second the larger of both cases.
        let median = measure(&files, runs);
        let peak = children_peak_kib();
        println!(
            "validate {what}: median {:.1} ms, peak RSS {:.1} MiB ({runs} runs)",
            median.as_secs_f64() * 1e3,
            peak as f64 / 1024.0
        );
    }
}
