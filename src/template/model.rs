//! A validated experiment: what `faultline validate` accepts and every later stage consumes.

pub use crate::actions::{ActionSpec, Effect, ResourceType};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// A template that passed both validation passes, with its alarms resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Experiment {
    /// What the experiment tests.
    pub description: String,
    /// The template's tags.
    pub tags: BTreeMap<String, String>,
    /// Named targets.
    pub targets: BTreeMap<String, Target>,
    /// Named actions.
    pub actions: BTreeMap<String, Action>,
    /// Names of the alarms that stop the experiment; empty for `source: none`.
    pub stop_conditions: Vec<String>,
    /// Every alarm the stop conditions name, from the template or `--alarms`.
    pub alarms: BTreeMap<String, Alarm>,
    /// What an empty target resolution does.
    pub empty_target_mode: EmptyTargetMode,
    /// Journal path from `logConfiguration.journal.path`.
    pub journal_path: Option<PathBuf>,
    /// What the users see, sampled in every phase of the run (`userExperience`).
    pub user_experience: Option<UserExperience>,
    /// The template as given (after `faultline demo` pointed it at its world), for the journal.
    pub source: serde_json::Value,
    /// `experimentOptions.actionsMode: skip-all`: resolve and plan only, inject nothing.
    pub skip_all_actions: bool,
    /// `experimentReportConfiguration`: alarm history shown before and after the run.
    pub report_window: ReportWindow,
    /// What the template gives that is accepted but has no effect here.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<super::Diagnostic>,
}

/// How much alarm history the report's charts show around the run (FIS's
/// `preExperimentDuration` and `postExperimentDuration`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportWindow {
    /// Before the first action.
    pub pre: Duration,
    /// After the last one.
    pub post: Duration,
}

impl Default for ReportWindow {
    fn default() -> Self {
        // FIS's default for both, per the provider docs.
        ReportWindow {
            pre: Duration::from_secs(20 * 60),
            post: Duration::from_secs(20 * 60),
        }
    }
}

/// Where the run reads what the users see: a Prometheus text endpoint (e.g. a load
/// balancer's `/metrics`), scraped every period; rates and quantiles are taken from the
/// counters' and the histogram's increase.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserExperience {
    /// The endpoint, e.g. `http://127.0.0.1:8080/metrics`.
    pub url: String,
    /// Counters whose sum counts every request (each summed over its series).
    pub requests: Vec<String>,
    /// Counters whose sum counts the failed requests.
    pub errors: Vec<String>,
    /// A histogram of request durations in seconds (its `_bucket` series).
    pub latency: Option<String>,
    /// Time between scrapes.
    pub period: Duration,
    /// Time a scrape may take.
    pub timeout: Duration,
}

/// What to do with a target that resolves to nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EmptyTargetMode {
    /// The experiment fails before any action runs.
    #[default]
    Fail,
    /// The actions on that target are skipped.
    Skip,
}

/// A named set of resources.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// Hosts or AZs.
    pub resource_type: ResourceType,
    /// Explicit ids (host ids or AZ names), from `resourceIds` or `resourceArns`.
    pub resource_ids: Option<Vec<String>>,
    /// Tags a host must all carry.
    pub resource_tags: BTreeMap<String, String>,
    /// Conditions on the description; all must match.
    pub filters: Vec<Filter>,
    /// Whether the resources were named by ARN: then, as in FIS, they are never skipped.
    pub by_arn: bool,
    /// How many of the matching resources are chosen.
    pub selection: Selection,
}

/// Matches when the value at `path` equals one of `values`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Filter {
    /// Dotted path, e.g. `Placement.AvailabilityZone`.
    pub path: String,
    /// Accepted values.
    pub values: Vec<String>,
}

/// FIS selection modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Selection {
    /// Every matching resource.
    All,
    /// `n` of them at random (all if fewer match).
    Count(u32),
    /// `n` percent of them at random, rounded down.
    Percent(u32),
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Selection::All => write!(f, "ALL"),
            Selection::Count(n) => write!(f, "COUNT({n})"),
            Selection::Percent(n) => write!(f, "PERCENT({n})"),
        }
    }
}

/// A named action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Action {
    /// What it does, with typed parameters.
    pub spec: ActionSpec,
    pub description: Option<String>,
    /// The target it acts on; `None` for `aws:fis:wait`.
    pub target: Option<String>,
    /// Actions that must finish first.
    pub start_after: Vec<String>,
}

/// An alarm with CloudWatch semantics (README, "Stop conditions and CI gates").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alarm {
    /// Where datapoints come from and which statistic is taken.
    pub source: MetricSource,
    /// Statistic taken from the source.
    pub statistic: Statistic,
    /// Compared with the statistic.
    pub threshold: f64,
    /// How.
    pub comparison: Comparison,
    /// One datapoint's window.
    pub period: Duration,
    /// M of "N out of M".
    pub evaluation_periods: u32,
    /// N of "N out of M".
    pub datapoints_to_alarm: u32,
    /// What a missing datapoint counts as.
    pub treat_missing_data: TreatMissingData,
}

/// A metric source.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MetricSource {
    /// HTTP probes.
    Http {
        /// URL probed.
        url: String,
        method: String,
        /// Per-probe timeout.
        timeout: Duration,
        probes_per_period: u32,
    },
    /// Prometheus instant query.
    Prometheus {
        /// Server base URL.
        url: String,
        /// PromQL.
        query: String,
        /// Query timeout.
        timeout: Duration,
    },
    /// A program run without a shell.
    Command {
        /// argv.
        run: Vec<String>,
        /// Run timeout.
        timeout: Duration,
    },
}

/// Statistics an alarm can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Statistic {
    /// Share of probes that failed, 0-1.
    ErrorRate,
    /// Share of probes that succeeded, 0-1.
    SuccessRate,
    /// Median probe latency, ms.
    LatencyP50Ms,
    /// 99th percentile probe latency, ms.
    LatencyP99Ms,
    /// The number a query returned or a command printed.
    Value,
    /// A command's exit status.
    ExitStatus,
}

/// CloudWatch comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Comparison {
    /// value > threshold
    GreaterThanThreshold,
    /// value >= threshold
    GreaterThanOrEqualToThreshold,
    /// value < threshold
    LessThanThreshold,
    /// value <= threshold
    LessThanOrEqualToThreshold,
}

impl Statistic {
    /// The name used in templates.
    pub fn as_str(self) -> &'static str {
        match self {
            Statistic::ErrorRate => "errorRate",
            Statistic::SuccessRate => "successRate",
            Statistic::LatencyP50Ms => "latencyP50Ms",
            Statistic::LatencyP99Ms => "latencyP99Ms",
            Statistic::Value => "value",
            Statistic::ExitStatus => "exitStatus",
        }
    }
}

impl Comparison {
    /// The operator as a symbol: `>`, `>=`, `<`, `<=`.
    pub fn symbol(self) -> &'static str {
        match self {
            Comparison::GreaterThanThreshold => ">",
            Comparison::GreaterThanOrEqualToThreshold => ">=",
            Comparison::LessThanThreshold => "<",
            Comparison::LessThanOrEqualToThreshold => "<=",
        }
    }

    /// Whether `value` breaches `threshold` under this operator.
    pub fn breaches(self, value: f64, threshold: f64) -> bool {
        match self {
            Comparison::GreaterThanThreshold => value > threshold,
            Comparison::GreaterThanOrEqualToThreshold => value >= threshold,
            Comparison::LessThanThreshold => value < threshold,
            Comparison::LessThanOrEqualToThreshold => value <= threshold,
        }
    }
}

/// CloudWatch's `treatMissingData`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum TreatMissingData {
    /// A missing datapoint breaches.
    Breaching,
    /// A missing datapoint does not breach.
    NotBreaching,
    /// Missing datapoints are skipped; the state holds when all are missing.
    Ignore,
    /// Missing datapoints are skipped; INSUFFICIENT_DATA when all are missing.
    Missing,
}
