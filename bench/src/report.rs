//! The bench's result: one serialisable [`Report`], printed as a table or as JSON.
//!
//! Every figure says what it was measured from, and the report keeps the context a number
//! needs to be judged (machine load before and after, how many bench processes shared the
//! machine, what failed and why), so that a result copied into a document cannot lose its
//! caveats. `warnings` carries any limit that stopped the run short.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;

use serde::Serialize;

pub use super::chat::ChatReport;
use super::client::{HeartbeatInfo, Transport};
pub use super::nodes::NodeReport;
use super::shard::Tally;
use super::stats::Percentiles;
use super::Mode;

/// Everything one bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// The server address.
    pub target: SocketAddr,
    /// TCP or WebSocket.
    pub transport: Transport,
    /// `welcome.server`.
    pub server: Option<String>,
    /// `welcome.heartbeat`.
    pub heartbeat: Option<HeartbeatInfo>,
    /// Bench processes that held connections.
    pub processes: usize,
    /// Load averages (1, 5, 15 min) before the run.
    pub load_before: Option<[f64; 3]>,
    /// Load averages after the run.
    pub load_after: Option<[f64; 3]>,
    /// The connection ramp (all modes but churn).
    pub ramp: Option<RampReport>,
    /// The measured window.
    pub window: WindowReport,
    /// The server process, with `--server-pid`.
    pub server_process: Option<ServerReport>,
    /// Fan-out results.
    pub fanout: Option<FanoutReport>,
    /// Detection results.
    pub detect: Option<DetectReport>,
    /// Churn results.
    pub churn: Option<ChurnReport>,
    /// Chat results.
    pub chat: Option<ChatReport>,
    /// CPU seconds the bench's own processes used in the window.
    pub bench_cpu_seconds: Option<f64>,
    /// Failed connection attempts by cause.
    pub failures: BTreeMap<String, u64>,
    /// Connections the server closed, by phase and reason.
    pub closes: BTreeMap<String, u64>,
    /// Raw counters, added up over all shards.
    pub tally: Tally,
    /// Limits hit and anything else that makes a figure less than it seems.
    pub warnings: Vec<String>,
}

/// The connection ramp.
#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    /// Connections asked for (publishers included).
    pub requested: u64,
    /// Connections established.
    pub established: u64,
    /// Attempts that failed.
    pub failed: u64,
    /// Seconds from the first attempt until every attempt had resolved.
    pub seconds: f64,
    /// Established connections per second over the ramp.
    pub rate_per_second: f64,
    /// Connect → `welcome` times.
    pub connect_ms: Option<Percentiles>,
    /// `TcpExtListenOverflows` increase during the ramp (whole network namespace).
    pub listen_overflows: Option<u64>,
    /// `TcpExtListenDrops` increase during the ramp.
    pub listen_drops: Option<u64>,
}

/// The measured window.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    /// Its length in seconds.
    pub seconds: f64,
    /// Heartbeat round trips completed in it (pongs the bench sent).
    pub round_trips: u64,
    /// Connections the server closed while the bench answered its pings (false positives).
    pub closed_unexpectedly: u64,
    /// Connections open when the window ended.
    pub open_at_end: u64,
}

/// The server process over the window.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Its pid.
    pub pid: u32,
    /// RSS before the ramp, KiB.
    pub rss_before_kib: u64,
    /// Mean RSS in the window, KiB.
    pub rss_window_kib: u64,
    /// Largest RSS in the window, KiB.
    pub rss_max_kib: u64,
    /// Anonymous RSS before the ramp, KiB.
    pub anon_before_kib: u64,
    /// Mean anonymous RSS in the window, KiB.
    pub anon_window_kib: u64,
    /// `(rss_window − rss_before) / open connections`, bytes.
    pub rss_per_connection: Option<f64>,
    /// CPU seconds in the window.
    pub cpu_seconds: f64,
    /// CPU in the window as a share of one core, percent.
    pub cpu_percent: f64,
    /// User-space CPU seconds in the window (the rest of `cpu_seconds` is the kernel's).
    pub user_cpu_seconds: f64,
    /// CPU per heartbeat round trip, µs (idle, detect before silence).
    pub cpu_per_round_trip_us: Option<f64>,
    /// User-space CPU per heartbeat round trip, µs.
    pub user_cpu_per_round_trip_us: Option<f64>,
    /// Messages delivered per server CPU-second (fan-out).
    pub deliveries_per_cpu_second: Option<f64>,
    /// Messages delivered per server user-space CPU-second (fan-out).
    pub deliveries_per_user_cpu_second: Option<f64>,
    /// Threads at the end of the window.
    pub threads: u64,
    /// The server's open-file limit.
    pub open_file_limit: Option<u64>,
    /// The server exited during the window (figures stop at the last reading).
    pub exited: bool,
    /// Each server process, when --server-pid was given several times (the figures above
    /// are then sums over them, and `pid` is the first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReport>,
}

/// Fan-out results.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutReport {
    /// Subscribers established.
    pub subscribers: u64,
    /// Publishers established.
    pub publishers: u64,
    /// Messages published.
    pub published: u64,
    /// Messages published per second.
    pub publish_rate: f64,
    /// Deliveries per second offered (publish rate × subscribers).
    pub offered_per_second: f64,
    /// Deliveries expected (published × subscribers).
    pub expected: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Expected but not received by the end.
    pub missing: u64,
    /// Deliveries received per second of the window.
    pub delivered_per_second: f64,
    /// Publish → receive latency.
    pub latency_ms: Option<Percentiles>,
}

/// Detection results.
#[derive(Debug, Clone, Serialize)]
pub struct DetectReport {
    /// Connections that fell silent.
    pub silent: u64,
    /// Lower bound, exclusive, ms.
    pub bound_low_ms: u64,
    /// Upper bound, inclusive, ms.
    pub bound_high_ms: u64,
    /// Tolerance past the upper bound, ms.
    pub tolerance_ms: u64,
    /// Closed inside the bound.
    pub inside: u64,
    /// Closed too early.
    pub early: u64,
    /// Closed too late.
    pub late: u64,
    /// Not closed by the end.
    pub never: u64,
    /// Closed before they fell silent (false positives).
    pub closed_before_silence: u64,
    /// `inside / silent`, percent.
    pub inside_percent: f64,
    /// Last frame → close.
    pub delay_ms: Option<Percentiles>,
}

/// Churn results.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Loops run in parallel.
    pub concurrency: usize,
    /// Complete cycles.
    pub cycles: u64,
    /// Failed cycles.
    pub failed: u64,
    /// Cycles per second.
    pub per_second: f64,
    /// Connect → `welcome` times.
    pub handshake_ms: Option<Percentiles>,
    /// `TcpExtListenOverflows` increase during the window.
    pub listen_overflows: Option<u64>,
}

pub(crate) fn pct(p: &Option<Percentiles>) -> String {
    match p {
        Some(p) => format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms",
            short(p.p50),
            short(p.p90),
            short(p.p99),
            short(p.p999),
            short(p.max)
        ),
        None => "no samples".to_owned(),
    }
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn kib(v: u64) -> String {
    format!("{:.1} MiB", v as f64 / 1024.0)
}

fn load(l: &Option<[f64; 3]>) -> String {
    l.map_or_else(
        || "?".to_owned(),
        |l| format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2]),
    )
}

impl Report {
    /// The report as an aligned plain-text table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<24} {v}");
        };
        let mut head = format!("heartwire bench {} → {}", self.mode.name(), self.target);
        if self.transport == Transport::Ws {
            head.push_str(" (WebSocket)");
        }
        if let Some(server) = &self.server {
            let _ = write!(head, " ({server}");
            if let Some(hb) = &self.heartbeat {
                let _ = write!(
                    head,
                    ", ping every {} ms, max_missed {}",
                    hb.interval_ms, hb.max_missed
                );
            }
            head.push(')');
        }
        row("run", head);
        row(
            "load (1/5/15 min)",
            format!(
                "{} before, {} after",
                load(&self.load_before),
                load(&self.load_after)
            ),
        );
        row("bench processes", self.processes.to_string());
        if let Some(r) = &self.ramp {
            row(
                "ramp: established",
                format!("{} of {} ({} failed)", r.established, r.requested, r.failed),
            );
            row(
                "ramp: time",
                format!("{:.2} s, {:.0} conn/s", r.seconds, r.rate_per_second),
            );
            row("ramp: connect→welcome", pct(&r.connect_ms));
            row(
                "ramp: listen overflows",
                match (r.listen_overflows, r.listen_drops) {
                    (Some(o), Some(d)) => format!("{o} (listen drops {d})"),
                    _ => "unknown".to_owned(),
                },
            );
        }
        let w = &self.window;
        row("window", format!("{:.2} s", w.seconds));
        if matches!(self.mode, Mode::Idle | Mode::Fanout | Mode::Chat) {
            row(
                "heartbeat round trips",
                format!(
                    "{} ({:.0}/s)",
                    w.round_trips,
                    w.round_trips as f64 / w.seconds.max(1e-9)
                ),
            );
        }
        if self.mode != Mode::Churn {
            row(
                "closed by server",
                format!(
                    "{} while answering pings (open at end {})",
                    w.closed_unexpectedly, w.open_at_end
                ),
            );
        }
        if let Some(f) = &self.fanout {
            row(
                "fanout: subscribers",
                format!("{} ({} publishers)", f.subscribers, f.publishers),
            );
            row(
                "fanout: published",
                format!(
                    "{} ({:.2}/s, {:.0} deliveries/s offered)",
                    f.published, f.publish_rate, f.offered_per_second
                ),
            );
            row(
                "fanout: delivered",
                format!(
                    "{} of {} ({} missing), {:.0}/s",
                    f.delivered, f.expected, f.missing, f.delivered_per_second
                ),
            );
            row("fanout: latency", pct(&f.latency_ms));
        }
        if let Some(d) = &self.detect {
            row(
                "detect: bound",
                format!(
                    "({}, {}] ms + {} ms tolerance",
                    d.bound_low_ms, d.bound_high_ms, d.tolerance_ms
                ),
            );
            row(
                "detect: silent",
                format!(
                    "{}: inside {} ({:.2}%), early {}, late {}, never {}",
                    d.silent, d.inside, d.inside_percent, d.early, d.late, d.never
                ),
            );
            row(
                "detect: false positives",
                format!("{} closed before falling silent", d.closed_before_silence),
            );
            row("detect: delay", pct(&d.delay_ms));
        }
        if let Some(c) = &self.churn {
            row(
                "churn: cycles",
                format!(
                    "{} ({:.0}/s, {} loops), {} failed",
                    c.cycles, c.per_second, c.concurrency, c.failed
                ),
            );
            row("churn: connect→welcome", pct(&c.handshake_ms));
            row(
                "churn: listen overflows",
                c.listen_overflows
                    .map_or_else(|| "unknown".to_owned(), |o| o.to_string()),
            );
        }
        if let Some(s) = &self.server_process {
            row(
                "server: RSS",
                format!(
                    "{} before → {} in window (max {}), anon {} → {}",
                    kib(s.rss_before_kib),
                    kib(s.rss_window_kib),
                    kib(s.rss_max_kib),
                    kib(s.anon_before_kib),
                    kib(s.anon_window_kib)
                ),
            );
            if let Some(per) = s.rss_per_connection {
                row(
                    "server: RSS/connection",
                    format!("{:.2} KiB ({per:.0} bytes)", per / 1024.0),
                );
            }
            row(
                "server: CPU",
                format!(
                    "{:.2} s ({:.0}% of a core; user {:.2} s, system {:.2} s), {} threads",
                    s.cpu_seconds,
                    s.cpu_percent,
                    s.user_cpu_seconds,
                    s.cpu_seconds - s.user_cpu_seconds,
                    s.threads
                ),
            );
            if let Some(us) = s.cpu_per_round_trip_us {
                let user = s.user_cpu_per_round_trip_us.unwrap_or(0.0);
                row(
                    "server: CPU/round trip",
                    format!("{us:.2} µs (user {user:.2} µs)"),
                );
            }
            if let Some(d) = s.deliveries_per_cpu_second {
                let user = s.deliveries_per_user_cpu_second.unwrap_or(0.0);
                row(
                    "server: deliveries/CPU-s",
                    format!("{d:.0} (per user CPU-s {user:.0})"),
                );
            }
        }
        if let Some(c) = &self.chat {
            for (k, v) in c.rows() {
                row(&k, v);
            }
        }
        for (k, v) in super::nodes::rows(self.server_process.as_ref().map_or(&[], |s| &s.nodes)) {
            row(&k, v);
        }
        if let Some(cpu) = self.bench_cpu_seconds {
            row(
                "bench: CPU",
                format!(
                    "{cpu:.2} s ({:.0}% of a core)",
                    100.0 * cpu / w.seconds.max(1e-9)
                ),
            );
        }
        for (k, v) in &self.failures {
            row("failed", format!("{v} × {k}"));
        }
        for (k, v) in &self.closes {
            row("closed", format!("{v} × {k}"));
        }
        for warning in &self.warnings {
            row("WARNING", warning.clone());
        }
        out
    }
}
