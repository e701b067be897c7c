//! Nobody gets in: an impostor controller never learns the token nor commands an agent, an
//! agent that cannot prove the token is refused, one host id has one connection, and TLS
//! agents check the controller's certificate. Real binaries throughout.

use crate::common;

use common::handshake::{self, Registration};
use common::*;
use faultline_agent::faults::{cpu, kill};
use faultline_agent::protocol::{ControllerMessage, ErrorCode, FaultKind, FaultSpec, Frame};
use futures_util::{SinkExt, StreamExt};
use std::process::Command;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "0123456789abcdef-the-shared-token";

/// `faultline agents` on a free port; returns it and the port.
fn agents_command(s: &Scratch, extra: &[&str]) -> (Proc, u16) {
    agent_bin();
    let mut cmd = Command::new(FAULTLINE);
    cmd.args(["agents", "--listen", "127.0.0.1:0", "--format", "json"])
        .arg("--token-file")
        .arg(s.path("token"))
        .args(extra);
    let mut p = Proc::spawn("agents", cmd);
    let port = p.controller_port();
    (p, port)
}

/// A real agent dialing `url` with the token file `token`.
fn real_agent(s: &Scratch, url: &str, token: &str, host: &str, extra: &[&str]) -> Proc {
    let mut cmd = Command::new(agent_bin());
    cmd.args([
        "--controller",
        url,
        "--host-id",
        host,
        "--az",
        "az-a",
        "--lease",
        "PT3S",
    ])
    .arg("--token-file")
    .arg(s.path(token))
    .arg("--state-dir")
    .arg(s.path(&format!("state-{host}")))
    .args(extra);
    Proc::spawn(host, cmd)
}

/// A fake controller that does not know the token: it records every byte the agent sends,
/// answers the hello with a made-up proof, and then tries to command the agent anyway.
#[tokio::test]
async fn an_impostor_controller_never_learns_the_token_nor_commands_the_agent() {
    let s = Scratch::new("impostor");
    std::fs::write(s.path("token"), format!("{TOKEN}\n")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut agent = real_agent(&s, &format!("ws://127.0.0.1:{port}"), "token", "web-a1", &[]);

    // First connection: read the raw upgrade request, to see what travels before any frame.
    let (mut tcp, _) = listener.accept().await.unwrap();
    let mut request = vec![0u8; 4096];
    let n = tokio::time::timeout(T, tcp.read(&mut request)).await.unwrap().unwrap();
    let request = String::from_utf8_lossy(&request[..n]).to_string();
    assert!(request.contains("/v1/agents"), "{request}");
    assert!(
        !request.contains(TOKEN),
        "the token travelled in the upgrade request:\n{request}"
    );
    drop(tcp);

    // Second connection: a websocket, a challenge whose proof is made with another token.
    let (tcp, _) = tokio::time::timeout(T, listener.accept()).await.unwrap().unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let hello = handshake::next_frame::<faultline_agent::protocol::AgentMessage>(&mut ws).await;
    let hello_text = serde_json::to_string(&format!("{:?}", hello.msg)).unwrap();
    assert!(!hello_text.contains(TOKEN));
    let faultline_agent::protocol::AgentMessage::Hello {
        nonce: agent_nonce,
        dialed,
    } = hello.msg
    else {
        panic!("the agent must open with a hello, got {hello:?}");
    };
    assert_eq!(
        dialed,
        format!("127.0.0.1:{port}"),
        "the agent names the address it dialed"
    );
    let nonce = faultline_agent::auth::nonce();
    let transcript = faultline_agent::auth::Transcript {
        agent_nonce: &agent_nonce,
        controller_nonce: &nonce,
        dialed: &dialed,
    };
    let forged = faultline_agent::auth::prove("a guess", faultline_agent::auth::Role::Controller, &transcript);
    let challenge = ControllerMessage::Challenge { nonce, proof: forged };
    ws.send(Message::text(Frame::new(1, challenge).encode())).await.unwrap();
    // Whatever follows, the impostor tries: a welcome and a fault.
    let welcome = ControllerMessage::Welcome {
        controller_id: "impostor".into(),
    };
    let _ = ws.send(Message::text(Frame::new(2, welcome).encode())).await;
    let apply = ControllerMessage::Apply {
        fault: FaultSpec {
            fault_id: "x/burn/web-a1".into(),
            duration_ms: Some(30_000),
            kind: FaultKind::Cpu(cpu::Params {
                load_percent: 100,
                workers: 1,
            }),
        },
    };
    let _ = ws.send(Message::text(Frame::new(3, apply).encode())).await;
    let mut seen = Vec::new();
    while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        seen.push(format!("{m:?}"));
    }
    assert!(
        seen.iter().all(|m| !m.contains("register") && !m.contains(TOKEN)),
        "the agent told the impostor: {seen:?}"
    );
    agent.expect("could not prove that it knows the token", T);
    assert!(
        tree_cpu_load(agent.pid(), Duration::from_millis(500)) < 0.2,
        "the agent obeyed the impostor"
    );
    assert!(
        state_files(&s, "web-a1").is_empty(),
        "the agent recorded a fault from the impostor"
    );
}

#[test]
fn an_agent_with_a_wrong_token_is_refused_and_never_counted() {
    let s = Scratch::new("bad-token");
    let (ctl, port) = agents_command(&s, &["--wait-agents", "1", "--agents-timeout", "PT4S"]);
    std::fs::write(s.path("wrong"), "not-the-token\n").unwrap();
    let mut intruder = real_agent(&s, &format!("ws://127.0.0.1:{port}"), "wrong", "intruder", &[]);
    intruder.expect("could not prove that it knows the token", T);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(3), "{out}");
    assert!(lines.iter().any(|l| l.contains("no agent connected")), "{lines:?}");
}

#[tokio::test]
async fn an_agent_that_cannot_prove_the_token_is_refused() {
    let s = Scratch::new("bad-proof");
    let (mut ctl, port) = agents_command(&s, &["--wait-agents", "1", "--agents-timeout", "PT4S"]);
    let url = format!("ws://127.0.0.1:{port}/v1/agents");
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    // The fake agent skips the controller's proof and answers with a proof of another token.
    let dialed = format!("127.0.0.1:{port}");
    let err = handshake::agent_side(&mut ws, "a guess", &dialed, Registration::new("web-a1", "fake")).await;
    assert!(
        err.is_err(),
        "a real controller's proof must not verify with another token"
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
    let hello = Frame::new(
        1,
        faultline_agent::protocol::AgentMessage::Hello {
            nonce: faultline_agent::auth::nonce(),
            dialed,
        },
    );
    ws.send(Message::text(hello.encode())).await.unwrap();
    let _challenge = handshake::next_frame::<ControllerMessage>(&mut ws).await;
    let register = Frame::new(
        2,
        faultline_agent::protocol::AgentMessage::Register {
            proof: "00".repeat(32),
            host: handshake::host("web-a1"),
            lease_ms: 10_000,
            instance: "fake".into(),
            held: vec![],
        },
    );
    ws.send(Message::text(register.encode())).await.unwrap();
    let answer = handshake::next_frame::<ControllerMessage>(&mut ws).await;
    assert!(
        matches!(
            answer.msg,
            ControllerMessage::Error {
                code: ErrorCode::Unauthorized,
                ..
            }
        ),
        "{answer:?}"
    );
    ctl.expect("did not prove the token", T);
    let (status, _, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(3), "{lines:?}");
}

#[tokio::test]
async fn a_second_registration_with_a_live_hosts_id_is_refused() {
    let s = Scratch::new("duplicate-host");
    // Settles once nobody new has connected for 2 s: every step below comes sooner.
    let (mut ctl, port) = agents_command(&s, &["--agents-timeout", "PT20S"]);
    let token = std::fs::read_to_string(s.path("token")).unwrap().trim().to_string();
    let mut real = real_agent(&s, &format!("ws://127.0.0.1:{port}"), "token", "web-a1", &[]);
    real.expect("registered", T);

    let (mut ws, answer) = handshake::connect_agent(port, &token, Registration::new("web-a1", "other")).await;
    let ControllerMessage::Error { code, message, .. } = answer else {
        panic!("a second instance claiming web-a1 must be refused, got {answer:?}");
    };
    assert_eq!(code, ErrorCode::HostConflict);
    assert!(message.contains("web-a1") && message.contains("--host-id"), "{message}");
    assert!(
        handshake::try_next_frame::<ControllerMessage>(&mut ws, T)
            .await
            .is_err(),
        "the refused connection is closed"
    );
    ctl.expect("already connected", T);

    // The same instance reconnecting is not a conflict: it replaces its own link.
    let (_first, a1) = handshake::connect_agent(port, &token, Registration::new("web-b1", "b1")).await;
    assert!(matches!(a1, ControllerMessage::Welcome { .. }), "{a1:?}");
    let (_second, a2) = handshake::connect_agent(port, &token, Registration::new("web-b1", "b1")).await;
    assert!(matches!(a2, ControllerMessage::Welcome { .. }), "{a2:?}");

    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{lines:?}");
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["HostId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["web-a1", "web-b1"], "{out}");
    assert!(
        !real.seen.iter().any(|l| l.contains("lost the controller")),
        "the real agent kept its connection: {:?}",
        real.seen
    );
}

/// TLS: an agent that trusts the CA connects over wss://; one pinned to another certificate
/// refuses the controller.
#[test]
fn agents_check_the_controllers_certificate_over_wss() {
    let s = Scratch::new("tls");
    let files = faultline::tls::generate(&s.path("tls"), &["127.0.0.1".parse().unwrap()], &["localhost"]).unwrap();
    let cert = files.cert.to_str().unwrap();
    let key = files.key.to_str().unwrap();
    let (ctl, port) = agents_command(
        &s,
        &[
            "--wait-agents",
            "1",
            "--agents-timeout",
            "PT8S",
            "--tls-cert",
            cert,
            "--tls-key",
            key,
        ],
    );
    let url = format!("wss://127.0.0.1:{port}");
    let wrong_pin = "ab".repeat(32);
    let mut pinned = real_agent(&s, &url, "token", "web-b1", &["--pin-sha256", &wrong_pin]);
    pinned.expect("not the pinned one", T);
    let mut trusting = real_agent(&s, &url, "token", "web-a1", &["--ca", files.ca.to_str().unwrap()]);
    trusting.expect("registered", T);
    let (status, out, lines) = ctl.finish(T);
    assert_eq!(status.code(), Some(0), "{lines:?}");
    assert!(out.contains("web-a1") && !out.contains("web-b1"), "{out}");

    // A wss:// agent without a way to check the certificate does not start.
    let mut cmd = Command::new(agent_bin());
    cmd.args(["--controller", &url, "--host-id", "x", "--az", "az-a"])
        .arg("--token-file")
        .arg(s.path("token"))
        .arg("--state-dir")
        .arg(s.path("state-x"));
    let (status, _, lines) = Proc::spawn("no-trust", cmd).finish(T);
    assert!(!status.success());
    assert!(lines.iter().any(|l| l.contains("--ca")), "{lines:?}");
}

/// A relay: the agent dials a peer that does not know the token, which asks a real controller
/// (at another address) to answer the agent's hello. Passing the hello on unchanged, the
/// controller refuses it (the agent dialed someone else); rewriting the address, the
/// controller's proof no longer verifies at the agent. Either way the agent registers nothing
/// and obeys nothing.
#[tokio::test]
async fn a_relay_cannot_borrow_a_real_controllers_proof() {
    use faultline_agent::protocol::AgentMessage;
    let s = Scratch::new("relay");
    let (_ctl, ctl_port) = agents_command(&s, &["--agents-timeout", "PT60S"]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_port = listener.local_addr().unwrap().port();
    let mut agent = real_agent(&s, &format!("ws://127.0.0.1:{relay_port}"), "token", "web-a1", &[]);
    let victim_name = unique_name("relay-victim");
    let (victim, _) = web_service(&victim_name);

    for rewrite in [false, true] {
        let (tcp, _) = tokio::time::timeout(T, listener.accept()).await.unwrap().unwrap();
        let mut from_agent = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = handshake::next_frame::<AgentMessage>(&mut from_agent).await;
        let AgentMessage::Hello { nonce, dialed } = hello.msg else {
            panic!("{hello:?}");
        };
        assert_eq!(dialed, format!("127.0.0.1:{relay_port}"));
        let url = format!("ws://127.0.0.1:{ctl_port}/v1/agents");
        let (mut to_controller, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let dialed = if rewrite {
            format!("127.0.0.1:{ctl_port}")
        } else {
            dialed
        };
        let relayed = Frame::new(1, AgentMessage::Hello { nonce, dialed });
        to_controller.send(Message::text(relayed.encode())).await.unwrap();
        let answer = handshake::next_frame::<ControllerMessage>(&mut to_controller).await;
        if !rewrite {
            assert!(
                matches!(&answer.msg, ControllerMessage::Error { code: ErrorCode::Unauthorized, message, .. } if message.contains("dialed")),
                "the controller must refuse a hello for another address: {answer:?}"
            );
            drop(from_agent);
            continue;
        }
        let ControllerMessage::Challenge { .. } = &answer.msg else {
            panic!("{answer:?}");
        };
        from_agent.send(Message::text(answer.encode())).await.unwrap();
        let welcome = ControllerMessage::Welcome {
            controller_id: "relay".into(),
        };
        let _ = from_agent.send(Message::text(Frame::new(2, welcome).encode())).await;
        let kill = ControllerMessage::Apply {
            fault: FaultSpec {
                fault_id: "x/kill/web-a1".into(),
                duration_ms: None,
                kind: FaultKind::Kill(kill::Params {
                    process_name: victim_name.clone(),
                    signal: "SIGKILL".into(),
                }),
            },
        };
        let _ = from_agent.send(Message::text(Frame::new(3, kill).encode())).await;
        let mut seen = Vec::new();
        while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(2), from_agent.next()).await {
            seen.push(format!("{m:?}"));
        }
        assert!(
            seen.iter().all(|m| !m.contains("register") && !m.contains("ack")),
            "the agent answered the relay: {seen:?}"
        );
    }
    agent.expect("could not prove that it knows the token", T);
    assert!(alive(victim.pid()), "the relay killed the victim through the agent");
}

/// A fake controller's side of one connection of a real agent: the handshake with the real
/// token, then a welcome as `controller_id`.
async fn welcome_as(
    listener: &TcpListener,
    controller_id: &str,
) -> tokio_tungstenite::WebSocketStream<tokio::net::TcpStream> {
    let (tcp, _) = tokio::time::timeout(T, listener.accept()).await.unwrap().unwrap();
    let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
    let reg = handshake::controller_side(&mut ws, TOKEN).await.unwrap();
    assert!(reg.proof_ok);
    let welcome = ControllerMessage::Welcome {
        controller_id: controller_id.into(),
    };
    ws.send(Message::text(Frame::new(1, welcome).encode())).await.unwrap();
    ws
}

/// Sends `msg` as frame `id` and returns the agent's answer to it (skipping notices).
async fn ask(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    id: u64,
    msg: ControllerMessage,
) -> faultline_agent::protocol::AgentMessage {
    use faultline_agent::protocol::AgentMessage;
    ws.send(Message::text(Frame::new(id, msg).encode())).await.unwrap();
    loop {
        let frame = handshake::next_frame::<AgentMessage>(ws).await;
        match &frame.msg {
            AgentMessage::Ack { re, .. } if *re == id => return frame.msg,
            AgentMessage::Error { re: Some(re), .. } if *re == id => return frame.msg,
            _ => {}
        }
    }
}

/// Faults have owners. A controller whose connection dropped keeps its fault until its
/// lease runs out; another controller (another id) the agent meets meanwhile can neither
/// take it over by applying the same id, nor remove it, nor sweep it with `remove_all`, of
/// its run or of everything it owns.
#[tokio::test]
async fn a_controller_never_takes_over_nor_removes_another_controllers_fault() {
    use faultline_agent::protocol::{AgentMessage, Outcome};
    let s = Scratch::new("owners");
    std::fs::write(s.path("token"), format!("{TOKEN}\n")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = real_agent(&s, &format!("ws://127.0.0.1:{port}"), "token", "web-a1", &[]);
    let burn = |load_percent| FaultSpec {
        fault_id: "EXPA/burn/web-a1".into(),
        duration_ms: Some(60_000),
        kind: FaultKind::Cpu(cpu::Params {
            load_percent,
            workers: 1,
        }),
    };

    let mut a = welcome_as(&listener, "ctl-A").await;
    let applied = ask(&mut a, 2, ControllerMessage::Apply { fault: burn(100) }).await;
    assert!(
        matches!(
            applied,
            AgentMessage::Ack {
                outcome: Outcome::Applied { .. },
                ..
            }
        ),
        "{applied:?}"
    );
    assert_eq!(holders(agent.pid()).len(), 1, "the fault is in effect");
    // A's connection drops; the agent dials again and meets B, within A's lease (3 s).
    drop(a);
    let mut b = welcome_as(&listener, "ctl-B").await;
    match ask(&mut b, 2, ControllerMessage::Apply { fault: burn(50) }).await {
        AgentMessage::Ack {
            outcome: Outcome::Failed { message },
            ..
        } => assert!(message.contains("held for another controller"), "{message}"),
        other => panic!("another controller's fault was answered as B's own: {other:?}"),
    }
    let removal = ControllerMessage::Remove {
        fault_id: "EXPA/burn/web-a1".into(),
    };
    match ask(&mut b, 3, removal).await {
        AgentMessage::Ack {
            outcome: Outcome::Failed { message },
            ..
        } => assert!(message.contains("only its owner"), "{message}"),
        other => panic!("B removed A's fault: {other:?}"),
    }
    for (id, experiment) in [(4, Some("EXPA".to_string())), (5, None)] {
        let answer = ask(&mut b, id, ControllerMessage::RemoveAll { experiment }).await;
        assert!(
            matches!(
                answer,
                AgentMessage::Ack {
                    outcome: Outcome::Removed { count: 0, .. },
                    ..
                }
            ),
            "B's remove_all touched A's fault: {answer:?}"
        );
    }
    assert_eq!(holders(agent.pid()).len(), 1, "A's fault is still in effect");
    assert_eq!(state_files(&s, "web-a1").len(), 1, "and still on record");
    // A's lease, not B, ends it.
    let mut agent = agent;
    agent.expect("silent for the lease", T);
    eventually("A's fault removed at its lease", T, || {
        holders(agent.pid()).is_empty() && state_files(&s, "web-a1").is_empty()
    });
    drop(b);
}

/// faultline's own helpers are never a target: a holder shows as `faultline-holder` (its
/// argv[0], and its process name as far as the kernel keeps it), and a pause or a kill aimed
/// at that name is refused whole, the holder left running.
#[tokio::test]
async fn a_pause_or_kill_aimed_at_the_agents_holders_is_refused() {
    use faultline_agent::faults::pause;
    use faultline_agent::protocol::{AgentMessage, Outcome};
    let s = Scratch::new("holder-guard");
    std::fs::write(s.path("token"), format!("{TOKEN}\n")).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = real_agent(&s, &format!("ws://127.0.0.1:{port}"), "token", "web-a1", &[]);
    let mut c = welcome_as(&listener, "ctl-A").await;
    let burn = FaultSpec {
        fault_id: "EXPH/burn/web-a1".into(),
        duration_ms: Some(30_000),
        kind: FaultKind::Cpu(cpu::Params {
            load_percent: 50,
            workers: 1,
        }),
    };
    let applied = ask(&mut c, 2, ControllerMessage::Apply { fault: burn }).await;
    assert!(
        matches!(
            applied,
            AgentMessage::Ack {
                outcome: Outcome::Applied { .. },
                ..
            }
        ),
        "{applied:?}"
    );
    eventually("the holder named", T, || {
        holders(agent.pid())
            .iter()
            .any(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default() == "faultline-holde\n")
    });
    let holder = holders(agent.pid())[0];
    let argv = std::fs::read(format!("/proc/{holder}/cmdline")).unwrap();
    assert!(
        argv.starts_with(b"faultline-holder\0hold\0cpu\0"),
        "{}",
        String::from_utf8_lossy(&argv)
    );
    // Whoever else runs holders on this host, none of them may be touched either: the guard
    // refuses the whole command, so nothing is signalled.
    let aimed = [
        FaultKind::Pause(pause::Params {
            process_name: "faultline-holder".into(),
        }),
        FaultKind::Kill(kill::Params {
            process_name: "faultline-holde".into(),
            signal: "SIGKILL".into(),
        }),
    ];
    for (id, kind) in (3..).zip(aimed) {
        let fault = FaultSpec {
            fault_id: format!("EXPH/aim{id}/web-a1"),
            duration_ms: matches!(kind, FaultKind::Pause(_)).then_some(30_000),
            kind,
        };
        match ask(&mut c, id, ControllerMessage::Apply { fault }).await {
            AgentMessage::Ack {
                outcome: Outcome::Failed { message },
                ..
            } => {
                assert!(
                    message.contains(&format!("pid {holder} (faultline-holde)")),
                    "{message}"
                );
                assert!(message.contains("descendant of this agent"), "{message}");
            }
            other => panic!("a command aimed at the holders was not refused: {other:?}"),
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{holder}/stat")).unwrap();
    let state = stat.rsplit_once(')').unwrap().1.trim_start().chars().next();
    assert!(matches!(state, Some('R' | 'S')), "the holder is in state {state:?}");
    drop(c);
    drop(agent);
}
