//! `/metrics` in the Prometheus text format: experiments by state, active faults, agents by
//! AZ, and how long runs took to end after a stop was asked.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the stop-reaction histogram's buckets, seconds.
const BUCKETS: [f64; 10] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Metrics kept in memory by this process.
#[derive(Debug, Default)]
pub struct Metrics {
    reactions: Mutex<Histogram>,
}

#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Records how long a run took to end after it was asked to stop.
    pub fn stop_reaction(&self, took: Duration) {
        let s = took.as_secs_f64();
        let mut h = self.reactions.lock().expect("never poisoned");
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }
}

/// What `/metrics` shows.
pub struct Snapshot<'a> {
    /// Experiments by state, from the database.
    pub by_state: &'a [(String, i64)],
    /// Faults in effect by host.
    pub faults: &'a BTreeMap<String, usize>,
    /// Connected agents by AZ.
    pub agents_by_az: &'a BTreeMap<String, usize>,
    /// Whether the lever is engaged.
    pub lever_engaged: bool,
}

/// Renders the text exposition format.
pub fn render(metrics: &Metrics, s: &Snapshot<'_>) -> String {
    let mut out = String::new();
    let mut put = |line: String| {
        out.push_str(&line);
        out.push('\n');
    };
    put("# HELP faultline_experiments Experiments in the history, by state.".into());
    put("# TYPE faultline_experiments gauge".into());
    for (state, n) in s.by_state {
        put(format!("faultline_experiments{{state=\"{state}\"}} {n}"));
    }
    put("# HELP faultline_active_faults Faults in effect now, by host.".into());
    put("# TYPE faultline_active_faults gauge".into());
    for (host, n) in s.faults {
        put(format!("faultline_active_faults{{host=\"{}\"}} {n}", escape(host)));
    }
    put(format!(
        "faultline_active_faults_total {}",
        s.faults.values().sum::<usize>()
    ));
    put("# HELP faultline_agents Connected agents, by availability zone.".into());
    put("# TYPE faultline_agents gauge".into());
    for (az, n) in s.agents_by_az {
        put(format!("faultline_agents{{az=\"{}\"}} {n}", escape(az)));
    }
    put("# HELP faultline_lever_engaged 1 while the safety lever is engaged.".into());
    put("# TYPE faultline_lever_engaged gauge".into());
    put(format!("faultline_lever_engaged {}", u8::from(s.lever_engaged)));
    let h = metrics.reactions.lock().expect("never poisoned").clone();
    put("# HELP faultline_stop_reaction_seconds From a stop request to the run's end (every fault removed).".into());
    put("# TYPE faultline_stop_reaction_seconds histogram".into());
    for (b, n) in BUCKETS.iter().zip(h.counts) {
        put(format!("faultline_stop_reaction_seconds_bucket{{le=\"{b}\"}} {n}"));
    }
    put(format!(
        "faultline_stop_reaction_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count
    ));
    put(format!("faultline_stop_reaction_seconds_sum {}", h.sum));
    put(format!("faultline_stop_reaction_seconds_count {}", h.count));
    out
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions_fill_cumulative_buckets() {
        let m = Metrics::default();
        m.stop_reaction(Duration::from_millis(80));
        m.stop_reaction(Duration::from_secs(3));
        let text = render(
            &m,
            &Snapshot {
                by_state: &[("completed".into(), 2)],
                faults: &BTreeMap::from([("web-a1".into(), 1)]),
                agents_by_az: &BTreeMap::from([("az-a".into(), 1)]),
                lever_engaged: false,
            },
        );
        assert!(text.contains("faultline_stop_reaction_seconds_bucket{le=\"0.05\"} 0\n"));
        assert!(text.contains("faultline_stop_reaction_seconds_bucket{le=\"0.1\"} 1\n"));
        assert!(text.contains("faultline_stop_reaction_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("faultline_stop_reaction_seconds_count 2\n"));
        assert!(text.contains("faultline_experiments{state=\"completed\"} 2\n"));
        assert!(text.contains("faultline_agents{az=\"az-a\"} 1\n"));
        assert!(text.contains("faultline_active_faults{host=\"web-a1\"} 1\n"));
    }
}
