//! Leases: a fault lives only while the controller that owns it keeps talking.
//!
//! Each controller (by its id) has a lease renewed by every frame it sends. When it has been
//! silent for the interval, the agent removes its faults on its own. While a blackout cuts
//! this host off from its controller on purpose, silence is expected: the clock is paused,
//! and when the cut ends every owner gets a fresh interval to reach the agent again.

use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// Lease clocks per owning controller.
#[derive(Debug)]
pub(crate) struct Leases {
    interval: Duration,
    last_heard: HashMap<String, Instant>,
    paused: bool,
}

impl Leases {
    /// Leases of `interval`.
    pub(crate) fn new(interval: Duration) -> Self {
        Leases {
            interval,
            last_heard: HashMap::new(),
            paused: false,
        }
    }

    /// The interval.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// The owner was heard from at `now`.
    pub(crate) fn heard(&mut self, owner: &str, now: Instant) {
        self.last_heard.insert(owner.to_string(), now);
    }

    /// Whether `owner` holds a lease now: heard from, and not yet found silent by
    /// [`Leases::expired`].
    pub(crate) fn holds(&self, owner: &str) -> bool {
        self.last_heard.contains_key(owner)
    }

    /// Pauses or resumes every clock; resuming restarts them at `now`.
    pub(crate) fn set_paused(&mut self, paused: bool, now: Instant) {
        if self.paused && !paused {
            self.last_heard.values_mut().for_each(|t| *t = now);
        }
        self.paused = paused;
    }

    /// Owners whose lease ran out by `now`; they are forgotten.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<String> {
        if self.paused {
            return Vec::new();
        }
        let interval = self.interval;
        let mut gone = Vec::new();
        self.last_heard.retain(|owner, t| {
            let alive = now.duration_since(*t) < interval;
            if !alive {
                gone.push(owner.clone());
            }
            alive
        });
        gone
    }

    /// When the next lease can run out, if any is running.
    pub(crate) fn next_expiry(&self) -> Option<Instant> {
        if self.paused {
            return None;
        }
        self.last_heard.values().min().map(|t| *t + self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_expires_an_owner_and_talk_renews_it() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_secs(10));
        l.heard("a", t0);
        l.heard("b", t0);
        l.heard("a", t0 + Duration::from_secs(6));
        assert_eq!(l.next_expiry(), Some(t0 + Duration::from_secs(10)));
        assert_eq!(l.expired(t0 + Duration::from_secs(10)), vec!["b".to_string()]);
        assert!(l.holds("a") && !l.holds("b"), "a silent owner holds no lease");
        assert!(l.expired(t0 + Duration::from_secs(15)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(16)), vec!["a".to_string()]);
        assert_eq!(l.next_expiry(), None);
    }

    #[test]
    fn a_pause_stops_the_clock_and_resuming_restarts_it() {
        let t0 = Instant::now();
        let mut l = Leases::new(Duration::from_secs(10));
        l.heard("a", t0);
        l.set_paused(true, t0);
        assert!(l.expired(t0 + Duration::from_secs(60)).is_empty());
        l.set_paused(false, t0 + Duration::from_secs(60));
        assert!(l.expired(t0 + Duration::from_secs(69)).is_empty());
        assert_eq!(l.expired(t0 + Duration::from_secs(70)), vec!["a".to_string()]);
    }
}
