//! The faults an agent injects, and the table of those in effect.
//!
//! Each fault is one file here holding its wire parameters (`Params`, with their ranges and
//! [`WireParams`]), its [`Kind`] (its check against the host's own state, capability
//! detection, the undo data recorded before the effect, apply, what to recover after a
//! crash, and any holder process) and its [`Fault`]s (a fault in effect: remove, observed
//! effect). The `faults!` list below names each one on one line. The table below is generic:
//! record → apply → deadline → remove, leases, recovery and retries, for any kind.
//!
//! Every fault with a duration is recorded in the state directory before it takes effect
//! and forgotten only once it is removed. Removal is the same code whatever asks for it:
//! the controller, the end of the duration, a lapsed lease, or shutdown.

use crate::holder::{Deadline, Holding};
use crate::limits::{self, OutOfRange};
use crate::protocol::{FaultSpec, HeldFault, Observed, Outcome};
use crate::proxy::Conditions;
use crate::state::{self, Record, StateDir};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Declares every fault from its one line `/// action id` `Variant => module,`: the module,
/// its [`FaultKind`] variant (whose wire parameters are the module's `Params`), the kind's
/// place in [`CAPABILITIES`] and in the registry (the module's `Kind` is the type named like
/// the variant), and `for_each_fault!`, through which the controller declares the native
/// action of each fault from the same line. So none of them can be forgotten.
macro_rules! faults {
    ($($(#[$doc:meta])* $variant:ident => $module:ident,)*) => {
        $(pub mod $module;)*

        /// A fault to inject, with its parameters. On the wire it is one JSON object tagged
        /// by `kind` (the variant's snake_case name) with the parameters beside the tag, e.g.
        /// `{"kind":"cpu","load_percent":80,"workers":0}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
        pub enum FaultKind {
            $($(#[$doc])* $variant($module::Params),)*
        }

        $(impl From<$module::Params> for FaultKind {
            fn from(params: $module::Params) -> FaultKind {
                FaultKind::$variant(params)
            }
        })*

        impl FaultKind {
            /// The capability (and `--allow` name) this fault needs.
            pub fn capability(&self) -> &'static str {
                match self {
                    $(FaultKind::$variant(_) => <$module::Params as WireParams>::CAPABILITY,)*
                }
            }

            /// Whether it is done once applied (a kill): it has no duration, and nothing is
            /// recorded or held.
            pub fn instant(&self) -> bool {
                match self {
                    $(FaultKind::$variant(_) => <$module::Params as WireParams>::INSTANT,)*
                }
            }

            /// Checks its parameters against the ranges of its own file.
            pub fn check(&self) -> Result<(), OutOfRange> {
                match self {
                    $(FaultKind::$variant(params) => params.check(),)*
                }
            }
        }

        /// Capabilities an agent can have, also the names accepted by `--allow`, in the
        /// order of the fault list.
        pub const CAPABILITIES: [&str; [$(stringify!($module)),*].len()] =
            [$(<$module::Params as WireParams>::CAPABILITY,)*];

        /// Every fault kind this agent knows, with its capability, in the `--allow` order.
        fn registry() -> Vec<(&'static str, Box<dyn Kind>)> {
            vec![$((<$module::Params as WireParams>::CAPABILITY, Box::new($module::$variant::default()) as Box<dyn Kind>),)*]
        }

        /// Calls `$callback! { {EXTRA} LINE... }` with `EXTRA` as given and each line of the
        /// fault list (`/// action id` `Variant => module,`): the controller declares the
        /// native action of each fault from it (`src/actions/mod.rs`).
        #[macro_export]
        macro_rules! for_each_fault {
            ($callback:ident! $extra:tt) => {
                $callback! { $extra $($(#[$doc])* $variant => $module,)* }
            };
        }
    };
}

// Every fault, one line each: the id of its native action, its `FaultKind` variant and its
// module. The order is the `--allow` order and the native actions' order in the catalog.
faults! {
    /// `faultline:process:kill`
    Kill => kill,
    /// `faultline:process:pause`
    Pause => pause,
    /// `faultline:host:cpu-stress`
    Cpu => cpu,
    /// `faultline:host:memory-stress`
    Memory => memory,
    /// `faultline:host:io-stress`
    IoStress => io_stress,
    /// `faultline:host:disk-fill`
    DiskFill => disk_fill,
    /// `faultline:network:latency`
    Latency => latency,
    /// `faultline:az:blackout`
    Blackout => blackout,
    /// `faultline:network:blackhole-port`
    BlackholePort => blackhole_port,
    /// `faultline:network:packet-loss`
    PacketLoss => packet_loss,
}

pub mod nft;

/// The wire parameters of one fault kind (its file's `Params`): what it needs, and the
/// ranges the controller's validator and the agent both check it against.
pub trait WireParams {
    /// The capability (and `--allow` name) a fault of this kind needs.
    const CAPABILITY: &'static str;
    /// Whether it is done once applied (a kill): it has no duration.
    const INSTANT: bool = false;
    /// Checks every parameter against its range (the consts of the fault's file).
    fn check(&self) -> Result<(), OutOfRange>;
}

/// A kind of fault: what the table asks of each, whatever it is.
pub trait Kind: std::fmt::Debug + Send {
    /// Whether it can work here, with what this agent was given; may set up how it works
    /// (e.g. nf_tables or the proxy). Called once, at start, for the allowed kinds.
    fn detect(&mut self, _setup: &Setup) -> Detection {
        Detection::Ready
    }

    /// Checks what its parameters' ranges cannot (the host's own state), and returns what
    /// its removal will need after a crash; recorded before [`Kind::apply`] runs.
    fn prepare(&self, _apply: &Apply<'_>, _env: &Env<'_>) -> Result<serde_json::Value, FaultError> {
        Ok(serde_json::Value::Null)
    }

    /// Takes effect. On an error nothing of it may remain in effect.
    fn apply(&self, apply: &Apply<'_>, undo: &serde_json::Value, env: &Env<'_>) -> Result<Started, FaultError>;

    /// A fault a previous life of this agent recorded with `undo`, to be removed now.
    fn restore(&self, _fault_id: &str, _undo: serde_json::Value, _env: &Env<'_>) -> Box<dyn Fault> {
        Box::new(Gone)
    }

    /// Leftovers of a previous life that no readable record names: `records` are those
    /// read, `unreadable` the state files that could not be; a leftover may claim one.
    fn sweep(&self, _records: &[Record], _unreadable: &[PathBuf], _env: &Env<'_>) -> Vec<Leftover> {
        Vec::new()
    }

    /// The work of its holder process (`faultline-holder hold KIND`), for kinds that have one.
    fn hold(&self, _params: &serde_json::Value, _holding: &Holding) -> std::io::Result<()> {
        Err(std::io::Error::other("this fault kind has no holder process"))
    }
}

/// A fault in effect.
pub trait Fault: std::fmt::Debug + Send {
    /// Takes the effect away. Idempotent: what is already gone is success. An error keeps
    /// the fault and its record for a retry.
    fn remove(&mut self, env: &Env<'_>) -> Result<(), FaultError>;

    /// What it measurably does to the host now (or did, once removed).
    fn observed(&mut self) -> Observed {
        Observed::default()
    }

    /// Once the apply's answer is on the wire ([`Answer::ThenAct`]): the rest of the
    /// effect. Returns a shorter time left, if it must end sooner than its deadline.
    fn after_answer(&mut self, _env: &Env<'_>, _left: Duration) -> Result<Option<Duration>, FaultError> {
        Ok(None)
    }

    /// Whether it cuts this host off from its controller right now (leases then pause).
    fn cuts_control_plane(&self) -> bool {
        false
    }

    /// The nf_tables table whose life element ([`nft::refresh`]) the living agent renews
    /// while the fault's owner holds its lease: its dead-man switch, when it has one.
    fn dead_man(&self) -> Option<&str> {
        None
    }

    /// Memory it has asked for that is not resident yet (so not free for another).
    fn memory_pending(&self) -> u64 {
        0
    }
}

/// A fault whose effect is gone (it died with a previous life of the agent): only its
/// record remains.
#[derive(Debug)]
pub struct Gone;

impl Fault for Gone {
    fn remove(&mut self, _env: &Env<'_>) -> Result<(), FaultError> {
        Ok(())
    }
}

/// What the agent was started with, for [`Kind::detect`].
#[derive(Debug, Clone)]
pub struct Setup {
    /// Whether a proxy fronts the host's service (`--proxy`).
    pub has_proxy: bool,
    /// The ports its proxies listen on (those `--proxy` names; not an ephemeral port 0).
    pub proxy_ports: Vec<u16>,
    /// `--blackout-backend`.
    pub blackout_backend: blackout::Backend,
}

/// What [`Kind::detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// It works here.
    Ready,
    /// It works here, with a limitation worth a note.
    Limited(String),
    /// It cannot work here, and why.
    Unavailable(String),
    /// It was required to work in a way it cannot: the agent must not start.
    Fatal(String),
}

/// What the table gives every fault: the agent's state dir, limits and proxy conditions.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// The state directory (for markers beyond the fault's record).
    pub state: &'a StateDir,
    /// The agent's own limits.
    pub config: &'a Config,
    /// Conditions the proxies enforce.
    pub conditions: &'a Arc<Conditions>,
}

/// One apply, as a kind sees it.
#[derive(Debug)]
pub struct Apply<'a> {
    /// The command.
    pub spec: &'a FaultSpec,
    /// How long it lasts (zero for an instant fault).
    pub duration: Duration,
    /// Its deadline on the monotonic clock holders share.
    pub until: Deadline,
    /// How long a kernel object of it may live unless the agent renews it: the dead-man
    /// switch's life ([`Config::dead_man`]), never past the deadline.
    pub kernel_life: Duration,
    /// A short stable hash of its id (names holders, files and tables).
    pub hash: String,
    /// The controller's address, when known.
    pub controller: Option<IpAddr>,
    /// Memory other faults have asked for and is not resident yet.
    pub memory_pending: u64,
}

/// A fault that took effect, and how to answer the apply.
#[derive(Debug)]
pub struct Started {
    /// The fault in effect (for an instant fault, dropped at once).
    pub fault: Box<dyn Fault>,
    pub answer: Answer,
}

/// How an apply is answered.
#[derive(Debug)]
pub enum Answer {
    /// Now, with this detail and the pids it signalled.
    Now(String, Vec<u32>),
    /// When this resolves (memory becomes resident).
    Later(oneshot::Receiver<Outcome>),
    /// Now, and once the answer is on the wire, [`Faults::after_answer`] does the rest
    /// (a blackout's cut of the control plane would swallow the answer).
    ThenAct(String),
}

/// A leftover of a previous life, found by [`Kind::sweep`].
#[derive(Debug)]
pub struct Leftover {
    /// An id for it in the table (not a controller's fault id).
    pub id: String,
    /// Its removal.
    pub fault: Box<dyn Fault>,
    /// An unreadable state file it claims, deleted once it is removed.
    pub file: Option<PathBuf>,
}

/// What this agent can do here, after its allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Capability names, as registered.
    pub kinds: BTreeSet<&'static str>,
}

/// The agent's own limits on what it is asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// The longest fault accepted (`--max-duration`).
    pub max_duration: Duration,
    /// The longest the control plane stays cut (`--max-cut`); then the blackout ends.
    pub max_cut: Duration,
    /// Which processes a kill or pause may signal.
    pub kill: kill::Policy,
    /// The lease (`--lease`): a controller silent this long loses its faults.
    pub lease: Duration,
}

impl Config {
    /// How long a kernel object lives unless the living agent renews it: one and a half
    /// leases, so an effect outlives a dead (or frozen) agent by less than two leases.
    pub fn dead_man(&self) -> Duration {
        self.lease * 3 / 2
    }

    /// How often the living agent renews its kernel objects: four times a lease, so a
    /// renewal late by a whole lease still comes before the object lapses.
    pub fn refresh_every(&self) -> Duration {
        self.lease / 4
    }
}

/// The first wait before a failed removal is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Active {
    owner: String,
    fault: Box<dyn Fault>,
    /// When it ends; after a failed removal, when the removal is tried again.
    deadline: Instant,
    /// The wait before the next retry once a removal has failed.
    retry: Duration,
    /// An unreadable state file to delete once it is removed.
    file: Option<PathBuf>,
    /// Its removal failed and is being retried, or its dead-man switch could not be renewed:
    /// its kernel objects are left to lapse.
    lapsing: bool,
}

/// The result of an apply: an answer now, or later (memory becomes resident).
#[derive(Debug)]
pub enum Applied {
    /// Answer now.
    Now(Outcome),
    /// Answer when this resolves.
    Later(oneshot::Receiver<Outcome>),
    /// Answer now, and once the answer is on the wire, call [`Faults::after_answer`].
    ThenAct(Outcome),
}

/// A fault this agent refuses: its kind is not among the capabilities it registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("this agent does not inject `{capability}` faults (capabilities: {available})")]
pub struct NotAllowed {
    /// The capability the fault needs.
    pub capability: &'static str,
    /// The capabilities this agent has, comma-separated.
    pub available: String,
}

/// A command refused before anything is done.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refusal {
    /// The kind is not among this agent's capabilities.
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
    /// A parameter is out of range.
    #[error("refused: {0}")]
    OutOfRange(#[from] OutOfRange),
}

/// Why a fault could not be applied or removed; its message goes to the controller.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// The fault's own reason, in words for the operator.
    #[error("{0}")]
    Refused(String),
    /// A system call failed while doing `what`.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, e.g. "cannot cut the control plane".
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

impl FaultError {
    /// Wraps an io::Error with what was being done, for `map_err`.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FaultError {
        let what = what.into();
        move |source| FaultError::Io { what, source }
    }

    /// A refusal from any error that says why.
    pub fn refused(e: impl std::fmt::Display) -> FaultError {
        FaultError::Refused(e.to_string())
    }
}

/// The faults in effect on this host.
#[derive(Debug)]
pub struct Faults {
    active: BTreeMap<String, Active>,
    kinds: BTreeMap<&'static str, Box<dyn Kind>>,
    caps: Capabilities,
    config: Config,
    state: StateDir,
    conditions: Arc<Conditions>,
    failed: Vec<FailedRemoval>,
    /// When the dead-man switches are renewed next, while any fault has one.
    next_refresh: Option<Instant>,
}

/// A fault removed, with what it was seen to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Removed {
    pub fault_id: String,
    /// The controller that owned it.
    pub owner: String,
    /// Its observed effect.
    pub observed: Observed,
}

/// A removal the agent started on its own that failed; the fault stays on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRemoval {
    pub fault_id: String,
    /// The controller that owns it.
    pub owner: String,
    /// What went wrong.
    pub message: String,
    /// When the removal is tried again.
    pub retry_at: Instant,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The kind named `capability`, for a holder process.
pub fn kind(capability: &str) -> Option<Box<dyn Kind>> {
    registry()
        .into_iter()
        .find_map(|(name, kind)| (name == capability).then_some(kind))
}

impl Faults {
    /// Detects what each kind `allow` permits can do here; the notes say what was left out
    /// and why. Fails when a kind was required to work in a way it cannot.
    pub fn new(
        allow: &BTreeSet<String>,
        setup: &Setup,
        state: StateDir,
        conditions: Arc<Conditions>,
        config: Config,
    ) -> Result<(Self, Vec<String>), String> {
        let mut notes = Vec::new();
        let mut caps = BTreeSet::new();
        let mut kinds = BTreeMap::new();
        for (name, mut kind) in registry() {
            if !allow.contains(name) {
                notes.push(format!("{name}: not in --allow"));
            } else {
                match kind.detect(setup) {
                    Detection::Ready => {
                        caps.insert(name);
                    }
                    Detection::Limited(note) => {
                        notes.push(format!("{name}: {note}"));
                        caps.insert(name);
                    }
                    Detection::Unavailable(why) => notes.push(format!("{name}: {why}")),
                    Detection::Fatal(why) => return Err(why),
                }
            }
            // Kept even when not allowed: recovery may need it for a previous life's record.
            kinds.insert(name, kind);
        }
        let faults = Faults {
            active: BTreeMap::new(),
            kinds,
            caps: Capabilities { kinds: caps },
            config,
            state,
            conditions,
            failed: Vec::new(),
            next_refresh: None,
        };
        Ok((faults, notes))
    }

    /// The capabilities registered with the controller.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Takes away what a previous life of this agent left: each record's fault, through its
    /// kind, and whatever each kind's sweep finds that no readable record names (stopped
    /// processes, tables). Never fails: what cannot be removed now is held as a fault of its
    /// record's owner, reported at registration and retried with backoff. Returns the
    /// records undone, so their owners can be told.
    pub fn recover(&mut self) -> Vec<Record> {
        let (records, unreadable) = match self.state.leftovers() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state dir; only the sweeps clean up");
                (Vec::new(), Vec::new())
            }
        };
        let now = Instant::now();
        let env = Env {
            state: &self.state,
            config: &self.config,
            conditions: &self.conditions,
        };
        let held = |owner: String, fault: Box<dyn Fault>, file: Option<PathBuf>| Active {
            owner,
            fault,
            deadline: now,
            retry: FIRST_RETRY,
            file,
            lapsing: false,
        };
        let mut found: Vec<(String, Active)> = Vec::new();
        for kind in self.kinds.values() {
            for l in kind.sweep(&records, &unreadable, &env) {
                found.push((l.id, held(String::new(), l.fault, l.file)));
            }
        }
        for r in &records {
            let fault = match self.kinds.get(r.kind.as_str()) {
                Some(kind) => kind.restore(&r.fault_id, r.undo.clone(), &env),
                None => {
                    tracing::warn!(fault = %r.fault_id, kind = %r.kind, "a record of a kind this agent does not know; forgetting it");
                    Box::new(Gone)
                }
            };
            found.push((r.fault_id.clone(), held(r.owner.clone(), fault, None)));
        }
        let claimed: BTreeSet<&PathBuf> = found.iter().filter_map(|(_, a)| a.file.as_ref()).collect();
        for path in unreadable.iter().filter(|p| !claimed.contains(p)) {
            tracing::warn!(path = %path.display(), "discarding an unreadable state file");
            if let Err(e) = self.state.discard(path) {
                tracing::error!(path = %path.display(), error = %e, "cannot discard it");
            }
        }
        self.active.extend(found);
        let undone: BTreeSet<String> = self
            .remove_where(|_, _, _| true)
            .into_iter()
            .map(|r| r.fault_id)
            .collect();
        for r in &records {
            if undone.contains(&r.fault_id) {
                tracing::warn!(fault = %r.fault_id, kind = %r.kind, "removed a fault left by the previous run of this agent");
            }
        }
        records.into_iter().filter(|r| undone.contains(&r.fault_id)).collect()
    }

    /// Applies a fault for `owner`. `controller` is the controller's address, which a fault
    /// that cuts the network may need to keep reachable.
    pub fn apply(&mut self, owner: &str, spec: FaultSpec, controller: Option<IpAddr>) -> Result<Applied, Refusal> {
        let capability = spec.kind.capability();
        let kind = match self.kinds.get(capability) {
            Some(kind) if self.caps.kinds.contains(capability) => kind,
            _ => {
                return Err(NotAllowed {
                    capability,
                    available: self.caps.kinds.iter().copied().collect::<Vec<_>>().join(", "),
                }
                .into())
            }
        };
        limits::check(&spec, self.config.max_duration)?;
        if let Some(held) = self.active.get(&spec.fault_id) {
            // An apply repeated by its owner (its answer was lost) is answered again; another
            // controller's fault is never taken over, nor reported as applied to it.
            return Ok(Applied::Now(if held.owner == owner {
                Outcome::Applied {
                    detail: "already in effect".into(),
                    pids: vec![],
                }
            } else {
                Outcome::Failed {
                    message: not_owner(&spec.fault_id, "applied"),
                }
            }));
        }
        let env = Env {
            state: &self.state,
            config: &self.config,
            conditions: &self.conditions,
        };
        let duration = Duration::from_millis(spec.duration_ms.unwrap_or(0));
        let apply = Apply {
            spec: &spec,
            duration,
            until: Deadline::after(duration),
            kernel_life: duration.min(self.config.dead_man()),
            hash: state::fault_hash(&spec.fault_id),
            controller,
            memory_pending: self.active.values().map(|a| a.fault.memory_pending()).sum(),
        };
        let failed = |e: FaultError| Ok(Applied::Now(Outcome::Failed { message: e.to_string() }));
        if spec.kind.instant() {
            // Nothing to take away afterwards, so nothing to record.
            return match kind.apply(&apply, &serde_json::Value::Null, &env) {
                Ok(Started { answer, .. }) => Ok(Applied::Now(outcome_now(answer))),
                Err(e) => failed(e),
            };
        }
        // The limits keep the duration within 12 hours, so the sum cannot overflow; a clock
        // that could not hold it still gets an answer rather than a panic.
        let Some(deadline) = Instant::now().checked_add(duration) else {
            return Ok(Applied::Now(Outcome::Failed {
                message: format!(
                    "a duration of {} ms does not fit this host's clock",
                    duration.as_millis()
                ),
            }));
        };
        let undo = match kind.prepare(&apply, &env) {
            Ok(undo) => undo,
            Err(e) => return failed(e),
        };
        let record = Record {
            fault_id: spec.fault_id.clone(),
            owner: owner.to_string(),
            kind: capability.to_string(),
            undo: undo.clone(),
            applied_at_ms: now_ms(),
        };
        if let Err(e) = self.state.write(&record) {
            return Ok(Applied::Now(Outcome::Failed {
                message: format!("cannot record the fault in the state dir, so it is not applied: {e}"),
            }));
        }
        match kind.apply(&apply, &undo, &env) {
            Ok(Started { fault, answer }) => {
                self.active.insert(
                    spec.fault_id.clone(),
                    Active {
                        owner: owner.to_string(),
                        fault,
                        deadline,
                        retry: FIRST_RETRY,
                        file: None,
                        lapsing: false,
                    },
                );
                self.schedule_refresh();
                Ok(match answer {
                    Answer::Later(rx) => Applied::Later(rx),
                    Answer::ThenAct(detail) => Applied::ThenAct(Outcome::Applied { detail, pids: vec![] }),
                    now => Applied::Now(outcome_now(now)),
                })
            }
            Err(e) => {
                if let Err(e) = self.state.remove(&spec.fault_id) {
                    tracing::error!(fault = %spec.fault_id, error = %e, "cannot forget a fault that was never applied");
                }
                failed(e)
            }
        }
    }

    /// The rest of a fault applied with [`Applied::ThenAct`], once its answer is out (a
    /// blackout cuts the control plane). It may end the fault sooner than its deadline.
    pub fn after_answer(&mut self, fault_id: &str) -> Result<(), FaultError> {
        let env = Env {
            state: &self.state,
            config: &self.config,
            conditions: &self.conditions,
        };
        let Some(active) = self.active.get_mut(fault_id) else {
            return Ok(());
        };
        let now = Instant::now();
        let left = active.deadline.saturating_duration_since(now);
        if let Some(sooner) = active.fault.after_answer(&env, left)? {
            if sooner < left {
                active.deadline = now + sooner;
            }
        }
        Ok(())
    }

    /// Removes one fault; `Ok(None)` when it was not in effect, else what it was seen to do.
    pub fn remove(&mut self, fault_id: &str) -> Result<Option<Observed>, FaultError> {
        let Some(mut active) = self.active.remove(fault_id) else {
            return Ok(None);
        };
        let observed = active.fault.observed();
        let env = Env {
            state: &self.state,
            config: &self.config,
            conditions: &self.conditions,
        };
        if let Err(e) = active.fault.remove(&env) {
            // Keep it, and its record, so a retry or a restart takes it away; retries back
            // off so that a lasting failure is no hot loop.
            let now = Instant::now();
            active.deadline = now.checked_add(active.retry).unwrap_or(now);
            active.retry = (active.retry * 2).min(MAX_RETRY);
            active.lapsing = true;
            self.active.insert(fault_id.to_string(), active);
            return Err(e);
        }
        drop(active.fault);
        self.schedule_refresh();
        if let Some(path) = &active.file {
            self.state
                .discard(path)
                .map_err(FaultError::io("removed, but its unreadable state file remains"))?;
        }
        self.state
            .remove(fault_id)
            .map_err(FaultError::io("fault removed, but its state record remains"))?;
        if !observed.figures.is_empty() {
            tracing::info!(fault = %fault_id, %observed, "observed effect");
        }
        Ok(Some(observed))
    }

    /// Removes the faults matching `which`; the ids, owners and observed effects of those
    /// removed.
    pub fn remove_where(&mut self, which: impl Fn(&str, &str, Instant) -> bool) -> Vec<Removed> {
        let ids: Vec<(String, String)> = self
            .active
            .iter()
            .filter(|(id, a)| which(id, &a.owner, a.deadline))
            .map(|(id, a)| (id.clone(), a.owner.clone()))
            .collect();
        ids.into_iter()
            .filter_map(|(id, owner)| match self.remove(&id) {
                Ok(observed) => observed.map(|observed| Removed {
                    fault_id: id,
                    owner,
                    observed,
                }),
                Err(e) => {
                    tracing::error!(fault = %id, error = %e, "fault could not be removed");
                    let retry_at = self.active.get(&id).map_or_else(Instant::now, |a| a.deadline);
                    self.failed.push(FailedRemoval {
                        fault_id: id.clone(),
                        owner: owner.clone(),
                        message: e.to_string(),
                        retry_at,
                    });
                    None
                }
            })
            .collect()
    }

    /// Removals that failed since the last call, for their owners to be told.
    pub fn take_failed(&mut self) -> Vec<FailedRemoval> {
        std::mem::take(&mut self.failed)
    }

    /// The faults in effect, with their owners.
    pub fn held(&self) -> Vec<HeldFault> {
        self.active
            .iter()
            .map(|(id, a)| HeldFault {
                fault_id: id.clone(),
                owner: a.owner.clone(),
            })
            .collect()
    }

    /// The earliest deadline of a fault in effect, or renewal of its dead-man switch.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().map(|a| a.deadline).chain(self.next_refresh).min()
    }

    /// The controller that owns a fault in effect.
    pub fn owner(&self, fault_id: &str) -> Option<&str> {
        self.active.get(fault_id).map(|a| a.owner.as_str())
    }

    /// Plans the next renewal of the dead-man switches, if any fault has one.
    fn schedule_refresh(&mut self) {
        let any = self.active.values().any(|a| !a.lapsing && a.fault.dead_man().is_some());
        self.next_refresh = match (any, self.next_refresh) {
            (false, _) => None,
            (true, Some(at)) => Some(at),
            (true, None) => Some(Instant::now() + self.config.refresh_every()),
        };
    }

    /// Once due: renews the dead-man switch of every fault whose owner `alive` says still
    /// holds its lease, for [`Config::dead_man`] or what is left of the fault if less. A
    /// fault whose owner is gone, whose removal is failing or whose renewal failed (its table
    /// deleted behind the agent's back) is left to lapse.
    pub fn refresh(&mut self, now: Instant, alive: impl Fn(&str) -> bool) {
        if self.next_refresh.is_none_or(|at| now < at) {
            return;
        }
        let life = self.config.dead_man();
        for (id, a) in self.active.iter_mut() {
            let Some(table) = a.fault.dead_man().filter(|_| !a.lapsing && alive(&a.owner)) else {
                continue;
            };
            let left = a.deadline.saturating_duration_since(now).min(life);
            if left.is_zero() {
                continue; // its removal is due now
            }
            if let Err(e) = nft::refresh(table, left) {
                tracing::error!(fault = %id, %table, error = %e, "cannot renew the fault's dead-man switch; its effect lapses on its own");
                // A table deleted behind the agent's back stays gone; anything else is tried
                // again at the next renewal.
                a.lapsing = e.raw_os_error() == Some(libc::ENOENT);
            }
        }
        self.next_refresh = None;
        self.schedule_refresh();
    }

    /// Whether a fault in effect cuts this host off from its controller right now.
    pub fn cuts_control_plane(&self) -> bool {
        self.active.values().any(|a| a.fault.cuts_control_plane())
    }
}

/// Why a controller may not act on a fault another one owns.
pub fn not_owner(fault_id: &str, done: &str) -> String {
    format!(
        "fault {fault_id} is held for another controller and is not {done} for this one: only its owner applies, \
         renews or removes it (its lease removes it should that controller be gone)"
    )
}

fn outcome_now(answer: Answer) -> Outcome {
    match answer {
        Answer::Now(detail, pids) => Outcome::Applied { detail, pids },
        Answer::ThenAct(detail) => Outcome::Applied { detail, pids: vec![] },
        Answer::Later(_) => Outcome::Failed {
            message: "an instant fault cannot answer later".into(),
        },
    }
}

/// The error for a command handed to the wrong kind (the table dispatches by capability,
/// so this is a bug, answered rather than panicked on).
pub fn mismatch(spec: &FaultSpec) -> FaultError {
    FaultError::Refused(format!(
        "internal error: a `{}` fault reached the wrong handler",
        spec.kind.capability()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(name: &str) -> (Faults, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fl-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = Config {
            max_duration: Duration::from_secs(60),
            max_cut: Duration::from_secs(300),
            kill: kill::Policy::default(),
            lease: Duration::from_secs(10),
        };
        let allow = CAPABILITIES.iter().map(|c| c.to_string()).collect();
        let setup = Setup {
            has_proxy: true,
            proxy_ports: vec![8080],
            blackout_backend: blackout::Backend::Proxy,
        };
        let (f, _) = Faults::new(
            &allow,
            &setup,
            StateDir::open(&dir).unwrap(),
            Arc::new(Conditions::default()),
            config,
        )
        .unwrap();
        (f, dir)
    }

    #[test]
    fn every_wire_capability_has_exactly_one_kind() {
        let names: Vec<&str> = registry().iter().map(|(name, _)| *name).collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "a capability registered twice: {names:?}");
        assert_eq!(names, CAPABILITIES.to_vec());
    }

    /// One fault of each kind, and its JSON as the wire has always carried it (a fault's
    /// parameters beside its `kind` tag, in declaration order).
    fn one_of_each() -> Vec<(FaultKind, &'static str)> {
        vec![
            (
                kill::Params {
                    process_name: "web".into(),
                    signal: "SIGKILL".into(),
                }
                .into(),
                r#"{"kind":"kill","process_name":"web","signal":"SIGKILL"}"#,
            ),
            (
                pause::Params {
                    process_name: "web".into(),
                }
                .into(),
                r#"{"kind":"pause","process_name":"web"}"#,
            ),
            (
                cpu::Params {
                    load_percent: 80,
                    workers: 0,
                }
                .into(),
                r#"{"kind":"cpu","load_percent":80,"workers":0}"#,
            ),
            (
                memory::Params {
                    amount: memory::MemoryAmount::SizeMib(256),
                    workers: 2,
                }
                .into(),
                r#"{"kind":"memory","amount":{"size_mib":256},"workers":2}"#,
            ),
            (
                memory::Params {
                    amount: memory::MemoryAmount::Percent(30),
                    workers: 0,
                }
                .into(),
                r#"{"kind":"memory","amount":{"percent":30},"workers":0}"#,
            ),
            (
                io_stress::Params {
                    workers: 1,
                    percent: 80,
                    path: "/tmp".into(),
                }
                .into(),
                r#"{"kind":"io_stress","workers":1,"percent":80,"path":"/tmp"}"#,
            ),
            (
                disk_fill::Params {
                    percent: 95,
                    path: "/tmp".into(),
                }
                .into(),
                r#"{"kind":"disk_fill","percent":95,"path":"/tmp"}"#,
            ),
            (
                latency::Params {
                    delay_ms: 300,
                    jitter_ms: 10,
                    loss_percent: 0.5,
                    sources: vec!["10.0.0.0/8".parse().unwrap()],
                }
                .into(),
                r#"{"kind":"latency","delay_ms":300,"jitter_ms":10,"loss_percent":0.5,"sources":["10.0.0.0/8"]}"#,
            ),
            (
                latency::Params {
                    delay_ms: 300,
                    jitter_ms: 0,
                    loss_percent: 0.0,
                    sources: vec![],
                }
                .into(),
                r#"{"kind":"latency","delay_ms":300,"jitter_ms":0,"loss_percent":0.0}"#,
            ),
            (
                blackout::Params {
                    allow: vec!["10.0.1.2".parse().unwrap()],
                    keep_control_plane: false,
                    deny: vec!["10.0.2.0/24".parse().unwrap()],
                }
                .into(),
                r#"{"kind":"blackout","allow":["10.0.1.2"],"keep_control_plane":false,"deny":["10.0.2.0/24"]}"#,
            ),
            (
                blackhole_port::Params {
                    protocol: blackhole_port::Transport::Tcp,
                    port: 5432,
                    traffic: blackhole_port::Direction::Ingress,
                }
                .into(),
                r#"{"kind":"blackhole_port","protocol":"tcp","port":5432,"traffic":"ingress"}"#,
            ),
            (
                packet_loss::Params {
                    loss_percent: 7.0,
                    sources: vec![],
                }
                .into(),
                r#"{"kind":"packet_loss","loss_percent":7.0}"#,
            ),
        ]
    }

    #[test]
    fn every_kind_keeps_its_wire_json_and_round_trips() {
        let all = one_of_each();
        let kinds: BTreeSet<&str> = all.iter().map(|(k, _)| k.capability()).collect();
        assert_eq!(kinds.len(), CAPABILITIES.len(), "one sample per kind at least");
        for (kind, json) in all {
            assert_eq!(serde_json::to_string(&kind).unwrap(), json);
            assert_eq!(serde_json::from_str::<FaultKind>(json).unwrap(), kind, "{json}");
            assert!(kind.check().is_ok(), "{json}: {:?}", kind.check());
        }
        // What the wire refuses stays refused: a field of another kind, an unknown kind.
        for bad in [
            r#"{"kind":"cpu","load_percent":80,"workers":0,"path":"/tmp"}"#,
            r#"{"kind":"cpu","load_percent":80}"#,
            r#"{"kind":"format_disk"}"#,
        ] {
            assert!(serde_json::from_str::<FaultKind>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn each_kinds_own_ranges_refuse_absurd_values() {
        let cases: [(FaultKind, &str); 5] = [
            (
                blackout::Params {
                    allow: vec![],
                    keep_control_plane: true,
                    deny: vec![],
                }
                .into(),
                "allow is a list of 0 addresses",
            ),
            (
                memory::Params {
                    amount: memory::MemoryAmount::SizeMib(u64::MAX),
                    workers: 0,
                }
                .into(),
                "size_mib is 18446744073709551615",
            ),
            (
                latency::Params {
                    delay_ms: 10,
                    jitter_ms: 0,
                    loss_percent: f64::NAN,
                    sources: vec![],
                }
                .into(),
                "loss_percent is NaN",
            ),
            (
                blackhole_port::Params {
                    protocol: blackhole_port::Transport::Tcp,
                    port: 0,
                    traffic: blackhole_port::Direction::Ingress,
                }
                .into(),
                "port is 0; it must be 1-65535",
            ),
            (
                packet_loss::Params {
                    loss_percent: 100.5,
                    sources: vec![],
                }
                .into(),
                "loss_percent is 100.5",
            ),
        ];
        for (kind, want) in cases {
            let e = kind.check().expect_err(want).to_string();
            assert!(e.contains(want), "{e} does not contain {want}");
        }
    }

    #[test]
    fn a_failing_removal_is_retried_with_backoff_not_in_a_hot_loop() {
        let (mut f, dir) = faults("retry");
        let now = Instant::now();
        f.active.insert(
            "leftover".into(),
            Active {
                owner: "c1".into(),
                // No kernel accepts a table name this long: every removal fails.
                fault: Box::new(nft::Table("x".repeat(300))),
                deadline: now,
                retry: FIRST_RETRY,
                file: None,
                lapsing: false,
            },
        );
        let mut waits = Vec::new();
        for _ in 0..8 {
            let before = Instant::now();
            assert!(f.remove_where(|_, _, _| true).is_empty());
            waits.push((f.next_deadline().unwrap() - before).as_secs_f64().round() as u64);
        }
        assert_eq!(waits, vec![1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(f.held().len(), 1, "kept, and reported at registration");
        let failed = f.take_failed();
        assert_eq!(failed.len(), 8, "every failure is reported to the owner");
        assert!(failed.iter().all(|r| r.fault_id == "leftover" && r.owner == "c1"));
        assert!(
            failed[0].message.contains("cannot remove nf_tables table"),
            "{}",
            failed[0].message
        );
        assert!(f.take_failed().is_empty(), "each failure is reported once");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_proxy_only_blackout_never_counts_as_a_cut_control_plane() {
        let (mut f, dir) = faults("cut");
        f.config.max_cut = Duration::from_secs(10);
        let spec = FaultSpec {
            fault_id: "e/a/h".into(),
            duration_ms: Some(60_000),
            kind: FaultKind::Blackout(blackout::Params {
                allow: vec!["10.0.0.2".parse().unwrap()],
                keep_control_plane: false,
                deny: vec![],
            }),
        };
        let applied = f.apply("c1", spec, Some("10.255.0.1".parse().unwrap())).unwrap();
        assert!(matches!(applied, Applied::ThenAct(_)), "{applied:?}");
        assert!(
            !f.cuts_control_plane(),
            "leases keep running until the cut is installed"
        );
        let before = Instant::now();
        f.after_answer("e/a/h").unwrap();
        // Without nf_tables (as here) only the proxy enforces the blackout, and the proxy never
        // carries the control connection: nothing is cut, so leases and the deadline stand.
        assert!(
            !f.cuts_control_plane(),
            "a proxy-only blackout must not pause the leases"
        );
        let ends = f.next_deadline().unwrap();
        assert!(ends >= before + Duration::from_secs(59), "{:?}", ends - before);
        assert_eq!(f.remove_where(|_, _, _| true).len(), 1);
        assert!(!f.cuts_control_plane());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn absurd_commands_are_refused_before_anything_happens() {
        let (mut f, dir) = faults("absurd");
        let spec = FaultSpec {
            fault_id: "e/a/h".into(),
            duration_ms: Some(u64::MAX),
            kind: FaultKind::Cpu(cpu::Params {
                load_percent: 50,
                workers: 1,
            }),
        };
        match f.apply("c1", spec, None) {
            Err(Refusal::OutOfRange(e)) => assert!(e.to_string().contains("duration_ms"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(f.held().is_empty());
        assert!(f.state.leftovers().unwrap().0.is_empty(), "nothing recorded");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
