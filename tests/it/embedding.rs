//! The two embedding examples, exercised through the same functions their `main`s use.

#[allow(dead_code)]
#[path = "../../examples/embed_actix_web.rs"]
mod embed_actix_web;

#[allow(dead_code)]
#[path = "../../examples/custom_message.rs"]
mod custom_message;

use crate::common::{config, Client};
use actix_web::{App, HttpServer};
use heartwire::http::HttpApi;
use heartwire::ServerBuilder;
use serde_json::{json, Value};

#[actix_rt::test]
async fn an_actix_web_app_pushes_to_heartwire_users_from_its_own_routes() {
    let config = config();
    let server = ServerBuilder::new(config.clone()).start().unwrap();
    let api = HttpApi::new(&server, &config);
    let routes = embed_actix_web::configure(server.clone(), api);
    let app = HttpServer::new(move || App::new().configure(routes.clone()))
        .workers(1)
        .disable_signals()
        .bind("127.0.0.1:0")
        .unwrap();
    let app_addr = app.addrs()[0];
    let running = app.run();
    let app_handle = running.handle();
    actix_rt::spawn(running);

    let (mut alice, _) = Client::hello(server.local_addr(), "alice").await;
    alice
        .send(json!({"type": "subscribe", "room": "announcements"}))
        .await;
    alice.recv_type("subscribed").await;

    let http = awc::Client::default();
    let post = |path: &str, body: Value| {
        let req = http.post(format!("http://{app_addr}{path}"));
        async move {
            let mut resp = req.send_json(&body).await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    assert_eq!(
        post("/notify/alice", json!({"text": "parcel shipped"})).await,
        (200, json!({"delivered": 1}))
    );
    assert_eq!(
        alice.recv_type("message").await["data"],
        json!({"kind": "notification", "text": "parcel shipped"})
    );
    assert_eq!(
        post("/announce", json!({"text": "maintenance at noon"})).await,
        (200, json!({"seq": 1}))
    );
    let m = alice.recv_type("message").await;
    assert_eq!(
        (&m["room"], &m["from"]),
        (&json!("announcements"), &Value::Null)
    );

    // heartwire's own API is mounted under /heartwire in the same app.
    let mut resp = http
        .get(format!(
            "http://{app_addr}/heartwire/api/rooms/announcements/presence"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"room": "announcements", "users": ["alice"]})
    );

    app_handle.stop(true).await;
    assert!(server.shutdown().await);
    let frames = alice.until_closed().await;
    assert_eq!(frames.last().unwrap()["reason"], "shutdown");
}

#[actix_rt::test]
async fn custom_frame_and_messages_for_registry_and_sessions() {
    let server = custom_message::builder(config()).start().unwrap();
    let (mut a, _) = Client::hello(server.local_addr(), "alice").await;
    let (mut b, _) = Client::hello(server.local_addr(), "bob").await;
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "subscribe", "room": "lobby"})).await;
        c.recv_type("subscribed").await;
    }
    a.send(json!({"type": "count", "room": "lobby", "id": "c1"}))
        .await;
    assert_eq!(
        a.recv_non_ping().await,
        json!({"type": "count", "room": "lobby", "members": 2, "id": "c1"})
    );
    a.send(json!({"type": "count"})).await;
    assert_eq!(a.recv_type("error").await["code"], "bad_request");

    assert_eq!(custom_message::nudge(&server, "bob", "wake up").await, 1);
    assert_eq!(
        b.recv_non_ping().await,
        json!({"type": "nudge", "text": "wake up"})
    );
    assert_eq!(custom_message::nudge(&server, "nobody", "?").await, 0);
    // The built-in presence extension is still there next to the application's frame.
    b.send(json!({"type": "presence", "room": "lobby"})).await;
    assert_eq!(b.recv_non_ping().await["users"], json!(["alice", "bob"]));
}

/// The `embed_actix_web` example as shipped, run as a real process: on SIGTERM every
/// heartwire client gets `bye{reason:"shutdown"}` and the process exits 0 (actix-web's own
/// signal handling would have stopped the System under heartwire's feet).
#[test]
fn embedded_in_actix_web_drains_on_sigterm() {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    // `cargo test` builds the examples next to the test binary's directory.
    let exe = std::env::current_exe().expect("test binary path");
    let example = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("examples").join("embed_actix_web"))
        .expect("target directory");
    let mut child = Command::new(&example)
        .args(["127.0.0.1:0", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", example.display()));
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // "heartwire on 127.0.0.1:PORT, application on 127.0.0.1:PORT"
    let addr = line
        .trim()
        .strip_prefix("heartwire on ")
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let mut tcp = std::net::TcpStream::connect(&addr).unwrap();
    tcp.set_read_timeout(Some(crate::common::PATIENCE)).unwrap();
    tcp.write_all(b"{\"type\":\"hello\",\"user\":\"alice\"}\n")
        .unwrap();
    let mut reader = BufReader::new(tcp.try_clone().unwrap());
    let mut welcome = String::new();
    reader.read_line(&mut welcome).unwrap();
    assert!(welcome.contains("\"welcome\""), "{welcome}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    let bye: Value = rest
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|f| f["type"] == "bye")
        .unwrap_or_else(|| panic!("no bye before EOF: {rest:?}"));
    assert_eq!(bye["reason"], "shutdown", "{bye}");
    assert!(bye["reconnect_ms"].is_u64(), "{bye}");
    let until = Instant::now() + crate::common::PATIENCE;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "{status:?}");
}
