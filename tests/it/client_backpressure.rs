//! An application that stops reading its events: the client does not buffer without bound
//! (it stops reading its socket), and when the application catches up every message is there,
//! once and in order, even if the server cut the stalled connection meanwhile.

use std::time::Duration;

use crate::client_support::*;
use heartwire::client::{Client, ClientEvent};
use heartwire::Config;
use serde_json::json;

#[actix_rt::test]
async fn stalled_application_loses_nothing_and_buffers_a_bounded_amount() {
    let server = start_server(Config {
        heartbeat_interval: Duration::from_millis(100),
        max_missed: 2,
        ..server_config()
    });
    let addr = server.local_addr();
    let mut config = client_config(addr, "slowpoke");
    config.event_buffer = 8;
    let (reader, mut events) = Client::start(config);
    reader.subscribe("firehose").await.unwrap();
    subscribed(&mut events, "firehose").await;

    let (writer, _writer_events) = Client::start(client_config(addr, "writer"));
    const N: u64 = 300;
    for n in 1..=N {
        writer
            .publish_queued("firehose", &json!({"n": n}), None)
            .await
            .unwrap();
    }
    writer
        .publish("firehose", &json!({"n": N + 1}))
        .await
        .unwrap();

    // The application does not read for a while: long enough for the server to give up on
    // the stalled connection (it stops answering pings while paused).
    tokio::time::sleep(Duration::from_millis(800)).await;

    let mut seen = Vec::new();
    let mut cut = false;
    while seen.last() != Some(&(N + 1)) {
        let (event, _) = wait_for(&mut events, "any", |_| true).await;
        match event {
            ClientEvent::Message(m) => seen.push(
                m.data_as::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap(),
            ),
            ClientEvent::Gap(g) => panic!("nothing may be lost: {g:?}"),
            ClientEvent::Disconnected { .. } => cut = true,
            _ => {}
        }
    }
    assert_eq!(seen, (1..=N + 1).collect::<Vec<_>>());
    // The server closed the stalled connection (no pongs while paused); its `bye` was queued
    // behind the messages. The client resumes from the last delivered seq: nothing missing.
    if !cut {
        wait_for(&mut events, "the server's cut", |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
    }
    let (resumed, skipped) = wait_for(&mut events, "resumed", |e| {
        matches!(e, ClientEvent::Subscribed { .. })
    })
    .await;
    assert!(
        matches!(resumed, ClientEvent::Subscribed { recovered: Some(true), seq, .. } if seq == N + 1),
        "{resumed:?}"
    );
    assert!(
        !skipped
            .iter()
            .any(|e| matches!(e, ClientEvent::Message(_) | ClientEvent::Gap(_))),
        "{skipped:?}"
    );
    reader.close().await;
    writer.close().await;
}
