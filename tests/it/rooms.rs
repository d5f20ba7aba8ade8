//! Rooms, messages and delivery rules of protocol v1: subscribe, publish, acks, ordering,
//! history recovery, publish-id dedupe and direct sends.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::{config, start, subscriber, Client};
use heartwire::Config;
use serde_json::{json, Value};

/// Short wait used to assert that nothing (more) arrives.
const QUIET: Duration = Duration::from_millis(200);

/// Reads the next `n` non-ping frames.
async fn recv_n(c: &mut Client, n: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(c.recv_non_ping().await);
    }
    frames
}

/// Reads the publisher's own `message` and its `ack` (in whichever order they come).
async fn message_and_ack(c: &mut Client) -> (Value, Value) {
    let frames = recv_n(c, 2).await;
    let find = |kind: &str| {
        frames
            .iter()
            .find(|f| f["type"] == kind)
            .cloned()
            .unwrap_or_else(|| panic!("no {kind} among {frames:?}"))
    };
    (find("message"), find("ack"))
}

/// Publishes with an id and waits for the ack (the publisher must not be subscribed).
async fn publish_acked(c: &mut Client, room: &str, data: Value, id: &str) -> u64 {
    c.send(json!({"type": "publish", "room": room, "data": data, "id": id}))
        .await;
    let ack = c.recv_type("ack").await;
    assert_eq!(ack["id"], id, "{ack}");
    ack["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("ack without seq: {ack}"))
}

#[actix_rt::test]
async fn subscribe_answers_subscribed_with_seq_zero_and_an_epoch() {
    let server = start(config());
    let (mut c, _) = Client::hello(server.local_addr(), "alice").await;
    c.send(json!({"type": "subscribe", "room": "lobby"})).await;
    let sub = c.recv_type("subscribed").await;
    assert_eq!(sub["room"], "lobby");
    assert_eq!(sub["seq"], 0, "a new room has no messages: {sub}");
    let epoch = sub["epoch"].as_str().unwrap_or_default();
    assert!(!epoch.is_empty(), "epoch must be a non-empty string: {sub}");
    assert!(
        sub["recovered"].is_null(),
        "no `since`, no `recovered`: {sub}"
    );

    // A second subscriber of the same room sees the same epoch.
    let (_d, sub2) = subscriber(server.local_addr(), "dave", "lobby").await;
    assert_eq!(sub2["epoch"], sub["epoch"]);
    assert_eq!(sub2["seq"], 0);

    // `subscribed.seq` is the room's latest seq.
    let (mut p, _) = Client::hello(server.local_addr(), "pub").await;
    for i in 1..=3 {
        assert_eq!(
            publish_acked(&mut p, "lobby", json!(i), &format!("m{i}")).await,
            i
        );
    }
    let (_e, sub3) = subscriber(server.local_addr(), "erin", "lobby").await;
    assert_eq!(sub3["seq"], 3, "{sub3}");
    assert_eq!(sub3["epoch"], sub["epoch"]);
}

#[actix_rt::test]
async fn publish_reaches_every_subscriber_including_the_publisher() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut a, _) = subscriber(addr, "alice", "r").await;
    let (mut b, _) = subscriber(addr, "bob", "r").await;
    let (mut b2, _) = subscriber(addr, "bob", "r").await;
    let (mut other, _) = subscriber(addr, "carol", "elsewhere").await;
    let (mut idle, _) = Client::hello(addr, "dave").await;

    let data = json!({"text": "héllo", "n": [1, 2.5, null, true], "nested": {"k": "v"}});
    a.send(json!({"type": "publish", "room": "r", "data": data, "id": "m-1"}))
        .await;

    let (own, ack) = message_and_ack(&mut a).await;
    let expected = json!({"type": "message", "room": "r", "seq": 1, "from": "alice", "data": data, "id": "m-1"});
    assert_eq!(own, expected);
    assert_eq!(ack, json!({"type": "ack", "id": "m-1", "seq": 1}));
    for c in [&mut b, &mut b2] {
        assert_eq!(c.recv_non_ping().await, expected);
    }
    // Not subscribed to "r": nothing.
    other.expect_silence(QUIET).await;
    idle.expect_silence(QUIET).await;
    b.expect_silence(QUIET).await;
}

#[actix_rt::test]
async fn ack_only_when_the_publish_has_an_id() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut a, _) = subscriber(addr, "alice", "r").await;
    let (mut b, _) = subscriber(addr, "bob", "r").await;

    a.send(json!({"type": "publish", "room": "r", "data": "no id"}))
        .await;
    let m1 = b.recv_type("message").await;
    assert_eq!(
        (m1["seq"].as_u64(), &m1["data"]),
        (Some(1), &json!("no id"))
    );
    assert!(m1["id"].is_null(), "no id given, none sent: {m1}");
    assert_eq!(m1["from"], "alice");

    // The publisher gets its own message; an ack for the id-less publish would come before
    // anything caused by the next publish.
    let own = a.recv_non_ping().await;
    assert_eq!(
        (own["type"].as_str(), own["seq"].as_u64()),
        (Some("message"), Some(1)),
        "{own}"
    );
    a.send(json!({"type": "publish", "room": "r", "data": "marker", "id": "mk"}))
        .await;
    let (own2, ack) = message_and_ack(&mut a).await;
    assert_eq!(own2["seq"], 2);
    assert_eq!(ack, json!({"type": "ack", "id": "mk", "seq": 2}));
    assert_eq!(b.recv_type("message").await["seq"], 2);
    a.expect_silence(QUIET).await;

    // A publisher that is not subscribed gets its ack and no message.
    let (mut outsider, _) = Client::hello(addr, "olga").await;
    outsider
        .send(json!({"type": "publish", "room": "r", "data": 3, "id": "o1"}))
        .await;
    assert_eq!(
        outsider.recv_non_ping().await,
        json!({"type": "ack", "id": "o1", "seq": 3})
    );
    outsider.expect_silence(QUIET).await;
    assert_eq!(b.recv_type("message").await["from"], "olga");
}

#[actix_rt::test]
async fn unsubscribe_stops_delivery() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut a, _) = subscriber(addr, "alice", "r").await;
    let (mut b, _) = subscriber(addr, "bob", "r").await;

    a.send(json!({"type": "publish", "room": "r", "data": 1, "id": "x1"}))
        .await;
    message_and_ack(&mut a).await;
    assert_eq!(b.recv_type("message").await["seq"], 1);

    b.send(json!({"type": "unsubscribe", "room": "r"})).await;
    assert_eq!(
        b.recv_non_ping().await,
        json!({"type": "unsubscribed", "room": "r"})
    );

    for i in 2..=4 {
        a.send(json!({"type": "publish", "room": "r", "data": i, "id": format!("x{i}")}))
            .await;
        let (own, _) = message_and_ack(&mut a).await;
        assert_eq!(own["seq"], i, "the room goes on for its other subscriber");
    }
    b.expect_silence(QUIET).await;

    // Unsubscribing from a room one is not in still answers `unsubscribed`.
    b.send(json!({"type": "unsubscribe", "room": "never-joined"}))
        .await;
    assert_eq!(
        b.recv_non_ping().await,
        json!({"type": "unsubscribed", "room": "never-joined"})
    );
    // The connection is still usable.
    b.send(json!({"type": "ping", "seq": 5})).await;
    assert_eq!(b.recv_non_ping().await, json!({"type": "pong", "seq": 5}));
}

/// 4 publishers × 50 messages at once: every subscriber sees seq 1..=200 with no gap, all
/// in the same order, each publisher's messages in the order it sent them, and the acks'
/// seqs match what the subscribers saw.
#[actix_rt::test]
async fn concurrent_publishers_give_gapless_identical_order() {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 50;
    const TOTAL: usize = PUBLISHERS * EACH;
    let server = start(config());
    let addr = server.local_addr();

    let mut subs = Vec::new();
    for s in 0..3 {
        subs.push(subscriber(addr, &format!("sub{s}"), "busy").await.0);
    }
    let mut pubs = Vec::new();
    for p in 0..PUBLISHERS {
        pubs.push(Client::hello(addr, &format!("pub{p}")).await.0);
    }

    let mut tasks = Vec::new();
    for (p, mut c) in pubs.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            // Half of the frames in one write, the rest one by one: both arrive while the
            // other publishers are sending.
            let mut batch = String::new();
            for k in 0..EACH / 2 {
                let f = json!({"type": "publish", "room": "busy", "data": {"p": p, "k": k}, "id": format!("{p}-{k}")});
                batch.push_str(&format!("{f}\n"));
            }
            c.send_raw(batch.as_bytes()).await;
            for k in EACH / 2..EACH {
                c.send(json!({"type": "publish", "room": "busy", "data": {"p": p, "k": k}, "id": format!("{p}-{k}")}))
                    .await;
                tokio::task::yield_now().await;
            }
            let mut acks = Vec::new();
            for _ in 0..EACH {
                let ack = c.recv_type("ack").await;
                acks.push((
                    ack["id"].as_str().unwrap_or_default().to_owned(),
                    ack["seq"].as_u64().unwrap_or(0),
                ));
            }
            acks
        }));
    }

    let mut orders: Vec<Vec<(String, String)>> = Vec::new();
    for (s, c) in subs.iter_mut().enumerate() {
        let mut order = Vec::with_capacity(TOTAL);
        for expected_seq in 1..=TOTAL as u64 {
            let m = c.recv_type("message").await;
            assert_eq!(m["room"], "busy");
            assert_eq!(
                m["seq"].as_u64(),
                Some(expected_seq),
                "subscriber {s}: gap or reordering at {m}"
            );
            let (p, k) = (&m["data"]["p"], &m["data"]["k"]);
            assert_eq!(m["from"], format!("pub{p}"), "{m}");
            assert_eq!(m["id"], format!("{p}-{k}"), "{m}");
            order.push((
                m["from"].as_str().unwrap_or_default().to_owned(),
                m["id"].as_str().unwrap_or_default().to_owned(),
            ));
        }
        c.expect_silence(QUIET).await;
        orders.push(order);
    }
    assert!(
        orders.iter().all(|o| *o == orders[0]),
        "subscribers saw different orders"
    );

    // Each publisher's own messages appear in its send order.
    for p in 0..PUBLISHERS {
        let from = format!("pub{p}");
        let mine: Vec<&str> = orders[0]
            .iter()
            .filter(|(f, _)| *f == from)
            .map(|(_, id)| id.as_str())
            .collect();
        let sent: Vec<String> = (0..EACH).map(|k| format!("{p}-{k}")).collect();
        assert_eq!(mine, sent, "publisher {p} reordered");
    }

    // Acks come in send order and carry the seq the subscribers saw.
    let seq_of: HashMap<&str, u64> = orders[0]
        .iter()
        .enumerate()
        .map(|(i, (_, id))| (id.as_str(), i as u64 + 1))
        .collect();
    for (p, task) in tasks.into_iter().enumerate() {
        let acks = task.await.expect("publisher task");
        let ids: Vec<String> = acks.iter().map(|(id, _)| id.clone()).collect();
        let sent: Vec<String> = (0..EACH).map(|k| format!("{p}-{k}")).collect();
        assert_eq!(ids, sent, "publisher {p}: acks out of order");
        for (id, seq) in &acks {
            assert_eq!(Some(seq), seq_of.get(id.as_str()), "ack {id}");
        }
    }
}

/// Reads a replay: `message` frames until `subscribed`; returns both.
async fn replay_then_subscribed(c: &mut Client) -> (Vec<Value>, Value) {
    let mut replay = Vec::new();
    loop {
        let f = c.recv_non_ping().await;
        match f["type"].as_str() {
            Some("message") => replay.push(f),
            Some("subscribed") => return (replay, f),
            _ => panic!("unexpected frame during replay: {f}"),
        }
    }
}

#[actix_rt::test]
async fn resubscribe_with_since_replays_exactly_the_missed_messages() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut p, _) = Client::hello(addr, "pub").await;
    let (mut a, sub) = subscriber(addr, "alice", "news").await;
    let epoch = sub["epoch"].clone();

    for i in 1..=3 {
        publish_acked(&mut p, "news", json!({"n": i}), &format!("n{i}")).await;
    }
    let mut last = 0;
    for i in 1..=3u64 {
        let m = a.recv_type("message").await;
        assert_eq!(m["seq"], i);
        last = i;
    }

    a.send(json!({"type": "unsubscribe", "room": "news"})).await;
    a.recv_type("unsubscribed").await;
    for i in 4..=7 {
        publish_acked(&mut p, "news", json!({"n": i}), &format!("n{i}")).await;
    }
    a.expect_silence(QUIET).await;

    a.send(json!({"type": "subscribe", "room": "news", "since": last, "epoch": epoch}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut a).await;
    let seqs: Vec<u64> = replay.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        vec![4, 5, 6, 7],
        "exactly the missed messages, in order"
    );
    for m in &replay {
        let seq = m["seq"].as_u64().unwrap_or(0);
        assert_eq!(m["room"], "news");
        assert_eq!(m["from"], "pub");
        assert_eq!(m["data"], json!({"n": seq}));
        assert_eq!(m["id"], format!("n{seq}"));
    }
    assert_eq!(subscribed["room"], "news");
    assert_eq!(subscribed["seq"], 7);
    assert_eq!(subscribed["epoch"], epoch);
    assert_eq!(subscribed["recovered"], true, "{subscribed}");

    // Live again, with no gap after the replay.
    publish_acked(&mut p, "news", json!({"n": 8}), "n8").await;
    assert_eq!(a.recv_type("message").await["seq"], 8);

    // Nothing missed: no replay, recovered.
    let (mut fresh, _) = Client::hello(addr, "alice").await;
    fresh
        .send(json!({"type": "subscribe", "room": "news", "since": 8, "epoch": epoch}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut fresh).await;
    assert!(replay.is_empty(), "{replay:?}");
    assert_eq!(
        (subscribed["seq"].as_u64(), &subscribed["recovered"]),
        (Some(8), &json!(true))
    );
}

#[actix_rt::test]
async fn reconnect_with_since_replays_the_missed_messages() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut p, _) = Client::hello(addr, "pub").await;
    let (mut a, sub) = subscriber(addr, "alice", "feed").await;
    let epoch = sub["epoch"].as_str().unwrap_or_default().to_owned();

    publish_acked(&mut p, "feed", json!("one"), "f1").await;
    publish_acked(&mut p, "feed", json!("two"), "f2").await;
    assert_eq!(a.recv_type("message").await["seq"], 1);
    assert_eq!(a.recv_type("message").await["seq"], 2);
    drop(a); // the connection is lost

    publish_acked(&mut p, "feed", json!("three"), "f3").await;
    publish_acked(&mut p, "feed", json!("four"), "f4").await;

    // Reconnect with `since` and the epoch.
    let (mut a, _) = Client::hello(addr, "alice").await;
    a.send(json!({"type": "subscribe", "room": "feed", "since": 2, "epoch": epoch}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut a).await;
    let got: Vec<(u64, Value)> = replay
        .iter()
        .map(|m| (m["seq"].as_u64().unwrap_or(0), m["data"].clone()))
        .collect();
    assert_eq!(got, vec![(3, json!("three")), (4, json!("four"))]);
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(subscribed["seq"], 4);
    assert_eq!(subscribed["epoch"], epoch.as_str());

    // `since` without an epoch means the current epoch.
    let (mut b, _) = Client::hello(addr, "bob").await;
    b.send(json!({"type": "subscribe", "room": "feed", "since": 1}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut b).await;
    let seqs: Vec<u64> = replay.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![2, 3, 4]);
    assert_eq!(subscribed["recovered"], true);
}

#[actix_rt::test]
async fn since_with_another_epoch_replays_nothing_and_is_not_recovered() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut p, _) = Client::hello(addr, "pub").await;
    let (_keep, sub) = subscriber(addr, "keeper", "r").await;
    for i in 1..=3 {
        publish_acked(&mut p, "r", json!(i), &format!("e{i}")).await;
    }
    let epoch = sub["epoch"].as_str().unwrap_or_default().to_owned();
    let stale = format!("{epoch}-old");

    let (mut a, _) = Client::hello(addr, "alice").await;
    a.send(json!({"type": "subscribe", "room": "r", "since": 1, "epoch": stale}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut a).await;
    assert!(
        replay.is_empty(),
        "another epoch: no replay, got {replay:?}"
    );
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["seq"], 3);
    assert_eq!(subscribed["epoch"], epoch.as_str(), "the current epoch");

    // Still subscribed: live messages arrive.
    publish_acked(&mut p, "r", json!(4), "e4").await;
    assert_eq!(a.recv_type("message").await["seq"], 4);
}

/// Publications that arrive while a stale-epoch subscribe reads the history come after
/// `subscribed`: a client takes everything before it for the epoch it asked about.
#[actix_rt::test]
async fn nothing_of_the_current_epoch_precedes_subscribed() {
    let server = start(config());
    let addr = server.local_addr();
    let (_keep, sub) = subscriber(addr, "keeper", "r").await;
    let stale = format!("{}-old", sub["epoch"].as_str().unwrap_or_default());
    let flooding = std::rc::Rc::new(std::cell::Cell::new(true));
    let flood = {
        let (server, flooding) = (server.clone(), flooding.clone());
        actix_rt::spawn(async move {
            while flooding.get() {
                server.publish("r", &json!("x"), None).await.unwrap();
            }
        })
    };
    let (mut a, _) = Client::hello(addr, "alice").await;
    for _ in 0..40 {
        a.send(json!({"type": "subscribe", "room": "r", "since": 1, "epoch": stale}))
            .await;
        let subscribed = a.recv_type("subscribed").await;
        assert_eq!(subscribed["recovered"], false, "{subscribed}");
        // Live messages follow on from it without a hole.
        let first = a.recv_type("message").await;
        assert_eq!(first["seq"], subscribed["seq"].as_u64().unwrap() + 1);
        a.send(json!({"type": "unsubscribe", "room": "r"})).await;
        loop {
            let frame = a.recv_non_ping().await;
            if frame["type"] == "unsubscribed" {
                break;
            }
            assert_eq!(frame["type"], "message", "{frame}");
        }
    }
    flooding.set(false);
    flood.await.unwrap();
}

#[actix_rt::test]
async fn history_too_short_is_not_recovered() {
    let server = start(Config {
        history_size: 3,
        ..config()
    });
    let addr = server.local_addr();
    let (mut p, _) = Client::hello(addr, "pub").await;
    let (mut a, sub) = subscriber(addr, "alice", "r").await;
    let epoch = sub["epoch"].clone();
    publish_acked(&mut p, "r", json!(1), "h1").await;
    assert_eq!(a.recv_type("message").await["seq"], 1);
    a.send(json!({"type": "unsubscribe", "room": "r"})).await;
    a.recv_type("unsubscribed").await;

    // Six missed messages; only three are kept.
    for i in 2..=7 {
        publish_acked(&mut p, "r", json!(i), &format!("h{i}")).await;
    }
    a.send(json!({"type": "subscribe", "room": "r", "since": 1, "epoch": epoch}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut a).await;
    assert_eq!(subscribed["recovered"], false, "{subscribed}");
    assert_eq!(subscribed["seq"], 7);
    assert_eq!(subscribed["epoch"], epoch);
    // Whatever is replayed must still be in order, after `since`, and end at the latest seq.
    let seqs: Vec<u64> = replay.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs.len(), replay.len());
    assert!(seqs.iter().all(|s| *s > 1), "{seqs:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    if let Some(last) = seqs.last() {
        assert_eq!(*last, 7);
    }

    // Within the kept window, recovery works.
    let (mut b, _) = Client::hello(addr, "bob").await;
    b.send(json!({"type": "subscribe", "room": "r", "since": 5, "epoch": epoch}))
        .await;
    let (replay, subscribed) = replay_then_subscribed(&mut b).await;
    let seqs: Vec<u64> = replay.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(seqs, vec![6, 7]);
    assert_eq!(subscribed["recovered"], true);
}

#[actix_rt::test]
async fn duplicate_publish_id_is_delivered_once_and_acked_again() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut s, _) = subscriber(addr, "sub", "r").await;
    let (mut a, _) = Client::hello(addr, "alice").await;

    assert_eq!(publish_acked(&mut a, "r", json!("first"), "d1").await, 1);
    assert_eq!(
        publish_acked(&mut a, "r", json!("first"), "d1").await,
        1,
        "same ack for the resend"
    );
    // Even with other data, the id decides.
    assert_eq!(publish_acked(&mut a, "r", json!("changed"), "d1").await, 1);

    // The same id from another user is a new message.
    let (mut b, _) = Client::hello(addr, "bob").await;
    assert_eq!(publish_acked(&mut b, "r", json!("bob's"), "d1").await, 2);

    // After a reconnect, the same user resending is still recognised.
    drop(a);
    let (mut a, _) = Client::hello(addr, "alice").await;
    assert_eq!(publish_acked(&mut a, "r", json!("first"), "d1").await, 1);
    // The same id in another room is another message.
    assert_eq!(publish_acked(&mut a, "other", json!("x"), "d1").await, 1);
    assert_eq!(publish_acked(&mut a, "r", json!("last"), "d2").await, 3);

    let got: Vec<Value> = recv_n(&mut s, 3).await;
    let summary: Vec<(Value, Value, Value, Value)> = got
        .iter()
        .map(|m| {
            (
                m["seq"].clone(),
                m["from"].clone(),
                m["id"].clone(),
                m["data"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (json!(1), json!("alice"), json!("d1"), json!("first")),
            (json!(2), json!("bob"), json!("d1"), json!("bob's")),
            (json!(3), json!("alice"), json!("d2"), json!("last")),
        ]
    );
    s.expect_silence(QUIET).await;
}

/// While another client keeps sending to `u`, `u` says hello again and again on the node of
/// `addr` (or of `sender_addr`): the first frame each time is `welcome`, never a message.
pub(crate) async fn nothing_precedes_welcome(
    addr: std::net::SocketAddr,
    sender_addr: std::net::SocketAddr,
) {
    let (mut sender, _) = Client::hello(sender_addr, "sender").await;
    let sending = std::rc::Rc::new(std::cell::Cell::new(true));
    let blaster = {
        let sending = sending.clone();
        actix_rt::spawn(async move {
            let mut n = 0u64;
            while sending.get() {
                sender
                    .send(json!({"type": "send", "to": "u", "data": n}))
                    .await;
                n += 1;
                if n.is_multiple_of(64) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    for _ in 0..30 {
        let mut u = Client::connect(addr).await;
        u.send(json!({"type": "hello", "user": "u"})).await;
        let first = u.recv_non_ping().await;
        assert_eq!(first["type"], "welcome", "{first}");
        assert_eq!(u.recv_type("message").await["from"], "sender");
    }
    sending.set(false);
    blaster.await.unwrap();
}

#[actix_rt::test]
async fn no_direct_message_precedes_welcome() {
    let server = start(config());
    let addr = server.local_addr();
    nothing_precedes_welcome(addr, addr).await;
}

#[actix_rt::test]
async fn direct_send_reaches_every_session_of_the_user() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut bob1, _) = Client::hello(addr, "bob").await;
    let (mut bob2, _) = Client::hello(addr, "bob").await;
    // A room subscription does not matter for direct messages.
    let (mut carol, _) = subscriber(addr, "carol", "r").await;
    let (mut sam, _) = Client::hello(addr, "sam").await;

    let data = json!({"hi": ["there", 1]});
    sam.send(json!({"type": "send", "to": "bob", "data": data, "id": "s1"}))
        .await;
    for c in [&mut bob1, &mut bob2] {
        let m = c.recv_non_ping().await;
        assert_eq!(m["type"], "message");
        assert_eq!(m["from"], "sam");
        assert_eq!(m["data"], data);
        assert_eq!(m["id"], "s1");
        assert!(m.get("room").is_none(), "direct: no room: {m}");
        assert!(m.get("seq").is_none(), "direct: no seq: {m}");
    }
    let ack = sam.recv_non_ping().await;
    assert_eq!(
        (&ack["type"], &ack["id"], &ack["delivered"]),
        (&json!("ack"), &json!("s1"), &json!(2)),
        "{ack}"
    );

    // An absent user: delivered 0.
    sam.send(json!({"type": "send", "to": "nobody", "data": 1, "id": "s2"}))
        .await;
    let ack = sam.recv_non_ping().await;
    assert_eq!(
        (&ack["type"], &ack["id"], &ack["delivered"]),
        (&json!("ack"), &json!("s2"), &json!(0)),
        "{ack}"
    );

    // Without an id: delivered, no ack (a later ack shows nothing came in between).
    sam.send(json!({"type": "send", "to": "carol", "data": "psst"}))
        .await;
    let m = carol.recv_non_ping().await;
    assert_eq!(
        (&m["type"], &m["from"], &m["data"]),
        (&json!("message"), &json!("sam"), &json!("psst"))
    );
    assert!(m["id"].is_null(), "{m}");
    sam.send(json!({"type": "send", "to": "carol", "data": "again", "id": "s3"}))
        .await;
    let ack = sam.recv_non_ping().await;
    assert_eq!(
        (&ack["id"], &ack["delivered"]),
        (&json!("s3"), &json!(1)),
        "{ack}"
    );
    carol.recv_type("message").await;

    // A session that left is no longer counted (once the server has noticed the close).
    drop(bob2);
    let until = std::time::Instant::now() + crate::common::PATIENCE;
    loop {
        sam.send(json!({"type": "send", "to": "bob", "data": "?", "id": "probe"}))
            .await;
        let ack = sam.recv_type("ack").await;
        assert_eq!(bob1.recv_type("message").await["data"], "?");
        match ack["delivered"].as_u64() {
            Some(1) => break,
            Some(2) if std::time::Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            _ => panic!("closed session still counted or bad ack: {ack}"),
        }
    }
}
