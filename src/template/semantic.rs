//! The semantic pass: references, ranges, durations, cycles; builds the typed [`Experiment`].
//!
//! It reads the raw JSON tolerantly, so it can report what it finds even in a document the
//! schema pass already refused; the caller drops its findings where the schema spoke first.

use super::model::*;
use crate::actions::IDS as ACTION_IDS;
use crate::actions::{ActionId, Params};
use crate::diagnostic::did_you_mean;
use crate::diagnostic::{join, Diagnostic, Origin};
use crate::duration;
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Shortest alarm period: probes need time to answer.
pub const MIN_ALARM_PERIOD: Duration = Duration::from_millis(100);
/// Longest alarm period.
pub const MAX_ALARM_PERIOD: Duration = Duration::from_secs(3600);

/// Builds the experiment from a template and an optional `--alarms` document.
pub fn build(template: &Value, alarms_file: Option<&Value>) -> Result<Experiment, Vec<Diagnostic>> {
    let mut c = Checker::default();
    let empty = Map::new();
    let root = template.as_object().unwrap_or(&empty);

    let targets = c.targets(root.get("targets"));
    let actions = c.actions(root.get("actions"), &targets);
    let mut alarms = c.alarms(Origin::Template, root.get("alarms"), "/alarms");
    if let Some(file) = alarms_file {
        for (name, alarm) in c.alarms(Origin::Alarms, Some(file), "") {
            match alarms.entry(name) {
                std::collections::btree_map::Entry::Occupied(e) => c.err(
                    Diagnostic::at(
                        Origin::Template,
                        join("/alarms", e.key()),
                        format!("alarm `{}` is also defined in the --alarms file", e.key()),
                    )
                    .hint("keep one definition: remove it from the template or from the file"),
                ),
                std::collections::btree_map::Entry::Vacant(e) => {
                    e.insert(alarm);
                }
            }
        }
    }
    let stop_conditions = c.stop_conditions(root.get("stopConditions"), &alarms, alarms_file.is_some());

    let options = root.get("experimentOptions");
    let option = |key: &str| options.and_then(|o| o.get(key)).and_then(Value::as_str);
    let empty_target_mode = match option("emptyTargetResolutionMode") {
        Some("skip") => EmptyTargetMode::Skip,
        _ => EmptyTargetMode::Fail,
    };
    if option("accountTargeting") == Some("multi-account") {
        c.at(
            "/experimentOptions/accountTargeting",
            "multi-account targeting has no local meaning: faultline targets the hosts connected to one controller",
        )
        .hint = Some("remove accountTargeting or write \"single-account\"".into());
    }
    let skip_all_actions = option("actionsMode") == Some("skip-all");
    let report_window = c.report_window(root.get("experimentReportConfiguration"));
    let journal_path = root
        .get("logConfiguration")
        .and_then(|l| l.get("journal"))
        .and_then(|j| j.get("path"))
        .and_then(Value::as_str)
        .map(Into::into);

    let user_experience = c.user_experience(root.get("userExperience"));

    if !c.diags.is_empty() {
        return Err(c.diags);
    }
    let used: BTreeSet<&String> = stop_conditions.iter().collect();
    Ok(Experiment {
        description: str_at(root, "description").unwrap_or_default().to_string(),
        tags: string_map(root.get("tags")),
        targets,
        actions,
        alarms: alarms.into_iter().filter(|(n, _)| used.contains(n)).collect(),
        stop_conditions,
        empty_target_mode,
        journal_path,
        user_experience,
        source: template.clone(),
        skip_all_actions,
        report_window,
        warnings: c.warnings,
    })
}

/// Checks an alarms file on its own.
pub fn build_alarms(file: &Value) -> Result<BTreeMap<String, Alarm>, Vec<Diagnostic>> {
    let mut c = Checker::default();
    let alarms = c.alarms(Origin::Alarms, Some(file), "");
    if c.diags.is_empty() {
        Ok(alarms)
    } else {
        Err(c.diags)
    }
}

#[derive(Default)]
struct Checker {
    diags: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

fn str_at<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(Value::as_str)
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, String> {
    v.and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).map(String::from).collect())
}

fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<String> {
    did_you_mean(word, candidates).map(|m| format!("did you mean `{m}`?"))
}

/// Why a `selectionMode` is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectionError {
    /// `COUNT(x)`, `PERCENT(1.5)`, or a number too large.
    #[error("`{0}`: n must be a whole number")]
    NotWhole(String),
    /// `COUNT(0)`.
    #[error("`{0}`: COUNT(n) needs n >= 1")]
    CountZero(String),
    /// `PERCENT(0)` or over 100.
    #[error("`{0}`: PERCENT(n) needs 0 < n <= 100")]
    PercentRange(String),
    /// Neither ALL, COUNT nor PERCENT.
    #[error("`{0}` is not a selection mode")]
    Unknown(String),
}

/// Parses `ALL`, `COUNT(n)` or `PERCENT(n)`, checking n's range.
pub fn parse_selection(text: &str) -> Result<Selection, SelectionError> {
    if text == "ALL" {
        return Ok(Selection::All);
    }
    let inner = |prefix: &str| {
        text.strip_prefix(prefix)
            .and_then(|r| r.strip_suffix(')'))
            .map(|n| n.parse::<u32>().map_err(|_| SelectionError::NotWhole(text.to_string())))
    };
    match (inner("COUNT("), inner("PERCENT(")) {
        (Some(Ok(0)), _) => Err(SelectionError::CountZero(text.to_string())),
        (Some(Ok(n)), _) => Ok(Selection::Count(n)),
        (_, Some(Ok(n))) if (1..=100).contains(&n) => Ok(Selection::Percent(n)),
        (_, Some(Ok(_))) => Err(SelectionError::PercentRange(text.to_string())),
        (Some(Err(e)), _) | (_, Some(Err(e))) => Err(e),
        (None, None) => Err(SelectionError::Unknown(text.to_string())),
    }
}

/// The id an ARN names: its last path segment, e.g. `instance/web-a1` gives `web-a1`.
fn arn_resource_id(arn: &str) -> Option<&str> {
    let resource = arn.strip_prefix("arn:")?.split(':').nth(4)?;
    resource.rsplit('/').next().filter(|id| !id.is_empty())
}

/// The alarm an `aws:cloudwatch:alarm` ARN names: what follows `alarm:`.
fn arn_alarm_name(arn: &str) -> Option<&str> {
    let mut parts = arn.strip_prefix("arn:")?.splitn(6, ':');
    let service = parts.nth(1)?;
    let kind = parts.nth(2)?;
    let name = parts.next()?;
    (service == "cloudwatch" && kind == "alarm" && !name.is_empty()).then_some(name)
}

/// Whether `name` is a Prometheus metric name.
fn metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

impl Checker {
    /// `userExperience`: the endpoint to scrape and the metrics to read there.
    fn user_experience(&mut self, v: Option<&Value>) -> Option<UserExperience> {
        let ux = v?.as_object()?;
        let base = "/userExperience";
        let url = str_at(ux, "scrape").unwrap_or_default().to_string();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            self.at(join(base, "scrape"), format!("`{url}` is not an http(s) URL"))
                .hint = Some("give the metrics endpoint, e.g. http://127.0.0.1:8080/metrics".into());
        }
        let mut names = |key: &str| -> Vec<String> {
            let list = strings(ux.get(key)).unwrap_or_default();
            for (i, name) in list.iter().enumerate() {
                if !metric_name(name) {
                    self.at(
                        join(&join(base, key), i),
                        format!("`{name}` is not a Prometheus metric name"),
                    )
                    .hint = Some("give the name alone, without labels: its series are summed".into());
                }
            }
            list
        };
        let requests = names("requests");
        let errors = names("errors");
        let latency = str_at(ux, "latency").map(String::from);
        if let Some(l) = latency.as_deref().filter(|l| !metric_name(l)) {
            self.at(join(base, "latency"), format!("`{l}` is not a Prometheus metric name"))
                .hint = Some("give the histogram's name, without `_bucket`".into());
        }
        if requests.is_empty() {
            self.at(join(base, "requests"), "name at least one counter of requests")
                .hint = Some("e.g. [\"http_requests_total\"]; the counters are summed".into());
        }
        let diags = &mut self.diags;
        let mut err = |pointer: String, msg: String, hint: Option<&str>| {
            diags.push(Diagnostic::at(Origin::Template, pointer, msg).maybe_hint(hint.map(String::from)));
        };
        let period = alarm_duration(&mut err, "period", ux, base, Duration::from_secs(1));
        let timeout = alarm_duration(&mut err, "timeout", ux, base, period.min(Duration::from_secs(2)));
        Some(UserExperience {
            url,
            requests,
            errors,
            latency,
            period,
            timeout,
        })
    }

    fn err(&mut self, d: Diagnostic) {
        self.diags.push(d);
    }

    fn at(&mut self, pointer: impl Into<String>, message: impl Into<String>) -> &mut Diagnostic {
        self.diags.push(Diagnostic::at(Origin::Template, pointer, message));
        self.diags.last_mut().expect("just pushed")
    }

    /// `experimentReportConfiguration`'s pre- and post-experiment durations.
    fn report_window(&mut self, v: Option<&Value>) -> ReportWindow {
        let mut window = ReportWindow::default();
        let Some(cfg) = v.and_then(Value::as_object) else {
            return window;
        };
        for (key, slot) in [
            ("preExperimentDuration", &mut window.pre),
            ("postExperimentDuration", &mut window.post),
        ] {
            let Some(text) = str_at(cfg, key) else { continue };
            match duration::parse(text) {
                Ok(d) => *slot = d,
                Err(e) => {
                    self.at(join("/experimentReportConfiguration", key), e.to_string());
                }
            }
        }
        window
    }

    /// A target's `parameters`, as filters: a subnet's `availabilityZoneIdentifier` and `vpc`.
    fn target_parameters(&mut self, base: &str, resource_type: ResourceType, v: Option<&Value>) -> Vec<Filter> {
        let Some(params) = v.and_then(Value::as_object) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for (key, value) in params {
            let path = match (resource_type, key.as_str()) {
                (ResourceType::Subnet, "availabilityZoneIdentifier") => "AvailabilityZone",
                (ResourceType::Subnet, "vpc") => "VpcId",
                _ => {
                    let known = match resource_type {
                        ResourceType::Subnet => "aws:ec2:subnet takes availabilityZoneIdentifier and vpc",
                        _ => "only aws:ec2:subnet targets take parameters",
                    };
                    self.at(
                        join(&join(base, "parameters"), key),
                        format!("unknown target parameter `{key}`"),
                    )
                    .hint = Some(known.into());
                    continue;
                }
            };
            if let Some(value) = value.as_str() {
                out.push(Filter {
                    path: path.into(),
                    values: vec![value.to_string()],
                });
            }
        }
        out
    }

    fn targets(&mut self, v: Option<&Value>) -> BTreeMap<String, Target> {
        let mut out = BTreeMap::new();
        let Some(map) = v.and_then(Value::as_object) else {
            return out;
        };
        for (name, t) in map {
            let base = join("/targets", name);
            let Some(t) = t.as_object() else { continue };
            let resource_type = match str_at(t, "resourceType") {
                Some("faultline:az") => ResourceType::Az,
                Some("aws:ec2:subnet") => ResourceType::Subnet,
                _ => ResourceType::Host,
            };
            let ids = strings(t.get("resourceIds"));
            let arns = t.get("resourceArns").and_then(Value::as_array);
            let tags = string_map(t.get("resourceTags"));
            let mut filters: Vec<Filter> = t
                .get("filters")
                .and_then(Value::as_array)
                .map(|fs| {
                    fs.iter()
                        .enumerate()
                        .filter_map(|(i, f)| {
                            let f = f.as_object()?;
                            let path = str_at(f, "path")?.to_string();
                            if path.split('.').any(str::is_empty) {
                                self.at(
                                    join(&join(&base, "filters"), i) + "/path",
                                    format!("`{path}` is not a dotted path"),
                                )
                                .hint = Some("write e.g. Placement.AvailabilityZone or Tags.tier".into());
                            }
                            Some(Filter {
                                path,
                                values: strings(f.get("values")).unwrap_or_default(),
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();

            if ids.is_some() && arns.is_some() {
                self.at(
                    join(&base, "resourceArns"),
                    "resourceIds and resourceArns cannot both be given",
                )
                .hint = Some("keep one list of resources".into());
            }
            let mut resource_ids = ids;
            if let Some(arns) = arns {
                let mut parsed = Vec::new();
                for (i, a) in arns.iter().enumerate() {
                    let Some(a) = a.as_str() else { continue };
                    match arn_resource_id(a) {
                        Some(id) => parsed.push(id.to_string()),
                        None => {
                            self.at(
                                join(&join(&base, "resourceArns"), i),
                                format!("`{a}` is not an ARN with a resource id"),
                            )
                            .hint =
                                Some("write arn:aws:ec2:REGION:ACCOUNT:instance/HOST-ID, or use resourceIds".into());
                        }
                    }
                }
                resource_ids.get_or_insert(parsed);
            }
            if resource_ids.is_some() && !tags.is_empty() {
                self.at(
                    join(&base, "resourceTags"),
                    "resourceIds (or resourceArns) and resourceTags cannot both be given",
                )
                .hint = Some("choose resources by ids or by tags, and narrow them with filters".into());
            }
            match resource_type {
                ResourceType::Host if resource_ids.is_none() && tags.is_empty() && filters.is_empty() => {
                    self.at(base.clone(), "a host target needs resourceIds, resourceTags or filters").hint = Some(
                        "to target every running host: \"filters\": [{\"path\": \"State.Name\", \"values\": [\"running\"]}]".into(),
                    );
                }
                ResourceType::Az if !tags.is_empty() => {
                    self.at(join(&base, "resourceTags"), "availability zones have no tags")
                        .hint = Some("name AZs with resourceIds, e.g. [\"az-a\"], or filter on Name".into());
                }
                _ => {}
            }
            filters.extend(self.target_parameters(&base, resource_type, t.get("parameters")));
            let selection = match str_at(t, "selectionMode").map(parse_selection) {
                Some(Ok(s)) => s,
                Some(Err(e)) => {
                    self.at(join(&base, "selectionMode"), e.to_string()).hint =
                        Some("use ALL, COUNT(n) with n >= 1, or PERCENT(n) with 0 < n <= 100".into());
                    Selection::All
                }
                None => Selection::All,
            };
            out.insert(
                name.clone(),
                Target {
                    resource_type,
                    resource_ids,
                    resource_tags: tags,
                    filters,
                    by_arn: arns.is_some() && !t.contains_key("resourceIds"),
                    selection,
                },
            );
        }
        out
    }

    fn actions(&mut self, v: Option<&Value>, targets: &BTreeMap<String, Target>) -> BTreeMap<String, Action> {
        let mut out = BTreeMap::new();
        let Some(map) = v.and_then(Value::as_object) else {
            return out;
        };
        for (name, a) in map {
            let base = join("/actions", name);
            let Some(a) = a.as_object() else { continue };
            let Some(action_id) = str_at(a, "actionId") else {
                continue;
            };
            let Some(id) = ActionId::find(action_id) else {
                let hint = suggest(action_id, ACTION_IDS)
                    .map(|s| format!("{s} known actions: {}", ACTION_IDS.join(", ")))
                    .unwrap_or_else(|| format!("known actions: {}", ACTION_IDS.join(", ")));
                self.at(join(&base, "actionId"), format!("unknown actionId `{action_id}`"))
                    .hint = Some(hint);
                continue;
            };
            let params = a
                .get("parameters")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let mut reader = Params::new(&mut self.diags, join(&base, "parameters"), &params);
            let spec = (id.def().build)(&mut reader);
            let warnings = reader.into_warnings();
            self.warnings.extend(warnings);

            let start_after = strings(a.get("startAfter")).unwrap_or_default();
            for (i, dep) in start_after.iter().enumerate() {
                if !map.contains_key(dep) {
                    let hint = suggest(dep, map.keys().map(String::as_str));
                    self.at(
                        join(&join(&base, "startAfter"), i),
                        format!("startAfter names `{dep}`, which is not an action"),
                    )
                    .hint = hint.or_else(|| {
                        Some(format!(
                            "actions: {}",
                            map.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    });
                }
            }

            // Checked even when a parameter is wrong: the target type follows from the id alone.
            let target = self.action_target(&base, a, id, targets);
            if let Some(spec) = spec {
                out.insert(
                    name.clone(),
                    Action {
                        spec,
                        description: str_at(a, "description").map(String::from),
                        target,
                        start_after,
                    },
                );
            }
        }
        self.cycles(map);
        out
    }

    fn action_target(
        &mut self,
        base: &str,
        a: &Map<String, Value>,
        id: ActionId,
        targets: &BTreeMap<String, Target>,
    ) -> Option<String> {
        let wanted = id.def().target?;
        let obj = a.get("targets").and_then(Value::as_object)?;
        let key = *wanted.target_keys().iter().find(|k| obj.contains_key(**k))?;
        let name = obj.get(key).and_then(Value::as_str)?;
        let pointer = join(&join(base, "targets"), key);
        match targets.get(name) {
            None => {
                let hint = suggest(name, targets.keys().map(String::as_str)).unwrap_or_else(|| {
                    if targets.is_empty() {
                        "define it under \"targets\"".into()
                    } else {
                        format!("targets: {}", targets.keys().cloned().collect::<Vec<_>>().join(", "))
                    }
                });
                self.at(pointer, format!("`{name}` is not a target")).hint = Some(hint);
                None
            }
            Some(t) if t.resource_type != wanted => {
                self.at(
                    pointer,
                    format!(
                        "`{name}` is a {} target; {key} needs a {} target",
                        t.resource_type.as_str(),
                        wanted.as_str()
                    ),
                )
                .hint = Some(format!(
                    "point {key} at a target whose resourceType is {}",
                    wanted.as_str()
                ));
                None
            }
            Some(_) => Some(name.to_string()),
        }
    }

    /// Reports each cycle of the startAfter graph once, naming the actions in it.
    fn cycles(&mut self, map: &Map<String, Value>) {
        let deps: BTreeMap<&str, Vec<&str>> = map
            .iter()
            .map(|(n, a)| {
                let d = a
                    .get("startAfter")
                    .and_then(Value::as_array)
                    .map(|v| {
                        v.iter()
                            .filter_map(Value::as_str)
                            .filter(|d| map.contains_key(*d))
                            .collect()
                    })
                    .unwrap_or_default();
                (n.as_str(), d)
            })
            .collect();
        // Iterative DFS with colours; a grey node reached again closes a cycle.
        let mut colour: BTreeMap<&str, u8> = deps.keys().map(|k| (*k, 0u8)).collect();
        let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
        for &start in deps.keys() {
            if colour[start] != 0 {
                continue;
            }
            let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
            colour.insert(start, 1);
            while let Some((node, idx)) = stack.pop() {
                if let Some(&next) = deps[node].get(idx) {
                    stack.push((node, idx + 1));
                    match colour[next] {
                        0 => {
                            colour.insert(next, 1);
                            stack.push((next, 0));
                        }
                        1 => {
                            let pos = stack.iter().position(|(n, _)| *n == next).unwrap_or(0);
                            let cycle: Vec<&str> = stack[pos..].iter().map(|(n, _)| *n).collect();
                            if reported.insert(cycle.iter().copied().collect()) {
                                let mut path: Vec<&str> = cycle.clone();
                                path.push(next);
                                self.at(
                                    join(&join("/actions", cycle[0]), "startAfter"),
                                    format!("startAfter forms a cycle: {}", path.join(" → ")),
                                )
                                .hint = Some("remove one of these startAfter entries".into());
                            }
                        }
                        _ => {}
                    }
                } else {
                    colour.insert(node, 2);
                }
            }
        }
    }

    fn stop_conditions(&mut self, v: Option<&Value>, alarms: &BTreeMap<String, Alarm>, has_file: bool) -> Vec<String> {
        let mut names = Vec::new();
        let Some(list) = v.and_then(Value::as_array) else {
            return names;
        };
        let has_none = list
            .iter()
            .any(|s| s.get("source").and_then(Value::as_str) == Some("none"));
        for (i, s) in list.iter().enumerate() {
            let base = join("/stopConditions", i);
            let Some(s) = s.as_object() else { continue };
            let value = str_at(s, "value");
            let name = match (str_at(s, "source"), value) {
                (Some("none"), _) => {
                    if list.len() > 1 {
                        self.at(
                            join(&base, "source"),
                            "`none` cannot be combined with other stop conditions",
                        )
                        .hint = Some("remove it, or remove the alarms".into());
                    }
                    continue;
                }
                (Some("faultline:alarm"), Some(v)) => v,
                (Some("aws:cloudwatch:alarm"), Some(v)) => match arn_alarm_name(v) {
                    Some(n) => n,
                    None => {
                        self.at(join(&base, "value"), format!("`{v}` is not a CloudWatch alarm ARN")).hint =
                            Some("write arn:aws:cloudwatch:REGION:ACCOUNT:alarm:NAME, or use source faultline:alarm with the name".into());
                        continue;
                    }
                },
                _ => continue,
            };
            if has_none {
                continue;
            }
            if !alarms.contains_key(name) {
                let hint = suggest(name, alarms.keys().map(String::as_str)).unwrap_or_else(|| {
                    if has_file {
                        "define it in the template's alarms object or in the --alarms file".into()
                    } else {
                        "define it in the template's alarms object, or pass --alarms FILE".into()
                    }
                });
                self.at(join(&base, "value"), format!("no alarm named `{name}` is defined"))
                    .hint = Some(hint);
            } else if !names.iter().any(|n| n == name) {
                names.push(name.to_string());
            }
        }
        names
    }

    fn alarms(&mut self, origin: Origin, v: Option<&Value>, prefix: &str) -> BTreeMap<String, Alarm> {
        let mut out = BTreeMap::new();
        let Some(map) = v.and_then(Value::as_object) else {
            return out;
        };
        for (name, a) in map {
            if name == "$schema" {
                continue;
            }
            let Some(a) = a.as_object() else { continue };
            let base = join(prefix, name);
            let diags = &mut self.diags;
            let mut err = |pointer: String, msg: String, hint: Option<&str>| {
                diags.push(Diagnostic::at(origin, pointer, msg).maybe_hint(hint.map(String::from)));
            };
            let mut dur = |key: &str, obj: &Map<String, Value>, at: &str, default: Duration| -> Duration {
                alarm_duration(&mut err, key, obj, at, default)
            };
            let period = dur("period", a, &base, Duration::from_secs(60));

            let metric_at = join(&base, "metric");
            let empty = Map::new();
            let metric = a.get("metric").and_then(Value::as_object).unwrap_or(&empty);
            let sources: Vec<&str> = ["http", "prometheus", "command"]
                .into_iter()
                .filter(|k| metric.contains_key(*k))
                .collect();
            let source = match sources.as_slice() {
                [one] => {
                    let s = metric[*one].as_object().unwrap_or(&empty);
                    let at = join(&metric_at, one);
                    Some(match *one {
                        "http" => MetricSource::Http {
                            url: str_at(s, "url").unwrap_or_default().into(),
                            method: str_at(s, "method").unwrap_or("GET").into(),
                            timeout: dur("timeout", s, &at, Duration::from_secs(1)),
                            probes_per_period: s.get("probesPerPeriod").and_then(Value::as_u64).unwrap_or(5) as u32,
                        },
                        "prometheus" => MetricSource::Prometheus {
                            url: str_at(s, "url").unwrap_or_default().into(),
                            query: str_at(s, "query").unwrap_or_default().into(),
                            timeout: dur("timeout", s, &at, Duration::from_secs(2)),
                        },
                        _ => {
                            let timeout = dur("timeout", s, &at, Duration::from_secs(5));
                            let run = strings(s.get("run")).unwrap_or_default();
                            if run.first().is_some_and(String::is_empty) {
                                err(join(&join(&at, "run"), 0), "the program name is empty".into(), None);
                            }
                            MetricSource::Command { run, timeout }
                        }
                    })
                }
                [] => {
                    err(
                        metric_at.clone(),
                        "the metric has no source".into(),
                        Some("give exactly one of http, prometheus or command"),
                    );
                    None
                }
                _ => {
                    err(
                        metric_at.clone(),
                        format!("the metric has {} sources ({})", sources.len(), sources.join(", ")),
                        Some("give exactly one of http, prometheus or command"),
                    );
                    None
                }
            };
            let statistic = match str_at(metric, "statistic") {
                Some("errorRate") => Statistic::ErrorRate,
                Some("successRate") => Statistic::SuccessRate,
                Some("latencyP50Ms") => Statistic::LatencyP50Ms,
                Some("latencyP99Ms") => Statistic::LatencyP99Ms,
                Some("exitStatus") => Statistic::ExitStatus,
                _ => Statistic::Value,
            };
            let fits = matches!(
                (&source, statistic),
                (
                    Some(MetricSource::Http { .. }),
                    Statistic::ErrorRate | Statistic::SuccessRate | Statistic::LatencyP50Ms | Statistic::LatencyP99Ms
                ) | (Some(MetricSource::Prometheus { .. }), Statistic::Value)
                    | (
                        Some(MetricSource::Command { .. }),
                        Statistic::Value | Statistic::ExitStatus
                    )
                    | (None, _)
            );
            if !fits && metric.contains_key("statistic") {
                let (kind, allowed) = match source {
                    Some(MetricSource::Http { .. }) => ("http", "errorRate, successRate, latencyP50Ms, latencyP99Ms"),
                    Some(MetricSource::Prometheus { .. }) => ("prometheus", "value"),
                    _ => ("command", "exitStatus, value"),
                };
                err(
                    join(&metric_at, "statistic"),
                    format!(
                        "statistic `{}` does not apply to a {kind} source",
                        str_at(metric, "statistic").unwrap_or_default()
                    ),
                    Some(&format!("use one of: {allowed}")),
                );
            }

            let evaluation_periods = a.get("evaluationPeriods").and_then(Value::as_u64).unwrap_or(1) as u32;
            let datapoints_to_alarm = a
                .get("datapointsToAlarm")
                .and_then(Value::as_u64)
                .map(|d| d as u32)
                .unwrap_or(evaluation_periods);
            if datapoints_to_alarm > evaluation_periods {
                err(
                    join(&base, "datapointsToAlarm"),
                    format!(
                        "datapointsToAlarm ({datapoints_to_alarm}) exceeds evaluationPeriods ({evaluation_periods})"
                    ),
                    Some("an alarm fires when N of the last M periods breach: N <= M"),
                );
            }
            let comparison = match str_at(a, "comparisonOperator") {
                Some("GreaterThanOrEqualToThreshold") => Comparison::GreaterThanOrEqualToThreshold,
                Some("LessThanThreshold") => Comparison::LessThanThreshold,
                Some("LessThanOrEqualToThreshold") => Comparison::LessThanOrEqualToThreshold,
                _ => Comparison::GreaterThanThreshold,
            };
            let treat_missing_data = match str_at(a, "treatMissingData") {
                Some("notBreaching") => TreatMissingData::NotBreaching,
                Some("ignore") => TreatMissingData::Ignore,
                Some("missing") => TreatMissingData::Missing,
                _ => TreatMissingData::Breaching,
            };
            if let Some(source) = source {
                out.insert(
                    name.clone(),
                    Alarm {
                        source,
                        statistic,
                        threshold: a.get("threshold").and_then(Value::as_f64).unwrap_or(0.0),
                        comparison,
                        period,
                        evaluation_periods,
                        datapoints_to_alarm,
                        treat_missing_data,
                    },
                );
            }
        }
        out
    }
}

/// An alarm's duration field, checked against the alarm period bounds.
fn alarm_duration(
    err: &mut impl FnMut(String, String, Option<&str>),
    key: &str,
    obj: &Map<String, Value>,
    at: &str,
    default: Duration,
) -> Duration {
    let Some(text) = str_at(obj, key) else {
        return default;
    };
    match duration::parse(text) {
        Ok(d) if !(MIN_ALARM_PERIOD..=MAX_ALARM_PERIOD).contains(&d) => {
            let range = format!(
                "{} and {}",
                duration::format(MIN_ALARM_PERIOD),
                duration::format(MAX_ALARM_PERIOD)
            );
            err(join(at, key), format!("{key} must be between {range}"), None);
            default
        }
        Ok(d) => d,
        Err(e) => {
            err(join(at, key), e.to_string(), None);
            default
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_modes() {
        assert_eq!(parse_selection("ALL"), Ok(Selection::All));
        assert_eq!(parse_selection("COUNT(3)"), Ok(Selection::Count(3)));
        assert_eq!(parse_selection("PERCENT(100)"), Ok(Selection::Percent(100)));
        for (bad, why) in [
            ("COUNT(0)", SelectionError::CountZero("COUNT(0)".into())),
            ("PERCENT(0)", SelectionError::PercentRange("PERCENT(0)".into())),
            ("PERCENT(101)", SelectionError::PercentRange("PERCENT(101)".into())),
            ("COUNT(x)", SelectionError::NotWhole("COUNT(x)".into())),
            ("all", SelectionError::Unknown("all".into())),
            (
                "COUNT(99999999999)",
                SelectionError::NotWhole("COUNT(99999999999)".into()),
            ),
        ] {
            assert_eq!(parse_selection(bad), Err(why), "{bad}");
        }
    }

    #[test]
    fn arns() {
        assert_eq!(
            arn_resource_id("arn:aws:ec2:us-east-1:123456789012:instance/web-a1"),
            Some("web-a1")
        );
        assert_eq!(arn_resource_id("web-a1"), None);
        assert_eq!(
            arn_alarm_name("arn:aws:cloudwatch:us-east-1:123456789012:alarm:HighErrorRate"),
            Some("HighErrorRate")
        );
        assert_eq!(arn_alarm_name("arn:aws:sns:us-east-1:123456789012:alarm:X"), None);
    }

    #[test]
    fn user_experience_is_read_and_its_mistakes_located() {
        use crate::template::At;
        let template = |ux: Value| {
            serde_json::json!({
                "description": "d",
                "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT1S" } } },
                "stopConditions": [{ "source": "none" }],
                "userExperience": ux
            })
        };
        let good = build(
            &template(serde_json::json!({
                "scrape": "http://lb/metrics", "requests": ["a_total"], "latency": "d_seconds", "period": "PT2S"
            })),
            None,
        )
        .unwrap();
        let ux = good.user_experience.unwrap();
        assert_eq!(
            (ux.period, ux.timeout),
            (Duration::from_secs(2), Duration::from_secs(2))
        );
        assert!(ux.errors.is_empty());
        let bad = build(
            &template(serde_json::json!({
                "scrape": "lb:8080", "requests": ["a_total{x=\"1\"}"], "latency": "9d", "period": "PT0S"
            })),
            None,
        )
        .unwrap_err();
        let at: Vec<String> = bad
            .iter()
            .map(|d| match &d.at {
                At::Pointer(p) => p.clone(),
                other => format!("{other:?}"),
            })
            .collect();
        assert_eq!(
            at,
            [
                "/userExperience/scrape",
                "/userExperience/requests/0",
                "/userExperience/latency",
                "/userExperience/period"
            ]
        );
    }
}
