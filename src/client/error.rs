//! Errors of client calls.
//!
//! Each variant says what the application can conclude: whether the frame reached the server,
//! whether retrying makes sense. In particular a full queue is an error the caller sees at
//! once (`QueueFull`), never a silent drop.

/// Why a client call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// Too many frames are waiting for the server (the client is offline or the server is
    /// slow); nothing was queued. Retry later or raise `max_pending`.
    #[error("outgoing queue full ({capacity} frames waiting for the server)")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
    },
    /// The server answered with `error{code, message}` for this frame.
    #[error("server error {code}: {message}")]
    Server {
        /// `error.code` (`bad_request`, `forbidden`, `rate_limited`, `unknown_type`, ...).
        code: String,
        /// `error.message`.
        message: String,
    },
    /// No answer within the timeout. For a request, it will not be sent late if it was still
    /// queued; if it was written, the server may still act on it.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// The connection dropped after this frame (a `send` or a request) was written and before
    /// its answer: the server may or may not have acted on it. Publishes never get this error:
    /// they are resent, and the server's dedupe makes that safe.
    #[error("connection lost before the answer; the frame may or may not have been processed")]
    ConnectionLost,
    /// The client is closed (by the application, or after the server refused it).
    #[error("client closed")]
    Closed,
    /// Another frame with this id is still waiting for its answer.
    #[error("id {0:?} is already waiting for an answer")]
    DuplicateId(String),
    /// The frame is longer than the server accepts.
    #[error("frame of {size} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Encoded size with its newline.
        size: usize,
        /// The limit (the server's `max_frame`).
        max: usize,
    },
    /// An argument breaks a protocol limit (empty or overlong room, user or id; a request
    /// that is not a JSON object with a string `type`; data that cannot be serialised).
    #[error("invalid argument: {0}")]
    Invalid(String),
}
