//! Request/response over the client's connection: answers matched by `id`, errors with that
//! `id`, timeouts, and the typed acks of publish and send.

use std::time::{Duration, Instant};

use crate::client_support::*;
use heartwire::client::{Client, ClientError, ClientEvent};
use heartwire::AppFrame;
use heartwire::{ServerBuilder, Session};
use serde_json::{json, Value};

fn server_with_handlers() -> heartwire::ServerHandle {
    ServerBuilder::new(server_config())
        // answers `echo` with an application frame carrying the request's id
        .frame_handler(
            "echo",
            |session: &mut Session, _: &mut actix::Context<Session>, frame: AppFrame| {
                let body: Value = frame.parse().unwrap_or(Value::Null);
                session.send_frame(&json!({"type": "echoed", "id": frame.id, "x": body["x"]}));
            },
        )
        // never answers
        .frame_handler(
            "black_hole",
            |_: &mut Session, _: &mut actix::Context<Session>, _: AppFrame| {},
        )
        .start()
        .expect("server starts")
}

#[actix_rt::test]
async fn requests_resolve_with_their_own_answer_or_error() {
    let server = server_with_handlers();
    let (client, mut events) = Client::start(client_config(server.local_addr(), "asker"));
    connected(&mut events).await;

    // many concurrent requests: each gets the answer carrying its own id
    let calls = (0..20).map(|x| {
        let client = client.clone();
        async move { (x, client.request(json!({"type": "echo", "x": x})).await) }
    });
    for (x, answer) in futures_util::future::join_all(calls).await {
        let reply = answer.unwrap();
        assert_eq!(reply.kind, "echoed");
        assert_eq!(reply.frame["x"], x);
    }
    // an explicit id is kept
    let reply = client
        .request(json!({"type": "echo", "id": "mine", "x": "y"}))
        .await
        .unwrap();
    assert_eq!(reply.frame["id"], "mine");
    // a type nobody handles: the server's error with our id
    match client.request(json!({"type": "nobody_home"})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "unknown_type"),
        other => panic!("{other:?}"),
    }
    // a bad request is answered by the server's bad_request error with the id
    match client.request(json!({"type": "publish", "data": 1})).await {
        Err(ClientError::Server { code, .. }) => assert_eq!(code, "bad_request"),
        other => panic!("{other:?}"),
    }
    // not a frame at all: refused locally
    assert!(matches!(
        client.request(json!([1, 2])).await,
        Err(ClientError::Invalid(_))
    ));
    // publish and send resolve with their typed acks
    client.subscribe("r").await.unwrap();
    subscribed(&mut events, "r").await;
    let ack = client.publish("r", &json!({"hello": 1})).await.unwrap();
    assert_eq!(ack.seq, 1);
    let sent = client.send("asker", &json!("to myself")).await.unwrap();
    assert_eq!(sent.delivered, 1);
    let sent = client.send("nobody", &json!("void")).await.unwrap();
    assert_eq!(sent.delivered, 0);
    // the message echo of our own publish (same id) did not confuse the correlation
    let (m, _) = wait_for(
        &mut events,
        "own message",
        |e| matches!(e, ClientEvent::Message(m) if m.room.is_some()),
    )
    .await;
    let ClientEvent::Message(m) = m else {
        unreachable!()
    };
    assert_eq!(m.id.as_deref(), Some(ack.id.as_str()));
    client.close().await;
}

#[actix_rt::test]
async fn unanswered_request_times_out_and_the_client_stays_usable() {
    let server = server_with_handlers();
    let (client, mut events) = Client::start(client_config(server.local_addr(), "patient"));
    connected(&mut events).await;
    let started = Instant::now();
    let result = client
        .request_within(json!({"type": "black_hole"}), Duration::from_millis(200))
        .await;
    let waited = started.elapsed();
    assert_eq!(
        result,
        Err(ClientError::Timeout(Duration::from_millis(200)))
    );
    assert!(waited >= Duration::from_millis(200), "{waited:?}");
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    let reply = client
        .request(json!({"type": "echo", "x": 1}))
        .await
        .unwrap();
    assert_eq!(reply.frame["x"], 1);
    client.close().await;
}

/// A request made while the server is unreachable times out and is never sent late.
#[actix_rt::test]
async fn request_while_offline_times_out_and_is_dropped() {
    let server = server_with_handlers();
    let addr = server.local_addr();
    server.shutdown().await;
    let (client, mut events) = Client::start(client_config(addr, "late"));
    wait_for(&mut events, "attempt failed", |e| {
        matches!(e, ClientEvent::Reconnecting { .. })
    })
    .await;
    let result = client
        .request_within(json!({"type": "echo", "x": 1}), Duration::from_millis(100))
        .await;
    assert_eq!(
        result,
        Err(ClientError::Timeout(Duration::from_millis(100)))
    );
    let server = restart_server(server_config(), addr).await;
    connected(&mut events).await;
    // the abandoned request is gone from the queue (it would be `pending` otherwise)
    let status = client.status().await.unwrap();
    assert_eq!((status.pending, status.in_flight), (0, 0));
    client.close().await;
    server.shutdown().await;
}
