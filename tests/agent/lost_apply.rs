//! No fault is lost track of: an apply whose answer a disconnect swallowed is removed, a
//! reconnecting agent's faults of this controller that no running action owns are removed
//! (another controller's are left to it), every run ends with a remove-all on each host it
//! dispatched to, and only a fault's own host can end it.

use crate::common;

use common::fake_agent::FakeAgent;
use common::*;
use faultline_agent::protocol::{AgentMessage, ControllerMessage, EndReason, HeldFault, Outcome};
use serde_json::{json, Value};
use std::time::Duration;

const T: Duration = Duration::from_secs(30);

fn cpu_template(s: &Scratch, duration: &str) -> std::path::PathBuf {
    s.write_json(
        "t.json",
        &single_action(
            "web-a1",
            "faultline:host:cpu-stress",
            json!({ "duration": duration, "loadPercent": "50", "workers": "1" }),
        ),
    )
}

/// Answers every command until a remove-all, which it returns with every fault id whose
/// removal was asked for before it, in order.
fn removals_until_remove_all(agent: &mut FakeAgent) -> (Vec<String>, Option<String>) {
    let mut removed = Vec::new();
    loop {
        let (id, msg) = agent.next_command(T);
        match msg {
            ControllerMessage::Remove { fault_id } => {
                removed.push(fault_id);
                agent.ack(
                    id,
                    Outcome::Removed {
                        count: 1,
                        observed: None,
                    },
                );
            }
            ControllerMessage::RemoveAll { experiment } => {
                agent.ack(
                    id,
                    Outcome::Removed {
                        count: 0,
                        observed: None,
                    },
                );
                return (removed, experiment);
            }
            other => panic!("unexpected command {other:?}"),
        }
    }
}

fn events<'a>(journal: &'a [Value], kind: &str) -> Vec<&'a Value> {
    journal.iter().filter(|e| e["event"] == kind).collect()
}

#[test]
fn an_apply_lost_to_a_disconnect_is_removed_when_the_agent_comes_back() {
    let s = Scratch::new("lost-apply");
    let (mut ctl, port) = controller(&s, &cpu_template(&s, "PT30S"), 1, &[]);
    let mut agent = FakeAgent::connect(port, &s.path("token"), "web-a1", "az-a", &["cpu"]);
    let (_, msg) = agent.next_command(T);
    let ControllerMessage::Apply { fault } = msg else {
        panic!("expected an apply, got {msg:?}");
    };
    // The apply may have landed; its answer never comes.
    agent.disconnect();
    ctl.expect("disconnected before answering", T);

    // A fault of an earlier run of this controller, and one of another controller.
    let orphan = "EXPgone00000000/A/web-a1".to_string();
    let foreign = "EXPother0000000/A/web-a1".to_string();
    agent.reconnect(vec![
        HeldFault {
            fault_id: fault.fault_id.clone(),
            owner: agent.controller_id.clone(),
        },
        HeldFault {
            fault_id: orphan.clone(),
            owner: agent.controller_id.clone(),
        },
        HeldFault {
            fault_id: foreign.clone(),
            owner: "ctl-other".into(),
        },
    ]);
    let (removed, experiment) = removals_until_remove_all(&mut agent);
    assert!(removed.contains(&fault.fault_id), "{removed:?}");
    assert!(removed.contains(&orphan), "{removed:?}");
    assert!(
        !removed.contains(&foreign),
        "another controller's fault was removed: {removed:?}"
    );
    let run_id = fault.fault_id.split('/').next().unwrap();
    assert_eq!(experiment.as_deref(), Some(run_id));

    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(3), "the action failed: {}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "failed");
    let journal = journal(&s);
    // The action itself removed its fault: it counted the lost apply as in effect.
    let removal = events(&journal, "removal");
    assert!(
        removal
            .iter()
            .any(|e| e["fault_id"] == fault.fault_id.as_str() && e["confirmed"] == true && e["by"] == "controller"),
        "{removal:?}"
    );
    let orphans = events(&journal, "orphan_removal");
    assert!(
        orphans
            .iter()
            .any(|e| e["fault_id"] == orphan.as_str() && e["confirmed"] == true),
        "{orphans:?}"
    );
    let foreigners = events(&journal, "foreign_fault");
    assert_eq!(foreigners.len(), 1, "{journal:?}");
    assert_eq!(foreigners[0]["fault_id"], foreign.as_str());
    assert_eq!(foreigners[0]["owner"], "ctl-other");
    let sweeps = events(&journal, "remove_all");
    assert_eq!(sweeps.len(), 1, "{sweeps:?}");
    assert_eq!(sweeps[0]["host"], "web-a1");
}

#[test]
fn a_reconnect_keeps_the_faults_of_running_actions_and_removes_the_others() {
    let s = Scratch::new("reconnect-held");
    let (mut ctl, port) = controller(&s, &cpu_template(&s, "PT4S"), 1, &[]);
    let mut agent = FakeAgent::connect(port, &s.path("token"), "web-a1", "az-a", &["cpu"]);
    let (id, msg) = agent.next_command(T);
    let ControllerMessage::Apply { fault } = msg else {
        panic!("expected an apply, got {msg:?}");
    };
    agent.ack(
        id,
        Outcome::Applied {
            detail: "fake".into(),
            pids: Vec::new(),
        },
    );
    ctl.expect("action A running", T);
    agent.disconnect();
    ctl.expect("agent web-a1 disconnected", T);

    let orphan = "EXPgone00000000/A/web-a1".to_string();
    agent.reconnect(vec![
        HeldFault {
            fault_id: fault.fault_id.clone(),
            owner: agent.controller_id.clone(),
        },
        HeldFault {
            fault_id: orphan.clone(),
            owner: agent.controller_id.clone(),
        },
    ]);
    let (removed, _) = removals_until_remove_all(&mut agent);
    // The running fault is removed once, by its action at its end; the orphan at once.
    assert_eq!(
        removed.iter().filter(|r| **r == fault.fault_id).count(),
        1,
        "{removed:?}"
    );
    assert_eq!(removed.first(), Some(&orphan), "{removed:?}");

    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "completed");
    let journal = journal(&s);
    assert_eq!(events(&journal, "orphan_removal").len(), 1);
}

#[test]
fn only_the_host_of_a_fault_can_end_or_answer_for_it() {
    let s = Scratch::new("foreign-end");
    let (mut ctl, port) = controller(&s, &cpu_template(&s, "PT3S"), 2, &[]);
    let mut a1 = FakeAgent::connect(port, &s.path("token"), "web-a1", "az-a", &["cpu"]);
    let mut b1 = FakeAgent::connect(port, &s.path("token"), "web-b1", "az-b", &["cpu"]);
    let (id, msg) = a1.next_command(T);
    let ControllerMessage::Apply { fault } = msg else {
        panic!("expected an apply, got {msg:?}");
    };
    // Another host answers the apply in its host's stead, and claims the fault is over.
    b1.ack(
        id,
        Outcome::Failed {
            message: "forged by web-b1".into(),
        },
    );
    b1.send(AgentMessage::FaultEnded {
        fault_id: fault.fault_id.clone(),
        reason: EndReason::LeaseExpired,
        observed: None,
    });
    b1.sync();
    a1.ack(
        id,
        Outcome::Applied {
            detail: "fake".into(),
            pids: Vec::new(),
        },
    );
    ctl.expect("action A running", T);
    let (removed, _) = removals_until_remove_all(&mut a1);
    assert_eq!(removed, vec![fault.fault_id.clone()]);

    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    assert_eq!(report(&out, &lines)["state"], "completed");
    let journal = journal(&s);
    assert!(events(&journal, "fault_ended").is_empty(), "{journal:?}");
}

#[test]
fn faults_of_another_controller_are_left_to_it_when_their_agent_registers() {
    let s = Scratch::new("dead-controller");
    let (ctl, port) = controller(&s, &cpu_template(&s, "PT1S"), 2, &[]);
    // Another controller's fault (alive or not: its lease ends it if it is gone).
    let foreign = "EXPgone00000000/A/web-a1".to_string();
    let held = vec![HeldFault {
        fault_id: foreign.clone(),
        owner: "ctl-gone".into(),
    }];
    let mut a1 = FakeAgent::connect_holding(port, &s.path("token"), "web-a1", "az-a", &["cpu"], held);
    a1.sync();
    let _b1 = FakeAgent::connect(port, &s.path("token"), "web-b1", "az-b", &["cpu"]);
    // The first command is the run's apply: nothing was asked of the foreign fault.
    let (id, msg) = a1.next_command(T);
    assert!(matches!(msg, ControllerMessage::Apply { .. }), "{msg:?}");
    a1.ack(
        id,
        Outcome::Applied {
            detail: "fake".into(),
            pids: Vec::new(),
        },
    );
    let (removed, _) = removals_until_remove_all(&mut a1);
    assert!(!removed.contains(&foreign), "{removed:?}");
    let (status, _, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{}", lines.join("\n"));
    // The run's journal says what the agent held before it began, and whose it was.
    let journal = journal(&s);
    assert!(events(&journal, "orphan_removal").is_empty(), "{journal:?}");
    let foreigners = events(&journal, "foreign_fault");
    assert_eq!(foreigners.len(), 1, "{journal:?}");
    assert_eq!(foreigners[0]["fault_id"], foreign.as_str());
    assert_eq!(foreigners[0]["owner"], "ctl-gone");
}
