//! The two ends where the WebSocket transport meets a [`Session`](crate::Session): the
//! messages it receives become the items a session reads from any transport, and its writer
//! task sends what the session's outbox holds as text messages, then the close frame.

use std::sync::Arc;

use actix_ws::ProtocolError;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, CloseCode, CloseReason};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::{Stream, StreamExt};

use super::transport::{is_too_large, Flow};
use crate::outbox::FrameSink;
use crate::protocol::codec::{CodecError, Incoming};
use crate::protocol::ByeReason;

/// The close code PROTOCOL.md gives for closing after `bye{reason}`.
pub(crate) fn close_code(reason: ByeReason) -> CloseCode {
    match reason {
        ByeReason::Normal => CloseCode::Normal,
        ByeReason::Shutdown => CloseCode::Away,
        ByeReason::Unauthorized | ByeReason::ProtocolError => CloseCode::Policy,
        ByeReason::FrameTooLarge => CloseCode::Size,
        _ => CloseCode::Other(4000),
    }
}

/// The close frame that follows `bye{reason}`: its code, and the reason as text.
pub(crate) fn close_reason(reason: ByeReason) -> CloseReason {
    CloseReason {
        code: close_code(reason),
        description: Some(reason.as_str().to_owned()),
    }
}

/// The frames of a WebSocket connection, as a session reads them: a text message is a frame
/// (a trailing `\n` tolerated), a binary one is a bad frame, a ping is answered (through
/// `session`, next to the writer's messages) and like a pong proves the peer alive, a close
/// ends the stream. `messages` must allow one byte more than `max_frame`, for that `\n`.
pub(crate) fn incoming(
    messages: AggregatedMessageStream,
    session: actix_ws::Session,
    max_frame: usize,
) -> impl Stream<Item = Result<Incoming, CodecError>> {
    futures_util::stream::unfold(Some((messages, session)), move |state| async move {
        let (mut messages, mut session) = state?;
        let item = match messages.next().await? {
            Ok(AggregatedMessage::Text(text)) => frame(text.into_bytes(), max_frame),
            Ok(AggregatedMessage::Binary(_)) => Err(CodecError::Binary),
            Ok(AggregatedMessage::Ping(payload)) => {
                // Waits while the peer does not read; the heartbeat then decides.
                let _ = session.pong(&payload).await;
                Ok(Incoming::Alive)
            }
            Ok(AggregatedMessage::Pong(_)) => Ok(Incoming::Alive),
            Ok(AggregatedMessage::Close(_)) => return None,
            Err(error) => Err(read_error(error, max_frame)),
        };
        let usable = matches!(item, Ok(_) | Err(CodecError::Binary));
        Some((item, usable.then_some((messages, session))))
    })
}

/// One received text message as a frame.
fn frame(text: Bytes, max_frame: usize) -> Result<Incoming, CodecError> {
    let text = match text.last() {
        Some(b'\n') => text.slice(..text.len() - 1),
        _ => text,
    };
    if text.len() > max_frame {
        return Err(CodecError::FrameTooLarge(max_frame));
    }
    Ok(Incoming::Frame(text))
}

/// What a read error means for the session.
fn read_error(error: ProtocolError, max_frame: usize) -> CodecError {
    if is_too_large(&error) {
        return CodecError::FrameTooLarge(max_frame);
    }
    match error {
        // Invalid UTF-8 in a text message and reserved bits arrive as `InvalidData`; a lost
        // connection as any other kind.
        ProtocolError::Io(e) if e.kind() != std::io::ErrorKind::InvalidData => CodecError::Io(e),
        other => CodecError::Protocol(other.to_string()),
    }
}

/// The writer end: one text message per frame, the close frame after the last.
pub(crate) struct WsSink {
    session: Option<actix_ws::Session>,
    flow: Arc<Flow>,
}

impl WsSink {
    /// A sink sending through `session`, pacing itself by `flow`.
    pub(crate) fn new(session: actix_ws::Session, flow: Arc<Flow>) -> Self {
        WsSink {
            session: Some(session),
            flow,
        }
    }
}

impl FrameSink for WsSink {
    async fn send(&mut self, batch: &[Bytes]) -> std::io::Result<()> {
        let closed = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "WebSocket closed");
        let session = self.session.as_mut().ok_or_else(closed)?;
        for frame in batch {
            // The outbox holds lines; a message carries the frame without its `\n`.
            let body = match frame.last() {
                Some(b'\n') => frame.slice(..frame.len() - 1),
                _ => frame.clone(),
            };
            let Ok(text) = ByteString::try_from(body) else {
                // Only an application frame built by hand can get here (ours are JSON).
                tracing::warn!(len = frame.len(), "frame is not UTF-8 text; not sent");
                continue;
            };
            self.flow.room().await;
            self.flow.sent(frame.len());
            session.text(text).await.map_err(|_| closed())?;
        }
        Ok(())
    }

    async fn finish(&mut self, reason: ByeReason) {
        if let Some(session) = self.session.take() {
            let _ = session.close(Some(close_reason(reason))).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_follow_the_protocol() {
        let code = |r| u16::from(close_code(r));
        assert_eq!(code(ByeReason::Normal), 1000);
        assert_eq!(code(ByeReason::Shutdown), 1001);
        assert_eq!(code(ByeReason::Unauthorized), 1008);
        assert_eq!(code(ByeReason::ProtocolError), 1008);
        assert_eq!(code(ByeReason::FrameTooLarge), 1009);
        for other in [
            ByeReason::HeartbeatTimeout,
            ByeReason::HandshakeTimeout,
            ByeReason::SlowConsumer,
            ByeReason::Kicked,
            ByeReason::MaxAge,
            ByeReason::ServerFull,
            ByeReason::TooManyConnections,
            ByeReason::RateLimited,
        ] {
            assert_eq!(code(other), 4000, "{other}");
        }
        assert_eq!(
            close_reason(ByeReason::Kicked).description.as_deref(),
            Some("kicked")
        );
    }

    #[test]
    fn a_trailing_newline_is_tolerated_and_not_counted() {
        let f = |s: &'static [u8]| frame(Bytes::from_static(s), 4);
        assert!(matches!(f(b"abcd"), Ok(Incoming::Frame(b)) if &b[..] == b"abcd"));
        assert!(matches!(f(b"abcd\n"), Ok(Incoming::Frame(b)) if &b[..] == b"abcd"));
        assert!(matches!(f(b"abcde"), Err(CodecError::FrameTooLarge(4))));
        assert!(matches!(f(b"abcd\n\n"), Err(CodecError::FrameTooLarge(4))));
    }
}
