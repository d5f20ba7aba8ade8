//! `heartwire bench`: load and measure a heartwire server (or anything speaking protocol v1).
//!
//! A push backend is judged by how many connections it holds per core and per GiB, what its
//! heartbeats cost, how fast it fans out and how quickly it notices a dead peer. This module
//! is the tool that measures those from the outside, as a protocol client, so that users can
//! benchmark their own deployments and so that the numbers in `BENCHMARKS.md` can be
//! reproduced with one command each.
//!
//! - [`Mode::Idle`]: hold N heartbeating connections (memory and CPU per connection),
//! - [`Mode::Fanout`]: N subscribers in a room, publishers at an open-loop rate (deliveries per
//!   CPU-second, publish → receive latency),
//! - [`Mode::Detect`]: N clients fall silent at once (close time against the `welcome` bound),
//! - [`Mode::Churn`]: connect/hello/close cycles per second,
//! - [`Mode::Chat`]: N clients in rooms of K, each publishing at R/s (sustained publishes per
//!   second, deliveries, latency, loss).
//!
//! The pieces: [`client`] (the per-connection protocol client), [`shard`] (the connections of
//! one process and their phases), [`worker`] (shards in this or in child processes), the
//! per-mode behaviour in [`idle`], [`fanout`], [`detect`], [`churn`] and [`chat`], `/proc`
//! readings in [`proc`] (of several server processes in [`nodes`]), statistics in [`stats`],
//! the result in [`report`] and the live view in [`progress`]. The coordinator here splits
//! the work into shards (one process opens at most its open-file limit of sockets), ramps
//! them, runs the window while sampling the server's `/proc` entries, and adds up the results.

pub mod chat;
pub mod churn;
pub mod client;
pub mod detect;
pub mod fanout;
pub mod idle;
pub mod nodes;
pub mod proc;
pub mod progress;
pub mod report;
pub mod shard;
pub mod stats;
pub mod worker;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use self::client::{Transport, Welcome};
use self::detect::Bound;
use self::nodes::{Measured, NodesSampler};
use self::proc::ListenCounters;
use self::progress::Progress;
use self::report::{
    ChurnReport, DetectReport, FanoutReport, RampReport, Report, ServerReport, WindowReport,
};
use self::shard::{Command, Event, Plan, ShardResult, Tally};
use self::stats::Histogram;
use self::worker::ShardHandle;

/// Files a bench process keeps for itself besides its sockets.
const FD_RESERVE: u64 = 100;
/// How long fan-out waits after publishing for the last deliveries.
const FANOUT_DRAIN: Duration = Duration::from_secs(5);
/// How long past --duration chat waits before it may end the window early.
const CHAT_MARGIN: Duration = Duration::from_millis(500);

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Hold N heartbeating connections for --duration.
    Idle,
    /// N subscribers in one room; publishers at --rate messages/s for --duration.
    Fanout,
    /// N clients fall silent at once; time until the server closes each.
    Detect,
    /// Connect/hello/welcome/bye/close cycles in --concurrency loops for --duration.
    Churn,
    /// N clients in rooms of --room-size, each publishing --rate messages/s into its room.
    Chat,
}

impl Mode {
    /// The mode's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Idle => "idle",
            Mode::Fanout => "fanout",
            Mode::Detect => "detect",
            Mode::Churn => "churn",
            Mode::Chat => "chat",
        }
    }
}

/// Options of `heartwire bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub mode: Mode,
    /// The server to load (its WebSocket listener with --transport ws).
    #[arg(long, default_value = "127.0.0.1:7700", value_name = "ADDR")]
    pub target: SocketAddr,
    /// Speak protocol v1 over TCP, or over WebSocket at ws://ADDR/ws.
    #[arg(long, value_enum, default_value_t = Transport::Tcp)]
    pub transport: Transport,
    /// Connections to hold (idle, detect), subscribers (fanout) or clients (chat).
    #[arg(short = 'n', long, default_value_t = 1000, value_name = "N")]
    pub connections: usize,
    /// Connection attempts per second while ramping; 0 = as fast as --max-inflight allows.
    #[arg(long, default_value_t = 5000.0, value_name = "PER_SEC")]
    pub connect_rate: f64,
    /// Handshakes in flight at once, per bench process.
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_inflight: usize,
    /// Limit on connect + welcome (+ subscribed) per connection; a slower one counts as failed.
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DUR")]
    pub connect_timeout: Duration,
    /// Pause between the ramp and the window, so ramp work does not count in the window.
    #[arg(long, default_value = "2s", value_parser = duration, value_name = "DUR")]
    pub warmup: Duration,
    /// Length of the window: hold (idle), publishing (fanout), cycling (churn).
    #[arg(long, default_value = "10s", value_parser = duration, value_name = "DUR")]
    pub duration: Duration,
    /// fanout: messages published per second, over all publishers; chat: per client
    /// (fractions allowed).
    #[arg(long, default_value_t = 5.0, value_name = "PER_SEC")]
    pub rate: f64,
    /// fanout: publishing connections.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub publishers: usize,
    /// fanout, chat: padding bytes in each message's data.
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub payload: usize,
    /// fanout: the room; chat: the prefix of the rooms (ROOM-0, ROOM-1, …).
    #[arg(long, default_value = "bench")]
    pub room: String,
    /// chat: clients per room.
    #[arg(long, default_value_t = 10, value_name = "K")]
    pub room_size: usize,
    /// churn: connect/close loops running at once.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub concurrency: usize,
    /// detect: time allowed past the upper bound (the close travels to the client).
    #[arg(long, default_value = "50ms", value_parser = duration, value_name = "DUR")]
    pub tolerance: Duration,
    /// Source addresses 127.0.0.2.. to spread sockets over (loopback targets); 0 = none.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub source_ips: u8,
    /// Connections per bench process; 0 = the open-file limit less a reserve of 100.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub per_process: usize,
    /// Worker processes to split into; 0 = as few as --per-process allows (none when one
    /// process suffices: the connections are then held by this process).
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub processes: usize,
    /// The server's pid: sample its RSS and CPU from /proc during the window. Repeat it for
    /// the nodes of a cluster: figures are summed, and each node is listed.
    #[arg(long, value_name = "PID")]
    pub server_pid: Vec<u32>,
    /// User names are PREFIX-0, PREFIX-1, …
    #[arg(long, default_value = "bench", value_name = "PREFIX")]
    pub user: String,
    /// Print the report as JSON on standard output instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(short, long)]
    pub quiet: bool,
    /// Internal: run one shard, driven over standard input/output by a coordinating bench.
    #[arg(long, hide = true)]
    pub worker: bool,
    /// Internal: the executable to start workers from (default: this one).
    #[arg(long, hide = true, value_name = "PATH")]
    pub worker_exe: Option<std::path::PathBuf>,
}

impl BenchArgs {
    /// Options for `mode` with every default, as `heartwire bench MODE` would have them.
    pub fn new(mode: Mode, target: SocketAddr) -> BenchArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: BenchArgs,
        }
        let mut args = Wrap::parse_from(["bench", mode.name()]).args;
        args.target = target;
        args
    }
}

/// Why a bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options do not make sense, or a limit stops the bench before it starts.
    #[error("{0}")]
    Usage(String),
    /// A worker process could not be started.
    #[error("cannot start a bench worker process: {0}")]
    Spawn(#[from] std::io::Error),
    /// A shard failed.
    #[error("bench shard {shard} failed: {error}")]
    Shard {
        /// Which.
        shard: usize,
        /// Why.
        error: String,
    },
    /// The ramp got no connection at all.
    #[error("no connection could be established to {target}: {failures}")]
    NoConnection {
        /// The server.
        target: SocketAddr,
        /// The causes.
        failures: String,
    },
}

/// `heartwire bench …` from the command line: runs, prints, and returns the exit code.
pub fn run_cli(args: BenchArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("heartwire bench: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.worker {
        return match runtime.block_on(worker::run_worker()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("heartwire bench worker: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let progress = Progress::new(!args.quiet);
    match runtime.block_on(run_with(&args, &progress)) {
        Ok(report) => {
            progress.finish();
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(e) => {
                        eprintln!("heartwire bench: {e}");
                        return ExitCode::FAILURE;
                    }
                }
                for warning in &report.warnings {
                    eprintln!("heartwire bench: warning: {warning}");
                }
            } else {
                print!("{}", report.table());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            progress.finish();
            eprintln!("heartwire bench: {e}");
            match e {
                BenchError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::FAILURE,
            }
        }
    }
}

/// Runs a bench without a progress bar (for tests and embedding); needs a tokio runtime.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    run_with(args, &Progress::new(false)).await
}

/// How the work is split.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Worker processes; 0 means the coordinating process holds every connection itself.
    pub processes: usize,
    /// Connections per shard (one shard when `processes` is 0).
    pub per_shard: Vec<usize>,
}

/// Splits `total` connections into shards of at most `per_process`, or into exactly
/// `processes` shards when that is given.
pub fn split(total: usize, per_process: usize, processes: usize) -> Result<Split, String> {
    let per_process = per_process.max(1);
    let shards = if processes > 0 {
        processes
    } else if total <= per_process {
        return Ok(Split {
            processes: 0,
            per_shard: vec![total],
        });
    } else {
        total.div_ceil(per_process)
    };
    let base = total / shards;
    let extra = total % shards;
    let per_shard: Vec<usize> = (0..shards).map(|i| base + usize::from(i < extra)).collect();
    if per_shard.iter().any(|&n| n > per_process) {
        return Err(format!(
            "{total} connections in {shards} processes is {} per process, more than the {per_process} \
             one process may open here (its open-file limit less {FD_RESERVE}); use more --processes",
            per_shard[0]
        ));
    }
    Ok(Split {
        processes: shards,
        per_shard,
    })
}

fn validate(args: &BenchArgs) -> Result<(), BenchError> {
    let usage = |m: &str| Err(BenchError::Usage(m.to_owned()));
    if args.mode != Mode::Churn && args.connections == 0 {
        return usage("--connections must be at least 1");
    }
    if args.mode == Mode::Fanout && (args.publishers == 0 || args.rate.is_nan() || args.rate <= 0.0)
    {
        return usage("fanout needs --publishers ≥ 1 and --rate > 0");
    }
    if args.mode == Mode::Chat && (args.room_size == 0 || args.rate.is_nan() || args.rate <= 0.0) {
        return usage("chat needs --room-size ≥ 1 and --rate > 0");
    }
    if args.mode == Mode::Churn && args.concurrency == 0 {
        return usage("churn needs --concurrency ≥ 1");
    }
    if args.connect_rate.is_nan() || args.connect_rate < 0.0 || !args.rate.is_finite() {
        return usage("rates must be finite and not negative");
    }
    if args.duration.is_zero() && args.mode != Mode::Detect {
        return usage("--duration must be more than 0");
    }
    Ok(())
}

struct Shards {
    handles: Vec<ShardHandle>,
    events: mpsc::UnboundedReceiver<(usize, Event)>,
    latest: Vec<Tally>,
}

impl Shards {
    fn total(&self) -> Tally {
        let mut t = Tally::default();
        for s in &self.latest {
            t += *s;
        }
        t
    }

    fn send(&self, command: Command) {
        for h in &self.handles {
            h.send(command);
        }
    }

    /// Handles one event; returns it if it is not a progress update.
    fn absorb(&mut self, shard: usize, event: Event) -> Result<Option<Event>, BenchError> {
        match event {
            Event::Progress { tally } => {
                self.latest[shard] = tally;
                Ok(None)
            }
            Event::Failed { error } => Err(BenchError::Shard { shard, error }),
            other => Ok(Some(other)),
        }
    }

    /// Waits up to `wait` for the next non-progress event.
    async fn next(&mut self, wait: Duration) -> Result<Option<(usize, Event)>, BenchError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => return Ok(None),
                Ok(None) => {
                    return Err(BenchError::Shard {
                        shard: 0,
                        error: "all shards are gone".to_owned(),
                    })
                }
                Ok(Some((shard, event))) => {
                    if let Some(event) = self.absorb(shard, event)? {
                        return Ok(Some((shard, event)));
                    }
                }
            }
        }
    }
}

/// Runs a bench, showing `progress`.
pub async fn run_with(args: &BenchArgs, progress: &Progress) -> Result<Report, BenchError> {
    validate(args)?;
    let mode = args.mode;
    let mut warnings = Vec::new();
    let publishers = if mode == Mode::Fanout {
        args.publishers
    } else {
        0
    };
    let total = match mode {
        Mode::Churn => args.concurrency,
        _ => args.connections + publishers,
    };
    let own_limit = proc::open_file_limit(None).unwrap_or(1024);
    let per_process = match args.per_process {
        0 => own_limit.saturating_sub(FD_RESERVE).max(1) as usize,
        n => n,
    };
    let split = split(total, per_process, args.processes).map_err(BenchError::Usage)?;
    let mut server_fd_limit = None;
    // Several server processes (nodes on one port) share the connections about evenly.
    let per_server = total.div_ceil(args.server_pid.len().max(1));
    for &pid in &args.server_pid {
        proc::sample(Some(pid)).map_err(|e| {
            BenchError::Usage(format!("cannot read /proc/{pid} (--server-pid): {e}"))
        })?;
        server_fd_limit = server_fd_limit.or(proc::open_file_limit(Some(pid)));
        if let Some(limit) = server_fd_limit {
            if mode != Mode::Churn && per_server as u64 + 20 > limit {
                warnings.push(format!(
                    "the server process may open at most {limit} files: expect connections \
                     beyond about {} to fail",
                    limit.saturating_sub(20)
                ));
            }
        }
    }
    let sources = client::source_addresses(args.target, args.source_ips);
    let shard_count = split.per_shard.len();
    let mut plans = Vec::with_capacity(shard_count);
    let mut first_index = 0;
    for (shard, &n) in split.per_shard.iter().enumerate() {
        let publishers_here = if shard == 0 { publishers } else { 0 };
        let connections = match mode {
            Mode::Churn => 0,
            _ => n.saturating_sub(publishers_here),
        };
        plans.push(Plan {
            mode,
            target: args.target,
            transport: args.transport,
            shard,
            first_index,
            connections,
            publishers: publishers_here,
            connect_rate: args.connect_rate / shard_count as f64,
            max_inflight: args.max_inflight,
            connect_timeout_ms: args.connect_timeout.as_millis() as u64,
            sources: sources.clone(),
            user: args.user.clone(),
            room: args.room.clone(),
            room_size: args.room_size,
            clients: args.connections,
            payload: args.payload,
            publish_rate: match mode {
                Mode::Chat => args.rate,
                _ => args.rate / publishers.max(1) as f64,
            },
            publish_ms: args.duration.as_millis() as u64,
            concurrency: if mode == Mode::Churn { n } else { 0 },
            tolerance_ms: args.tolerance.as_millis() as u64,
        });
        first_index += connections;
    }

    let load_before = proc::loadavg();
    let (event_tx, event_rx) = mpsc::unbounded_channel();
    let mut handles = Vec::with_capacity(shard_count);
    for plan in plans {
        handles.push(if split.processes == 0 {
            worker::spawn_local(plan, event_tx.clone())
        } else {
            worker::spawn_process(plan, args.worker_exe.as_deref(), event_tx.clone())?
        });
    }
    drop(event_tx);
    let mut shards = Shards {
        handles,
        events: event_rx,
        latest: vec![Tally::default(); shard_count],
    };
    let server_before = nodes::Before::read(&args.server_pid);

    // Ramp.
    let listen_before = ListenCounters::read();
    let ramp_started = Instant::now();
    progress.ramp(total as u64);
    let mut ready = vec![false; shard_count];
    let mut welcome: Option<Welcome> = None;
    while ready.iter().any(|r| !r) {
        if let Some((shard, Event::Ready { tally, welcome: w })) =
            shards.next(Duration::from_millis(100)).await?
        {
            ready[shard] = true;
            shards.latest[shard] = tally;
            welcome = welcome.or(w);
        }
        progress.ramp_update(&shards.total());
    }
    let ramp_seconds = ramp_started.elapsed().as_secs_f64();
    let listen_ramp = ListenCounters::read()
        .zip(listen_before)
        .map(|(after, before)| after.since(before));
    let ramp_tally = shards.total();
    if mode != Mode::Churn && ramp_tally.established + ramp_tally.publishers == 0 {
        shards.send(Command::Stop);
        let results = collect(&mut shards).await?;
        let failures = merge_maps(results.iter().map(|r| &r.failures));
        let failures = failures
            .iter()
            .map(|(k, v)| format!("{v} × {k}"))
            .collect::<Vec<_>>()
            .join("; ");
        return Err(BenchError::NoConnection {
            target: args.target,
            failures,
        });
    }
    let bound = welcome
        .as_ref()
        .and_then(|w| w.heartbeat)
        .map(Bound::from_welcome);
    if mode == Mode::Detect && bound.is_none() {
        warnings.push("welcome announced no heartbeat: closes cannot be judged".to_owned());
    }

    // Warm-up: let connect-time work finish before measuring.
    if mode != Mode::Churn && !args.warmup.is_zero() {
        progress.timed("settle", args.warmup);
        let started = Instant::now();
        while started.elapsed() < args.warmup {
            let _ = shards
                .next(
                    args.warmup
                        .saturating_sub(started.elapsed())
                        .min(Duration::from_millis(250)),
                )
                .await?;
            progress.timed_update(mode, started.elapsed(), &shards.total());
        }
    }

    // The window.
    let window_length = match (mode, bound) {
        (Mode::Detect, Some(b)) => b.high + args.tolerance + Duration::from_secs(2),
        (Mode::Detect, None) => Duration::from_secs(10),
        (Mode::Fanout | Mode::Chat, _) => args.duration + FANOUT_DRAIN,
        _ => args.duration,
    };
    let listen_window_before = ListenCounters::read();
    let mut sampler = server_before.and_then(|before| NodesSampler::start(before).ok());
    let self_cpu_before = proc::sample(None).ok().map(|s| s.cpu_seconds);
    let window_started = Instant::now();
    shards.send(Command::Go);
    progress.timed(mode.name(), window_length);
    loop {
        let _ = shards.next(Duration::from_millis(250)).await?;
        if let Some(s) = &mut sampler {
            s.tick();
        }
        let elapsed = window_started.elapsed();
        let t = shards.total();
        progress.timed_update(mode, elapsed, &t);
        let done = match mode {
            Mode::Idle | Mode::Churn => elapsed >= args.duration,
            Mode::Fanout => {
                elapsed >= window_length
                    || (elapsed >= args.duration
                        && t.delivered >= t.published.saturating_mul(t.established))
            }
            Mode::Chat => {
                // Past --duration by a margin: a worker process starts its window a moment
                // after this one and publishes until its own end.
                elapsed >= window_length
                    || (elapsed >= args.duration + CHAT_MARGIN
                        && t.delivered >= t.expected
                        && t.acked + t.refused >= t.published)
            }
            Mode::Detect => {
                elapsed >= window_length
                    || (t.silent > 0
                        && t.inside + t.early + t.late >= t.silent
                        && elapsed >= Duration::from_millis(500))
            }
        };
        if done {
            break;
        }
    }
    let window_seconds = window_started.elapsed().as_secs_f64();
    let server_window = sampler.map(|s| s.finish(window_seconds));
    if let Some(m) = &server_window {
        if m.window.exited {
            warnings.push(format!(
                "a server process ({:?}) exited during the window: its figures stop at the \
                 last reading before that",
                args.server_pid
            ));
        }
    }
    let self_cpu = self_cpu_before
        .zip(proc::sample(None).ok())
        .map(|(before, after)| (after.cpu_seconds - before).max(0.0));
    let window_tally = shards.total();
    shards.send(Command::Stop);
    let results = collect(&mut shards).await?;
    let listen_window = ListenCounters::read()
        .zip(listen_window_before)
        .map(|(after, before)| after.since(before));
    progress.finish();

    // Add up.
    let mut tally = Tally::default();
    let mut connect = Histogram::new();
    let mut latency = Histogram::new();
    let mut delays = Histogram::new();
    let mut bench_cpu = if split.processes == 0 { self_cpu } else { None };
    for r in &results {
        tally += r.tally;
        connect.merge(&r.connect);
        latency.merge(&r.latency);
        delays.merge(&r.delays);
        if let Some(cpu) = r.cpu_seconds {
            bench_cpu = Some(bench_cpu.unwrap_or(0.0) + cpu);
        }
    }
    let failures = merge_maps(results.iter().map(|r| &r.failures));
    let closes = merge_maps(results.iter().map(|r| &r.closes));
    if tally.failed > 0 {
        warnings.push(format!(
            "{} connection attempts failed (not retried); see `failed`",
            tally.failed
        ));
    }
    let held = window_tally.established;
    let round_trips = tally.round_trips;

    let ramp = (mode != Mode::Churn).then(|| RampReport {
        requested: total as u64,
        established: ramp_tally.established + ramp_tally.publishers,
        failed: ramp_tally.failed,
        seconds: ramp_seconds,
        rate_per_second: (ramp_tally.established + ramp_tally.publishers) as f64
            / ramp_seconds.max(1e-9),
        connect_ms: connect.summary_ms(),
        listen_overflows: listen_ramp.map(|l| l.overflows),
        listen_drops: listen_ramp.map(|l| l.drops),
    });
    let server_process = match (args.server_pid.first(), server_window) {
        (
            Some(&pid),
            Some(Measured {
                before,
                window: w,
                nodes,
            }),
        ) => Some(ServerReport {
            pid,
            rss_before_kib: before.rss_kib,
            rss_window_kib: w.rss_mean_kib,
            rss_max_kib: w.rss_max_kib,
            anon_before_kib: before.rss_anon_kib,
            anon_window_kib: w.anon_mean_kib,
            rss_per_connection: (held > 0 && mode != Mode::Churn)
                .then(|| (w.rss_mean_kib as f64 - before.rss_kib as f64) * 1024.0 / held as f64),
            cpu_seconds: w.cpu_seconds,
            cpu_percent: 100.0 * w.cpu_seconds / window_seconds.max(1e-9),
            user_cpu_seconds: w.user_cpu_seconds,
            cpu_per_round_trip_us: (mode == Mode::Idle && round_trips > 0)
                .then(|| w.cpu_seconds * 1e6 / round_trips as f64),
            user_cpu_per_round_trip_us: (mode == Mode::Idle && round_trips > 0)
                .then(|| w.user_cpu_seconds * 1e6 / round_trips as f64),
            deliveries_per_cpu_second: (mode == Mode::Fanout && w.cpu_seconds > 0.0)
                .then(|| tally.delivered as f64 / w.cpu_seconds),
            deliveries_per_user_cpu_second: (mode == Mode::Fanout && w.user_cpu_seconds > 0.0)
                .then(|| tally.delivered as f64 / w.user_cpu_seconds),
            threads: w.threads,
            open_file_limit: server_fd_limit,
            exited: w.exited,
            nodes,
        }),
        _ => None,
    };
    let fanout = (mode == Mode::Fanout).then(|| {
        let expected = tally.published * held;
        FanoutReport {
            subscribers: held,
            publishers: tally.publishers,
            published: tally.published,
            publish_rate: tally.published as f64 / args.duration.as_secs_f64().max(1e-9),
            offered_per_second: args.rate * held as f64,
            expected,
            delivered: tally.delivered,
            missing: expected.saturating_sub(tally.delivered),
            delivered_per_second: tally.delivered as f64 / window_seconds.max(1e-9),
            latency_ms: latency.summary_ms(),
        }
    });
    let detect = (mode == Mode::Detect).then(|| DetectReport {
        silent: tally.silent,
        bound_low_ms: bound.map_or(0, |b| b.low.as_millis() as u64),
        bound_high_ms: bound.map_or(0, |b| b.high.as_millis() as u64),
        tolerance_ms: args.tolerance.as_millis() as u64,
        inside: tally.inside,
        early: tally.early,
        late: tally.late,
        never: tally.never,
        closed_before_silence: tally.closed_unexpectedly,
        inside_percent: 100.0 * tally.inside as f64 / (tally.silent.max(1)) as f64,
        delay_ms: delays.summary_ms(),
    });
    if let Some(d) = &detect {
        if d.inside < d.silent {
            warnings.push(format!(
                "{} of {} silent connections were not closed inside the bound",
                d.silent - d.inside,
                d.silent
            ));
        }
    }
    let churn = (mode == Mode::Churn).then(|| ChurnReport {
        concurrency: args.concurrency,
        cycles: tally.cycles,
        failed: tally.cycle_failures,
        per_second: tally.cycles as f64 / window_seconds.max(1e-9),
        handshake_ms: latency.summary_ms(),
        listen_overflows: listen_window.map(|l| l.overflows),
    });
    let chat = (mode == Mode::Chat).then(|| {
        chat::ChatReport::new(
            args,
            &tally,
            &merge_maps(results.iter().map(|r| &r.errors)),
            latency.summary_ms(),
            server_process.as_ref().map(|s| s.cpu_seconds),
        )
    });
    if let Some(c) = &chat {
        if c.clients < args.connections as u64 {
            warnings.push(format!(
                "only {} of {} chat clients were established: rooms are smaller than \
                 --room-size and `expected` counts deliveries to clients that are not there",
                c.clients, args.connections
            ));
        }
    }
    if tally.closed_unexpectedly > 0 {
        warnings.push(format!(
            "the server closed {} connections that were answering its pings",
            tally.closed_unexpectedly
        ));
    }
    Ok(Report {
        mode,
        target: args.target,
        transport: args.transport,
        server: welcome.as_ref().and_then(|w| w.server.clone()),
        heartbeat: welcome.as_ref().and_then(|w| w.heartbeat),
        processes: split.processes.max(1),
        load_before,
        load_after: proc::loadavg(),
        ramp,
        window: WindowReport {
            seconds: window_seconds,
            round_trips,
            closed_unexpectedly: tally.closed_unexpectedly,
            open_at_end: window_tally.open,
        },
        server_process,
        fanout,
        detect,
        churn,
        chat,
        bench_cpu_seconds: bench_cpu,
        failures,
        closes,
        tally,
        warnings,
    })
}

/// Waits for every shard's `Done`.
async fn collect(shards: &mut Shards) -> Result<Vec<ShardResult>, BenchError> {
    let mut results: Vec<Option<ShardResult>> = vec![None; shards.handles.len()];
    let deadline = Instant::now() + Duration::from_secs(60);
    while results.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BenchError::Shard {
                shard: results.iter().position(Option::is_none).unwrap_or(0),
                error: "no result within 60 s of stop".to_owned(),
            });
        }
        if let Some((shard, Event::Done { result })) = shards.next(left).await? {
            results[shard] = Some(*result);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

fn merge_maps<'a>(maps: impl Iterator<Item = &'a BTreeMap<String, u64>>) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for map in maps {
        for (k, v) in map {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

/// Parses a human duration (`200ms`, `30s`, `5m`) for command-line options.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (use a form like 200ms, 30s, 5m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_bench_stays_in_process() {
        assert_eq!(
            split(500, 19_900, 0),
            Ok(Split {
                processes: 0,
                per_shard: vec![500]
            })
        );
    }

    #[test]
    fn large_bench_splits_evenly_under_the_limit() {
        let s = split(40_000, 19_900, 0).unwrap();
        assert_eq!(s.processes, 3);
        assert_eq!(s.per_shard, vec![13_334, 13_333, 13_333]);
        assert_eq!(s.per_shard.iter().sum::<usize>(), 40_000);
    }

    #[test]
    fn forced_process_count_that_cannot_hold_the_load_is_refused() {
        let e = split(40_000, 19_900, 2).unwrap_err();
        assert!(e.contains("20000 per process"), "{e}");
        assert_eq!(split(30, 100, 2).unwrap().per_shard, vec![15, 15]);
    }

    #[test]
    fn defaults_parse() {
        let a = BenchArgs::new(Mode::Detect, "127.0.0.1:1".parse().unwrap());
        assert_eq!(a.mode, Mode::Detect);
        assert_eq!(a.tolerance, Duration::from_millis(50));
        assert_eq!(a.target.port(), 1);
        assert!(validate(&a).is_ok());
        let mut f = BenchArgs::new(Mode::Fanout, "127.0.0.1:1".parse().unwrap());
        f.rate = 0.0;
        assert!(matches!(validate(&f), Err(BenchError::Usage(_))));
    }

    #[test]
    fn mode_names_match_serde() {
        for m in [
            Mode::Idle,
            Mode::Fanout,
            Mode::Detect,
            Mode::Churn,
            Mode::Chat,
        ] {
            assert_eq!(serde_json::to_value(m).unwrap(), m.name());
        }
    }
}
