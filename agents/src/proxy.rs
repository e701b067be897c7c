//! The sidecar TCP proxy in front of the host's service (`--proxy LISTEN=UPSTREAM`).
//!
//! It always forwards. During a latency fault it holds each chunk of each direction for
//! the delay (± jitter) before writing it on, and refuses a share of new connections;
//! during a blackout it refuses, and cuts, connections from peers outside the AZ. This is
//! how latency works on kernels without `netem`, and how a blackout holds without
//! CAP_NET_ADMIN. When the latency ends (or shrinks), what is already held is released at
//! once (or sooner). Buffers are bounded per connection and across all of them: a full
//! queue or a spent budget stops reading, which pushes back on the sender through TCP.

use ipnet::IpNet;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Chunks held per direction of a connection while delayed (16 KiB each).
const MAX_QUEUED_CHUNKS: usize = 64;
const CHUNK: usize = 16 * 1024;
/// Bytes held for delay across every connection of every proxy of the agent.
const QUEUE_BUDGET: usize = 64 << 20;
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What a fault asks of the proxy.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// Delay and refuse.
    Latency {
        /// Delay per direction.
        delay: Duration,
        /// Uniform jitter around it.
        jitter: Duration,
        /// Percent of new connections refused.
        loss_percent: f64,
        /// The peers it applies to; empty: every peer.
        sources: Vec<IpNet>,
    },
    /// Only these peers may connect, or all but those in `deny`.
    Blackout {
        /// Allowed peers.
        allow: Vec<IpAddr>,
        /// The networks refused (unless allowed); empty: every peer not allowed.
        deny: Vec<IpNet>,
    },
}

/// A latency as the proxy applies it.
#[derive(Debug, Clone, PartialEq)]
struct Latency {
    /// The fault it is the condition of: its delays are measured for it.
    fault_id: Arc<str>,
    delay: Duration,
    jitter: Duration,
    loss_percent: f64,
    sources: Vec<IpNet>,
}

impl Latency {
    fn applies_to(&self, peer: IpAddr) -> bool {
        self.sources.is_empty() || self.sources.iter().any(|n| n.contains(&peer))
    }
}

/// The effective conditions: the latencies, newest first (for each peer the newest that
/// names it wins), and every blackout's allow- and deny-lists.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    latencies: Vec<Latency>,
    blackouts: Vec<(Vec<IpAddr>, Vec<IpNet>)>,
}

impl Snapshot {
    /// Whether `peer` may talk through the proxy.
    pub fn allows(&self, peer: IpAddr) -> bool {
        self.blackouts
            .iter()
            .all(|(allow, deny)| allow.contains(&peer) || (!deny.is_empty() && !deny.iter().any(|n| n.contains(&peer))))
    }

    /// The latency `peer` sees: the newest that applies to it.
    fn latency(&self, peer: IpAddr) -> Option<&Latency> {
        self.latencies.iter().find(|l| l.applies_to(peer))
    }

    /// The delay without jitter: what held data is pulled in to when the latency shrinks.
    fn delay_without_jitter(&self, peer: IpAddr) -> Duration {
        self.latency(peer).map_or(Duration::ZERO, |l| l.delay)
    }

    fn delay(&self, peer: IpAddr, rng: &mut impl Rng) -> Duration {
        match self.latency(peer) {
            Some(l) if !l.jitter.is_zero() => {
                let j = rng.random_range(-(l.jitter.as_micros() as i64)..=l.jitter.as_micros() as i64);
                Duration::from_micros((l.delay.as_micros() as i64 + j).max(0) as u64)
            }
            Some(l) => l.delay,
            None => Duration::ZERO,
        }
    }

    fn refuses_new(&self, peer: IpAddr, rng: &mut impl Rng) -> bool {
        matches!(self.latency(peer), Some(l) if l.loss_percent > 0.0 && rng.random_range(0.0..100.0) < l.loss_percent)
    }
}

/// Conditions shared by every proxy of the agent, set and cleared by faults.
#[derive(Debug)]
pub struct Conditions {
    /// Each fault's condition, with the order it was set in: the newest latency wins.
    by_fault: Mutex<BTreeMap<String, (u64, Condition)>>,
    seq: AtomicU64,
    tx: watch::Sender<Arc<Snapshot>>,
    /// [`QUEUE_BUDGET`] in chunks: each chunk held for a delay takes one until it is written.
    queue_budget: Arc<Semaphore>,
    /// What each latency fault did: the delays the proxies really added.
    measured: Meter,
}

/// The delays each latency fault added, shared with every connection's pumps.
type Meter = Arc<Mutex<BTreeMap<Arc<str>, Delayed>>>;

/// Counts a chunk held for `fault_id` and written out; a connection counts once per fault
/// (`seen` holds the faults that already delayed it).
fn count(meter: &Meter, seen: &Mutex<BTreeSet<Arc<str>>>, fault_id: &Arc<str>, held: Duration) {
    let first = seen.lock().expect("not poisoned").insert(fault_id.clone());
    let mut m = meter.lock().expect("not poisoned");
    let d = m.entry(fault_id.clone()).or_default();
    d.connections += u64::from(first);
    d.chunks += 1;
    d.total += held;
}

/// The delays a latency added, as the proxies wrote the held data out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Delayed {
    /// Connections that had data held.
    pub connections: u64,
    /// Chunks held, and their total time held (arrival to write).
    pub chunks: u64,
    /// Sum of the chunks' delays.
    pub total: Duration,
}

impl Default for Conditions {
    fn default() -> Self {
        Conditions {
            by_fault: Mutex::new(BTreeMap::new()),
            seq: AtomicU64::new(0),
            tx: watch::Sender::new(Arc::new(Snapshot::default())),
            queue_budget: Arc::new(Semaphore::new(QUEUE_BUDGET / CHUNK)),
            measured: Meter::default(),
        }
    }
}

impl Conditions {
    /// Sets the condition of a fault, replacing any it had.
    pub fn set(&self, fault_id: &str, condition: Condition) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut map = self.by_fault.lock().expect("not poisoned");
        map.insert(fault_id.to_string(), (seq, condition));
        self.publish(&map);
    }

    /// What the latency of a fault has added so far.
    pub fn delayed(&self, fault_id: &str) -> Delayed {
        self.measured
            .lock()
            .expect("not poisoned")
            .get(fault_id)
            .copied()
            .unwrap_or_default()
    }

    /// Clears the condition of a fault; whether it had one.
    pub fn clear(&self, fault_id: &str) -> bool {
        let mut map = self.by_fault.lock().expect("not poisoned");
        let had = map.remove(fault_id).is_some();
        self.measured.lock().expect("not poisoned").remove(fault_id);
        if had {
            self.publish(&map);
        }
        had
    }

    fn publish(&self, map: &BTreeMap<String, (u64, Condition)>) {
        let mut latencies: Vec<(u64, Latency)> = map
            .iter()
            .filter_map(|(id, (seq, c))| match c {
                Condition::Latency {
                    delay,
                    jitter,
                    loss_percent,
                    sources,
                } => Some((
                    *seq,
                    Latency {
                        fault_id: id.as_str().into(),
                        delay: *delay,
                        jitter: *jitter,
                        loss_percent: *loss_percent,
                        sources: sources.clone(),
                    },
                )),
                Condition::Blackout { .. } => None,
            })
            .collect();
        latencies.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
        let latencies = latencies.into_iter().map(|(_, l)| l).collect();
        let blackouts = map
            .values()
            .filter_map(|(_, c)| match c {
                Condition::Blackout { allow, deny } => Some((allow.clone(), deny.clone())),
                Condition::Latency { .. } => None,
            })
            .collect();
        self.tx.send_replace(Arc::new(Snapshot { latencies, blackouts }));
    }

    fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.tx.subscribe()
    }
}

/// Serves one `LISTEN=UPSTREAM` pair until cancelled.
pub async fn serve(listener: TcpListener, upstream: String, conditions: Arc<Conditions>, cancel: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let upstream: Arc<str> = upstream.into();
    loop {
        let permit = tokio::select! {
            _ = cancel.cancelled() => return,
            p = slots.clone().acquire_owned() => p.expect("semaphore is never closed"),
        };
        let Some((client, peer)) = crate::net::accept(&listener, &cancel).await else {
            return;
        };
        let (upstream, conditions, cancel) = (upstream.clone(), conditions.clone(), cancel.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = cancel.cancelled() => {}
                r = connection(client, peer, &upstream, &conditions) => if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "proxied connection ended");
                },
            }
            drop(permit);
        });
    }
}

/// Why a connection was refused or cut.
#[derive(Debug, thiserror::Error)]
enum ProxyError {
    #[error("peer {0} is outside the blacked-out AZ")]
    Blocked(IpAddr),
    #[error("refused by the latency fault's loss")]
    Lost,
    #[error("upstream {0}: {1}")]
    Upstream(String, std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: &str,
    conditions: &Conditions,
) -> Result<(), ProxyError> {
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let snapshot = conditions.tx.borrow().clone();
    let connected = if !snapshot.allows(peer.ip()) {
        Err(ProxyError::Blocked(peer.ip()))
    } else if snapshot.refuses_new(peer.ip(), &mut rng) {
        Err(ProxyError::Lost)
    } else {
        tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(upstream))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            .map_err(|e| ProxyError::Upstream(upstream.into(), e))
    };
    let server = match connected {
        Ok(s) => s,
        Err(e) => {
            // A reset, not a polite close: the client sees the connection fail at once.
            let _ = client.set_zero_linger();
            return Err(e);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let seen = Arc::new(Mutex::new(BTreeSet::new()));
    let up = pump(
        cr,
        sw,
        conditions.subscribe(),
        conditions.queue_budget.clone(),
        peer.ip(),
        rand::rngs::SmallRng::from_rng(&mut rng),
        (conditions.measured.clone(), seen.clone()),
    );
    let down = pump(
        sr,
        cw,
        conditions.subscribe(),
        conditions.queue_budget.clone(),
        peer.ip(),
        rng,
        (conditions.measured.clone(), seen),
    );
    tokio::try_join!(up, down).map(|_| ())
}

/// A chunk held for its delay: when it arrived, when it goes out, and its share of the
/// queue budget.
struct Held {
    /// The latency fault that held it.
    fault_id: Arc<str>,
    arrived: Instant,
    release: Instant,
    data: Vec<u8>,
    _budget: OwnedSemaphorePermit,
}

/// Copies one direction, holding chunks for the current delay; ends when the reader is done
/// and everything queued is written, or when the peer becomes blocked.
async fn pump(
    mut reader: impl AsyncReadExt + Unpin,
    mut writer: impl AsyncWriteExt + Unpin,
    mut conditions: watch::Receiver<Arc<Snapshot>>,
    budget: Arc<Semaphore>,
    peer: IpAddr,
    mut rng: impl Rng,
    (meter, seen): (Meter, Arc<Mutex<BTreeSet<Arc<str>>>>),
) -> Result<(), ProxyError> {
    let mut buf = vec![0u8; CHUNK];
    let mut queue: VecDeque<Held> = VecDeque::new();
    let mut last_release = Instant::now();
    let mut snapshot = conditions.borrow_and_update().clone();
    let mut eof = false;
    // A chunk read while the budget was spent: no more reading until it has its share.
    let mut stalled: Option<(Arc<str>, Instant, Instant, Vec<u8>)> = None;
    loop {
        if !snapshot.allows(peer) {
            return Err(ProxyError::Blocked(peer));
        }
        if eof && queue.is_empty() {
            writer.shutdown().await?;
            return Ok(());
        }
        let head = queue.front().map(|h| h.release);
        // A chunk waiting for budget with nothing ahead of it goes out at its release without
        // ever taking budget: a removed latency must not wait on other connections' data.
        let stalled_due = stalled
            .as_ref()
            .filter(|_| queue.is_empty())
            .map(|(_, _, release, _)| *release);
        let may_read = !eof && stalled.is_none() && queue.len() < MAX_QUEUED_CHUNKS;
        tokio::select! {
            r = reader.read(&mut buf), if may_read => {
                let n = r?;
                if n == 0 {
                    eof = true;
                    continue;
                }
                let delay = snapshot.delay(peer, &mut rng);
                let fault_id = snapshot.latency(peer).map_or_else(|| Arc::from(""), |l| l.fault_id.clone());
                if delay.is_zero() && queue.is_empty() {
                    writer.write_all(&buf[..n]).await?;
                } else {
                    let arrived = Instant::now();
                    // Never release before an earlier chunk: jitter must not reorder a stream.
                    last_release = last_release.max(arrived + delay);
                    let data = buf[..n].to_vec();
                    match budget.clone().try_acquire_owned() {
                        Ok(share) => queue.push_back(Held { fault_id, arrived, release: last_release, data, _budget: share }),
                        Err(_) => stalled = Some((fault_id, arrived, last_release, data)),
                    }
                }
            }
            share = budget.clone().acquire_owned(), if stalled.is_some() => {
                if let Some((fault_id, arrived, release, data)) = stalled.take() {
                    let share = share.expect("the budget is never closed");
                    queue.push_back(Held { fault_id, arrived, release, data, _budget: share });
                }
            }
            _ = tokio::time::sleep_until(stalled_due.unwrap_or_else(Instant::now)), if stalled_due.is_some() => {
                if let Some((fault_id, arrived, _, data)) = stalled.take() {
                    writer.write_all(&data).await?;
                    if !fault_id.is_empty() {
                        count(&meter, &seen, &fault_id, arrived.elapsed());
                    }
                }
            }
            _ = tokio::time::sleep_until(head.unwrap_or_else(Instant::now)), if head.is_some() => {
                if let Some(held) = queue.pop_front() {
                    writer.write_all(&held.data).await?;
                    if !held.fault_id.is_empty() {
                        count(&meter, &seen, &held.fault_id, held.arrived.elapsed());
                    }
                }
            }
            r = conditions.changed() => {
                if r.is_err() {
                    return Ok(());
                }
                snapshot = conditions.borrow_and_update().clone();
                let delay = snapshot.delay_without_jitter(peer);
                last_release = pull_in(&mut queue, delay).unwrap_or_else(Instant::now);
                if let Some((_, arrived, release, _)) = &mut stalled {
                    *release = (*release).min(*arrived + delay);
                    last_release = *release;
                }
            }
        }
    }
}

/// Brings each held chunk's release forward to its arrival plus `delay` when that is sooner
/// (a removed latency releases everything at once); returns the last release. Arrivals are
/// in order, so the releases stay in order.
fn pull_in(queue: &mut VecDeque<Held>, delay: Duration) -> Option<Instant> {
    for held in queue.iter_mut() {
        held.release = held.release.min(held.arrived + delay);
    }
    queue.back().map(|h| h.release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_latency_wins_and_blackouts_intersect() {
        let c = Conditions::default();
        let lat = |ms| Condition::Latency {
            delay: Duration::from_millis(ms),
            jitter: Duration::ZERO,
            loss_percent: 0.0,
            sources: vec![],
        };
        c.set("a", lat(100));
        c.set("b", lat(200));
        let peer: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(
            c.subscribe().borrow().delay_without_jitter(peer),
            Duration::from_millis(200)
        );
        c.clear("b");
        assert_eq!(
            c.subscribe().borrow().delay_without_jitter(peer),
            Duration::from_millis(100)
        );
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        c.set(
            "x",
            Condition::Blackout {
                allow: vec![a, b],
                deny: vec![],
            },
        );
        c.set(
            "y",
            Condition::Blackout {
                allow: vec![a],
                deny: vec![],
            },
        );
        let s = c.subscribe().borrow().clone();
        assert!(s.allows(a) && !s.allows(b));
        assert!(c.clear("x") && c.clear("y") && !c.clear("y"));
        assert!(c.subscribe().borrow().allows(b));
        // A deny-list refuses its networks only, and never an allowed peer in them.
        let other: IpAddr = "10.1.0.5".parse().unwrap();
        c.set(
            "z",
            Condition::Blackout {
                allow: vec![a],
                deny: vec!["10.1.0.0/16".parse().unwrap(), "10.0.0.0/24".parse().unwrap()],
            },
        );
        let s = c.subscribe().borrow().clone();
        assert!(s.allows(a) && !s.allows(b) && !s.allows(other));
        assert!(s.allows("10.2.0.1".parse().unwrap()), "outside the denied networks");
    }

    #[test]
    fn a_smaller_delay_pulls_held_chunks_in_and_keeps_their_order() {
        let budget = Arc::new(Semaphore::new(4));
        let t0 = Instant::now();
        let mut queue: VecDeque<Held> = (0..3u64)
            .map(|i| Held {
                fault_id: "l".into(),
                arrived: t0 + Duration::from_millis(10 * i),
                release: t0 + Duration::from_secs(2) + Duration::from_millis(10 * i),
                data: vec![],
                _budget: budget.clone().try_acquire_owned().unwrap(),
            })
            .collect();
        assert_eq!(
            pull_in(&mut queue, Duration::from_secs(5)),
            Some(t0 + Duration::from_millis(2020))
        );
        assert_eq!(
            pull_in(&mut queue, Duration::ZERO),
            Some(t0 + Duration::from_millis(20))
        );
        let releases: Vec<Instant> = queue.iter().map(|h| h.release).collect();
        assert!(releases.is_sorted() && releases[0] == t0, "{releases:?}");
        assert_eq!(budget.available_permits(), 1);
        queue.clear();
        assert_eq!(budget.available_permits(), 4, "released chunks give their budget back");
    }

    #[tokio::test]
    async fn a_spent_budget_holds_each_chunk_to_its_release_and_loses_none() {
        let c = Conditions::default();
        c.set(
            "l",
            Condition::Latency {
                delay: Duration::from_millis(200),
                jitter: Duration::ZERO,
                loss_percent: 0.0,
                sources: vec![],
            },
        );
        let budget = Arc::new(Semaphore::new(1));
        // Another connection holds the whole budget.
        let other = budget.clone().try_acquire_owned().unwrap();
        let (mut client, proxy_in) = tokio::io::duplex(1024);
        let (proxy_out, mut server) = tokio::io::duplex(1024);
        let peer = "10.0.0.1".parse().unwrap();
        let rng = rand::rngs::SmallRng::seed_from_u64(1);
        let meter = (c.measured.clone(), Arc::default());
        let pumping = tokio::spawn(pump(
            proxy_in,
            proxy_out,
            c.subscribe(),
            budget.clone(),
            peer,
            rng,
            meter,
        ));
        let sent = Instant::now();
        client.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"one");
        assert!(
            sent.elapsed() >= Duration::from_millis(200),
            "released before its delay"
        );
        assert_eq!(budget.available_permits(), 0, "it never took the spent budget");
        drop(other);
        drop(client);
        pumping.await.unwrap().unwrap();
        assert_eq!(budget.available_permits(), 1, "the budget is whole again");
        let d = c.delayed("l");
        assert_eq!((d.connections, d.chunks), (1, 1), "{d:?}");
        assert!(d.total >= Duration::from_millis(200), "measured the delay added: {d:?}");
        assert_eq!(c.delayed("other"), Delayed::default());
    }

    #[tokio::test]
    async fn a_removed_latency_releases_a_chunk_that_waits_for_budget() {
        let c = Conditions::default();
        c.set(
            "l",
            Condition::Latency {
                delay: Duration::from_secs(30),
                jitter: Duration::ZERO,
                loss_percent: 0.0,
                sources: vec![],
            },
        );
        let budget = Arc::new(Semaphore::new(1));
        let _other = budget.clone().try_acquire_owned().unwrap();
        let (mut client, proxy_in) = tokio::io::duplex(1024);
        let (proxy_out, mut server) = tokio::io::duplex(1024);
        let peer = "10.0.0.1".parse().unwrap();
        let rng = rand::rngs::SmallRng::seed_from_u64(1);
        let meter = (c.measured.clone(), Arc::default());
        let _pumping = tokio::spawn(pump(
            proxy_in,
            proxy_out,
            c.subscribe(),
            budget.clone(),
            peer,
            rng,
            meter,
        ));
        client.write_all(b"one").await.unwrap();
        let mut got = [0u8; 3];
        let early = tokio::time::timeout(Duration::from_millis(300), server.read_exact(&mut got)).await;
        assert!(early.is_err(), "data went out before its delay");
        c.clear("l");
        let at_once = tokio::time::timeout(Duration::from_secs(2), server.read_exact(&mut got)).await;
        assert!(at_once.is_ok(), "the removed latency still holds the chunk");
        assert_eq!(&got, b"one");
    }

    #[test]
    fn a_latency_with_sources_delays_only_their_peers() {
        let c = Conditions::default();
        c.set(
            "all",
            Condition::Latency {
                delay: Duration::from_millis(50),
                jitter: Duration::ZERO,
                loss_percent: 0.0,
                sources: vec![],
            },
        );
        c.set(
            "some",
            Condition::Latency {
                delay: Duration::from_millis(300),
                jitter: Duration::ZERO,
                loss_percent: 0.0,
                sources: vec!["127.0.0.2/32".parse().unwrap(), "10.1.0.0/16".parse().unwrap()],
            },
        );
        let s = c.subscribe().borrow().clone();
        let at = |ip: &str| s.delay_without_jitter(ip.parse().unwrap());
        assert_eq!(at("127.0.0.2"), Duration::from_millis(300));
        assert_eq!(at("10.1.200.3"), Duration::from_millis(300));
        assert_eq!(
            at("127.0.0.3"),
            Duration::from_millis(50),
            "an older latency for all still applies"
        );
        c.clear("all");
        let s = c.subscribe().borrow().clone();
        assert_eq!(s.delay_without_jitter("127.0.0.3".parse().unwrap()), Duration::ZERO);
    }

    #[test]
    fn jitter_stays_around_the_delay() {
        let s = Snapshot {
            latencies: vec![Latency {
                fault_id: "l".into(),
                delay: Duration::from_millis(100),
                jitter: Duration::from_millis(20),
                loss_percent: 0.0,
                sources: vec![],
            }],
            blackouts: vec![],
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let peer = "10.0.0.1".parse().unwrap();
        for _ in 0..1000 {
            let d = s.delay(peer, &mut rng);
            assert!(
                d >= Duration::from_millis(80) && d <= Duration::from_millis(120),
                "{d:?}"
            );
        }
    }
}
