//! The bounded outbound path of a session.
//!
//! `actix::io::FramedWrite` buffers without limit when the peer stops reading, so sessions
//! never use it. Every frame for a connection (its own answers and the registry's fan-out)
//! is pushed into that connection's [`Outbox`]: a byte-counted queue shared between threads.
//! When a push would take the queue past its byte budget the outbox refuses it, queues
//! `bye{reason:"slow_consumer"}` and starts closing, so a peer that never reads costs at most
//! its budget. Closing always writes what was queued before the `bye` first, within
//! `close_timeout` (or an earlier deadline the closer sets: a peer the heartbeat declared dead
//! is not waited for past its bound), then shuts the socket down.
//!
//! Two ways to reach the socket:
//!
//! - **Direct** (plain TCP). The outbox holds the socket's write half. A frame pushed on the
//!   connection's own worker thread while nothing is queued is written at once with
//!   `try_write`: a ping, a pong or an answer costs one `write` and no task hop. A push from
//!   another thread (the registry's fan-out, acks, replays) is queued and the outbox is handed
//!   to its worker in one batch per worker per turn of the pushing thread ([`Worker`]), so a
//!   publication to a room of 18k members is two cross-thread hand-offs on two workers, not
//!   18k wake-ups. Only when a write would block (or the connection closes) does the session
//!   run a flush future in its own context ([`Outbox::flush`]) until the queue is empty
//!   again. An idle connection has no writer at all.
//! - **Task** (TLS, WebSocket, in-memory pipes, the client). One writer task per connection
//!   drains the outbox into a [`FrameSink`], coalescing whatever is queued into one write.
//!
//! Whoever writes, frames leave in the order they were pushed: every write takes the queue
//! from its front under the outbox's lock. Whoever starts a close (the session, or the
//! registry when a push overflows or it kicks or drains), the owner learns of it at once
//! through the outbox's event callback, so a closing connection leaves its rooms and the user
//! index at the moment the server decided, not when its flush ends.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::Notify;
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;
use crate::protocol::{ByeReason, Outbound};

/// Largest single write assembled from queued frames.
const MAX_BATCH: usize = 64 * 1024;

/// Most frames gathered into one vectored write.
const MAX_SLICES: usize = 64;

/// Outboxes a worker flushes before it lets its other tasks run.
const FLUSH_SLICE: usize = 128;

/// Outboxes a pushing thread gathers before it hands them off without waiting for the end of
/// its turn: the workers start writing a large room's frames while the registry is still
/// pushing the rest, instead of after it.
const HAND_OFF_CHUNK: usize = 512;

/// What an outbox tells its owner; called outside the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutboxEvent {
    /// The connection started closing (once per outbox).
    CloseBegan,
    /// A direct write would block: the owner must run [`Outbox::flush`] (once per episode).
    Blocked,
}

/// The owner's callback for [`OutboxEvent`]s.
pub(crate) type OnEvent = Box<dyn Fn(OutboxEvent) + Send + Sync>;

/// A worker arbiter as the outbox sees it: the thread that writes the sockets of the sessions
/// it runs. Frames pushed from any other thread are handed to it in batches.
#[derive(Debug)]
pub(crate) struct Worker {
    handle: actix_rt::ArbiterHandle,
}

thread_local! {
    /// The worker whose thread this is (its address), set when a session starts on it.
    static CURRENT_WORKER: Cell<usize> = const { Cell::new(0) };
    /// Direct outboxes this thread queued frames on, waiting to go to their workers.
    static DEFERRED: RefCell<Vec<Arc<Outbox>>> = const { RefCell::new(Vec::new()) };
    /// A hand-off task for the end of this thread's turn is spawned already.
    static HAND_OFF_PENDING: Cell<bool> = const { Cell::new(false) };
}

impl Worker {
    /// The worker running on `handle`'s arbiter.
    pub(crate) fn new(handle: actix_rt::ArbiterHandle) -> Arc<Worker> {
        Arc::new(Worker { handle })
    }

    /// Runs `fut` on this worker's arbiter; `false` if the arbiter is gone.
    pub(crate) fn spawn(&self, fut: impl Future<Output = ()> + Send + 'static) -> bool {
        self.handle.spawn(fut)
    }

    fn id(self: &Arc<Self>) -> usize {
        Arc::as_ptr(self) as usize
    }

    /// Marks the calling thread as this worker's; sessions call it as they start on it.
    pub(crate) fn enter(self: &Arc<Self>) {
        CURRENT_WORKER.with(|w| w.set(self.id()));
    }

    fn is_current(self: &Arc<Self>) -> bool {
        CURRENT_WORKER.with(|w| w.get() == self.id())
    }
}

/// Queues `outbox` for its worker; the first one of a turn schedules the hand-off, which runs
/// when the pushing thread's current task (the registry handling a publication) yields. Every
/// [`HAND_OFF_CHUNK`] outboxes are handed off at once.
fn defer(outbox: Arc<Outbox>) {
    if !HAND_OFF_PENDING.get() {
        if actix_rt::Arbiter::try_current().is_none() {
            // Not on an actix thread: nothing would run a hand-off task here.
            return hand_off(vec![outbox]);
        }
        HAND_OFF_PENDING.set(true);
        actix_rt::spawn(async {
            HAND_OFF_PENDING.set(false);
            hand_off(DEFERRED.take());
        });
    }
    let full = DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        d.push(outbox);
        (d.len() >= HAND_OFF_CHUNK)
            .then(|| std::mem::replace(&mut *d, Vec::with_capacity(HAND_OFF_CHUNK)))
    });
    if let Some(chunk) = full {
        hand_off(chunk);
    }
}

/// One cross-thread hand-off per worker: it writes the batch's sockets on its own thread.
fn hand_off(batch: Vec<Arc<Outbox>>) {
    // A handful of workers: a short list, grouped in one pass.
    let mut per_worker: Vec<(Arc<Worker>, Vec<Arc<Outbox>>)> = Vec::new();
    for outbox in batch {
        let Some(worker) = outbox.worker() else {
            continue;
        };
        match per_worker.iter_mut().find(|(w, _)| Arc::ptr_eq(w, worker)) {
            Some((_, mine)) => mine.push(outbox),
            None => per_worker.push((worker.clone(), vec![outbox])),
        }
    }
    for (worker, mine) in per_worker {
        let spawned = worker.handle.spawn(async move {
            for (i, outbox) in mine.iter().enumerate() {
                outbox.flush_scheduled();
                if i % FLUSH_SLICE == FLUSH_SLICE - 1 {
                    tokio::task::yield_now().await;
                }
            }
        });
        if !spawned {
            tracing::debug!("worker arbiter gone; its sessions are closing");
        }
    }
}

/// How frames reach the socket.
enum Mode {
    /// A writer task drains the queue into a [`FrameSink`]. Boxed, so that the outboxes of
    /// plain TCP connections (most of them) do not carry the writer's wakers.
    Task(Box<Wakers>),
    /// Written where pushed (on the worker) or by the worker the outbox is handed to.
    Direct(Arc<Worker>),
}

/// How a writer task is woken.
struct Wakers {
    /// Wakes the writer when frames arrive after it found the queue empty.
    wake: Notify,
    /// Wakes a writer blocked on a full socket when the connection starts closing.
    closed: AtomicWaker,
}

/// A connection's outbound queue; cheap to share (`Arc`) with the registry.
pub struct Outbox {
    state: Mutex<State>,
    mode: Mode,
    budget: usize,
    /// Where written frames are counted, if anywhere.
    metrics: Option<Arc<Metrics>>,
    on_event: Option<OnEvent>,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("budget", &self.budget)
            .field("direct", &self.worker().is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Bytes>,
    /// Bytes of the front frame already written (a direct write that went part way).
    head_written: usize,
    /// Bytes queued (or, with a writer task, being written) and not yet written.
    queued: usize,
    closing: Option<ByeReason>,
    /// The latest instant the closing flush may end, when the closer set one.
    close_by: Option<Instant>,
    /// Direct mode: the socket, until the session ends.
    socket: Option<OwnedWriteHalf>,
    /// Direct mode: the session's flush future owns the writes (a write would block, or the
    /// connection is closing); nobody else writes.
    flushing: bool,
    /// Direct mode: handed to the worker, not flushed yet.
    scheduled: bool,
    /// Direct mode: the write error that ended the connection.
    failed: Option<io::Error>,
}

/// How the writer task (or the flush future) ended.
#[derive(Debug)]
pub enum WriterExit {
    /// Everything up to the `bye` was written and the socket shut down.
    Closed(ByeReason),
    /// The closing flush did not finish within `close_timeout`.
    TimedOut(ByeReason),
    /// The socket failed (usually the peer is gone).
    Failed(std::io::Error),
}

/// What a direct write achieved.
enum Wrote {
    /// The queue is empty.
    All,
    /// The socket took what it could; the rest waits for it to be writable.
    WouldBlock,
    /// The socket failed.
    Failed(io::Error),
}

/// What a flush future ends with.
#[derive(Debug)]
pub(crate) enum Flushed {
    /// The queue is empty and the connection open: direct writes go on.
    Idle,
    /// The connection is over.
    Exit(WriterExit),
}

impl Outbox {
    /// An empty outbox that holds at most `budget` bytes, drained by a writer task
    /// ([`Outbox::run_writer`]).
    pub fn new(budget: usize) -> Arc<Outbox> {
        Self::build(budget, None, None, Self::task_mode(), None)
    }

    fn task_mode() -> Mode {
        Mode::Task(Box::new(Wakers {
            wake: Notify::new(),
            closed: AtomicWaker::new(),
        }))
    }

    fn build(
        budget: usize,
        metrics: Option<Arc<Metrics>>,
        on_event: Option<OnEvent>,
        mode: Mode,
        socket: Option<OwnedWriteHalf>,
    ) -> Arc<Outbox> {
        Arc::new(Outbox {
            state: Mutex::new(State {
                socket,
                ..State::default()
            }),
            mode,
            budget,
            metrics,
            on_event,
        })
    }

    /// A server session's outbox drained by a writer task: counts written frames and bytes
    /// into `metrics` and tells `on_event` when a close starts, whoever starts it.
    pub(crate) fn for_session(
        budget: usize,
        metrics: Arc<Metrics>,
        on_event: OnEvent,
    ) -> Arc<Outbox> {
        Self::build(
            budget,
            Some(metrics),
            Some(on_event),
            Self::task_mode(),
            None,
        )
    }

    /// A server session's outbox that writes `socket` directly on `worker`'s thread (see the
    /// module docs); `on_event` must run [`Outbox::flush`] in the session when told
    /// [`OutboxEvent::Blocked`] or [`OutboxEvent::CloseBegan`].
    pub(crate) fn direct(
        budget: usize,
        metrics: Arc<Metrics>,
        on_event: OnEvent,
        socket: OwnedWriteHalf,
        worker: Arc<Worker>,
    ) -> Arc<Outbox> {
        Self::build(
            budget,
            Some(metrics),
            Some(on_event),
            Mode::Direct(worker),
            Some(socket),
        )
    }

    fn worker(&self) -> Option<&Arc<Worker>> {
        match &self.mode {
            Mode::Direct(worker) => Some(worker),
            Mode::Task(_) => None,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent: every update
        // is a single push or pop, so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues one encoded frame (or, on its own worker with nothing queued, writes it).
    /// Returns `false` when the frame was not taken: the connection is closing, or this frame
    /// overflowed the budget (which starts a `slow_consumer` close).
    pub fn push(self: &Arc<Self>, frame: Bytes) -> bool {
        self.push_with(&frame, || frame.clone(), false)
    }

    /// Like [`Outbox::push`] for a frame encoded on the stack: it is copied only if it must
    /// wait in the queue.
    pub(crate) fn push_slice(self: &Arc<Self>, frame: &[u8]) -> bool {
        self.push_with(frame, || Bytes::copy_from_slice(frame), false)
    }

    /// [`push_slice`](Self::push_slice) for the heartbeat's ping, which also frees the queue's
    /// buffer when the ping leaves nothing queued. A connection that once had a frame queued
    /// (its `welcome`, pushed by the registry from another thread) would otherwise keep about
    /// 128 bytes for as long as it lives; a busy connection reallocates its queue at most once
    /// or twice per heartbeat.
    pub(crate) fn push_ping(self: &Arc<Self>, frame: &[u8]) -> bool {
        self.push_with(frame, || Bytes::copy_from_slice(frame), true)
    }

    fn push_with(
        self: &Arc<Self>,
        frame: &[u8],
        owned: impl FnOnce() -> Bytes,
        release_idle_queue: bool,
    ) -> bool {
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
            self.close_started(state);
            return false;
        }
        let worker = match &self.mode {
            Mode::Task(wakers) => {
                let was_idle = state.queue.is_empty();
                state.queued += frame.len();
                state.queue.push_back(owned());
                drop(state);
                if was_idle {
                    wakers.wake.notify_one();
                }
                return true;
            }
            Mode::Direct(worker) => worker,
        };
        if state.flushing {
            state.queued += frame.len();
            state.queue.push_back(owned());
            return true;
        }
        if !worker.is_current() {
            state.queued += frame.len();
            if state.queue.capacity() == 0 {
                // One slot, not the default four: most connections only ever queue their
                // `welcome` this way (see `push_ping`).
                state.queue.reserve_exact(1);
            }
            state.queue.push_back(owned());
            let schedule = !std::mem::replace(&mut state.scheduled, true);
            drop(state);
            if schedule {
                defer(self.clone());
            }
            return true;
        }
        let wrote = if state.queue.is_empty() {
            // The common case: nothing waits, so the frame goes out from where it is.
            let wrote = self.write_one(&mut state, frame, owned);
            if release_idle_queue && state.queue.is_empty() {
                state.queue = VecDeque::new();
            }
            wrote
        } else {
            state.queued += frame.len();
            state.queue.push_back(owned());
            self.write_queued(&mut state)
        };
        self.after_write(state, wrote);
        true
    }

    /// Writes `frame` into the socket of an empty direct outbox; what the socket does not take
    /// is queued.
    fn write_one(&self, state: &mut State, frame: &[u8], owned: impl FnOnce() -> Bytes) -> Wrote {
        let result = match &state.socket {
            Some(socket) => socket.try_write(frame),
            None => Err(io::ErrorKind::NotConnected.into()),
        };
        match result {
            Ok(n) if n == frame.len() => {
                if let Some(metrics) = &self.metrics {
                    metrics.frames_written([frame]);
                }
                Wrote::All
            }
            Ok(n) => {
                // Part of it: the rest waits, and the socket is asked again (which either
                // takes more or clears its readiness).
                state.queued += frame.len() - n;
                state.head_written = n;
                state.queue.push_back(owned());
                self.write_queued(state)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                state.queued += frame.len();
                state.queue.push_back(owned());
                Wrote::WouldBlock
            }
            Err(e) => Wrote::Failed(e),
        }
    }

    /// Writes what is queued, from the front, until the queue is empty or the socket is full.
    fn write_queued(&self, state: &mut State) -> Wrote {
        loop {
            if state.queue.is_empty() {
                return Wrote::All;
            }
            let Some(socket) = &state.socket else {
                return Wrote::Failed(io::ErrorKind::NotConnected.into());
            };
            let mut slices = [IoSlice::new(&[]); MAX_SLICES];
            let mut count = 0;
            let mut size = 0;
            for (i, frame) in state.queue.iter().enumerate() {
                let part = if i == 0 {
                    &frame[state.head_written..]
                } else {
                    &frame[..]
                };
                if count == MAX_SLICES || (count > 0 && size + part.len() > MAX_BATCH) {
                    break;
                }
                slices[count] = IoSlice::new(part);
                count += 1;
                size += part.len();
            }
            let result = if count == 1 {
                socket.try_write(&slices[0])
            } else {
                socket.try_write_vectored(&slices[..count])
            };
            match result {
                Ok(0) => return Wrote::Failed(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.advance(state, n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Wrote::WouldBlock,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Wrote::Failed(e),
            }
        }
    }

    /// Drops `n` written bytes from the front of the queue, counting whole frames.
    fn advance(&self, state: &mut State, mut n: usize) {
        state.queued -= n;
        while n > 0 {
            let Some(front) = state.queue.front() else {
                break;
            };
            let left = front.len() - state.head_written;
            if n < left {
                state.head_written += n;
                break;
            }
            n -= left;
            state.head_written = 0;
            if let Some(frame) = state.queue.pop_front() {
                if let Some(metrics) = &self.metrics {
                    metrics.frames_written([&frame[..]]);
                }
            }
        }
    }

    /// Hands a direct write's outcome on: a full socket or a failure becomes the session's
    /// flush future's job.
    fn after_write(&self, mut state: MutexGuard<'_, State>, wrote: Wrote) {
        match wrote {
            Wrote::All => {}
            Wrote::WouldBlock => {
                state.flushing = true;
                drop(state);
                self.tell(OutboxEvent::Blocked);
            }
            Wrote::Failed(e) => {
                tracing::debug!(error = %e, "write failed");
                state.failed = Some(e);
                if state.closing.is_none() {
                    state.closing = Some(ByeReason::Normal);
                    self.close_started(state);
                } else if !std::mem::replace(&mut state.flushing, true) {
                    drop(state);
                    self.tell(OutboxEvent::Blocked);
                }
            }
        }
    }

    /// Writes what another thread queued; the worker runs this for the outboxes handed to it.
    fn flush_scheduled(&self) {
        let mut state = self.lock();
        state.scheduled = false;
        if state.flushing || state.queue.is_empty() {
            return;
        }
        let wrote = self.write_queued(&mut state);
        self.after_write(state, wrote);
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
        self.close_started(state);
        true
    }

    /// When the closing flush must end: `close_timeout` from now, or the closer's deadline if
    /// that is earlier.
    fn flush_deadline(state: &State, close_timeout: Duration) -> Instant {
        let by_timeout = Instant::now() + close_timeout;
        match state.close_by {
            Some(at) => at.min(by_timeout),
            None => by_timeout,
        }
    }

    /// Starts closing without a `bye`: the peer asked to leave or is already gone.
    pub fn close_silently(&self, reason: ByeReason) {
        let mut state = self.lock();
        if state.closing.is_none() {
            state.closing = Some(reason);
            self.close_started(state);
        }
    }

    /// The close was decided (`state.closing` is set): from now on only the flush writes, and
    /// the owner is told.
    fn close_started(&self, mut state: MutexGuard<'_, State>) {
        state.flushing = true;
        drop(state);
        if let Mode::Task(wakers) = &self.mode {
            wakers.wake.notify_one();
            wakers.closed.wake();
        }
        self.tell(OutboxEvent::CloseBegan);
    }

    fn tell(&self, event: OutboxEvent) {
        if let Some(on_event) = &self.on_event {
            on_event(event);
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

    /// Lets the socket go: the session ended, and whoever still holds the outbox (the registry,
    /// a batch in flight) must not keep the connection open.
    pub(crate) fn detach(&self) {
        let socket = self.lock().socket.take();
        drop(socket);
    }

    /// The flush of a direct outbox, run by its session when told [`OutboxEvent::Blocked`] or
    /// [`OutboxEvent::CloseBegan`]: it writes what is queued as the socket takes it, and ends
    /// when the queue is empty ([`Flushed::Idle`]: direct writes resume) or, once closing,
    /// after the `bye` and the shutdown, at the close deadline, or when the socket fails.
    pub(crate) fn flush(self: Arc<Self>, close_timeout: Duration) -> impl Future<Output = Flushed> {
        let mut timer: Option<Pin<Box<Sleep>>> = None;
        std::future::poll_fn(move |cx| self.poll_flush(cx, &mut timer, close_timeout))
    }

    fn poll_flush(
        &self,
        cx: &mut Context<'_>,
        timer: &mut Option<Pin<Box<Sleep>>>,
        close_timeout: Duration,
    ) -> Poll<Flushed> {
        let mut state = self.lock();
        if let Some(e) = state.failed.take() {
            return Poll::Ready(Flushed::Exit(WriterExit::Failed(e)));
        }
        if let Some(reason) = state.closing {
            // The deadline is armed when the close is first seen; the session polls its
            // spawned futures after every message, so a close that begins while this waits for
            // the socket is seen at once.
            let timer = timer.get_or_insert_with(|| {
                Box::pin(tokio::time::sleep_until(Self::flush_deadline(
                    &state,
                    close_timeout,
                )))
            });
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Flushed::Exit(WriterExit::TimedOut(reason)));
            }
        }
        loop {
            if state.queue.is_empty() {
                let Some(reason) = state.closing else {
                    state.flushing = false;
                    return Poll::Ready(Flushed::Idle);
                };
                if let Some(socket) = &mut state.socket {
                    // Best effort: the peer may already be gone.
                    let _ = Pin::new(socket).poll_shutdown(cx);
                }
                return Poll::Ready(Flushed::Exit(WriterExit::Closed(reason)));
            }
            let ready = match &state.socket {
                Some(socket) => socket.as_ref().poll_write_ready(cx),
                None => Poll::Ready(Err(io::ErrorKind::NotConnected.into())),
            };
            match ready {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Flushed::Exit(WriterExit::Failed(e))),
                Poll::Ready(Ok(())) => {}
            }
            match self.write_queued(&mut state) {
                // Emptied: decided at the top of the loop. Full: the readiness was cleared, so
                // the next poll of it registers this future for the socket's next turn.
                Wrote::All | Wrote::WouldBlock => {}
                Wrote::Failed(e) => return Poll::Ready(Flushed::Exit(WriterExit::Failed(e))),
            }
        }
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
        let Mode::Task(wakers) = &self.mode else {
            return WriterExit::Failed(io::Error::other("this outbox writes its socket itself"));
        };
        let mut deadline: Option<Instant> = None;
        loop {
            let (batch, closing) = self.take_batch();
            if closing.is_some() && deadline.is_none() {
                deadline = Some(Self::flush_deadline(&self.lock(), close_timeout));
            }
            if batch.is_empty() {
                if let Some(reason) = closing {
                    // Best effort: the peer may already be gone.
                    let _ = with_deadline(deadline, sink.finish(reason)).await;
                    return WriterExit::Closed(reason);
                }
                wakers.wake.notified().await;
                continue;
            }
            let written: usize = batch.iter().map(Bytes::len).sum();
            let send = std::pin::pin!(sink.send(&batch));
            let result = self
                .until_deadline(send, &wakers.closed, &mut deadline, close_timeout)
                .await;
            self.lock().queued -= written;
            match result {
                Some(Ok(())) => {
                    if let Some(metrics) = &self.metrics {
                        metrics.frames_written(batch.iter().map(|f| &f[..]));
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
        closed: &AtomicWaker,
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
                closed.register(cx.waker());
            }
            if timer.is_none() && self.closing().is_some() {
                let at = *deadline.insert(Self::flush_deadline(&self.lock(), close_timeout));
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

    /// A connected socket pair: the server end's write half, the client end.
    async fn tcp_pair() -> (
        tokio::net::tcp::OwnedReadHalf,
        OwnedWriteHalf,
        tokio::net::TcpStream,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        let (read, write) = accepted.unwrap().0.into_split();
        (read, write, client.unwrap())
    }

    /// A direct outbox on the current arbiter's worker, and what it tells its owner.
    async fn direct(
        budget: usize,
    ) -> (
        Arc<Outbox>,
        Arc<Metrics>,
        std::sync::mpsc::Receiver<OutboxEvent>,
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::TcpStream,
    ) {
        let (read, write, client) = tcp_pair().await;
        let worker = Worker::new(actix_rt::Arbiter::current());
        worker.enter();
        let (tx, events) = std::sync::mpsc::channel();
        let metrics = Arc::new(Metrics::new());
        let on_event: OnEvent = Box::new(move |e| {
            let _ = tx.send(e);
        });
        let outbox = Outbox::direct(budget, metrics.clone(), on_event, write, worker);
        (outbox, metrics, events, read, client)
    }

    async fn read_until(client: &mut tokio::net::TcpStream, want: &str) -> String {
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !got.ends_with(want.as_bytes()) {
            let mut buf = [0u8; 4096];
            let n = tokio::time::timeout_at(deadline, client.read(&mut buf))
                .await
                .expect("timed out reading")
                .unwrap();
            assert!(n > 0, "eof after {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        String::from_utf8(got).unwrap()
    }

    #[actix_rt::test]
    async fn direct_writes_at_once_in_order_then_bye_then_eof() {
        let (outbox, metrics, events, _read, mut client) = direct(1024).await;
        assert!(outbox.push(Bytes::from_static(b"{\"type\":\"ping\",\"seq\":1}\n")));
        // Written before push returned: nothing queued, no writer involved.
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.push_slice(b"{\"type\":\"pong\",\"seq\":7}\n"));
        assert_eq!(
            read_until(&mut client, "\"seq\":7}\n").await,
            "{\"type\":\"ping\",\"seq\":1}\n{\"type\":\"pong\",\"seq\":7}\n"
        );
        let text = metrics.encode();
        assert!(
            text.contains("heartwire_frames_out_total{type=\"ping\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("heartwire_frames_out_total{type=\"pong\"} 1\n"),
            "{text}"
        );
        assert!(events.try_recv().is_err());

        assert!(outbox.close(ByeReason::Normal, Some(5)));
        assert!(!outbox.push(Bytes::from_static(b"late\n")));
        assert_eq!(events.try_recv(), Ok(OutboxEvent::CloseBegan));
        let flushed = outbox.clone().flush(Duration::from_secs(5)).await;
        assert!(matches!(
            flushed,
            Flushed::Exit(WriterExit::Closed(ByeReason::Normal))
        ));
        let mut rest = String::new();
        client.read_to_string(&mut rest).await.unwrap();
        assert_eq!(
            rest,
            "{\"type\":\"bye\",\"reason\":\"normal\",\"reconnect_ms\":5}\n"
        );
    }

    #[actix_rt::test]
    async fn pushes_from_other_threads_are_written_by_the_worker() {
        let (outbox, _metrics, events, _read, mut client) = direct(1024).await;
        // From a plain thread: handed to the worker at once.
        let o = outbox.clone();
        std::thread::spawn(move || assert!(o.push(Bytes::from_static(b"a\n"))))
            .join()
            .unwrap();
        assert_eq!(read_until(&mut client, "a\n").await, "a\n");
        // From another arbiter (the registry's case): queued, then one hand-off for the turn.
        let (o, done) = (outbox.clone(), tokio::sync::oneshot::channel());
        let arbiter = actix_rt::Arbiter::new();
        arbiter.spawn(async move {
            assert!(o.push(Bytes::from_static(b"b\n")));
            assert!(o.push(Bytes::from_static(b"c\n")));
            let _ = done.0.send(o.queued_bytes());
        });
        // Nothing was written on the pushing thread.
        assert_eq!(done.1.await.unwrap(), 4);
        assert_eq!(read_until(&mut client, "c\n").await, "b\nc\n");
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(events.try_recv().is_err(), "no flush future was needed");
        arbiter.stop();
        // The queue those frames passed through is freed by the next ping that leaves it idle.
        assert_ne!(outbox.lock().queue.capacity(), 0);
        assert!(outbox.push_ping(b"p\n"));
        assert_eq!(read_until(&mut client, "p\n").await, "p\n");
        assert_eq!(outbox.lock().queue.capacity(), 0);
    }

    #[actix_rt::test]
    async fn direct_non_reading_peer_is_bounded_and_cut_off() {
        let budget = 64 * 1024;
        let (outbox, _metrics, events, _read, _client) = direct(budget).await;
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        let mut pushed = 0;
        while outbox.push_slice(&line) {
            pushed += 1;
            assert!(outbox.queued_bytes() <= budget);
            assert!(pushed < 100_000, "the budget never ran out");
        }
        // The socket took what the kernel buffers hold; then the outbox filled up.
        assert_eq!(events.try_recv(), Ok(OutboxEvent::Blocked));
        assert_eq!(events.try_recv(), Ok(OutboxEvent::CloseBegan));
        assert_eq!(outbox.closing(), Some(ByeReason::SlowConsumer));
        let flushed = outbox.clone().flush(Duration::from_millis(300)).await;
        assert!(matches!(
            flushed,
            Flushed::Exit(WriterExit::TimedOut(ByeReason::SlowConsumer))
        ));
    }

    #[actix_rt::test]
    async fn a_blocked_flush_goes_idle_once_the_peer_reads() {
        let (outbox, _metrics, events, _read, mut client) = direct(1 << 20).await;
        let line = [&vec![b'y'; 4095][..], b"\n"].concat();
        while events.try_recv().is_err() {
            assert!(outbox.push_slice(&line));
        }
        let queued = outbox.queued_bytes();
        assert!(queued > 0);
        // Pushes while blocked only queue; the flush writes them in order.
        assert!(outbox.push_slice(b"last\n"));
        let reader = tokio::spawn(async move { read_until(&mut client, "last\n").await.len() });
        assert!(matches!(
            outbox.clone().flush(Duration::from_secs(5)).await,
            Flushed::Idle
        ));
        assert_eq!(outbox.queued_bytes(), 0);
        reader.await.unwrap();
        // Direct writes resume.
        assert!(outbox.push_slice(b"again\n"));
        assert_eq!(outbox.queued_bytes(), 0);
    }
}
