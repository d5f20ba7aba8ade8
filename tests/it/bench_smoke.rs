//! `heartwire bench` at tiny scale against an in-process server: every mode runs, counts what
//! it should, and the multi-process split works. Small and short so that CI stays fast.

use std::time::Duration;

use heartwire::Config;
use heartwire_bench::{self as bench, BenchArgs, Mode};

/// A server with a fast heartbeat: the detection bound is (600, 900] ms.
fn server() -> heartwire::ServerHandle {
    crate::common::start(Config {
        heartbeat_interval: Duration::from_millis(300),
        max_missed: 2,
        ..crate::common::config()
    })
}

fn args(mode: Mode, server: &heartwire::ServerHandle) -> BenchArgs {
    let mut a = BenchArgs::new(mode, server.local_addr());
    a.connections = 20;
    a.warmup = Duration::from_millis(400);
    a.duration = Duration::from_millis(1200);
    a.quiet = true;
    a
}

#[actix_rt::test]
async fn idle_holds_and_answers_pings_and_samples_the_server() {
    let server = server();
    let mut a = args(Mode::Idle, &server);
    a.server_pid = vec![std::process::id()];
    let report = bench::run(&a).await.expect("bench runs");
    let ramp = report.ramp.as_ref().expect("ramp");
    assert_eq!(ramp.established, 20, "{}", report.table());
    assert_eq!(ramp.failed, 0);
    assert_eq!(report.window.closed_unexpectedly, 0, "{}", report.table());
    assert!(report.window.round_trips >= 20, "{}", report.table());
    let s = report.server_process.as_ref().expect("server sampled");
    assert!(s.cpu_per_round_trip_us.is_some());
    assert_eq!(report.heartbeat.map(|h| h.interval_ms), Some(300));
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["mode"], "idle");
}

#[actix_rt::test]
async fn fanout_delivers_every_message_with_latency() {
    let server = server();
    let mut a = args(Mode::Fanout, &server);
    a.rate = 10.0;
    let report = bench::run(&a).await.expect("bench runs");
    let f = report.fanout.as_ref().expect("fanout");
    assert_eq!(f.subscribers, 20, "{}", report.table());
    assert_eq!(f.publishers, 1);
    assert!(f.published >= 5, "{}", report.table());
    assert_eq!(f.delivered, f.expected, "{}", report.table());
    assert_eq!(f.missing, 0);
    let latency = f.latency_ms.as_ref().expect("latency samples");
    assert_eq!(latency.count, f.delivered);
}

/// 22 clients in rooms of 5 (the last room has 2), each publishing: every publish acked, every
/// member of the publisher's room (the publisher too) gets it, in seq order.
#[actix_rt::test]
async fn chat_delivers_every_publish_to_its_room() {
    let server = server();
    let mut a = args(Mode::Chat, &server);
    a.connections = 22;
    a.room_size = 5;
    a.rate = 4.0;
    a.server_pid = vec![std::process::id()];
    let report = bench::run(&a).await.expect("bench runs");
    let c = report.chat.as_ref().expect("chat");
    assert_eq!((c.clients, c.rooms), (22, 5), "{}", report.table());
    // 1.2 s at 4/s: 4 or 5 publishes per client.
    assert!(c.published >= 22 * 4, "{}", report.table());
    assert_eq!(
        (c.acked, c.refused, c.unanswered),
        (c.published, 0, 0),
        "{}",
        report.table()
    );
    // Each publish reaches its room: 5 members, or 2 in the last room.
    assert!(c.expected > c.published * 2 && c.expected <= c.published * 5);
    assert_eq!(
        (c.delivered, c.missing),
        (c.expected, 0),
        "{}",
        report.table()
    );
    assert_eq!((c.seq_holes, c.seq_disorder), (0, 0), "{}", report.table());
    assert_eq!(c.latency_ms.as_ref().expect("latency").count, c.delivered);
    assert!(c.deliveries_per_cpu_second.is_some());
    assert_eq!(report.window.closed_unexpectedly, 0, "{}", report.table());
}

#[actix_rt::test]
async fn detect_times_every_silent_client_against_the_bound() {
    let server = server();
    let mut a = args(Mode::Detect, &server);
    // Generous for a loaded CI machine; the bound itself is checked exactly in unit tests.
    a.tolerance = Duration::from_millis(300);
    let report = bench::run(&a).await.expect("bench runs");
    let d = report.detect.as_ref().expect("detect");
    assert_eq!((d.bound_low_ms, d.bound_high_ms), (600, 900));
    assert_eq!(d.silent, 20, "{}", report.table());
    assert_eq!(d.early, 0, "{}", report.table());
    assert_eq!(d.never, 0, "{}", report.table());
    assert_eq!(d.closed_before_silence, 0);
    assert_eq!(d.inside + d.late, 20, "{}", report.table());
    assert!(d.delay_ms.as_ref().unwrap().min > 600.0);
}

#[actix_rt::test]
async fn churn_cycles_without_failures() {
    let server = server();
    let mut a = args(Mode::Churn, &server);
    a.concurrency = 4;
    a.duration = Duration::from_millis(500);
    let report = bench::run(&a).await.expect("bench runs");
    let c = report.churn.as_ref().expect("churn");
    assert!(c.cycles >= 10, "{}", report.table());
    assert_eq!(c.failed, 0, "{}", report.table());
}

#[actix_rt::test]
async fn splits_across_worker_processes() {
    let server = server();
    let mut a = args(Mode::Idle, &server);
    a.processes = 2;
    a.worker_exe = Some(env!("CARGO_BIN_EXE_heartwire").into());
    let report = bench::run(&a).await.expect("bench runs");
    assert_eq!(report.processes, 2);
    assert_eq!(
        report.ramp.as_ref().unwrap().established,
        20,
        "{}",
        report.table()
    );
    assert_eq!(report.window.closed_unexpectedly, 0, "{}", report.table());
    assert!(report.bench_cpu_seconds.is_some());
}

#[actix_rt::test]
async fn unreachable_server_is_reported_plainly() {
    // Bind and drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut a = BenchArgs::new(Mode::Idle, port);
    a.connections = 3;
    a.quiet = true;
    let error = bench::run(&a).await.unwrap_err().to_string();
    assert!(
        error.contains("no connection could be established"),
        "{error}"
    );
    assert!(error.contains("3 × connect"), "{error}");
}

/// `--transport ws`: idle and fan-out over the WebSocket listener, every delivery counted.
#[actix_rt::test]
async fn websocket_transport_idles_and_fans_out() {
    let s = crate::common::ws::start_ws(Config {
        heartbeat_interval: Duration::from_millis(300),
        max_missed: 2,
        ..crate::common::config()
    });
    let mut a = args(Mode::Idle, &s.server);
    a.target = s.ws_addr();
    a.transport = bench::client::Transport::Ws;
    let report = bench::run(&a).await.expect("bench runs");
    assert_eq!(
        report.ramp.as_ref().expect("ramp").established,
        20,
        "{}",
        report.table()
    );
    assert_eq!(report.window.closed_unexpectedly, 0, "{}", report.table());
    assert!(report.window.round_trips >= 20, "{}", report.table());
    assert_eq!(serde_json::to_value(&report).unwrap()["transport"], "ws");

    let mut a = args(Mode::Fanout, &s.server);
    a.target = s.ws_addr();
    a.transport = bench::client::Transport::Ws;
    a.rate = 10.0;
    let report = bench::run(&a).await.expect("bench runs");
    let f = report.fanout.as_ref().expect("fanout");
    assert!(f.published >= 5, "{}", report.table());
    assert_eq!(
        (f.delivered, f.missing),
        (f.expected, 0),
        "{}",
        report.table()
    );
}
