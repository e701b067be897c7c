//! The wire between controller and agents: JSON, one message per websocket text frame.
//!
//! A connection opens with the handshake of [`crate::auth`] (docs/wire.md): the agent's
//! [`AgentMessage::Hello`], the controller's [`ControllerMessage::Challenge`], the agent's
//! [`AgentMessage::Register`] and the controller's [`ControllerMessage::Welcome`].
//!
//! Every frame carries the protocol version `v` and a message id `id`. Commands from the
//! controller are answered by an [`AgentMessage::Ack`] (or [`AgentMessage::Error`]) whose
//! `re` is the command's id. A frame that cannot be decoded is answered with an error and
//! never ends the connection.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The faults, each with its parameters: declared by the fault list of [`crate::faults`],
/// each variant's parameters in its fault's own file.
pub use crate::faults::{FaultKind, CAPABILITIES};

/// Version of this protocol; a frame with another `v` is refused with an error reply.
pub const PROTOCOL_VERSION: u32 = 2;

/// Path of the controller's websocket endpoint.
pub const AGENT_PATH: &str = "/v1/agents";

/// Largest frame either side accepts; anything bigger is refused unread.
pub const MAX_FRAME_BYTES: usize = 1 << 20;

/// One frame: version, message id and the message.
///
/// On the wire the three share one JSON object: `{"v": 1, "id": 7, "type": "ping"}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<M> {
    /// Protocol version, [`PROTOCOL_VERSION`].
    pub v: u32,
    /// Message id, unique per sender and connection.
    pub id: u64,
    /// The message itself, tagged by `type`.
    pub msg: M,
}

impl<M: Serialize> Frame<M> {
    /// A frame of the current version.
    pub fn new(id: u64, msg: M) -> Self {
        Frame {
            v: PROTOCOL_VERSION,
            id,
            msg,
        }
    }

    /// The frame as the text of one websocket message.
    pub fn encode(&self) -> String {
        // A message is a tagged object, never empty: the version and id go in after its
        // opening brace, in one pass (no intermediate `serde_json::Value`).
        let body = serde_json::to_string(&self.msg).expect("protocol types always serialize");
        let fields = body.strip_prefix('{').expect("messages are tagged objects");
        format!("{{\"v\":{},\"id\":{},{fields}", self.v, self.id)
    }
}

/// Why a frame could not be decoded, with the id when one could be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DecodeError {
    /// Id of the offending frame, when it had a readable one.
    pub id: Option<u64>,
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

/// Decodes one text frame; never panics, whatever the input.
pub fn decode<M: for<'de> Deserialize<'de>>(text: &str) -> Result<Frame<M>, DecodeError> {
    if text.len() > MAX_FRAME_BYTES {
        return Err(DecodeError {
            id: None,
            code: ErrorCode::Malformed,
            message: format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", text.len()),
        });
    }
    let mut value: serde_json::Value = serde_json::from_str(text).map_err(|e| DecodeError {
        id: None,
        code: ErrorCode::Malformed,
        message: format!("not JSON: {e}"),
    })?;
    let Some(obj) = value.as_object_mut() else {
        return Err(DecodeError {
            id: None,
            code: ErrorCode::Malformed,
            message: "a frame is a JSON object".into(),
        });
    };
    let id = obj.remove("id").and_then(|v| v.as_u64());
    let version = obj.remove("v").and_then(|v| v.as_u64());
    let malformed = |message: String| DecodeError {
        id,
        code: ErrorCode::Malformed,
        message,
    };
    match version {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(DecodeError {
                id,
                code: ErrorCode::UnsupportedVersion,
                message: format!("protocol version {v} is not supported (this side speaks {PROTOCOL_VERSION})"),
            })
        }
        None => return Err(malformed("frame has no numeric protocol version `v`".into())),
    }
    let Some(id) = id else {
        return Err(malformed("frame has no numeric message id `id`".into()));
    };
    match serde_json::from_value(value) {
        Ok(msg) => Ok(Frame {
            v: PROTOCOL_VERSION,
            id,
            msg,
        }),
        Err(e) => Err(DecodeError {
            id: Some(id),
            code: if e.to_string().starts_with("unknown variant") {
                ErrorCode::UnknownMessage
            } else {
                ErrorCode::Malformed
            },
            message: e.to_string(),
        }),
    }
}

/// Messages the controller sends to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControllerMessage {
    /// Answer to the agent's hello: the controller's nonce and its proof of the token.
    Challenge {
        /// Fresh random nonce, hex.
        nonce: String,
        /// HMAC proof of the token over both nonces for the controller's role, hex.
        proof: String,
    },
    /// Answer to a registration: the agent is accepted.
    Welcome {
        /// Identity of this controller process; faults are leased to it.
        controller_id: String,
    },
    /// Inject a fault.
    Apply {
        /// The fault to inject.
        fault: FaultSpec,
    },
    /// Remove one fault; removing a fault that is already gone succeeds.
    Remove {
        /// Id of the fault given in [`ControllerMessage::Apply`].
        fault_id: String,
    },
    /// Remove every fault this controller owns on the agent; with `experiment`, only the
    /// faults of that experiment (fault ids start with the experiment id and a `/`).
    RemoveAll {
        /// Experiment whose faults go; every one of this controller's when `None`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        experiment: Option<String>,
    },
    /// Heartbeat; renews every lease held by this controller.
    Ping {},
    /// A frame from the agent that was refused; never answered, so errors cannot loop.
    Error {
        /// Id of the offending frame when it had one.
        re: Option<u64>,
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
}

/// Messages an agent sends to the controller.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentMessage {
    /// First message on a connection: the agent's nonce, and the controller address it dialed.
    Hello {
        /// Fresh random nonce, hex.
        nonce: String,
        /// The controller's socket address as this agent connected to it (after name
        /// resolution), e.g. `10.42.0.1:7700`; both proofs cover it.
        dialed: String,
    },
    /// Second message, once the controller proved the token: who this host is.
    Register {
        /// HMAC proof of the token over both nonces for the agent's role, hex.
        proof: String,
        /// The host's description, as target filters see it.
        host: HostDescription,
        /// How long the agent keeps a fault without hearing from the controller, in ms;
        /// the controller pings well within it.
        lease_ms: u64,
        /// Random id of this agent process, new at every start: a reconnect of the same
        /// instance replaces its old connection, another instance with a live host's id is
        /// refused.
        #[serde(default)]
        instance: String,
        /// Faults this agent holds right now, whoever owns them, so a controller can remove
        /// those no running action owns (an apply whose answer was lost).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        held: Vec<HeldFault>,
    },
    /// Answer to a command.
    Ack {
        /// Id of the command answered.
        re: u64,
        /// What came of it.
        outcome: Outcome,
    },
    /// A command or frame that was refused.
    Error {
        /// Id of the offending frame when it had one.
        re: Option<u64>,
        /// Machine-readable reason.
        code: ErrorCode,
        /// Human-readable reason.
        message: String,
    },
    /// A removal on the agent's own initiative (duration over, lease lost) failed; the agent
    /// keeps the fault on record and retries with backoff.
    RemovalFailed {
        /// Id of the fault.
        fault_id: String,
        /// What went wrong.
        message: String,
        /// When the agent tries again, in ms from now.
        retry_in_ms: u64,
    },
    /// A fault ended on the agent's own initiative (duration over, lease lost, shutdown).
    FaultEnded {
        /// Id of the fault.
        fault_id: String,
        /// Why it ended.
        reason: EndReason,
        /// What it was seen to do, when it measured anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<Observed>,
    },
}

/// A fault an agent holds, as reported at registration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeldFault {
    /// The controller's fault id.
    pub fault_id: String,
    /// Id of the controller that owns it.
    pub owner: String,
}

/// Result of a command, as acknowledged by the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The fault is in effect (or, for a kill, done).
    Applied {
        /// What was done, e.g. the pids signalled.
        detail: String,
        /// Pids signalled by a kill.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        pids: Vec<u32>,
    },
    /// The fault is removed (or was never there).
    Removed {
        /// Number of faults removed by this command.
        count: u32,
        /// For a `remove` of one fault in effect: what it was seen to do.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        observed: Option<Observed>,
    },
    /// Heartbeat answered.
    Pong {},
    /// The command failed; nothing of it is left in effect.
    Failed {
        /// Why it failed.
        message: String,
    },
}

/// What a fault measured of its own effect on the host: one figure per quantity, with what
/// was asked for when the fault asked for an amount (docs/wire.md, "Observed effects").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// The figures, in the order the fault reports them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub figures: Vec<Figure>,
}

/// One measured quantity of a fault's effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Figure {
    /// What was measured, e.g. `cpu_percent`, `resident_bytes`, `processes_stopped`.
    pub name: String,
    /// Its unit, e.g. `%`, `bytes`, `processes`.
    pub unit: String,
    /// What the fault was asked to reach, when it names an amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<f64>,
    /// What was seen.
    pub observed: f64,
}

impl Observed {
    /// Adds a figure.
    pub fn with(mut self, name: &str, unit: &str, asked: Option<f64>, observed: f64) -> Self {
        self.figures.push(Figure {
            name: name.into(),
            unit: unit.into(),
            asked,
            observed,
        });
        self
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, fig) in self.figures.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} {:.1} {}", fig.name, fig.observed, fig.unit)?;
            if let Some(asked) = fig.asked {
                write!(f, " (asked {asked:.1})")?;
            }
        }
        Ok(())
    }
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or a known message with a wrong shape.
    Malformed,
    /// A message type this side does not know.
    UnknownMessage,
    /// Another protocol version.
    UnsupportedVersion,
    /// The fault kind is not in this agent's allow-list or capabilities.
    NotAllowed,
    /// A command arrived before the peer was accepted.
    NotRegistered,
    /// The peer did not prove that it knows the token.
    Unauthorized,
    /// Another agent instance is connected with this host id.
    HostConflict,
    /// A fault parameter is outside the limits of `faultline_agent::limits` or of the
    /// agent's own flags (e.g. `--max-duration`).
    OutOfRange,
}

/// Why a fault ended without a remove command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// Its duration passed.
    DurationElapsed,
    /// The controller was silent for the lease interval.
    LeaseExpired,
    /// The agent is shutting down.
    Shutdown,
    /// The agent was restarted while the fault was in effect; its restart removed it.
    AgentRestarted,
}

/// A fault to inject on one host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSpec {
    /// Unique id, chosen by the controller.
    pub fault_id: String,
    /// How long it lasts, in ms; `None` for instantaneous faults (kill).
    pub duration_ms: Option<u64>,
    /// What to do.
    pub kind: FaultKind,
}

/// A host as its agent registers it, and as target filters see it (docs/wire.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HostDescription {
    /// Unique host id, e.g. `web-a1`.
    pub host_id: String,
    /// Where the host is.
    pub placement: Placement,
    /// Lifecycle state; `running` for a connected agent.
    #[serde(default)]
    pub state: HostState,
    /// Free-form tags, matched by `resourceTags`.
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
    /// Address other hosts reach this one at.
    #[serde(default)]
    pub address: String,
    /// The agent on the host.
    #[serde(default)]
    pub agent: AgentInfo,
}

/// Placement of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct Placement {
    /// Availability zone name, e.g. `az-a`.
    pub availability_zone: String,
}

/// State of a host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct HostState {
    /// State name, `running` for a host whose agent is connected.
    pub name: String,
}

impl Default for HostState {
    fn default() -> Self {
        HostState { name: "running".into() }
    }
}

/// What the agent on a host is and can do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct AgentInfo {
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// Fault kinds this agent can and may inject.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_a_command() {
        let frame = Frame::new(
            7,
            ControllerMessage::Apply {
                fault: FaultSpec {
                    fault_id: "e1/stress/web-a1".into(),
                    duration_ms: Some(30_000),
                    kind: FaultKind::Cpu(crate::faults::cpu::Params {
                        load_percent: 80,
                        workers: 0,
                    }),
                },
            },
        );
        let back: Frame<ControllerMessage> = decode(&frame.encode()).unwrap();
        assert_eq!(back, frame);
    }

    #[test]
    fn a_frame_is_one_object_of_version_id_and_the_message() {
        let text = Frame::new(3, ControllerMessage::Ping {}).encode();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "v": PROTOCOL_VERSION, "id": 3, "type": "ping" })
        );
        let text = Frame::new(
            u64::MAX,
            AgentMessage::Ack {
                re: 2,
                outcome: Outcome::Pong {},
            },
        )
        .encode();
        let value: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            value,
            serde_json::json!({ "v": PROTOCOL_VERSION, "id": u64::MAX, "type": "ack", "re": 2, "outcome": { "status": "pong" } })
        );
    }

    #[test]
    fn reports_version_and_id_of_a_future_frame() {
        let err = decode::<ControllerMessage>(r#"{"v":9,"id":4,"type":"ping"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert_eq!(err.id, Some(4));
    }

    #[test]
    fn classifies_unknown_message_types() {
        let err = decode::<ControllerMessage>(r#"{"v":2,"id":5,"type":"format_disk"}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnknownMessage);
        assert_eq!(err.id, Some(5));
    }

    #[test]
    fn refuses_extra_fields() {
        let err = decode::<ControllerMessage>(r#"{"v":2,"id":5,"type":"ping","x":1}"#).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
    }

    proptest! {
        #[test]
        fn random_text_never_panics(s in ".{0,512}") {
            let _ = decode::<ControllerMessage>(&s);
            let _ = decode::<AgentMessage>(&s);
        }

        #[test]
        fn random_json_never_panics(v in any_json()) {
            let text = v.to_string();
            let _ = decode::<ControllerMessage>(&text);
            let _ = decode::<AgentMessage>(&text);
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            prop::sample::select(vec!["v", "id", "type", "ping", "apply", "fault", "kind", "cpu"])
                .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop::sample::select(vec!["v", "id", "type", "fault", "kind", "fault_id", "re"])
                        .prop_map(String::from),
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
