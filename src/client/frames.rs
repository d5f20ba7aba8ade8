//! The client's side of protocol v1: frames it sends and the server frames it parses.
//!
//! [`crate::protocol`] is written for the server (it parses client frames and encodes server
//! frames); a client needs the mirror image. Parsing follows the same two steps: a cheap pass
//! reads `type` and `id`, then the body is decoded into the struct for that type. Unknown
//! server frame types are not errors: they are kept as JSON for the application (servers may
//! add frame types, and application handlers answer with their own). Payloads (`data`) stay
//! raw JSON text.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::{encode_line, Outbound};

/// `welcome.heartbeat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct HeartbeatParams {
    /// Server ping interval in milliseconds.
    pub interval_ms: u64,
    /// Misses the server tolerates; the client waits `(max_missed + 1) × interval`.
    pub max_missed: u32,
}

/// `welcome`.
#[derive(Debug, Clone, Deserialize)]
pub struct Welcome {
    /// Session id.
    pub session: String,
    /// The user the server knows this connection as.
    pub user: String,
    /// Heartbeat parameters.
    pub heartbeat: HeartbeatParams,
    /// Longest line the server accepts.
    #[serde(default)]
    pub max_frame: Option<usize>,
}

/// `subscribed`.
#[derive(Debug, Clone, Deserialize)]
pub struct Subscribed {
    /// Room name.
    pub room: String,
    /// The room's latest seq.
    pub seq: u64,
    /// The room's epoch.
    pub epoch: String,
    /// With `since`: whether everything after it was replayed.
    #[serde(default)]
    pub recovered: Option<bool>,
}

/// A `message` frame: a room message (with `room` and `seq`) or a direct one.
#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    /// Room (absent for direct messages).
    #[serde(default)]
    pub room: Option<String>,
    /// Room sequence (absent for direct messages).
    #[serde(default)]
    pub seq: Option<u64>,
    /// Sending user; `None` for pushes by the server's API.
    #[serde(default)]
    pub from: Option<String>,
    /// Payload, raw JSON.
    pub data: Box<RawValue>,
    /// The publisher's id, when it gave one.
    #[serde(default)]
    pub id: Option<String>,
}

impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.room == other.room
            && self.seq == other.seq
            && self.from == other.from
            && self.data.get() == other.data.get()
            && self.id == other.id
    }
}

impl Eq for Message {}

impl Message {
    /// Decodes the payload into an application type.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// The frame as one JSON line without its newline, in the wire shape
    /// (`{"type":"message",...}`): what `heartwire connect` prints.
    pub fn to_json_line(&self) -> String {
        let mut line = Outbound::Message {
            room: self.room.as_deref(),
            seq: self.seq,
            from: self.from.as_deref(),
            data: &self.data,
            id: self.id.as_deref(),
        }
        .encode()
        .to_vec();
        line.pop();
        String::from_utf8_lossy(&line).into_owned()
    }
}

/// `ack`.
#[derive(Debug, Clone, Deserialize)]
pub struct Ack {
    /// The acknowledged frame's id (the rest of the frame is read by the waiting caller).
    pub id: String,
}

/// `error`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorFrame {
    /// Machine-readable code.
    pub code: String,
    /// Human-readable text.
    #[serde(default)]
    pub message: String,
    /// The offending frame's id.
    #[serde(default)]
    pub id: Option<String>,
}

/// `bye`.
#[derive(Debug, Clone, Deserialize)]
pub struct Bye {
    /// Why the server closes.
    #[serde(default)]
    pub reason: Option<String>,
    /// Wait at least this long before reconnecting.
    #[serde(default)]
    pub reconnect_ms: Option<u64>,
}

#[derive(Deserialize)]
struct Seq {
    #[serde(default)]
    seq: Option<u64>,
}

/// `unsubscribed`.
#[derive(Debug, Clone, Deserialize)]
pub struct Unsubscribed {
    /// Room name.
    pub room: String,
    /// Why the server dropped the subscription on its own (`resync`), if it did.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A parsed server frame.
#[derive(Debug, Clone)]
pub enum ServerFrame {
    /// `welcome`.
    Welcome(Welcome),
    /// `ping{seq}`: answer with `pong{seq}`.
    Ping(Option<u64>),
    /// `pong`: answer to a client ping.
    Pong,
    /// `subscribed`.
    Subscribed(Subscribed),
    /// `unsubscribed{room}`.
    Unsubscribed(Unsubscribed),
    /// `message`.
    Message(Message),
    /// `ack`.
    Ack(Ack),
    /// `error`.
    Error(ErrorFrame),
    /// `bye`.
    Bye(Bye),
    /// A type protocol v1 does not define (an application frame).
    Other {
        /// Its `type`.
        kind: String,
        /// Its `id`, when a string.
        id: Option<String>,
        /// The whole frame.
        frame: serde_json::Value,
    },
}

/// Why a server line could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad frame from server: {0}")]
pub struct FrameError(pub String);

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

impl ServerFrame {
    /// Parses one line (without its newline).
    pub fn parse(line: &[u8]) -> Result<ServerFrame, FrameError> {
        let head: Head<'_> = serde_json::from_slice(line)
            .map_err(|e| FrameError(format!("{}: {e}", preview(line))))?;
        fn body<'a, T: Deserialize<'a>>(line: &'a [u8]) -> Result<T, FrameError> {
            serde_json::from_slice(line).map_err(|e| FrameError(format!("{}: {e}", preview(line))))
        }
        Ok(match &*head.kind {
            "welcome" => ServerFrame::Welcome(body(line)?),
            "ping" => ServerFrame::Ping(body::<Seq>(line)?.seq),
            "pong" => ServerFrame::Pong,
            "subscribed" => ServerFrame::Subscribed(body(line)?),
            "unsubscribed" => ServerFrame::Unsubscribed(body(line)?),
            "message" => ServerFrame::Message(body(line)?),
            "ack" => ServerFrame::Ack(body(line)?),
            "error" => ServerFrame::Error(body(line)?),
            "bye" => ServerFrame::Bye(body(line)?),
            _ => ServerFrame::Other {
                id: head
                    .id
                    .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok()),
                kind: head.kind.into_owned(),
                frame: body(line)?,
            },
        })
    }
}

fn preview(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    if line.len() > 80 {
        format!("{text}…")
    } else {
        text
    }
}

/// `hello.heartbeat`: the interval the client asks for.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HeartbeatRequest {
    /// The requested ping interval in milliseconds.
    pub interval_ms: u64,
}

/// A frame the client sends.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame<'a> {
    /// `hello`.
    Hello {
        /// User name.
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        /// Authentication token.
        #[serde(skip_serializing_if = "Option::is_none")]
        token: Option<&'a str>,
        /// Free text describing the client.
        #[serde(skip_serializing_if = "Option::is_none")]
        client: Option<&'a str>,
        /// The heartbeat asked for.
        #[serde(skip_serializing_if = "Option::is_none")]
        heartbeat: Option<HeartbeatRequest>,
    },
    /// `pong{seq}`, the answer to a server ping.
    Pong {
        /// The ping's seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// `subscribe`.
    Subscribe {
        /// Room name.
        room: &'a str,
        /// Last seq seen.
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// Epoch of `since`.
        #[serde(skip_serializing_if = "Option::is_none")]
        epoch: Option<&'a str>,
    },
    /// `unsubscribe`.
    Unsubscribe {
        /// Room name.
        room: &'a str,
    },
    /// `publish`.
    Publish {
        /// Room name.
        room: &'a str,
        /// Payload.
        data: &'a RawValue,
        /// Id for the ack and the server's dedupe.
        id: &'a str,
    },
    /// `send`.
    Send {
        /// Recipient user.
        to: &'a str,
        /// Payload.
        data: &'a RawValue,
        /// Id for the ack.
        id: &'a str,
    },
}

impl ClientFrame<'_> {
    /// Serialises the frame as one line, newline included.
    pub fn encode(&self) -> Bytes {
        encode_line(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_server_frames() {
        let w = ServerFrame::parse(
            br#"{"type":"welcome","session":"n-1","user":"u","heartbeat":{"interval_ms":100,"max_missed":2},"max_frame":65536,"server":"heartwire/0.1"}"#,
        )
        .unwrap();
        assert!(
            matches!(w, ServerFrame::Welcome(ref w) if w.heartbeat == HeartbeatParams { interval_ms: 100, max_missed: 2 })
        );
        let m = ServerFrame::parse(
            br#"{"type":"message","room":"r","seq":3,"from":null,"data":{"a":[1]},"id":"x"}"#,
        )
        .unwrap();
        match m {
            ServerFrame::Message(m) => {
                assert_eq!(m.data.get(), r#"{"a":[1]}"#);
                assert_eq!(m.from, None);
                assert_eq!(
                    m.to_json_line(),
                    r#"{"type":"message","room":"r","seq":3,"from":null,"data":{"a":[1]},"id":"x"}"#
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            ServerFrame::parse(br#"{"type":"ping","seq":4}"#).unwrap(),
            ServerFrame::Ping(Some(4))
        ));
        match ServerFrame::parse(br#"{"type":"result","id":"q1","ok":true}"#).unwrap() {
            ServerFrame::Other { kind, id, frame } => {
                assert_eq!((kind.as_str(), id.as_deref()), ("result", Some("q1")));
                assert_eq!(frame["ok"], true);
            }
            other => panic!("{other:?}"),
        }
        assert!(ServerFrame::parse(b"nope").is_err());
        assert!(ServerFrame::parse(br#"{"type":"ack"}"#).is_err());
    }

    #[test]
    fn encodes_client_frames() {
        let data = RawValue::from_string("[1]".into()).unwrap();
        let f = ClientFrame::Publish {
            room: "r",
            data: &data,
            id: "a-1",
        }
        .encode();
        assert_eq!(
            &f[..],
            b"{\"type\":\"publish\",\"room\":\"r\",\"data\":[1],\"id\":\"a-1\"}\n"
        );
        let s = ClientFrame::Subscribe {
            room: "r",
            since: None,
            epoch: None,
        }
        .encode();
        assert_eq!(&s[..], b"{\"type\":\"subscribe\",\"room\":\"r\"}\n");
    }
}
