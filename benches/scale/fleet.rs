//! The fleet simulator: N agents in one process, each one task on one connection, speaking
//! the real protocol through the agent library (hello, the controller's proof checked,
//! registration with this agent's proof, welcome, heartbeats answered, every command
//! acknowledged). Faults are recorded, not applied, so what is measured is the controller.
//!
//! Each agent dials from its own loopback source address in groups of [`PER_ADDRESS`], as
//! hosts of a fleet would, so the controller's per-address handshake limit sees a fleet and
//! not one flooding peer; at most [`DIALING`] handshakes run at once, as jittered agents
//! would spread them.

use faultline_agent::auth::{self, Role};
use faultline_agent::protocol::{
    decode, AgentInfo, AgentMessage, ControllerMessage, Frame, HostDescription, Outcome, Placement, AGENT_PATH,
};
use futures_util::{SinkExt, StreamExt};
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

/// Agents sharing one source address (below the controller's 64 handshakes per address).
const PER_ADDRESS: usize = 50;
/// Handshakes in flight at once (below the controller's 1024).
const DIALING: usize = 256;
/// The lease the simulated agents register, the real agent's default.
const LEASE_MS: u64 = 10_000;

/// The simulated fleet's settings, from the command line of `scale fleet`.
pub(crate) struct Settings {
    pub controller: SocketAddr,
    pub token: Arc<str>,
    pub count: usize,
    /// Host ids are `{prefix}{index}`.
    pub prefix: String,
}

/// Runs the fleet on a current-thread runtime until the process is killed.
pub(crate) fn main(args: &[String]) {
    let [controller, token_file, count, prefix] = args else {
        eprintln!("usage: scale fleet CONTROLLER_ADDR TOKEN_FILE COUNT HOST_PREFIX");
        std::process::exit(2);
    };
    let token = std::fs::read_to_string(token_file).expect("token file");
    let settings = Settings {
        controller: controller.parse().expect("controller address"),
        token: token.trim().into(),
        count: count.parse().expect("count"),
        prefix: prefix.clone(),
    };
    crate::stats::raise_nofile();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(run(settings));
}

async fn run(s: Settings) {
    let dialing = Arc::new(Semaphore::new(DIALING));
    let mut tasks = Vec::with_capacity(s.count);
    for i in 0..s.count {
        let group = i / PER_ADDRESS;
        let source = Ipv4Addr::new(127, 2 + (group / 250) as u8, (group % 250) as u8, 1);
        let host = format!("{}{i:05}", s.prefix);
        tasks.push(tokio::spawn(agent(
            host,
            source,
            s.controller,
            s.token.clone(),
            dialing.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// One simulated agent: dials until registered, serves the connection, dials again when it drops.
async fn agent(host: String, source: Ipv4Addr, controller: SocketAddr, token: Arc<str>, dialing: Arc<Semaphore>) {
    let mut wait = Duration::from_millis(50);
    loop {
        let permit = dialing.acquire().await.expect("never closed");
        let connected = tokio::time::timeout(Duration::from_secs(10), dial(&host, source, controller, &token)).await;
        drop(permit);
        match connected {
            Ok(Ok(ws)) => {
                wait = Duration::from_millis(50);
                serve(ws).await;
            }
            Ok(Err(e)) => debug(&host, &e),
            Err(_) => debug(&host, "dial timed out"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(2));
    }
}

fn debug(host: &str, why: &str) {
    if std::env::var_os("FAULTLINE_SCALE_DEBUG").is_some() {
        eprintln!("fleet: {host}: {why}");
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

fn config() -> WebSocketConfig {
    // Frames are small: small buffers keep 10,000 connections in little memory.
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(faultline_agent::protocol::MAX_FRAME_BYTES))
}

async fn dial(host: &str, source: Ipv4Addr, controller: SocketAddr, token: &str) -> Result<Ws, String> {
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind(SocketAddr::new(source.into(), 0))
        .map_err(|e| format!("bind {source}: {e}"))?;
    let tcp = socket.connect(controller).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let url = format!("ws://{controller}{AGENT_PATH}");
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config()))
        .await
        .map_err(|e| e.to_string())?;
    let dialed = auth::address(controller);
    let agent_nonce = auth::nonce();
    let hello = AgentMessage::Hello {
        nonce: agent_nonce.clone(),
        dialed: dialed.clone(),
    };
    send(&mut ws, Frame::new(1, hello)).await?;
    let (controller_nonce, proof) = match next(&mut ws).await? {
        ControllerMessage::Challenge { nonce, proof } => (nonce, proof),
        other => return Err(format!("expected a challenge, got {other:?}")),
    };
    let transcript = auth::Transcript {
        agent_nonce: &agent_nonce,
        controller_nonce: &controller_nonce,
        dialed: &dialed,
    };
    if !auth::verify(token, Role::Controller, &transcript, &proof) {
        return Err("the controller did not prove the token".into());
    }
    let register = AgentMessage::Register {
        proof: auth::prove(token, Role::Agent, &transcript),
        host: HostDescription {
            host_id: host.to_string(),
            placement: Placement {
                availability_zone: ["az-a", "az-b", "az-c"][host.len() % 3].into(),
            },
            state: Default::default(),
            tags: [("tier".to_string(), "web".to_string())].into(),
            address: source.to_string(),
            agent: AgentInfo {
                version: "sim".into(),
                capabilities: faultline_agent::protocol::CAPABILITIES
                    .iter()
                    .map(|c| c.to_string())
                    .collect(),
            },
        },
        lease_ms: LEASE_MS,
        instance: format!("{:016x}", rand::random::<u64>()),
        held: Vec::new(),
    };
    send(&mut ws, Frame::new(2, register)).await?;
    match next(&mut ws).await? {
        ControllerMessage::Welcome { .. } => Ok(ws),
        other => Err(format!("expected a welcome, got {other:?}")),
    }
}

async fn send(ws: &mut Ws, frame: Frame<AgentMessage>) -> Result<(), String> {
    ws.send(Message::text(frame.encode())).await.map_err(|e| e.to_string())
}

async fn next(ws: &mut Ws) -> Result<ControllerMessage, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return decode(t.as_str()).map(|f| f.msg).map_err(|e| e.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err("closed".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.to_string()),
        }
    }
}

/// Answers every command at once; faults are recorded (by id), never applied.
async fn serve(mut ws: Ws) {
    let mut held: HashSet<String> = HashSet::new();
    let mut id = 2;
    loop {
        let frame = match ws.next().await {
            Some(Ok(Message::Text(t))) => match decode::<ControllerMessage>(t.as_str()) {
                Ok(f) => f,
                Err(_) => continue,
            },
            Some(Ok(Message::Close(_)) | Err(_)) | None => return,
            Some(Ok(_)) => continue,
        };
        let outcome = match frame.msg {
            ControllerMessage::Apply { fault } => {
                held.insert(fault.fault_id);
                Outcome::Applied {
                    detail: "recorded (simulated agent)".into(),
                    pids: Vec::new(),
                }
            }
            ControllerMessage::Remove { fault_id } => Outcome::Removed {
                count: u32::from(held.remove(&fault_id)),
                observed: None,
            },
            ControllerMessage::RemoveAll { experiment } => {
                let before = held.len();
                match experiment {
                    Some(e) => held.retain(|f| !f.starts_with(&format!("{e}/"))),
                    None => held.clear(),
                }
                Outcome::Removed {
                    count: (before - held.len()) as u32,
                    observed: None,
                }
            }
            ControllerMessage::Ping {} => Outcome::Pong {},
            _ => continue,
        };
        id += 1;
        let ack = AgentMessage::Ack { re: frame.id, outcome };
        if send(&mut ws, Frame::new(id, ack)).await.is_err() {
            return;
        }
    }
}
