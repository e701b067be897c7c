//! Placement, validation and rendering of user compose files.

use super::render::{render, Agents};
use super::*;

const GOOD: &str = r#"
x-env: &env
  environment: {DATABASE_URL: "postgres://db/shop"}
services:
  api:
    <<: *env
    image: shop-api:latest
    command: ["/api"]
    ports: ["8081"]
    depends_on: [db]
    x-faultline:
      zones: [az-a, az-b, az-c]
      replicasPerZone: 2
      tags: {Tier: Web, Environment: Production}
      proxy: {listen: 8080, upstream: 8081}
      loadBalancer: {port: 8080, health: /healthz}
  worker:
    image: worker:1
    depends_on: {api: {condition: service_healthy}}
    x-faultline: {zones: [az-b], replicasPerZone: 1}
  db:
    image: postgres:16
    x-faultline: {zones: [az-a], tags: {Tier: Database}}
  queue:
    image: queue:1
    ports: ["127.0.0.1:5672:5672"]
"#;

fn problems(text: &str) -> Vec<Problem> {
    match Placement::parse(text) {
        Err(Parsed::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

/// The single problem of a text, as `path: message`.
fn one(text: &str) -> Problem {
    let p = problems(text);
    assert_eq!(p.len(), 1, "{p:#?}");
    p.into_iter().next().unwrap()
}

fn api(block: &str, extra: &str) -> String {
    format!("services:\n  api:\n    image: api:1\n{extra}    x-faultline: {block}\n")
}

fn agents() -> Agents {
    Agents {
        image: "faultline-demo:latest".into(),
        token_file: "/run/t/token".into(),
        ca_file: "/run/t/tls/ca.pem".into(),
    }
}

fn yaml(v: &Value) -> String {
    serde_norway::to_string(v).unwrap()
}

#[test]
fn replicas_are_hosts_in_their_zones_with_their_tags() {
    let p = Placement::parse(GOOD).unwrap();
    let ids: Vec<&str> = p.hosts().map(|h| h.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "api-a1",
            "api-a2",
            "api-b1",
            "api-b2",
            "api-c1",
            "api-c2",
            "worker-b1",
            "db"
        ]
    );
    let b2 = p.hosts().find(|h| h.id == "api-b2").unwrap();
    assert_eq!(b2.az, "az-b");
    assert_eq!(b2.address, Ipv4Addr::new(10, 42, 2, 12));
    assert_eq!(b2.control_address, Ipv4Addr::new(10, 42, 0, 14));
    let tags: Vec<String> = b2.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
    assert_eq!(
        tags,
        [
            "Tier=Web",
            "Environment=Production",
            "aws:autoscaling:groupName=api",
            "faultline:subnet:Name=faultline-az-b",
            "faultline:subnet:AzImpairmentPower=DisruptSubnet",
            "faultline:platform=docker"
        ]
    );
    // The next service's replicas take the next addresses of their zone.
    let w = p.hosts().find(|h| h.id == "worker-b1").unwrap();
    assert_eq!(w.address, Ipv4Addr::new(10, 42, 2, 13));
    // One zone and no replicasPerZone: a single host named after its service, no group tag.
    let db = p.hosts().find(|h| h.id == "db").unwrap();
    assert_eq!(db.address, Ipv4Addr::new(10, 42, 1, 13));
    assert!(!db.tags.iter().any(|(k, _)| k == "aws:autoscaling:groupName"));
    let queue = p.services.iter().find(|s| s.name == "queue").unwrap();
    assert!(queue.group.is_none());
}

#[test]
fn renders_replicas_agents_balancer_and_networks() {
    let p = Placement::parse(GOOD).unwrap();
    let doc = render(&p, &agents());
    let services = doc["services"].as_mapping().unwrap();
    let names: Vec<&str> = services.keys().filter_map(Value::as_str).collect();
    assert_eq!(
        names,
        [
            "api-a1",
            "api-a1-agent",
            "api-a2",
            "api-a2-agent",
            "api-b1",
            "api-b1-agent",
            "api-b2",
            "api-b2-agent",
            "api-c1",
            "api-c1-agent",
            "api-c2",
            "api-c2-agent",
            "api-lb",
            "worker-b1",
            "worker-b1-agent",
            "db",
            "db-agent",
            "queue"
        ]
    );
    let c2 = &services["api-c2"];
    assert_eq!(c2["image"], s("shop-api:latest"));
    assert_eq!(c2["command"], serde_norway::from_str::<Value>("[/api]").unwrap());
    assert_eq!(
        c2["environment"]["DATABASE_URL"],
        s("postgres://db/shop"),
        "merge keys applied"
    );
    assert_eq!(c2["container_name"], s("faultline-api-c2"));
    assert_eq!(c2["hostname"], s("api-c2"));
    assert!(c2.get("x-faultline").is_none());
    assert_eq!(
        yaml(&c2["networks"]),
        "control:\n  ipv4_address: 10.42.0.16\naz-c:\n  ipv4_address: 10.42.3.12\n",
        "a balancer answers to the service's name, not the replicas"
    );
    let agent = &services["api-c2-agent"];
    assert_eq!(agent["network_mode"], s("service:api-c2"));
    assert_eq!(agent["pid"], s("service:api-c2"));
    assert_eq!(agent["cap_add"][0], s("NET_ADMIN"));
    assert_eq!(agent["image"], s("faultline-demo:latest"));
    let env = &agent["environment"];
    assert_eq!(env["FAULTLINE_CONTROLLER"], s("wss://10.42.0.1:7700"));
    assert_eq!(env["FAULTLINE_HOST_ID"], s("api-c2"));
    assert_eq!(env["FAULTLINE_AZ"], s("az-c"));
    assert_eq!(env["FAULTLINE_ADDRESS"], s("10.42.3.12"));
    assert_eq!(env["FAULTLINE_PROXY"], s("0.0.0.0:8080=127.0.0.1:8081"));
    assert_eq!(
        env["FAULTLINE_TAGS"],
        s("Tier=Web,Environment=Production,aws:autoscaling:groupName=api,faultline:subnet:Name=faultline-az-c,faultline:subnet:AzImpairmentPower=DisruptSubnet,faultline:platform=docker")
    );
    assert_eq!(
        yaml(&agent["volumes"]),
        "- /run/t/token:/run/faultline/token:ro\n- /run/t/tls/ca.pem:/run/faultline/ca.pem:ro\n"
    );
    assert!(services["db-agent"]["environment"].get("FAULTLINE_PROXY").is_none());

    let lb = &services["api-lb"];
    assert_eq!(
        lb["environment"]["DEMO_LB_BACKENDS"],
        s("api-a1=10.42.1.11:8080,api-a2=10.42.1.12:8080,api-b1=10.42.2.11:8080,api-b2=10.42.2.12:8080,api-c1=10.42.3.11:8080,api-c2=10.42.3.12:8080")
    );
    assert_eq!(
        lb["command"],
        serde_norway::from_str::<Value>("[/demo-lb, --listen, '0.0.0.0:8080', --health-path, /healthz]").unwrap()
    );
    assert_eq!(lb["ports"][0], s("127.0.0.1:8080:8080"));
    assert_eq!(lb["networks"]["az-b"]["ipv4_address"], s("10.42.2.2"));
    assert_eq!(lb["networks"]["control"]["aliases"][0], s("api"));

    // Dependencies on a placed service become its hosts (and balancer), conditions kept.
    assert_eq!(yaml(&services["api-a1"]["depends_on"]), "- db\n");
    let w = services["worker-b1"]["depends_on"].as_mapping().unwrap();
    assert_eq!(w.len(), 7);
    assert_eq!(w["api-c1"]["condition"], s("service_healthy"));
    assert!(w.contains_key("api-lb"));
    // Without a balancer, replicas answer to the service's name.
    assert_eq!(services["worker-b1"]["networks"]["az-b"]["aliases"][0], s("worker"));

    // As written, and on every network.
    let q = &services["queue"];
    assert_eq!(q["ports"][0], s("127.0.0.1:5672:5672"));
    let nets: Vec<&str> = q["networks"]
        .as_mapping()
        .unwrap()
        .keys()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(nets, ["default", "control", "az-a", "az-b", "az-c"]);

    assert_eq!(
        yaml(&doc["networks"]["az-a"]),
        "ipam:\n  config:\n  - subnet: 10.42.1.0/24\n    ip_range: 10.42.1.128/25\n    gateway: 10.42.1.1\n"
    );
    assert_eq!(
        doc["networks"]["control"]["ipam"]["config"][0]["subnet"],
        s("10.42.0.0/24")
    );
}

#[test]
fn rendering_leaves_the_placement_as_written() {
    let p = Placement::parse(GOOD).unwrap();
    let before = p.clone();
    render(&p, &agents());
    assert_eq!(p, before);
    assert!(p.services[0].definition.get("container_name").is_none());
}

#[test]
fn each_bad_input_names_its_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            &api("{zones: [az-a, az-d]}", ""),
            "services.api.x-faultline.zones[1]",
            "unknown zone az-d; the topology has az-a, az-b, az-c",
        ),
        (&api("{zones: [az-a], replicasPerZone: 0}", ""), "services.api.x-faultline.replicasPerZone", "is 0"),
        (&api("{zones: [az-a], replicasPerZone: two}", ""), "services.api.x-faultline.replicasPerZone", "not a whole number"),
        (&api("{zones: [az-a], replica: 2}", ""), "services.api.x-faultline.replica", "unknown key"),
        (&api("{replicasPerZone: 2}", ""), "services.api.x-faultline", "no zones"),
        (&api("{zones: az-a}", ""), "services.api.x-faultline.zones", "is not a list"),
        (&api("{zones: [az-a, az-a]}", ""), "services.api.x-faultline.zones[1]", "listed twice"),
        (&api("{zones: [az-a, az-b]}", "    network_mode: host\n"), "services.api.network_mode", "network_mode: host"),
        (&api("{zones: [az-a, az-b]}", "    network_mode: none\n"), "services.api.network_mode", "network_mode: none"),
        (&api("{zones: [az-a, az-b]}", "    container_name: api\n"), "services.api.container_name", "fixed container_name"),
        (&api("{zones: [az-a, az-b]}", "    ports: [\"8080:80\"]\n"), "services.api.ports[0]", "host port 8080"),
        (
            &api("{zones: [az-a], replicasPerZone: 2}", "    ports: [{target: 80, published: 9000}]\n"),
            "services.api.ports[0]",
            "host port 9000",
        ),
        (&api("{zones: [az-a, az-b]}", "    networks: [back]\n"), "services.api.networks", "AZ's network"),
        (&api("{zones: [az-a, az-b]}", "    scale: 3\n"), "services.api.scale", "copies of each host"),
        (&api("{zones: [az-a]}", "    deploy: {replicas: 2}\n"), "services.api.deploy.replicas", "copies of each host"),
        (
            "services:\n  api:\n    build: .\n    x-faultline: {zones: [az-a]}\n",
            "services.api.build",
            "a build with no image name",
        ),
        ("services:\n  api:\n    x-faultline: {zones: [az-a]}\n", "services.api.image", "missing"),
        ("services:\n  api:\n    command: [x]\n", "services.api", "neither `image` nor `build`"),
        ("services:\n  m:\n    image: m\n    network_mode: host\n", "services.m.network_mode", "network_mode: host"),
        (&api("{zones: [az-a], tags: [a]}", ""), "services.api.x-faultline.tags", "not a mapping"),
        (
            &api("{zones: [az-a], tags: {aws:autoscaling:groupName: x}}", ""),
            "services.api.x-faultline.tags.aws:autoscaling:groupName",
            "faultline sets this tag",
        ),
        (&api("{zones: [az-a], tags: {Team: \"a,b\"}}", ""), "services.api.x-faultline.tags.Team", "without `,`"),
        (&api("{zones: [az-a], proxy: {listen: 8080}}", ""), "services.api.x-faultline.proxy.upstream", "missing"),
        (&api("{zones: [az-a], proxy: {listen: 8080, upstream: 8080}}", ""), "services.api.x-faultline.proxy.upstream", "the port the proxy listens on"),
        (&api("{zones: [az-a], proxy: {listen: 70000, upstream: 1}}", ""), "services.api.x-faultline.proxy.listen", "not a port"),
        (&api("{zones: [az-a], loadBalancer: {port: 80, helth: /h}}", ""), "services.api.x-faultline.loadBalancer.helth", "unknown key"),
        (&api("{zones: [az-a], loadBalancer: {port: 80, health: h}}", ""), "services.api.x-faultline.loadBalancer.health", "not a path"),
        (
            "services:\n  a:\n    image: a\n    ports: [\"8080:80\"]\n  b:\n    image: b\n    ports: [\"127.0.0.1:8080:81\"]\n",
            "services.b.ports[0]",
            "already published by services.a.ports[0]",
        ),
        (
            "services:\n  a:\n    image: a\n    ports: [\"127.0.0.1:8080:80\"]\n  api:\n    image: api\n    x-faultline: {zones: [az-a], loadBalancer: {port: 8080}}\n",
            "services.api.x-faultline.loadBalancer.port",
            "already published",
        ),
        ("services:\n  a:\n    image: a\n    depends_on: [dbb]\n  db:\n    image: db\n", "services.a.depends_on[0]", "no service dbb"),
        (
            "services:\n  api-agent:\n    image: x\n  api:\n    image: api\n    x-faultline: {zones: [az-a]}\n",
            "services.api-agent",
            "faultline names a service of api so",
        ),
        (
            "services:\n  api-a1:\n    image: x\n  api:\n    image: api\n    x-faultline: {zones: [az-a], replicasPerZone: 1}\n",
            "services.api-a1",
            "faultline names a service of api so",
        ),
        ("services:\n  a:\n    image: a\nnetworks:\n  az-b: {}\n", "networks.az-b", "the topology has a network"),
        ("services: {}\n", "services", "no services"),
        ("- a\n", "(document)", "not a mapping"),
    ];
    for (text, path, message) in cases {
        let p = problems(text);
        assert!(
            p.iter()
                .any(|p| p.path == *path && p.message.contains(message) && !p.hint.is_empty()),
            "{text}\nexpected {path}: {message}, got {p:#?}"
        );
    }
}

#[test]
fn did_you_mean_for_a_misspelt_key() {
    let p = one(&api("{zones: [az-a], replicasPerzone: 2}", ""));
    assert_eq!(p.path, "services.api.x-faultline.replicasPerzone");
    assert_eq!(p.hint, "did you mean `replicasPerZone`?");
}

#[test]
fn every_problem_is_reported_at_once() {
    let p = problems(
        "services:\n  api:\n    build: .\n    container_name: api\n    x-faultline: {zones: [az-a, az-d], replicasPerZone: 2, tgas: {}}\n  m:\n    image: m\n    network_mode: host\n",
    );
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "services.api.x-faultline.tgas",
            "services.api.x-faultline.zones[1]",
            "services.api.container_name",
            "services.api.build",
            "services.m.network_mode"
        ]
    );
}

#[test]
fn one_replica_may_publish_a_port_and_a_single_host_keeps_its_name() {
    let p = Placement::parse(&api(
        "{zones: [az-a], replicasPerZone: 1}",
        "    ports: [\"8080:80\"]\n",
    ))
    .unwrap();
    assert_eq!(p.hosts().map(|h| h.id.as_str()).collect::<Vec<_>>(), ["api-a1"]);
    let p = Placement::parse(&api("{zones: [az-c]}", "    container_name: mine\n")).unwrap();
    let h = p.hosts().next().unwrap();
    assert_eq!(
        (h.id.as_str(), h.az, h.address),
        ("api", "az-c", Ipv4Addr::new(10, 42, 3, 11))
    );
}

#[test]
fn too_many_hosts_is_refused_not_wrapped() {
    let text = "services:\n  a:\n    image: a\n    x-faultline: {zones: [az-a, az-b, az-c], replicasPerZone: 39}\n  b:\n    image: b\n    x-faultline: {zones: [az-a], replicasPerZone: 1}\n";
    let p = one(text);
    assert_eq!(p.path, "services.b.x-faultline");
    assert!(p.message.contains("too many hosts"), "{p}");
}

#[test]
fn text_that_is_not_yaml_says_where() {
    match Placement::parse("services:\n  api: [\n") {
        Err(Parsed::Yaml(why)) => assert!(why.contains("line"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn problems_display_with_their_file() {
    let e = ComposeError::Invalid {
        file: "c.yaml".into(),
        problems: problems(&api("{zones: [az-d]}", "")),
    };
    assert_eq!(
        e.to_string(),
        "c.yaml cannot be placed in the topology (1 problem):\n  services.api.x-faultline.zones[0]: unknown zone az-d; the topology has az-a, az-b, az-c\n    hint: spread the service over the topology's zones, or fewer of them"
    );
}

fn s(text: &str) -> Value {
    Value::String(text.into())
}
