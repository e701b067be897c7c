//! `faultline plan`: selections counted on the six-host default inventory, empty targets,
//! the timeline.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn inventory() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/inventory.json")
}

fn write_template(name: &str, doc: &Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("faultline-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    path
}

fn plan(template: &Path, seed: u64) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["plan", "--format", "json", "--seed", &seed.to_string(), "--inventory"])
        .arg(inventory())
        .arg(template)
        .output()
        .unwrap()
}

fn selecting(mode: &str, empty: &str) -> Value {
    json!({
        "description": "selection",
        "targets": { "t": { "resourceType": "faultline:host", "resourceTags": { "tier": "web" }, "selectionMode": mode } },
        "actions": { "a": { "actionId": "faultline:host:cpu-stress", "parameters": { "duration": "PT10S" }, "targets": { "Hosts": "t" } } },
        "stopConditions": [{ "source": "none" }],
        "experimentOptions": { "emptyTargetResolutionMode": empty }
    })
}

#[test]
fn counts_count_and_percent_like_fis() {
    for (mode, expected) in [
        ("ALL", 6),
        ("COUNT(1)", 1),
        ("COUNT(4)", 4),
        ("COUNT(10)", 6),
        ("PERCENT(50)", 3),
        ("PERCENT(34)", 2),
        ("PERCENT(17)", 1),
        ("PERCENT(100)", 6),
    ] {
        let path = write_template(
            &format!("sel-{}.json", mode.replace(['(', ')'], "_")),
            &selecting(mode, "fail"),
        );
        let out = plan(&path, 42);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(plan["targets"]["t"].as_array().unwrap().len(), expected, "{mode}");
        assert_eq!(plan["actions"][0]["resources"], plan["targets"]["t"]);
    }
}

#[test]
fn a_seed_repeats_the_selection() {
    let path = write_template("seeded.json", &selecting("COUNT(2)", "fail"));
    let runs: Vec<Value> = (0..3)
        .map(|_| serde_json::from_slice(&plan(&path, 1234).stdout).unwrap())
        .collect();
    assert_eq!(runs[0]["targets"], runs[1]["targets"]);
    assert_eq!(runs[1]["targets"], runs[2]["targets"]);
    let differing = (0..20u64)
        .map(|s| serde_json::from_slice::<Value>(&plan(&path, s).stdout).unwrap()["targets"].to_string())
        .collect::<std::collections::BTreeSet<_>>();
    assert!(differing.len() > 1, "different seeds should pick different hosts");
}

#[test]
fn empty_resolution_fails_with_3_or_skips() {
    let path = write_template("empty-fail.json", &selecting("PERCENT(10)", "fail"));
    let out = plan(&path, 1);
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("target `t` resolved to no hosts") && stderr.contains("rounds down to 0"),
        "{stderr}"
    );

    let path = write_template("empty-skip.json", &selecting("PERCENT(10)", "skip"));
    let out = plan(&path, 1);
    assert_eq!(out.status.code(), Some(0));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["actions"][0]["skipped"], json!(true));
}

#[test]
fn timeline_follows_start_after() {
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("experiments/gameday-az-outage.json");
    let out = plan(&template, 7);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    let start = |name: &str| {
        plan["actions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["name"] == name)
            .unwrap()["startOffset"]
            .clone()
    };
    assert_eq!(start("ZoneOutage"), json!("PT0S"));
    assert_eq!(start("SurvivorCpuSurge"), json!("PT40S"));
    assert_eq!(plan["expectedDuration"], json!("PT1M10S"));
    assert_eq!(plan["targets"]["OneZone"], json!(["az-a"]));

    let table = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["plan", "--seed", "7", "--inventory"])
        .arg(inventory())
        .arg(&template)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&table.stdout);
    assert!(
        text.contains("SurvivorCpuSurge") && text.contains("Expected duration: 1m10s"),
        "{text}"
    );
}

#[test]
fn bad_inventory_exits_2_with_the_entry() {
    let inv = write_template(
        "inv.json",
        &json!([{ "HostId": "a", "Placement": { "AvailabilityZone": "az-a" } }, { "HostId": "a", "Placement": { "AvailabilityZone": "az-b" } }]),
    );
    let t = write_template("ok.json", &selecting("ALL", "fail"));
    let out = Command::new(env!("CARGO_BIN_EXE_faultline"))
        .args(["plan", "--inventory"])
        .arg(&inv)
        .arg(&t)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/1/HostId: host `a` appears twice"));
}
