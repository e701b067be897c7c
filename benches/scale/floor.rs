//! The loopback floor: what this machine's kernel alone costs any program that sends one
//! request to each of N loopback TCP connections and waits for every answer. Measured just
//! after the simulated fleets, so each fan-out figure has its physical bound next to it.
//!
//! The bench starts itself again as `scale floor ADDR N`: one process, one current-thread
//! tokio runtime, one task per connection, which answers each request at once (the fleet's
//! shape). This side holds one task per connection on the bench's runtime (the controller's
//! shape). Frames are raw bytes behind a length prefix: no websocket, no JSON, no journal.
//! A round is three exchanges with the sizes of a faultline round's commands and acks (an
//! apply, a remove, a remove-all), each one finished on every connection before the next.

use crate::{Bench, Kill, Row};
use faultline_agent::faults::{cpu, FaultKind};
use faultline_agent::protocol::{AgentMessage, ControllerMessage, FaultSpec, Frame, Outcome};
use std::net::{Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};

/// Connections sharing one source address (each address has its own ephemeral ports).
const PER_ADDRESS: usize = 1_000;
/// Connects in flight at once, below [`BACKLOG`]: an overflowing accept queue drops
/// handshakes' last ACKs, leaving connections the dialer thinks open and the bench never sees.
const DIALING: usize = 256;
/// The listener's accept queue (`TcpListener::bind` gave 128 here).
const BACKLOG: u32 = 1024;
/// A frame's header: the body's length, then the length of the answer asked for (0 in an
/// answer), both u32 little-endian.
const HEADER: usize = 8;
/// Longest any exchange may take before the bench gives up on the child.
const PATIENCE: Duration = Duration::from_secs(60);

/// One exchange's request and answer sizes, from the real frames of a simulated round.
struct Exchange {
    /// The request as written: header and the encoded command's text.
    request: Vec<u8>,
    /// Body bytes of the answer (the encoded ack's length).
    answer: usize,
}

/// The three exchanges of a round: apply, remove and remove-all, with the acks the fleet
/// sends for them. Ids are as long as the bench's: `EXP` + 12 hex digits, action `Hold`,
/// host `s0-00001`.
fn exchanges() -> Vec<Exchange> {
    let run = "EXP0123456789ab";
    let fault_id = format!("{run}/Hold/s0-00001");
    let apply = ControllerMessage::Apply {
        fault: FaultSpec {
            fault_id: fault_id.clone(),
            duration_ms: Some(300_000),
            kind: FaultKind::Cpu(cpu::Params {
                load_percent: 1,
                workers: 1,
            }),
        },
    };
    let applied = Outcome::Applied {
        detail: "recorded (simulated agent)".into(),
        pids: Vec::new(),
    };
    let removed = |count| Outcome::Removed { count, observed: None };
    let commands = [
        (apply, applied),
        (ControllerMessage::Remove { fault_id }, removed(1)),
        (
            ControllerMessage::RemoveAll {
                experiment: Some(run.into()),
            },
            removed(0),
        ),
    ];
    commands
        .into_iter()
        .enumerate()
        .map(|(i, (command, outcome))| {
            let id = 10 + i as u64;
            let body = Frame::new(id, command).encode();
            let ack = Frame::new(id, AgentMessage::Ack { re: id, outcome }).encode();
            let mut request = header(body.len(), ack.len()).to_vec();
            request.extend_from_slice(body.as_bytes());
            Exchange {
                request,
                answer: ack.len(),
            }
        })
        .collect()
}

fn header(body: usize, answer: usize) -> [u8; HEADER] {
    let mut header = [0; HEADER];
    header[..4].copy_from_slice(&(body as u32).to_le_bytes());
    header[4..].copy_from_slice(&(answer as u32).to_le_bytes());
    header
}

/// Reads one whole frame into `buf` (header included), in one read when it arrived whole;
/// false at the end of the stream. One frame at most is in flight per connection.
async fn read_frame(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<bool> {
    buf.clear();
    loop {
        if buf.len() >= HEADER {
            let body = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
            if buf.len() >= HEADER + body {
                return Ok(true);
            }
        }
        if stream.read_buf(buf).await? == 0 {
            return Ok(false);
        }
    }
}

/// The answer length a request asks for.
fn asked(frame: &[u8]) -> usize {
    u32::from_le_bytes(frame[4..HEADER].try_into().expect("4 bytes")) as usize
}

/// Measures the floor at 1,000 and 10,000 connections, as many rounds as the simulated
/// fan-out.
pub(crate) async fn run(bench: &mut Bench) {
    for n in [1_000, 10_000] {
        floor(bench, n).await;
    }
}

async fn floor(bench: &mut Bench, n: usize) {
    eprintln!("loopback floor: {n} connections");
    let exchanges = Arc::new(exchanges());
    let listener = TcpSocket::new_v4().expect("socket");
    listener.bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let listener = listener.listen(BACKLOG).expect("listen");
    let addr = listener.local_addr().expect("address");
    let child = Command::new(std::env::current_exe().expect("own path"))
        .arg("floor")
        .arg(addr.to_string())
        .arg(n.to_string())
        .stdout(Stdio::null())
        .spawn()
        .expect("the floor's answering process");
    let child = Kill(vec![child]);
    let pid = child.0[0].id().to_string();

    let (go, _) = watch::channel(0usize);
    let left = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let accept = async {
        for _ in 0..n {
            let (stream, _) = listener.accept().await.expect("accept");
            let _ = stream.set_nodelay(true);
            tokio::spawn(connection(
                stream,
                go.subscribe(),
                exchanges.clone(),
                left.clone(),
                done.clone(),
            ));
        }
    };
    tokio::time::timeout(Duration::from_secs(300), accept)
        .await
        .expect("every connection of the floor within 5 minutes");

    let rounds = bench.reps(5, 20);
    let (mut times, mut own_cpu, mut child_cpu) = (Vec::new(), Vec::new(), Vec::new());
    // Round 0 is a warm-up, not counted: the simulated fleets are warmed by their idle window.
    for round in 0..=rounds {
        let (own, theirs) = (crate::stats::cpu_time("self"), crate::stats::cpu_time(&pid));
        let mut first = Duration::ZERO;
        for k in 0..exchanges.len() {
            left.store(n, Ordering::Release);
            let t = Instant::now();
            go.send_replace(k);
            tokio::time::timeout(PATIENCE, done.notified())
                .await
                .expect("every answer of an exchange within a minute");
            if k == 0 {
                first = t.elapsed();
            }
        }
        if round > 0 {
            let per_exchange = |d: Duration| d.as_secs_f64() * 1000.0 / exchanges.len() as f64;
            times.push(first.as_secs_f64() * 1000.0);
            own_cpu.push(per_exchange(crate::stats::cpu_time("self").saturating_sub(own)));
            child_cpu.push(per_exchange(crate::stats::cpu_time(&pid).saturating_sub(theirs)));
        }
    }
    drop(child);

    let sizes = |f: fn(&Exchange) -> usize| exchanges.iter().map(|e| f(e).to_string()).collect::<Vec<_>>().join("/");
    bench.row(
        format!("loopback floor: one exchange with {n} connections"),
        "ms",
        &times,
        format!(
            "first write -> last answer; {} B out, {} B back (apply/remove/remove-all and acks, headers included)",
            sizes(|e| e.request.len()),
            sizes(|e| HEADER + e.answer),
        ),
    );
    bench.row(
        format!("loopback floor: sender CPU per exchange, {n} connections"),
        "ms",
        &own_cpu,
        "this process, 2 workers, a task per connection",
    );
    bench.row(
        format!("loopback floor: answerer CPU per exchange, {n} connections"),
        "ms",
        &child_cpu,
        "the child, current-thread, a task per connection",
    );
}

/// One connection of the sending side: on each signal, writes that exchange's request and
/// reads the answer; the last connection to finish wakes the round.
async fn connection(
    mut stream: TcpStream,
    mut go: watch::Receiver<usize>,
    exchanges: Arc<Vec<Exchange>>,
    left: Arc<AtomicUsize>,
    done: Arc<Notify>,
) {
    let mut buf = Vec::with_capacity(256);
    while go.changed().await.is_ok() {
        let k = *go.borrow_and_update();
        if stream.write_all(&exchanges[k].request).await.is_err() {
            return;
        }
        if !matches!(read_frame(&mut stream, &mut buf).await, Ok(true)) {
            return;
        }
        if left.fetch_sub(1, Ordering::AcqRel) == 1 {
            done.notify_one();
        }
    }
}

/// After the simulated fleets: each fan-out over its floor, and the floor appended to the
/// simulated fan-out targets.
pub(crate) fn compare(bench: &mut Bench) {
    for n in [1_000, 10_000] {
        // The row names of `simulated()` in main.rs and of `floor()` above.
        let find = |figure: String| bench.rows.iter().find(|r| r.figure == figure).map(|r| r.summary);
        let (Some(fan), Some(floor)) = (
            find(format!("fan-out, {n} simulated agents")),
            find(format!("loopback floor: one exchange with {n} connections")),
        ) else {
            continue;
        };
        bench.rows.push(Row {
            figure: format!("fan-out / loopback floor, {n}"),
            unit: "x",
            summary: crate::stats::Summary {
                min: fan.min / floor.min,
                median: fan.median / floor.median,
                p99: fan.p99 / floor.p99,
            },
            against: "each column: the simulated fan-out's over the floor's".into(),
        });
        let name = if n == 1_000 {
            "fanout-1000-sim"
        } else {
            "fanout-10000-sim"
        };
        if let Some(t) = bench.targets.iter_mut().find(|t| t.name == name) {
            t.goal = format!("{}; loopback floor p99 {} ms", t.goal, crate::format_num(floor.p99));
        }
    }
}

/// The answering side (`scale floor ADDR N`): dials N connections and answers every request
/// at once, until the bench kills it.
pub(crate) fn main(args: &[String]) {
    let [addr, count] = args else {
        eprintln!("usage: scale floor ADDR COUNT");
        std::process::exit(2);
    };
    let addr: SocketAddr = addr.parse().expect("address");
    let count: usize = count.parse().expect("count");
    assert!(count / PER_ADDRESS < 256, "at most 255 source addresses");
    crate::stats::raise_nofile();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let dialing = Arc::new(Semaphore::new(DIALING));
            let tasks: Vec<_> = (0..count)
                .map(|i| {
                    let source = Ipv4Addr::new(127, 3, (i / PER_ADDRESS) as u8, 1);
                    tokio::spawn(answer(source, addr, dialing.clone()))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
        });
}

/// One connection of the answering side.
async fn answer(source: Ipv4Addr, addr: SocketAddr, dialing: Arc<Semaphore>) {
    let permit = dialing.acquire().await.expect("never closed");
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .unwrap_or_else(|e| panic!("bind {source}: {e}"));
    let mut stream = socket.connect(addr).await.expect("connect to the bench");
    drop(permit);
    let _ = stream.set_nodelay(true);
    let (mut buf, mut out) = (Vec::with_capacity(512), Vec::with_capacity(256));
    while let Ok(true) = read_frame(&mut stream, &mut buf).await {
        let len = asked(&buf);
        out.clear();
        out.extend_from_slice(&header(len, 0));
        out.resize(HEADER + len, 0);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}
