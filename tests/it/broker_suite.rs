//! One suite for every broker: each case runs against the in-memory broker and against the
//! Redis broker over a real redis-server, and must see the same behaviour (sequencing,
//! dedupe, history and its completeness, presence by user, the session limit, the inbound
//! stream). Cases that need several nodes, or a store that fails, run against Redis only.

use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_util::stream::LocalBoxStream;
use futures_util::StreamExt;
use heartwire::broker::{
    Broker, BrokerConfig, BrokerEvent, HistoryLimits, MemoryBroker, PublishRequest, Published,
};
use heartwire::names::NameLimits;
use heartwire::{ByeReason, RoomName, UserName};
use serde_json::value::RawValue;

#[cfg(feature = "redis")]
use crate::common::redis::{Persistence, Redis};

const PATIENCE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
enum Backend {
    Memory,
    #[cfg(feature = "redis")]
    Redis,
}

/// The store of one case (none in memory) and how to make a node's broker over it.
struct Env {
    backend: Backend,
    limits: HistoryLimits,
    #[cfg(feature = "redis")]
    redis: Option<Redis>,
}

impl Env {
    /// `None` where the backend cannot run here (no redis-server, not required).
    fn new(backend: Backend, limits: HistoryLimits) -> Option<Env> {
        Some(Env {
            backend,
            limits,
            #[cfg(feature = "redis")]
            redis: match backend {
                Backend::Memory => None,
                Backend::Redis => Some(Redis::start(Persistence::None)?),
            },
        })
    }

    #[cfg(feature = "redis")]
    fn broker_config(&self) -> BrokerConfig {
        BrokerConfig {
            url: self.redis.as_ref().map(Redis::url),
            presence_ttl: Duration::from_secs(5),
            probe_interval: Duration::from_millis(100),
            command_timeout: Duration::from_millis(500),
            ..BrokerConfig::default()
        }
    }

    async fn broker(&self, node: &str) -> Rc<dyn Broker> {
        match self.backend {
            Backend::Memory => Rc::new(MemoryBroker::new(self.limits)),
            #[cfg(feature = "redis")]
            Backend::Redis => Rc::new(
                heartwire::testing::redis_broker(&self.broker_config(), self.limits, node)
                    .await
                    .expect("broker connects"),
            ),
        }
    }
}

fn limits(size: usize) -> HistoryLimits {
    HistoryLimits {
        size,
        ttl: Duration::from_secs(60),
    }
}

fn room(name: &str) -> RoomName {
    NameLimits::default().room(name).unwrap()
}

fn user(name: &str) -> UserName {
    UserName::new(name).unwrap()
}

fn request(r: &str, from: Option<&str>, id: Option<&str>, data: &str) -> PublishRequest {
    PublishRequest {
        room: room(r),
        from: from.map(user),
        data: RawValue::from_string(data.to_owned()).unwrap(),
        id: id.map(|i| NameLimits::default().id(i).unwrap()),
    }
}

async fn publish(b: &Rc<dyn Broker>, r: &str, from: Option<&str>, id: Option<&str>) -> Published {
    b.publish(request(r, from, id, "{\"n\":1}"))
        .await
        .expect("publish")
}

type Events = LocalBoxStream<'static, BrokerEvent>;

/// The next event that is not `Resumed` (which a Redis node emits once connected).
async fn next(events: &mut Events) -> BrokerEvent {
    loop {
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(BrokerEvent::Resumed)) => continue,
            Ok(Some(event)) => return event,
            Ok(None) => panic!("event stream ended"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }
}

async fn quiet(events: &mut Events, wait: Duration) {
    let until = Instant::now() + wait;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, events.next()).await {
            Err(_) => return,
            Ok(Some(BrokerEvent::Resumed)) => continue,
            Ok(other) => panic!("expected no event, got {other:?}"),
        }
    }
}

fn seq_of(event: &BrokerEvent) -> u64 {
    match event {
        BrokerEvent::Publication { seq, frame, .. } => {
            let frame: serde_json::Value = serde_json::from_slice(frame).unwrap();
            assert_eq!(frame["seq"], *seq, "the frame carries its seq");
            *seq
        }
        other => panic!("expected a publication, got {other:?}"),
    }
}

async fn publishes_in_order_to_subscribed_nodes(backend: Backend) {
    let Some(env) = Env::new(backend, limits(10)) else {
        return;
    };
    let b = env.broker("n1").await;
    let mut events = b.events();
    assert_eq!(publish(&b, "r", Some("a"), None).await.seq, 1);
    quiet(&mut events, Duration::from_millis(200)).await;
    b.subscribe_room(&room("r")).await.expect("subscribe");
    let published: Vec<Published> = futures_util::future::join_all(
        (0..20).map(|_| b.publish(request("r", Some("a"), None, "2"))),
    )
    .await
    .into_iter()
    .map(Result::unwrap)
    .collect();
    let mut seqs: Vec<u64> = published.iter().map(|p| p.seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (2..=21).collect::<Vec<_>>());
    for expected in 2..=21 {
        assert_eq!(seq_of(&next(&mut events).await), expected);
    }
    b.unsubscribe_room(&room("r"));
    // An unsubscribe is not confirmed; give it a moment to reach the store.
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&b, "r", Some("a"), None).await;
    quiet(&mut events, Duration::from_millis(200)).await;
}

async fn dedupes_per_user_and_for_the_server(backend: Backend) {
    let Some(env) = Env::new(backend, limits(10)) else {
        return;
    };
    let b = env.broker("n1").await;
    let mut events = b.events();
    b.subscribe_room(&room("r")).await.unwrap();
    let first = publish(&b, "r", Some("alice"), Some("x")).await;
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!(seq_of(&next(&mut events).await), 1);
    let again = publish(&b, "r", Some("alice"), Some("x")).await;
    assert_eq!(
        again,
        Published {
            duplicate: true,
            ..first.clone()
        }
    );
    let bob = publish(&b, "r", Some("bob"), Some("x")).await;
    assert_eq!((bob.seq, bob.duplicate), (2, false));
    let server = publish(&b, "r", None, Some("x")).await;
    assert_eq!((server.seq, server.duplicate), (3, false));
    assert!(publish(&b, "r", None, Some("x")).await.duplicate);
    assert_eq!(
        seq_of(&next(&mut events).await),
        2,
        "no event for a duplicate"
    );
    assert_eq!(seq_of(&next(&mut events).await), 3);
    quiet(&mut events, Duration::from_millis(200)).await;
}

async fn history_reports_position_and_completeness(backend: Backend) {
    let Some(env) = Env::new(backend, limits(3)) else {
        return;
    };
    let b = env.broker("n1").await;
    let mut events = b.events();
    b.subscribe_room(&room("r")).await.unwrap();
    let mut frames = Vec::new();
    for _ in 0..5 {
        publish(&b, "r", Some("a"), None).await;
        match next(&mut events).await {
            BrokerEvent::Publication { frame, .. } => frames.push(frame),
            other => panic!("{other:?}"),
        }
    }
    let r = room("r");
    let position = b.history(&r, None, None).await.unwrap();
    assert_eq!((position.top, position.entries.len()), (5, 0));
    let epoch = position.epoch.to_string();
    let recent = b.history(&r, Some(3), Some(&epoch)).await.unwrap();
    assert!(recent.complete);
    assert_eq!(
        recent.entries,
        vec![(4, frames[3].clone()), (5, frames[4].clone())]
    );
    let old = b.history(&r, Some(0), None).await.unwrap();
    assert!(!old.complete);
    assert_eq!(
        old.entries.iter().map(|e| e.0).collect::<Vec<_>>(),
        [3, 4, 5]
    );
    let other = b
        .history(&r, Some(3), Some("0123456789abcdef"))
        .await
        .unwrap();
    assert!(!other.complete && other.entries.is_empty());
    let current = b.history(&r, Some(5), Some(&epoch)).await.unwrap();
    assert!(current.complete && current.entries.is_empty());
    let ahead = b.history(&r, Some(9), Some(&epoch)).await.unwrap();
    assert!(!ahead.complete && ahead.entries.is_empty());
}

async fn history_ages_out(backend: Backend) {
    let limits = HistoryLimits {
        size: 10,
        ttl: Duration::from_millis(300),
    };
    let Some(env) = Env::new(backend, limits) else {
        return;
    };
    let b = env.broker("n1").await;
    publish(&b, "r", Some("a"), None).await;
    let fresh = b.history(&room("r"), Some(0), None).await.unwrap();
    assert!(fresh.complete);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let aged = b.history(&room("r"), Some(0), None).await.unwrap();
    assert_eq!((aged.top, aged.complete), (1, false));
    assert!(aged.entries.is_empty());
}

async fn a_room_keeps_the_epoch_its_first_read_gave_it(backend: Backend) {
    let Some(env) = Env::new(backend, limits(10)) else {
        return;
    };
    let b = env.broker("n1").await;
    assert_eq!(b.room_stream(&room("r")).await.unwrap(), None);
    let read = b.history(&room("r"), None, None).await.unwrap();
    assert_eq!(read.top, 0);
    let published = publish(&b, "r", None, None).await;
    assert_eq!((published.seq, &published.epoch), (1, &read.epoch));
    let stream = b.room_stream(&room("r")).await.unwrap().expect("known");
    assert_eq!(
        (stream.seq, &stream.epoch, stream.history_len),
        (1, &read.epoch, 1)
    );
}

async fn presence_follows_users_not_sessions(backend: Backend) {
    let Some(env) = Env::new(backend, limits(1)) else {
        return;
    };
    let b = env.broker("n1").await;
    let mut events = b.events();
    let r = room("r");
    b.subscribe_room(&r).await.unwrap();
    let (alice, bob) = (user("alice"), user("bob"));
    b.presence_add(&r, &alice, "n1-1").await.unwrap();
    assert_eq!(
        presence_event(next(&mut events).await),
        ("join", alice.clone())
    );
    b.presence_add(&r, &alice, "n1-2").await.unwrap();
    b.presence_add(&r, &bob, "n1-3").await.unwrap();
    assert_eq!(
        presence_event(next(&mut events).await),
        ("join", bob.clone())
    );
    assert_eq!(b.presence(&r).await.unwrap(), [alice.clone(), bob.clone()]);
    b.presence_remove(&r, &alice, "n1-1").await.unwrap();
    quiet(&mut events, Duration::from_millis(100)).await;
    b.presence_remove(&r, &alice, "n1-2").await.unwrap();
    assert_eq!(presence_event(next(&mut events).await), ("leave", alice));
    assert_eq!(b.presence(&r).await.unwrap(), [bob]);
}

fn presence_event(event: BrokerEvent) -> (&'static str, UserName) {
    match event {
        BrokerEvent::Joined { room: r, user } if r == room("r") => ("join", user),
        BrokerEvent::Left { room: r, user } if r == room("r") => ("leave", user),
        other => panic!("expected a presence event, got {other:?}"),
    }
}

async fn claims_respect_the_limit(backend: Backend) {
    let Some(env) = Env::new(backend, limits(1)) else {
        return;
    };
    let b = env.broker("n1").await;
    let u = user("u");
    assert!(b.claim_session(&u, "n1-1", 2).await.unwrap());
    assert!(b.claim_session(&u, "n1-2", 2).await.unwrap());
    assert!(!b.claim_session(&u, "n1-3", 2).await.unwrap());
    assert!(
        b.claim_session(&u, "n1-2", 2).await.unwrap(),
        "a claim again"
    );
    b.release_session(&u, "n1-1");
    // A release is not awaited; the next claim may race it by a round trip.
    let until = Instant::now() + PATIENCE;
    while !b.claim_session(&u, "n1-3", 2).await.unwrap() {
        assert!(Instant::now() < until, "the release never landed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(b.claim_session(&u, "n1-9", 0).await.unwrap(), "0: no limit");
}

async fn a_new_event_stream_takes_over(backend: Backend) {
    let Some(env) = Env::new(backend, limits(10)) else {
        return;
    };
    let b = env.broker("n1").await;
    let mut old = b.events();
    b.subscribe_room(&room("r")).await.unwrap();
    let mut new = b.events();
    // The registry that takes over subscribes to what it needs.
    b.subscribe_room(&room("r")).await.unwrap();
    publish(&b, "r", None, None).await;
    assert_eq!(seq_of(&next(&mut new).await), 1);
    match tokio::time::timeout(Duration::from_millis(200), old.next()).await {
        Err(_) | Ok(None) | Ok(Some(BrokerEvent::Resumed)) => {}
        Ok(Some(other)) => panic!("the old stream still gets {other:?}"),
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod memory {
            $(
                #[actix_rt::test]
                async fn $case() {
                    super::$case(super::Backend::Memory).await;
                }
            )*
        }
        #[cfg(feature = "redis")]
        mod redis {
            $(
                #[actix_rt::test]
                async fn $case() {
                    super::$case(super::Backend::Redis).await;
                }
            )*
        }
    };
}

suite!(
    publishes_in_order_to_subscribed_nodes,
    dedupes_per_user_and_for_the_server,
    history_reports_position_and_completeness,
    history_ages_out,
    a_room_keeps_the_epoch_its_first_read_gave_it,
    presence_follows_users_not_sessions,
    claims_respect_the_limit,
    a_new_event_stream_takes_over,
);

/// Several nodes and a store that fails: Redis only.
#[cfg(feature = "redis")]
mod nodes {
    use super::*;

    #[actix_rt::test]
    async fn nodes_share_streams_users_and_kicks() {
        let Some(env) = Env::new(Backend::Redis, limits(10)) else {
            return;
        };
        let a = env.broker("a").await;
        let b = env.broker("b").await;
        let (mut ea, mut eb) = (a.events(), b.events());
        b.subscribe_room(&room("r")).await.unwrap();
        let published = publish(&a, "r", Some("x"), Some("1")).await;
        assert_eq!(seq_of(&next(&mut eb).await), published.seq);
        let dup = publish(&b, "r", Some("x"), Some("1")).await;
        assert!(dup.duplicate, "a resend to another node is a duplicate");

        let alice = user("alice");
        assert!(a.claim_session(&alice, "a-1", 0).await.unwrap());
        assert!(b.claim_session(&alice, "b-1", 0).await.unwrap());
        assert!(b.claim_session(&alice, "b-2", 0).await.unwrap());
        assert!(
            !a.claim_session(&alice, "a-2", 3).await.unwrap(),
            "the limit counts every node"
        );
        a.subscribe_user(&alice).await.unwrap();
        b.subscribe_user(&alice).await.unwrap();
        let frame = bytes::Bytes::from_static(b"{\"type\":\"message\",\"from\":null,\"data\":1}\n");
        assert_eq!(a.send_to_others(&alice, frame.clone()).await.unwrap(), 2);
        match next(&mut eb).await {
            BrokerEvent::Direct { user, frame: got } => {
                assert_eq!((user, got), (alice.clone(), frame));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(b.kick_others(&alice, ByeReason::Kicked).await.unwrap(), 1);
        match next(&mut ea).await {
            BrokerEvent::Kick { user, reason } => {
                assert_eq!((user, reason), (alice.clone(), ByeReason::Kicked));
            }
            other => panic!("{other:?}"),
        }
        a.kick_session_others("b-7", ByeReason::Kicked)
            .await
            .unwrap();
        match next(&mut eb).await {
            BrokerEvent::KickSession { session, .. } => assert_eq!(session, "b-7"),
            other => panic!("{other:?}"),
        }
        // Nothing came back to the node that sent.
        quiet(&mut ea, Duration::from_millis(200)).await;
        quiet(&mut eb, Duration::from_millis(100)).await;
    }

    #[actix_rt::test]
    async fn presence_counts_a_user_across_nodes() {
        let Some(env) = Env::new(Backend::Redis, limits(1)) else {
            return;
        };
        let a = env.broker("a").await;
        let b = env.broker("b").await;
        let mut eb = b.events();
        let r = room("r");
        b.subscribe_room(&r).await.unwrap();
        let alice = user("alice");
        a.presence_add(&r, &alice, "a-1").await.unwrap();
        assert!(matches!(next(&mut eb).await, BrokerEvent::Joined { .. }));
        b.presence_add(&r, &alice, "b-1").await.unwrap();
        a.presence_remove(&r, &alice, "a-1").await.unwrap();
        quiet(&mut eb, Duration::from_millis(200)).await;
        b.presence_remove(&r, &alice, "b-1").await.unwrap();
        assert!(matches!(next(&mut eb).await, BrokerEvent::Left { .. }));
    }

    #[actix_rt::test]
    async fn a_lost_subscription_is_announced_and_restored() {
        let Some(env) = Env::new(Backend::Redis, limits(10)) else {
            return;
        };
        let b = env.broker("n1").await;
        let mut events = b.events();
        b.subscribe_room(&room("r")).await.unwrap();
        publish(&b, "r", None, None).await;
        assert_eq!(seq_of(&next(&mut events).await), 1);
        let redis = env.redis.as_ref().unwrap();
        assert_eq!(redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]), "1");
        assert!(matches!(next(&mut events).await, BrokerEvent::Interrupted));
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(BrokerEvent::Resumed)) => {}
            other => panic!("expected Resumed, got {other:?}"),
        }
        assert!(b.healthy());
        publish(&b, "r", None, None).await;
        assert_eq!(seq_of(&next(&mut events).await), 2, "resubscribed");
    }

    #[actix_rt::test]
    async fn a_paused_store_is_noticed_by_the_probe_and_calls_fail_fast() {
        let Some(env) = Env::new(Backend::Redis, limits(10)) else {
            return;
        };
        let b = env.broker("n1").await;
        let mut events = b.events();
        b.subscribe_room(&room("r")).await.unwrap();
        let redis = env.redis.as_ref().unwrap();
        redis.pause();
        // Nothing closes: only the probe (100 ms) can tell.
        assert!(matches!(next(&mut events).await, BrokerEvent::Interrupted));
        assert!(!b.healthy());
        let started = Instant::now();
        let failed = b.publish(request("r", None, None, "1")).await;
        assert!(
            matches!(failed, Err(heartwire::broker::BrokerError::Unavailable(_))),
            "{failed:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        redis.resume();
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(BrokerEvent::Resumed)) => {}
            other => panic!("expected Resumed, got {other:?}"),
        }
        let until = Instant::now() + PATIENCE;
        while !b.healthy() {
            assert!(Instant::now() < until, "never healthy again");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = publish(&b, "r", None, None).await;
        assert_eq!(seq_of(&next(&mut events).await), after.seq);
    }

    #[actix_rt::test]
    async fn a_registry_that_falls_behind_is_told_to_check_its_rooms() {
        let Some(env) = Env::new(Backend::Redis, limits(10)) else {
            return;
        };
        let b = env.broker("n1").await;
        let mut events = b.events();
        b.subscribe_room(&room("r")).await.unwrap();
        // More than the node's queue holds, with nobody reading it.
        let total = 17 * 1024;
        for _ in 0..total / 256 {
            let batch = (0..256).map(|_| b.publish(request("r", None, None, "0")));
            for published in futures_util::future::join_all(batch).await {
                published.unwrap();
            }
        }
        let mut last = 0;
        loop {
            match tokio::time::timeout(PATIENCE, events.next()).await {
                Ok(Some(BrokerEvent::Publication { seq, .. })) => {
                    assert!(seq > last, "in order");
                    last = seq;
                }
                Ok(Some(BrokerEvent::Resumed)) if last == 0 => {}
                Ok(Some(BrokerEvent::Interrupted)) => break,
                other => panic!("unexpected {other:?} after seq {last}"),
            }
        }
        assert!(
            last < total as u64,
            "some were dropped, and the registry is told"
        );
        match tokio::time::timeout(PATIENCE, events.next()).await {
            Ok(Some(BrokerEvent::Resumed)) => {}
            other => panic!("expected Resumed, got {other:?}"),
        }
        let after = publish(&b, "r", None, None).await;
        assert_eq!(seq_of(&next(&mut events).await), after.seq);
    }
}
