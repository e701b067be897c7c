//! `faultline serve`: a long-running controller. Agents connect to its fleet, experiments
//! are started through the HTTP API ([`api`]) or by schedules ([`scheduler`]), and every run
//! is kept in the database ([`store`]) with its journal, report and JUnit. The safety lever
//! stops what runs and cancels what would start.

pub mod api;
pub mod config;
pub mod dashboard;
pub mod metrics;
pub mod policy;
pub mod port;
pub mod scheduler;
pub mod store;

use crate::controller::{Controller, RunOptions};
use crate::diagnostic::Diagnostic;
use crate::fleet::Endpoint;
use crate::plan;
use crate::report::junit;
use crate::run::StopRequest;
use crate::template;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use store::{NewExperiment, Store, StoreError};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

/// How often a replica says it is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica silent this long is dead: another marks its runs failed.
pub const REPLICA_LEASE: Duration = Duration::from_secs(10);
/// The reason given to runs whose controller went away.
pub const CONTROLLER_LOST: &str = "controller lost: the server running it stopped before the run ended";
/// The reason given to runs asked for while the server shuts down.
pub const SHUTTING_DOWN: &str = "server shutting down";
/// How long open HTTP connections (a dashboard's live stream, a slow client) may delay the
/// exit once the runs have drained.
const HTTP_GRACE: Duration = Duration::from_secs(5);

/// Why the service refused or could not do something.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The template is not valid.
    #[error("the template is not valid")]
    Invalid(Vec<Diagnostic>),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The template would make the server run a command or fetch an address its flags do
    /// not permit ([`policy::Policy`]); each reason names the flag that would.
    #[error("{}", .0.join("; "))]
    Refused(Vec<String>),
}

/// Which template to run.
#[derive(Debug, Clone)]
pub enum TemplateRef {
    /// A stored template, its latest version or a given one.
    Stored {
        name: String,
        /// Its version; the latest when `None`.
        version: Option<i64>,
    },
    /// A template given with the request.
    Inline(Value),
}

/// What a start request became.
#[derive(Debug, Clone, PartialEq)]
pub enum Started {
    /// It runs.
    Running {
        /// The experiment.
        id: String,
    },
    /// It was recorded but did not run (`cancelled` by the lever, `failed` to resolve).
    Refused {
        /// The experiment.
        id: String,
        /// Its final state.
        state: &'static str,
        /// Why.
        reason: String,
    },
    /// A scheduled run that would overlap a running one on the same hosts.
    Overlaps {
        /// Which run and hosts.
        reason: String,
    },
}

struct Running {
    hosts: BTreeSet<String>,
    stop: mpsc::Sender<StopRequest>,
    /// When a stop was asked, for the reaction time.
    stopping: Option<Instant>,
}

/// The state shared by the API, the scheduler and the runs.
pub struct Service {
    /// The database.
    pub store: Store,
    /// The agents' controller.
    pub controller: Arc<Controller>,
    /// This process's replica id.
    pub replica: String,
    /// When this process started, ms: fire times before it were missed.
    pub up_since: i64,
    journals: PathBuf,
    running: Mutex<HashMap<String, Running>>,
    /// How many runs are in progress.
    count: watch::Sender<usize>,
    /// Prometheus metrics kept in memory.
    pub metrics: metrics::Metrics,
    /// What templates may make the server run or fetch.
    pub policy: policy::Policy,
    /// Every host that connected since the start, for the map's `disconnected` hosts.
    seen: Mutex<BTreeMap<String, faultline_agent::protocol::HostDescription>>,
    /// Cancelled when the server begins to shut down: no new run starts, the scheduler and
    /// the dashboard's live streams end.
    pub shutdown: CancellationToken,
}

impl Service {
    /// A service over `store`, its runs on `controller`, journals under `journals`, its
    /// templates held to `policy`.
    pub fn new(store: Store, controller: Arc<Controller>, journals: PathBuf, policy: policy::Policy) -> Arc<Service> {
        Arc::new(Service {
            store,
            controller,
            replica: crate::token::random_id("replica-"),
            up_since: store::now_ms(),
            journals,
            running: Mutex::new(HashMap::new()),
            count: watch::Sender::new(0),
            metrics: metrics::Metrics::default(),
            policy,
            seen: Mutex::new(BTreeMap::new()),
            shutdown: CancellationToken::new(),
        })
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<String, Running>> {
        self.running.lock().expect("never poisoned")
    }

    /// Starts an experiment, or records why it did not start.
    pub async fn start(
        self: &Arc<Self>,
        template: TemplateRef,
        by: &str,
        schedule: Option<&str>,
        seed: Option<u64>,
    ) -> Result<Started, ServiceError> {
        let (body, stored) = match template {
            TemplateRef::Inline(v) => (v, None),
            TemplateRef::Stored { name, version } => {
                let t = self
                    .store
                    .template(&name, version)
                    .await?
                    .ok_or_else(|| ServiceError::NotFound(format!("no template named {name:?}")))?;
                (t.body, Some((name, t.version)))
            }
        };
        let experiment = self.admissible(&body).await?;
        let id = crate::token::random_id("EXP");
        let journal = self.journals.join(format!("{id}.jsonl"));
        let journal_path = journal.to_string_lossy().into_owned();
        let template_ref = stored.as_ref().map(|(n, v)| (n.as_str(), *v));
        let record = |state, reason: Option<String>, seed, hosts| NewExperiment {
            id: &id,
            template_ref,
            template: &body,
            schedule,
            state,
            reason,
            seed,
            hosts,
            journal_path: &journal_path,
            replica: &self.replica,
            created_by: by,
        };

        let refusal = if self.shutdown.is_cancelled() {
            Some(SHUTTING_DOWN.to_string())
        } else {
            self.store.lever().await?.filter(|l| l.engaged).map(|lever| {
                format!(
                    "the safety lever is engaged ({}, by {})",
                    lever.reason, lever.changed_by
                )
            })
        };
        if let Some(reason) = refusal {
            self.store
                .insert_experiment(record("cancelled", Some(reason.clone()), None, Vec::new()))
                .await?;
            return Ok(Started::Refused {
                id,
                state: "cancelled",
                reason,
            });
        }

        // The run resolves its targets with this seed again, on the same hosts, to the same ones.
        let seed = seed.unwrap_or_else(rand::random);
        let fleet = self.controller.hosts().await;
        let hosts: BTreeSet<String> = match plan::resolve(&experiment, &fleet, seed) {
            Ok(r) => held_hosts(r.targets.values().flat_map(|t| t.selected.iter()), &fleet),
            Err(e) => {
                let reason = e.to_string();
                self.store
                    .insert_experiment(record("failed", Some(reason.clone()), Some(seed), Vec::new()))
                    .await?;
                return Ok(Started::Refused {
                    id,
                    state: "failed",
                    reason,
                });
            }
        };
        let (stop_tx, stop_rx) = mpsc::channel(4);
        let overlap = {
            let mut running = self.running();
            match running.iter().find(|(_, r)| !r.hosts.is_disjoint(&hosts)) {
                Some((other, r)) => {
                    let shared: Vec<&str> = r.hosts.intersection(&hosts).map(String::as_str).collect();
                    Some(format!("{other} is running on {}", shared.join(", ")))
                }
                None => {
                    running.insert(
                        id.clone(),
                        Running {
                            hosts: hosts.clone(),
                            stop: stop_tx,
                            stopping: None,
                        },
                    );
                    self.count.send_replace(running.len());
                    None
                }
            }
        };
        // A run never overlaps another on the same hosts: a schedule records the fire time
        // as skipped; any other start is recorded as cancelled.
        if let Some(reason) = overlap {
            if schedule.is_some() {
                return Ok(Started::Overlaps { reason });
            }
            let reason = format!("not started: {reason}");
            self.store
                .insert_experiment(record("cancelled", Some(reason.clone()), Some(seed), Vec::new()))
                .await?;
            return Ok(Started::Refused {
                id,
                state: "cancelled",
                reason,
            });
        }
        let inserted = self
            .store
            .insert_experiment(record("running", None, Some(seed), hosts.into_iter().collect()))
            .await;
        if let Err(e) = inserted {
            self.forget(&id);
            return Err(e.into());
        }
        let label = match &stored {
            Some((n, v)) => PathBuf::from(format!("{n}@v{v}")),
            None => PathBuf::from("inline"),
        };
        let mut opts = RunOptions::new(&label);
        opts.id = Some(id.clone());
        opts.seed = Some(seed);
        opts.journal = Some(journal);
        opts.progress = false;
        tracing::info!(experiment = %id, template = %label.display(), by, "experiment started");
        let this = self.clone();
        let run_id = id.clone();
        tokio::spawn(async move {
            let result = this.controller.run(experiment, opts, stop_rx).await;
            if let Err(e) = this.finished(&run_id, result).await {
                tracing::error!(experiment = %run_id, error = %e, "cannot store the end of the run");
            }
            this.forget(&run_id);
        });
        // The server may have begun to shut down, or the lever been engaged, since they were
        // read above, before this run could be found among the running ones.
        if self.shutdown.is_cancelled() {
            self.stop(&id, format!("stopped: {SHUTTING_DOWN}")).await;
        } else if let Some(l) = self.store.lever().await?.filter(|l| l.engaged) {
            self.stop(
                &id,
                format!("stopped by the safety lever ({}, by {})", l.reason, l.changed_by),
            )
            .await;
        }
        Ok(Started::Running { id })
    }

    /// The template validated and held to the policy: every template reaches the server
    /// through the API (stored ones too, before they run), so it runs no command and fetches
    /// no address that the server's flags do not allow.
    pub async fn admissible(&self, body: &Value) -> Result<crate::template::Experiment, ServiceError> {
        let experiment = template::validate(body, None).map_err(ServiceError::Invalid)?;
        let fleet = self.controller.hosts().await;
        let refused = self.policy.refusals(&experiment, &fleet);
        if refused.is_empty() {
            Ok(experiment)
        } else {
            Err(ServiceError::Refused(refused))
        }
    }

    fn forget(&self, id: &str) {
        let mut running = self.running();
        running.remove(id);
        self.count.send_replace(running.len());
    }

    /// Stores a run's end: state, report, JUnit, journal.
    async fn finished(
        &self,
        id: &str,
        result: Result<crate::report::Report, crate::controller::RunError>,
    ) -> Result<(), StoreError> {
        let stopping = self.running().get(id).and_then(|r| r.stopping);
        let row = self.store.experiment(id).await?;
        let lines = row
            .as_ref()
            .map(|r| read_journal(Path::new(&r.journal_path)))
            .unwrap_or_default();
        let (state, reason, report, xml) = match &result {
            Ok(r) => (
                r.state.as_str(),
                r.reason.clone(),
                serde_json::to_value(r).ok(),
                junit::render(r),
            ),
            Err(e) => (
                "failed",
                Some(e.message.clone()),
                None,
                junit::render_error(Path::new(id), &e.message),
            ),
        };
        self.store
            .finish_experiment(id, state, reason.as_deref(), report.as_ref(), &xml, &lines)
            .await?;
        if let Some(asked) = stopping {
            self.metrics.stop_reaction(asked.elapsed());
        }
        tracing::info!(experiment = %id, state, reason = reason.as_deref().unwrap_or(""), "experiment ended");
        if let Some(row) = row {
            // The database holds it now.
            let _ = std::fs::remove_file(&row.journal_path);
        }
        Ok(())
    }

    /// Asks a running experiment to stop; false when it is not running here.
    pub async fn stop(&self, id: &str, why: String) -> bool {
        let tx = {
            let mut running = self.running();
            let Some(r) = running.get_mut(id) else { return false };
            if r.stopping.is_some() {
                // The first reason stands; the run is already stopping.
                return true;
            }
            r.stopping = Some(Instant::now());
            r.stop.clone()
        };
        tracing::info!(experiment = %id, "stopping");
        if let Err(e) = self.store.stopping(id).await {
            tracing::warn!(experiment = %id, error = %e, "cannot record the stopping state");
        }
        let _ = tx.send(StopRequest::Requested { why }).await;
        true
    }

    /// Asks every running experiment to stop.
    pub async fn stop_all(&self, why: &str) {
        let ids: Vec<String> = self.running().keys().cloned().collect();
        for id in ids {
            self.stop(&id, why.to_string()).await;
        }
    }

    /// The hosts known now (connected, or stopped or terminated by their platform, with
    /// their state), and every host seen since the start.
    pub async fn hosts(
        &self,
    ) -> (
        Vec<faultline_agent::protocol::HostDescription>,
        Vec<faultline_agent::protocol::HostDescription>,
    ) {
        let connected = self.controller.hosts().await;
        let mut seen = self.seen.lock().expect("never poisoned");
        for h in &connected {
            seen.insert(h.host_id.clone(), h.clone());
        }
        (connected, seen.values().cloned().collect())
    }

    /// The journal so far of an experiment running here.
    pub fn running_journal(&self, id: &str) -> Vec<String> {
        read_journal(&self.journals.join(format!("{id}.jsonl")))
    }

    /// Ids of the experiments running here.
    pub fn running_ids(&self) -> Vec<String> {
        self.running().keys().cloned().collect()
    }

    /// Waits until the experiment `id` running here has ended and is stored, or until
    /// `deadline`; false at once when it is not running here.
    pub async fn until_ended(&self, id: &str, deadline: tokio::time::Instant) -> bool {
        // Every run's end changes the count; subscribed before the first look, none is missed.
        let mut count = self.count.subscribe();
        if !self.running().contains_key(id) {
            return false;
        }
        let ended = async {
            while self.running().contains_key(id) {
                if count.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline, ended).await;
        true
    }

    /// Waits until no run is in progress.
    pub async fn idle(&self) {
        let mut rx = self.count.subscribe();
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Engages or disengages the lever; engaging stops every running experiment.
    pub async fn set_lever(&self, engaged: bool, reason: &str, by: &str) -> Result<store::LeverChange, StoreError> {
        let change = self.store.set_lever(engaged, reason, by).await?;
        tracing::warn!(engaged, reason, by, "safety lever changed");
        if engaged {
            self.stop_all(&format!("stopped by the safety lever ({reason}, by {by})"))
                .await;
        }
        Ok(change)
    }

    /// Starts a schedule's run (its template's latest version).
    pub async fn start_scheduled(self: &Arc<Self>, spec: &scheduler::Spec) -> Result<Started, ServiceError> {
        let template = TemplateRef::Stored {
            name: spec.template.clone(),
            version: None,
        };
        self.start(template, &format!("schedule:{}", spec.name), Some(&spec.name), None)
            .await
    }

    /// The journal lines of an experiment: from its file while it runs, else from the database.
    pub async fn journal(&self, row: &store::ExperimentRow) -> Result<Vec<String>, StoreError> {
        let stored = self.store.journal(&row.id).await?;
        if stored.is_empty() {
            return Ok(read_journal(Path::new(&row.journal_path)));
        }
        Ok(stored)
    }

    /// Faults in effect now, by host: applied by a running experiment's journal and not
    /// yet removed or ended.
    pub async fn active_faults(&self) -> BTreeMap<String, usize> {
        let mut by_host = BTreeMap::new();
        for id in self.running_ids() {
            let path = self.journals.join(format!("{id}.jsonl"));
            let mut active: BTreeMap<String, String> = BTreeMap::new();
            for line in read_journal(&path) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let fault = v["fault_id"].as_str().unwrap_or_default().to_string();
                match v["event"].as_str() {
                    Some("ack") if v["outcome"]["status"] == "applied" => {
                        active.insert(fault, v["host"].as_str().unwrap_or_default().to_string());
                    }
                    Some("removal") | Some("fault_ended") => {
                        active.remove(&fault);
                    }
                    _ => {}
                }
            }
            for host in active.into_values() {
                *by_host.entry(host).or_insert(0) += 1;
            }
        }
        by_host
    }

    /// Marks failed the runs whose controller is gone: with SQLite every unfinished run of
    /// another process (only one process serves a SQLite file); with PostgreSQL those of
    /// replicas whose heartbeat is older than [`REPLICA_LEASE`]. Their journal files are
    /// kept in the database.
    pub async fn reap(&self) -> Result<Vec<String>, StoreError> {
        let live: BTreeSet<String> = if self.store.sqlite {
            BTreeSet::from([self.replica.clone()])
        } else {
            let since = store::now_ms() - REPLICA_LEASE.as_millis() as i64;
            let mut l: BTreeSet<String> = self.store.live_replicas(since).await?.into_iter().collect();
            l.insert(self.replica.clone());
            l
        };
        let mut reaped = Vec::new();
        for row in self.store.unfinished().await? {
            if live.contains(&row.replica) {
                continue;
            }
            let lines = read_journal(Path::new(&row.journal_path));
            let xml = junit::render_error(Path::new(&row.id), CONTROLLER_LOST);
            self.store
                .finish_experiment(&row.id, "failed", Some(CONTROLLER_LOST), None, &xml, &lines)
                .await?;
            let _ = std::fs::remove_file(&row.journal_path);
            tracing::warn!(experiment = %row.id, replica = %row.replica, "marked failed: its controller is gone");
            reaped.push(row.id);
        }
        Ok(reaped)
    }
}

/// The hosts a run holds: the hosts its targets selected, and every host of the AZs they
/// selected.
fn held_hosts<'a>(
    selected: impl Iterator<Item = &'a String>,
    fleet: &[faultline_agent::protocol::HostDescription],
) -> BTreeSet<String> {
    let mut held = BTreeSet::new();
    for sel in selected {
        let in_az: Vec<&String> = fleet
            .iter()
            .filter(|h| h.placement.availability_zone == *sel)
            .map(|h| &h.host_id)
            .collect();
        if in_az.is_empty() {
            held.insert(sel.clone());
        } else {
            held.extend(in_az.into_iter().cloned());
        }
    }
    held
}

/// The lines of a journal file (none when it is gone).
fn read_journal(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect())
        .unwrap_or_default()
}

/// How `faultline serve` is set up.
pub struct Config {
    /// The one port: agents' websocket, API, `/metrics`, `/healthz`, dashboard.
    pub listen: std::net::SocketAddr,
    /// An extra address for agents only, if any.
    pub agents_listen: Option<std::net::SocketAddr>,
    /// `sqlite:FILE` or `postgres://…`.
    pub database: String,
    /// The agents' token.
    pub token: String,
    /// TLS for the port (and the agents' extra address), if any: then they speak TLS only,
    /// but to the agents of `plaintext_agents`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// With `tls`, the networks whose agents may still dial plain `ws://` (empty: any).
    pub plaintext_agents: Option<Vec<ipnet::IpNet>>,
    /// What templates that arrive over the API may make the server run or fetch.
    pub policy: policy::Policy,
    /// Connection cap, per-address share and header timeout of the port.
    pub limits: port::Limits,
    /// The API's tokens.
    pub api_tokens: api::Tokens,
    /// Where running experiments' journals are written until the database holds them.
    pub journals: PathBuf,
    /// How long a shutdown waits for running experiments to remove their faults.
    pub drain: Duration,
    /// What instance actions act through (with `--demo`, the demo world's processes).
    pub platforms: crate::platform::Platforms,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The API's listener.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Signals.
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
}

/// Serves until SIGTERM, SIGINT, SIGHUP or SIGQUIT; then stops every running experiment (each removes its
/// faults) and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    let mut signals = crate::signals::EndingSignals::install().map_err(ServeError::Signals)?;
    let store = Store::open(&config.database).await?;
    let listen_error = |source| ServeError::Listen {
        addr: config.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let endpoint = Endpoint {
        tls: config.tls.clone(),
        ..Endpoint::default()
    };
    let mut controller = Controller::attached(addr, config.token, endpoint);
    controller.set_platforms(config.platforms);
    let controller = Arc::new(controller);
    // The extra address is served as the port is (the same TLS rule, the same limits), with
    // the agents' route only.
    let extra = match config.agents_listen {
        Some(extra) => {
            let error = |source| ServeError::Listen { addr: extra, source };
            let l = tokio::net::TcpListener::bind(extra).await.map_err(error)?;
            let bound = l.local_addr().map_err(error)?;
            tracing::info!(agents = %bound, "agents may also dial this extra address");
            Some(l)
        }
        None => None,
    };
    let service = Service::new(store, controller.clone(), config.journals, config.policy);
    service.store.heartbeat(&service.replica).await?;
    for id in service.reap().await? {
        tracing::info!(experiment = %id, "an interrupted run was marked failed");
    }
    let secure = config.tls.is_some();
    let beyond = std::iter::once(addr.ip())
        .chain(extra.as_ref().and_then(|l| l.local_addr().ok()).map(|a| a.ip()))
        .find(|ip| !ip.is_loopback());
    if let (false, Some(ip)) = (secure, beyond) {
        tracing::warn!(
            listen = %ip,
            "listening beyond loopback without TLS: API tokens and the agents' traffic cross the network in the clear; give --tls-cert and --tls-key"
        );
    }
    let transport = port::Transport {
        tls: config.tls,
        plaintext_agents: config.plaintext_agents,
    };
    let cancel = service.shutdown.clone();
    let http_cancel = CancellationToken::new();
    if let Some(extra) = extra {
        let agents_only = axum::Router::new()
            .route(faultline_agent::protocol::AGENT_PATH, axum::routing::get(port::agents))
            .with_state(service.clone());
        let serving = port::serve(
            extra,
            transport.clone(),
            config.limits,
            agents_only,
            http_cancel.clone(),
        );
        tokio::spawn(serving);
    }
    let app = api::router(service.clone(), config.api_tokens);
    let http = tokio::spawn(port::serve(
        listener,
        transport,
        config.limits,
        app,
        http_cancel.clone(),
    ));
    tokio::spawn(housekeeping(service.clone(), cancel.clone()));
    let scheduler = tokio::spawn(scheduler::run(service.clone(), cancel.clone()));
    let path = faultline_agent::protocol::AGENT_PATH;
    let (web, ws) = if secure { ("https", "wss") } else { ("http", "ws") };
    tracing::info!(
        listen = %addr,
        replica = %service.replica,
        "serving the API and the dashboard at {web}://{addr}/, agents dial {ws}://{addr}{path}"
    );

    let signal = match signals.next().await {
        Some(_) => signals.last(),
        None => "the end of its signals",
    };
    let running = service.running_ids().len();
    tracing::info!(signal, running, "shutting down: stopping running experiments");
    cancel.cancel();
    let _ = scheduler.await;
    service
        .stop_all(&format!("stopped: the server received {signal} and shut down"))
        .await;
    if tokio::time::timeout(config.drain, service.idle()).await.is_err() {
        tracing::warn!(
            "runs did not end within {}; the agents' leases remove what is left",
            crate::duration::human(config.drain)
        );
    }
    http_cancel.cancel();
    // The live streams end on `cancel`; a connection that still hangs on is not waited for.
    let abort = http.abort_handle();
    if tokio::time::timeout(HTTP_GRACE, http).await.is_err() {
        tracing::warn!("open HTTP connections did not close; closing them");
        abort.abort();
    }
    controller.shutdown();
    tracing::info!("stopped");
    Ok(())
}

/// Heartbeats, stops the runs here when the lever was engaged elsewhere, and marks failed the
/// runs of replicas that stopped heartbeating.
async fn housekeeping(service: Arc<Service>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = service.store.heartbeat(&service.replica).await {
            tracing::warn!(error = %e, "cannot record this replica's heartbeat");
        }
        // The lever may have been engaged through another replica: what runs here stops too.
        if !service.running_ids().is_empty() {
            match service.store.lever().await {
                Ok(Some(l)) if l.engaged => {
                    let why = format!("stopped by the safety lever ({}, by {})", l.reason, l.changed_by);
                    service.stop_all(&why).await;
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot read the safety lever"),
            }
        }
        if !service.store.sqlite {
            if let Err(e) = service.reap().await {
                tracing::warn!(error = %e, "cannot check for runs of dead replicas");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_az_target_holds_every_host_in_it() {
        let host = |id: &str, az: &str| {
            serde_json::from_value::<faultline_agent::protocol::HostDescription>(serde_json::json!({
                "HostId": id, "Placement": { "AvailabilityZone": az }
            }))
            .unwrap()
        };
        let fleet = [host("web-a1", "az-a"), host("web-a2", "az-a"), host("web-b1", "az-b")];
        let selected = ["az-a".to_string(), "web-b1".to_string()];
        let held: Vec<String> = held_hosts(selected.iter(), &fleet).into_iter().collect();
        assert_eq!(held, ["web-a1", "web-a2", "web-b1"]);
    }

    #[tokio::test]
    async fn a_run_asked_for_during_the_shutdown_is_recorded_cancelled() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let controller = Controller::start("127.0.0.1:0".parse().unwrap(), "t".into(), Default::default())
            .await
            .unwrap();
        let svc = Service::new(
            store,
            Arc::new(controller),
            std::env::temp_dir().join("faultline-unit-journals"),
            policy::Policy::default(),
        );
        svc.shutdown.cancel();
        let template = serde_json::json!({
            "description": "only wait",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT1S" } } },
            "stopConditions": [{ "source": "none" }]
        });
        let started = svc
            .start(TemplateRef::Inline(template), "test", None, None)
            .await
            .unwrap();
        let Started::Refused { id, state, reason } = started else {
            panic!("started during the shutdown: {started:?}");
        };
        assert_eq!((state, reason.as_str()), ("cancelled", SHUTTING_DOWN));
        let row = svc.store.experiment(&id).await.unwrap().unwrap();
        assert_eq!(row.state, "cancelled");
        assert!(svc.running_ids().is_empty());
    }
}
