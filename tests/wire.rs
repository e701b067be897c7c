//! The wire: tokens, and frames that are not what they should be, against the real binaries.

mod common;

use common::*;
use faultline_agent::protocol::{
    bearer, decode, AgentMessage, ControllerMessage, ErrorCode, FaultKind, FaultSpec, Frame, HostDescription, Outcome,
    Placement,
};
use futures_util::{SinkExt, StreamExt};
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{Callback, ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

/// `faultline agents` on a free port; returns it and the port.
fn agents_command(s: &Scratch, extra: &[&str]) -> (Proc, u16) {
    agent_bin();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args([
        "agents",
        "--listen",
        "127.0.0.1:0",
        "--format",
        "json",
        "--agents-timeout",
        "PT4S",
    ])
    .arg("--token-file")
    .arg(s.path("token"))
    .args(extra);
    let mut p = Proc::spawn("agents", cmd);
    let port = p.controller_port();
    (p, port)
}

#[test]
fn an_agent_with_a_wrong_token_is_refused() {
    let s = Scratch::new("bad-token");
    let (ctl, port) = agents_command(&s, &["--wait-agents", "1"]);
    std::fs::write(s.path("wrong"), "not-the-token\n").unwrap();
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "--controller",
        &format!("ws://127.0.0.1:{port}"),
        "--host-id",
        "intruder",
        "--az",
        "az-x",
    ])
    .arg("--token-file")
    .arg(s.path("wrong"))
    .arg("--state-dir")
    .arg(s.path("state"));
    let mut intruder = Proc::spawn("intruder", cmd);
    intruder.expect("refused this agent's token", T);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(lines.iter().any(|l| l.contains("no agent connected")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("bad or missing token")), "{lines:?}");
}

fn host(id: &str) -> HostDescription {
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

/// Random frames: bytes that are not JSON, JSON that is not a frame, frames of no known kind.
fn garbage(rng: &mut impl Rng) -> Message {
    match rng.random_range(0..6) {
        0 => Message::text(
            (0..rng.random_range(0..200))
                .map(|_| rng.random_range(' '..'~'))
                .collect::<String>(),
        ),
        1 => Message::binary(
            (0..rng.random_range(1..64))
                .map(|_| rng.random::<u8>())
                .collect::<Vec<u8>>(),
        ),
        2 => Message::text(format!(
            "{{\"v\":1,\"id\":{},\"type\":\"{}\"}}",
            rng.random::<u32>(),
            ["format_disk", "", "APPLY", "ack"][rng.random_range(0..4)]
        )),
        3 => Message::text(format!(
            "{{\"v\":{},\"id\":1,\"type\":\"ping\"}}",
            rng.random_range(2..99)
        )),
        4 => Message::text(format!("[{}]", rng.random::<i64>())),
        _ => Message::text("{\"v\":1,\"id\":3,\"type\":\"apply\",\"fault\":{\"kind\":\"cpu\"}}"),
    }
}

#[tokio::test]
async fn the_controller_answers_garbage_with_errors_and_stays_up() {
    let s = Scratch::new("garbage-controller");
    let template = s.write_json(
        "t.json",
        &serde_json::json!({
            "description": "hold the controller up",
            "actions": { "W": { "actionId": "aws:fis:wait", "parameters": { "duration": "PT60S" } } },
            "stopConditions": [{ "source": "none" }]
        }),
    );
    let (mut ctl, port) = controller(&s, &template, 1, &[]);
    let token = std::fs::read_to_string(s.path("token")).unwrap().trim().to_string();
    let url = format!("ws://127.0.0.1:{port}/v1/agents");

    let no_token = tokio_tungstenite::connect_async(url.as_str()).await;
    assert!(matches!(no_token, Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 401));

    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer(&token).parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let register = |id| {
        Frame::new(
            id,
            AgentMessage::Register {
                host: host("fake-1"),
                lease_ms: 10_000,
                instance: "fake".into(),
                held: vec![],
            },
        )
        .encode()
    };
    ws.send(Message::text(register(1))).await.unwrap();
    let welcome = next_frame::<ControllerMessage>(&mut ws).await;
    assert!(matches!(welcome.msg, ControllerMessage::Welcome { .. }));

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    ctl.expect("action W running", T);
    for _ in 0..200 {
        ws.send(garbage(&mut rng)).await.unwrap();
        let reply = loop {
            let f = next_frame::<ControllerMessage>(&mut ws).await;
            match f.msg {
                ControllerMessage::Ping {} => {
                    let pong = Frame::new(
                        9,
                        AgentMessage::Ack {
                            re: f.id,
                            outcome: Outcome::Pong {},
                        },
                    );
                    ws.send(Message::text(pong.encode())).await.unwrap();
                }
                other => break other,
            }
        };
        assert!(matches!(reply, ControllerMessage::Error { .. }), "{reply:?}");
    }
    ctl.signal(libc::SIGINT);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(130));
    assert_eq!(report(&out, &lines)["state"], "stopped");
}

async fn next_frame<M: for<'de> serde::Deserialize<'de>>(
    ws: &mut (impl StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin),
) -> Frame<M> {
    loop {
        let msg = tokio::time::timeout(T, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("ok");
        if let Message::Text(t) = msg {
            return decode(t.as_str()).unwrap_or_else(|e| panic!("undecodable {t}: {e}"));
        }
    }
}

/// A fake controller's handshake: the agent must present the token.
struct ExpectToken(&'static str);

impl Callback for ExpectToken {
    fn on_request(self, req: &Request, resp: Response) -> Result<Response, ErrorResponse> {
        assert_eq!(req.headers()["authorization"], self.0);
        Ok(resp)
    }
}

#[tokio::test]
async fn the_agent_answers_garbage_with_errors_and_refuses_what_it_may_not_do() {
    let s = Scratch::new("garbage-agent");
    std::fs::write(s.path("token"), "t0ken\n").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "--controller",
        &format!("ws://127.0.0.1:{port}"),
        "--host-id",
        "web-a1",
        "--az",
        "az-a",
        "--allow",
        "kill",
    ])
    .arg("--token-file")
    .arg(s.path("token"))
    .arg("--state-dir")
    .arg(s.path("state"));
    let agent = Proc::spawn("agent", cmd);
    let (tcp, _) = listener.accept().await.unwrap();
    let mut ws = tokio_tungstenite::accept_hdr_async(tcp, ExpectToken("Bearer t0ken"))
        .await
        .unwrap();
    let reg = next_frame::<AgentMessage>(&mut ws).await;
    let AgentMessage::Register { host, .. } = reg.msg else {
        panic!("{reg:?}")
    };
    assert_eq!(host.agent.capabilities, vec!["kill"]);

    // Before the welcome, commands are refused.
    ws.send(Message::text(Frame::new(1, ControllerMessage::Ping {}).encode()))
        .await
        .unwrap();
    let r = next_frame::<AgentMessage>(&mut ws).await;
    assert!(
        matches!(
            r.msg,
            AgentMessage::Error {
                code: ErrorCode::NotRegistered,
                ..
            }
        ),
        "{r:?}"
    );
    ws.send(Message::text(
        Frame::new(
            2,
            ControllerMessage::Welcome {
                controller_id: "fake".into(),
            },
        )
        .encode(),
    ))
    .await
    .unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..200 {
        ws.send(garbage(&mut rng)).await.unwrap();
        let r = next_frame::<AgentMessage>(&mut ws).await;
        assert!(matches!(r.msg, AgentMessage::Error { .. }), "{r:?}");
    }
    let apply = ControllerMessage::Apply {
        fault: FaultSpec {
            fault_id: "x/cpu/web-a1".into(),
            duration_ms: Some(1000),
            kind: FaultKind::Cpu {
                load_percent: 50,
                workers: 1,
            },
        },
    };
    ws.send(Message::text(Frame::new(3, apply).encode())).await.unwrap();
    let r = next_frame::<AgentMessage>(&mut ws).await;
    assert!(
        matches!(
            r.msg,
            AgentMessage::Error {
                re: Some(3),
                code: ErrorCode::NotAllowed,
                ..
            }
        ),
        "{r:?}"
    );
    // A forged kill the validator would never send: refused by the agent's own check.
    let stop = ControllerMessage::Apply {
        fault: FaultSpec {
            fault_id: "x/kill/web-a1".into(),
            duration_ms: None,
            kind: FaultKind::Kill {
                process_name: "x".repeat(4096),
                signal: "SIGKILL".into(),
            },
        },
    };
    ws.send(Message::text(Frame::new(5, stop).encode())).await.unwrap();
    let r = next_frame::<AgentMessage>(&mut ws).await;
    match &r.msg {
        AgentMessage::Error {
            re: Some(5),
            code: ErrorCode::OutOfRange,
            message,
        } => assert!(message.contains("it must be 1-255 bytes long"), "{message}"),
        _ => panic!("{r:?}"),
    }
    ws.send(Message::text(Frame::new(4, ControllerMessage::Ping {}).encode()))
        .await
        .unwrap();
    let r = next_frame::<AgentMessage>(&mut ws).await;
    assert_eq!(
        r.msg,
        AgentMessage::Ack {
            re: 4,
            outcome: Outcome::Pong {}
        }
    );
    assert!(
        std::path::Path::new(&format!("/proc/{}", agent.pid())).exists(),
        "the agent must still run"
    );
}
