//! The set-ups of the FIS tests (tests/demo/fis.rs): the examples of experiments/fis/ read,
//! changed and validated or planned; an AWSFIS-Run-* document run by a controller and one
//! agent carrying the FIS tags, on loopback or in a namespace pair; and the demo world
//! started on one of the examples.

use super::netns::Pair;
use super::*;
use serde_json::json;

/// How long a controller is given to reach each line a test waits for, and to exit.
pub(crate) const T: Duration = Duration::from_secs(30);

/// The tags the FIS documentation's examples select by; the demo hosts carry them.
pub(crate) const FIS_TAGS: [&str; 4] = ["--tag", "Environment=Production", "--tag", "Tier=Web"];

/// The repository's root, where experiments/ is.
pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The alarms file of experiments/fis/, which its examples' stop conditions name.
pub(crate) fn fis_alarms() -> PathBuf {
    root().join("experiments/fis/alarms.json")
}

/// The templates of experiments/fis/ (everything but its alarms file).
pub(crate) fn fis_templates() -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(root().join("experiments/fis"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && p.file_name() != Some("alarms.json".as_ref()))
        .collect();
    files.sort();
    files
}

/// The example `name` of experiments/fis/, parsed, for a test to change.
pub(crate) fn fis_example(name: &str) -> Value {
    let path = root().join("experiments/fis").join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// `faultline ARGS`: exit code, stdout, stderr.
pub(crate) fn faultline(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(FAULTLINE).args(args).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `faultline validate` of `file` with the alarms of experiments/fis/.
pub(crate) fn fis_validate(file: &Path) -> (Option<i32>, String, String) {
    let alarms = fis_alarms();
    faultline(&["validate", "--alarms", alarms.to_str().unwrap(), file.to_str().unwrap()])
}

/// `faultline plan` of `file` against experiments/inventory.json, with `extra` flags.
pub(crate) fn plan(file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let inventory = root().join("experiments/inventory.json");
    let mut args = vec!["plan", "--inventory", inventory.to_str().unwrap()];
    args.extend(extra);
    args.push(file.to_str().unwrap());
    faultline(&args)
}

/// [`plan`] with the alarms of experiments/fis/.
pub(crate) fn fis_plan(file: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let alarms = fis_alarms();
    let mut flags = vec!["--alarms", alarms.to_str().unwrap()];
    flags.extend(extra);
    plan(file, &flags)
}

/// An example of experiments/fis/ with its durations and documentParameters changed.
pub(crate) fn example(name: &str, document: Value, duration: Option<&str>) -> Value {
    let mut t = fis_example(name);
    let params = &mut t["actions"]["RunDocument"]["parameters"];
    params["documentParameters"] = json!(document.to_string());
    match duration {
        Some(d) => params["duration"] = json!(d),
        None => {
            params.as_object_mut().unwrap().remove("duration");
        }
    }
    t
}

/// `t` with no stop condition, for runs whose alarms would only add time.
pub(crate) fn without_alarms(mut t: Value) -> Value {
    t["stopConditions"] = json!([{ "source": "none" }]);
    t
}

/// An alarms file defining the examples' stop condition as one that never fires.
pub(crate) fn quiet_alarms(s: &Scratch) -> PathBuf {
    s.write_json(
        "alarms.json",
        &json!({
            "$schema": "alarms.schema.json",
            "WebErrorRateHigh": {
                "metric": { "command": { "run": ["true"] }, "statistic": "exitStatus" },
                "threshold": 0,
                "comparisonOperator": "GreaterThanThreshold",
                "period": "PT1S",
                "evaluationPeriods": 1
            }
        }),
    )
}

/// Writes `t` to `s` and starts `faultline run` of it for one agent, with its stop condition
/// kept and defined by [`quiet_alarms`]; the controller and the port agents dial.
pub(crate) fn run_quietly(s: &Scratch, t: &Value) -> (Proc, u16) {
    let template = s.write_json("t.json", t);
    let alarms = quiet_alarms(s);
    controller(s, &template, 1, &["--alarms", alarms.to_str().unwrap()])
}

/// Writes `t` [`without_alarms`] to `s` and starts `faultline run` of it for one agent; the
/// controller and the port agents dial.
pub(crate) fn run_without_alarms(s: &Scratch, t: Value) -> (Proc, u16) {
    let template = s.write_json("t.json", &without_alarms(t));
    controller(s, &template, 1, &[])
}

/// The agent the examples select: web-a1 in az-a with the FIS tags, dialing `port`.
pub(crate) fn fis_agent(s: &Scratch, port: u16) -> Proc {
    agent(s, port, "web-a1", "az-a", &FIS_TAGS)
}

/// [`fis_agent`] with a proxy fronting 127.0.0.1:`upstream`; the agent and the proxy's port.
pub(crate) fn proxied_agent(s: &Scratch, port: u16, upstream: u16) -> (Proc, u16) {
    let proxy_arg = format!("127.0.0.1:0=127.0.0.1:{upstream}");
    let mut extra = FIS_TAGS.to_vec();
    extra.extend(["--proxy", &proxy_arg]);
    let mut a = agent(s, port, "web-a1", "az-a", &extra);
    let proxy = a.listen_port("proxy ready");
    (a, proxy)
}

/// Waits for the controller to exit within [`T`] and asserts it succeeded (showing what it
/// printed when not); its stdout and stderr.
pub(crate) fn finish_ok(ctl: Proc) -> (String, Vec<String>) {
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "stdout:\n{out}\nstderr:\n{}", lines.join("\n"));
    (out, lines)
}

/// An agent like [`fis_agent`] whose /tmp, where the I/O and disk documents write, is a
/// 64 MiB tmpfs of its own, in a private mount namespace: never the real disk. Its token and
/// state dir are recreated inside; its binary is opened before the mount and run from that
/// descriptor, as a checkout under /tmp (a CI clone) is hidden by it. `None` without root
/// (the test skips, loudly).
pub(crate) fn agent_on_tmpfs(s: &Scratch, port: u16) -> Option<Proc> {
    if !is_root() {
        assert!(!required(), "CI=true: the I/O and disk document tests must run as root");
        eprintln!("SKIPPED: the I/O and disk document tests mount a tmpfs and need root");
        return None;
    }
    let (token, state) = (s.path("token"), s.path("state-web-a1"));
    let script = format!(
        "exec 3<\"$0\" && t=$(cat '{token}') && mount -t tmpfs -o size=64m tmpfs /tmp && \
         mkdir -p '{state}' && printf %s \"$t\" > '{token}' && exec /proc/self/fd/3 \"$@\"",
        token = token.display(),
        state = state.display()
    );
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .arg(agent_bin())
        .args(["--controller", &format!("ws://127.0.0.1:{port}")])
        .arg("--token-file")
        .arg(&token)
        .args(["--host-id", "web-a1", "--az", "az-a", "--lease", "PT3S"])
        .args(FIS_TAGS)
        .arg("--state-dir")
        .arg(&state);
    Some(Proc::spawn("web-a1", cmd))
}

/// The /tmp of an [`agent_on_tmpfs`] (its tmpfs), as seen from outside its mount namespace.
pub(crate) fn agent_tmp(agent: &Proc) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root/tmp", agent.pid()))
}

/// A namespace pair for a document measured with real packets, and a scratch dir; `None`
/// without root (the test skips, loudly). Its service is not started yet: see [`start_service`].
pub(crate) fn pair_world(name: &str) -> Option<(Scratch, Pair)> {
    if !netns::privileged() {
        return None;
    }
    let s = Scratch::new(name);
    Some((s, Pair::new()))
}

/// Starts the service of `pair` and waits until its client reaches it.
pub(crate) fn start_service(pair: &Pair) {
    pair.serve();
    eventually(
        "the service answering before the document",
        Duration::from_secs(10),
        || pair.answers(),
    );
}

/// Writes `t` [`without_alarms`] and runs it in the "srv" namespace of `pair` with the FIS
/// agent there, up to the document running: the controller, and the agent to keep alive.
pub(crate) fn run_in_pair(pair: &Pair, s: &Scratch, t: Value) -> (Proc, Proc) {
    let template = s.write_json("t.json", &without_alarms(t));
    let (mut ctl, port) = pair.controller(s, &template);
    let agent = pair.agent(s, port, &FIS_TAGS);
    ctl.expect("action RunDocument running", T);
    (ctl, agent)
}

/// `faultline demo` of an example of experiments/fis/ with its alarms, seed 5 and a JSON
/// report, once its world is ready; it holds [`one_demo_at_a_time`] until finished.
pub(crate) struct FisDemo {
    /// The demo process, whose stderr the test reads.
    pub(crate) world: Proc,
    lb_port: Option<u16>,
    _scratch: Scratch,
    _one: std::sync::MutexGuard<'static, ()>,
}

impl FisDemo {
    /// Starts the demo of `example` in a scratch dir `name`.
    pub(crate) fn start(name: &str, example: &str) -> FisDemo {
        FisDemo::launch(name, example, false)
    }

    /// [`FisDemo::start`] with its load balancer on a free port (see [`FisDemo::lb_port`]),
    /// for a test that reads its health gauges.
    pub(crate) fn start_with_lb_port(name: &str, example: &str) -> FisDemo {
        FisDemo::launch(name, example, true)
    }

    fn launch(name: &str, example: &str, own_lb_port: bool) -> FisDemo {
        workspace_bin("faultline-agent");
        let one = one_demo_at_a_time();
        let s = Scratch::new(name);
        // Chosen once the demo lock is held, so that no other demo of this binary takes it.
        let lb_port = own_lb_port.then(|| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        });
        let mut cmd = Command::new(FAULTLINE);
        cmd.args(["demo", "--format", "json", "--seed", "5"]);
        if let Some(port) = lb_port {
            cmd.args(["--lb-port", &port.to_string()]);
        }
        cmd.arg("--template")
            .arg(root().join("experiments/fis").join(example))
            .arg("--alarms")
            .arg(fis_alarms())
            .current_dir(&s.0);
        let mut world = Proc::spawn("demo", cmd);
        world.expect("demo world ready", Duration::from_secs(90));
        FisDemo {
            world,
            lb_port,
            _scratch: s,
            _one: one,
        }
    }

    /// The load balancer's port of a demo started [`FisDemo::start_with_lb_port`].
    pub(crate) fn lb_port(&self) -> u16 {
        self.lb_port.expect("a demo started with start_with_lb_port")
    }

    /// Waits up to `timeout` for the demo to exit and asserts it succeeded; its JSON report.
    pub(crate) fn finish(self, timeout: Duration) -> Value {
        let (status, out, lines) = self.world.finish(timeout);
        let r = report(&out, &lines);
        assert_eq!(status.code(), Some(0), "{r}\n{}", lines.join("\n"));
        r
    }
}
