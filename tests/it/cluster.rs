//! Several nodes over one real redis-server: in-process servers sharing it (each
//! `ServerBuilder::start` makes its own arbiters), and `heartwire serve` child processes
//! where a node must die (`kill -9`) or several must share one port. Clients are raw protocol
//! peers over real sockets, or the client library where it must survive the failures.

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use heartwire::{Config, ServerHandle};
use serde_json::{json, Value};

use crate::common::redis::{Persistence, Redis};
use crate::common::{eventually, start, subscriber, Client, PATIENCE};

/// A node of the test cluster: quick presence, probes and timeouts.
fn node_config(redis: &Redis) -> Config {
    let mut c = crate::common::config();
    c.broker.url = Some(redis.url());
    c.broker.presence_ttl = Duration::from_secs(3);
    c.broker.probe_interval = Duration::from_millis(200);
    c.broker.command_timeout = Duration::from_millis(500);
    c.presence_events = vec!["*".into()];
    c
}

fn nodes(redis: &Redis, n: usize) -> Vec<ServerHandle> {
    (0..n).map(|_| start(node_config(redis))).collect()
}

async fn shutdown(nodes: Vec<ServerHandle>) {
    for node in nodes {
        node.shutdown().await;
    }
}

/// Waiting for one frame, bounded: the harness's own `recv_type` waits for as long as pings
/// keep coming.
trait Bounded {
    async fn expect_type(&mut self, kind: &str) -> Value;
    async fn next_frame(&mut self) -> Value;
}

impl Bounded for Client {
    async fn next_frame(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.recv_non_ping())
            .await
            .unwrap_or_else(|_| panic!("no frame within {PATIENCE:?}"))
    }

    async fn expect_type(&mut self, kind: &str) -> Value {
        tokio::time::timeout(PATIENCE, self.recv_type(kind))
            .await
            .unwrap_or_else(|_| panic!("no {kind} within {PATIENCE:?}"))
    }
}

/// Reads frames until `n` room messages arrived (answering pings); returns them and the
/// other frames seen. Panics when they do not arrive within [`PATIENCE`].
async fn messages(c: &mut Client, n: usize) -> (Vec<Value>, Vec<Value>) {
    let mut got = Vec::new();
    let mut other = Vec::new();
    let until = Instant::now() + PATIENCE;
    while got.len() < n {
        let frame = tokio::time::timeout_at(until.into(), c.recv_non_ping())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} messages within {PATIENCE:?}", got.len()));
        if frame["type"] == "message" && frame["room"].is_string() {
            got.push(frame);
        } else {
            other.push(frame);
        }
    }
    (got, other)
}

fn seqs(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect()
}

/// Publishers on three nodes at once, each pipelining its publishes: every subscriber on
/// every node gets seq 1..=N with no gap, in the same order (the same message under each
/// seq), and every publisher's ack comes after its own message.
#[actix_rt::test]
async fn concurrent_publishers_on_three_nodes_give_every_subscriber_the_same_gapless_stream() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 3);
    let per_publisher = 60;
    let mut subscribers = Vec::new();
    let mut publishers = Vec::new();
    for (i, node) in cluster.iter().enumerate() {
        subscribers.push(subscriber(node.local_addr(), &format!("s{i}"), "r").await.0);
        publishers.push(subscriber(node.local_addr(), &format!("p{i}"), "r").await.0);
    }
    let mut batch = String::new();
    for (i, p) in publishers.iter_mut().enumerate() {
        batch.clear();
        for n in 0..per_publisher {
            let frame =
                json!({"type": "publish", "room": "r", "id": format!("{i}-{n}"), "data": n});
            batch.push_str(&format!("{frame}\n"));
        }
        p.send_raw(batch.as_bytes()).await;
    }
    let total = 3 * per_publisher;
    let mut order: Option<Vec<(String, String)>> = None;
    for s in &mut subscribers {
        let (got, _) = messages(s, total).await;
        assert_eq!(seqs(&got), (1..=total as u64).collect::<Vec<_>>());
        let mine: Vec<(String, String)> = got
            .iter()
            .map(|m| (m["from"].to_string(), m["id"].to_string()))
            .collect();
        match &order {
            None => order = Some(mine),
            Some(first) => assert_eq!(first, &mine, "every subscriber sees the same order"),
        }
    }
    for p in &mut publishers {
        let mut seen = HashSet::new();
        let mut acked = 0;
        while acked < per_publisher {
            let frame = p.next_frame().await;
            match frame["type"].as_str() {
                Some("message") => {
                    seen.insert(frame["seq"].as_u64().unwrap());
                }
                Some("ack") => {
                    let seq = frame["seq"].as_u64().unwrap();
                    assert!(seen.contains(&seq), "ack {seq} before its message");
                    acked += 1;
                }
                Some("join" | "leave") => {}
                _ => panic!("unexpected {frame}"),
            }
        }
    }
    shutdown(cluster).await;
}

/// History is the cluster's: a client resumes on another node than the one it left, and
/// after every node restarted (new processes' worth of registries, the same Redis) the
/// room keeps its epoch and the client recovers.
#[actix_rt::test]
async fn history_and_epochs_outlive_nodes() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 2);
    let (mut c, subscribed) = subscriber(cluster[0].local_addr(), "c", "h").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    for n in 1..=5 {
        cluster[1].publish("h", &json!(n), None).await.unwrap();
    }
    assert_eq!(seqs(&messages(&mut c, 5).await.0), [1, 2, 3, 4, 5]);
    drop(c);
    for n in 6..=8 {
        cluster[0].publish("h", &json!(n), None).await.unwrap();
    }
    let (mut c, _) = Client::hello(cluster[1].local_addr(), "c").await;
    c.send(json!({"type": "subscribe", "room": "h", "since": 5, "epoch": epoch}))
        .await;
    assert_eq!(seqs(&messages(&mut c, 3).await.0), [6, 7, 8]);
    let answer = c.expect_type("subscribed").await;
    assert_eq!(
        (answer["recovered"].clone(), answer["epoch"].clone()),
        (json!(true), json!(epoch))
    );
    drop(c);
    shutdown(cluster).await;

    let cluster = nodes(&redis, 2);
    cluster[0].publish("h", &json!(9), None).await.unwrap();
    let (mut c, _) = Client::hello(cluster[1].local_addr(), "c").await;
    c.send(json!({"type": "subscribe", "room": "h", "since": 8, "epoch": epoch}))
        .await;
    assert_eq!(seqs(&messages(&mut c, 1).await.0), [9]);
    let answer = c.expect_type("subscribed").await;
    assert_eq!(answer["recovered"], true, "{answer}");
    assert_eq!(answer["epoch"], epoch.as_str());
    let details = cluster[1]
        .room("h")
        .await
        .unwrap()
        .expect("the room is known");
    let stream = details.stream.expect("the broker knows it");
    assert_eq!((stream.seq, &*stream.epoch), (9, epoch.as_str()));
    shutdown(cluster).await;
}

/// A publish resent to another node (the client reconnected elsewhere) is recognised: the
/// same ack, and subscribers get the message once.
#[actix_rt::test]
async fn a_resend_landing_on_another_node_is_a_duplicate() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 3);
    let (mut watcher, _) = subscriber(cluster[2].local_addr(), "w", "d").await;
    let frame = json!({"type": "publish", "room": "d", "id": "x1", "data": {"v": 1}});
    let (mut first, _) = Client::hello(cluster[0].local_addr(), "alice").await;
    first.send(frame.clone()).await;
    let ack = first.expect_type("ack").await;
    let (mut again, _) = Client::hello(cluster[1].local_addr(), "alice").await;
    again.send(frame).await;
    assert_eq!(again.expect_type("ack").await, ack);
    assert_eq!(seqs(&messages(&mut watcher, 1).await.0), [1]);
    watcher.expect_silence(Duration::from_millis(300)).await;
    shutdown(cluster).await;
}

/// A direct message from another node, as from this one, never precedes `welcome`.
#[actix_rt::test]
async fn no_direct_message_precedes_welcome_across_nodes() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 2);
    let (a, b) = (cluster[0].local_addr(), cluster[1].local_addr());
    crate::rooms::nothing_precedes_welcome(a, a).await;
    crate::rooms::nothing_precedes_welcome(a, b).await;
    shutdown(cluster).await;
}

/// `send` reaches every session of the user on every node and `ack.delivered` counts them;
/// kicks (by user, and by session id on a node that does not hold it) close them all.
#[actix_rt::test]
async fn direct_messages_and_kicks_cross_nodes() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 3);
    let (mut a1, _) = Client::hello(cluster[0].local_addr(), "alice").await;
    let (mut a2, _) = Client::hello(cluster[1].local_addr(), "alice").await;
    let (mut bob, _) = Client::hello(cluster[2].local_addr(), "bob").await;
    // No wait: `welcome` comes once the node hears alice's channel.
    bob.send(json!({"type": "send", "to": "alice", "id": "d1", "data": "hi"}))
        .await;
    assert_eq!(bob.expect_type("ack").await["delivered"], 2);
    for a in [&mut a1, &mut a2] {
        let m = a.expect_type("message").await;
        assert_eq!(
            (m["from"].clone(), m["data"].clone()),
            (json!("bob"), json!("hi"))
        );
    }
    assert_eq!(
        cluster[2]
            .send_to("alice", &json!("push"), None)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        cluster[0]
            .send_to("alice", &json!("push"), None)
            .await
            .unwrap(),
        2
    );
    for a in [&mut a1, &mut a2] {
        for _ in 0..2 {
            assert_eq!(a.expect_type("message").await["data"], "push");
        }
    }

    let (mut carol, welcome) = Client::hello(cluster[0].local_addr(), "carol").await;
    let session = welcome["session"].as_str().unwrap().to_owned();
    assert_eq!(
        cluster[1].kick_session(&session).await.unwrap(),
        0,
        "not held here"
    );
    assert_eq!(carol.expect_type("bye").await["reason"], "kicked");

    assert_eq!(cluster[2].kick_user("alice").await.unwrap(), 2);
    for a in [&mut a1, &mut a2] {
        let frames = tokio::time::timeout(PATIENCE, a.until_closed())
            .await
            .expect("closed in time");
        assert!(
            frames
                .iter()
                .any(|f| f["type"] == "bye" && f["reason"] == "kicked"),
            "{frames:?}"
        );
    }
    shutdown(cluster).await;
}

/// `join`/`leave` follow a user across nodes: announced for its first session anywhere and
/// its last, not for the ones between; presence queries on any node see every node.
#[actix_rt::test]
async fn presence_and_join_leave_follow_users_across_nodes() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 3);
    let (mut carol, _) = subscriber(cluster[0].local_addr(), "carol", "p").await;
    let (mut alice1, _) = subscriber(cluster[1].local_addr(), "alice", "p").await;
    let join = carol.expect_type("join").await;
    assert_eq!(join["user"], "alice");
    let (mut alice2, _) = subscriber(cluster[2].local_addr(), "alice", "p").await;
    carol.expect_silence(Duration::from_millis(300)).await;
    carol.send(json!({"type": "presence", "room": "p"})).await;
    assert_eq!(
        carol.expect_type("presence").await["users"],
        json!(["alice", "carol"])
    );
    let everywhere = cluster[2].presence("p").await.unwrap();
    assert_eq!(
        everywhere.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        ["alice", "carol"]
    );
    alice1
        .send(json!({"type": "unsubscribe", "room": "p"}))
        .await;
    alice1.expect_type("unsubscribed").await;
    carol.expect_silence(Duration::from_millis(300)).await;
    alice2.send(json!({"type": "bye"})).await;
    drop(alice2);
    assert_eq!(carol.expect_type("leave").await["user"], "alice");
    shutdown(cluster).await;
}

/// `max_sessions_per_user` counts the user's sessions on every node.
#[actix_rt::test]
async fn the_session_limit_counts_every_node() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster: Vec<ServerHandle> = (0..3)
        .map(|_| {
            let mut c = node_config(&redis);
            c.limits.max_sessions_per_user = 2;
            start(c)
        })
        .collect();
    let (first, _) = Client::hello(cluster[0].local_addr(), "alice").await;
    let (_second, _) = Client::hello(cluster[1].local_addr(), "alice").await;
    let mut third = Client::connect(cluster[2].local_addr()).await;
    third.send(json!({"type": "hello", "user": "alice"})).await;
    assert_eq!(third.expect_type("error").await["code"], "forbidden");
    assert_eq!(
        third.expect_type("bye").await["reason"],
        "too_many_connections"
    );
    drop(first);
    let addr = cluster[2].local_addr();
    eventually("a freed slot is taken on another node", || async move {
        let mut c = Client::connect(addr).await;
        c.send(json!({"type": "hello", "user": "alice"})).await;
        c.next_frame().await["type"] == "welcome"
    })
    .await;
    shutdown(cluster).await;
}

/// Subscribers join on one node while another node publishes as fast as it can: each gets a
/// contiguous run of seqs up to its `subscribed{seq}` (what arrived while it joined; from 1
/// for those that asked for the history) and every later seq once and in order: the read and
/// what arrived meanwhile are merged without a hole or a double.
#[actix_rt::test]
async fn subscribes_racing_publishes_from_another_node_lose_and_double_nothing() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 2);
    let total = 300u64;
    let (mut publisher, _) = Client::hello(cluster[0].local_addr(), "p").await;
    let mut batch = String::new();
    for n in 1..=total {
        batch.push_str(&format!(
            "{}\n",
            json!({"type": "publish", "room": "race", "data": n})
        ));
    }
    publisher.send_raw(batch.as_bytes()).await;
    let mut joined = Vec::new();
    for i in 0..8 {
        let (mut c, _) = Client::hello(cluster[1].local_addr(), &format!("s{i}")).await;
        let mut subscribe = json!({"type": "subscribe", "room": "race"});
        if i % 2 == 1 {
            subscribe["since"] = json!(0);
        }
        c.send(subscribe).await;
        joined.push((i, c));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for (i, c) in &mut joined {
        let mut got = Vec::new();
        let start_seq = loop {
            let frame = c.next_frame().await;
            match frame["type"].as_str() {
                Some("message") => got.push(frame["seq"].as_u64().unwrap()),
                Some("subscribed") => break frame["seq"].as_u64().unwrap(),
                _ => panic!("unexpected {frame}"),
            }
        };
        let first = match got.first() {
            _ if *i % 2 == 1 => 1,
            Some(first) => *first,
            None => start_seq + 1,
        };
        assert_eq!(
            got,
            (first..=start_seq).collect::<Vec<_>>(),
            "before `subscribed` of subscriber {i}"
        );
        let rest = total - start_seq;
        let (later, _) = messages(c, rest as usize).await;
        assert_eq!(
            seqs(&later),
            (start_seq + 1..=total).collect::<Vec<_>>(),
            "subscriber {i}"
        );
    }
    shutdown(cluster).await;
}

/// The only subscriber of a room on a node leaves and comes back, over and over, while
/// another node keeps publishing: each time the node unsubscribes from the room and
/// subscribes again, and each time the subscriber gets a gapless run from its `subscribed`.
#[actix_rt::test]
async fn a_room_that_comes_and_goes_on_a_node_stays_gapless() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 2);
    let publisher = cluster[0].clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let publishing = actix_rt::spawn({
        let stop = stop.clone();
        async move {
            while !stop.is_cancelled() {
                publisher.publish("churn", &json!(0), None).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    let (mut c, _) = Client::hello(cluster[1].local_addr(), "c").await;
    for round in 0..15 {
        c.send(json!({"type": "subscribe", "room": "churn"})).await;
        let mut run = Vec::new();
        loop {
            let frame = c.next_frame().await;
            match frame["type"].as_str() {
                Some("message") => run.push(frame["seq"].as_u64().unwrap()),
                Some("subscribed") => {
                    let seq = frame["seq"].as_u64().unwrap();
                    assert!(run.last().is_none_or(|last| *last == seq), "round {round}");
                    run.clear();
                    run.push(seq);
                    break;
                }
                _ => panic!("unexpected {frame}"),
            }
        }
        let (later, _) = messages(&mut c, 3).await;
        run.extend(seqs(&later));
        c.send(json!({"type": "unsubscribe", "room": "churn"}))
            .await;
        loop {
            let frame = c.next_frame().await;
            match frame["type"].as_str() {
                Some("message") => run.push(frame["seq"].as_u64().unwrap()),
                Some("unsubscribed") => break,
                _ => panic!("unexpected {frame}"),
            }
        }
        let expected: Vec<u64> = (run[0]..run[0] + run.len() as u64).collect();
        assert_eq!(run, expected, "round {round}");
    }
    stop.cancel();
    publishing.await.unwrap();
    shutdown(cluster).await;
}

/// Redis gone: sessions stay connected and heartbeating, publishes answer `unavailable`
/// with their id, the node says it is not ready; Redis back (empty, as after a crash without
/// persistence): the node is ready again and its subscribers are told to resync, since the
/// room's stream restarted.
#[actix_rt::test]
async fn without_its_store_a_node_keeps_sessions_and_refuses_publishes() {
    let Some(mut redis) = Redis::start(Persistence::None) else {
        return;
    };
    let mut config = node_config(&redis);
    config.heartbeat_interval = Duration::from_millis(500);
    let node = start(config);
    let (mut sub, _) = subscriber(node.local_addr(), "s", "o").await;
    let (mut publisher, _) = Client::hello(node.local_addr(), "p").await;
    publisher
        .send(json!({"type": "publish", "room": "o", "id": "1", "data": 1}))
        .await;
    assert_eq!(publisher.expect_type("ack").await["seq"], 1);
    assert_eq!(seqs(&messages(&mut sub, 1).await.0), [1]);

    redis.kill();
    let handle = node.clone();
    while handle.overview().await.unwrap().store_healthy {
        keep_alive(&mut [&mut sub, &mut publisher], Duration::from_millis(50)).await;
    }
    publisher
        .send(json!({"type": "publish", "room": "o", "id": "2", "data": 2}))
        .await;
    let error = publisher.expect_type("error").await;
    assert_eq!(
        (error["code"].clone(), error["id"].clone()),
        (json!("unavailable"), json!("2"))
    );
    // Still heartbeating, for several intervals.
    let pings = keep_alive(&mut [&mut sub, &mut publisher], Duration::from_secs(2)).await;
    assert!(
        pings >= 4,
        "the sessions stopped heartbeating: {pings} pings"
    );

    redis.restart();
    // Both keep heartbeating while the node reconnects; what else the subscriber gets is kept.
    let mut seen = Vec::new();
    let until = Instant::now() + PATIENCE;
    while !handle.overview().await.unwrap().store_healthy {
        assert!(Instant::now() < until, "the node is not ready again");
        for c in [&mut sub, &mut publisher] {
            if let Some(Some(f)) = c.try_recv_within(Duration::from_millis(20)).await {
                if f["type"] == "ping" {
                    c.send(json!({"type": "pong", "seq": f["seq"]})).await;
                } else {
                    seen.push(f);
                }
            }
        }
    }
    let resync = match seen.pop() {
        Some(frame) => frame,
        None => sub.expect_type("unsubscribed").await,
    };
    assert!(seen.is_empty(), "{seen:?}");
    assert_eq!(
        (resync["type"].clone(), resync["reason"].clone()),
        (json!("unsubscribed"), json!("resync")),
        "{resync}"
    );
    publisher
        .send(json!({"type": "publish", "room": "o", "id": "2", "data": 2}))
        .await;
    assert_eq!(publisher.expect_type("ack").await["seq"], 1, "a new stream");
    node.shutdown().await;
}

/// A node that could not subscribe for a while (here: its Redis user lost the right to, which
/// also disconnects it) misses what was published meanwhile; once it is subscribed again it
/// checks every room and reads the hole back, even in a room where nothing else happens.
/// Also: credentials in the URL.
#[actix_rt::test]
async fn what_a_node_missed_while_unsubscribed_is_read_back() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let acl = ["ACL", "SETUSER", "a", "on", ">secret", "~*", "&*", "+@all"];
    assert_eq!(redis.cli(&acl), "OK");
    let mut config = node_config(&redis);
    config.broker.url = Some(redis.url().replace("redis://", "redis://a:secret@"));
    let a = start(config);
    let b = start(node_config(&redis));
    let (mut sub, _) = subscriber(a.local_addr(), "s", "q").await;
    b.publish("q", &json!(1), None).await.unwrap();
    assert_eq!(seqs(&messages(&mut sub, 1).await.0), [1]);

    assert_eq!(redis.cli(&["ACL", "SETUSER", "a", "resetchannels"]), "OK");
    let handle = a.clone();
    while handle.overview().await.unwrap().store_healthy {
        keep_alive(&mut [&mut sub], Duration::from_millis(20)).await;
    }
    b.publish("q", &json!(2), None).await.unwrap();
    keep_alive(&mut [&mut sub], Duration::from_millis(300)).await;
    assert_eq!(redis.cli(&["ACL", "SETUSER", "a", "allchannels"]), "OK");
    assert_eq!(seqs(&messages(&mut sub, 1).await.0), [2]);
    a.shutdown().await;
    b.shutdown().await;
}

/// Redis restored from a snapshot older than what subscribers saw: the room's seqs would be
/// reused for new messages, which clients would drop as already seen. The node that saw the
/// later seqs notices and restarts the room under a new epoch: its subscriber resyncs and
/// learns from the new epoch that messages were lost.
#[actix_rt::test]
async fn a_store_restored_from_an_older_snapshot_restarts_the_room() {
    let Some(mut redis) = Redis::start(Persistence::None) else {
        return;
    };
    let node = start(node_config(&redis));
    let (mut sub, subscribed) = subscriber(node.local_addr(), "s", "snap").await;
    let epoch = subscribed["epoch"].as_str().unwrap().to_owned();
    for n in 1..=3 {
        node.publish("snap", &json!(n), None).await.unwrap();
    }
    assert_eq!(redis.cli(&["SAVE"]), "OK");
    for n in 4..=5 {
        node.publish("snap", &json!(n), None).await.unwrap();
    }
    assert_eq!(seqs(&messages(&mut sub, 5).await.0), [1, 2, 3, 4, 5]);
    redis.restart();
    let resync = sub.expect_type("unsubscribed").await;
    assert_eq!(resync["reason"], "resync", "{resync}");
    sub.send(json!({"type": "subscribe", "room": "snap", "since": 5, "epoch": epoch}))
        .await;
    let answer = sub.expect_type("subscribed").await;
    assert_ne!(answer["epoch"], epoch.as_str(), "{answer}");
    assert_eq!(answer["recovered"], false, "{answer}");
    node.shutdown().await;
}

/// An application message whose handler has a bug.
#[derive(actix::Message)]
#[rtype(result = "()")]
struct Boom;

impl actix::Handler<Boom> for heartwire::Registry {
    type Result = ();

    fn handle(&mut self, _: Boom, _: &mut actix::Context<Self>) {
        panic!("a bug in an application's registry handler");
    }
}

/// A registry crash on a node of a cluster: the fresh registry takes over the broker, its
/// sessions register again, and they get the room's messages from the other node (what was
/// published meanwhile from history), direct messages, and stay present.
#[actix_rt::test]
async fn a_registry_crash_on_one_node_loses_nothing() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let cluster = nodes(&redis, 2);
    let (mut bob, _) = subscriber(cluster[0].local_addr(), "bob", "r").await;
    cluster[1].publish("r", &json!(1), None).await.unwrap();
    assert_eq!(seqs(&messages(&mut bob, 1).await.0), [1]);
    let old = cluster[0].registry();
    old.do_send(Boom);
    let until = Instant::now() + PATIENCE;
    while old.connected() || cluster[0].overview().await.is_err() {
        assert!(Instant::now() < until, "no registry came back");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cluster[1].publish("r", &json!(2), None).await.unwrap();
    let handle = cluster[0].clone();
    eventually("bob is registered again", || {
        let handle = handle.clone();
        async move {
            handle
                .overview()
                .await
                .is_ok_and(|o| o.identified == 1 && o.rooms == 1)
        }
    })
    .await;
    cluster[1].publish("r", &json!(3), None).await.unwrap();
    assert_eq!(seqs(&messages(&mut bob, 2).await.0), [2, 3]);
    // Bob's node listens to his direct messages again (its subscription is not awaited).
    let redis = &redis;
    eventually("bob's channel is subscribed again", || async move {
        redis
            .cli(&["PUBSUB", "NUMSUB", "heartwire:u:3:{bob}:e"])
            .ends_with('1')
    })
    .await;
    assert_eq!(
        cluster[1].send_to("bob", &json!("dm"), None).await.unwrap(),
        1
    );
    assert_eq!(bob.expect_type("message").await["data"], "dm");
    let present = cluster[1].presence("r").await.unwrap();
    assert_eq!(
        present.iter().map(|u| u.as_str()).collect::<Vec<_>>(),
        ["bob"]
    );
    shutdown(cluster).await;
}

/// `rediss://`: two nodes share rooms over TLS to Redis, verifying its certificate against a
/// private CA (`broker.tls_ca`); without that CA the node refuses to start.
#[actix_rt::test]
async fn nodes_reach_redis_over_tls() {
    let (ca, cert, key) = crate::common::test_pki();
    let Some(redis) = Redis::start_tls(&cert, &key) else {
        return;
    };
    let mut config = node_config(&redis);
    config.broker.url = Some(redis.tls_url());
    let untrusted = heartwire::ServerBuilder::new(config.clone()).start();
    match untrusted {
        Err(heartwire::StartError::Broker { url, reason }) => {
            assert_eq!(url, redis.tls_url());
            assert!(!reason.is_empty());
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a node trusted a certificate of an unknown CA"),
    }
    config.broker.tls_ca = Some(ca);
    let cluster: Vec<ServerHandle> = (0..2).map(|_| start(config.clone())).collect();
    let (mut sub, _) = subscriber(cluster[0].local_addr(), "s", "tls").await;
    cluster[1].publish("tls", &json!(1), None).await.unwrap();
    assert_eq!(seqs(&messages(&mut sub, 1).await.0), [1]);
    shutdown(cluster).await;
}

#[cfg(feature = "client")]
mod client {
    //! The client library over a cluster whose store fails: every acknowledged publish
    //! reaches every subscriber exactly once.

    use super::*;
    use crate::client_support::{client_config, connected, subscribed};
    use heartwire::client::{Client as Lib, ClientEvent, ClientHandle, Events};

    /// Collects the room messages a client library subscriber delivers, by `(from, id)`.
    async fn drain(
        events: &mut Events,
        into: &mut BTreeMap<(String, String), u32>,
        gaps: &mut u32,
    ) {
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(10), events.recv()).await
        {
            match event {
                ClientEvent::Message(m) => {
                    let key = (m.from.unwrap_or_default(), m.id.unwrap_or_default());
                    *into.entry(key).or_default() += 1;
                }
                ClientEvent::Gap(_) => *gaps += 1,
                _ => {}
            }
        }
    }

    /// Publishes `count` messages through `publisher` while `disrupt` runs, then waits until
    /// every subscriber delivered every acknowledged one, and checks each arrived once.
    async fn exactly_once_through<F, Fut>(redis: Redis, disrupt: F)
    where
        F: FnOnce(Redis) -> Fut,
        Fut: std::future::Future<Output = Redis>,
    {
        let mut config = node_config(&redis);
        config.heartbeat_interval = Duration::from_secs(1);
        config.broker.command_timeout = Duration::from_millis(300);
        let cluster: Vec<ServerHandle> = (0..2).map(|_| start(config.clone())).collect();
        let mut subscribers: Vec<(ClientHandle, Events)> = Vec::new();
        for (i, node) in cluster.iter().enumerate() {
            let (handle, mut events) =
                Lib::start(client_config(node.local_addr(), &format!("s{i}")));
            connected(&mut events).await;
            handle.subscribe("x").await.unwrap();
            subscribed(&mut events, "x").await;
            subscribers.push((handle, events));
        }
        let (publisher, mut publisher_events) =
            Lib::start(client_config(cluster[0].local_addr(), "pub"));
        connected(&mut publisher_events).await;
        let count = 80;
        let mut pending = Vec::new();
        let publishing = async {
            for n in 0..count {
                pending.push(
                    publisher
                        .publish_queued("x", &json!(n), None)
                        .await
                        .unwrap(),
                );
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        };
        let (_, redis) = tokio::join!(publishing, disrupt(redis));
        let mut acked = HashSet::new();
        for p in pending {
            let id = p.id().to_owned();
            let reply = tokio::time::timeout(Duration::from_secs(30), p)
                .await
                .expect("every publish is acked in the end")
                .expect("acked");
            assert!(reply.seq > 0);
            acked.insert(("pub".to_owned(), id));
        }
        for (i, (_, events)) in subscribers.iter_mut().enumerate() {
            let mut got = BTreeMap::new();
            let mut gaps = 0;
            let until = Instant::now() + Duration::from_secs(30);
            while !acked.iter().all(|k| got.contains_key(k)) {
                assert!(Instant::now() < until, "subscriber {i} is missing messages");
                drain(events, &mut got, &mut gaps).await;
            }
            drain(events, &mut got, &mut gaps).await;
            assert!(
                got.values().all(|n| *n == 1),
                "subscriber {i} got a message twice"
            );
            assert_eq!(
                got.len(),
                acked.len(),
                "subscriber {i} got something never acked"
            );
            assert_eq!(
                gaps, 0,
                "subscriber {i} was told of a gap: nothing was lost"
            );
        }
        // The disruption did hit the traffic: the nodes lost their subscription, and a
        // publish was refused (and resent by the library).
        for (i, node) in cluster.iter().enumerate() {
            let metrics = node.render_metrics().await.unwrap();
            assert!(
                !metrics.contains("heartwire_pubsub_reconnects_total 0\n"),
                "node {i} never lost its subscription"
            );
        }
        let metrics = cluster[0].render_metrics().await.unwrap();
        assert!(
            !metrics.contains("heartwire_store_errors_total{op=\"publish\"} 0\n"),
            "no publish was refused"
        );
        drop(redis);
        shutdown(cluster).await;
    }

    /// Redis killed (`kill -9`) in the middle of the traffic and started again a second
    /// later, from its append-only file.
    #[actix_rt::test]
    async fn redis_killed_and_restarted_mid_traffic() {
        let Some(redis) = Redis::start(Persistence::Aof) else {
            return;
        };
        exactly_once_through(redis, |mut redis| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            redis.kill();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            redis.restart();
            redis
        })
        .await;
    }

    /// Redis stopped (`SIGSTOP`: nothing closes, nothing answers) for a second and a half.
    #[actix_rt::test]
    async fn redis_paused_then_resumed_mid_traffic() {
        let Some(redis) = Redis::start(Persistence::None) else {
            return;
        };
        exactly_once_through(redis, |redis| async move {
            tokio::time::sleep(Duration::from_millis(400)).await;
            redis.pause();
            tokio::time::sleep(Duration::from_millis(1500)).await;
            redis.resume();
            redis
        })
        .await;
    }
}

/// Answers the pings of `clients` for `wait`, asserting nothing else arrives; returns how
/// many pings came.
async fn keep_alive(clients: &mut [&mut Client], wait: Duration) -> usize {
    let until = Instant::now() + wait;
    let mut pings = 0;
    while Instant::now() < until {
        for c in clients.iter_mut() {
            if let Some(Some(f)) = c.try_recv_within(Duration::from_millis(20)).await {
                assert_eq!(f["type"], "ping", "{f}");
                c.send(json!({"type": "pong", "seq": f["seq"]})).await;
                pings += 1;
            }
        }
    }
    pings
}

/// `heartwire serve` as a child process, killed and reaped when dropped.
struct Node {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    fn spawn(args: &[&str]) -> Result<Node, String> {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartwire"));
        cmd.arg("serve")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("HEARTWIRE_") {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd.spawn().expect("spawn heartwire");
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let err_tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(Ok(line));
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("heartwire:") {
                    let _ = err_tx.send(Err(line));
                }
            }
        });
        let until = Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(Ok(line)) => {
                    if let Some(addr) = line.strip_prefix("listening on ") {
                        let addr = addr.parse().expect("address");
                        return Ok(Node { child, addr });
                    }
                }
                Ok(Err(message)) => {
                    // It is on its way out: let it exit with its own status.
                    let until = Instant::now() + PATIENCE;
                    let status = loop {
                        match child.try_wait().expect("try_wait") {
                            Some(status) => break status,
                            None if Instant::now() < until => {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            None => {
                                let _ = child.kill();
                                break child.wait().expect("exit status");
                            }
                        }
                    };
                    return Err(format!("{message} ({status})"));
                }
                Err(_) => panic!("no `listening on` from heartwire serve"),
            }
        }
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A node killed with `kill -9` says nothing; its users leave anyway, once its presence
/// entries expire and another node sweeps them.
#[actix_rt::test]
async fn a_node_killed_with_sigkill_has_its_users_leave() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let url = redis.url();
    let doomed = Node::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &url,
        "--broker-presence-ttl",
        "1500ms",
        "--presence-events",
        "*",
    ])
    .expect("node starts");
    let mut config = node_config(&redis);
    config.broker.presence_ttl = Duration::from_millis(1500);
    let survivor = start(config);
    let (mut carol, _) = subscriber(survivor.local_addr(), "carol", "k").await;
    let (_alice, _) = subscriber(doomed.addr, "alice", "k").await;
    assert_eq!(carol.expect_type("join").await["user"], "alice");
    let killed_at = Instant::now();
    doomed.kill9();
    let leave = carol.expect_type("leave").await;
    assert_eq!(leave["user"], "alice");
    let took = killed_at.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "left after {took:?} (ttl 1.5 s + a third)"
    );
    assert_eq!(
        survivor
            .presence("k")
            .await
            .unwrap()
            .iter()
            .map(|u| u.as_str())
            .collect::<Vec<_>>(),
        ["carol"]
    );
    survivor.shutdown().await;
}

/// Three `heartwire serve --reuse-port` processes on one port: the kernel spreads the
/// connections over them, and a room works across all three.
#[actix_rt::test]
async fn three_processes_share_one_port() {
    let Some(redis) = Redis::start(Persistence::None) else {
        return;
    };
    let url = redis.url();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let listen = format!("127.0.0.1:{port}");
    let args = ["--listen", &listen, "--reuse-port", "--broker", &url];
    let _nodes: Vec<Node> = (0..3)
        .map(|_| Node::spawn(&args).expect("node starts"))
        .collect();
    let addr: SocketAddr = listen.parse().unwrap();
    let mut clients = Vec::new();
    let mut node_ids = HashSet::new();
    for i in 0..24 {
        let (mut c, welcome) = Client::hello(addr, &format!("u{i}")).await;
        c.send(json!({"type": "subscribe", "room": "shared"})).await;
        c.expect_type("subscribed").await;
        let session = welcome["session"].as_str().unwrap().to_owned();
        node_ids.insert(session.rsplit_once('-').unwrap().0.to_owned());
        clients.push(c);
    }
    assert!(
        node_ids.len() >= 2,
        "every connection went to one process: {node_ids:?}"
    );
    let (mut publisher, _) = Client::hello(addr, "pub").await;
    publisher
        .send(json!({"type": "publish", "room": "shared", "id": "1", "data": 1}))
        .await;
    publisher.expect_type("ack").await;
    for c in &mut clients {
        assert_eq!(seqs(&messages(c, 1).await.0), [1]);
    }
}

/// Start-up: an unreachable store is a clear error and a non-zero exit, unless the node is
/// told to start degraded; then it reports not ready until the store is there.
#[actix_rt::test]
async fn an_unreachable_store_stops_the_start_unless_degraded_is_allowed() {
    let Some(mut redis) = Redis::start(Persistence::None) else {
        return;
    };
    let url = redis.url();
    redis.kill();
    let with_password = url.replace("redis://", "redis://bob:s3cret@");
    let error = Node::spawn(&["--listen", "127.0.0.1:0", "--broker", &with_password])
        .err()
        .expect("refuses to start");
    let shown = url.replace("redis://", "redis://bob:***@");
    assert!(
        error.contains("message store") && error.contains(&shown),
        "{error}"
    );
    assert!(!error.contains("s3cret"), "the password shows: {error}");
    assert!(error.ends_with("(exit status: 1)"), "{error}");

    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let node = Node::spawn(&[
        "--listen",
        "127.0.0.1:0",
        "--broker",
        &url,
        "--broker-start-degraded",
        "--http",
        &http,
    ])
    .expect("starts degraded");
    let readyz = || {
        let http = http.clone();
        async move {
            let client = awc::Client::default();
            let mut response = client
                .get(format!("http://{http}/readyz"))
                .send()
                .await
                .ok()?;
            let body: Value = response.json().await.ok()?;
            Some((response.status().as_u16(), body))
        }
    };
    let (status, body) = readyz().await.expect("readyz answers");
    assert_eq!(
        (status, body["reason"].clone()),
        (503, json!("store_unavailable"))
    );
    redis.restart();
    eventually("ready once the store is up", || async {
        matches!(readyz().await, Some((200, _)))
    })
    .await;
    let (mut c, _) = subscriber(node.addr, "late", "r").await;
    c.send(json!({"type": "publish", "room": "r", "id": "1", "data": 1}))
        .await;
    assert_eq!(seqs(&messages(&mut c, 1).await.0), [1]);
}
