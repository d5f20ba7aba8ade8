//! Robustness: slow consumers are cut off without hurting anyone, a panicking session leaves
//! nothing behind, the sweep removes sessions that died without unregistering, and many
//! connections come and go without leaks.

use std::time::{Duration, Instant};

use crate::common::{config, eventually_stats, start, stats, Client, RawClient, PATIENCE};
use heartwire::testing::{register_dead_session, sweep_now};
use heartwire::{AppFrame, Config, ServerBuilder, ServerHandle, Session};
use serde_json::{json, Value};

/// A subscriber that never reads is closed as a slow consumer and leaves the registry, while a
/// well-behaved subscriber of the same room gets every message in order and the publisher is
/// never held up.
#[actix_rt::test]
async fn slow_consumer_is_cut_off_and_nobody_else_suffers() {
    let server = start(Config {
        outbound_budget: 64 * 1024,
        max_frame: 4096,
        close_timeout: Duration::from_millis(300),
        // No heartbeat close during the test: the slow client must go for being slow.
        heartbeat_interval: Duration::from_secs(120),
        ..config()
    });
    let addr = server.local_addr();

    // The slow client: a tiny receive buffer, so the server's writes block soon.
    let mut slow = RawClient::slow_subscriber(addr, "slow", "flood").await;

    let (mut good, _) = Client::hello(addr, "good").await;
    good.send(json!({"type": "subscribe", "room": "flood"}))
        .await;
    good.recv_type("subscribed").await;

    // The publisher is not subscribed and publishes without `id`: nothing comes back to it,
    // so it never builds a backlog of its own.
    let (mut publisher, _) = Client::hello(addr, "pub").await;
    assert_eq!(stats(&server).await.sessions, 3);

    const BATCH: u64 = 32; // 32 × ~1 KiB: half the budget, so `good` is never at risk
    const MAX_MESSAGES: u64 = 64 * 1024; // 64 MiB: far beyond any kernel buffering
    let pad = "x".repeat(1000);
    let started = Instant::now();
    let mut published = 0u64;
    let mut received = 0u64;
    let mut slow_gone: Option<(u64, Duration)> = None;
    loop {
        let mut lines = String::new();
        for _ in 0..BATCH {
            published += 1;
            let frame = json!({"type": "publish", "room": "flood",
                "data": {"n": published, "pad": pad}});
            lines.push_str(&format!("{frame}\n"));
        }
        // If the server stopped reading the publisher this would block, and `good` would
        // time out below.
        publisher.send_raw(lines.as_bytes()).await;
        while received < published {
            let m = good.recv_type("message").await;
            received += 1;
            assert_eq!(m["seq"], received, "gapless, in order: {m}");
            assert_eq!(m["data"]["n"], received);
            assert_eq!(m["room"], "flood");
            assert_eq!(m["from"], "pub");
        }
        if slow_gone.is_none() && stats(&server).await.sessions == 2 {
            slow_gone = Some((published, started.elapsed()));
        }
        match slow_gone {
            // Keep going a little after the cut: the room must go on working.
            Some((at, _)) if published >= at + 4 * BATCH => break,
            _ => {}
        }
        assert!(
            published < MAX_MESSAGES,
            "slow consumer still registered after {published} messages"
        );
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slow consumer still registered after {:?} ({published} messages)",
            started.elapsed()
        );
    }
    let (cut_at, cut_after) = slow_gone.unwrap();
    eprintln!("slow consumer removed after {cut_at} messages, {cut_after:?}");

    // The publisher was never blocked: it is still answered at once.
    publisher.send(json!({"type": "ping", "seq": 5})).await;
    assert_eq!(
        publisher.recv_non_ping().await,
        json!({"type": "pong", "seq": 5})
    );
    publisher
        .send(json!({"type": "publish", "room": "flood", "data": "last", "id": "last"}))
        .await;
    let ack = publisher.recv_type("ack").await;
    assert_eq!(ack["seq"], published + 1);
    let last = good.recv_type("message").await;
    assert_eq!(
        (last["seq"].as_u64(), last["id"].as_str()),
        (Some(published + 1), Some("last"))
    );

    let s = stats(&server).await;
    assert_eq!((s.sessions, s.users, s.rooms), (2, 2, 1), "{s:?}");

    // What the slow client finally gets: a prefix of the room, then `bye` or just EOF (the
    // flush of a blocked socket is cut after `close_timeout`, possibly mid-line).
    let (frames, tail) = slow.read_to_eof(PATIENCE).await;
    let frames: Vec<Value> = frames.into_iter().filter(|f| f["type"] != "ping").collect();
    let (last, messages) = match frames.split_last() {
        Some((bye, rest)) if bye["type"] == "bye" => {
            assert_eq!(*bye, json!({"type": "bye", "reason": "slow_consumer"}));
            assert!(tail.is_empty(), "nothing after bye");
            (Some(bye), rest)
        }
        _ => (None, frames.as_slice()),
    };
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["seq"], i as u64 + 1, "a gapless prefix: {m}");
    }
    assert!(
        (messages.len() as u64) < published,
        "the slow client cannot have received everything"
    );
    eprintln!(
        "slow client read {} messages, bye: {}, {} bytes of a cut line",
        messages.len(),
        last.is_some(),
        tail.len()
    );
}

fn panicking_server(config: Config) -> ServerHandle {
    ServerBuilder::new(config)
        .frame_handler(
            "boom",
            |_s: &mut Session, _ctx: &mut actix::Context<Session>, _f: AppFrame| panic!("boom"),
        )
        .start()
        .expect("server starts")
}

async fn subscribe(c: &mut Client, room: &str) {
    c.send(json!({"type": "subscribe", "room": room})).await;
    let s = c.recv_type("subscribed").await;
    assert_eq!(s["room"], room);
}

/// Publishes with an id from a subscriber of `room`; returns the seq after checking that the
/// message and the ack both arrived.
async fn publish_and_check(c: &mut Client, room: &str, id: &str) -> u64 {
    c.send(json!({"type": "publish", "room": room, "data": id, "id": id}))
        .await;
    let (mut message, mut ack) = (None, None);
    for _ in 0..2 {
        let f = c.recv_non_ping().await;
        match f["type"].as_str() {
            Some("message") => message = Some(f),
            Some("ack") => ack = Some(f),
            _ => panic!("unexpected {f}"),
        }
    }
    let (message, ack) = (message.unwrap(), ack.unwrap());
    assert_eq!(message["id"], id);
    assert_eq!(message["data"], id);
    assert_eq!(ack["id"], id);
    assert_eq!(ack["seq"], message["seq"]);
    ack["seq"].as_u64().unwrap()
}

/// A's handler panics: A's connection closes, B (possibly on another worker) carries on, and
/// after a sweep A is gone with its room memberships.
///
/// Observed with actix 0.13: the unwinding panic drops the session's context future, whose
/// `Drop` polls it once more in the stopping state, so `stopped` runs and the session
/// unregisters itself before any sweep. The test does not depend on that either way.
#[actix_rt::test]
async fn panicking_session_is_gone_and_harms_nobody() {
    let server = panicking_server(config());
    let addr = server.local_addr();
    let (mut a, _) = Client::hello(addr, "alice").await;
    let (mut b, _) = Client::hello(addr, "bob").await;
    subscribe(&mut a, "r").await;
    subscribe(&mut a, "alice-only").await;
    subscribe(&mut b, "r").await;
    assert_eq!(stats(&server).await.rooms, 2);

    a.send(json!({"type": "boom"})).await;
    let after_boom = a.until_closed().await;
    assert!(
        after_boom.is_empty(),
        "nothing after the panic: {after_boom:?}"
    );

    // B is unaffected.
    b.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(b.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    assert_eq!(publish_and_check(&mut b, "r", "b1").await, 1);

    sweep_now(&server).await;
    eventually_stats(&server, "A gone", |s| {
        s.sessions == 1 && s.identified == 1 && s.users == 1 && s.rooms == 1
    })
    .await;

    // The room still has B and keeps its sequence.
    assert_eq!(publish_and_check(&mut b, "r", "b2").await, 2);
    // The worker arbiters survived: new connections work (with two workers and round-robin,
    // this one lands on A's worker).
    let (mut c, _) = Client::hello(addr, "carol").await;
    subscribe(&mut c, "r").await;
    assert_eq!(publish_and_check(&mut c, "r", "c1").await, 3);
    assert_eq!(b.recv_type("message").await["id"], "c1");
    assert_eq!(stats(&server).await.sessions, 2);
}

/// Far above any id a server hands out in a test.
const GHOST: u64 = 1 << 40;

/// `SweepNow` removes a registered session whose actor is dead, with its user and its rooms,
/// and leaves live sessions alone.
#[actix_rt::test]
async fn sweep_now_removes_a_dead_session() {
    let server = start(config());
    let (mut b, _) = Client::hello(server.local_addr(), "bob").await;
    subscribe(&mut b, "r").await;
    register_dead_session(&server, GHOST, "ghost", &["r", "ghost-only"]).await;
    let s = stats(&server).await;
    assert_eq!((s.sessions, s.users, s.rooms), (2, 2, 2), "{s:?}");
    // A publish into a room with a dead member reaches the live one.
    assert_eq!(publish_and_check(&mut b, "r", "b1").await, 1);

    sweep_now(&server).await;
    let s = stats(&server).await;
    assert_eq!(
        (s.sessions, s.identified, s.users, s.rooms),
        (1, 1, 1, 1),
        "{s:?}"
    );
    assert_eq!(publish_and_check(&mut b, "r", "b2").await, 2);
}

/// The periodic sweep (a short `sweep_interval`) removes a dead session without `SweepNow`.
#[actix_rt::test]
async fn periodic_sweep_removes_a_dead_session() {
    let server = start(Config {
        sweep_interval: Duration::from_millis(100),
        ..config()
    });
    let (mut b, _) = Client::hello(server.local_addr(), "bob").await;
    subscribe(&mut b, "r").await;
    register_dead_session(&server, GHOST, "ghost", &["r", "ghost-only"]).await;
    eventually_stats(&server, "the ghost swept", |s| {
        s.sessions == 1 && s.identified == 1 && s.users == 1 && s.rooms == 1
    })
    .await;
    assert_eq!(publish_and_check(&mut b, "r", "b1").await, 1);
}

/// 200 clients connect and say hello at once, then all leave (half with `bye`, half by just
/// closing the socket): the registry ends empty.
#[actix_rt::test]
async fn many_connections_come_and_go() {
    const N: usize = 200;
    let server = start(config());
    let addr = server.local_addr();
    let handles: Vec<_> = (0..N)
        .map(|i| actix_rt::spawn(async move { Client::hello(addr, &format!("user{i}")).await }))
        .collect();
    let mut clients = Vec::with_capacity(N);
    for h in handles {
        let (c, welcome) = h.await.expect("client task");
        assert_eq!(welcome["type"], "welcome");
        clients.push(c);
    }
    let s = stats(&server).await;
    assert_eq!((s.sessions, s.identified, s.users), (N, N, N), "{s:?}");

    for (i, mut c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.send(json!({"type": "bye"})).await;
        }
        drop(c);
    }
    eventually_stats(&server, "every session gone", |s| {
        s.sessions == 0 && s.users == 0 && s.identified == 0
    })
    .await;
}
