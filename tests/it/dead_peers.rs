//! Dead means gone: a peer the server has given up on leaves its rooms, presence and the user
//! index at that moment, and its socket is closed within the heartwire bound whatever is still
//! queued for it and whatever the kernel's own timeouts say.
//!
//! The dead peers are real: clients in a network namespace joined to this one by a veth pair,
//! whose neighbour (ARP) entries are then switched to an unused MAC address, so every frame
//! between them is dropped without a word (these machines have no `nft`, `iptables` or
//! `netem`). Making namespaces needs root; without it the test says so and passes, unless
//! `HEARTWIRE_REQUIRE_NETNS` is set (CI sets it), in which case it fails.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use heartwire::{Config, LimitsConfig, ServerHandle, TcpConfig};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{config, start, RawClient, PATIENCE};

/// A network namespace with a veth pair into it; removed when dropped.
struct NetPair {
    ns: String,
    outside: String,
    server_ip: Ipv4Addr,
    client_ip: Ipv4Addr,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPair {
    fn new() -> Result<NetPair, String> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{}x{n}", std::process::id() % 100_000);
        let pair = NetPair {
            ns: format!("hw{tag}"),
            outside: format!("hwo{tag}"),
            server_ip: Ipv4Addr::new(10, 213, n as u8, 1),
            client_ip: Ipv4Addr::new(10, 213, n as u8, 2),
        };
        let inside = format!("hwi{tag}");
        let server_cidr = format!("{}/24", pair.server_ip);
        let client_cidr = format!("{}/24", pair.client_ip);
        ip(&["netns", "add", &pair.ns])?;
        ip(&[
            "link",
            "add",
            &pair.outside,
            "type",
            "veth",
            "peer",
            "name",
            &inside,
        ])?;
        ip(&["link", "set", &inside, "netns", &pair.ns])?;
        ip(&["addr", "add", &server_cidr, "dev", &pair.outside])?;
        ip(&["link", "set", &pair.outside, "up"])?;
        ip(&[
            "netns",
            "exec",
            &pair.ns,
            "ip",
            "addr",
            "add",
            &client_cidr,
            "dev",
            &inside,
        ])?;
        ip(&[
            "netns", "exec", &pair.ns, "ip", "link", "set", &inside, "up",
        ])?;
        ip(&["netns", "exec", &pair.ns, "ip", "link", "set", "lo", "up"])?;
        Ok(pair)
    }

    /// Connects `n` sockets from inside the namespace (a thread that entered it: a socket
    /// belongs to the namespace it was made in).
    fn connect(&self, n: usize, to: SocketAddr) -> Vec<std::net::TcpStream> {
        let path = format!("/var/run/netns/{}", self.ns);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            (0..n)
                .map(|_| {
                    let s = std::net::TcpStream::connect(to).expect("connect from the namespace");
                    s.set_nonblocking(true).unwrap();
                    s
                })
                .collect()
        })
        .join()
        .expect("connecting thread")
    }

    /// From now on every frame between the two sides goes to an address nobody has.
    fn drop_everything(&self) {
        let inside = self.outside.replacen("hwo", "hwi", 1);
        ip(&[
            "neigh",
            "replace",
            &self.client_ip.to_string(),
            "lladdr",
            "02:00:00:00:be:01",
            "dev",
            &self.outside,
            "nud",
            "permanent",
        ])
        .unwrap();
        ip(&[
            "netns",
            "exec",
            &self.ns,
            "ip",
            "neigh",
            "replace",
            &self.server_ip.to_string(),
            "lladdr",
            "02:00:00:00:be:02",
            "dev",
            &inside,
            "nud",
            "permanent",
        ])
        .unwrap();
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.outside]);
        let _ = ip(&["netns", "del", &self.ns]);
    }
}

/// A namespace pair, or `None` (with the reason printed) where none can be made and CI does
/// not require it.
fn net_pair() -> Option<NetPair> {
    match NetPair::new() {
        Ok(pair) => Some(pair),
        Err(why) if std::env::var_os("HEARTWIRE_REQUIRE_NETNS").is_none() => {
            eprintln!("dead_peers: no network namespace ({why}); not run here");
            None
        }
        Err(why) => panic!("HEARTWIRE_REQUIRE_NETNS is set but: {why}"),
    }
}

/// A client: says hello, subscribes, answers pings until the path dies, and reports every
/// `leave` event it sees.
async fn peer(
    stream: std::net::TcpStream,
    user: String,
    room: &'static str,
    leaves: Option<tokio::sync::mpsc::UnboundedSender<String>>,
) {
    let stream = tokio::net::TcpStream::from_std(stream).unwrap();
    let (read, mut write) = stream.into_split();
    let hello = json!({"type": "hello", "user": user});
    let subscribe = json!({"type": "subscribe", "room": room});
    write
        .write_all(format!("{hello}\n{subscribe}\n").as_bytes())
        .await
        .unwrap();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(frame) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if frame["type"] == "ping" {
            let pong = json!({"type": "pong", "seq": frame["seq"]});
            if write
                .write_all(format!("{pong}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        } else if let (Some(leaves), "leave") = (&leaves, frame["type"].as_str().unwrap_or("")) {
            let _ = leaves.send(frame["user"].as_str().unwrap_or("").to_owned());
        }
    }
}

async fn members(server: &ServerHandle, room: &str) -> usize {
    server
        .room(room)
        .await
        .unwrap()
        .map_or(0, |r| r.members.len())
}

/// 100 subscribers behind a path that starts dropping everything; ~600 KiB is published to
/// their room after that. They leave the room (with `leave` events) when the heartbeat gives
/// up on them, and their sockets are closed within `(max_missed + 1) × interval` of their
/// last frame, although data is queued for them and `TCP_USER_TIMEOUT` is 30 s.
#[actix_rt::test]
async fn dead_peers_are_gone_within_the_heartbeat_bound() {
    let Some(pair) = net_pair() else {
        return;
    };
    const PEERS: usize = 100;
    let interval = Duration::from_millis(500);
    let server = start(Config {
        listen: SocketAddr::from((pair.server_ip, 0)),
        heartbeat_interval: interval,
        max_missed: 2,
        close_timeout: Duration::from_secs(10),
        presence_events: vec!["*".into()],
        tcp: TcpConfig {
            user_timeout: Some(Duration::from_secs(30)),
            ..TcpConfig::default()
        },
        limits: LimitsConfig::default(),
        ..config()
    });
    let addr = server.local_addr();
    // The watcher stays on this side of the path, answering pings.
    let (leaves_tx, mut leaves) = tokio::sync::mpsc::unbounded_channel();
    let watcher = std::net::TcpStream::connect(addr).unwrap();
    watcher.set_nonblocking(true).unwrap();
    actix_rt::spawn(peer(watcher, "watcher".into(), "doomed", Some(leaves_tx)));
    for (i, stream) in pair.connect(PEERS, addr).into_iter().enumerate() {
        actix_rt::spawn(peer(stream, format!("peer{i}"), "doomed", None));
    }
    let until = Instant::now() + PATIENCE;
    while members(&server, "doomed").await < PEERS + 1 {
        assert!(Instant::now() < until, "peers did not all subscribe");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let every peer answer a ping, then cut the path.
    tokio::time::sleep(interval * 2).await;
    pair.drop_everything();
    let cut = Instant::now();
    tokio::time::sleep(interval.mul_f64(1.2)).await;
    let chunk = "x".repeat(10 * 1024);
    for n in 0..60 {
        server
            .publish("doomed", &json!({"n": n, "pad": chunk}), None)
            .await
            .unwrap();
    }
    // Their last frame came at most one interval before the cut: the bound, measured from
    // the cut, is (max_missed + 1) × interval, plus scheduling slack on a loaded machine.
    let bound = interval * 3 + Duration::from_millis(700);
    let until = cut + bound;
    loop {
        let left = members(&server, "doomed").await;
        let open = server.open_connections();
        if left == 1 && open == 1 {
            break;
        }
        assert!(
            Instant::now() < until,
            "after {:?}: {left} members, {open} connections open",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gone = cut.elapsed();
    eprintln!("100 dead peers gone {gone:?} after the cut (bound {bound:?})");
    // The watcher was told each of them left.
    let mut left = std::collections::HashSet::new();
    while left.len() < PEERS {
        let user = tokio::time::timeout(PATIENCE, leaves.recv())
            .await
            .expect("a leave event")
            .expect("the watcher is connected");
        left.insert(user);
    }
}

/// A subscriber that stops reading leaves the room the moment it is cut off as a slow
/// consumer, not after its `close_timeout`.
#[actix_rt::test]
async fn a_slow_consumer_leaves_its_rooms_at_once() {
    let server = start(Config {
        outbound_budget: 64 * 1024,
        close_timeout: Duration::from_secs(30),
        max_frame: 8192,
        ..config()
    });
    let addr = server.local_addr();
    // Kept open (and never read) to the end of the test.
    let _slow = RawClient::slow_subscriber(addr, "slow", "flood").await;
    // A subscriber that reads everything, on this side.
    let fast = std::net::TcpStream::connect(addr).unwrap();
    fast.set_nonblocking(true).unwrap();
    actix_rt::spawn(peer(fast, "fast".into(), "flood", None));
    let until = Instant::now() + PATIENCE;
    while members(&server, "flood").await < 2 {
        assert!(Instant::now() < until, "fast did not subscribe");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pad = "y".repeat(4000);
    let started = Instant::now();
    let mut published = 0u32;
    loop {
        let users = server.presence("flood").await.unwrap();
        if !users.iter().any(|u| u.as_str() == "slow") {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "never cut off");
        server
            .publish("flood", &json!({"pad": pad}), None)
            .await
            .unwrap();
        published += 1;
        if published.is_multiple_of(8) {
            // Let the reading neighbour keep up on a loaded machine.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Out of the room long before its flush could end: it never reads, so that flush would
    // last the whole 30 s `close_timeout`.
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
