//! `faultline topology render --compose`: a user's compose file placed in the topology and
//! printed, a file that cannot be placed refused with every problem, and the rendered file
//! checked by compose itself where it is installed.

use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/compose")
        .join(name)
}

fn render(file: &Path, token: &Path) -> Output {
    Command::new(FAULTLINE)
        .args(["topology", "render", "--compose"])
        .arg(file)
        .arg("--token-file")
        .arg(token)
        .output()
        .unwrap()
}

#[test]
fn renders_a_placed_file_and_leaves_it_as_it_was() {
    let s = Scratch::new("compose-render");
    let file = fixture("shop.yaml");
    let before = std::fs::read(&file).unwrap();
    let token = s.path("token");
    let out = render(&file, &token);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "the user's file is never modified"
    );
    assert!(!token.exists(), "render starts nothing and makes no token");
    let doc: serde_json::Value = parse_yaml(&stdout);
    let services = doc["services"].as_object().unwrap();
    for host in [
        "api-a1",
        "api-a2",
        "api-b1",
        "api-b2",
        "api-c1",
        "api-c2",
        "worker-a1",
        "worker-b1",
        "db",
    ] {
        assert!(services.contains_key(host), "{host} missing from\n{stdout}");
        let agent = &services[&format!("{host}-agent")];
        assert_eq!(agent["network_mode"], format!("service:{host}"));
        assert_eq!(agent["pid"], format!("service:{host}"));
        assert_eq!(agent["environment"]["FAULTLINE_HOST_ID"], host);
    }
    assert_eq!(services["api-b2"]["image"], "shop-api:latest");
    assert_eq!(services["api-b2"]["networks"]["az-b"]["ipv4_address"], "10.42.2.12");
    let tags = services["api-b2-agent"]["environment"]["FAULTLINE_TAGS"]
        .as_str()
        .unwrap();
    assert!(
        tags.starts_with("Tier=Web,Environment=Production,aws:autoscaling:groupName=api,"),
        "{tags}"
    );
    assert!(tags.ends_with(",faultline:platform=docker"), "{tags}");
    let mounted = format!("{}:/run/faultline/token:ro", token.display());
    assert_eq!(services["api-b2-agent"]["volumes"][0], mounted.as_str());
    assert_eq!(services["api-lb"]["ports"][0], "127.0.0.1:8080:8080");
    assert_eq!(services["cache"]["image"], "shop-cache:latest");
    assert!(!services.contains_key("api"), "a replicated service is its replicas");
    // Every network a service is on is declared (compose's own check reads no further than
    // its schema and service references).
    let declared = doc["networks"].as_object().unwrap();
    for (name, service) in services {
        for net in service["networks"].as_object().into_iter().flat_map(|n| n.keys()) {
            assert!(
                net == "default" || declared.contains_key(net),
                "{name} is on undeclared network {net}"
            );
        }
    }

    // The same through the environment.
    let env = Command::new(FAULTLINE)
        .args(["topology", "render", "--token-file"])
        .arg(&token)
        .env("FAULTLINE_COMPOSE", &file)
        .output()
        .unwrap();
    assert_eq!(env.status.code(), Some(0));
    assert_eq!(env.stdout, out.stdout);

    // compose itself reads the rendered file as valid.
    let Some(mut compose) = compose_command() else {
        eprintln!("SKIPPED: the rendered file's check by `docker compose config` (neither docker compose nor docker-compose is installed)");
        return;
    };
    let rendered = s.path("rendered.yaml");
    std::fs::write(&rendered, &out.stdout).unwrap();
    let check = compose
        .arg("-f")
        .arg(&rendered)
        .args(["config", "-q"])
        .current_dir(file.parent().unwrap())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "compose refused the rendered file: {}\n{stdout}",
        String::from_utf8_lossy(&check.stderr)
    );
}

#[test]
fn a_file_that_cannot_be_placed_exits_2_with_every_problem() {
    let s = Scratch::new("compose-unplaceable");
    let file = fixture("unplaceable.yaml");
    let out = render(&file, &s.path("token"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing rendered: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains("cannot be placed in the topology (6 problems)"),
        "{stderr}"
    );
    for line in [
        "services.api.x-faultline.zones[1]: unknown zone az-d; the topology has az-a, az-b, az-c",
        "services.api.x-faultline.tgas: unknown key\n    hint: did you mean `tags`?",
        "services.api.container_name: a fixed container_name",
        "services.api.ports[0]: host port 8080 would be published by each of the 2 replicas",
        "services.api.build: a build with no image name",
        "services.metrics.network_mode: network_mode: host cannot be placed",
    ] {
        assert!(stderr.contains(line), "missing `{line}` in\n{stderr}");
    }
    let missing = render(&s.path("nowhere.yaml"), &s.path("token"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read the compose file"));
}

/// The rendered YAML, as JSON values to index.
fn parse_yaml(text: &str) -> serde_json::Value {
    serde_norway::from_str(text).unwrap_or_else(|e| panic!("the rendered file is not YAML: {e}\n{text}"))
}

/// `docker compose` when the plugin answers, else `docker-compose`, else none.
fn compose_command() -> Option<Command> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker", &["compose"]) {
        let mut c = Command::new("docker");
        c.arg("compose");
        Some(c)
    } else if works("docker-compose", &[]) {
        Some(Command::new("docker-compose"))
    } else {
        None
    }
}
