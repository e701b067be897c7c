//! The faults an agent injects, and the table of those in effect.
//!
//! Every fault with a duration is recorded in the state directory before it takes effect
//! and forgotten only once it is removed. Removal is the same code whatever asks for it:
//! the controller, the end of the duration, a lapsed lease, or shutdown.

pub mod cpu;
pub mod kill;
pub mod memory;
pub mod nft;

use crate::holder::{self, Deadline, Holder, Work};
use crate::proxy::{Condition, Conditions};
use crate::state::{fnv1a, Record, StateDir};
use faultline_agent::protocol::{FaultKind, FaultSpec, HeldFault, Outcome};
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::net::IpAddr;
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
}

#[derive(Debug)]
struct Active {
    owner: String,
    effect: Effect,
    deadline: Instant,
    cuts_control_plane: bool,
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

/// Why a fault could not be applied, cut or removed; its message goes to the controller.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    /// A fault that lasts arrived without a duration.
    #[error("a `{0}` fault needs a duration")]
    NoDuration(&'static str),
    /// No process was signalled.
    #[error(transparent)]
    Kill(#[from] kill::KillError),
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
    state: StateDir,
    conditions: Arc<Conditions>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Faults {
    /// An empty table.
    pub fn new(caps: Capabilities, state: StateDir, conditions: Arc<Conditions>) -> Self {
        Faults {
            active: BTreeMap::new(),
            caps,
            state,
            conditions,
        }
    }

    /// The capabilities registered with the controller.
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Takes away what a previous life of this agent left in the state dir. Returns the
    /// records undone, so their owners can be told.
    pub fn recover(&self) -> std::io::Result<Vec<Record>> {
        let (records, unreadable) = self.state.leftovers()?;
        for path in unreadable {
            tracing::warn!(path = %path.display(), "discarding an unreadable state file");
            self.state.discard(&path)?;
        }
        for r in &records {
            if let Some(table) = &r.nft_table {
                nft::remove(table).map_err(|e| {
                    std::io::Error::other(format!("cannot remove blackout table {table} of {}: {e}", r.fault_id))
                })?;
            }
            self.state.remove(&r.fault_id)?;
            tracing::warn!(fault = %r.fault_id, kind = %r.kind, "removed a fault left by the previous run of this agent");
        }
        Ok(records)
    }

    /// Applies a fault for `owner`. `controller` is the controller's address, kept reachable
    /// by a blackout that keeps the control plane.
    pub fn apply(&mut self, owner: &str, spec: FaultSpec, controller: Option<IpAddr>) -> Result<Applied, NotAllowed> {
        let capability = spec.kind.capability();
        if !self.caps.kinds.contains(capability) {
            return Err(NotAllowed {
                capability,
                available: self.caps.kinds.iter().copied().collect::<Vec<_>>().join(", "),
            });
        }
        if self.active.contains_key(&spec.fault_id) {
            return Ok(Applied::Now(Outcome::Applied {
                detail: "already in effect".into(),
                pids: vec![],
            }));
        }
        if let FaultKind::Kill { process_name, signal } = &spec.kind {
            // Nothing to take away afterwards, so nothing to record.
            return Ok(Applied::Now(match kill::kill(process_name, signal) {
                Ok(pids) => Outcome::Applied {
                    detail: format!(
                        "sent {signal} to {} process{} named {process_name}",
                        pids.len(),
                        if pids.len() == 1 { "" } else { "es" }
                    ),
                    pids,
                },
                Err(e) => Outcome::Failed { message: e.to_string() },
            }));
        }
        let Some(duration_ms) = spec.duration_ms else {
            return Ok(Applied::Now(Outcome::Failed {
                message: FaultError::NoDuration(capability).to_string(),
            }));
        };
        let hash = format!("{:016x}", fnv1a(spec.fault_id.as_bytes()));
        let nft_table = match (&spec.kind, self.caps.nft) {
            (FaultKind::Blackout { .. }, true) => Some(format!("fl_{hash}")),
            _ => None,
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
        let duration = Duration::from_millis(duration_ms);
        let deadline = Instant::now() + duration;
        // Holders end on their own at the deadline, even if this agent is gone by then.
        let until = Deadline::after(duration);
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
                    Some(t) => nft::install(t, &allow, duration)
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
            FaultKind::Kill { .. } => unreachable!("handled above"),
        };
        match effect {
            Ok(effect) => {
                let cuts_control_plane = matches!(
                    spec.kind,
                    FaultKind::Blackout {
                        keep_control_plane: false,
                        ..
                    }
                );
                self.active.insert(
                    spec.fault_id.clone(),
                    Active {
                        owner: owner.to_string(),
                        effect,
                        deadline,
                        cuts_control_plane,
                    },
                );
                let outcome = Outcome::Applied {
                    detail: format!("{capability} in effect for {duration_ms} ms"),
                    pids: vec![],
                };
                Ok(match later {
                    Some(rx) => Applied::Later(rx),
                    None if cuts_control_plane => Applied::ThenCut(outcome),
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

    /// Cuts the control plane of a blackout applied with [`Applied::ThenCut`].
    pub fn cut(&mut self, fault_id: &str) -> Result<(), FaultError> {
        let Some(Active {
            effect: Effect::Blackout { nft_table, cut },
            deadline,
            ..
        }) = self.active.get_mut(fault_id)
        else {
            return Ok(());
        };
        let Some(strict) = cut.take() else { return Ok(()) };
        if let Some(t) = nft_table {
            let left = deadline.saturating_duration_since(Instant::now());
            nft::replace(t, &strict, left).map_err(FaultError::io("cannot cut the control plane"))?;
        }
        self.conditions.set(fault_id, Condition::Blackout { allow: strict });
        Ok(())
    }

    /// Removes one fault; `Ok(false)` when it was not in effect.
    pub fn remove(&mut self, fault_id: &str) -> Result<bool, FaultError> {
        let Some(active) = self.active.remove(fault_id) else {
            return Ok(false);
        };
        self.conditions.clear(fault_id);
        if let Effect::Blackout {
            nft_table: Some(table), ..
        } = &active.effect
        {
            if let Err(e) = nft::remove(table) {
                let e = FaultError::Io {
                    what: format!("cannot remove blackout table {table}"),
                    source: e,
                };
                // Keep it, and its record, so a retry or a restart takes it away.
                self.active.insert(fault_id.to_string(), active);
                return Err(e);
            }
        }
        match active.effect {
            Effect::Cpu(holder) | Effect::Memory { holder, .. } => holder.stop(),
            Effect::Latency | Effect::Blackout { .. } => {}
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
            .filter(|(id, _)| match self.remove(id) {
                Ok(removed) => removed,
                Err(e) => {
                    tracing::error!(fault = %id, error = %e, "fault could not be removed");
                    false
                }
            })
            .collect()
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

    /// Whether a fault in effect cuts this host off from its controller.
    pub fn cuts_control_plane(&self) -> bool {
        self.active.values().any(|a| a.cuts_control_plane)
    }
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
