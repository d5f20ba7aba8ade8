//! Application hooks and claims, over real sockets: each hook accepting, rejecting and
//! rewriting, the order of a session's frames across a slow hook, timeouts with either
//! failure policy, hooks written as closures and as actors (the shipped
//! `examples/hooks.rs`), and the token's claims on presence, application frames and sends.
//! HTTP hooks are in `http.rs`; the flood that must not grow the server's memory in `flood.rs`.

#[path = "../../../examples/hooks.rs"]
#[allow(dead_code)]
mod example;

#[cfg(all(feature = "hooks-http", feature = "http"))]
mod http;

#[cfg(feature = "cli")]
mod flood;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use heartwire::hooks::{
    ConnectAccept, ConnectDecision, ConnectRequest, Decision, FailurePolicy, HookError,
    HooksConfig, MessageDecision, PublishRequest, Rejection, SendRequest, SubscribeRequest,
};
use heartwire::{AppFrame, Config, ErrorCode, ServerBuilder, ServerHandle, Session, UserName};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::common::{subscriber, Client};

/// The suite's config with a hook timeout no loaded machine reaches by accident; tests of
/// timeouts set their own.
fn config() -> Config {
    with_hooks(HooksConfig {
        timeout: Duration::from_secs(5),
        ..HooksConfig::default()
    })
}

fn start(builder: ServerBuilder) -> ServerHandle {
    builder.start().expect("server starts")
}

fn with_hooks(hooks: HooksConfig) -> Config {
    Config {
        hooks,
        ..crate::common::config()
    }
}

/// Asserts the next non-ping frame is `error{code, id}` and returns its message.
async fn expect_error(c: &mut Client, code: &str, id: Option<&str>) -> String {
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["id"].as_str(), id, "{e}");
    e["message"].as_str().unwrap_or_default().to_owned()
}

/// The value of a metric line (`name{labels}`), 0 when absent.
async fn metric(server: &ServerHandle, series: &str) -> u64 {
    let text = server.render_metrics().await.expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// Says hello with `token` (and `user`, if any) and returns the client and its welcome.
async fn hello_token(
    addr: std::net::SocketAddr,
    token: &str,
    user: Option<&str>,
) -> (Client, Value) {
    let mut c = Client::connect(addr).await;
    c.send(json!({"type": "hello", "token": token, "user": user}))
        .await;
    let welcome = c.recv_type("welcome").await;
    (c, welcome)
}

fn calls(hook: &str, outcome: &str) -> String {
    format!("heartwire_hook_calls_total{{hook=\"{hook}\",outcome=\"{outcome}\"}}")
}

#[actix_rt::test]
async fn connect_hook_sets_the_user_and_meta_that_handlers_and_hooks_read() {
    let moderator = example::Moderator::default().start();
    let server = start(example::with_hooks(
        ServerBuilder::new(config()),
        example::Directory::sample(),
        moderator.clone(),
    ));
    let addr = server.local_addr();
    // The token is the application's own (no JWT configured): only the hook understands it.
    let (mut alice, welcome) = hello_token(addr, "t-alice", Some("mallory")).await;
    assert_eq!(welcome["user"], "alice", "the hook's user wins");
    alice.send(json!({"type": "whoami", "id": "w"})).await;
    assert_eq!(
        alice.recv_non_ping().await,
        json!({"type": "whoami", "id": "w", "user": "alice", "display": "Alice Liddell",
            "role": "member"})
    );

    // The publish hook (an actor) reads the meta: it signs and masks; it refuses banned words.
    let (mut sam, _) = hello_token(addr, "t-sam", None).await;
    sam.send(json!({"type": "subscribe", "room": "mod:lobby"}))
        .await;
    sam.recv_type("subscribed").await;
    alice
        .send(json!({"type": "subscribe", "room": "mod:lobby"}))
        .await;
    alice.recv_type("subscribed").await;
    alice
        .send(json!({"type": "publish", "room": "mod:lobby", "data": {"text": "darn printers"}, "id": "m1"}))
        .await;
    let expected = json!({"text": "d**n printers", "by": "Alice Liddell"});
    let m = sam.recv_type("message").await;
    assert_eq!((&m["data"], &m["from"]), (&expected, &json!("alice")));
    assert_eq!(alice.recv_type("message").await["data"], expected);
    assert_eq!(alice.recv_type("ack").await["id"], "m1");
    alice
        .send(json!({"type": "publish", "room": "mod:lobby", "data": {"text": "cheap SPAM"}, "id": "m2"}))
        .await;
    let message = expect_error(&mut alice, "forbidden", Some("m2")).await;
    assert!(message.contains("spam"), "{message}");
    alice
        .send(json!({"type": "publish", "room": "mod:lobby", "data": 7, "id": "m3"}))
        .await;
    expect_error(&mut alice, "bad_request", Some("m3")).await;
    sam.expect_silence(Duration::from_millis(100)).await;
    assert_eq!(moderator.send(example::Refused).await.unwrap(), 1);

    // The rooms the hook gave a member: `mod:*` and `lobby`, not `staff`.
    alice
        .send(json!({"type": "subscribe", "room": "staff"}))
        .await;
    expect_error(&mut alice, "forbidden", None).await;

    assert_eq!(metric(&server, &calls("connect", "accept")).await, 2);
    assert_eq!(metric(&server, &calls("publish", "replace")).await, 1);
    assert_eq!(metric(&server, &calls("publish", "reject")).await, 2);
}

#[actix_rt::test]
async fn connect_hook_rejection_is_unauthorized_then_bye() {
    let moderator = example::Moderator::default().start();
    let server = start(example::with_hooks(
        ServerBuilder::new(config()),
        example::Directory::sample(),
        moderator,
    ));
    for hello in [
        json!({"type": "hello", "token": "stolen", "user": "alice"}),
        json!({"type": "hello", "user": "alice"}),
    ] {
        let mut c = Client::connect(server.local_addr()).await;
        c.send(hello.clone()).await;
        let frames = c.until_closed().await;
        assert_eq!(frames.len(), 2, "{hello}: {frames:?}");
        assert_eq!(frames[0]["code"], "unauthorized", "{frames:?}");
        assert!(frames[0]["message"].as_str().unwrap().contains("token"));
        assert_eq!(frames[1], json!({"type": "bye", "reason": "unauthorized"}));
    }
    assert_eq!(metric(&server, &calls("connect", "reject")).await, 2);
    assert_eq!(metric(&server, &calls("connect", "accept")).await, 0);
}

#[actix_rt::test]
async fn connect_hook_that_names_no_user_refuses_and_can_narrow_rooms_and_sends() {
    let server = start(ServerBuilder::new(config()).on_connect(
        |hello: ConnectRequest| async move {
            match hello.user.as_deref() {
                // Accepts, yet nobody said who this is.
                None => ConnectDecision::accept(),
                Some(_) => ConnectDecision::Accept(
                    ConnectAccept::default()
                        .rooms(["lobby", "team-*"])
                        .send(["ops"]),
                ),
            }
        },
    ));
    let addr = server.local_addr();
    let mut anon = Client::connect(addr).await;
    anon.send(json!({"type": "hello"})).await;
    let frames = anon.until_closed().await;
    assert_eq!(frames[0]["code"], "unauthorized");
    assert_eq!(frames[1]["reason"], "unauthorized");

    let (_ops, _) = Client::hello(addr, "ops").await;
    let (mut c, _) = Client::hello(addr, "carol").await;
    c.send(json!({"type": "subscribe", "room": "team-1"})).await;
    c.recv_type("subscribed").await;
    c.send(json!({"type": "subscribe", "room": "admin"})).await;
    expect_error(&mut c, "forbidden", None).await;
    c.send(json!({"type": "send", "to": "ops", "data": 1, "id": "s1"}))
        .await;
    assert_eq!(
        c.recv_type("ack").await,
        json!({"type": "ack", "id": "s1", "delivered": 1})
    );
    c.send(json!({"type": "send", "to": "bob", "data": 1, "id": "s2"}))
        .await;
    expect_error(&mut c, "forbidden", Some("s2")).await;
}

#[actix_rt::test]
async fn subscribe_hook_accepts_rejects_with_its_code_and_sees_only_what_claims_allow() {
    let asked = Arc::new(AtomicUsize::new(0));
    let counter = asked.clone();
    let server = start(
        ServerBuilder::new(config())
            .on_connect(|_hello: ConnectRequest| async {
                ConnectDecision::Accept(ConnectAccept::default().rooms(["open-*", "vip-*"]))
            })
            .on_subscribe(move |s: SubscribeRequest| {
                counter.fetch_add(1, Ordering::Relaxed);
                async move {
                    match s.room.as_str() {
                        r if r.starts_with("vip-") => {
                            Decision::Reject(Rejection::forbidden("vip rooms need a plan"))
                        }
                        "open-busy" => Decision::Reject(Rejection::new(
                            ErrorCode::RateLimited,
                            "try again in a minute",
                        )),
                        _ => Decision::Accept,
                    }
                }
            }),
    );
    let (mut c, _) = Client::hello(server.local_addr(), "dan").await;
    c.send(json!({"type": "subscribe", "room": "open-1"})).await;
    assert_eq!(c.recv_type("subscribed").await["room"], "open-1");
    c.send(json!({"type": "subscribe", "room": "vip-1"})).await;
    assert_eq!(
        expect_error(&mut c, "forbidden", None).await,
        "vip rooms need a plan"
    );
    c.send(json!({"type": "subscribe", "room": "open-busy"}))
        .await;
    expect_error(&mut c, "rate_limited", None).await;
    // Refused by the claims: the hook is not asked.
    c.send(json!({"type": "subscribe", "room": "elsewhere"}))
        .await;
    expect_error(&mut c, "forbidden", None).await;
    assert_eq!(asked.load(Ordering::Relaxed), 3);

    // A refused subscription is no membership: a push to the room does not reach it.
    server.publish("vip-1", &json!("psst"), None).await.unwrap();
    server.publish("open-1", &json!("hi"), None).await.unwrap();
    assert_eq!(c.recv_type("message").await["room"], "open-1");
}

async fn moderating_publish_hook(p: PublishRequest) -> MessageDecision {
    let text: Value = serde_json::from_str(p.data.get()).unwrap_or(Value::Null);
    match text.as_str() {
        Some("forbidden") => MessageDecision::Reject(Rejection::forbidden("not here")),
        Some("odd") => MessageDecision::Reject(Rejection::new(ErrorCode::BadRequest, "too odd")),
        Some(t) if t.starts_with("shout ") => MessageDecision::replace(&t.to_uppercase()).unwrap(),
        Some("huge") => MessageDecision::replace(&"x".repeat(100_000)).unwrap(),
        _ => MessageDecision::Accept,
    }
}

#[actix_rt::test]
async fn publish_hook_accepts_rejects_and_rewrites() {
    let server = start(ServerBuilder::new(config()).on_publish(moderating_publish_hook));
    let addr = server.local_addr();
    let (mut reader, _) = subscriber(addr, "reader", "r").await;
    let (mut w, _) = Client::hello(addr, "writer").await;
    for (data, id) in [("fine", "p1"), ("shout hello", "p2")] {
        w.send(json!({"type": "publish", "room": "r", "data": data, "id": id}))
            .await;
        assert_eq!(w.recv_type("ack").await["id"], id);
    }
    assert_eq!(reader.recv_type("message").await["data"], "fine");
    let m = reader.recv_type("message").await;
    assert_eq!(
        (&m["data"], &m["seq"], &m["id"]),
        (&json!("SHOUT HELLO"), &json!(2), &json!("p2"))
    );
    w.send(json!({"type": "publish", "room": "r", "data": "forbidden", "id": "p3"}))
        .await;
    assert_eq!(
        expect_error(&mut w, "forbidden", Some("p3")).await,
        "not here"
    );
    w.send(json!({"type": "publish", "room": "r", "data": "odd", "id": "p4"}))
        .await;
    expect_error(&mut w, "bad_request", Some("p4")).await;
    // A rewrite past max_frame is refused like an oversized publish, never delivered.
    w.send(json!({"type": "publish", "room": "r", "data": "huge", "id": "p5"}))
        .await;
    let message = expect_error(&mut w, "bad_request", Some("p5")).await;
    assert!(message.contains("max_frame"), "{message}");
    reader.expect_silence(Duration::from_millis(100)).await;
    // Nothing refused took a seq.
    w.send(json!({"type": "publish", "room": "r", "data": "fine", "id": "p6"}))
        .await;
    assert_eq!(
        w.recv_type("ack").await,
        json!({"type": "ack", "id": "p6", "seq": 3})
    );
}

#[actix_rt::test]
async fn send_hook_accepts_rejects_and_rewrites() {
    let server = start(
        ServerBuilder::new(config()).on_send(|s: SendRequest| async move {
            match s.to.as_str() {
                "vault" => MessageDecision::Reject(Rejection::forbidden("the vault is closed")),
                _ => MessageDecision::replace(&json!({
                    "from_session": &*s.caller.session,
                    "original": s.data,
                }))
                .unwrap(),
            }
        }),
    );
    let addr = server.local_addr();
    let (mut bob, _) = Client::hello(addr, "bob").await;
    let (mut a, welcome) = Client::hello(addr, "alice").await;
    a.send(json!({"type": "send", "to": "bob", "data": {"hi": 1}, "id": "s1"}))
        .await;
    assert_eq!(
        a.recv_type("ack").await,
        json!({"type": "ack", "id": "s1", "delivered": 1})
    );
    let m = bob.recv_type("message").await;
    assert_eq!(
        m["data"],
        json!({"from_session": welcome["session"], "original": {"hi": 1}})
    );
    a.send(json!({"type": "send", "to": "vault", "data": 1, "id": "s2"}))
        .await;
    expect_error(&mut a, "forbidden", Some("s2")).await;
    assert_eq!(metric(&server, &calls("send", "replace")).await, 1);
    assert_eq!(metric(&server, &calls("send", "reject")).await, 1);
}

#[actix_rt::test]
async fn frames_keep_their_order_across_a_slow_hook_and_other_sessions_go_on() {
    // The hook holds "slow" publishes until the test releases them.
    let gate = Arc::new(Semaphore::new(0));
    let held = gate.clone();
    let server = start(
        ServerBuilder::new(config()).on_publish(move |p: PublishRequest| {
            let held = held.clone();
            async move {
                if p.data.get().contains("slow") {
                    let _permit = held.acquire().await;
                }
                MessageDecision::Accept
            }
        }),
    );
    let addr = server.local_addr();
    let (mut a, _) = subscriber(addr, "a", "r").await;
    let (mut b, _) = subscriber(addr, "b", "r").await;
    let pipelined = [
        json!({"type": "publish", "room": "r", "data": "slow", "id": "a1"}),
        json!({"type": "publish", "room": "r", "data": "fast", "id": "a2"}),
        json!({"type": "ping", "seq": 7}),
        json!({"type": "unsubscribe", "room": "r"}),
    ];
    let lines: String = pipelined.iter().map(|f| format!("{f}\n")).collect();
    a.send_raw(lines.as_bytes()).await;

    // While a's hook waits, the registry serves everyone else: hooks are off its path.
    b.send(json!({"type": "publish", "room": "r", "data": "other", "id": "b1"}))
        .await;
    assert_eq!(b.recv_type("message").await["data"], "other");
    assert_eq!(b.recv_type("ack").await["id"], "b1");
    assert_eq!(a.recv_type("message").await["data"], "other");
    a.expect_silence(Duration::from_millis(200)).await;

    gate.add_permits(1);
    let mut seen = Vec::new();
    for _ in 0..6 {
        let f = a.recv_non_ping().await;
        seen.push(format!(
            "{} {}",
            f["type"].as_str().unwrap(),
            f.get("id")
                .or(f.get("seq"))
                .or(f.get("room"))
                .unwrap_or(&Value::Null)
        ));
    }
    assert_eq!(
        seen,
        [
            "message \"a1\"",
            "ack \"a1\"",
            "message \"a2\"",
            "ack \"a2\"",
            "pong 7",
            "unsubscribed \"r\""
        ]
    );
}

#[actix_rt::test]
async fn hook_timeout_denies_by_default() {
    let server = start(
        ServerBuilder::new(with_hooks(HooksConfig {
            timeout: Duration::from_millis(100),
            ..HooksConfig::default()
        }))
        .on_publish(|p: PublishRequest| async move {
            if p.data.get().contains("hang") {
                std::future::pending::<()>().await;
            }
            MessageDecision::Accept
        }),
    );
    let addr = server.local_addr();
    let (mut reader, _) = subscriber(addr, "reader", "r").await;
    let (mut w, _) = Client::hello(addr, "writer").await;
    let started = Instant::now();
    w.send(json!({"type": "publish", "room": "r", "data": "hang", "id": "h1"}))
        .await;
    let message = expect_error(&mut w, "internal", Some("h1")).await;
    assert!(message.contains("publish hook"), "{message}");
    assert!(started.elapsed() >= Duration::from_millis(100));
    // The session goes on.
    w.send(json!({"type": "publish", "room": "r", "data": "ok", "id": "h2"}))
        .await;
    assert_eq!(w.recv_type("ack").await["id"], "h2");
    assert_eq!(reader.recv_type("message").await["data"], "ok");
    assert_eq!(metric(&server, &calls("publish", "timeout")).await, 1);
    let histogram = "heartwire_hook_duration_seconds_count{hook=\"publish\"}";
    assert_eq!(metric(&server, histogram).await, 2);
}

#[actix_rt::test]
async fn hook_timeout_allows_when_configured() {
    let server = start(
        ServerBuilder::new(with_hooks(HooksConfig {
            timeout: Duration::from_millis(100),
            on_failure: FailurePolicy::Allow,
            ..HooksConfig::default()
        }))
        .on_connect(|_hello: ConnectRequest| std::future::pending())
        .on_publish(|_p: PublishRequest| std::future::pending()),
    );
    let (mut c, welcome) = Client::hello(server.local_addr(), "patient").await;
    assert_eq!(welcome["user"], "patient");
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    c.recv_type("subscribed").await;
    c.send(json!({"type": "publish", "room": "r", "data": 1, "id": "x"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"], 1);
    assert_eq!(c.recv_type("ack").await["id"], "x");
    assert_eq!(metric(&server, &calls("connect", "timeout")).await, 1);
    assert_eq!(metric(&server, &calls("publish", "timeout")).await, 1);
}

#[actix_rt::test]
async fn connect_hook_timeout_denies_with_a_reconnect_hint() {
    let server = start(
        ServerBuilder::new(Config {
            shutdown_reconnect: Duration::from_millis(400),
            ..with_hooks(HooksConfig {
                timeout: Duration::from_millis(50),
                ..HooksConfig::default()
            })
        })
        .on_connect(|_hello: ConnectRequest| std::future::pending()),
    );
    let mut c = Client::connect(server.local_addr()).await;
    c.send(json!({"type": "hello", "user": "x"})).await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert_eq!(frames[0]["code"], "unauthorized");
    assert_eq!(frames[1]["reason"], "unauthorized");
    let hint = frames[1]["reconnect_ms"].as_u64().expect("reconnect_ms");
    assert!((400..=800).contains(&hint), "{hint}");
}

#[actix_rt::test]
async fn a_panicking_hook_is_a_failure_and_the_session_lives_on() {
    // One worker: the session that closes next runs on the thread where the hook panicked.
    let server = start(
        ServerBuilder::new(Config {
            workers: 1,
            ..config()
        })
        .on_publish(|p: PublishRequest| async move {
            assert!(!p.data.get().contains("boom"), "the hook's own bug");
            MessageDecision::Accept
        }),
    );
    let (mut c, _) = subscriber(server.local_addr(), "u", "r").await;
    c.send(json!({"type": "publish", "room": "r", "data": "boom", "id": "1"}))
        .await;
    expect_error(&mut c, "internal", Some("1")).await;
    c.send(json!({"type": "publish", "room": "r", "data": "fine", "id": "2"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"], "fine");
    assert_eq!(metric(&server, &calls("publish", "error")).await, 1);
    // A clean close afterwards is not taken for a crash.
    c.send(json!({"type": "bye"})).await;
    c.until_closed().await;
    let server = &server;
    crate::common::eventually("the session is gone", || async move {
        metric(server, "heartwire_connections").await == 0
    })
    .await;
    assert_eq!(metric(server, "heartwire_session_panics_total").await, 0);
}

#[actix_rt::test]
async fn allowing_a_failed_connect_hook_still_needs_a_user() {
    let server = start(
        ServerBuilder::new(with_hooks(HooksConfig {
            timeout: Duration::from_millis(50),
            on_failure: FailurePolicy::Allow,
            ..HooksConfig::default()
        }))
        .on_connect(|_hello: ConnectRequest| std::future::pending()),
    );
    let mut c = Client::connect(server.local_addr()).await;
    c.send(json!({"type": "hello", "token": "opaque"})).await;
    let frames = c.until_closed().await;
    assert_eq!(frames[0]["code"], "unauthorized", "{frames:?}");
    assert!(frames[1]["reconnect_ms"].is_u64(), "{frames:?}");
}

/// A hook actor that stops when told; a stopped hook is a failure, not a decision.
struct Fragile;

impl Actor for Fragile {
    type Context = Context<Self>;
}

impl Handler<SendRequest> for Fragile {
    type Result = Result<MessageDecision, HookError>;

    fn handle(&mut self, s: SendRequest, ctx: &mut Context<Self>) -> Self::Result {
        if s.to.as_str() == "stop" {
            ctx.stop();
            return Err(HookError::new("stopping"));
        }
        Ok(MessageDecision::Accept)
    }
}

#[actix_rt::test]
async fn a_stopped_hook_actor_counts_as_a_failure() {
    let fragile = Fragile.start();
    let server = start(ServerBuilder::new(config()).hook(fragile.recipient::<SendRequest>()));
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send(json!({"type": "send", "to": "anyone", "data": 1, "id": "1"}))
        .await;
    assert_eq!(c.recv_type("ack").await["id"], "1");
    c.send(json!({"type": "send", "to": "stop", "data": 1, "id": "2"}))
        .await;
    expect_error(&mut c, "internal", Some("2")).await;
    c.send(json!({"type": "send", "to": "anyone", "data": 1, "id": "3"}))
        .await;
    expect_error(&mut c, "internal", Some("3")).await;
    assert_eq!(metric(&server, &calls("send", "error")).await, 2);
}

#[actix_rt::test]
async fn auth_send_default_governs_sends_without_a_claim() {
    let server = start(ServerBuilder::new(Config {
        auth: heartwire::AuthConfig {
            send: heartwire::SendPolicy::Users(vec!["bot-*".into()]),
            ..heartwire::AuthConfig::default()
        },
        ..config()
    }));
    let addr = server.local_addr();
    let (mut bot, _) = Client::hello(addr, "bot-1").await;
    let (mut c, _) = Client::hello(addr, "u").await;
    c.send(json!({"type": "send", "to": "bot-1", "data": "hi", "id": "1"}))
        .await;
    assert_eq!(c.recv_type("ack").await["delivered"], 1);
    assert_eq!(bot.recv_type("message").await["data"], "hi");
    c.send(json!({"type": "send", "to": "bob", "data": "hi", "id": "2"}))
        .await;
    expect_error(&mut c, "forbidden", Some("2")).await;
}

/// `{"type":"note","room":R,"id":…}` for a room the handler checks with `allowed_room`, and
/// `{"type":"careless","room":R}` for one it builds with `names()` and broadcasts to as is.
fn room_frames(builder: ServerBuilder) -> ServerBuilder {
    fn room_of(frame: &AppFrame) -> String {
        frame
            .parse::<Value>()
            .ok()
            .and_then(|v| v["room"].as_str().map(String::from))
            .unwrap_or_default()
    }
    builder
        .frame_handler(
            "note",
            |s: &mut Session, ctx: &mut Context<Session>, f: AppFrame| {
                if let Some(room) = s.allowed_room(&room_of(&f), f.id.as_deref()) {
                    let note = heartwire::protocol::encode_line(&json!({"type": "note"}));
                    s.broadcast(ctx, &room, note);
                }
            },
        )
        .frame_handler(
            "careless",
            |s: &mut Session, ctx: &mut Context<Session>, f: AppFrame| {
                if let Ok(room) = s.names().room(&room_of(&f)) {
                    let note = heartwire::protocol::encode_line(&json!({"type": "careless"}));
                    s.broadcast(ctx, &room, note);
                }
            },
        )
        .frame_handler(
            "dm",
            |s: &mut Session, _: &mut Context<Session>, f: AppFrame| {
                let to = f
                    .parse::<Value>()
                    .ok()
                    .and_then(|v| v["to"].as_str().map(String::from))
                    .unwrap_or_default();
                if let Some(to) = s.allowed_recipient(&to, f.id.as_deref()) {
                    s.send_frame(&json!({"type": "dm", "ok": to}));
                }
            },
        )
}

#[actix_rt::test]
async fn connect_hook_rooms_govern_presence_and_application_frames() {
    let server = start(room_frames(ServerBuilder::new(config())).on_connect(
        |hello: ConnectRequest| async move {
            match hello.user.as_deref() {
                Some("insider") => ConnectDecision::accept(),
                _ => ConnectDecision::Accept(
                    ConnectAccept::default().rooms(["public"]).send(["friend"]),
                ),
            }
        },
    ));
    let addr = server.local_addr();
    let (mut insider, _) = subscriber(addr, "insider", "private:board").await;
    let (mut c, _) = Client::hello(addr, "outsider").await;
    c.send(json!({"type": "presence", "room": "private:board", "id": "q"}))
        .await;
    expect_error(&mut c, "forbidden", Some("q")).await;
    c.send(json!({"type": "note", "room": "private:board", "id": "n"}))
        .await;
    expect_error(&mut c, "forbidden", Some("n")).await;
    c.send(json!({"type": "careless", "room": "private:board"}))
        .await;
    expect_error(&mut c, "forbidden", None).await;
    c.send(json!({"type": "dm", "to": "stranger", "id": "d"}))
        .await;
    expect_error(&mut c, "forbidden", Some("d")).await;
    c.send(json!({"type": "dm", "to": "friend", "id": "d2"}))
        .await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "dm", "ok": "friend"})
    );
    c.send(json!({"type": "presence", "room": "public"})).await;
    assert_eq!(c.recv_type("presence").await["users"], json!([]));
    insider.expect_silence(Duration::from_millis(100)).await;
}

#[cfg(feature = "jwt")]
mod claims {
    //! The token's claims, with JWT authentication: the leak of issue 14 (a user allowed only
    //! `public` listing `private:board` and sending to anyone) stays closed.

    use super::*;
    use heartwire::{mint_claims, mint_token, AuthConfig, Claims, SendPolicy};

    const SECRET: &str = "hooks-test-secret-0123456";

    fn authed(send: SendPolicy) -> Config {
        Config {
            auth: AuthConfig {
                jwt_secret: Some(SECRET.into()),
                send,
                ..AuthConfig::default()
            },
            ..config()
        }
    }

    fn token(user: &str, rooms: Option<&[&str]>, send: Option<&[&str]>) -> String {
        let list = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600;
        mint_claims(
            SECRET,
            Claims {
                sub: user.into(),
                exp,
                rooms: rooms.map(list),
                send: send.map(list),
            },
        )
        .unwrap()
    }

    async fn hello(addr: std::net::SocketAddr, token: &str) -> Client {
        let mut c = Client::connect(addr).await;
        c.send(json!({"type": "hello", "token": token})).await;
        c.recv_type("welcome").await;
        c
    }

    #[actix_rt::test]
    async fn rooms_claim_governs_presence_and_application_frames() {
        let server = start(room_frames(ServerBuilder::new(authed(SendPolicy::Any))));
        let addr = server.local_addr();
        let mut insider = hello(addr, &token("insider", None, None)).await;
        insider
            .send(json!({"type": "subscribe", "room": "private:board"}))
            .await;
        insider.recv_type("subscribed").await;
        let mut c = hello(addr, &token("user", Some(&["public"]), None)).await;
        c.send(json!({"type": "presence", "room": "private:board", "id": "q1"}))
            .await;
        expect_error(&mut c, "forbidden", Some("q1")).await;
        c.send(json!({"type": "note", "room": "private:board", "id": "n1"}))
            .await;
        expect_error(&mut c, "forbidden", Some("n1")).await;
        c.send(json!({"type": "careless", "room": "private:board"}))
            .await;
        expect_error(&mut c, "forbidden", None).await;
        c.send(json!({"type": "presence", "room": "public", "id": "q2"}))
            .await;
        assert_eq!(
            c.recv_non_ping().await,
            json!({"type": "presence", "room": "public", "users": [], "id": "q2"})
        );
        insider.expect_silence(Duration::from_millis(100)).await;
    }

    #[actix_rt::test]
    async fn send_claim_and_the_configured_default() {
        let server = start(ServerBuilder::new(authed(SendPolicy::None)));
        let addr = server.local_addr();
        let mut support = hello(addr, &token("support", None, None)).await;
        let mut limited = hello(addr, &token("u1", None, Some(&["support"]))).await;
        limited
            .send(json!({"type": "send", "to": "support", "data": "help", "id": "1"}))
            .await;
        assert_eq!(limited.recv_type("ack").await["delivered"], 1);
        assert_eq!(support.recv_type("message").await["from"], "u1");
        limited
            .send(json!({"type": "send", "to": "bob", "data": "hi", "id": "2"}))
            .await;
        expect_error(&mut limited, "forbidden", Some("2")).await;
        // No claim: `auth.send = "none"`.
        let plain = mint_token(SECRET, "u2", None, Duration::from_secs(600)).unwrap();
        let mut c = hello(addr, &plain).await;
        c.send(json!({"type": "send", "to": "support", "data": "hi", "id": "3"}))
            .await;
        expect_error(&mut c, "forbidden", Some("3")).await;
        // A claim of `*` is everyone.
        let mut open = hello(addr, &token("u3", None, Some(&["*"]))).await;
        open.send(json!({"type": "send", "to": "support", "data": "hi", "id": "4"}))
            .await;
        assert_eq!(open.recv_type("ack").await["delivered"], 1);
        assert_eq!(support.recv_type("message").await["from"], "u3");
    }

    #[actix_rt::test]
    async fn token_user_reaches_the_connect_hook_which_may_still_refuse() {
        let server = start(ServerBuilder::new(authed(SendPolicy::Any)).on_connect(
            |hello: ConnectRequest| async move {
                let user = hello.user.as_ref().map(UserName::as_str);
                if user == Some("banned") && hello.token.is_some() {
                    ConnectDecision::reject("account suspended")
                } else {
                    ConnectDecision::accept()
                }
            },
        ));
        let addr = server.local_addr();
        let mut c = Client::connect(addr).await;
        c.send(json!({"type": "hello", "token": token("banned", None, None)}))
            .await;
        let frames = c.until_closed().await;
        assert_eq!(frames[0]["message"], "account suspended");
        assert_eq!(frames[1]["reason"], "unauthorized");
        let ok = hello(addr, &token("fine", None, None)).await;
        drop(ok);
        // A bad token never reaches the hook.
        let mut forged = Client::connect(addr).await;
        forged
            .send(json!({"type": "hello", "token": "forged"}))
            .await;
        assert_eq!(forged.recv().await["code"], "unauthorized");
        assert_eq!(metric(&server, &calls("connect", "reject")).await, 1);
        assert_eq!(metric(&server, &calls("connect", "accept")).await, 1);
    }
}
