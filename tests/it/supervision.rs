//! A panic in a registry handler is survived: a fresh registry takes over within a second,
//! sessions re-register by themselves and keep receiving without a gap or a reconnect; a
//! registry that keeps crashing stops the server instead of spinning; a panicking session
//! ends that connection alone and is counted.

use std::time::{Duration, Instant};

use actix::prelude::*;
use heartwire::{AppFrame, Config, Registry, ServerBuilder, ServerHandle, Session};
use serde_json::json;

use crate::common::{config, start, subscriber, Client, PATIENCE};

/// An application message whose handler has a bug.
#[derive(Message)]
#[rtype(result = "()")]
struct Boom;

impl Handler<Boom> for Registry {
    type Result = ();

    fn handle(&mut self, _: Boom, _: &mut Context<Self>) {
        panic!("a bug in an application's registry handler");
    }
}

/// Crashes the registry running now and waits until a fresh one answers.
async fn crash_registry(server: &ServerHandle) -> Duration {
    let crashed = Instant::now();
    let old = server.registry();
    old.do_send(Boom);
    loop {
        let fresh = server.registry();
        if !old.connected() && fresh.connected() && server.overview().await.is_ok() {
            return crashed.elapsed();
        }
        assert!(crashed.elapsed() < PATIENCE, "no registry came back");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[actix_rt::test]
async fn a_registry_panic_is_survived_without_a_gap_or_a_reconnect() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut alice, _) = subscriber(addr, "alice", "r").await;
    let (mut bob, _) = subscriber(addr, "bob", "r").await;
    alice
        .send(json!({"type": "publish", "room": "r", "data": 1, "id": "a1"}))
        .await;
    assert_eq!(bob.recv_type("message").await["seq"], 1);
    // Alice's request is answered before the crash (for one the crash catches, see
    // `a_publish_caught_by_a_crash_is_answered_with_its_id`).
    assert_eq!(alice.recv_type("message").await["seq"], 1);
    assert_eq!(alice.recv_type("ack").await["id"], "a1");

    let took = crash_registry(&server).await;
    assert!(
        took < Duration::from_secs(1),
        "a fresh registry after {took:?}"
    );
    // Published by the application while bob has not re-registered yet: he gets it from
    // history when he does, exactly once, in order.
    assert_eq!(server.publish("r", &2, None).await.unwrap(), 2);
    // Alice's next request re-registers her first, then publishes.
    alice
        .send(json!({"type": "publish", "room": "r", "data": 3, "id": "a3"}))
        .await;
    let mut seqs = Vec::new();
    while seqs.len() < 2 {
        let m = bob.recv_type("message").await;
        seqs.push(m["seq"].as_u64().unwrap());
    }
    assert_eq!(seqs, [2, 3], "bob's stream after the crash");
    // Alice: her own messages 2 and 3 once each and in order, and her ack.
    let mut alice_seqs = Vec::new();
    loop {
        let f = alice.recv_non_ping().await;
        match f["type"].as_str() {
            Some("message") => alice_seqs.push(f["seq"].as_u64().unwrap()),
            Some("ack") if f["id"] == "a3" => {
                assert_eq!(f["seq"], 3);
                break;
            }
            _ => panic!("unexpected {f}"),
        }
    }
    assert_eq!(alice_seqs, [2, 3]);
    // Everyone is known to the fresh registry again, and new clients are served.
    let (mut carol, welcome) = Client::hello(addr, "carol").await;
    assert_eq!(welcome["type"], "welcome");
    carol.send(json!({"type": "subscribe", "room": "r"})).await;
    assert_eq!(carol.recv_type("subscribed").await["seq"], 3);
    crate::common::eventually_stats(&server, "all three registered", |s| {
        s.identified == 3 && s.users == 3 && s.rooms == 1
    })
    .await;
    let members = server.room("r").await.unwrap().unwrap().members.len();
    assert_eq!(members, 3);
    assert!(server
        .render_metrics()
        .await
        .unwrap()
        .contains("heartwire_registry_restarts_total 1"));
}

/// A session that sends nothing after the crash is told by the keeper (it was among the dead
/// registry's sessions) and re-registers by itself.
#[actix_rt::test]
async fn a_quiet_session_re_registers_by_itself() {
    let server = start(Config {
        heartbeat_interval: Duration::from_millis(200),
        ..config()
    });
    let addr = server.local_addr();
    let (mut bob, _) = subscriber(addr, "bob", "quiet").await;
    crash_registry(&server).await;
    crate::common::eventually_stats(&server, "bob registered again", |s| s.identified == 1).await;
    assert_eq!(server.publish("quiet", &"after", None).await.unwrap(), 1);
    let m = bob.recv_type("message").await;
    assert_eq!(
        (m["seq"].as_u64(), m["data"].as_str()),
        (Some(1), Some("after"))
    );
}

#[actix_rt::test]
async fn a_registry_that_keeps_crashing_stops_the_server() {
    let server = start(Config {
        max_registry_restarts: 2,
        registry_restart_window: Duration::from_secs(60),
        ..config()
    });
    let (mut alice, _) = Client::hello(server.local_addr(), "alice").await;
    for _ in 0..2 {
        crash_registry(&server).await;
    }
    server.registry().do_send(Boom);
    let failed = tokio::time::timeout(PATIENCE, server.failed())
        .await
        .expect("the server gives up");
    assert!(
        failed.to_string().contains("max_registry_restarts"),
        "{failed}"
    );
    let frames = alice.until_closed().await;
    let bye = frames.last().expect("a bye");
    assert_eq!(
        (bye["type"].as_str(), bye["reason"].as_str()),
        (Some("bye"), Some("shutdown"))
    );
    assert!(server.overview().await.is_err(), "no registry runs");
}

#[actix_rt::test]
async fn a_panicking_session_is_counted_and_closes_alone() {
    let server = ServerBuilder::new(config())
        .frame_handler(
            "boom",
            |_: &mut Session, _: &mut Context<Session>, _: AppFrame| {
                panic!("a bug in a frame handler");
            },
        )
        .start()
        .unwrap();
    let addr = server.local_addr();
    let (mut a, _) = Client::hello(addr, "a").await;
    let (mut b, _) = Client::hello(addr, "b").await;
    a.send(json!({"type": "boom"})).await;
    a.until_closed().await;
    b.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(b.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    crate::common::eventually("the panic is counted", || async {
        server
            .render_metrics()
            .await
            .unwrap()
            .contains("heartwire_session_panics_total 1")
    })
    .await;
}

/// A server whose `stall` frame blocks the session's worker thread for a while, answering
/// `stalled` (with the frame's id) afterwards: a session that is busy when the registry
/// crashes, so that it re-registers only after the room moved on.
fn stalling_server(config: Config) -> ServerHandle {
    ServerBuilder::new(config)
        .frame_handler(
            "stall",
            |session: &mut Session, _: &mut Context<Session>, frame: AppFrame| {
                std::thread::sleep(Duration::from_millis(1500));
                session.send_frame(&json!({"type": "stalled", "id": frame.id}));
            },
        )
        .start()
        .unwrap()
}

/// When the history no longer reaches back to what a session had been sent, re-registering
/// drops the room with `unsubscribed{reason:"resync"}` instead of leaving a silent hole.
#[actix_rt::test]
async fn a_hole_history_cannot_fill_is_a_resync() {
    let server = stalling_server(Config {
        history_size: 2,
        workers: 1,
        ..config()
    });
    let addr = server.local_addr();
    let (mut bob, _) = subscriber(addr, "bob", "r").await;
    bob.send(json!({"type": "stall"})).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    crash_registry(&server).await;
    // Bob's session is still busy: the room moves on past what history keeps.
    for n in 1..=5 {
        assert_eq!(server.publish("r", &n, None).await.unwrap(), n);
    }
    let mut frames = Vec::new();
    loop {
        let f = bob.recv_non_ping().await;
        let done = f["type"] == "unsubscribed";
        frames.push(f);
        if done {
            break;
        }
    }
    assert_eq!(
        frames.last().unwrap(),
        &json!({"type": "unsubscribed", "room": "r", "reason": "resync"}),
        "{frames:?}"
    );
    assert!(
        frames.iter().all(|f| f["type"] != "message"),
        "nothing with a hole before it: {frames:?}"
    );
}

/// The client library resubscribes on `resync` with its position, reports the gap, and goes
/// on receiving the room.
#[cfg(feature = "client")]
#[actix_rt::test]
async fn the_client_resubscribes_on_resync_and_reports_the_gap() {
    use crate::client_support::{client_config, connected, subscribed, wait_for};
    use heartwire::client::{Client as HwClient, ClientEvent};
    let server = stalling_server(Config {
        history_size: 2,
        workers: 1,
        ..config()
    });
    let (client, mut events) = HwClient::start(client_config(server.local_addr(), "carol"));
    connected(&mut events).await;
    client.subscribe("r").await.unwrap();
    subscribed(&mut events, "r").await;
    let stalling = client.clone();
    let stall = actix_rt::spawn(async move { stalling.request(json!({"type": "stall"})).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    crash_registry(&server).await;
    for n in 1..=5 {
        server.publish("r", &n, None).await.unwrap();
    }
    stall.await.unwrap().unwrap();
    let ack = client.publish("r", &"six").await.unwrap();
    assert_eq!(ack.seq, 6);
    let (_, before) = wait_for(
        &mut events,
        "message 6",
        |e| matches!(e, ClientEvent::Message(m) if m.seq == Some(6)),
    )
    .await;
    assert!(
        before.iter().any(|e| matches!(e, ClientEvent::Gap(_))),
        "the lost messages are reported: {before:#?}"
    );
}

/// An application message whose handler holds the registry's thread.
#[derive(Message)]
#[rtype(result = "()")]
struct Stall(Duration);

impl Handler<Stall> for Registry {
    type Result = ();

    fn handle(&mut self, stall: Stall, _: &mut Context<Self>) {
        std::thread::sleep(stall.0);
    }
}

/// A publish that a crash catches in flight is answered with its `id` (an `ack`, or
/// `error{code:"internal"}` that the client may resend with the same id).
#[actix_rt::test]
async fn a_publish_caught_by_a_crash_is_answered_with_its_id() {
    let server = start(config());
    let (mut alice, _) = subscriber(server.local_addr(), "alice", "r").await;
    let old = server.registry();
    old.do_send(Stall(Duration::from_millis(300)));
    alice
        .send(json!({"type": "publish", "room": "r", "data": 1, "id": "p1"}))
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    old.do_send(Boom);
    loop {
        let frame = alice.recv_non_ping().await;
        if frame["id"] == "p1" {
            assert!(
                frame["type"] == "ack" || frame["code"] == "internal",
                "{frame}"
            );
            break;
        }
        assert_eq!(frame["type"], "message", "{frame}");
    }
}
