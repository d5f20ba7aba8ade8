//! A heartwire client that stays connected and loses nothing: `heartwire::client`.
//!
//! Long-lived connections die in ways TCP does not report: a server that hangs, a NAT that
//! forgets the mapping, a cable pulled somewhere in between. A client that waits for the
//! kernel to notice waits for minutes; one that retries on a fixed schedule, together with
//! every other client, knocks the server over again as it comes back. This module is the
//! client side of protocol v1 built for that:
//!
//! - **Dead-server detection.** The server pings every `interval`; the client treats
//!   `(max_missed + 1) × interval` of silence (both from `welcome`) as a dead server and
//!   reconnects, even when the socket still looks open.
//! - **Reconnect with backoff.** Exponential with full jitter, capped, reset after a
//!   connection that stayed up; a server's `bye.reconnect_ms` is a lower bound
//!   ([`BackoffConfig`]).
//! - **Resume.** Every room is resubscribed with `since`/`epoch`; replayed messages are
//!   delivered once and in order, and a hole that cannot be replayed is reported as
//!   [`ClientEvent::Gap`], never skipped silently. When the room's stream restarted (a new
//!   epoch, e.g. a restarted server), the client reports the gap and then fetches what the new
//!   epoch already holds, so nothing the server still has is lost.
//! - **Nothing lost.** Publishes and sends made while offline wait in a bounded queue (a full
//!   queue is an error, not a drop); every publish has an id and unacknowledged ones are
//!   resent, so with the server's dedupe each is delivered exactly once.
//! - **Request/response** over the same connection: [`ClientHandle::request`] sends any frame
//!   with an `id` and resolves with the server frame answering it, or times out.
//!
//! The [`Client`] actor runs under `actix::Supervisor`; the
//! application holds a [`ClientHandle`] and reads [`ClientEvent`]s from an [`Events`] stream
//! and/or an actix `Recipient`.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use heartwire::client::{self, ClientConfig, ClientEvent};
//!
//! #[actix_rt::main]
//! async fn main() {
//!     let (client, mut events) = client::connect(ClientConfig::new("127.0.0.1:7700", "alice"));
//!     client.subscribe("lobby").await.expect("valid room");
//!     client.publish("lobby", &serde_json::json!({"text": "hi"})).await.expect("acked");
//!     while let Some(event) = events.next().await {
//!         if let ClientEvent::Message(m) = event {
//!             println!("{}", m.to_json_line());
//!         }
//!     }
//! }
//! ```

mod actor;
mod backoff;
mod config;
mod error;
mod event;
mod frames;
mod handle;
mod outgoing;
mod rooms;

use actix::{Recipient, Supervisor};

pub use actor::{Client, Status};
pub use backoff::{Backoff, BackoffConfig};
pub use config::ClientConfig;
#[cfg(feature = "tls")]
pub use config::ClientTls;
pub use error::ClientError;
pub use event::{ClientEvent, DisconnectReason, EventSink, Events, Gap, Message};
pub use handle::{ClientHandle, Pending, PublishAck, SendAck};
pub use outgoing::Reply;

impl Client {
    /// Starts a supervised client on the current arbiter (inside a running actix `System`)
    /// that delivers its events to the returned stream.
    pub fn start(config: ClientConfig) -> (ClientHandle, Events) {
        let (tx, events) = EventSink::with_stream(config.event_buffer);
        let handle = Self::start_with(config, EventSink::new(Some(tx), None));
        (handle, events)
    }

    /// Starts a supervised client that delivers its events to `recipient` (respecting its
    /// mailbox capacity: the client waits rather than overfill it).
    pub fn start_with_recipient(
        config: ClientConfig,
        recipient: Recipient<ClientEvent>,
    ) -> ClientHandle {
        Self::start_with(config, EventSink::new(None, Some(recipient)))
    }

    /// Starts a supervised client with any [`EventSink`].
    pub fn start_with(config: ClientConfig, events: EventSink) -> ClientHandle {
        let request_timeout = config.request_timeout;
        let addr = Supervisor::start(move |_| Client::new(config, events));
        ClientHandle::new(addr, request_timeout)
    }
}

/// Starts a client (see [`Client::start`]): the handle and the event stream.
pub fn connect(config: ClientConfig) -> (ClientHandle, Events) {
    Client::start(config)
}
