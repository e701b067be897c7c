//! `faultline:host:cpu-stress`: worker threads holding a load by duty cycle.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Short periods keep the load smooth as a sampler sees it and let a stop land at once.
const PERIOD: Duration = Duration::from_millis(100);

/// A running CPU stress; stopped and joined on drop.
#[derive(Debug)]
pub struct CpuStress {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl CpuStress {
    /// Starts `workers` threads (0 = one per CPU this process may use), each busy
    /// `load_percent` of the time.
    pub fn start(load_percent: u8, workers: u32) -> std::io::Result<CpuStress> {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers as usize
        };
        let busy = PERIOD * u32::from(load_percent.min(100)) / 100;
        let stop = Arc::new(AtomicBool::new(false));
        let mut stress = CpuStress {
            stop: stop.clone(),
            threads: Vec::with_capacity(workers),
        };
        for i in 0..workers {
            let stop = stop.clone();
            let t = std::thread::Builder::new()
                .name(format!("cpu-stress-{i}"))
                .spawn(move || burn(busy, &stop))?;
            stress.threads.push(t);
        }
        Ok(stress)
    }

    /// Stops every worker and waits for them (within one period at most).
    pub fn stop(self) {
        drop(self);
    }
}

fn burn(busy: Duration, stop: &AtomicBool) {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    while !stop.load(Ordering::Relaxed) {
        let start = Instant::now();
        while start.elapsed() < busy {
            for _ in 0..1000 {
                x = std::hint::black_box(x.rotate_left(7) ^ x.wrapping_mul(0x2545_f491_4f6c_dd1d));
            }
            if stop.load(Ordering::Relaxed) {
                return;
            }
        }
        let end = start + PERIOD;
        // park_timeout may wake early; unpark from drop ends the sleep at once.
        while !stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::park_timeout(end - now);
        }
    }
}

impl Drop for CpuStress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in &self.threads {
            t.thread().unpark();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stops_promptly() {
        let s = CpuStress::start(50, 2).unwrap();
        let t = Instant::now();
        drop(s);
        assert!(t.elapsed() < PERIOD * 2);
    }
}
