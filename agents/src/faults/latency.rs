//! `faultline:network:latency`: the agent's proxy delays the service's traffic and refuses a
//! share of new connections. The condition lives in the agent's process, so it ends with it.

use super::{Answer, Apply, Detection, Env, Fault, FaultError, Kind, Setup, Started};
use crate::proxy::Condition;
use faultline_agent::protocol::FaultKind;
use std::time::Duration;

/// The kind: needs a proxy in front of the service.
#[derive(Debug)]
pub struct Latency;

impl Kind for Latency {
    fn capability(&self) -> &'static str {
        "latency"
    }

    fn detect(&mut self, setup: &Setup) -> Detection {
        if setup.has_proxy {
            Detection::Ready
        } else {
            Detection::Unavailable("latency needs a proxy in front of the service (--proxy LISTEN=UPSTREAM)".into())
        }
    }

    fn apply(&self, a: &Apply<'_>, _undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError> {
        let FaultKind::Latency {
            delay_ms,
            jitter_ms,
            loss_percent,
            ref sources,
        } = a.spec.kind
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
            fault: Box::new(Delaying(a.spec.fault_id.clone())),
            answer: Answer::Now(format!("latency in effect for {} ms", a.duration.as_millis()), vec![]),
        })
    }
}

/// A latency in effect: the proxies' condition for this fault id.
#[derive(Debug)]
struct Delaying(String);

impl Fault for Delaying {
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError> {
        env.conditions.clear(&self.0);
        Ok(())
    }
}
