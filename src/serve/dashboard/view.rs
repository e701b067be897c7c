//! What the dashboard shows, built from the fleet and the experiments' journals: the
//! topology map (AZs, hosts, the faults in effect on each) and one experiment (its actions
//! over time, its alarms' datapoints against their thresholds).

use super::super::store::ExperimentRow;
use faultline_agent::protocol::HostDescription;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Milliseconds since the epoch of a journal timestamp (RFC 3339).
fn ms(ts: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A template action's `duration` parameter, ms.
fn action_duration(template: &Value, action: &str) -> Option<i64> {
    let d = template["actions"][action]["parameters"]["duration"].as_str()?;
    crate::duration::parse(d).ok().map(|d| d.as_millis() as i64)
}

/// A fault in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Where.
    pub host: String,
    /// Which experiment and action applied it.
    pub experiment: String,
    pub action: String,
    /// The fault as dispatched (`kind` and its parameters).
    pub fault: Value,
    /// When it ends, ms since the epoch, when it has a duration.
    pub ends_at: Option<i64>,
}

/// The faults an experiment's journal says are in effect: applied, and not yet removed or
/// ended.
pub fn active_faults(experiment: &str, template: &Value, lines: &[String]) -> Vec<Fault> {
    let mut dispatched: BTreeMap<String, Value> = BTreeMap::new();
    let mut active: BTreeMap<String, Fault> = BTreeMap::new();
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let fault_id = v["fault_id"].as_str().unwrap_or_default().to_string();
        match v["event"].as_str() {
            Some("dispatch") => {
                dispatched.insert(fault_id, v["fault"].clone());
            }
            Some("ack") if v["outcome"]["status"] == "applied" => {
                let action = v["action"].as_str().unwrap_or_default().to_string();
                let ends_at = ms(v["ts"].as_str().unwrap_or_default())
                    .zip(action_duration(template, &action))
                    .map(|(at, d)| at + d);
                let fault = Fault {
                    host: v["host"].as_str().unwrap_or_default().to_string(),
                    experiment: experiment.to_string(),
                    action,
                    fault: dispatched.get(&fault_id).cloned().unwrap_or(Value::Null),
                    ends_at,
                };
                active.insert(fault_id, fault);
            }
            Some("removal") | Some("fault_ended") => {
                active.remove(&fault_id);
            }
            _ => {}
        }
    }
    active.into_values().collect()
}

/// The topology map: AZs in order, each with its hosts (those the fleet knows, connected or
/// stopped or terminated by their platform, with that state; and those seen since the server
/// started that are gone: `disconnected`), each with its faults.
pub fn map(connected: &[HostDescription], seen: &[HostDescription], faults: &[Fault], now: i64) -> Value {
    let mut azs: BTreeMap<&str, BTreeMap<&str, Value>> = BTreeMap::new();
    for (h, is_connected) in seen
        .iter()
        .map(|h| (h, false))
        .chain(connected.iter().map(|h| (h, true)))
    {
        let state = if is_connected {
            h.state.name.as_str()
        } else {
            "disconnected"
        };
        let on_host: Vec<Value> = faults
            .iter()
            .filter(|f| f.host == h.host_id)
            .map(|f| {
                let mut parameters = f.fault.clone();
                let kind = parameters
                    .as_object_mut()
                    .and_then(|o| o.remove("kind"))
                    .unwrap_or(Value::Null);
                json!({
                    "kind": kind,
                    "parameters": parameters,
                    "experiment": f.experiment,
                    "action": f.action,
                    "timeLeftMs": f.ends_at.map(|e| (e - now).max(0)),
                })
            })
            .collect();
        azs.entry(h.placement.availability_zone.as_str()).or_default().insert(
            h.host_id.as_str(),
            json!({ "hostId": h.host_id, "state": state, "address": h.address, "faults": on_host }),
        );
    }
    let azs: Vec<Value> = azs
        .into_iter()
        .map(|(name, hosts)| json!({ "name": name, "hosts": hosts.into_values().collect::<Vec<_>>() }))
        .collect();
    json!({ "azs": azs, "now": now })
}

/// One experiment: state, each action's bar (start, end, state), each alarm's datapoints
/// with its threshold. Times are ms since the epoch.
pub fn experiment(row: &ExperimentRow, lines: &[String], now: i64) -> Value {
    let template = &row.template;
    let mut actions: BTreeMap<String, Value> = template["actions"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(name, spec)| {
                    let bar = json!({ "name": name, "actionId": spec["actionId"], "state": "pending",
                                      "start": null, "end": null });
                    (name.clone(), bar)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut alarms: BTreeMap<String, Value> = template["alarms"]
        .as_object()
        .map(|a| {
            a.iter()
                .map(|(name, spec)| {
                    let chart = json!({ "name": name, "threshold": spec["threshold"],
                                        "comparison": spec["comparisonOperator"], "points": [] });
                    (name.clone(), chart)
                })
                .collect()
        })
        .unwrap_or_default();
    let mut started = None;
    for line in lines {
        let Ok(v) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some(at) = v["ts"].as_str().and_then(ms) else {
            continue;
        };
        started.get_or_insert(at);
        match v["event"].as_str() {
            Some("action_state") => {
                let Some(bar) = v["action"].as_str().and_then(|a| actions.get_mut(a)) else {
                    continue;
                };
                let state = v["state"].as_str().unwrap_or_default();
                bar["state"] = json!(state);
                match state {
                    "pending" | "initiating" => {}
                    "running" => bar["start"] = json!(at),
                    _ => {
                        if bar["start"].is_null() {
                            bar["start"] = json!(at);
                        }
                        bar["end"] = json!(at);
                    }
                }
            }
            Some("alarm_evaluation") => {
                let Some(chart) = v["alarm"].as_str().and_then(|a| alarms.get_mut(a)) else {
                    continue;
                };
                if let Some(points) = chart["points"].as_array_mut() {
                    points.push(json!({ "t": at, "value": v["value"], "state": v["state"], "phase": v["phase"] }));
                }
            }
            _ => {}
        }
    }
    json!({
        "id": row.id,
        "state": row.state,
        "reason": row.reason,
        "description": template["description"],
        "template": row.template_name.as_ref().map(|n| format!("{n}@v{}", row.template_version.unwrap_or(0))),
        "hosts": row.hosts,
        "createdBy": row.created_by,
        "start": started.unwrap_or(row.created_at),
        "end": row.ended_at,
        "now": now,
        "actions": actions.into_values().collect::<Vec<_>>(),
        "alarms": alarms.into_values().collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(v: Value) -> String {
        v.to_string()
    }

    #[test]
    fn a_fault_is_active_from_its_ack_until_its_removal() {
        let template = json!({ "actions": { "A": { "parameters": { "duration": "PT30S" } } } });
        let mut lines = vec![
            line(
                json!({ "ts": "2026-01-01T00:00:00.000Z", "event": "dispatch", "action": "A", "host": "h1",
                         "fault_id": "f1", "fault": { "kind": "cpu", "load_percent": 60, "workers": 1 } }),
            ),
            line(
                json!({ "ts": "2026-01-01T00:00:01.000Z", "event": "ack", "action": "A", "host": "h1",
                         "fault_id": "f1", "outcome": { "status": "applied", "detail": "" }, "latency_ms": 1.0 }),
            ),
        ];
        let active = active_faults("E", &template, &lines);
        assert_eq!(active.len(), 1);
        assert_eq!(active[0].fault["kind"], "cpu");
        assert_eq!(active[0].ends_at, Some(ms("2026-01-01T00:00:31.000Z").unwrap()));
        lines.push(line(
            json!({ "ts": "2026-01-01T00:00:02.000Z", "event": "removal", "action": "A",
                                "host": "h1", "fault_id": "f1", "by": "stop", "confirmed": true }),
        ));
        assert!(active_faults("E", &template, &lines).is_empty());
    }

    #[test]
    fn the_map_groups_hosts_by_az_and_shows_who_is_gone() {
        let host = |id: &str, az: &str| {
            serde_json::from_value::<HostDescription>(json!({ "HostId": id, "Placement": { "AvailabilityZone": az } }))
                .unwrap()
        };
        let connected = [host("b1", "az-b"), host("a1", "az-a")];
        let seen = [host("a2", "az-a")];
        let fault = Fault {
            host: "a1".into(),
            experiment: "E".into(),
            action: "A".into(),
            fault: json!({ "kind": "blackout" }),
            ends_at: Some(10_000),
        };
        let m = map(&connected, &seen, &[fault], 4_000);
        assert_eq!(m["azs"][0]["name"], "az-a");
        assert_eq!(m["azs"][0]["hosts"][0]["hostId"], "a1");
        assert_eq!(m["azs"][0]["hosts"][0]["faults"][0]["kind"], "blackout");
        assert_eq!(m["azs"][0]["hosts"][0]["faults"][0]["timeLeftMs"], 6_000);
        assert_eq!(m["azs"][0]["hosts"][1]["state"], "disconnected");
        assert_eq!(m["azs"][1]["hosts"][0]["state"], "running");
    }

    #[test]
    fn the_map_shows_a_host_its_platform_stopped_or_terminated_as_such() {
        let host = |id: &str, state: &str| {
            serde_json::from_value::<HostDescription>(
                json!({ "HostId": id, "Placement": { "AvailabilityZone": "az-a" }, "State": { "Name": state } }),
            )
            .unwrap()
        };
        // The fleet lists them with their platform's state; they were seen running before.
        let known = [host("a1", "stopped"), host("a2", "terminated")];
        let seen = [host("a1", "running"), host("a2", "running")];
        let m = map(&known, &seen, &[], 0);
        assert_eq!(m["azs"][0]["hosts"][0]["state"], "stopped");
        assert_eq!(m["azs"][0]["hosts"][1]["state"], "terminated");
    }
}
