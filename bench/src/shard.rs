//! A shard: the connections one bench process holds, and the phases they go through.
//!
//! One process may open at most its open-file limit of sockets (20000 on the reference
//! machines), so a bench larger than that is split into shards, each in its own worker
//! process; a small bench runs its single shard inside the coordinating process. Either way a
//! shard is driven by the same two commands and answers with the same events, which are
//! plain serde types so that they can cross a pipe as JSON lines:
//!
//! 1. **ramp**: open the shard's connections at the paced rate, each completing `hello` (and
//!    `subscribe` in fan-out and chat) before it counts as established; then report `Ready`.
//! 2. **window** (after `Go`): the measured phase: hold and answer pings (idle), publish and
//!    receive (fan-out, chat), fall silent (detect) or connect/close in loops (churn).
//! 3. **stop** (after `Stop`): close everything and report `Done` with counters and
//!    histograms.
//!
//! `Progress` events carry the running counters every 250 ms for the progress bar.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::client::{self, Conn, Transport, Welcome};
use super::stats::Histogram;
use super::{chat, churn, detect, fanout, idle, Mode};

/// Everything a shard needs to know; the coordinator sends it to a worker as its first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// What to measure.
    pub mode: Mode,
    /// The server.
    pub target: SocketAddr,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// This shard's number.
    pub shard: usize,
    /// Global index of this shard's first connection (user names are unique across shards).
    pub first_index: usize,
    /// Connections to open (subscribers in fan-out), besides publishers.
    pub connections: usize,
    /// Publishing connections (fan-out).
    pub publishers: usize,
    /// Connection attempts per second for this shard; 0 means unpaced.
    pub connect_rate: f64,
    /// Handshakes in flight at once.
    pub max_inflight: usize,
    /// Limit on connect + `welcome` (+ `subscribed`), milliseconds.
    pub connect_timeout_ms: u64,
    /// Source addresses to spread sockets over; empty lets the kernel choose.
    pub sources: Vec<Ipv4Addr>,
    /// Prefix of user names.
    pub user: String,
    /// Fan-out room; the prefix of the rooms in chat.
    pub room: String,
    /// Clients per room (chat).
    #[serde(default)]
    pub room_size: usize,
    /// Clients over all shards (chat: the last room may be smaller than `room_size`).
    #[serde(default)]
    pub clients: usize,
    /// Padding bytes in each published message.
    pub payload: usize,
    /// Messages per second per publisher (per client in chat).
    pub publish_rate: f64,
    /// How long publishers publish, milliseconds.
    pub publish_ms: u64,
    /// Churn loops in this shard.
    pub concurrency: usize,
    /// Time allowed past the upper detection bound, milliseconds (detect).
    pub tolerance_ms: u64,
}

impl Plan {
    /// The source address for connection `index`.
    pub fn source(&self, index: usize) -> Option<Ipv4Addr> {
        (!self.sources.is_empty()).then(|| self.sources[index % self.sources.len()])
    }

    /// The connect timeout.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }
}

/// Coordinator → shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Start the measured window.
    Go,
    /// End the window, close everything, report.
    Stop,
}

/// Shard → coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// Running counters.
    Progress {
        /// Counters so far.
        tally: Tally,
    },
    /// Every connection attempt of the ramp has succeeded or failed.
    Ready {
        /// Counters at the end of the ramp.
        tally: Tally,
        /// The first `welcome` seen, if any.
        welcome: Option<Welcome>,
    },
    /// The shard has stopped.
    Done {
        /// Its results.
        result: Box<ShardResult>,
    },
    /// The shard could not run.
    Failed {
        /// Why.
        error: String,
    },
}

macro_rules! tally {
    ($($(#[doc = $doc:literal])* $field:ident,)*) => {
        /// The counters of a shard (or, added up, of the whole bench).
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
        pub struct Tally {
            $( $(#[doc = $doc])* #[serde(default)] pub $field: u64, )*
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $( pub $field: AtomicU64, )*
        }

        impl Counters {
            pub fn snapshot(&self) -> Tally {
                Tally { $( $field: self.$field.load(Ordering::Relaxed), )* }
            }
        }

        impl std::ops::AddAssign for Tally {
            fn add_assign(&mut self, other: Tally) {
                $( self.$field += other.$field; )*
            }
        }
    };
}

tally! {
    /// Connection attempts started.
    attempted,
    /// Connections that completed the handshake (and `subscribe`, in fan-out and chat).
    established,
    /// Attempts that failed (see the failure keys).
    failed,
    /// Connections open right now.
    open,
    /// Publishing connections established (fan-out).
    publishers,
    /// Connections the server closed while the bench still answered its pings.
    closed_unexpectedly,
    /// Pongs sent in the window: heartbeat round trips the server completed.
    round_trips,
    /// Pings received at any time.
    pings,
    /// Messages published in the window (fan-out, chat).
    published,
    /// Messages received (fan-out, chat).
    delivered,
    /// Publishes acknowledged (chat).
    acked,
    /// Publishes answered with `error` (chat; see the error codes).
    refused,
    /// Deliveries the publishes acknowledged so far should cause: each counts its room's size
    /// (chat).
    expected,
    /// Room seqs a client never received between two it did (chat).
    seq_holes,
    /// Messages that arrived out of seq order or twice (chat).
    seq_disorder,
    /// Connections that fell silent at `Go` (detect).
    silent,
    /// Silent connections closed inside the bound (detect).
    inside,
    /// Silent connections closed before the lower bound (detect).
    early,
    /// Silent connections closed after the upper bound plus tolerance (detect).
    late,
    /// Silent connections still open at `Stop` (detect).
    never,
    /// Completed connect/hello/welcome/bye/close cycles (churn).
    cycles,
    /// Failed cycles (churn).
    cycle_failures,
}

impl Tally {
    /// Attempts that have either succeeded or failed.
    pub fn resolved(&self) -> u64 {
        self.established + self.publishers + self.failed
    }
}

/// What a shard reports when it stops.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ShardResult {
    /// Final counters.
    pub tally: Tally,
    /// Failed connection attempts by cause.
    pub failures: BTreeMap<String, u64>,
    /// Connections the server closed, by phase and reason.
    pub closes: BTreeMap<String, u64>,
    /// `error` frames received in the window, by code (chat).
    #[serde(default)]
    pub errors: BTreeMap<String, u64>,
    /// Connect → `welcome` times during the ramp, µs.
    pub connect: Histogram,
    /// Publish → receive (fan-out) or connect → `welcome` (churn), µs.
    pub latency: Histogram,
    /// Last frame sent → close seen, for silent connections (detect), µs.
    pub delays: Histogram,
    /// Seconds from the first attempt until every attempt had resolved.
    pub ramp_seconds: f64,
    /// CPU seconds this worker process used in the window (`None` for in-process shards).
    pub cpu_seconds: Option<f64>,
}

/// The phase a shard is in; connection tasks watch it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Opening connections.
    Ramp,
    /// The measured window.
    Window,
    /// Closing down.
    Stop,
}

impl Phase {
    /// A short name for failure and close keys.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Ramp => "ramp",
            Phase::Window => "window",
            Phase::Stop => "stop",
        }
    }
}

/// State shared by a shard's connection tasks.
pub(crate) struct ShardCtx {
    pub plan: Plan,
    pub counters: Counters,
    failures: Mutex<BTreeMap<String, u64>>,
    closes: Mutex<BTreeMap<String, u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub connect: Mutex<Histogram>,
    pub latency: Mutex<Histogram>,
    pub delays: Mutex<Histogram>,
    pub phase: watch::Receiver<Phase>,
    pub welcome: OnceLock<Welcome>,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    let mut map = map.lock().unwrap_or_else(|p| p.into_inner());
    *map.entry(key).or_default() += 1;
}

/// Locks a histogram, ignoring poisoning (a histogram is valid after any panic).
pub(crate) fn lock(h: &Mutex<Histogram>) -> std::sync::MutexGuard<'_, Histogram> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

impl ShardCtx {
    fn new(plan: Plan, phase: watch::Receiver<Phase>) -> Self {
        ShardCtx {
            plan,
            counters: Counters::default(),
            failures: Mutex::default(),
            closes: Mutex::default(),
            errors: Mutex::default(),
            connect: Mutex::default(),
            latency: Mutex::default(),
            delays: Mutex::default(),
            phase,
            welcome: OnceLock::new(),
        }
    }

    /// Counts one more of `counter`.
    pub fn add(&self, counter: impl Fn(&Counters) -> &AtomicU64) {
        counter(&self.counters).fetch_add(1, Ordering::Relaxed);
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    /// Counts a failed attempt under `key`.
    pub fn fail(&self, key: String) {
        self.add(|c| &c.failed);
        bump(&self.failures, key);
    }

    /// Opens connection `index` of this shard and completes its handshake; a failure is
    /// counted (never retried) and gives `None`.
    pub async fn open(&self, index: usize) -> Option<(Conn, Welcome)> {
        let plan = &self.plan;
        let user = format!("{}-{index}", plan.user);
        let opened = client::open(
            plan.target,
            plan.transport,
            plan.source(index),
            &user,
            plan.connect_timeout(),
        );
        match opened.await {
            Ok(pair) => Some(pair),
            Err(failure) => {
                self.fail(failure.key());
                None
            }
        }
    }

    /// Counts an `error` frame with `code`.
    pub fn error_seen(&self, code: &str) {
        bump(&self.errors, code.to_owned());
    }

    /// Counts a close seen by a connection, under `key`.
    pub fn close_seen(&self, key: String) {
        bump(&self.closes, key);
    }

    /// Counts a connection the server closed while the bench was answering its pings. A close
    /// seen once the bench is stopping is the bench's own doing (or a crash after the window)
    /// and is only recorded under its reason.
    pub fn closed_unexpectedly(&self, phase: Phase, reason: &str) {
        if phase == Phase::Stop {
            return self.close_seen(format!("{}: {reason}", phase.name()));
        }
        self.add(|c| &c.closed_unexpectedly);
        self.close_seen(format!("{}: {reason}", phase.name()));
    }

    /// Records an established connection.
    pub fn established(&self, welcome: Welcome, since: Instant, publisher: bool) {
        let _ = self.welcome.set(welcome);
        lock(&self.connect).record(since.elapsed().as_micros() as u64);
        if publisher {
            self.add(|c| &c.publishers);
        } else {
            self.add(|c| &c.established);
        }
        self.add(|c| &c.open);
    }

    /// Records that an established connection is gone.
    pub fn gone(&self) {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
    }

    fn result(&self, ramp_seconds: f64, cpu_seconds: Option<f64>) -> ShardResult {
        ShardResult {
            tally: self.counters.snapshot(),
            failures: self
                .failures
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            closes: self
                .closes
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            errors: self
                .errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            connect: lock(&self.connect).clone(),
            latency: lock(&self.latency).clone(),
            delays: lock(&self.delays).clone(),
            ramp_seconds,
            cpu_seconds,
        }
    }
}

/// The role of one ramped connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Role {
    /// A publisher (fan-out), numbered within the shard.
    Publisher(usize),
    /// An ordinary connection with its global index.
    Member(usize),
}

/// Holds the slot of a handshake in flight; dropped when the handshake has resolved.
pub(crate) type Slot = OwnedSemaphorePermit;

/// The connection loop shared by idle members and fan-out subscribers after the handshake:
/// answers pings, counts round trips in the window, hands other frames to `on_frame`, and
/// ends at `Stop` or when the server closes (counted as unexpected).
pub(crate) async fn serve<F>(ctx: &ShardCtx, conn: &mut Conn, mut on_frame: F)
where
    F: FnMut(&super::client::Frame<'_>),
{
    let mut phase = ctx.phase.clone();
    let mut bye: Option<String> = None;
    loop {
        tokio::select! {
            line = conn.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        let reason = bye.map_or_else(|| "closed without bye".to_owned(), |r| format!("bye {r}"));
                        return ctx.closed_unexpectedly(ctx.phase(), &reason);
                    }
                    Err(e) => return ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}")),
                };
                let Some(frame) = super::client::Frame::parse(&line) else { continue };
                match &*frame.kind {
                    "ping" => {
                        ctx.add(|c| &c.pings);
                        if let Err(e) = conn.send(&super::client::pong_line(frame.seq)).await {
                            return ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                        }
                        if ctx.phase() == Phase::Window {
                            ctx.add(|c| &c.round_trips);
                        }
                    }
                    "bye" => bye = Some(frame.reason.as_deref().unwrap_or("none").to_owned()),
                    _ => on_frame(&frame),
                }
            }
            changed = phase.changed() => {
                if changed.is_err() || *phase.borrow() == Phase::Stop {
                    return;
                }
            }
        }
    }
}

async fn run_connection(ctx: Arc<ShardCtx>, role: Role, slot: Slot) {
    match (ctx.plan.mode, role) {
        (Mode::Fanout, Role::Publisher(n)) => fanout::publisher(ctx, n, slot).await,
        (Mode::Fanout, Role::Member(i)) => fanout::subscriber(ctx, i, slot).await,
        (Mode::Detect, Role::Member(i)) => detect::silent_client(ctx, i, slot).await,
        (Mode::Chat, Role::Member(i)) => chat::client(ctx, i, slot).await,
        (_, Role::Member(i)) => idle::client(ctx, i, slot).await,
        (_, Role::Publisher(_)) => drop(slot),
    }
}

/// Opens the shard's connections at the paced rate and waits until each has resolved.
async fn ramp(ctx: &Arc<ShardCtx>, tasks: &mut JoinSet<()>) {
    let plan = &ctx.plan;
    let total = plan.connections + plan.publishers;
    let inflight = plan.max_inflight.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(inflight));
    let start = tokio::time::Instant::now();
    for i in 0..total {
        if plan.connect_rate > 0.0 {
            tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / plan.connect_rate))
                .await;
        }
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        ctx.add(|c| &c.attempted);
        let role = if i < plan.publishers {
            Role::Publisher(i)
        } else {
            Role::Member(plan.first_index + i - plan.publishers)
        };
        tasks.spawn(run_connection(ctx.clone(), role, slot));
    }
    let _all_resolved = slots.acquire_many(inflight as u32).await;
}

/// Runs one shard until `Stop` (or until `commands` closes), reporting on `events`.
pub async fn run_shard(
    plan: Plan,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<Event>,
    in_process: bool,
) {
    let (phase_tx, phase_rx) = watch::channel(Phase::Ramp);
    let ctx = Arc::new(ShardCtx::new(plan, phase_rx));
    let started = Instant::now();
    let progress = tokio::spawn({
        let ctx = ctx.clone();
        let events = events.clone();
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(250));
            loop {
                every.tick().await;
                let tally = ctx.counters.snapshot();
                if events.send(Event::Progress { tally }).is_err() {
                    break;
                }
            }
        }
    });
    let mut tasks = JoinSet::new();
    if ctx.plan.mode != Mode::Churn {
        ramp(&ctx, &mut tasks).await;
    }
    let ramp_seconds = started.elapsed().as_secs_f64();
    let _ = events.send(Event::Ready {
        tally: ctx.counters.snapshot(),
        welcome: ctx.welcome.get().cloned(),
    });
    let mut cpu_at_go = None;
    while let Some(command) = commands.recv().await {
        match command {
            Command::Go => {
                if !in_process {
                    cpu_at_go = super::proc::sample(None).ok().map(|s| s.cpu_seconds);
                }
                phase_tx.send_replace(Phase::Window);
                if ctx.plan.mode == Mode::Churn {
                    for n in 0..ctx.plan.concurrency {
                        tasks.spawn(churn::cycle_loop(ctx.clone(), n));
                    }
                }
            }
            Command::Stop => break,
        }
    }
    let cpu_seconds = cpu_at_go.and_then(|at_go| {
        super::proc::sample(None)
            .ok()
            .map(|s| (s.cpu_seconds - at_go).max(0.0))
    });
    phase_tx.send_replace(Phase::Stop);
    let finished = tokio::time::timeout(Duration::from_secs(10), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tasks.abort_all();
    }
    progress.abort();
    let result = ctx.result(ramp_seconds, cpu_seconds);
    let _ = events.send(Event::Done {
        result: Box::new(result),
    });
}
