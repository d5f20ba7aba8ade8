//! HTTP hooks against a real backend: an actix-web app the test starts on port 0. Accepting,
//! rejecting and rewriting over HTTP, the shared secret, meta travelling back to the backend,
//! connection reuse, the in-flight bound, and a backend that is down or slow with either
//! failure policy.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use heartwire::hooks::{FailurePolicy, HooksConfig};
use heartwire::{Config, ServerBuilder, ServerHandle};
use serde_json::{json, Value};

use super::{calls, config, expect_error, metric};
use crate::common::{subscriber, Client};

pub const SECRET: &str = "hook-secret-for-tests";

/// What the backend saw.
#[derive(Default)]
pub struct Seen {
    /// Every request body, in arrival order.
    pub bodies: Mutex<Vec<Value>>,
    /// Remote addresses the requests came from (one per connection).
    pub peers: Mutex<HashSet<SocketAddr>>,
    in_flight: AtomicUsize,
    /// The most requests it was ever working on at once.
    pub max_in_flight: AtomicUsize,
    /// Requests refused for a missing or wrong secret.
    pub bad_secret: AtomicUsize,
}

impl Seen {
    pub fn bodies_of(&self, hook: &str) -> Vec<Value> {
        let bodies = self.bodies.lock().unwrap();
        bodies
            .iter()
            .filter(|b| b["hook"] == hook)
            .cloned()
            .collect()
    }
}

/// The backend's decisions: a small chat application's rules.
async fn decide(kind: &str, body: &Value) -> Value {
    let text = body["data"]["text"].as_str().unwrap_or_default();
    if let Some(ms) = text.strip_prefix("sleep ") {
        let ms = ms.parse().unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    match kind {
        "connect" => match body["token"].as_str() {
            Some("t-alice") => json!({"result": "accept", "user": "alice",
                "meta": {"plan": "pro"}, "send": ["bob"]}),
            Some(_) => json!({"result": "reject", "message": "unknown token"}),
            // No token: keep the user from hello.
            None => json!({"result": "accept"}),
        },
        "subscribe" if body["room"].as_str().unwrap_or("").starts_with("vip") => {
            json!({"result": "reject", "code": "forbidden", "message": "vip only"})
        }
        "publish" if text.contains("spam") => {
            json!({"result": "reject", "code": "bad_request", "message": "no spam"})
        }
        "publish" if text == "mask" => {
            json!({"result": "accept", "data": {"text": "****", "plan": body["meta"]["plan"]}})
        }
        "send" => json!({"result": "accept", "data": {"wrapped": body["data"]}}),
        "publish" if text == "garbage" => json!({"verdict": "sure"}),
        _ => json!({"result": "accept"}),
    }
}

async fn hook(
    req: HttpRequest,
    kind: web::Path<String>,
    body: web::Json<Value>,
    seen: web::Data<Seen>,
) -> HttpResponse {
    if req
        .headers()
        .get("x-heartwire-secret")
        .map(|v| v.as_bytes())
        != Some(SECRET.as_bytes())
    {
        seen.bad_secret.fetch_add(1, Ordering::Relaxed);
        return HttpResponse::Unauthorized().finish();
    }
    if let Some(peer) = req.peer_addr() {
        seen.peers.lock().unwrap().insert(peer);
    }
    seen.bodies.lock().unwrap().push(body.0.clone());
    let now = seen.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    seen.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let answer = decide(&kind, &body).await;
    seen.in_flight.fetch_sub(1, Ordering::SeqCst);
    HttpResponse::Ok().json(answer)
}

/// A running backend: its base URL (`http://127.0.0.1:PORT/hooks`) and what it saw.
pub struct Backend {
    pub url: String,
    pub seen: web::Data<Seen>,
    handle: actix_web::dev::ServerHandle,
}

impl Backend {
    pub fn start() -> Backend {
        let seen = web::Data::new(Seen::default());
        let data = seen.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/hooks/{kind}", web::post().to(hook))
        })
        .workers(2)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("backend binds");
        let addr = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Backend {
            url: format!("http://{addr}/hooks"),
            seen,
            handle,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let stop = self.handle.stop(false);
        actix_rt::spawn(stop);
    }
}

/// Hooks with a timeout no loaded machine reaches by accident.
fn patient() -> HooksConfig {
    HooksConfig {
        timeout: Duration::from_secs(5),
        ..HooksConfig::default()
    }
}

fn hooked(url: &str, hooks: HooksConfig) -> Config {
    Config {
        hooks: HooksConfig {
            url: Some(url.to_owned()),
            secret: Some(SECRET.into()),
            ..hooks
        },
        ..config()
    }
}

fn start(config: Config) -> ServerHandle {
    ServerBuilder::new(config).start().expect("server starts")
}

#[actix_rt::test]
async fn http_hooks_accept_reject_and_rewrite() {
    let backend = Backend::start();
    let server = start(hooked(&backend.url, patient()));
    let addr = server.local_addr();

    // connect: the backend names the user from the application's token, adds meta and a send
    // list; an unknown token is refused.
    let mut alice = Client::connect(addr).await;
    alice
        .send(json!({"type": "hello", "token": "t-alice", "client": "test/1"}))
        .await;
    let welcome = alice.recv_type("welcome").await;
    assert_eq!(welcome["user"], "alice");
    let mut mallory = Client::connect(addr).await;
    mallory
        .send(json!({"type": "hello", "token": "t-evil", "user": "mallory"}))
        .await;
    let frames = mallory.until_closed().await;
    assert_eq!(frames[0]["message"], "unknown token");
    assert_eq!(frames[1], json!({"type": "bye", "reason": "unauthorized"}));

    // subscribe
    let (mut bob, _) = subscriber(addr, "bob", "lobby").await;
    alice
        .send(json!({"type": "subscribe", "room": "vip-lounge"}))
        .await;
    assert_eq!(
        expect_error(&mut alice, "forbidden", None).await,
        "vip only"
    );

    // publish: accepted, refused with the backend's code, rewritten with the caller's meta
    for (text, id) in [("hello", "p1"), ("mask", "p2")] {
        alice
            .send(json!({"type": "publish", "room": "lobby", "data": {"text": text}, "id": id}))
            .await;
        assert_eq!(alice.recv_type("ack").await["id"], id);
    }
    alice
        .send(json!({"type": "publish", "room": "lobby", "data": {"text": "spam!"}, "id": "p3"}))
        .await;
    assert_eq!(
        expect_error(&mut alice, "bad_request", Some("p3")).await,
        "no spam"
    );
    assert_eq!(
        bob.recv_type("message").await["data"],
        json!({"text": "hello"})
    );
    assert_eq!(
        bob.recv_type("message").await["data"],
        json!({"text": "****", "plan": "pro"})
    );

    // send: the connect answer's send list, then the backend's rewrite
    alice
        .send(json!({"type": "send", "to": "bob", "data": 5, "id": "s1"}))
        .await;
    assert_eq!(alice.recv_type("ack").await["delivered"], 1);
    assert_eq!(
        bob.recv_type("message").await["data"],
        json!({"wrapped": 5})
    );
    alice
        .send(json!({"type": "send", "to": "carol", "data": 5, "id": "s2"}))
        .await;
    expect_error(&mut alice, "forbidden", Some("s2")).await;

    // What the backend was told.
    let seen = &backend.seen;
    let connect = seen.bodies_of("connect");
    assert_eq!(connect[0]["token"], "t-alice");
    assert_eq!(connect[0]["client"], "test/1");
    assert_eq!(connect[0]["session"], welcome["session"]);
    assert!(connect[0]["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    let publish = seen.bodies_of("publish");
    assert_eq!(publish.len(), 3);
    assert_eq!(
        publish[0],
        json!({"hook": "publish", "session": welcome["session"], "user": "alice",
            "peer": connect[0]["peer"], "meta": {"plan": "pro"}, "room": "lobby",
            "data": {"text": "hello"}, "id": "p1"})
    );
    let send = seen.bodies_of("send");
    assert_eq!(
        (&send[0]["to"], &send[0]["data"]),
        (&json!("bob"), &json!(5))
    );
    assert_eq!(
        send.len(),
        1,
        "the send claim refused carol before the hook"
    );
    assert_eq!(seen.bad_secret.load(Ordering::Relaxed), 0);
    // Connections are reused: alice's session made 7 requests from one worker thread.
    assert!(
        seen.peers.lock().unwrap().len() <= 2,
        "{:?}",
        seen.peers.lock().unwrap()
    );
    assert_eq!(metric(&server, &calls("publish", "replace")).await, 1);
}

#[actix_rt::test]
async fn a_wrong_secret_or_a_malformed_answer_is_a_failure() {
    let backend = Backend::start();
    let mut config = hooked(&backend.url, patient());
    config.hooks.secret = Some("not-the-secret".into());
    let server = start(config);
    let mut c = Client::connect(server.local_addr()).await;
    c.send(json!({"type": "hello", "user": "u"})).await;
    let frames = c.until_closed().await;
    assert_eq!(frames[0]["code"], "unauthorized");
    assert!(frames[1]["reconnect_ms"].is_u64(), "{frames:?}");
    assert_eq!(backend.seen.bad_secret.load(Ordering::Relaxed), 1);
    assert_eq!(metric(&server, &calls("connect", "error")).await, 1);

    let server = start(hooked(&backend.url, patient()));
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send(json!({"type": "publish", "room": "r", "data": {"text": "garbage"}, "id": "g"}))
        .await;
    expect_error(&mut c, "internal", Some("g")).await;
    assert_eq!(metric(&server, &calls("publish", "error")).await, 1);
}

/// An address where nothing listens: connection refused.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/hooks")
}

#[actix_rt::test]
async fn backend_down_denies_by_default_and_allows_when_configured() {
    let url = dead_url();
    let deny = start(hooked(&url, patient()));
    let mut c = Client::connect(deny.local_addr()).await;
    c.send(json!({"type": "hello", "user": "u"})).await;
    let frames = c.until_closed().await;
    assert_eq!(frames[0]["code"], "unauthorized", "{frames:?}");
    assert_eq!(frames[1]["reason"], "unauthorized");
    assert_eq!(metric(&deny, &calls("connect", "error")).await, 1);

    let allow = start(hooked(
        &url,
        HooksConfig {
            on_failure: FailurePolicy::Allow,
            ..patient()
        },
    ));
    let (mut c, _) = subscriber(allow.local_addr(), "u", "r").await;
    c.send(json!({"type": "publish", "room": "r", "data": 1, "id": "1"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"], 1);
    assert_eq!(c.recv_type("ack").await["id"], "1");
    assert_eq!(metric(&allow, &calls("connect", "error")).await, 1);
    assert_eq!(metric(&allow, &calls("subscribe", "error")).await, 1);
    assert_eq!(metric(&allow, &calls("publish", "error")).await, 1);
}

#[actix_rt::test]
async fn slow_backend_times_out_with_either_policy() {
    let backend = Backend::start();
    // Only the publish hook, so that nothing else meets the short timeout.
    let timeout = |on_failure| Config {
        hooks: HooksConfig {
            publish_url: Some(format!("{}/publish", backend.url)),
            secret: Some(SECRET.into()),
            timeout: Duration::from_secs(1),
            on_failure,
            ..HooksConfig::default()
        },
        ..config()
    };
    let deny = start(timeout(FailurePolicy::Deny));
    let (mut c, _) = subscriber(deny.local_addr(), "u", "r").await;
    c.send(json!({"type": "publish", "room": "r", "data": {"text": "sleep 8000"}, "id": "1"}))
        .await;
    expect_error(&mut c, "internal", Some("1")).await;
    c.send(json!({"type": "publish", "room": "r", "data": {"text": "quick"}, "id": "2"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"]["text"], "quick");
    assert_eq!(metric(&deny, &calls("publish", "timeout")).await, 1);

    let allow = start(timeout(FailurePolicy::Allow));
    let (mut c, _) = subscriber(allow.local_addr(), "u", "r").await;
    c.send(json!({"type": "publish", "room": "r", "data": {"text": "sleep 8000"}, "id": "1"}))
        .await;
    assert_eq!(c.recv_type("message").await["data"]["text"], "sleep 8000");
    assert_eq!(metric(&allow, &calls("publish", "timeout")).await, 1);
}

#[actix_rt::test]
async fn requests_in_flight_are_bounded_and_the_rest_wait_their_turn() {
    let backend = Backend::start();
    let server = start(hooked(
        &backend.url,
        HooksConfig {
            max_in_flight: 1,
            timeout: Duration::from_secs(5),
            ..HooksConfig::default()
        },
    ));
    let addr = server.local_addr();
    let mut clients = Vec::new();
    for i in 0..4 {
        clients.push(subscriber(addr, &format!("u{i}"), &format!("r{i}")).await.0);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(json!({"type": "publish", "room": format!("r{i}"), "data": {"text": "sleep 100"}, "id": "x"}))
            .await;
    }
    for c in &mut clients {
        assert_eq!(c.recv_type("message").await["data"]["text"], "sleep 100");
        assert_eq!(c.recv_type("ack").await["id"], "x");
    }
    assert_eq!(backend.seen.max_in_flight.load(Ordering::SeqCst), 1);
    assert_eq!(backend.seen.bodies_of("publish").len(), 4);
}

#[actix_rt::test]
async fn an_unparsable_hook_url_refuses_to_start() {
    let err = ServerBuilder::new(Config {
        hooks: HooksConfig {
            publish_url: Some("http://[::1".into()),
            ..HooksConfig::default()
        },
        ..config()
    })
    .start()
    .err()
    .expect("refused");
    assert!(err.to_string().contains("hooks.publish_url"), "{err}");
}
