//! A flood of publishes through a slow HTTP hook must not grow the server's memory: the
//! sessions stop reading while their hook call waits, so the flood stays in the kernel's socket
//! buffers and then in the flooders' own `write` calls. The server is the real `heartwire`
//! binary in a process of its own, so that its resident memory (`VmRSS`) is measured without
//! this test process's other servers in it.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::http::{Backend, SECRET};
use crate::common::process::{serve_command, ChildGuard};
use crate::common::{Client, PATIENCE};

/// `heartwire serve` with a publish hook at `url`; returns it and its address.
fn start_server(url: &str) -> (ChildGuard, SocketAddr) {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--workers",
        "2",
        "--hook-publish-url",
        url,
        "--hook-timeout",
        "5s",
        "--hook-max-in-flight",
        "2",
    ];
    let env = [("HEARTWIRE_HOOK_SECRET", SECRET), ("RUST_LOG", "warn")];
    let mut server = ChildGuard::spawn(serve_command(&args, &env).stderr(Stdio::null()));
    let lines = server.stdout_lines();
    let addr = server.announced(&lines, "listening on ");
    (server, addr)
}

const FLOODERS: usize = 4;
/// What each flooder tries to write: far more than the kernel buffers of a connection.
const ATTEMPT: u64 = 64 << 20;
/// The bound on the server's growth while the flood lasts.
const MAX_GROWTH_KIB: u64 = 16 << 10;

#[actix_rt::test]
async fn a_flood_through_a_slow_hook_keeps_server_memory_bounded() {
    let backend = Backend::start();
    let (server, addr) = start_server(&format!("{}/publish", backend.url));

    // Warm up: every flooder's session and the hook path (client, connections) exist.
    let mut flooders = Vec::new();
    for i in 0..FLOODERS {
        flooders.push(warm_flooder(addr, i).await);
    }
    let warm = server.rss_kib();
    let hooked_before = backend.seen.bodies_of("publish").len();

    // Each publish waits 20 ms in the hook, two at a time over all sessions: the server can
    // take about 100 publishes a second, and the flooders offer millions.
    let pad = "x".repeat(200);
    let line = format!(
        "{}\n",
        json!({"type": "publish", "room": "flood", "data": {"text": "sleep 20", "pad": pad}})
    );
    let chunk: Arc<Vec<u8>> = Arc::new(line.repeat((256 << 10) / line.len()).into_bytes());
    let written = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for stream in flooders {
        let (mut read, mut write) = stream.into_split();
        let chunk = chunk.clone();
        let written = written.clone();
        tasks.push(actix_rt::spawn(async move {
            let mut sent = 0;
            while sent < ATTEMPT {
                if write.write_all(&chunk).await.is_err() {
                    return;
                }
                sent += chunk.len() as u64;
                written.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }));
        // Keep the reading side drained (the server sends pings only).
        tasks.push(actix_rt::spawn(async move {
            let mut sink = vec![0u8; 4096];
            while matches!(read.read(&mut sink).await, Ok(n) if n > 0) {}
        }));
    }

    let flood = Duration::from_secs(3);
    let started = Instant::now();
    let mut peak = warm;
    while started.elapsed() < flood {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(server.rss_kib());
    }
    let written = written.load(Ordering::Relaxed);
    let hooked = backend.seen.bodies_of("publish").len() - hooked_before;
    let frames_written = written / line.len() as u64;
    eprintln!(
        "flood: {written} bytes ({frames_written} publishes) written in {flood:?} of {} \
         attempted; {hooked} reached the hook; server RSS {warm} KiB warm, peak {peak} KiB",
        ATTEMPT * FLOODERS as u64
    );
    assert!(
        written < ATTEMPT * FLOODERS as u64 / 2,
        "the flooders were not slowed: {written} bytes written"
    );
    assert!(
        (hooked as u64) < frames_written / 10,
        "{hooked} hook calls for {frames_written} publishes written"
    );
    assert!(
        peak.saturating_sub(warm) < MAX_GROWTH_KIB,
        "server RSS grew from {warm} KiB to {peak} KiB while flooded"
    );

    for task in tasks {
        task.abort();
    }
    // The server is still itself: a new client is served.
    let (mut c, _) = Client::hello(addr, "after").await;
    c.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
}

/// A raw connection that said hello as `flooder{i}` and had three publishes acknowledged.
async fn warm_flooder(addr: SocketAddr, i: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut hello = format!(
        "{}\n",
        json!({"type": "hello", "user": format!("flooder{i}")})
    );
    for n in 0..3 {
        let publish = json!({"type": "publish", "room": "flood", "data": {"text": "warm"}, "id": n.to_string()});
        hello.push_str(&format!("{publish}\n"));
    }
    stream.write_all(hello.as_bytes()).await.expect("write");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let until = Instant::now() + PATIENCE;
    while String::from_utf8_lossy(&seen)
        .matches("\"type\":\"ack\"")
        .count()
        < 3
    {
        let left = until.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("acks in time")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    stream
}
