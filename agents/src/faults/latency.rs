//! `faultline:network:latency`: the agent's proxy delays the service's traffic and refuses a
//! share of new connections. The condition lives in the agent's process, so it ends with it.

use super::{Answer, Apply, Detection, Env, Fault, FaultError, FaultKind, Kind, Setup, Started, WireParams};
use crate::limits::{self, OutOfRange};
use crate::protocol::Observed;
use crate::proxy::{Condition, Conditions, Delayed};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The wire parameters:
/// `{"kind":"latency","delay_ms":300,"jitter_ms":0,"loss_percent":0.0,"sources":["10.0.0.0/8"]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Added delay per direction, ms ([`DELAY_MS`]).
    pub delay_ms: u64,
    /// Uniform jitter around the delay, ms: at most `delay_ms`.
    pub jitter_ms: u64,
    /// Share of new connections refused, percent ([`LOSS_PERCENT`]).
    pub loss_percent: f64,
    /// Only connections from these peers are affected; empty: every peer
    /// ([`limits::SOURCES`] entries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<IpNet>,
}

/// `delay_ms` and `jitter_ms` (`delayMilliseconds`, `jitterMilliseconds` in a template):
/// ten minutes.
pub const DELAY_MS: (u64, u64) = (0, 600_000);
/// `loss_percent` (`lossPercent`).
pub const LOSS_PERCENT: (f64, f64) = (0.0, 100.0);

impl WireParams for Params {
    const CAPABILITY: &'static str = "latency";

    fn check(&self) -> Result<(), OutOfRange> {
        limits::int("delay_ms", self.delay_ms, DELAY_MS)?;
        limits::int("jitter_ms", self.jitter_ms, (DELAY_MS.0, self.delay_ms))?;
        limits::number("loss_percent", self.loss_percent, LOSS_PERCENT)?;
        limits::int("sources", self.sources.len() as u64, limits::SOURCES)
    }
}

/// The kind: needs a proxy in front of the service.
#[derive(Debug, Default)]
pub struct Latency;

impl Kind for Latency {
    fn detect(&mut self, setup: &Setup) -> Detection {
        if setup.has_proxy {
            Detection::Ready
        } else {
            Detection::Unavailable("latency needs a proxy in front of the service (--proxy LISTEN=UPSTREAM)".into())
        }
    }

    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Latency(Params {
            delay_ms,
            jitter_ms,
            loss_percent,
            ref sources,
        }) = a.spec.kind
        else {
            return Err(super::mismatch(a.spec));
        };
        env.conditions.set(
            &a.spec.fault_id,
            Condition::Latency {
                delay: Duration::from_millis(delay_ms),
                jitter: Duration::from_millis(jitter_ms),
                loss_percent,
                sources: sources.clone(),
            },
        );
        Ok(Started {
            fault: Box::new(Delaying {
                fault_id: a.spec.fault_id.clone(),
                delay_ms,
                conditions: env.conditions.clone(),
                removed: Delayed::default(),
            }),
            answer: Answer::Now(format!("latency in effect for {} ms", a.duration.as_millis()), vec![]),
        })
    }
}

/// A latency in effect: the proxies' condition for this fault id, and what they measured
/// of it (kept from before the removal, which forgets it).
#[derive(Debug)]
struct Delaying {
    fault_id: String,
    delay_ms: u64,
    conditions: Arc<Conditions>,
    removed: Delayed,
}

impl Fault for Delaying {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        self.removed = self.conditions.delayed(&self.fault_id);
        env.conditions.clear(&self.fault_id);
        Ok(())
    }

    /// The delay the proxies added to the data they held, as written out: the mean per
    /// chunk, and the connections that had data held.
    fn observed(&mut self) -> Observed {
        let now = self.conditions.delayed(&self.fault_id);
        let d = if now.chunks > 0 { now } else { self.removed };
        let mut observed = Observed::default().with("connections_delayed", "connections", None, d.connections as f64);
        if d.chunks > 0 {
            let mean_ms = d.total.as_secs_f64() * 1000.0 / d.chunks as f64;
            observed = observed.with("delay_added_ms", "ms", Some(self.delay_ms as f64), mean_ms);
        }
        observed
    }
}
