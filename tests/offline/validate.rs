//! `faultline validate`: the examples, a table of invalid templates, and inputs that must
//! never panic the validator.

use faultline::template::{self, At};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Command;

fn faultline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
}

/// The examples in `experiments/` (tests/fis.rs checks `experiments/fis/`).
fn examples() -> Vec<std::path::PathBuf> {
    examples_in("experiments")
}

/// The JSON files of a directory of the checkout, sorted.
fn examples_in(dir: &str) -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_example_validates() {
    let files = examples();
    assert!(
        files.len() >= 9,
        "expected one example per action in experiments/, found {files:?}"
    );
    let out = faultline().arg("validate").args(&files).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in &files {
        assert!(
            stdout.contains(&format!("{}: valid", f.display())),
            "{f:?} not reported valid:\n{stdout}"
        );
    }
}

#[test]
fn every_action_of_the_design_has_an_example() {
    // experiments/fis/ holds the FIS-shaped ones (tests/fis.rs checks them).
    let ids: Vec<String> = examples()
        .iter()
        .chain(&examples_in("experiments/fis"))
        .filter_map(|f| serde_json::from_str::<Value>(&std::fs::read_to_string(f).unwrap()).ok())
        .filter_map(|v| v.get("actions").cloned())
        .flat_map(|a| {
            a.as_object()
                .unwrap()
                .values()
                .filter_map(|a| faultline::actions::ActionId::find(a["actionId"].as_str().unwrap()))
                .map(|a| a.as_str().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    for id in faultline::actions::IDS {
        assert!(ids.iter().any(|i| i == id), "no example uses {id}");
    }
}

/// A valid template every case below breaks in one place.
fn base() -> Value {
    json!({
        "description": "base",
        "targets": {
            "web": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": "ALL" },
            "zone": { "resourceType": "faultline:az", "resourceIds": ["az-a"], "selectionMode": "ALL" }
        },
        "actions": {
            "kill": { "actionId": "faultline:process:kill", "parameters": { "processName": "demo-web" }, "targets": { "Hosts": "web" } },
            "cpu": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT30S", "loadPercent": "50" }, "targets": { "Hosts": "web" }, "startAfter": ["kill"] },
            "mem": { "actionId": "faultline:host:memory-stress", "parameters": { "duration": "PT30S", "sizeMiB": "64" }, "targets": { "Hosts": "web" } },
            "lat": { "actionId": "faultline:network:latency", "parameters": { "duration": "PT30S", "delayMilliseconds": "100", "jitterMilliseconds": "10", "lossPercent": "5" }, "targets": { "Hosts": "web" } },
            "dark": { "actionId": "faultline:az:blackout", "parameters": { "duration": "PT30S" }, "targets": { "AvailabilityZones": "zone" } },
            "wait": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT5S" }, "startAfter": ["cpu"] }
        },
        "stopConditions": [{ "source": "faultline:alarm", "value": "Errors" }],
        "alarms": {
            "Errors": {
                "metric": { "http": { "url": "http://127.0.0.1:8080/" }, "statistic": "errorRate" },
                "threshold": 0.05, "comparisonOperator": "GreaterThanThreshold",
                "period": "PT5S", "evaluationPeriods": 3, "datapointsToAlarm": 2
            }
        }
    })
}

/// Sets the value at a JSON pointer, or removes it when `value` is `None`.
fn with(pointer: &str, value: Option<Value>) -> Value {
    let mut doc = base();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = doc
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no parent for {pointer}"));
    match (parent, value) {
        (Value::Object(m), Some(v)) => {
            m.insert(key.to_string(), v);
        }
        (Value::Object(m), None) => {
            m.remove(key);
        }
        (Value::Array(a), Some(v)) => a[key.parse::<usize>().unwrap()] = v,
        _ => panic!("cannot edit {pointer}"),
    }
    doc
}

#[test]
fn the_base_template_is_valid() {
    template::validate(&base(), None).unwrap();
}

#[test]
fn each_rule_names_the_pointer_and_the_problem() {
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "startAfter names an existing action",
            with("/actions/cpu/startAfter", Some(json!(["kil"]))),
            "/actions/cpu/startAfter/0",
            "`kil`, which is not an action",
        ),
        (
            "startAfter has no cycle",
            with("/actions/kill/startAfter", Some(json!(["wait"]))),
            "/actions/",
            "cycle: ",
        ),
        (
            "target exists",
            with("/actions/cpu/targets", Some(json!({"Hosts": "webz"}))),
            "/actions/cpu/targets/Hosts",
            "`webz` is not a target",
        ),
        (
            "Hosts needs a host target",
            with("/actions/cpu/targets", Some(json!({"Hosts": "zone"}))),
            "/actions/cpu/targets/Hosts",
            "needs a faultline:host target",
        ),
        (
            "AvailabilityZones needs an az target",
            with("/actions/dark/targets", Some(json!({"AvailabilityZones": "web"}))),
            "/actions/dark/targets/AvailabilityZones",
            "needs a faultline:az target",
        ),
        (
            "blackout takes AvailabilityZones",
            with("/actions/dark/targets", Some(json!({"Hosts": "web"}))),
            "/actions/dark/targets",
            "",
        ),
        (
            "unknown actionId",
            with("/actions/cpu/actionId", Some(json!("faultline:host:cpu-stres"))),
            "/actions/cpu/actionId",
            "unknown actionId",
        ),
        (
            "required parameter",
            with("/actions/kill/parameters/processName", None),
            "/actions/kill/parameters/processName",
            "required key `processName`",
        ),
        (
            "loadPercent range",
            with("/actions/cpu/parameters/loadPercent", Some(json!("0"))),
            "/actions/cpu/parameters/loadPercent",
            "1-100",
        ),
        (
            "loadPercent range high",
            with("/actions/cpu/parameters/loadPercent", Some(json!("101"))),
            "/actions/cpu/parameters/loadPercent",
            "1-100",
        ),
        (
            "percent range",
            with(
                "/actions/mem/parameters",
                Some(json!({"duration": "PT1M", "percent": "0"})),
            ),
            "/actions/mem/parameters/percent",
            "1-100",
        ),
        (
            "sizeMiB 1-16777216",
            with("/actions/mem/parameters/sizeMiB", Some(json!("0"))),
            "/actions/mem/parameters/sizeMiB",
            "it must be 1-16777216",
        ),
        (
            "memory needs an amount",
            with("/actions/mem/parameters/sizeMiB", None),
            "/actions/mem/parameters",
            "percent or sizeMiB",
        ),
        (
            "delay is a whole number >= 0",
            with("/actions/lat/parameters/delayMilliseconds", Some(json!("-5"))),
            "/actions/lat/parameters/delayMilliseconds",
            "not a whole number",
        ),
        (
            "lossPercent range",
            with("/actions/lat/parameters/lossPercent", Some(json!("100.5"))),
            "/actions/lat/parameters/lossPercent",
            "0 to 100",
        ),
        (
            "signal is known",
            with("/actions/kill/parameters/signal", Some(json!("SIGKIL"))),
            "/actions/kill/parameters/signal",
            "not a known signal",
        ),
        (
            "a kill never stops a process",
            with("/actions/kill/parameters/signal", Some(json!("SIGSTOP"))),
            "/actions/kill/parameters/signal",
            "nothing would ever resume the process",
        ),
        (
            "parameters are strings",
            with("/actions/cpu/parameters/loadPercent", Some(json!(50))),
            "/actions/cpu/parameters/loadPercent",
            "expected a string",
        ),
        (
            "unknown parameter",
            with("/actions/cpu/parameters/load", Some(json!("5"))),
            "/actions/cpu/parameters/load",
            "unknown key `load`",
        ),
        (
            "duration syntax",
            with("/actions/cpu/parameters/duration", Some(json!("30s"))),
            "/actions/cpu/parameters/duration",
            "ISO 8601",
        ),
        (
            "duration > 0",
            with("/actions/cpu/parameters/duration", Some(json!("PT0S"))),
            "/actions/cpu/parameters/duration",
            "longer than zero",
        ),
        (
            "duration <= 12h",
            with("/actions/cpu/parameters/duration", Some(json!("PT12H1S"))),
            "/actions/cpu/parameters/duration",
            "12 hour",
        ),
        (
            "duration calendar units",
            with("/actions/wait/parameters/duration", Some(json!("P1M"))),
            "/actions/wait/parameters/duration",
            "years or months",
        ),
        (
            "selectionMode shape",
            with("/targets/web/selectionMode", Some(json!("SOME"))),
            "/targets/web/selectionMode",
            "not a selection mode",
        ),
        (
            "COUNT(n) n >= 1",
            with("/targets/web/selectionMode", Some(json!("COUNT(0)"))),
            "/targets/web/selectionMode",
            "n >= 1",
        ),
        (
            "PERCENT(n) n > 0",
            with("/targets/web/selectionMode", Some(json!("PERCENT(0)"))),
            "/targets/web/selectionMode",
            "0 < n <= 100",
        ),
        (
            "PERCENT(n) n <= 100",
            with("/targets/web/selectionMode", Some(json!("PERCENT(101)"))),
            "/targets/web/selectionMode",
            "0 < n <= 100",
        ),
        (
            "ids and tags not both",
            with("/targets/web/resourceIds", Some(json!(["web-a1"]))),
            "/targets/web/resourceTags",
            "cannot both be given",
        ),
        (
            "host target needs a selector",
            with("/targets/web/resourceTags", None),
            "/targets/web",
            "needs resourceIds, resourceTags or filters",
        ),
        (
            "resourceType known",
            with("/targets/web/resourceType", Some(json!("aws:ec2:instances"))),
            "/targets/web/resourceType",
            "not an accepted value",
        ),
        (
            "stop condition alarm defined",
            with(
                "/stopConditions/0",
                Some(json!({"source": "faultline:alarm", "value": "Nope"})),
            ),
            "/stopConditions/0/value",
            "no alarm named `Nope`",
        ),
        (
            "cloudwatch ARN shape",
            with(
                "/stopConditions/0",
                Some(json!({"source": "aws:cloudwatch:alarm", "value": "Errors"})),
            ),
            "/stopConditions/0/value",
            "not a CloudWatch alarm ARN",
        ),
        (
            "datapointsToAlarm <= evaluationPeriods",
            with("/alarms/Errors/datapointsToAlarm", Some(json!(4))),
            "/alarms/Errors/datapointsToAlarm",
            "exceeds evaluationPeriods",
        ),
        (
            "comparison operator known",
            with("/alarms/Errors/comparisonOperator", Some(json!("GreaterThan"))),
            "/alarms/Errors/comparisonOperator",
            "not an accepted value",
        ),
        (
            "statistic fits the source",
            with("/alarms/Errors/metric/statistic", Some(json!("exitStatus"))),
            "/alarms/Errors/metric/statistic",
            "does not apply",
        ),
        (
            "metric has one source",
            with("/alarms/Errors/metric/http", None),
            "/alarms/Errors/metric",
            "no source",
        ),
        (
            "unknown top-level key",
            with("/descripton", Some(json!("typo"))),
            "/descripton",
            "unknown key",
        ),
        (
            "unknown key deep down",
            with("/targets/web/filter", Some(json!([]))),
            "/targets/web/filter",
            "unknown key `filter`",
        ),
        (
            "unknown key in an alarm",
            with("/alarms/Errors/treshold", Some(json!(1))),
            "/alarms/Errors/treshold",
            "unknown key",
        ),
        (
            "description required",
            with("/description", None),
            "/description",
            "required key",
        ),
        (
            "at least one action",
            with("/actions", Some(json!({}))),
            "/actions",
            "at least 1 action",
        ),
        (
            "stopConditions required",
            with("/stopConditions", None),
            "/stopConditions",
            "required key",
        ),
        (
            "none not mixed with alarms",
            with(
                "/stopConditions",
                Some(json!([{"source": "none"}, {"source": "faultline:alarm", "value": "Errors"}])),
            ),
            "/stopConditions/0/source",
            "cannot be combined",
        ),
        (
            "empty target mode known",
            with("/experimentOptions", Some(json!({"emptyTargetResolutionMode": "fial"}))),
            "/experimentOptions/emptyTargetResolutionMode",
            "not an accepted value",
        ),
    ];
    let mut failures = Vec::new();
    for (rule, doc, pointer, message) in &cases {
        match template::validate(doc, None) {
            Ok(_) => failures.push(format!("{rule}: accepted")),
            Err(diags) => {
                let hit = diags
                    .iter()
                    .any(|d| matches!(&d.at, At::Pointer(p) if p.starts_with(pointer)) && d.message.contains(message));
                if !hit {
                    failures.push(format!("{rule}: wanted {pointer} `{message}`, got {diags:#?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn reports_every_error_not_only_the_first() {
    let mut doc = with("/targets/web/selectionMode", Some(json!("COUNT(0)")));
    doc["actions"]["cpu"]["parameters"]["loadPercent"] = json!("500");
    doc["bogus"] = json!(true);
    let diags = template::validate(&doc, None).unwrap_err();
    assert_eq!(diags.len(), 3, "{diags:#?}");
}

#[test]
fn a_wrong_target_type_is_reported_even_when_a_parameter_is_wrong_too() {
    let mut doc = with("/actions/cpu/targets", Some(json!({"Hosts": "zone"})));
    doc["actions"]["cpu"]["parameters"]["loadPercent"] = json!("150");
    let diags = template::validate(&doc, None).unwrap_err();
    let pointers: Vec<String> = diags.iter().map(|d| format!("{:?}", d.at)).collect();
    assert_eq!(diags.len(), 2, "{diags:#?}");
    assert!(
        pointers.iter().any(|p| p.contains("/actions/cpu/targets/Hosts")),
        "{pointers:?}"
    );
    assert!(
        pointers
            .iter()
            .any(|p| p.contains("/actions/cpu/parameters/loadPercent")),
        "{pointers:?}"
    );
}

#[test]
fn a_wait_with_targets_gets_one_readable_error() {
    let doc = with("/actions/wait/targets", Some(json!({"Hosts": "web"})));
    let diags = template::validate(&doc, None).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:#?}");
    assert!(diags[0].message.contains("aws:fis:wait takes no targets"), "{diags:#?}");
}

#[test]
fn cli_exits_2_and_names_the_pointer() {
    let dir = tempdir();
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        serde_json::to_string_pretty(&with("/actions/cpu/parameters/loadPercent", Some(json!("0")))).unwrap(),
    )
    .unwrap();
    let syntax = dir.join("syntax.json");
    std::fs::write(&syntax, "{\n  \"description\": \"x\",\n  \"actions\": {,}\n}\n").unwrap();
    let out = faultline().arg("validate").arg(&bad).arg(&syntax).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{stdout}");
    assert!(
        stdout.contains(&format!("{}: /actions/cpu/parameters/loadPercent: ", bad.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}:3:15: not valid JSON", syntax.display())),
        "{stdout}"
    );

    let out = faultline()
        .args(["validate", "--format", "json"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report[0]["valid"], json!(false));
    assert_eq!(
        report[0]["errors"][0]["at"]["pointer"],
        json!("/actions/cpu/parameters/loadPercent")
    );
}

#[test]
fn fis_shaped_template_with_an_alarms_file() {
    let dir = tempdir();
    let alarms = dir.join("alarms.json");
    std::fs::write(
        &alarms,
        json!({
            "HighErrorRate": {
                "metric": { "http": { "url": "http://127.0.0.1:8080/" }, "statistic": "errorRate" },
                "threshold": 0.05, "comparisonOperator": "GreaterThanThreshold", "period": "PT5S", "evaluationPeriods": 3
            }
        })
        .to_string(),
    )
    .unwrap();
    let fis = dir.join("fis.json");
    std::fs::write(
        &fis,
        json!({
            "description": "FIS as is",
            "roleArn": "arn:aws:iam::123456789012:role/fis",
            "targets": { "i": {
                "resourceType": "aws:ec2:instance",
                "resourceArns": ["arn:aws:ec2:eu-west-1:123456789012:instance/web-a1"],
                "selectionMode": "ALL" } },
            "actions": { "s": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT1M" }, "targets": { "Hosts": "i" } } },
            "stopConditions": [{ "source": "aws:cloudwatch:alarm", "value": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:HighErrorRate" }]
        })
        .to_string(),
    )
    .unwrap();
    let out = faultline().arg("validate").arg(&fis).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "the alarm is only in the --alarms file");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/stopConditions/0/value: no alarm named `HighErrorRate`"));
    let out = faultline()
        .arg("validate")
        .arg("--alarms")
        .arg(&alarms)
        .arg(&fis)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));

    let text = std::fs::read_to_string(&fis).unwrap();
    let alarms_text = std::fs::read_to_string(&alarms).unwrap();
    let e = template::validate_text(&text, Some(&alarms_text)).unwrap();
    assert_eq!(
        e.targets["i"].resource_ids.as_deref(),
        Some(&["web-a1".to_string()][..])
    );
    assert_eq!(e.stop_conditions, vec!["HighErrorRate"]);
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "faultline-validate-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn any_json() -> impl Strategy<Value = Value> {
    let keys = prop::sample::select(vec![
        "description",
        "targets",
        "actions",
        "stopConditions",
        "alarms",
        "actionId",
        "parameters",
        "duration",
        "selectionMode",
        "resourceType",
        "startAfter",
        "Hosts",
        "metric",
        "http",
        "statistic",
        "source",
        "value",
        "filters",
        "path",
        "values",
        "resourceTags",
        "resourceArns",
        "a",
        "b",
    ]);
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        prop::sample::select(vec![
            "ALL",
            "COUNT(2)",
            "PERCENT(50)",
            "PT30S",
            "faultline:host",
            "faultline:az",
            "faultline:host:cpu-stress",
            "aws:fis:wait",
            "faultline:az:blackout",
            "a",
            "b",
            "none",
            "faultline:alarm",
            "",
            "P",
            "COUNT(",
        ])
        .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = template::validate_text(&text, None);
        let _ = template::validate_text("{}", Some(&text));
    }

    #[test]
    fn random_json_never_panics(doc in any_json(), alarms in any_json()) {
        let _ = template::validate(&doc, None);
        let _ = template::validate(&doc, Some(&alarms));
        let _ = template::validate_alarms(&alarms);
    }

    #[test]
    fn mutated_base_never_panics(pointer in prop::sample::select(vec![
        "/targets/web", "/actions/cpu/parameters", "/actions/kill", "/alarms/Errors/metric",
        "/stopConditions/0", "/actions/wait/startAfter", "/targets/zone/resourceIds",
    ]), v in any_json()) {
        let _ = template::validate(&with(pointer, Some(v)), None);
    }
}
