//! [`ClientHandle`]: the application's side of a client, with `async` methods instead of raw
//! actor messages.
//!
//! Publishing and sending are two-stage. The first stage queues the frame and fails at once
//! when that is impossible ([`ClientError::QueueFull`], invalid arguments, a closed client);
//! the second waits for the server's answer. [`ClientHandle::publish`] does both;
//! [`ClientHandle::publish_queued`] returns after the first with a [`Pending`] future for the
//! second, so a producer is never blocked by a reconnect. Dropping a [`Pending`] does not
//! cancel anything: a queued publish is still delivered, exactly once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;
use serde_json::value::RawValue;

use super::actor::{
    Client, Close, GetStatus, Publish, ReplyReceiver, Request, SendTo, Status, Subscribe,
    Unsubscribe,
};
use super::error::ClientError;
use super::outgoing::Reply;

/// A publish the server has sequenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The publish's id.
    pub id: String,
    /// The room seq it got (the first one, if the publish was resent and deduped).
    pub seq: u64,
}

/// A direct message the server has delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendAck {
    /// The send's id.
    pub id: String,
    /// How many live sessions of the user received it.
    pub delivered: u64,
}

/// The answer to a queued frame, still to come. Resolves with the typed answer; dropping it
/// does not cancel the frame.
#[derive(Debug)]
pub struct Pending<T> {
    id: String,
    rx: ReplyReceiver,
    convert: fn(String, Reply) -> Result<T, ClientError>,
}

impl<T> Pending<T> {
    /// The frame's id (generated when the application gave none).
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match Pin::new(&mut this.rx).poll(cx) {
            Poll::Pending => Poll::Pending,
            // The actor went away without answering: it was closed.
            Poll::Ready(Err(_)) => Poll::Ready(Err(ClientError::Closed)),
            Poll::Ready(Ok(Err(e))) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(Ok(reply))) => {
                Poll::Ready((this.convert)(std::mem::take(&mut this.id), reply))
            }
        }
    }
}

fn publish_ack(id: String, reply: Reply) -> Result<PublishAck, ClientError> {
    match reply.seq() {
        Some(seq) => Ok(PublishAck { id, seq }),
        None => Err(ClientError::Invalid(format!(
            "server answered a publish with {}",
            reply.frame
        ))),
    }
}

fn send_ack(id: String, reply: Reply) -> Result<SendAck, ClientError> {
    Ok(SendAck {
        id,
        delivered: reply.delivered().unwrap_or(0),
    })
}

fn any_reply(_: String, reply: Reply) -> Result<Reply, ClientError> {
    Ok(reply)
}

fn to_raw<T: Serialize + ?Sized>(data: &T) -> Result<Box<RawValue>, ClientError> {
    serde_json::value::to_raw_value(data)
        .map_err(|e| ClientError::Invalid(format!("data cannot be serialised: {e}")))
}

/// A cheap, cloneable handle to a running [`Client`]. When the last clone is dropped the
/// client closes (as with [`close`](Self::close)), so a forgotten client does not reconnect
/// forever in the background.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    addr: Addr<Client>,
    request_timeout: Duration,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // One message when the last handle goes: `do_send` cannot pile up here.
        self.addr.do_send(Close);
    }
}

impl ClientHandle {
    pub(super) fn new(addr: Addr<Client>, request_timeout: Duration) -> Self {
        ClientHandle {
            inner: Arc::new(Inner {
                addr,
                request_timeout,
            }),
        }
    }

    /// The actor, for applications that prefer raw messages.
    pub fn addr(&self) -> &Addr<Client> {
        &self.inner.addr
    }

    async fn call<M>(&self, msg: M) -> Result<M::Result, ClientError>
    where
        M: actix::Message + Send + 'static,
        M::Result: Send,
        Client: Handler<M>,
    {
        // `send` (not `do_send`) waits for room in the actor's bounded mailbox.
        self.inner
            .addr
            .send(msg)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Publishes `data` to `room` and waits for the server's `ack`, however long the client
    /// is offline. See [`publish_queued`](Self::publish_queued) to wait only for queueing.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
    ) -> Result<PublishAck, ClientError> {
        self.publish_queued(room, data, None).await?.await
    }

    /// Queues a publish (with `id`, or a generated one) and returns once it is queued; the
    /// returned future resolves with the `ack`. Fails at once with
    /// [`ClientError::QueueFull`] when too many frames are waiting.
    pub async fn publish_queued<T: Serialize + ?Sized>(
        &self,
        room: &str,
        data: &T,
        id: Option<String>,
    ) -> Result<Pending<PublishAck>, ClientError> {
        let msg = Publish {
            room: room.to_owned(),
            data: to_raw(data)?,
            id,
        };
        let (id, rx) = self.call(msg).await??;
        Ok(Pending {
            id,
            rx,
            convert: publish_ack,
        })
    }

    /// Sends `data` to every live session of user `to` and waits for the `ack`.
    pub async fn send<T: Serialize + ?Sized>(
        &self,
        to: &str,
        data: &T,
    ) -> Result<SendAck, ClientError> {
        self.send_queued(to, data, None).await?.await
    }

    /// Queues a direct message; the returned future resolves with the `ack`.
    pub async fn send_queued<T: Serialize + ?Sized>(
        &self,
        to: &str,
        data: &T,
        id: Option<String>,
    ) -> Result<Pending<SendAck>, ClientError> {
        let msg = SendTo {
            to: to.to_owned(),
            data: to_raw(data)?,
            id,
        };
        let (id, rx) = self.call(msg).await??;
        Ok(Pending {
            id,
            rx,
            convert: send_ack,
        })
    }

    /// Joins `room`. Returns once recorded; the server's answer arrives as
    /// [`ClientEvent::Subscribed`](super::ClientEvent::Subscribed). Every reconnect resumes the
    /// room from the last delivered seq.
    pub async fn subscribe(&self, room: &str) -> Result<(), ClientError> {
        self.call(Subscribe {
            room: room.to_owned(),
        })
        .await?
    }

    /// Leaves `room`; its messages stop being delivered at once.
    pub async fn unsubscribe(&self, room: &str) -> Result<(), ClientError> {
        self.call(Unsubscribe {
            room: room.to_owned(),
        })
        .await?
    }

    /// Sends `frame` (a JSON object with a string `type`; an `id` is added if missing) and
    /// resolves with the first server frame carrying that `id` other than a `message`: an
    /// `ack`, an application frame, or `error` (as [`ClientError::Server`]). Times out after
    /// the configured `request_timeout`.
    pub async fn request(&self, frame: serde_json::Value) -> Result<Reply, ClientError> {
        self.request_within(frame, self.inner.request_timeout).await
    }

    /// [`request`](Self::request) with its own timeout. A request still queued when the
    /// timeout passes is never sent.
    pub async fn request_within(
        &self,
        frame: serde_json::Value,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let serde_json::Value::Object(frame) = frame else {
            return Err(ClientError::Invalid(
                "a request must be a JSON object".into(),
            ));
        };
        let answer = async {
            let (id, rx) = self.call(Request { frame }).await??;
            Pending {
                id,
                rx,
                convert: any_reply,
            }
            .await
        };
        tokio::time::timeout(timeout, answer)
            .await
            .unwrap_or(Err(ClientError::Timeout(timeout)))
    }

    /// A snapshot of the client's state.
    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(GetStatus).await
    }

    /// Says `bye`, waits (briefly) for it to be written, and stops for good.
    pub async fn close(&self) {
        let _ = self.inner.addr.send(Close).await;
    }
}
