//! Both halves of the wire handshake (docs/wire.md), for fake agents and fake controllers
//! written in tests: they speak the real protocol, so only what a test changes on purpose
//! differs from a real peer.

use faultline_agent::auth::{self, Role};
use faultline_agent::protocol::{
    decode, AgentMessage, ControllerMessage, Frame, HeldFault, HostDescription, Placement,
};
use futures_util::{SinkExt, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

/// The lease fake agents register with; the controller pings within it.
pub(crate) const LEASE_MS: u64 = 3000;

/// A websocket either side of the handshake can use.
pub(crate) trait Socket:
    StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
    + SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error>
    + Unpin
{
}

impl<T> Socket for T where
    T: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
        + SinkExt<Message, Error = tokio_tungstenite::tungstenite::Error>
        + Unpin
{
}

/// The next text frame, decoded; panics after 20 s, on a close or on garbage.
pub(crate) async fn next_frame<M: for<'de> serde::Deserialize<'de>>(ws: &mut impl Socket) -> Frame<M> {
    try_next_frame(ws, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("expected a frame: {e}"))
}

/// The next text frame within `timeout`, or why there was none.
pub(crate) async fn try_next_frame<M: for<'de> serde::Deserialize<'de>>(
    ws: &mut impl Socket,
    timeout: Duration,
) -> Result<Frame<M>, String> {
    loop {
        let msg = tokio::time::timeout(timeout, ws.next())
            .await
            .map_err(|_| format!("no frame within {timeout:?}"))?
            .ok_or("closed")?
            .map_err(|e| e.to_string())?;
        match msg {
            Message::Text(t) => return decode(t.as_str()).map_err(|e| format!("undecodable {t}: {e}")),
            Message::Close(_) => return Err("closed".into()),
            _ => continue,
        }
    }
}

/// A host description for a fake agent in az-a.
pub(crate) fn host(id: &str) -> HostDescription {
    HostDescription {
        host_id: id.into(),
        placement: Placement {
            availability_zone: "az-a".into(),
        },
        state: Default::default(),
        tags: Default::default(),
        address: "127.0.0.1".into(),
        agent: Default::default(),
    }
}

/// What a fake agent registers with.
pub(crate) struct Registration {
    pub host: HostDescription,
    pub instance: String,
    pub held: Vec<HeldFault>,
}

impl Registration {
    /// A registration of `host_id` as agent instance `instance`, holding nothing.
    pub(crate) fn new(host_id: &str, instance: &str) -> Self {
        Registration {
            host: host(host_id),
            instance: instance.into(),
            held: Vec::new(),
        }
    }
}

/// The agent's half: hello, check the controller's proof, register with this side's proof.
/// `dialed` is the controller's address as this side connected to it. Returns the
/// controller's answer to the registration (a welcome, or an error).
pub(crate) async fn agent_side(
    ws: &mut impl Socket,
    token: &str,
    dialed: &str,
    reg: Registration,
) -> Result<ControllerMessage, String> {
    let agent_nonce = auth::nonce();
    let dialed = dialed.to_string();
    let hello = Frame::new(
        1,
        AgentMessage::Hello {
            nonce: agent_nonce.clone(),
            dialed: dialed.clone(),
        },
    );
    ws.send(Message::text(hello.encode()))
        .await
        .map_err(|e| e.to_string())?;
    let challenge = try_next_frame::<ControllerMessage>(ws, Duration::from_secs(20)).await?;
    let ControllerMessage::Challenge { nonce, proof } = challenge.msg else {
        return Err(format!("expected a challenge, got {challenge:?}"));
    };
    let transcript = auth::Transcript {
        agent_nonce: &agent_nonce,
        controller_nonce: &nonce,
        dialed: &dialed,
    };
    if !auth::verify(token, Role::Controller, &transcript, &proof) {
        return Err("the controller's proof does not verify".into());
    }
    let register = Frame::new(
        2,
        AgentMessage::Register {
            proof: auth::prove(token, Role::Agent, &transcript),
            host: reg.host,
            lease_ms: LEASE_MS,
            instance: reg.instance,
            held: reg.held,
        },
    );
    ws.send(Message::text(register.encode()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(try_next_frame::<ControllerMessage>(ws, Duration::from_secs(20))
        .await?
        .msg)
}

/// Connects to a controller's agent endpoint on loopback and runs [`agent_side`]; the
/// socket and the controller's answer.
pub(crate) async fn connect_agent(
    port: u16,
    token: &str,
    reg: Registration,
) -> (
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    ControllerMessage,
) {
    let url = format!("ws://127.0.0.1:{port}/v1/agents");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.expect("upgrade");
    let dialed = format!("127.0.0.1:{port}");
    let answer = agent_side(&mut ws, token, &dialed, reg).await.expect("handshake");
    (ws, answer)
}

/// What an agent said in the controller's half of the handshake.
#[derive(Debug)]
pub(crate) struct Registered {
    pub host: HostDescription,
    pub proof_ok: bool,
}

/// The controller's half with a real proof of `token`: waits for the hello, answers with a
/// challenge, reads the registration and says whether the agent's proof verifies. Sends no
/// welcome: the test decides.
pub(crate) async fn controller_side(ws: &mut impl Socket, token: &str) -> Result<Registered, String> {
    let hello = try_next_frame::<AgentMessage>(ws, Duration::from_secs(20)).await?;
    let AgentMessage::Hello {
        nonce: agent_nonce,
        dialed,
    } = hello.msg
    else {
        return Err(format!("expected a hello, got {hello:?}"));
    };
    let nonce = auth::nonce();
    let transcript = auth::Transcript {
        agent_nonce: &agent_nonce,
        controller_nonce: &nonce,
        dialed: &dialed,
    };
    let challenge = Frame::new(
        1,
        ControllerMessage::Challenge {
            proof: auth::prove(token, Role::Controller, &transcript),
            nonce: nonce.clone(),
        },
    );
    ws.send(Message::text(challenge.encode()))
        .await
        .map_err(|e| e.to_string())?;
    let reg = try_next_frame::<AgentMessage>(ws, Duration::from_secs(20)).await?;
    let AgentMessage::Register { proof, host, .. } = reg.msg else {
        return Err(format!("expected a registration, got {reg:?}"));
    };
    Ok(Registered {
        proof_ok: auth::verify(token, Role::Agent, &transcript, &proof),
        host,
    })
}
