//! The outbound write path over real loopback sockets: direct writes against writer tasks.
//!
//! - `write/ping … xN`: one worker pushes a `ping` into each of N idle connections, as the
//!   heartbeat does. `direct` is plain TCP today (`try_write` from the pushing session, no
//!   task); `writer task` is the path TLS and WebSocket take (push, wake the connection's
//!   writer task, which writes).
//! - `write/fan-out … xN`: a publisher thread (the registry's case) pushes one shared
//!   `message` frame into N connections spread over two worker arbiters. `per-worker batch`
//!   hands each worker its outboxes in one cross-thread hand-off; `writer task` wakes N
//!   writer tasks across threads, one at a time.
//!
//! Each iteration ends when every frame is in its socket (the outboxes are empty); the
//! clients' receive buffers are drained between iterations, outside the timing. The time
//! reported is the **CPU time of the process** (user + system, all threads, `getrusage`)
//! spent in the iteration, not wall time: it is what a frame costs the server, kernel work for
//! loopback's receive side included, and it does not move with what else runs on the machine.
//! Wall time would favour writer tasks, which start writing while the publisher is still
//! pushing (on other cores), over the batch, which starts when the publisher's turn ends.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, Criterion, Throughput};
use heartwire::testing::{direct_outboxes, encode_ping, task_outboxes, Outbox};

const BUDGET: usize = 1 << 20;

/// `n` connected loopback pairs: (the server ends, the client ends, non-blocking).
fn pairs(n: usize) -> (Vec<TcpStream>, Vec<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (mut servers, mut clients) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let client = TcpStream::connect(addr).unwrap();
        let (server, _) = listener.accept().unwrap();
        client.set_nonblocking(true).unwrap();
        server.set_nonblocking(true).unwrap();
        server.set_nodelay(true).unwrap();
        servers.push(server);
        clients.push(client);
    }
    (servers, clients)
}

/// Reads whatever the clients received, so that socket buffers never fill.
fn drain(clients: &mut [TcpStream]) {
    let mut buf = [0u8; 64 * 1024];
    for client in clients {
        while matches!(client.read(&mut buf), Ok(n) if n > 0) {}
    }
}

/// Waits on the current arbiter until every outbox is empty (the last one is checked first:
/// frames are written in push order).
async fn written(outboxes: &[Arc<Outbox>]) {
    loop {
        if outboxes.last().is_none_or(|o| o.queued_bytes() == 0)
            && outboxes.iter().all(|o| o.queued_bytes() == 0)
        {
            return;
        }
        tokio::task::yield_now().await;
    }
}

type Make = fn(Vec<tokio::net::TcpStream>, usize) -> Vec<Arc<Outbox>>;

fn registered(streams: Vec<TcpStream>, make: Make) -> Vec<Arc<Outbox>> {
    let streams = streams
        .into_iter()
        .map(|s| tokio::net::TcpStream::from_std(s).unwrap())
        .collect();
    make(streams, BUDGET)
}

fn ping(c: &mut Criterion) {
    let mut group = c.benchmark_group("write");
    let n = 1_000;
    group.throughput(Throughput::Elements(n as u64));
    for (name, make) in [
        ("direct", direct_outboxes as Make),
        ("writer task", task_outboxes),
    ] {
        let system = actix_rt::System::new();
        let (servers, mut clients) = pairs(n);
        let outboxes = system.block_on(async { registered(servers, make) });
        let mut seq = 0;
        group.bench_function(format!("ping {name} x{n}"), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    seq += 1;
                    let ping = encode_ping(seq);
                    total += system.block_on(async {
                        let start = cpu_time();
                        for o in &outboxes {
                            o.push(ping.clone());
                        }
                        written(&outboxes).await;
                        cpu_time().saturating_sub(start)
                    });
                    drain(&mut clients);
                }
                total
            })
        });
        drop(outboxes);
        drop(system);
    }
    group.finish();
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("write");
    group.sample_size(20);
    let frame = Bytes::from_static(
        b"{\"type\":\"message\",\"room\":\"lobby\",\"seq\":1,\"from\":\"u\",\"data\":{\"t\":1}}\n",
    );
    for n in [1_000usize, 8_000] {
        group.throughput(Throughput::Elements(n as u64));
        for (name, make) in [
            ("per-worker batch", direct_outboxes as Make),
            ("writer task", task_outboxes),
        ] {
            let system = actix_rt::System::new();
            let (servers, mut clients) = pairs(n);
            // Two workers, each with half the connections, registered on its own reactor.
            let workers: Vec<_> = (0..2).map(|_| actix_rt::Arbiter::new()).collect();
            let mut halves = servers.into_iter();
            let per_worker: Vec<Vec<Arc<Outbox>>> = workers
                .iter()
                .map(|w| {
                    let half: Vec<_> = halves.by_ref().take(n / 2).collect();
                    let (tx, rx) = std::sync::mpsc::channel();
                    w.spawn(async move {
                        let _ = tx.send(registered(half, make));
                    });
                    rx.recv().unwrap()
                })
                .collect();
            let all: Vec<Arc<Outbox>> = per_worker.iter().flatten().cloned().collect();
            group.bench_function(format!("fan-out {name} x{n}"), |b| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        total += system.block_on(async {
                            let start = cpu_time();
                            for o in &all {
                                o.push(frame.clone());
                            }
                            // Let this thread's turn end (the hand-offs go), then wait for
                            // each worker to have written its share.
                            let done: Vec<_> = workers
                                .iter()
                                .zip(&per_worker)
                                .map(|(w, mine)| {
                                    let (tx, rx) = tokio::sync::oneshot::channel();
                                    let mine = mine.clone();
                                    w.spawn(async move {
                                        written(&mine).await;
                                        let _ = tx.send(());
                                    });
                                    rx
                                })
                                .collect();
                            for rx in done {
                                rx.await.unwrap();
                            }
                            cpu_time().saturating_sub(start)
                        });
                        drain(&mut clients);
                    }
                    total
                })
            });
            drop(all);
            for w in workers {
                w.stop();
                w.join().ok();
            }
        }
    }
    group.finish();
}

/// User plus system CPU time of this process so far, all threads.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes only the struct passed to it.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
    Duration::from_micros(micros(usage.ru_utime) + micros(usage.ru_stime))
}

/// Raises the open-file limit to the hard limit: the fan-out holds 16k sockets.
fn raise_file_limit() {
    // SAFETY: getrlimit/setrlimit write and read only the struct passed to them.
    unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

criterion_group!(benches, ping, fan_out);

fn main() {
    raise_file_limit();
    benches();
    Criterion::default().configure_from_args().final_summary();
}
