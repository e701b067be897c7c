//! The wire: frames that are not what they should be, against the real binaries. Who may
//! connect at all (the handshake, TLS, one connection per host) is in tests/trust_wire.rs.

use crate::common;

use common::handshake::{self, next_frame, Registration};
use common::*;
use faultline_agent::faults::{cpu, kill};
use faultline_agent::protocol::{AgentMessage, ControllerMessage, ErrorCode, FaultKind, FaultSpec, Frame, Outcome};
use futures_util::SinkExt;
use rand::{Rng, SeedableRng};
use std::process::Command;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);

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
            rng.random_range(3..99)
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
    let (mut ws, welcome) = handshake::connect_agent(port, &token, Registration::new("fake-1", "fake")).await;
    assert!(matches!(welcome, ControllerMessage::Welcome { .. }), "{welcome:?}");

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
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let reg = handshake::controller_side(&mut ws, "t0ken").await.unwrap();
    assert!(reg.proof_ok, "the agent proves the token");
    assert_eq!(reg.host.agent.capabilities, vec!["kill"]);

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
            kind: FaultKind::Cpu(cpu::Params {
                load_percent: 50,
                workers: 1,
            }),
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
            kind: FaultKind::Kill(kill::Params {
                process_name: "x".repeat(4096),
                signal: "SIGKILL".into(),
            }),
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
