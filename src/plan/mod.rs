//! The dry run: resolved targets and the action timeline, without touching any host.

pub mod inventory;
pub mod resolve;

pub use resolve::{resolve, subnet_az, EmptyTarget, Resolution, Resolved, SUBNET_TAG};

use crate::duration;
use crate::template::{Experiment, ResourceType};
use comfy_table::Cell;
use faultline_agent::protocol::HostDescription;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// An instance action (stop, terminate, reboot) that selected a host on no platform: a bare
/// agent cannot be stopped, terminated or rebooted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct NoPlatform(pub Vec<String>);

/// Checks that every host an instance action selected declares a platform (the tag
/// [`crate::platform::TAG`]), before anything starts.
pub fn check_platforms(
    experiment: &Experiment,
    resolution: &Resolution,
    hosts: &[HostDescription],
) -> Result<(), NoPlatform> {
    let selected = |target: &str| {
        resolution
            .targets
            .get(target)
            .map(|r| r.selected.clone())
            .unwrap_or_default()
    };
    let errors: Vec<String> = without_platform(experiment, hosts, selected)
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(NoPlatform(errors))
    }
}

/// For `validate --inventory`: every instance action whose target could select a host on no
/// platform, whatever the sampling; each with its action name.
pub fn could_select_without_platform(experiment: &Experiment, hosts: &[HostDescription]) -> Vec<(String, String)> {
    without_platform(experiment, hosts, |name| {
        let mut every = experiment.targets[name].clone();
        every.selection = crate::template::Selection::All;
        resolve::resolve_target(name, &every, hosts, 0).selected
    })
}

fn without_platform(
    experiment: &Experiment,
    hosts: &[HostDescription],
    selected: impl Fn(&str) -> Vec<String>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (name, action) in &experiment.actions {
        let (crate::actions::Effect::Instances { .. }, Some(target)) = (&action.spec.effect, &action.target) else {
            continue;
        };
        for id in selected(target) {
            let host = hosts.iter().find(|h| h.host_id == id);
            if host.and_then(crate::platform::Kind::of).is_none() {
                let e = crate::platform::PlatformError::NoPlatform(id);
                errors.push((
                    name.clone(),
                    format!("action {name} ({}): {e}", action.spec.action_id()),
                ));
            }
        }
    }
    errors
}

/// One action on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    /// Action name.
    pub name: String,
    /// Its actionId.
    pub action_id: String,
    /// Target name, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Hosts (or AZs) it acts on.
    pub resources: Vec<String>,
    /// When it starts, from the start of the experiment.
    #[serde(serialize_with = "iso")]
    pub start_offset: Duration,
    /// How long it lasts.
    #[serde(serialize_with = "iso")]
    pub duration: Duration,
    /// What it starts after.
    pub start_after: Vec<String>,
    /// Skipped because its target resolved to nothing.
    pub skipped: bool,
}

fn iso<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&duration::format(*d))
}

/// The dry run of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    /// Seed used for sampling.
    pub seed: u64,
    /// Resolved ids per target.
    pub targets: BTreeMap<String, Vec<String>>,
    /// The timeline, in start order.
    pub actions: Vec<Step>,
    /// When the last action ends, if nothing stops the experiment.
    #[serde(serialize_with = "iso")]
    pub expected_duration: Duration,
    /// Explicit ids that matched no known resource, per target.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub missing: BTreeMap<String, Vec<String>>,
}

/// Start offsets of every action: each starts when the last of its startAfter ends.
///
/// The template was validated, so the graph is acyclic.
pub fn start_offsets(experiment: &Experiment) -> BTreeMap<String, Duration> {
    fn visit(name: &str, e: &Experiment, memo: &mut BTreeMap<String, Duration>) -> Duration {
        if let Some(d) = memo.get(name) {
            return *d;
        }
        let action = &e.actions[name];
        let start = action
            .start_after
            .iter()
            .map(|dep| visit(dep, e, memo) + e.actions[dep].spec.duration())
            .max()
            .unwrap_or(Duration::ZERO);
        memo.insert(name.to_string(), start);
        start
    }
    let mut memo = BTreeMap::new();
    for name in experiment.actions.keys() {
        visit(name, experiment, &mut memo);
    }
    memo
}

/// Builds the plan from a resolution.
pub fn plan(experiment: &Experiment, resolution: &Resolution) -> Plan {
    let offsets = start_offsets(experiment);
    let mut actions: Vec<Step> = experiment
        .actions
        .iter()
        .map(|(name, a)| Step {
            name: name.clone(),
            action_id: a.spec.action_id().into(),
            target: a.target.clone(),
            resources: a
                .target
                .as_ref()
                .and_then(|t| resolution.targets.get(t))
                .map(|r| r.selected.clone())
                .unwrap_or_default(),
            start_offset: offsets[name],
            duration: a.spec.duration(),
            start_after: a.start_after.clone(),
            skipped: a.target.as_ref().is_some_and(|t| resolution.empty.contains(t)),
        })
        .collect();
    actions.sort_by(|a, b| (a.start_offset, &a.name).cmp(&(b.start_offset, &b.name)));
    let expected_duration = actions
        .iter()
        .map(|s| s.start_offset + s.duration)
        .max()
        .unwrap_or_default();
    Plan {
        seed: resolution.seed,
        targets: resolution
            .targets
            .iter()
            .map(|(n, r)| (n.clone(), r.selected.clone()))
            .collect(),
        missing: resolution
            .targets
            .iter()
            .filter(|(_, r)| !r.missing.is_empty())
            .map(|(n, r)| (n.clone(), r.missing.clone()))
            .collect(),
        actions,
        expected_duration,
    }
}

/// Renders the plan as two tables: targets, then the timeline.
pub fn render_tables(
    experiment: &Experiment,
    resolution: &Resolution,
    plan: &Plan,
    hosts: &[HostDescription],
) -> String {
    let mut targets = crate::table::table(["target", "type", "selection", "matched", "selected"]);
    for (name, r) in &resolution.targets {
        let t = &experiment.targets[name];
        let selected = if r.selected.is_empty() {
            "(none: actions skipped)".to_string()
        } else if matches!(t.resource_type, ResourceType::Az | ResourceType::Subnet) {
            r.selected
                .iter()
                .map(|az| {
                    let n = hosts
                        .iter()
                        .filter(|h| match t.resource_type {
                            ResourceType::Subnet => h.placement.availability_zone == subnet_az(az),
                            _ => &h.placement.availability_zone == az,
                        })
                        .count();
                    format!("{az} ({n} hosts)")
                })
                .collect::<Vec<_>>()
                .join(", ")
        } else {
            r.selected.join(", ")
        };
        let mut selected_cell = selected;
        if !r.missing.is_empty() {
            selected_cell += &format!("\nunknown ids: {}", r.missing.join(", "));
        }
        targets.add_row(vec![
            Cell::new(name),
            Cell::new(t.resource_type.as_str()),
            Cell::new(t.selection.to_string()),
            Cell::new(r.matched),
            Cell::new(selected_cell),
        ]);
    }
    let mut timeline = crate::table::table(["action", "actionId", "target", "start", "duration", "after"]);
    for s in &plan.actions {
        let target = match (&s.target, s.skipped) {
            (Some(t), true) => format!("{t} (skipped)"),
            (Some(t), false) => format!("{t} ({})", s.resources.len()),
            (None, _) => "-".into(),
        };
        timeline.add_row(vec![
            Cell::new(&s.name),
            Cell::new(&s.action_id),
            Cell::new(target),
            Cell::new(format!("+{}", duration::human(s.start_offset))),
            Cell::new(if s.duration.is_zero() {
                "instant".into()
            } else {
                duration::human(s.duration)
            }),
            Cell::new(if s.start_after.is_empty() {
                "-".into()
            } else {
                s.start_after.join(", ")
            }),
        ]);
    }
    format!(
        "{}\n\nTargets (seed {})\n{targets}\n\nTimeline\n{timeline}\n\nExpected duration: {} (if no stop condition fires)",
        experiment.description,
        resolution.seed,
        duration::human(plan.expected_duration)
    )
}
