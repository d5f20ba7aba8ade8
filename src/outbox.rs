//! The bounded outbound path of a session.
//!
//! `actix::io::FramedWrite` buffers without limit when the peer stops reading, so sessions
//! never use it. Every frame for a connection (its own answers and the registry's fan-out)
//! is pushed into that connection's [`Outbox`]: a byte-counted queue shared between threads.
//! One writer task per connection drains it, coalescing whatever is queued into a single
//! write. When a push would take the queue past its byte budget the outbox refuses it,
//! queues `bye{reason:"slow_consumer"}` and starts closing, so a peer that never reads costs
//! at most its budget. Closing always writes what was queued before the `bye` first, within
//! `close_timeout` (or an earlier deadline the closer sets: a peer the heartbeat declared dead
//! is not waited for past its bound), then shuts the socket down.
//!
//! Whoever starts a close (the session, or the registry when a push overflows or it kicks or
//! drains), the owner learns of it at once through the outbox's close callback, so a closing
//! connection leaves its rooms and the user index at the moment the server decided, not when
//! its flush ends.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::Metrics;
use crate::protocol::{ByeReason, Outbound};

/// Largest single write the writer assembles from queued frames.
const MAX_BATCH: usize = 64 * 1024;

/// Called once, outside the lock, when the outbox starts closing.
pub(crate) type OnClose = Box<dyn Fn() + Send + Sync>;

/// A connection's outbound queue; cheap to share (`Arc`) with the registry.
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the writer when frames arrive after it found the queue empty.
    wake: Notify,
    /// Wakes a writer blocked on a full socket when the connection starts closing.
    closed: AtomicWaker,
    budget: usize,
    /// Where written frames are counted, if anywhere.
    metrics: Option<Arc<Metrics>>,
    on_close: Option<OnClose>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes queued or being written.
    queued: usize,
    closing: Option<ByeReason>,
    /// The latest instant the closing flush may end, when the closer set one.
    close_by: Option<Instant>,
}

/// How the writer task ended.
#[derive(Debug)]
pub enum WriterExit {
    /// Everything up to the `bye` was written and the socket shut down.
    Closed(ByeReason),
    /// The closing flush did not finish within `close_timeout`.
    TimedOut(ByeReason),
    /// The socket failed (usually the peer is gone).
    Failed(std::io::Error),
}

impl Outbox {
    /// An empty outbox that holds at most `budget` bytes.
    pub fn new(budget: usize) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: AtomicWaker::new(),
            budget,
            metrics: None,
            on_close: None,
        })
    }

    /// A server session's outbox: counts written frames and bytes into `metrics` and calls
    /// `on_close` when a close starts, whoever starts it.
    pub(crate) fn for_session(
        budget: usize,
        metrics: Arc<Metrics>,
        on_close: OnClose,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State::default()),
            wake: Notify::new(),
            closed: AtomicWaker::new(),
            budget,
            metrics: Some(metrics),
            on_close: Some(on_close),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent: every update
        // is a single push or pop, so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one encoded frame. Returns `false` when the frame was not queued: the
    /// connection is closing, or this frame overflowed the budget (which starts a
    /// `slow_consumer` close).
    pub fn push(&self, frame: Bytes) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        if state.queued + frame.len() > self.budget {
            tracing::debug!(
                queued = state.queued,
                budget = self.budget,
                "outbound budget exceeded"
            );
            Self::begin_close(&mut state, ByeReason::SlowConsumer, None);
            drop(state);
            self.wake_for_close();
            return false;
        }
        let was_idle = state.queue.is_empty();
        state.queued += frame.len();
        state.queue.push_back(frame);
        drop(state);
        if was_idle {
            self.wake.notify_one();
        }
        true
    }

    /// Queues `bye{reason, reconnect_ms}` after what is already queued and starts closing.
    /// Returns `false` if the outbox was already closing (the first reason wins).
    pub fn close(&self, reason: ByeReason, reconnect_ms: Option<u64>) -> bool {
        self.close_by(reason, reconnect_ms, None)
    }

    /// Like [`Outbox::close`], with the flush ending at `deadline` at the latest (or at
    /// `close_timeout`, whichever comes first).
    pub(crate) fn close_by(
        &self,
        reason: ByeReason,
        reconnect_ms: Option<u64>,
        deadline: Option<std::time::Instant>,
    ) -> bool {
        let mut state = self.lock();
        if state.closing.is_some() {
            return false;
        }
        Self::begin_close(&mut state, reason, reconnect_ms);
        state.close_by = deadline.map(Instant::from_std);
        drop(state);
        self.wake_for_close();
        true
    }

    /// When the closing flush must end: `close_timeout` from now, or the closer's deadline if
    /// that is earlier.
    fn flush_deadline(&self, close_timeout: Duration) -> Instant {
        let by_timeout = Instant::now() + close_timeout;
        match self.lock().close_by {
            Some(at) => at.min(by_timeout),
            None => by_timeout,
        }
    }

    /// Starts closing without a `bye`: the peer asked to leave or is already gone.
    pub fn close_silently(&self, reason: ByeReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
            drop(state);
            self.wake_for_close();
        }
    }

    fn wake_for_close(&self) {
        self.wake.notify_one();
        self.closed.wake();
        if let Some(on_close) = &self.on_close {
            on_close();
        }
    }

    fn begin_close(state: &mut State, reason: ByeReason, reconnect_ms: Option<u64>) {
        let bye = Outbound::Bye {
            reason,
            reconnect_ms,
        }
        .encode();
        // The bye may exceed the budget by its own few bytes: it is the last frame.
        state.queued += bye.len();
        state.queue.push_back(bye);
        state.closing = Some(reason);
    }

    /// Bytes queued and not yet written to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.lock().queued
    }

    /// The reason the outbox is closing, if it is.
    pub fn closing(&self) -> Option<ByeReason> {
        self.lock().closing
    }

    /// Drains the outbox into `sink`, a byte stream, until the connection closes. Runs as one
    /// task per connection; it ends when the closing flush is done, times out, or the socket
    /// fails.
    pub async fn run_writer<W>(self: Arc<Self>, sink: W, close_timeout: Duration) -> WriterExit
    where
        W: AsyncWrite + Unpin,
    {
        self.run_sink(ByteSink(sink), close_timeout).await
    }

    /// Drains the outbox into any [`FrameSink`] until the connection closes: the writer task
    /// of every transport.
    pub(crate) async fn run_sink<S: FrameSink>(
        self: Arc<Self>,
        mut sink: S,
        close_timeout: Duration,
    ) -> WriterExit {
        let mut deadline: Option<Instant> = None;
        loop {
            let (batch, closing) = self.take_batch();
            if closing.is_some() && deadline.is_none() {
                deadline = Some(self.flush_deadline(close_timeout));
            }
            if batch.is_empty() {
                if let Some(reason) = closing {
                    // Best effort: the peer may already be gone.
                    let _ = with_deadline(deadline, sink.finish(reason)).await;
                    return WriterExit::Closed(reason);
                }
                self.wake.notified().await;
                continue;
            }
            let written: usize = batch.iter().map(Bytes::len).sum();
            let send = std::pin::pin!(sink.send(&batch));
            let result = self
                .until_deadline(send, &mut deadline, close_timeout)
                .await;
            self.lock().queued -= written;
            match result {
                Some(Ok(())) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.frames_written(&batch);
                    }
                }
                None => {
                    let reason = self.closing().unwrap_or(ByeReason::Normal);
                    return WriterExit::TimedOut(reason);
                }
                Some(Err(e)) => return WriterExit::Failed(e),
            }
        }
    }

    /// Takes up to [`MAX_BATCH`] bytes of queued frames, and the closing reason if any.
    fn take_batch(&self) -> (Vec<Bytes>, Option<ByeReason>) {
        let mut state = self.lock();
        let mut batch = Vec::new();
        let mut size = 0;
        while let Some(frame) = state.queue.front() {
            if !batch.is_empty() && size + frame.len() > MAX_BATCH {
                break;
            }
            size += frame.len();
            batch.extend(state.queue.pop_front());
        }
        (batch, state.closing)
    }

    /// Runs `write`; returns `None` if the closing deadline passed first. A close that starts
    /// while the write is blocked (a peer that stopped reading) arms the deadline.
    ///
    /// It takes the write pinned by the caller, is woken for the close by an `AtomicWaker`
    /// rather than a `Notify` waiter, and uses `poll_fn` rather than `select!`/`timeout`: this
    /// future lives inside every connection's writer task, and the timer is needed only once
    /// the connection closes, so it is boxed then instead of taking room in every task.
    async fn until_deadline<F: Future>(
        &self,
        mut write: Pin<&mut F>,
        deadline: &mut Option<Instant>,
        close_timeout: Duration,
    ) -> Option<F::Output> {
        let mut timer = deadline.map(|at| Box::pin(tokio::time::sleep_until(at)));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = write.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            if timer.is_none() {
                // Registered before the check, so a close that starts in between wakes us.
                self.closed.register(cx.waker());
            }
            if timer.is_none() && self.closing().is_some() {
                let at = *deadline.insert(self.flush_deadline(close_timeout));
                timer = Some(Box::pin(tokio::time::sleep_until(at)));
            }
            match &mut timer {
                Some(timer) => timer.as_mut().poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await
    }
}

/// Where a writer task puts a connection's frames. Byte streams (TCP, TLS, pipes) are a
/// [`ByteSink`]; the WebSocket transport has its own.
pub(crate) trait FrameSink {
    /// Writes `batch`: whole frames in order, each ending in `\n`.
    async fn send(&mut self, batch: &[Bytes]) -> std::io::Result<()>;

    /// Ends the connection after its last frame; `reason` is why it closes (the `bye` reason,
    /// or `normal` when the peer left).
    async fn finish(&mut self, reason: ByeReason);
}

/// A byte stream as a [`FrameSink`]: a batch goes out in one write, closing shuts it down.
pub(crate) struct ByteSink<W>(pub(crate) W);

impl<W: AsyncWrite + Unpin> FrameSink for ByteSink<W> {
    async fn send(&mut self, batch: &[Bytes]) -> std::io::Result<()> {
        match batch {
            [one] => self.0.write_all(one).await,
            many => {
                let mut joined = BytesMut::with_capacity(many.iter().map(Bytes::len).sum());
                many.iter().for_each(|f| joined.extend_from_slice(f));
                self.0.write_all(&joined).await
            }
        }
    }

    async fn finish(&mut self, _: ByeReason) {
        let _ = self.0.shutdown().await;
    }
}

async fn with_deadline<F: std::future::Future>(
    deadline: Option<Instant>,
    fut: F,
) -> Result<F::Output, tokio::time::error::Elapsed> {
    match deadline {
        Some(at) => tokio::time::timeout_at(at, fut).await,
        None => Ok(fut.await),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn writes_in_order_then_bye_then_eof() {
        let outbox = Outbox::new(1024);
        let (client, server) = tokio::io::duplex(64);
        let (mut rx, _) = tokio::io::split(client);
        let writer = tokio::spawn(outbox.clone().run_writer(server, Duration::from_secs(5)));
        assert!(outbox.push(Bytes::from_static(b"a\n")));
        assert!(outbox.push(Bytes::from_static(b"b\n")));
        assert!(outbox.close(ByeReason::Normal, Some(5)));
        assert!(!outbox.push(Bytes::from_static(b"late\n")));
        let mut got = String::new();
        rx.read_to_string(&mut got).await.unwrap();
        assert_eq!(
            got,
            "a\nb\n{\"type\":\"bye\",\"reason\":\"normal\",\"reconnect_ms\":5}\n"
        );
        assert!(matches!(
            writer.await.unwrap(),
            WriterExit::Closed(ByeReason::Normal)
        ));
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn non_reading_peer_is_bounded_and_cut_off() {
        let outbox = Outbox::new(100);
        // The peer never reads: the pipe holds 16 bytes, the outbox at most 100.
        let (_client, server) = tokio::io::duplex(16);
        let writer = tokio::spawn(outbox.clone().run_writer(server, Duration::from_secs(1)));
        let mut accepted = 0;
        for _ in 0..1000 {
            if outbox.push(Bytes::from_static(b"0123456789\n")) {
                accepted += 1;
            }
            tokio::task::yield_now().await;
            assert!(outbox.queued_bytes() <= 100 + 64);
        }
        assert!(accepted < 20, "accepted {accepted}");
        assert_eq!(outbox.closing(), Some(ByeReason::SlowConsumer));
        assert!(matches!(
            writer.await.unwrap(),
            WriterExit::TimedOut(ByeReason::SlowConsumer)
        ));
    }
}
