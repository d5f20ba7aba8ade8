//! Graceful shutdown: `bye{reason:"shutdown", reconnect_ms}` after whatever was queued, no
//! new connections, and a drain bounded by `drain_timeout` even when a client never reads.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{config, server_publish, start, Client, RawClient, PATIENCE};
use heartwire::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Checks a shutdown `bye` and its jittered hint in `[base, 2 × base]`.
fn assert_shutdown_bye(bye: &Value, base: Duration) {
    assert_eq!(bye["type"], "bye", "{bye}");
    assert_eq!(bye["reason"], "shutdown", "{bye}");
    let hint = bye["reconnect_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("reconnect_ms missing: {bye}"));
    let base = base.as_millis() as u64;
    assert!(
        (base..=2 * base).contains(&hint),
        "reconnect_ms {hint} outside [{base}, {}]",
        2 * base
    );
}

/// After shutdown, a connection attempt is refused, or accepted by nobody and closed: it never
/// gets a `welcome`.
async fn assert_no_new_sessions(addr: SocketAddr) {
    let Ok(mut stream) = TcpStream::connect(addr).await else {
        return; // refused
    };
    // The write may fail if the connection is already reset; that is fine too.
    let _ = stream
        .write_all(b"{\"type\":\"hello\",\"user\":\"late\"}\n")
        .await;
    let mut got = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "a connection after shutdown was left open");
    let text = String::from_utf8_lossy(&got);
    assert!(
        !text.contains("welcome"),
        "a connection after shutdown was served: {text}"
    );
}

#[actix_rt::test]
async fn shutdown_says_bye_after_queued_frames_then_closes() {
    let base = Duration::from_millis(500);
    let server = start(Config {
        shutdown_reconnect: base,
        drain_timeout: Duration::from_secs(30),
        ..config()
    });
    let addr = server.local_addr();
    let (mut sub, _) = Client::hello(addr, "sub").await;
    sub.send(json!({"type": "subscribe", "room": "news"})).await;
    sub.recv_type("subscribed").await;
    let (mut two, _) = Client::hello(addr, "two").await;
    let (mut three, _) = Client::hello(addr, "three").await;

    // Frames queued for the clients before the shutdown, which nobody reads yet.
    for n in 1..=5 {
        assert_eq!(server_publish(&server, "news", json!({"n": n})).await, n);
    }
    let delivered = server.send_to("two", &json!("before"), None).await.unwrap();
    assert_eq!(delivered, 1);

    let started = Instant::now();
    assert!(server.shutdown().await, "every session closed in time");
    // Everything was already in kernel buffers: no reason to wait for anything.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );

    let frames = sub.until_closed().await;
    assert_eq!(frames.len(), 6, "{frames:?}");
    for (i, m) in frames[..5].iter().enumerate() {
        let n = i as u64 + 1;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(
            (m["seq"].as_u64(), m["data"]["n"].as_u64()),
            (Some(n), Some(n))
        );
        assert_eq!(m["from"], Value::Null);
    }
    assert_shutdown_bye(&frames[5], base);

    let frames = two.until_closed().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["type"], "message");
    assert_eq!(frames[0]["data"], "before");
    assert_shutdown_bye(&frames[1], base);

    let frames = three.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_shutdown_bye(&frames[0], base);

    assert_no_new_sessions(addr).await;
}

/// A client that never reads while megabytes are queued for it cannot hold the shutdown up
/// beyond `drain_timeout` (its `close_timeout` is far longer); everyone else still gets a
/// proper `bye`, and the stuck connection is closed once the server has stopped.
#[actix_rt::test]
async fn stuck_client_does_not_hold_shutdown_beyond_drain_timeout() {
    let base = Duration::from_millis(500);
    let drain_timeout = Duration::from_millis(500);
    let server = start(Config {
        shutdown_reconnect: base,
        drain_timeout,
        close_timeout: Duration::from_secs(60),
        max_frame: 256 * 1024,
        outbound_budget: 64 * 1024 * 1024,
        heartbeat_interval: Duration::from_secs(120),
        ..config()
    });
    let addr = server.local_addr();

    let mut stuck = RawClient::slow_subscriber(addr, "stuck", "big").await;
    let (mut fine, _) = Client::hello(addr, "fine").await;

    // 24 MiB for a peer with a tiny receive window: far more than the kernel buffers
    // (at most a few MiB), far less than the outbound budget.
    let pad = "y".repeat(128 * 1024);
    for n in 1..=192u64 {
        server_publish(&server, "big", json!({"n": n, "pad": pad})).await;
    }

    let started = Instant::now();
    let drained = server.shutdown().await;
    let took = started.elapsed();
    assert!(!drained, "the stuck session cannot have closed in time");
    assert!(
        took >= drain_timeout - Duration::from_millis(50),
        "returned before the drain timeout: {took:?}"
    );
    assert!(
        took < drain_timeout + Duration::from_secs(4),
        "shutdown took {took:?}"
    );

    let frames = fine.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_shutdown_bye(&frames[0], base);

    // The stuck client finally reads: a gapless prefix of the room, then EOF (the rest,
    // with the bye behind it, died with the stopped server).
    let (frames, _cut_line) = stuck.read_to_eof(PATIENCE * 3).await;
    let messages: Vec<&Value> = frames.iter().filter(|f| f["type"] != "ping").collect();
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["seq"], i as u64 + 1);
    }
    assert!(
        messages.len() < 192,
        "the stuck client cannot have had it all"
    );

    assert_no_new_sessions(addr).await;
}
