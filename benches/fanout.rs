//! Registry fan-out benchmarks.
//!
//! - `outbox push`: the inner loop of `Registry::fan_out`: one shared `Bytes` pushed into N
//!   outboxes (reference-count bump, lock, queue).
//! - `registry publish`: the whole in-process path for one `publish` to a room of N
//!   subscribed sessions: registry actor, broker sequencing and encoding, N outbox pushes, N
//!   writer tasks writing into in-memory pipes, and the subscribers reading. No sockets (the
//!   server's listener is bound but unused), so this is the server's own cost per delivery
//!   without system calls.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use heartwire::testing::{start_session, Outbox};
use heartwire::{Config, ServerBuilder, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

fn outbox_push(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    let frame = Bytes::from_static(
        b"{\"type\":\"message\",\"room\":\"lobby\",\"seq\":1,\"from\":\"u\",\"data\":{\"t\":1}}\n",
    );
    for n in [1_000usize, 10_000] {
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("outbox push x{n}"), |b| {
            b.iter_batched(
                || (0..n).map(|_| Outbox::new(1 << 20)).collect::<Vec<_>>(),
                |outboxes| {
                    for o in &outboxes {
                        o.push(frame.clone());
                    }
                    outboxes
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// A room of `n` subscribed sessions over in-memory pipes, on the current actix arbiter, of
/// a server whose own listener stays unused.
async fn room(n: usize) -> (ServerHandle, Arc<AtomicU64>) {
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_secs(3600),
        history_size: 16,
        ..Config::default()
    };
    let server_handle = ServerBuilder::new(config).start().unwrap();
    let received = Arc::new(AtomicU64::new(0));
    let peer: SocketAddr = "127.0.0.1:1".parse().unwrap();
    for i in 0..n {
        let (client, server) = tokio::io::duplex(64 * 1024);
        start_session(&server_handle, server, peer);
        let (read, mut write) = tokio::io::split(client);
        let hello = format!(
            "{{\"type\":\"hello\",\"user\":\"u{i}\"}}\n{{\"type\":\"subscribe\",\"room\":\"lobby\"}}\n"
        );
        write.write_all(hello.as_bytes()).await.unwrap();
        let mut lines = BufReader::new(read).lines();
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains("\"subscribed\"") {
                break;
            }
        }
        let received = received.clone();
        actix_rt::spawn(async move {
            let _keep = write;
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("{\"type\":\"message\"") {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    (server_handle, received)
}

#[derive(serde::Serialize)]
struct Data {
    t: u32,
}

fn registry_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    group.sample_size(10);
    for n in [100usize, 1_000, 10_000] {
        let system = actix_rt::System::new();
        let (server, received) = system.block_on(room(n));
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(format!("registry publish to {n}"), |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let want = received.load(Ordering::Relaxed) + iters * n as u64;
                    let start = Instant::now();
                    for _ in 0..iters {
                        server.publish("lobby", &Data { t: 1 }, None).await.unwrap();
                    }
                    while received.load(Ordering::Relaxed) < want {
                        tokio::task::yield_now().await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, outbox_push, registry_publish);
criterion_main!(benches);
