//! The client's side of the heartbeat: answering pings, and detecting a server that stops
//! answering while its socket stays open.

use std::time::{Duration, Instant};

use crate::client_support::*;
use heartwire::client::{Client, ClientEvent, DisconnectReason};
use heartwire::Config;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A "server" that accepts, reads `hello`, sends a welcome announcing a 100 ms heartbeat and
/// then goes silent with the socket open (a hung process, a black-holed route). The client
/// must give up after `(max_missed + 1) × interval` = 300 ms of silence, not wait for TCP.
#[actix_rt::test]
async fn hung_server_is_detected_inside_the_bound_and_the_client_retries() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (welcomed_tx, welcomed_rx) = tokio::sync::oneshot::channel::<Instant>();
    let (second_tx, second_rx) = tokio::sync::oneshot::channel::<()>();
    actix_rt::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut hello = String::new();
        r.read_line(&mut hello).await.unwrap();
        assert!(hello.contains("\"hello\""), "{hello}");
        let welcome = json!({"type": "welcome", "session": "s-1", "user": "u",
            "heartbeat": {"interval_ms": 100, "max_missed": 2}, "max_frame": 65536,
            "server": "fake"});
        w.write_all(format!("{welcome}\n").as_bytes())
            .await
            .unwrap();
        let _ = welcomed_tx.send(Instant::now());
        // Silent from here on, but keep reading so the socket stays open and healthy.
        let keep = actix_rt::spawn(async move {
            let mut sink = String::new();
            while r.read_line(&mut sink).await.unwrap_or(0) > 0 {
                sink.clear();
            }
            drop(w);
        });
        // The client comes back on its own.
        let _second = listener.accept().await.unwrap();
        let _ = second_tx.send(());
        keep.abort();
    });

    let (client, mut events) = Client::start(client_config(addr, "u"));
    connected(&mut events).await;
    let welcomed = welcomed_rx.await.unwrap();
    let (event, skipped) = wait_for(&mut events, "disconnect", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    let detected = welcomed.elapsed();
    assert!(skipped.is_empty(), "{skipped:?}");
    match event {
        ClientEvent::Disconnected {
            reason: DisconnectReason::ServerSilent { silent_ms },
        } => assert!(silent_ms >= 300, "{silent_ms}"),
        other => panic!("expected a dead-server disconnect, got {other:?}"),
    }
    assert!(
        detected >= Duration::from_millis(300),
        "declared dead after only {detected:?}"
    );
    assert!(
        detected <= Duration::from_millis(300 + 400),
        "declared dead only after {detected:?}"
    );
    wait_for(&mut events, "reconnecting", |e| {
        matches!(e, ClientEvent::Reconnecting { attempt: 1, .. })
    })
    .await;
    tokio::time::timeout(PATIENCE, second_rx)
        .await
        .expect("client reconnects")
        .unwrap();
    client.close().await;
}

/// Against a real server with a fast heartbeat the client answers every ping: it is never
/// closed for silence, and never declares a live server dead.
#[actix_rt::test]
async fn live_connection_stays_up_through_many_heartbeats() {
    // Fast, but with room for the scheduling stalls of a loaded 2-core machine: a pong may be
    // late by up to half a second without the server giving up.
    let server = start_server(Config {
        heartbeat_interval: Duration::from_millis(150),
        max_missed: 3,
        ..server_config()
    });
    let (client, mut events) = Client::start(client_config(server.local_addr(), "steady"));
    connected(&mut events).await;
    // about 15 heartbeat intervals with an idle application
    expect_none(&mut events, Duration::from_millis(2250), |e| {
        matches!(
            e,
            ClientEvent::Disconnected { .. } | ClientEvent::Reconnecting { .. }
        )
    })
    .await;
    let status = client.status().await.unwrap();
    assert!(status.connected);
    assert_eq!(status.connections, 1);
    client.close().await;
    let (last, _) = wait_for(&mut events, "closed", |e| matches!(e, ClientEvent::Closed)).await;
    assert_eq!(last, ClientEvent::Closed);
    assert!(events.recv().await.is_none(), "stream ends after Closed");
}

/// `ClientConfig::heartbeat` asks the server for an interval in `hello`; the server grants it
/// (within its bounds) and holds the session to it: its dead-peer deadline is
/// `(max_missed + 1) × 200 ms` away, not `× 5 s`, and the client's pongs keep it alive.
#[actix_rt::test]
async fn the_client_asks_for_its_heartbeat_interval() {
    let server = crate::common::start(Config {
        heartbeat_min: Some(Duration::from_millis(100)),
        ..crate::common::config()
    });
    let config =
        client_config(server.local_addr(), "battery").heartbeat(Duration::from_millis(200));
    let (_client, mut events) = Client::start(config);
    connected(&mut events).await;
    let page = crate::common::first_connections(&server).await;
    let dead_in = page.connections[0].dead_in_ms.expect("heartbeat running");
    assert!(
        dead_in <= 600,
        "dead-peer deadline {dead_in} ms: the 200 ms grant was not applied"
    );
    // Several granted intervals later the client (answering pings) is still connected.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let page = crate::common::first_connections(&server).await;
    assert_eq!(page.connections.len(), 1);
    assert!(
        page.connections[0].last_rtt.is_some(),
        "pings were answered"
    );
}
