//! 10,000 connect/close cycles leave nothing behind. In a file of its own so that no other
//! test shares the process while its memory is measured.
#[path = "it/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use common::{config, eventually, start, Client};
use heartwire::ServerHandle;
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// This process's resident memory; the test cannot judge anything without it.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .filter(|kib| *kib > 0)
        .expect("VmRSS in /proc/self/status")
}

/// `cycles` connect/close cycles from 20 loops, a third of them after `hello`; returns when
/// the registry holds no session again.
async fn churn(server: &ServerHandle, cycles: usize) {
    let addr: SocketAddr = server.local_addr();
    let loops: Vec<_> = (0..20)
        .map(|w| {
            tokio::spawn(async move {
                for i in 0..cycles / 20 {
                    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                    if i % 3 == 0 {
                        let hello = format!("{{\"type\":\"hello\",\"user\":\"u{w}-{i}\"}}\n");
                        let _ = stream.write_all(hello.as_bytes()).await;
                    }
                    drop(stream);
                }
            })
        })
        .collect();
    for l in loops {
        l.await.unwrap();
    }
    eventually("every session gone", || {
        let server = server.clone();
        async move { server.overview().await.unwrap().sessions == 0 }
    })
    .await;
}

/// Memory after a first round of 10,000 cycles includes the allocator's slack; a second round
/// must not add to it. A leak of a session (several KiB each) would add tens of MiB.
#[actix_rt::test]
async fn ten_thousand_connect_close_cycles_leak_nothing() {
    let server = start(config());
    churn(&server, 2_000).await;
    let warm = rss_kib();
    churn(&server, 10_000).await;
    let first = rss_kib();
    churn(&server, 10_000).await;
    let second = rss_kib();
    eprintln!("RSS: {warm} KiB warm, {first} KiB after 10k cycles, {second} KiB after 20k");
    assert!(
        first < warm + 32 * 1024,
        "RSS not back near its start: {warm} KiB warm, {first} KiB after 10k cycles"
    );
    assert!(
        second < first + 16 * 1024,
        "RSS kept growing: {warm} KiB warm, {first} KiB after 10k cycles, {second} KiB after 20k"
    );
    let (mut c, _) = Client::hello(server.local_addr(), "still-fine").await;
    c.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(c.recv_non_ping().await["type"], "pong");
}
