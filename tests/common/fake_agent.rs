//! A fake agent: a websocket client in the test that speaks the agent protocol, so a test
//! can do what a real agent never does (drop the connection in the middle of an apply,
//! report faults it does not hold, end another host's fault). The connection handshake
//! lives here only, so a change of it is adapted in one place.

use super::handshake::{self, Registration};
use faultline_agent::protocol::{
    decode, AgentInfo, AgentMessage, ControllerMessage, Frame, HeldFault, HostDescription, Outcome, Placement,
    AGENT_PATH,
};
use futures_util::{SinkExt, StreamExt};
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

use super::handshake::LEASE_MS;

/// One fake agent host; its calls block the test thread (each runs on its own runtime).
pub(crate) struct FakeAgent {
    rt: tokio::runtime::Runtime,
    ws: Option<Ws>,
    url: String,
    /// The controller's address as the handshake names it.
    dialed: String,
    token: String,
    description: HostDescription,
    /// Same for every connection of this fake agent: one agent process that reconnects.
    instance: String,
    next_id: u64,
    /// The controller that welcomed the last connection.
    pub controller_id: String,
}

impl FakeAgent {
    /// Connects to the controller on `port` with the token in `token_file`, registers `host`
    /// in `az` offering `capabilities`, and waits for the welcome.
    pub(crate) fn connect(port: u16, token_file: &Path, host: &str, az: &str, capabilities: &[&str]) -> FakeAgent {
        Self::connect_holding(port, token_file, host, az, capabilities, Vec::new())
    }

    /// [`FakeAgent::connect`], reporting the faults in `held` at registration.
    pub(crate) fn connect_holding(
        port: u16,
        token_file: &Path,
        host: &str,
        az: &str,
        capabilities: &[&str],
        held: Vec<HeldFault>,
    ) -> FakeAgent {
        let token = std::fs::read_to_string(token_file)
            .unwrap_or_else(|e| panic!("token file {}: {e}", token_file.display()))
            .trim()
            .to_string();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut agent = FakeAgent {
            rt,
            ws: None,
            url: format!("ws://127.0.0.1:{port}{AGENT_PATH}"),
            dialed: format!("127.0.0.1:{port}"),
            token,
            description: HostDescription {
                host_id: host.into(),
                placement: Placement {
                    availability_zone: az.into(),
                },
                state: Default::default(),
                tags: [("tier".to_string(), "web".to_string())].into(),
                address: "127.0.0.1".into(),
                agent: AgentInfo {
                    version: "fake".into(),
                    capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                },
            },
            instance: format!("fake-{host}-{}", std::process::id()),
            next_id: 1,
            controller_id: String::new(),
        };
        agent.reconnect(held);
        agent
    }

    /// Drops the connection at once, without a close frame and without answering anything.
    pub(crate) fn disconnect(&mut self) {
        self.ws = None;
    }

    /// Connects again (dropping the current connection, if any), registering the faults
    /// in `held`, and waits for the welcome.
    pub(crate) fn reconnect(&mut self, held: Vec<HeldFault>) {
        self.ws = None;
        let host = self.description.host_id.clone();
        let (mut ws, _) = self
            .rt
            .block_on(tokio_tungstenite::connect_async(self.url.as_str()))
            .unwrap_or_else(|e| panic!("fake agent {host}: cannot connect: {e}"));
        let registration = Registration {
            host: self.description.clone(),
            instance: self.instance.clone(),
            held,
        };
        let answer = self
            .rt
            .block_on(handshake::agent_side(&mut ws, &self.token, &self.dialed, registration))
            .unwrap_or_else(|e| panic!("fake agent {host}: handshake: {e}"));
        match answer {
            ControllerMessage::Welcome { controller_id } => self.controller_id = controller_id,
            other => panic!("fake agent {host}: expected a welcome, got {other:?}"),
        }
        self.ws = Some(ws);
    }

    /// Sends one message.
    pub(crate) fn send(&mut self, msg: AgentMessage) {
        let id = self.next_id;
        self.next_id += 1;
        let text = Frame::new(id, msg).encode();
        let ws = self.ws.as_mut().expect("fake agent is connected");
        self.rt
            .block_on(ws.send(Message::text(text)))
            .expect("fake agent: send");
    }

    /// Returns once the controller has read every frame sent before: a second registration
    /// is always refused with an error, which comes back after them.
    pub(crate) fn sync(&mut self) {
        self.send(AgentMessage::Register {
            proof: String::new(),
            host: self.description.clone(),
            lease_ms: LEASE_MS,
            instance: self.instance.clone(),
            held: Vec::new(),
        });
        let (_, msg) = self.next_command(Duration::from_secs(10));
        assert!(
            matches!(msg, ControllerMessage::Error { .. }),
            "fake agent: expected the refusal of a second registration, got {msg:?}"
        );
    }

    /// Answers the command `re`.
    pub(crate) fn ack(&mut self, re: u64, outcome: Outcome) {
        self.send(AgentMessage::Ack { re, outcome });
    }

    /// The next command other than a ping (pings are answered), within `timeout`.
    pub(crate) fn next_command(&mut self, timeout: Duration) -> (u64, ControllerMessage) {
        let deadline = Instant::now() + timeout;
        loop {
            let frame = self.read(deadline);
            match frame.msg {
                ControllerMessage::Ping {} => self.ack(frame.id, Outcome::Pong {}),
                msg => return (frame.id, msg),
            }
        }
    }

    /// The next frame from the controller; panics at `deadline` or when the connection ends.
    fn read(&mut self, deadline: Instant) -> Frame<ControllerMessage> {
        let host = self.description.host_id.clone();
        let ws = self.ws.as_mut().expect("fake agent is connected");
        self.rt.block_on(async {
            loop {
                let next = tokio::time::timeout_at(deadline, ws.next())
                    .await
                    .unwrap_or_else(|_| panic!("fake agent {host}: no frame from the controller in time"));
                match next {
                    Some(Ok(Message::Text(t))) => {
                        return decode::<ControllerMessage>(t.as_str())
                            .unwrap_or_else(|e| panic!("fake agent {host}: undecodable frame {t}: {e}"))
                    }
                    Some(Ok(Message::Close(_))) | None => {
                        panic!("fake agent {host}: the controller closed the connection")
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => panic!("fake agent {host}: {e}"),
                }
            }
        })
    }
}
