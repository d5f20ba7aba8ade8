//! Hostile input never hurts the server: slowloris, half frames, connection churn, deep
//! nesting, and arbitrary bytes, over real sockets.

use std::time::{Duration, Instant};

use crate::common::{config, start, Client};
use heartwire::Config;
use proptest::prelude::*;
use serde_json::json;

/// A byte at a time, never a whole `hello`: the handshake deadline closes it.
#[actix_rt::test]
async fn slowloris_before_hello_is_closed_by_the_handshake_deadline() {
    let server = start(Config {
        handshake_timeout: Duration::from_millis(300),
        ..config()
    });
    let mut c = Client::connect(server.local_addr()).await;
    let started = Instant::now();
    let hello = br#"{"type":"hello","user":"slow","padding":"................................"}"#;
    for byte in hello.iter().take(20) {
        if c.send_raw_checked(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let frames = c.until_closed().await;
    assert_eq!(
        frames,
        vec![json!({"type": "bye", "reason": "handshake_timeout"})]
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

/// After `hello`, bytes that never complete a frame are not a sign of life.
#[actix_rt::test]
async fn slowloris_after_hello_is_closed_by_the_heartbeat() {
    let interval = Duration::from_millis(100);
    let server = start(Config {
        heartbeat_interval: interval,
        max_missed: 2,
        ..config()
    });
    let (mut c, _) = Client::hello(server.local_addr(), "drip").await;
    let started = Instant::now();
    let dripper = async {
        for byte in br#"{"type":"publish","room":"r","data":"#.iter().cycle().take(200) {
            if c.send_raw_checked(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    dripper.await;
    let frames = c.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "bye", "reason": "heartbeat_timeout"}))
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[actix_rt::test]
async fn half_a_frame_then_silence_is_closed_by_the_heartbeat() {
    let server = start(Config {
        heartbeat_interval: Duration::from_millis(100),
        max_missed: 2,
        ..config()
    });
    let (mut c, _) = Client::hello(server.local_addr(), "half").await;
    c.send_raw(br#"{"type":"publish","room":"#).await;
    let frames = c.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "bye", "reason": "heartbeat_timeout"}))
    );
}

#[actix_rt::test]
async fn deep_json_nesting_is_answered_not_fatal() {
    let server = start(config());
    let (mut c, _) = Client::hello(server.local_addr(), "deep").await;
    let depth = 20_000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    // in a typed field: serde_json's depth limit makes it a bad request
    c.send_raw(format!("{{\"type\":\"subscribe\",\"room\":{deep}}}\n").as_bytes())
        .await;
    assert_eq!(c.recv_non_ping().await["code"], "bad_request");
    // as a payload it is opaque raw JSON: delivered as sent, never recursed into
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    assert_eq!(c.recv_non_ping().await["type"], "subscribed");
    c.send_raw(format!("{{\"type\":\"publish\",\"room\":\"r\",\"data\":{deep}}}\n").as_bytes())
        .await;
    let mut line_seen = false;
    c.send(json!({"type": "ping", "seq": 9})).await;
    loop {
        let frame = c.recv_raw_line().await;
        if frame.contains("\"pong\"") {
            break;
        }
        line_seen |= frame.contains("\"message\"");
    }
    assert!(line_seen, "the deep payload was delivered");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Arbitrary bytes, split at arbitrary points: the server answers or closes, and a
    /// bystander is never affected.
    #[test]
    fn arbitrary_bytes_never_hurt_the_server(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..8)
    ) {
        let system = actix_rt::System::new();
        system.block_on(async move {
            let server = start(Config { max_frame: 256, ..config() });
            let (mut bystander, _) = Client::hello(server.local_addr(), "bystander").await;
            let mut hostile = Client::connect(server.local_addr()).await;
            hostile.send_raw(b"{\"type\":\"hello\",\"user\":\"h\"}\n").await;
            for chunk in &chunks {
                if hostile.send_raw_checked(chunk).await.is_err() {
                    break;
                }
            }
            let _ = hostile.send_raw_checked(b"\n{\"type\":\"ping\",\"seq\":1}\n").await;
            // Whatever it got, every frame is valid JSON with a type.
            while let Some(Some(frame)) = hostile.try_recv_within(Duration::from_millis(200)).await {
                assert!(frame["type"].is_string(), "{frame}");
            }
            bystander.send(json!({"type": "ping", "seq": 2})).await;
            assert_eq!(bystander.recv_non_ping().await, json!({"type": "pong", "seq": 2}));
        });
    }
}

/// Sequence numbers come from the network: the largest one is no arithmetic overflow.
#[actix_rt::test]
async fn extreme_pong_and_ping_seqs_are_harmless() {
    let server = start(Config {
        heartbeat_interval: Duration::from_millis(50),
        max_missed: 100,
        ..config()
    });
    let (mut c, _) = Client::hello(server.local_addr(), "max").await;
    c.auto_pong = false;
    assert_eq!(c.recv().await["type"], "ping");
    c.send(json!({"type": "pong", "seq": u64::MAX})).await;
    c.send(json!({"type": "ping", "seq": u64::MAX})).await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "pong", "seq": u64::MAX})
    );
}
