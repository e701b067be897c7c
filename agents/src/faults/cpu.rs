//! `faultline:host:cpu-stress`: worker threads holding a load by duty cycle, in a holder
//! process (see [`crate::holder`]) that ends at the fault's deadline.

use crate::holder::Deadline;
use std::time::{Duration, Instant};

/// Short periods keep the load smooth as a sampler sees it.
const PERIOD: Duration = Duration::from_millis(100);

/// In the holder: starts `workers` threads (0 = one per CPU this process may use), each busy
/// `load_percent` of the time, and returns at `until`; the process exit ends the workers.
pub fn burn_until(load_percent: u8, workers: u32, until: Deadline) -> std::io::Result<()> {
    let workers = if workers == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        workers as usize
    };
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
