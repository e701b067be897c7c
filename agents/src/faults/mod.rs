//! The faults an agent injects, and the table of those in effect.
//!
//! Every fault with a duration is recorded in the state directory before it takes effect
//! and forgotten only once it is removed. Removal is the same code whatever asks for it:
//! the controller, the end of the duration, a lapsed lease, or shutdown.

pub mod cpu;
pub mod kill;
pub mod memory;
pub mod nft;
pub mod pause;

use crate::holder::{self, Deadline, Holder, Work};
use crate::proxy::{Condition, Conditions};
use crate::state::{self, Record, StateDir};
use faultline_agent::limits::{self, OutOfRange};
use faultline_agent::protocol::{FaultKind, FaultSpec, HeldFault, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ChildStdout;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::oneshot;
use tokio::time::Instant;

/// What this agent can do here, after its allow-list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// Capability names, as registered.
    pub kinds: BTreeSet<&'static str>,
    /// Whether blackouts use nf_tables (else only the proxy enforces them).
    pub nft: bool,
}

/// How blackouts are enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BlackoutBackend {
    /// nf_tables when this process may use it, else the proxy alone.
    Auto,
    /// nf_tables (and the proxy); refuse to start without it.
    Nftables,
    /// The proxy alone: the rest of the host's network is never touched.
    Proxy,
}

/// `--blackout-backend nftables` on a machine where nf_tables cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("--blackout-backend nftables, but nf_tables cannot be used here (is CAP_NET_ADMIN granted?)")]
pub struct NftablesUnavailable;

impl Capabilities {
    /// Detects what works on this machine and keeps what `allow` permits; the notes say
    /// what was left out and why. Fails when nf_tables is required and unavailable.
    pub fn detect(
        allow: &BTreeSet<String>,
        has_proxy: bool,
        backend: BlackoutBackend,
    ) -> Result<(Capabilities, Vec<String>), NftablesUnavailable> {
        let wanted = allow.contains("blackout") && backend != BlackoutBackend::Proxy;
        let nft = wanted && nft::available();
        if wanted && !nft && backend == BlackoutBackend::Nftables {
            return Err(NftablesUnavailable);
        }
        let mut notes = Vec::new();
        let mut kinds = BTreeSet::new();
        for kind in faultline_agent::protocol::CAPABILITIES {
            let possible = match kind {
                "latency" if !has_proxy => {
                    Err("latency needs a proxy in front of the service (--proxy LISTEN=UPSTREAM)")
                }
                "blackout" if !nft && !has_proxy => {
                    Err("blackout needs CAP_NET_ADMIN (nf_tables) or a proxy (--proxy)")
                }
                _ => Ok(()),
            };
            match (allow.contains(kind), possible) {
                (false, _) => notes.push(format!("{kind}: not in --allow")),
                (true, Err(why)) => notes.push(format!("{kind}: {why}")),
                (true, Ok(())) => {
                    kinds.insert(kind);
                }
            }
        }
        if kinds.contains("blackout") && !nft {
            notes.push("blackout: only the proxy enforces it (no nf_tables)".into());
        }
        Ok((Capabilities { kinds, nft }, notes))
    }
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
}

/// What is in effect, and what taking it away needs.
#[derive(Debug)]
enum Effect {
    Cpu(Holder),
    /// `filled` once the holder stops filling up: its memory is resident, or it is gone.
    Memory {
        holder: Holder,
        bytes: u64,
        filled: Arc<AtomicBool>,
    },
    Latency,
    /// `cut` holds the allow-list without the controller until [`Faults::cut`] applies it.
    Blackout {
        nft_table: Option<String>,
        cut: Option<Vec<IpAddr>>,
    },
    /// The processes stopped, and the holder that resumes them should this agent die.
    Pause {
        targets: Vec<kill::Target>,
        guard: Holder,
    },
    /// A process a previous life of this agent paused, known by its marker file (whose name
    /// holds the pid and start time, when it could be read).
    Resume {
        marker: PathBuf,
        target: Option<kill::Target>,
    },
    /// An effect that died with a previous life of this agent; only its record remains.
    Gone,
    /// A table a previous life of this agent left, which this start could not remove yet,
    /// with the state file that named it when it was unreadable.
    Orphan {
        table: String,
        file: Option<PathBuf>,
    },
}

/// The first wait before a failed removal is tried again; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Active {
    owner: String,
    effect: Effect,
    /// When it ends; after a failed removal, when the removal is tried again.
    deadline: Instant,
    /// The wait before the next retry once a removal has failed.
    retry: Duration,
    /// Whether the control plane is cut right now (set once the cut is installed).
    cut: bool,
}

/// The result of an apply: an answer now, or later (memory becomes resident).
#[derive(Debug)]
pub enum Applied {
    /// Answer now.
    Now(Outcome),
    /// Answer when this resolves.
    Later(oneshot::Receiver<Outcome>),
    /// Answer now, and once the answer is on the wire, cut the control plane with
    /// [`Faults::cut`]: cutting first would swallow the answer.
    ThenCut(Outcome),
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

/// Why a fault could not be applied, cut or removed; its message goes to the controller.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A fault that lasts arrived without a duration.
    #[error("a `{0}` fault needs a duration")]
    NoDuration(&'static str),
    /// No process was signalled.
    #[error(transparent)]
    Kill(#[from] kill::KillError),
    /// No process was paused.
    #[error(transparent)]
    Pause(#[from] pause::PauseError),
    /// An nf_tables blackout would cut the controller's own host.
    #[error(
        "refused: the controller ({0}) runs on this host, and an nf_tables blackout would cut off everything \
         else on it; run this agent with --blackout-backend proxy, or the controller on another host"
    )]
    ControllerIsLocal(IpAddr),
    /// The memory asked for would eat the safety margin.
    #[error(transparent)]
    Memory(#[from] memory::UnsafeAmount),
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
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FaultError {
        let what = what.into();
        move |source| FaultError::Io { what, source }
    }
}

/// The faults in effect on this host.
#[derive(Debug)]
pub struct Faults {
    active: BTreeMap<String, Active>,
    caps: Capabilities,
    config: Config,
    state: StateDir,
    conditions: Arc<Conditions>,
    failed: Vec<FailedRemoval>,
}

/// A removal the agent started on its own that failed; the fault stays on record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRemoval {
    /// The fault.
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

impl Faults {
    /// An empty table.
    pub fn new(caps: Capabilities, state: StateDir, conditions: Arc<Conditions>, config: Config) -> Self {
        Faults {
            active: BTreeMap::new(),
            caps,
            config,
            state,
            conditions,
            failed: Vec::new(),
        }
    }

    /// The capabilities registered with the controller.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Takes away what a previous life of this agent left: the processes it paused, the
    /// tables its records name (readable or not) and every `fl_*` table of this network
    /// namespace. Never fails: what cannot be removed now is held as a fault of its
    /// record's owner, reported at registration and retried with backoff. Returns the
    /// records undone, so their owners can be told.
    pub fn recover(&mut self) -> Vec<Record> {
        let paused = self.state.paused().unwrap_or_else(|e| {
            tracing::error!(error = %e, "cannot list the processes a previous run paused");
            Vec::new()
        });
        let (records, unreadable) = match self.state.leftovers() {
            Ok(found) => found,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the state dir; only the table sweep cleans up");
                (Vec::new(), Vec::new())
            }
        };
        let now = Instant::now();
        let orphan = |active: &mut BTreeMap<String, Active>, id: String, owner: String, effect| {
            active.insert(
                id,
                Active {
                    owner,
                    effect,
                    deadline: now,
                    retry: FIRST_RETRY,
                    cut: false,
                },
            );
        };
        for path in unreadable {
            match state::table_of_file(&path) {
                // The kernel may hold its table: remove it like any other fault's. Also when
                // this life does not use nf_tables, as long as it may: the last one may have.
                Some(table) if self.caps.nft || nft::has_net_admin() => {
                    tracing::warn!(path = %path.display(), %table, "an unreadable state file; removing the table it names");
                    let id = format!("unreadable:{}", path.display());
                    let effect = Effect::Orphan {
                        table,
                        file: Some(path),
                    };
                    orphan(&mut self.active, id, String::new(), effect);
                }
                _ => {
                    tracing::warn!(path = %path.display(), "discarding an unreadable state file");
                    if let Err(e) = self.state.discard(&path) {
                        tracing::error!(path = %path.display(), error = %e, "cannot discard it");
                    }
                }
            }
        }
        // Each paused process is its own removal, so one that fails is retried on its own.
        for (marker, target) in paused {
            let target = target.map(|(pid, start_time)| kill::Target { pid, start_time });
            let id = format!("paused:{}", marker.display());
            orphan(&mut self.active, id, String::new(), Effect::Resume { marker, target });
        }
        for r in &records {
            let effect = match &r.nft_table {
                Some(table) => Effect::Orphan {
                    table: table.clone(),
                    file: None,
                },
                None => Effect::Gone,
            };
            orphan(&mut self.active, r.fault_id.clone(), r.owner.clone(), effect);
        }
        // Whatever this life's backend, a previous one may have used nf_tables.
        if self.caps.nft || nft::has_net_admin() {
            match nft::tables() {
                Ok(tables) => {
                    let known: BTreeSet<String> = self
                        .active
                        .values()
                        .filter_map(|a| match &a.effect {
                            Effect::Orphan { table, .. } => Some(table.clone()),
                            _ => None,
                        })
                        .collect();
                    for table in tables
                        .into_iter()
                        .filter(|t| t.starts_with("fl_") && !known.contains(t))
                    {
                        tracing::warn!(%table, "an nf_tables table of faultline that no record names; removing it");
                        let effect = Effect::Orphan {
                            table: table.clone(),
                            file: None,
                        };
                        orphan(&mut self.active, format!("table:{table}"), String::new(), effect);
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot list the nf_tables tables to sweep them"),
            }
        }
        let undone: BTreeSet<String> = self
            .remove_where(|_, _, _| true)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for r in &records {
            if undone.contains(&r.fault_id) {
                tracing::warn!(fault = %r.fault_id, kind = %r.kind, "removed a fault left by the previous run of this agent");
            }
        }
        records.into_iter().filter(|r| undone.contains(&r.fault_id)).collect()
    }

    /// Applies a fault for `owner`. `controller` is the controller's address, kept reachable
    /// by a blackout that keeps the control plane.
    pub fn apply(&mut self, owner: &str, spec: FaultSpec, controller: Option<IpAddr>) -> Result<Applied, Refusal> {
        let capability = spec.kind.capability();
        if !self.caps.kinds.contains(capability) {
            return Err(NotAllowed {
                capability,
                available: self.caps.kinds.iter().copied().collect::<Vec<_>>().join(", "),
            }
            .into());
        }
        limits::check(&spec, self.config.max_duration)?;
        if self.active.contains_key(&spec.fault_id) {
            return Ok(Applied::Now(Outcome::Applied {
                detail: "already in effect".into(),
                pids: vec![],
            }));
        }
        if let FaultKind::Kill { process_name, signal } = &spec.kind {
            // Nothing to take away afterwards, so nothing to record.
            return Ok(Applied::Now(
                match kill::kill(process_name, signal, &self.config.kill) {
                    Ok(pids) => Outcome::Applied {
                        detail: format!(
                            "sent {signal} to {} process{} named {process_name}",
                            pids.len(),
                            if pids.len() == 1 { "" } else { "es" }
                        ),
                        pids,
                    },
                    Err(e) => Outcome::Failed { message: e.to_string() },
                },
            ));
        }
        let Some(duration_ms) = spec.duration_ms else {
            return Ok(Applied::Now(Outcome::Failed {
                message: FaultError::NoDuration(capability).to_string(),
            }));
        };
        let hash = format!("{:016x}", state::fnv1a(spec.fault_id.as_bytes()));
        let nft_table = match (&spec.kind, self.caps.nft) {
            (FaultKind::Blackout { .. }, true) => Some(state::table_name(&spec.fault_id)),
            _ => None,
        };
        if let (Some(_), Some(ip)) = (&nft_table, controller.filter(|ip| is_local(*ip))) {
            return Ok(Applied::Now(Outcome::Failed {
                message: FaultError::ControllerIsLocal(ip).to_string(),
            }));
        }
        // The limits keep the duration within 12 hours, so the sum cannot overflow; a clock
        // that could not hold it still gets an answer rather than a panic.
        let Some(deadline) = Instant::now().checked_add(Duration::from_millis(duration_ms)) else {
            return Ok(Applied::Now(Outcome::Failed {
                message: format!("a duration of {duration_ms} ms does not fit this host's clock"),
            }));
        };
        let record = Record {
            fault_id: spec.fault_id.clone(),
            owner: owner.to_string(),
            kind: capability.to_string(),
            nft_table: nft_table.clone(),
            applied_at_ms: now_ms(),
        };
        if let Err(e) = self.state.write(&record) {
            return Ok(Applied::Now(Outcome::Failed {
                message: format!("cannot record the fault in the state dir, so it is not applied: {e}"),
            }));
        }
        // Holders end on their own at the deadline, even if this agent is gone by then.
        let until = Deadline::after(Duration::from_millis(duration_ms));
        let mut later = None;
        let effect = match spec.kind {
            FaultKind::Cpu { load_percent, workers } => {
                Holder::spawn(&hash, &Work::Cpu { load_percent, workers }, until)
                    .map(|(holder, _)| Effect::Cpu(holder))
                    .map_err(FaultError::io("cannot start the CPU stress process"))
            }
            FaultKind::Memory { amount, workers } => {
                let filling = self.filling();
                memory::Budget::read()
                    .map_err(FaultError::io("cannot read the memory budget"))
                    .and_then(|b| b.less(filling).bytes_for(amount).map_err(FaultError::from))
                    .and_then(|bytes| {
                        let what = format!("cannot start the memory stress process for {} MiB", bytes >> 20);
                        let (holder, stdout) = Holder::spawn(&hash, &Work::Memory { bytes, workers }, until)
                            .map_err(FaultError::io(&what))?;
                        let filled = Arc::new(AtomicBool::new(false));
                        let (tx, rx) = oneshot::channel();
                        watch_filling(stdout, bytes, filled.clone(), tx).map_err(FaultError::io(what))?;
                        later = Some(rx);
                        Ok(Effect::Memory { holder, bytes, filled })
                    })
            }
            FaultKind::Latency {
                delay_ms,
                jitter_ms,
                loss_percent,
            } => {
                self.conditions.set(
                    &spec.fault_id,
                    Condition::Latency {
                        delay: Duration::from_millis(delay_ms),
                        jitter: Duration::from_millis(jitter_ms),
                        loss_percent,
                    },
                );
                Ok(Effect::Latency)
            }
            FaultKind::Blackout {
                ref allow,
                keep_control_plane,
            } => {
                // Until the answer is out, the controller stays reachable either way.
                let strict = allow.clone();
                let mut allow = allow.clone();
                allow.extend(controller);
                let installed = match &nft_table {
                    Some(t) => nft::install(t, &allow, Duration::from_millis(duration_ms))
                        .map_err(FaultError::io("cannot install the nf_tables blackout")),
                    None => Ok(()),
                };
                installed.map(|()| {
                    self.conditions.set(&spec.fault_id, Condition::Blackout { allow });
                    Effect::Blackout {
                        nft_table,
                        cut: (!keep_control_plane).then_some(strict),
                    }
                })
            }
            FaultKind::Pause { ref process_name } => {
                pause::pause(&spec.fault_id, process_name, &self.config.kill, &self.state)
                    .map_err(FaultError::from)
                    .and_then(|targets| {
                        // The pause's own end: a holder that resumes them when this agent dies.
                        let work = Work::Resume {
                            targets: targets.iter().map(|t| (t.pid, t.start_time)).collect(),
                        };
                        match Holder::spawn(&hash, &work, until) {
                            Ok((guard, _)) => Ok(Effect::Pause { targets, guard }),
                            Err(e) => {
                                if let Err(e) = pause::resume(&spec.fault_id, &targets, &self.state) {
                                    tracing::error!(error = %e, "cannot resume what a failed pause stopped");
                                }
                                Err(FaultError::Io {
                                    what: "cannot start the process that resumes a pause".into(),
                                    source: e,
                                })
                            }
                        }
                    })
            }
            FaultKind::Kill { .. } => unreachable!("handled above"),
        };
        match effect {
            Ok(effect) => {
                let will_cut = matches!(
                    spec.kind,
                    FaultKind::Blackout {
                        keep_control_plane: false,
                        ..
                    }
                );
                let pids = match &effect {
                    Effect::Pause { targets, .. } => targets.iter().map(|t| t.pid).collect(),
                    _ => vec![],
                };
                self.active.insert(
                    spec.fault_id.clone(),
                    Active {
                        owner: owner.to_string(),
                        effect,
                        deadline,
                        retry: FIRST_RETRY,
                        cut: false,
                    },
                );
                let outcome = Outcome::Applied {
                    detail: format!("{capability} in effect for {duration_ms} ms"),
                    pids,
                };
                Ok(match later {
                    Some(rx) => Applied::Later(rx),
                    None if will_cut => Applied::ThenCut(outcome),
                    None => Applied::Now(outcome),
                })
            }
            Err(e) => {
                if let Err(e) = self.state.remove(&spec.fault_id) {
                    tracing::error!(fault = %spec.fault_id, error = %e, "cannot forget a fault that was never applied");
                }
                Ok(Applied::Now(Outcome::Failed { message: e.to_string() }))
            }
        }
    }

    /// Cuts the control plane of a blackout applied with [`Applied::ThenCut`]. The
    /// blackout then ends by `--max-cut` at the latest, whatever its duration.
    pub fn cut(&mut self, fault_id: &str) -> Result<(), FaultError> {
        let max_cut = self.config.max_cut;
        let Some(Active {
            effect: Effect::Blackout { nft_table, cut },
            deadline,
            cut: is_cut,
            ..
        }) = self.active.get_mut(fault_id)
        else {
            return Ok(());
        };
        let Some(strict) = cut.take() else { return Ok(()) };
        // Only nf_tables cuts the control connection; the proxy never carries it, so a
        // proxy-only blackout leaves the leases running.
        if let Some(t) = nft_table {
            let now = Instant::now();
            let left = deadline.saturating_duration_since(now);
            let until = left.min(max_cut);
            // The kernel ends the cut at --max-cut too, should this agent be gone by then.
            nft::replace(t, &strict, until).map_err(FaultError::io("cannot cut the control plane"))?;
            *is_cut = true;
            if until < left {
                tracing::warn!(fault = %fault_id, max_cut = ?max_cut, "the control plane is cut; the blackout ends at --max-cut");
                *deadline = now + until;
            }
        }
        self.conditions.set(fault_id, Condition::Blackout { allow: strict });
        Ok(())
    }

    /// Removes one fault; `Ok(false)` when it was not in effect.
    pub fn remove(&mut self, fault_id: &str) -> Result<bool, FaultError> {
        let Some(mut active) = self.active.remove(fault_id) else {
            return Ok(false);
        };
        self.conditions.clear(fault_id);
        let undone = match &active.effect {
            Effect::Blackout {
                nft_table: Some(table), ..
            }
            | Effect::Orphan { table, .. } => {
                nft::remove(table).map_err(FaultError::io(format!("cannot remove blackout table {table}")))
            }
            Effect::Pause { targets, .. } => pause::resume(fault_id, targets, &self.state)
                .map_err(FaultError::io("cannot resume the paused processes")),
            Effect::Resume { marker, target } => pause::resume_leftover(marker, *target, &self.state)
                .map_err(FaultError::io("cannot resume a process the previous run paused")),
            _ => Ok(()),
        };
        if let Err(e) = undone {
            // Keep it, and its record, so a retry or a restart takes it away; retries back
            // off so that a lasting failure is no hot loop.
            let now = Instant::now();
            active.deadline = now.checked_add(active.retry).unwrap_or(now);
            active.retry = (active.retry * 2).min(MAX_RETRY);
            self.active.insert(fault_id.to_string(), active);
            return Err(e);
        }
        match active.effect {
            Effect::Cpu(holder) | Effect::Memory { holder, .. } | Effect::Pause { guard: holder, .. } => holder.stop(),
            Effect::Orphan { file: Some(path), .. } => self
                .state
                .discard(&path)
                .map_err(FaultError::io("table removed, but its unreadable state file remains"))?,
            Effect::Latency
            | Effect::Blackout { .. }
            | Effect::Resume { .. }
            | Effect::Orphan { .. }
            | Effect::Gone => {}
        }
        self.state
            .remove(fault_id)
            .map_err(FaultError::io("fault removed, but its state record remains"))?;
        Ok(true)
    }

    /// Removes the faults matching `which`; the ids and owners of those removed.
    pub fn remove_where(&mut self, which: impl Fn(&str, &str, Instant) -> bool) -> Vec<(String, String)> {
        let ids: Vec<(String, String)> = self
            .active
            .iter()
            .filter(|(id, a)| which(id, &a.owner, a.deadline))
            .map(|(id, a)| (id.clone(), a.owner.clone()))
            .collect();
        ids.into_iter()
            .filter(|(id, owner)| match self.remove(id) {
                Ok(removed) => removed,
                Err(e) => {
                    tracing::error!(fault = %id, error = %e, "fault could not be removed");
                    let retry_at = self.active.get(id).map_or_else(Instant::now, |a| a.deadline);
                    self.failed.push(FailedRemoval {
                        fault_id: id.clone(),
                        owner: owner.clone(),
                        message: e.to_string(),
                        retry_at,
                    });
                    false
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

    /// Bytes that memory faults in effect have asked for and are still filling up.
    fn filling(&self) -> u64 {
        self.active
            .values()
            .map(|a| match &a.effect {
                Effect::Memory { bytes, filled, .. } if !filled.load(Ordering::Acquire) => *bytes,
                _ => 0,
            })
            .sum()
    }

    /// The earliest deadline of a fault in effect.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.active.values().map(|a| a.deadline).min()
    }

    /// Whether a fault in effect cuts this host off from its controller right now.
    pub fn cuts_control_plane(&self) -> bool {
        self.active.values().any(|a| a.cut)
    }
}

/// Whether `ip` is an address of this host (loopback, or one it can bind).
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind((ip, 0)).is_ok()
}

/// Answers a memory fault's apply once its holder says the memory is resident, or that it
/// failed; either way the fault stops counting as filling up.
fn watch_filling(
    stdout: ChildStdout,
    bytes: u64,
    filled: Arc<AtomicBool>,
    answer: oneshot::Sender<Outcome>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("memory-filling".into())
        .spawn(move || {
            let mut line = String::new();
            let ready = std::io::BufReader::new(stdout).read_line(&mut line).is_ok() && line.trim() == holder::READY;
            filled.store(true, Ordering::Release);
            let _ = answer.send(if ready {
                Outcome::Applied {
                    detail: format!("holding {} MiB resident", bytes >> 20),
                    pids: vec![],
                }
            } else {
                Outcome::Failed {
                    message: "the memory stress process ended before the memory was resident (removed, or killed for lack of memory)".into(),
                }
            });
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(name: &str) -> (Faults, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("fl-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let caps = Capabilities {
            kinds: faultline_agent::protocol::CAPABILITIES.into_iter().collect(),
            nft: false,
        };
        let config = Config {
            max_duration: Duration::from_secs(60),
            max_cut: Duration::from_secs(300),
            kill: kill::Policy::default(),
        };
        let f = Faults::new(
            caps,
            StateDir::open(&dir).unwrap(),
            Arc::new(Conditions::default()),
            config,
        );
        (f, dir)
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
                effect: Effect::Orphan {
                    table: "x".repeat(300),
                    file: None,
                },
                deadline: now,
                retry: FIRST_RETRY,
                cut: false,
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
            failed[0].message.contains("cannot remove blackout table"),
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
            kind: FaultKind::Blackout {
                allow: vec!["10.0.0.2".parse().unwrap()],
                keep_control_plane: false,
            },
        };
        let applied = f.apply("c1", spec, Some("10.255.0.1".parse().unwrap())).unwrap();
        assert!(matches!(applied, Applied::ThenCut(_)), "{applied:?}");
        assert!(
            !f.cuts_control_plane(),
            "leases keep running until the cut is installed"
        );
        let before = Instant::now();
        f.cut("e/a/h").unwrap();
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
            kind: FaultKind::Cpu {
                load_percent: 50,
                workers: 1,
            },
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
