//! Frame sizes both ways: the server never sends a frame longer than the `max_frame` it
//! announced (a publish or send that would produce one is refused and never sequenced), and
//! the client skips a frame over its own limit with an error event instead of reconnecting
//! in a loop.

use serde_json::json;

use crate::common::{config, start, subscriber, Client};
use heartwire::{Config, HandleError};

fn small_frames() -> Config {
    Config {
        max_frame: 1024,
        outbound_budget: 64 * 1024,
        ..config()
    }
}

/// A payload that fits in a `publish` line but not in the `message` it would become.
fn almost_max(max: usize) -> String {
    "x".repeat(max - 60)
}

#[actix_rt::test]
async fn a_publish_that_would_exceed_max_frame_is_refused_and_not_sequenced() {
    let server = start(small_frames());
    let addr = server.local_addr();
    // A long sender name: the `message` carries `from`, the `send` line does not.
    let sender = "alice-".repeat(16);
    let (mut alice, _) = subscriber(addr, &sender, "r").await;
    let (mut bob, _) = subscriber(addr, "bob", "r").await;
    let data = almost_max(1024);
    let line = json!({"type": "publish", "room": "r", "data": data, "id": "big"});
    assert!(line.to_string().len() <= 1024, "the publish itself fits");
    alice.send(line).await;
    let e = alice.recv_non_ping().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["id"].as_str()),
        (Some("error"), Some("bad_request"), Some("big")),
        "{e}"
    );
    assert!(e["message"].as_str().unwrap().contains("max_frame"), "{e}");
    // Nothing was sequenced: the next publish is seq 1, and bob gets only that.
    alice
        .send(json!({"type": "publish", "room": "r", "data": "small", "id": "s"}))
        .await;
    assert_eq!(bob.recv_type("message").await["seq"], 1);
    assert_eq!(alice.recv_type("message").await["seq"], 1);
    assert_eq!(alice.recv_type("ack").await["id"], "s");
    // A direct send is held to the same rule.
    let line = json!({"type": "send", "to": "bob", "data": almost_max(1024), "id": "d"});
    assert!(line.to_string().len() <= 1024, "the send itself fits");
    alice.send(line).await;
    let e = alice.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("bad_request"), Some("d"))
    );
    bob.send(json!({"type": "ping", "seq": 5})).await;
    assert_eq!(bob.recv_non_ping().await, json!({"type": "pong", "seq": 5}));
}

#[actix_rt::test]
async fn the_server_api_refuses_what_no_client_could_receive() {
    let server = start(small_frames());
    match server.publish("r", &almost_max(1024), None).await {
        Err(HandleError::TooLarge { max: 1024, .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    match server.send_to("bob", &"x".repeat(1024), None).await {
        Err(HandleError::TooLarge { .. }) => {}
        other => panic!("expected TooLarge, got {other:?}"),
    }
    assert_eq!(server.publish("r", &"fits", None).await.unwrap(), 1);
}

#[cfg(feature = "http")]
#[actix_rt::test]
async fn the_http_api_answers_413() {
    use heartwire::http::HttpService;
    let mut c = small_frames();
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(c.clone());
    let api = HttpService::start(&server, &c).unwrap().unwrap();
    let res = awc::Client::default()
        .post(format!("http://{}/api/publish", api.local_addr()))
        .send_json(&json!({"room": "r", "data": almost_max(1024)}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 413);
    assert_eq!(server.publish("r", &"fits", None).await.unwrap(), 1);
}

#[cfg(feature = "client")]
#[actix_rt::test]
async fn the_client_skips_a_frame_over_its_limit_and_stays_connected() {
    use crate::client_support::{client_config, connected, subscribed, wait_for};
    use heartwire::client::{Client as HwClient, ClientEvent};
    let server = start(config());
    let addr = server.local_addr();
    let mut cfg = client_config(addr, "reader");
    cfg.max_frame = 1024;
    let (client, mut events) = HwClient::start(cfg);
    connected(&mut events).await;
    client.subscribe("r").await.unwrap();
    subscribed(&mut events, "r").await;
    // Fine for the server (64 KiB), too long for this client.
    server.publish("r", &almost_max(4096), None).await.unwrap();
    server.publish("r", &"after", None).await.unwrap();
    let (skipped, _) = wait_for(
        &mut events,
        "frame_too_large",
        |e| matches!(e, ClientEvent::ServerError { code, .. } if code == "frame_too_large"),
    )
    .await;
    drop(skipped);
    let (event, before) = wait_for(
        &mut events,
        "the next message",
        |e| matches!(e, ClientEvent::Message(m) if m.seq == Some(2)),
    )
    .await;
    drop(event);
    assert!(
        before.iter().any(|e| matches!(e, ClientEvent::Gap(_))),
        "the skipped seq 1 is reported as a gap: {before:?}"
    );
    assert!(
        !before
            .iter()
            .any(|e| matches!(e, ClientEvent::Disconnected { .. })),
        "no reconnect: {before:?}"
    );
    drop(client);
    let mut raw = Client::hello(addr, "check").await.0;
    raw.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(raw.recv_non_ping().await["type"], "pong");
}

/// Error frames may quote the input: however long the offending frame, the error fits in
/// `max_frame`.
#[actix_rt::test]
async fn error_frames_quoting_the_input_fit_in_max_frame() {
    let server = start(small_frames());
    let (mut a, _) = Client::hello(server.local_addr(), "a").await;
    let long = "x".repeat(995);
    for frame in [
        json!({"type": "ping", "seq": long}),
        json!({"type": long}),
        json!({"type": "publish", "room": "r", "data": 1, "id": long[..950]}),
    ] {
        assert!(frame.to_string().len() <= 1024, "the frame itself fits");
        a.send(frame).await;
        let e = a.recv_non_ping().await;
        assert_eq!(e["type"], "error", "{e}");
        assert!(e.to_string().len() < 1024, "{} bytes", e.to_string().len());
    }
}
