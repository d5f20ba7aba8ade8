//! Protocol v1 frames: parsing what clients send and encoding what the server sends.
//!
//! Parsing is two-step and borrows from the line: a cheap pass reads only `type` (and `id`,
//! to echo it in errors), then the frame is decoded into the struct for that type. A line that
//! is not a JSON object with a string `type` is a `bad_frame`; a known type with missing or
//! invalid fields is a `bad_request`; anything else goes to the application's handlers.
//! Payloads (`data`) stay raw JSON text end to end, so a fan-out never re-serialises them.

pub(crate) mod codec;

use std::borrow::Cow;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::names::{check_user, NameError, NameLimits};

/// `error.code` values. Deserializable, so that an application's hook can name one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not a JSON object with a string `type`.
    BadFrame,
    /// A known frame type with a missing or invalid field.
    BadRequest,
    /// A frame other than `hello` or `ping` before the handshake.
    NotReady,
    /// Authentication failed.
    Unauthorized,
    /// Not allowed for this user.
    Forbidden,
    /// Too many frames.
    RateLimited,
    /// No handler for this frame type.
    UnknownType,
    /// The server failed; the client did nothing wrong.
    Internal,
    /// Extension: the server could not reach its message store; nothing was done, and
    /// resending the same frame (same `id`) later is safe.
    Unavailable,
}

/// `bye.reason` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ByeReason {
    /// An ordinary close.
    Normal,
    /// The client stayed silent for `max_missed` heartbeats.
    HeartbeatTimeout,
    /// No `hello` within the handshake timeout.
    HandshakeTimeout,
    /// The server is shutting down.
    Shutdown,
    /// The client did not read fast enough and its outbound budget ran out.
    SlowConsumer,
    /// A line exceeded `max_frame`.
    FrameTooLarge,
    /// Too many bad frames.
    ProtocolError,
    /// Authentication failed.
    Unauthorized,
    /// Closed by the operator or the application.
    Kicked,
    /// Extension: the connection reached `max_connection_age`; reconnect to rebalance.
    MaxAge,
    /// Extension: the server is at `max_connections`.
    ServerFull,
    /// Extension: too many connections from this address or sessions of this user.
    TooManyConnections,
    /// Extension: the client kept sending faster than its rate limit.
    RateLimited,
}

impl ByeReason {
    /// The wire name of the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            ByeReason::Normal => "normal",
            ByeReason::HeartbeatTimeout => "heartbeat_timeout",
            ByeReason::HandshakeTimeout => "handshake_timeout",
            ByeReason::Shutdown => "shutdown",
            ByeReason::SlowConsumer => "slow_consumer",
            ByeReason::FrameTooLarge => "frame_too_large",
            ByeReason::ProtocolError => "protocol_error",
            ByeReason::Unauthorized => "unauthorized",
            ByeReason::Kicked => "kicked",
            ByeReason::MaxAge => "max_age",
            ByeReason::ServerFull => "server_full",
            ByeReason::TooManyConnections => "too_many_connections",
            ByeReason::RateLimited => "rate_limited",
        }
    }
}

#[cfg(feature = "redis")]
impl ByeReason {
    /// Every reason, for parsing.
    const ALL: [ByeReason; 13] = [
        ByeReason::Normal,
        ByeReason::HeartbeatTimeout,
        ByeReason::HandshakeTimeout,
        ByeReason::Shutdown,
        ByeReason::SlowConsumer,
        ByeReason::FrameTooLarge,
        ByeReason::ProtocolError,
        ByeReason::Unauthorized,
        ByeReason::Kicked,
        ByeReason::MaxAge,
        ByeReason::ServerFull,
        ByeReason::TooManyConnections,
        ByeReason::RateLimited,
    ];

    /// The reason with this wire name (as nodes pass kicks to each other).
    pub(crate) fn from_wire(name: &str) -> Option<ByeReason> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

impl std::fmt::Display for ByeReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `hello`: the first frame of a connection.
#[derive(Debug, Deserialize)]
pub(crate) struct Hello<'a> {
    /// The claimed user name.
    #[serde(borrow, default)]
    pub(crate) user: Option<Cow<'a, str>>,
    /// An authentication token.
    #[serde(borrow, default)]
    pub(crate) token: Option<Cow<'a, str>>,
    /// Free text describing the client.
    #[serde(borrow, default)]
    pub(crate) client: Option<Cow<'a, str>>,
    /// The heartbeat the client asks for (protocol v1.1).
    #[serde(default)]
    pub(crate) heartbeat: Option<HeartbeatRequest>,
}

/// `hello.heartbeat`: the interval a client would like; the server grants the nearest value
/// within its bounds.
#[derive(Debug, Deserialize)]
pub(crate) struct HeartbeatRequest {
    /// The requested ping interval in milliseconds.
    #[serde(default)]
    pub(crate) interval_ms: Option<u64>,
}

/// `ping` or `pong` from a client.
#[derive(Debug, Deserialize)]
pub(crate) struct PingPong {
    /// The sequence number to echo or acknowledge.
    #[serde(default)]
    pub(crate) seq: Option<u64>,
}

/// `subscribe`.
#[derive(Debug, Deserialize)]
pub(crate) struct Subscribe<'a> {
    /// Room name.
    #[serde(borrow)]
    pub(crate) room: Cow<'a, str>,
    /// Last seq the client has seen; replay starts after it.
    #[serde(default)]
    pub(crate) since: Option<u64>,
    /// Epoch the `since` belongs to.
    #[serde(borrow, default)]
    pub(crate) epoch: Option<Cow<'a, str>>,
}

/// `unsubscribe`.
#[derive(Debug, Deserialize)]
pub(crate) struct Unsubscribe<'a> {
    /// Room name.
    #[serde(borrow)]
    pub(crate) room: Cow<'a, str>,
}

/// `publish`.
#[derive(Debug, Deserialize)]
pub(crate) struct Publish<'a> {
    /// Room name.
    #[serde(borrow)]
    pub(crate) room: Cow<'a, str>,
    /// Payload, any JSON, kept as raw text.
    #[serde(borrow)]
    pub(crate) data: &'a RawValue,
    /// Publisher's id for acks and dedupe.
    #[serde(borrow, default)]
    pub(crate) id: Option<Cow<'a, str>>,
}

/// `send`: a direct message to every session of a user.
#[derive(Debug, Deserialize)]
pub(crate) struct Send<'a> {
    /// Recipient user.
    #[serde(borrow)]
    pub(crate) to: Cow<'a, str>,
    /// Payload, any JSON, kept as raw text.
    #[serde(borrow)]
    pub(crate) data: &'a RawValue,
    /// Sender's id for the ack.
    #[serde(borrow, default)]
    pub(crate) id: Option<Cow<'a, str>>,
}

/// `bye` from a client.
#[derive(Debug, Deserialize)]
pub(crate) struct Bye<'a> {
    /// Why the client leaves.
    #[serde(borrow, default)]
    pub(crate) reason: Option<Cow<'a, str>>,
}

/// A parsed client frame, borrowing from its line.
#[derive(Debug)]
pub(crate) enum Inbound<'a> {
    /// `hello`.
    Hello(Hello<'a>),
    /// `ping`.
    Ping(PingPong),
    /// `pong`.
    Pong(PingPong),
    /// `subscribe`.
    Subscribe(Subscribe<'a>),
    /// `unsubscribe`.
    Unsubscribe(Unsubscribe<'a>),
    /// `publish`.
    Publish(Publish<'a>),
    /// `send`.
    Send(Send<'a>),
    /// `bye`.
    Bye(Bye<'a>),
    /// A type the protocol does not define: for the application's handlers.
    Other {
        /// The frame's `type`.
        kind: Cow<'a, str>,
        /// The frame's `id`, when it is a string.
        id: Option<String>,
    },
}

/// Why a line could not be turned into a frame.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// Not a JSON object with a string `type`: `error{code:"bad_frame"}`.
    BadFrame(String),
    /// A known type with a missing or invalid field: `error{code:"bad_request"}`.
    BadRequest {
        /// What is wrong.
        message: String,
        /// The frame's `id`, when it has a string one.
        id: Option<String>,
    },
}

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, rename = "type")]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
}

impl<'a> Inbound<'a> {
    /// Parses one line (without its newline) with the protocol's size limits.
    #[cfg(test)]
    pub(crate) fn parse(line: &'a [u8]) -> Result<Inbound<'a>, ParseError> {
        Self::parse_limited(line, &NameLimits::default())
    }

    /// Parses one line (without its newline), checking names against `limits`.
    pub(crate) fn parse_limited(
        line: &'a [u8],
        limits: &NameLimits,
    ) -> Result<Inbound<'a>, ParseError> {
        // serde_json checks UTF-8 only in strings it decodes, not in fields it skips or
        // keeps raw; the whole line must be text.
        let line = std::str::from_utf8(line)
            .map_err(|_| ParseError::BadFrame("frame is not valid UTF-8".to_owned()))?;
        let head: Head<'a> = serde_json::from_str(line).map_err(|e| {
            ParseError::BadFrame(if e.is_data() {
                "frame must be a JSON object with a string `type`".to_owned()
            } else {
                format!("invalid JSON: {}", strip_position(&e))
            })
        })?;
        let id = head
            .id
            .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok());
        fn body<'a, T: Deserialize<'a>>(
            line: &'a str,
            id: &Option<String>,
        ) -> Result<T, ParseError> {
            serde_json::from_str(line).map_err(|e| ParseError::BadRequest {
                message: strip_position(&e),
                id: id.clone(),
            })
        }
        let frame = match &*head.kind {
            "hello" => Inbound::Hello(body(line, &id)?),
            "ping" => Inbound::Ping(body(line, &id)?),
            "pong" => Inbound::Pong(body(line, &id)?),
            "subscribe" => Inbound::Subscribe(body(line, &id)?),
            "unsubscribe" => Inbound::Unsubscribe(body(line, &id)?),
            "publish" => Inbound::Publish(body(line, &id)?),
            "send" => Inbound::Send(body(line, &id)?),
            "bye" => Inbound::Bye(body(line, &id)?),
            _ => Inbound::Other {
                kind: head.kind,
                id,
            },
        };
        frame.check_limits(limits)
    }

    fn check_limits(self, limits: &NameLimits) -> Result<Self, ParseError> {
        let bad = |e: NameError, id: Option<&Cow<'_, str>>| ParseError::BadRequest {
            message: e.to_string(),
            id: id.map(|s| s.to_string()),
        };
        let check_id = |id: &Option<Cow<'_, str>>| match id {
            Some(i) => limits.check_id(i).map_err(|e| bad(e, None)),
            None => Ok(()),
        };
        match &self {
            Inbound::Hello(h) => {
                if let Some(user) = &h.user {
                    check_user(user).map_err(|e| bad(e, None))?;
                }
            }
            Inbound::Subscribe(s) => limits.check_room(&s.room).map_err(|e| bad(e, None))?,
            Inbound::Unsubscribe(s) => limits.check_room(&s.room).map_err(|e| bad(e, None))?,
            Inbound::Publish(p) => {
                check_id(&p.id)?;
                limits
                    .check_room(&p.room)
                    .map_err(|e| bad(e, p.id.as_ref()))?;
            }
            Inbound::Send(s) => {
                check_id(&s.id)?;
                check_user(&s.to).map_err(|e| bad(e.for_field("to"), s.id.as_ref()))?;
            }
            _ => {}
        }
        Ok(self)
    }
}

/// serde_json appends "at line 1 column N"; for one-line frames that is noise.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.find(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

/// `welcome.heartbeat`.
#[derive(Debug, Clone, Copy, Serialize)]
pub(crate) struct HeartbeatInfo {
    /// Ping interval in milliseconds.
    pub(crate) interval_ms: u64,
    /// Misses in a row that close the connection.
    pub(crate) max_missed: u32,
}

/// A frame the server sends. Encode it with [`Outbound::encode`].
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Outbound<'a> {
    /// Answer to `hello`.
    Welcome {
        /// Session id, unique per connection.
        session: &'a str,
        /// The user this connection belongs to.
        user: &'a str,
        /// Heartbeat parameters.
        heartbeat: HeartbeatInfo,
        /// Longest accepted line.
        max_frame: usize,
        /// Server name and version.
        server: &'a str,
    },
    /// A server heartbeat.
    Ping {
        /// Counts up from 1.
        seq: u64,
    },
    /// Answer to a client's `ping`.
    Pong {
        /// The client's seq.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// Answer to `subscribe`, after any replay.
    Subscribed {
        /// Room name.
        room: &'a str,
        /// The room's latest seq.
        seq: u64,
        /// The room's epoch.
        epoch: &'a str,
        /// Whether everything after `since` was replayed (only with `since`).
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    /// Answer to `unsubscribe`, or the server dropping a subscription.
    Unsubscribed {
        /// Room name.
        room: &'a str,
        /// Why the server dropped it (`resync`: it could not deliver the room's stream without
        /// a hole; subscribe again with `since`/`epoch`). Absent for an answer to `unsubscribe`.
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// A room message or a direct message.
    Message {
        /// Room (absent for direct messages).
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        /// Room sequence (absent for direct messages).
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Sending user; `null` for server pushes.
        from: Option<&'a str>,
        /// Payload.
        data: &'a RawValue,
        /// The publisher's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// Acknowledges a `publish` (with `seq`) or a `send` (with `delivered`).
    Ack {
        /// The acknowledged frame's id.
        id: &'a str,
        /// Room seq given to a publish.
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        /// Sessions a `send` reached.
        #[serde(skip_serializing_if = "Option::is_none")]
        delivered: Option<usize>,
    },
    /// Something the client sent was refused.
    Error {
        /// Machine-readable code.
        code: ErrorCode,
        /// Human-readable text.
        message: &'a str,
        /// The offending frame's id.
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
    /// The server is about to close the connection.
    Bye {
        /// Why.
        reason: ByeReason,
        /// Wait at least this long before reconnecting.
        #[serde(skip_serializing_if = "Option::is_none")]
        reconnect_ms: Option<u64>,
    },
}

impl Outbound<'_> {
    /// Serialises the frame as one line, newline included.
    pub(crate) fn encode(&self) -> Bytes {
        encode_line(self)
    }
}

/// Longest `error.message` text sent, in bytes before JSON escaping: it may quote the input.
const MAX_ERROR_TEXT: usize = 256;

/// An `error` frame that fits in `max_frame`: the text is cut (at a character boundary) to
/// [`MAX_ERROR_TEXT`], and further, after dropping the `id`, when the line would still be
/// longer than the `max_frame` the server announced.
pub(crate) fn error_line(
    code: ErrorCode,
    message: &str,
    id: Option<&str>,
    max_frame: usize,
) -> Bytes {
    let mut message = clip(message, MAX_ERROR_TEXT);
    let line = Outbound::Error { code, message, id }.encode();
    if line.len() <= max_frame {
        return line;
    }
    loop {
        let line = Outbound::Error {
            code,
            message,
            id: None,
        }
        .encode();
        let over = line.len().saturating_sub(max_frame);
        if over == 0 || message.is_empty() {
            return line;
        }
        message = clip(message, message.len().saturating_sub(over));
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The longest the `message` frame for this room (or direct, without one), sender, payload
/// and id can be on the wire, newline included: with the largest possible `seq`. A server
/// that announced `max_frame` refuses a publish or send whose message would be longer.
pub(crate) fn message_len(
    room: Option<&str>,
    from: Option<&str>,
    data: &RawValue,
    id: Option<&str>,
) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let message = Outbound::Message {
        room,
        seq: room.map(|_| u64::MAX),
        from,
        data,
        id,
    };
    let mut count = Count(0);
    // Counting cannot fail, and neither can serialising this frame.
    let _ = serde_json::to_writer(&mut count, &message);
    count.0 + 1
}

/// Encodes a small frame (a ping, a pong) as one line on the stack and hands it to `f`: a
/// frame written at once never touches the heap. Larger ones are encoded with
/// [`encode_line`].
pub(crate) fn with_line<T: Serialize + ?Sized, R>(value: &T, f: impl FnOnce(&[u8]) -> R) -> R {
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..63]);
    if serde_json::to_writer(&mut cursor, value).is_ok() {
        let len = cursor.position() as usize;
        buf[len] = b'\n';
        return f(&buf[..=len]);
    }
    f(&encode_line(value))
}

/// A room `message` frame cut around its `seq`: the first part ends with `"seq":`, the second
/// starts right after the number and ends with the newline. A shared store that assigns the
/// seq splices it in, so that every node forwards the same bytes without re-encoding them.
#[cfg(feature = "redis")]
pub(crate) fn message_around_seq(
    room: &str,
    from: Option<&str>,
    data: &RawValue,
    id: Option<&str>,
) -> (Bytes, Bytes) {
    let frame = Outbound::Message {
        room: Some(room),
        seq: Some(0),
        from,
        data,
        id,
    }
    .encode();
    // Fields are written in declaration order, so the marker follows the room name, and a
    // quote inside that (escaped) name is always preceded by a backslash, never by a comma.
    const MARKER: &[u8] = b",\"seq\":0";
    match frame.windows(MARKER.len()).position(|w| w == MARKER) {
        Some(at) => {
            let digits = at + MARKER.len() - 1;
            (frame.slice(..digits), frame.slice(digits + 1..))
        }
        // Unreachable with serde_json's output; a frame without a seq is still a frame.
        None => (frame, Bytes::new()),
    }
}

/// Serialises any value as one JSON line, newline included; for application frames.
pub fn encode_line<T: Serialize + ?Sized>(value: &T) -> Bytes {
    let mut buf = Vec::with_capacity(64);
    // Serialising our own types into a Vec cannot fail: no I/O, no non-string map keys.
    if serde_json::to_writer(&mut buf, value).is_err() {
        buf.clear();
        buf.extend_from_slice(br#"{"type":"error","code":"internal","message":"encoding failed"}"#);
    }
    buf.push(b'\n');
    Bytes::from(buf)
}

#[cfg(test)]
mod tests {
    #[test]
    fn error_frames_fit_in_max_frame() {
        let long = "é\u{0}x".repeat(400);
        let id = "i".repeat(128);
        let line = super::error_line(super::ErrorCode::BadRequest, &long, Some(&id), 65536);
        let frame: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert!(frame["message"].as_str().unwrap().len() <= super::MAX_ERROR_TEXT);
        assert_eq!(frame["id"], id.as_str());
        for max_frame in [64, 100, 256, 300, 1024] {
            let line = super::error_line(super::ErrorCode::BadRequest, &long, Some(&id), max_frame);
            assert!(line.len() <= max_frame, "{max_frame}: {} bytes", line.len());
            let frame: serde_json::Value = serde_json::from_slice(&line).unwrap();
            assert_eq!(frame["code"], "bad_request");
        }
    }

    use super::*;

    #[test]
    fn parses_known_frames() {
        let f = Inbound::parse(br#"{"type":"publish","room":"r","data":{"x":[1,2]},"id":"a"}"#)
            .unwrap();
        match f {
            Inbound::Publish(p) => {
                assert_eq!(p.room, "r");
                assert_eq!(p.data.get(), r#"{"x":[1,2]}"#);
                assert_eq!(p.id.as_deref(), Some("a"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Inbound::parse(br#"{"type":"pong","seq":3,"extra":true}"#).unwrap(),
            Inbound::Pong(PingPong { seq: Some(3) })
        ));
        let hello = br#"{"type":"hello","user":"u","heartbeat":{"interval_ms":60000}}"#;
        assert!(matches!(
            Inbound::parse(hello).unwrap(),
            Inbound::Hello(Hello {
                heartbeat: Some(HeartbeatRequest {
                    interval_ms: Some(60000)
                }),
                ..
            })
        ));
        let bad = br#"{"type":"hello","user":"u","heartbeat":{"interval_ms":-1}}"#;
        assert!(matches!(
            Inbound::parse(bad),
            Err(ParseError::BadRequest { .. })
        ));
    }

    #[test]
    fn classifies_errors() {
        for bad in [
            &b"nope"[..],
            b"[1]",
            b"{}",
            br#"{"type":5}"#,
            b"\xff\xfe",
            b"",
        ] {
            assert!(
                matches!(Inbound::parse(bad), Err(ParseError::BadFrame(_))),
                "{bad:?}"
            );
        }
        let e = Inbound::parse(br#"{"type":"publish","id":"x","data":1}"#).unwrap_err();
        assert!(
            matches!(e, ParseError::BadRequest { id: Some(ref id), .. } if id == "x"),
            "{e:?}"
        );
        let e = Inbound::parse(br#"{"type":"subscribe","room":""}"#).unwrap_err();
        assert!(matches!(e, ParseError::BadRequest { .. }));
        let long = format!(r#"{{"type":"hello","user":"{}"}}"#, "u".repeat(129));
        assert!(Inbound::parse(long.as_bytes()).is_err());
    }

    #[test]
    fn unknown_types_are_passed_on_with_their_id() {
        match Inbound::parse(br#"{"type":"custom","id":"q1","x":1}"#).unwrap() {
            Inbound::Other { kind, id } => {
                assert_eq!(kind, "custom");
                assert_eq!(id.as_deref(), Some("q1"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_never_overflows_the_stack() {
        let deep = |kind: &str| {
            let n = 100_000;
            format!(
                r#"{{"type":"{kind}","room":{}{}}}"#,
                "[".repeat(n),
                "]".repeat(n)
            )
        };
        // skipped as an unknown field or kept raw: no recursion
        assert!(matches!(
            Inbound::parse(deep("custom").as_bytes()),
            Ok(Inbound::Other { .. })
        ));
        // decoded into a typed field: serde_json's depth limit turns it into an error
        assert!(matches!(
            Inbound::parse(deep("subscribe").as_bytes()),
            Err(ParseError::BadRequest { .. })
        ));
    }

    #[test]
    fn message_len_is_the_longest_encoding() {
        let data = RawValue::from_string("{\"t\":\"x\"}".into()).unwrap();
        let longest = Outbound::Message {
            room: Some("r\"oom"),
            seq: Some(u64::MAX),
            from: Some("al\nice"),
            data: &data,
            id: Some("i"),
        }
        .encode();
        assert_eq!(
            message_len(Some("r\"oom"), Some("al\nice"), &data, Some("i")),
            longest.len()
        );
        let direct = Outbound::Message {
            room: None,
            seq: None,
            from: None,
            data: &data,
            id: None,
        }
        .encode();
        assert_eq!(message_len(None, None, &data, None), direct.len());
    }

    #[test]
    #[cfg(feature = "redis")]
    fn a_message_splits_around_its_seq() {
        let data = RawValue::from_string("{\"seq\":0}".into()).unwrap();
        for room in ["r", "a,\"seq\":0,", "}{"] {
            let (head, tail) = message_around_seq(room, Some("al\"ice"), &data, Some("i"));
            let whole = Outbound::Message {
                room: Some(room),
                seq: Some(123_456),
                from: Some("al\"ice"),
                data: &data,
                id: Some("i"),
            }
            .encode();
            assert_eq!([&head[..], b"123456", &tail[..]].concat(), &whole[..]);
        }
        assert_eq!(ByeReason::from_wire("kicked"), Some(ByeReason::Kicked));
        assert_eq!(ByeReason::from_wire("nope"), None);
    }

    #[test]
    fn encodes_wire_shapes() {
        let data = RawValue::from_string("{\"t\":1}".into()).unwrap();
        let m = Outbound::Message {
            room: Some("r"),
            seq: Some(4),
            from: None,
            data: &data,
            id: None,
        }
        .encode();
        assert_eq!(
            &m[..],
            b"{\"type\":\"message\",\"room\":\"r\",\"seq\":4,\"from\":null,\"data\":{\"t\":1}}\n"
        );
        let b = Outbound::Bye {
            reason: ByeReason::SlowConsumer,
            reconnect_ms: None,
        }
        .encode();
        assert_eq!(&b[..], b"{\"type\":\"bye\",\"reason\":\"slow_consumer\"}\n");
    }
}
