//! The HTTP API over a real HTTP client (awc) against a real server, with real TCP clients.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::common::{config, eventually, first_connections, start, Client};
use heartwire::http::HttpService;
use heartwire::{Config, ServerBuilder, ServerHandle, StartError};
use serde_json::{json, Value};

/// A server with its HTTP API on a free loopback port.
fn http_config() -> Config {
    let mut c = config();
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    c
}

/// A server with its standalone HTTP API, as `heartwire serve --http` runs them.
fn start_http(config: Config) -> (ServerHandle, HttpService) {
    let server = start(config.clone());
    let http = HttpService::start(&server, &config)
        .expect("HTTP API starts")
        .expect("http.listen is set");
    (server, http)
}

struct Http {
    base: String,
    key: Option<String>,
    client: awc::Client,
}

impl Http {
    fn new(api: &HttpService) -> Http {
        let addr = api.local_addr();
        Http {
            base: format!("http://{addr}"),
            key: None,
            client: awc::Client::builder()
                .timeout(crate::common::PATIENCE)
                .finish(),
        }
    }

    fn with_key(mut self, key: &str) -> Http {
        self.key = Some(key.to_owned());
        self
    }

    fn request(&self, method: awc::http::Method, path: &str) -> awc::ClientRequest {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.key {
            Some(k) => req.insert_header(("Authorization", format!("Bearer {k}"))),
            None => req,
        }
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let mut resp = self
            .request(awc::http::Method::GET, path)
            .send()
            .await
            .expect("GET");
        let body = resp.body().await.expect("body");
        (resp.status().as_u16(), parse(&body))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let mut resp = self
            .request(awc::http::Method::POST, path)
            .send_json(&body)
            .await
            .expect("POST");
        let body = resp.body().await.expect("body");
        (resp.status().as_u16(), parse(&body))
    }

    /// Posts a body as it is, with `content_type`.
    async fn post_raw(&self, path: &str, content_type: &str, body: &'static str) -> (u16, Value) {
        let mut resp = self
            .request(awc::http::Method::POST, path)
            .insert_header(("content-type", content_type))
            .send_body(body)
            .await
            .expect("POST");
        let body = resp.body().await.expect("body");
        (resp.status().as_u16(), parse(&body))
    }

    async fn metrics(&self) -> (String, HashMap<String, f64>) {
        let mut resp = self
            .request(awc::http::Method::GET, "/metrics")
            .send()
            .await
            .expect("GET /metrics");
        assert_eq!(resp.status().as_u16(), 200);
        let content_type = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = resp.body().limit(1 << 20).await.expect("body");
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        (content_type, parse_metrics(&text))
    }
}

fn parse(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// Parses the text exposition strictly: comments, then `name{labels} value` samples whose
/// names all start with `heartwire_`, ending with `# EOF`.
fn parse_metrics(text: &str) -> HashMap<String, f64> {
    assert!(text.ends_with("# EOF\n"), "no # EOF terminator");
    let mut samples = HashMap::new();
    for line in text.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.split(' ');
            let kind = words.next().unwrap();
            assert!(
                matches!(kind, "HELP" | "TYPE" | "UNIT" | "EOF"),
                "odd line {line:?}"
            );
            if kind != "EOF" {
                let name = words.next().unwrap();
                assert!(name.starts_with("heartwire_"), "unprefixed {line:?}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample has a value");
        assert!(series.starts_with("heartwire_"), "unprefixed {line:?}");
        if let Some(open) = series.find('{') {
            assert!(series.ends_with('}'), "labels not closed in {line:?}");
            assert!(series[open..].contains("=\""), "bad labels in {line:?}");
        }
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_owned(), value).is_none(),
            "dup {series}"
        );
    }
    samples
}

fn metric(samples: &HashMap<String, f64>, series: &str) -> f64 {
    samples.get(series).copied().unwrap_or(0.0)
}

#[actix_rt::test]
async fn publish_via_http_reaches_tcp_subscriber_with_the_next_seq() {
    let (server, api) = start_http(http_config());
    let http = Http::new(&api);
    let (mut alice, _) = Client::hello(server.local_addr(), "alice").await;
    alice
        .send(json!({"type": "subscribe", "room": "news"}))
        .await;
    let subscribed = alice.recv_type("subscribed").await;
    alice
        .send(json!({"type": "publish", "room": "news", "data": "first"}))
        .await;
    assert_eq!(alice.recv_type("message").await["seq"], 1);

    let (status, body) = http
        .post(
            "/api/publish",
            json!({"room": "news", "data": {"x": [1, 2]}, "id": "h1"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"seq": 2})));
    assert_eq!(
        alice.recv_type("message").await,
        json!({"type": "message", "room": "news", "seq": 2, "from": null,
               "data": {"x": [1, 2]}, "id": "h1"})
    );

    // The same id again is a duplicate: same seq, nothing delivered.
    let (status, body) = http
        .post(
            "/api/publish",
            json!({"room": "news", "data": 0, "id": "h1"}),
        )
        .await;
    assert_eq!((status, body), (200, json!({"seq": 2})));
    alice.expect_silence(Duration::from_millis(200)).await;

    // It is in the history like a client's publish.
    let (mut late, _) = Client::hello(server.local_addr(), "late").await;
    late.send(json!({"type": "subscribe", "room": "news", "since": 1,
                     "epoch": subscribed["epoch"]}))
        .await;
    assert_eq!(late.recv_type("message").await["id"], "h1");
    assert_eq!(late.recv_type("subscribed").await["recovered"], true);
}

#[actix_rt::test]
async fn send_reaches_every_session_of_the_user() {
    let (server, api) = start_http(http_config());
    let http = Http::new(&api);
    let (mut b1, _) = Client::hello(server.local_addr(), "bob").await;
    let (mut b2, _) = Client::hello(server.local_addr(), "bob").await;
    let (status, body) = http
        .post("/api/send", json!({"to": "bob", "data": {"n": 1}}))
        .await;
    assert_eq!((status, body), (200, json!({"delivered": 2})));
    for c in [&mut b1, &mut b2] {
        assert_eq!(
            c.recv_type("message").await,
            json!({"type": "message", "from": null, "data": {"n": 1}})
        );
    }
    let (status, body) = http
        .post("/api/send", json!({"to": "nobody", "data": 1}))
        .await;
    assert_eq!((status, body), (200, json!({"delivered": 0})));
}

#[actix_rt::test]
async fn disconnect_closes_with_kicked() {
    let (server, api) = start_http(http_config());
    let http = Http::new(&api);
    let (mut a1, _) = Client::hello(server.local_addr(), "alice").await;
    let (mut a2, _) = Client::hello(server.local_addr(), "alice").await;
    let (mut b, welcome) = Client::hello(server.local_addr(), "bob").await;

    let (status, body) = http.post("/api/disconnect", json!({"user": "alice"})).await;
    assert_eq!((status, body), (200, json!({"disconnected": 2})));
    for c in [&mut a1, &mut a2] {
        assert_eq!(
            c.until_closed().await,
            vec![json!({"type": "bye", "reason": "kicked"})]
        );
    }

    let session = welcome["session"].as_str().unwrap();
    let (status, body) = http
        .post("/api/disconnect", json!({"session": session}))
        .await;
    assert_eq!((status, body), (200, json!({"disconnected": 1})));
    assert_eq!(
        b.until_closed().await,
        vec![json!({"type": "bye", "reason": "kicked"})]
    );
    let (status, body) = http
        .post("/api/disconnect", json!({"session": session}))
        .await;
    assert_eq!((status, body), (200, json!({"disconnected": 0})));

    let (status, body) = http
        .post("/api/disconnect", json!({"user": "a", "session": "b"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "bad_request");
}

/// One client answers every ping after 150 ms, another never answers: the list shows the
/// first one's round trip and the second one's misses.
#[actix_rt::test]
async fn connections_show_rtt_and_misses_as_the_clients_behaved() {
    let interval = Duration::from_millis(300);
    let (server, api) = start_http(Config {
        heartbeat_interval: interval,
        max_missed: 10,
        ..http_config()
    });
    let http = Http::new(&api);
    let (mut slow, _) = Client::hello(server.local_addr(), "slow").await;
    let (mut mute, _) = Client::hello(server.local_addr(), "mute").await;
    slow.send(json!({"type": "subscribe", "room": "r"})).await;
    slow.recv_type("subscribed").await;
    slow.auto_pong = false;
    mute.auto_pong = false;

    let delay = Duration::from_millis(150);
    // The slow client answers two pings late.
    for _ in 0..2 {
        let ping = slow.recv().await;
        assert_eq!(ping["type"], "ping");
        tokio::time::sleep(delay).await;
        slow.send(json!({"type": "pong", "seq": ping["seq"]})).await;
    }
    // The mute one has seen three pings; the third's tick counted two misses.
    let mut pings = 0;
    while pings < 3 {
        assert_eq!(mute.recv().await["type"], "ping");
        pings += 1;
    }
    let asked = Instant::now();
    let (status, page) = http.get("/api/connections").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total"], 2);
    let conns = page["connections"].as_array().unwrap();
    let by_user = |u: &str| {
        conns
            .iter()
            .find(|c| c["user"] == u)
            .unwrap_or_else(|| panic!("{u} not listed: {page}"))
            .clone()
    };
    let slow_info = by_user("slow");
    let rtt = slow_info["last_rtt_ms"].as_f64().expect("rtt measured");
    assert!(
        (145.0..550.0).contains(&rtt),
        "rtt {rtt} ms for a {delay:?} delay"
    );
    assert_eq!(slow_info["missed"], 0);
    assert_eq!(slow_info["rooms"], json!(["r"]));
    assert!(slow_info["queued_bytes"].as_u64().is_some());
    assert!(slow_info["connected_at"].as_str().unwrap().ends_with('Z'));
    assert!(slow_info["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));

    let mute_info = by_user("mute");
    assert_eq!(mute_info["last_rtt_ms"], Value::Null);
    let missed = mute_info["missed"].as_u64().unwrap();
    // The next tick may have come between the third ping and the query.
    let late_ticks = (asked.elapsed().as_millis() / interval.as_millis()) as u64 + 1;
    assert!(
        (2..=2 + late_ticks).contains(&missed),
        "missed {missed} after 3 unanswered pings"
    );
    // Silent since its hello: dead by then + 11 intervals, and that is still ahead.
    let dead_in = mute_info["dead_in_ms"].as_u64().unwrap();
    assert!(
        dead_in > 0 && dead_in <= 11 * 300,
        "dead_in_ms {dead_in}: {mute_info}"
    );
    assert!(mute_info["dead_by"].as_str().unwrap().ends_with('Z'));

    // Paging: one per page, in connection order, with a cursor.
    let (_, first) = http.get("/api/connections?limit=1").await;
    assert_eq!(first["connections"][0]["user"], "slow");
    let next = first["next"].as_u64().expect("a next page");
    let (_, second) = http
        .get(&format!("/api/connections?limit=1&after={next}"))
        .await;
    assert_eq!(second["connections"][0]["user"], "mute");
    assert_eq!(second["next"], Value::Null);
    let (_, only) = http.get("/api/connections?user=mute").await;
    assert_eq!(only["total"], 1);
    let (status, body) = http.get("/api/connections?after=x").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
}

#[actix_rt::test]
async fn rooms_room_details_presence_and_stats() {
    let (server, api) = start_http(http_config());
    let http = Http::new(&api);
    let (mut a, _) = Client::hello(server.local_addr(), "alice").await;
    let (mut b, _) = Client::hello(server.local_addr(), "bob").await;
    let mut epoch = Value::Null;
    for (c, rooms) in [(&mut a, ["r1", "r2"]), (&mut b, ["r2", "r3"])] {
        for room in rooms {
            c.send(json!({"type": "subscribe", "room": room})).await;
            epoch = c.recv_type("subscribed").await["epoch"].clone();
        }
    }
    b.send(json!({"type": "publish", "room": "r3", "data": 1}))
        .await;
    b.recv_type("message").await;

    let (status, body) = http.get("/api/rooms").await;
    assert_eq!(status, 200);
    assert_eq!(body["total"], 3);
    assert_eq!(
        body["rooms"][1],
        json!({"room": "r2", "members": 2, "users": 2})
    );
    let (_, page) = http.get("/api/rooms?limit=2").await;
    assert_eq!(page["next"], "r2");
    let (_, page) = http.get("/api/rooms?limit=2&after=r2").await;
    assert_eq!(
        page["rooms"],
        json!([{"room": "r3", "members": 1, "users": 1}])
    );

    let (status, r3) = http.get("/api/rooms/r3").await;
    assert_eq!(status, 200);
    assert_eq!(r3["seq"], 1);
    assert_eq!(r3["epoch"], epoch);
    assert_eq!(r3["history_len"], 1);
    assert_eq!(r3["users"], json!(["bob"]));
    assert_eq!(r3["members"][0]["user"], "bob");

    let (status, body) = http.get("/api/rooms/nowhere").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));

    let (status, body) = http.get("/api/rooms/r2/presence").await;
    assert_eq!(
        (status, body),
        (200, json!({"room": "r2", "users": ["alice", "bob"]}))
    );

    let (status, stats) = http.get("/api/stats").await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &stats["sessions"],
            &stats["users"],
            &stats["rooms"],
            &stats["draining"]
        ),
        (&json!(2), &json!(2), &json!(3), &json!(false))
    );
    assert_eq!(stats["history_messages"], 1);
}

#[actix_rt::test]
async fn bad_requests_get_json_errors_with_fitting_status() {
    let (_server, api) = start_http(http_config());
    let http = Http::new(&api);
    let (status, body) = http
        .post_raw("/api/publish", "application/json", "{not json")
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    // Like `curl -d`, without a JSON content type: refused, as a browser's form post would be
    // (tests/it/http_security.rs has every type).
    let (status, body) = http
        .post_raw(
            "/api/publish",
            "application/x-www-form-urlencoded",
            r#"{"room":"r","data":1}"#,
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, body) = http
        .post_raw(
            "/api/publish",
            "application/json; charset=utf-8",
            r#"{"room":"r","data":1}"#,
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"seq": 1})),
        "the first publish"
    );
    let big = json!({"room": "r", "data": "x".repeat(70_000)});
    let (status, body) = http.post("/api/publish", big).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large")),
        "body over max_frame"
    );
    let (status, body) = http.post("/api/publish", json!({"room": "r"})).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("data"), "{body}");
    let (status, body) = http
        .post("/api/publish", json!({"room": "x".repeat(257), "data": 1}))
        .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = http.post("/api/send", json!({"to": "", "data": 1})).await;
    assert_eq!(status, 400);
    let (status, body) = http.get("/api/nothing").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = http.get("/api/publish").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed"))
    );
}

#[actix_rt::test]
async fn api_key_is_required_when_configured() {
    let mut c = http_config();
    c.http.api_key = Some("s3cret".into());
    let (_server, api) = start_http(c);
    let anonymous = Http::new(&api);
    let (status, body) = anonymous.get("/api/stats").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _) = anonymous
        .post("/api/publish", json!({"room": "r", "data": 1}))
        .await;
    assert_eq!(status, 401);
    let (status, _) = Http::new(&api).with_key("wrong").get("/api/stats").await;
    assert_eq!(status, 401);
    let (status, body) = Http::new(&api).with_key("s3cret").get("/api/stats").await;
    assert_eq!((status, &body["sessions"]), (200, &json!(0)));
    // Probes and the scrape stay open.
    assert_eq!(anonymous.get("/healthz").await.0, 200);
    assert_eq!(anonymous.get("/readyz").await.0, 200);
    anonymous.metrics().await;
}

#[actix_rt::test]
async fn no_key_on_a_public_address_is_refused_unless_insisted() {
    let mut c = config();
    c.http.listen = Some("0.0.0.0:0".parse().unwrap());
    match ServerBuilder::new(c.clone()).start() {
        Err(StartError::Config(e)) => {
            let e = e.to_string();
            assert!(
                e.contains("http.api_key") && e.contains("--http-allow-insecure"),
                "{e}"
            );
        }
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("started without a key on 0.0.0.0"),
    }
    c.http.allow_insecure = true;
    c.validate().expect("insisting is allowed");
}

#[actix_rt::test]
async fn metrics_parse_and_counters_move() {
    let (server, api) = start_http(Config {
        heartbeat_interval: Duration::from_millis(100),
        ..http_config()
    });
    let http = Http::new(&api);
    let (content_type, before) = http.metrics().await;
    assert!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    assert_eq!(metric(&before, "heartwire_connections"), 0.0);

    let (mut a, _) = Client::hello(server.local_addr(), "alice").await;
    a.send(json!({"type": "subscribe", "room": "m"})).await;
    a.recv_type("subscribed").await;
    a.send(json!({"type": "publish", "room": "m", "data": "x", "id": "1"}))
        .await;
    a.recv_type("message").await;
    a.recv_type("ack").await;
    a.send_raw(b"nonsense\n").await;
    a.recv_type("error").await;
    // Answer two pings (auto_pong) so a round trip is measured.
    let mut pings = 0;
    while pings < 2 {
        let f = a.recv().await;
        if f["type"] == "ping" {
            a.send(json!({"type": "pong", "seq": f["seq"]})).await;
            pings += 1;
        }
    }
    let (mut b, _) = Client::hello(server.local_addr(), "bob").await;
    http.post("/api/disconnect", json!({"user": "bob"})).await;
    b.until_closed().await;

    eventually("counters to move", || {
        let http = &http;
        let before = &before;
        async move {
            let (_, after) = http.metrics().await;
            let moved = |s: &str, by: f64| metric(&after, s) - metric(before, s) >= by;
            moved("heartwire_accepts_total", 2.0)
                && moved("heartwire_frames_in_total{type=\"hello\"}", 2.0)
                && moved("heartwire_frames_in_total{type=\"publish\"}", 1.0)
                && moved("heartwire_frames_in_total{type=\"invalid\"}", 1.0)
                && moved("heartwire_frames_in_total{type=\"pong\"}", 2.0)
                && moved("heartwire_frames_out_total{type=\"welcome\"}", 2.0)
                && moved("heartwire_frames_out_total{type=\"message\"}", 1.0)
                && moved("heartwire_frames_out_total{type=\"ping\"}", 2.0)
                && moved("heartwire_frames_out_total{type=\"bye\"}", 1.0)
                && moved("heartwire_bytes_in_total", 50.0)
                && moved("heartwire_bytes_out_total", 100.0)
                && moved("heartwire_heartbeat_rtt_seconds_count", 1.0)
                && moved("heartwire_closes_total{reason=\"kicked\"}", 1.0)
                && metric(&after, "heartwire_connections") == 1.0
                && metric(&after, "heartwire_rooms") == 1.0
                && metric(&after, "heartwire_history_messages") == 1.0
        }
    })
    .await;
}

#[actix_rt::test]
async fn health_and_readiness_follow_the_drain() {
    let config = Config {
        workers: 1,
        drain_timeout: Duration::from_secs(5),
        ..http_config()
    };
    let server = ServerBuilder::new(config.clone())
        // Blocks the session's worker thread for a while: the drain cannot finish before.
        .frame_handler(
            "stall",
            |_: &mut heartwire::Session,
             _: &mut actix::Context<heartwire::Session>,
             _: heartwire::AppFrame| {
                std::thread::sleep(Duration::from_millis(1500));
            },
        )
        .start()
        .expect("server starts");
    let api = HttpService::start(&server, &config).unwrap().unwrap();
    let http = Http::new(&api);
    assert_eq!(http.get("/healthz").await, (200, json!({"status": "ok"})));
    assert_eq!(http.get("/readyz").await, (200, json!({"ready": true})));

    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send(json!({"type": "stall"})).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = server.clone();
    let drain = actix_rt::spawn(async move { stopping.shutdown().await });
    eventually("readyz reports the drain", || async {
        http.get("/readyz").await == (503, json!({"ready": false, "reason": "draining"}))
    })
    .await;
    assert_eq!(http.get("/healthz").await.0, 200, "alive while draining");
    let (_, stats) = http.get("/api/stats").await;
    assert_eq!(stats["draining"], true);
    assert!(drain.await.unwrap(), "drained in time");
    let frames = c.until_closed().await;
    assert_eq!(frames.last().unwrap()["reason"], "shutdown");
}

#[actix_rt::test]
async fn a_taken_http_port_fails_the_start() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = config();
    c.http.listen = Some(taken.local_addr().unwrap());
    let server = start(c.clone());
    match HttpService::start(&server, &c) {
        Err(StartError::Http { .. }) => {}
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("started on a taken port"),
    }
}

#[actix_rt::test]
async fn without_http_listen_there_is_no_http_server() {
    let server = start(config());
    assert!(HttpService::start(&server, &config()).unwrap().is_none());
    // The same views are there for the application.
    let (_c, _) = Client::hello(server.local_addr(), "solo").await;
    eventually("the session is listed", || async {
        server.overview().await.unwrap().identified == 1
    })
    .await;
    let page = first_connections(&server).await;
    assert_eq!(page.connections[0].user.as_deref(), Some("solo"));
    assert!(server
        .render_metrics()
        .await
        .unwrap()
        .contains("heartwire_connections 1"));
}
