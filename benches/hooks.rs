//! What a publish hook costs, over real loopback TCP, in one run: no hook, a no-op hook in
//! the process (an async closure that accepts), and an HTTP hook to an actix-web backend on
//! loopback that answers `{"result":"accept"}` (the backend runs in this process, on its own
//! worker thread, so it competes for the same cores as it would beside a server).
//!
//! - `hooks/round trip/*`: one client publishes and waits for its `ack` before the next
//!   publish: the latency a hook adds to one publish.
//! - `hooks/pipelined x8/*`: eight clients each write 250 publishes at once and wait for all
//!   their acks: throughput with a full pipeline (each session still runs one hook at a time).
//!
//! After criterion, the variants take turns, ten times over (after a round to warm up), at a
//! pipelined batch and at 300 round trips; the bench prints each one's median throughput and
//! its round-trip p50/p90/p99. Under a varying load these interleaved figures compare the
//! variants more fairly than criterion's, which measures one variant after the other.
//!
//!     cargo bench --bench hooks

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use criterion::{Criterion, Throughput};
use heartwire::hooks::{HooksConfig, MessageDecision, PublishRequest};
use heartwire::{Config, ServerBuilder, ServerHandle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

const PIPELINE_CLIENTS: usize = 8;
const PIPELINE_DEPTH: usize = 250;

/// A protocol client subscribed to its own room.
struct Publisher {
    lines: tokio::io::Lines<BufReader<OwnedReadHalf>>,
    write: OwnedWriteHalf,
    room: String,
    next: u64,
}

impl Publisher {
    async fn connect(addr: SocketAddr, n: usize) -> Publisher {
        let (read, write) = TcpStream::connect(addr).await.unwrap().into_split();
        let room = format!("bench-{n}");
        let mut p = Publisher {
            lines: BufReader::new(read).lines(),
            write,
            room,
            next: 0,
        };
        let hello = format!(
            "{{\"type\":\"hello\",\"user\":\"p{n}\"}}\n{{\"type\":\"subscribe\",\"room\":\"{}\"}}\n",
            p.room
        );
        p.write.write_all(hello.as_bytes()).await.unwrap();
        p.until("\"subscribed\"", 1).await;
        p
    }

    /// Writes `n` publishes in one write.
    async fn publish(&mut self, n: usize) {
        let mut batch = String::new();
        for _ in 0..n {
            self.next += 1;
            batch.push_str(&format!(
                "{{\"type\":\"publish\",\"room\":\"{}\",\"data\":{{\"text\":\"hello\",\"n\":{}}},\"id\":\"{}\"}}\n",
                self.room, self.next, self.next
            ));
        }
        self.write.write_all(batch.as_bytes()).await.unwrap();
    }

    /// Reads until `n` lines containing `needle` arrived (pings are answered by nobody: the
    /// server's heartbeat is an hour).
    async fn until(&mut self, needle: &str, n: usize) {
        let mut seen = 0;
        while seen < n {
            let line = self.lines.next_line().await.unwrap().expect("open");
            if line.contains(needle) {
                seen += 1;
            }
        }
    }
}

/// An HTTP hook backend that accepts everything; returns its publish hook URL.
fn backend() -> String {
    let server = HttpServer::new(|| {
        App::new().route(
            "/hooks/publish",
            web::post().to(|| async {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(r#"{"result":"accept"}"#)
            }),
        )
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let addr = server.addrs()[0];
    actix_rt::spawn(server.run());
    format!("http://{addr}/hooks/publish")
}

fn config(hooks: HooksConfig) -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_secs(3600),
        workers: 1,
        history_size: 16,
        hooks,
        ..Config::default()
    }
}

/// The three servers, in one System.
fn servers() -> Vec<(&'static str, ServerHandle)> {
    let none = ServerBuilder::new(config(HooksConfig::default()))
        .start()
        .unwrap();
    let noop = ServerBuilder::new(config(HooksConfig::default()))
        .on_publish(|_: PublishRequest| async { MessageDecision::Accept })
        .start()
        .unwrap();
    let http = ServerBuilder::new(config(HooksConfig {
        publish_url: Some(backend()),
        ..HooksConfig::default()
    }))
    .start()
    .unwrap();
    vec![("no hook", none), ("no-op hook", noop), ("HTTP hook", http)]
}

fn main() {
    let system = actix_rt::System::new();
    let servers = system.block_on(async { servers() });
    let mut criterion = Criterion::default()
        .sample_size(20)
        .measurement_time(Duration::from_secs(4))
        .configure_from_args();

    let mut group = criterion.benchmark_group("hooks/round trip");
    for (name, server) in &servers {
        let mut p = system.block_on(Publisher::connect(server.local_addr(), 0));
        group.throughput(Throughput::Elements(1));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        p.publish(1).await;
                        p.until("\"ack\"", 1).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();

    let mut group = criterion.benchmark_group(format!("hooks/pipelined x{PIPELINE_CLIENTS}"));
    for (name, server) in &servers {
        let mut clients: Vec<Publisher> = system.block_on(async {
            let mut clients = Vec::new();
            for n in 0..PIPELINE_CLIENTS {
                clients.push(Publisher::connect(server.local_addr(), n + 1).await);
            }
            clients
        });
        group.throughput(Throughput::Elements(
            (PIPELINE_CLIENTS * PIPELINE_DEPTH) as u64,
        ));
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                system.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let rounds = clients.iter_mut().map(|c| async move {
                            c.publish(PIPELINE_DEPTH).await;
                            c.until("\"ack\"", PIPELINE_DEPTH).await;
                        });
                        futures_util::future::join_all(rounds).await;
                    }
                    start.elapsed()
                })
            })
        });
    }
    group.finish();
    criterion.final_summary();

    // Interleaved rounds, so that a change in the machine's load hits every variant alike.
    println!(
        "\npipelined x{PIPELINE_CLIENTS} throughput (median of 10 interleaved batches of {} publishes):",
        PIPELINE_CLIENTS * PIPELINE_DEPTH
    );
    let mut pools: Vec<Vec<Publisher>> = servers
        .iter()
        .map(|(_, server)| {
            system.block_on(async {
                let mut clients = Vec::new();
                for n in 0..PIPELINE_CLIENTS {
                    clients.push(Publisher::connect(server.local_addr(), 200 + n).await);
                }
                clients
            })
        })
        .collect();
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); servers.len()];
    for round in 0..11 {
        for (clients, rates) in pools.iter_mut().zip(&mut rates) {
            let elapsed = system.block_on(async {
                let start = Instant::now();
                let batches = clients.iter_mut().map(|c| async move {
                    c.publish(PIPELINE_DEPTH).await;
                    c.until("\"ack\"", PIPELINE_DEPTH).await;
                });
                futures_util::future::join_all(batches).await;
                start.elapsed()
            });
            if round > 0 {
                rates.push((PIPELINE_CLIENTS * PIPELINE_DEPTH) as f64 / elapsed.as_secs_f64());
            }
        }
    }
    for ((name, _), mut rates) in servers.iter().zip(rates) {
        rates.sort_by(f64::total_cmp);
        println!(
            "  {name:<11} median {:>8.0} publishes/s  (min {:.0}, max {:.0})",
            rates[rates.len() / 2],
            rates[0],
            rates[rates.len() - 1]
        );
    }

    println!("\nround trip percentiles (10 interleaved rounds of 300 publishes per variant):");
    let mut publishers: Vec<Publisher> = servers
        .iter()
        .map(|(_, server)| system.block_on(Publisher::connect(server.local_addr(), 100)))
        .collect();
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); servers.len()];
    for round in 0..11 {
        for (p, samples) in publishers.iter_mut().zip(&mut samples) {
            system.block_on(async {
                for _ in 0..300 {
                    let start = Instant::now();
                    p.publish(1).await;
                    p.until("\"ack\"", 1).await;
                    // Round 0 warms up.
                    if round > 0 {
                        samples.push(start.elapsed());
                    }
                }
            });
        }
    }
    for ((name, _), mut samples) in servers.iter().zip(samples) {
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
        println!(
            "  {name:<11} p50 {:>7.1} µs  p90 {:>7.1} µs  p99 {:>7.1} µs",
            at(0.5).as_secs_f64() * 1e6,
            at(0.9).as_secs_f64() * 1e6,
            at(0.99).as_secs_f64() * 1e6
        );
    }
}
