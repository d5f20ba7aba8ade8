//! Nothing lost, nothing twice: publishes queued while offline, unacknowledged publishes
//! resent after a reconnect, and the server's dedupe making that exactly-once.

use std::time::Duration;

use crate::client_support::*;
use heartwire::client::{Client, ClientError, ClientEvent, Pending, PublishAck};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// The ids of `pending` publishes and, once each is acknowledged, their seqs, in order.
async fn acknowledged(pending: Vec<Pending<PublishAck>>) -> (Vec<String>, Vec<u64>) {
    let ids = pending.iter().map(|p| p.id().to_owned()).collect();
    let mut seqs = Vec::new();
    for p in pending {
        seqs.push(
            tokio::time::timeout(PATIENCE, p)
                .await
                .expect("acked")
                .unwrap()
                .seq,
        );
    }
    (ids, seqs)
}

fn numbers(messages: &[Value]) -> Vec<u64> {
    messages
        .iter()
        .map(|m| m["data"]["n"].as_u64().expect("n"))
        .collect()
}

/// With the server down, publishes queue up to `max_pending` (the next one is refused with a
/// clear error); when the server comes back each is delivered exactly once, in order.
#[actix_rt::test]
async fn publishes_queued_while_offline_are_delivered_exactly_once() {
    let server = start_server(server_config());
    let addr = server.local_addr();
    server.shutdown().await;

    let mut config = client_config(addr, "offline");
    config.max_pending = 25;
    let (client, mut events) = Client::start(config);
    wait_for(&mut events, "a failed attempt", |e| {
        matches!(e, ClientEvent::Reconnecting { .. })
    })
    .await;
    let mut pending = Vec::new();
    for n in 1..=25u64 {
        pending.push(
            client
                .publish_queued("q", &json!({"n": n}), None)
                .await
                .unwrap(),
        );
    }
    assert_eq!(
        client
            .publish_queued("q", &json!({"n": 26}), None)
            .await
            .unwrap_err(),
        ClientError::QueueFull { capacity: 25 }
    );
    let status = client.status().await.unwrap();
    assert!(!status.connected);
    assert_eq!(status.pending, 25);

    let server = restart_server(server_config(), addr).await;
    let (ids, seqs) = acknowledged(pending).await;
    assert_eq!(seqs, (1..=25).collect::<Vec<_>>());

    let mut observer = Raw::hello(addr, "observer").await;
    let (messages, subscribed) = observer.replay("q", 0).await;
    assert_eq!(subscribed["recovered"], true);
    assert_eq!(numbers(&messages), (1..=25).collect::<Vec<_>>());
    let got_ids: Vec<&str> = messages.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(got_ids, ids);
    assert_eq!(client.status().await.unwrap().pending, 0);
    client.close().await;
    server.shutdown().await;
}

/// A fake server acknowledges only the first of three publishes, then drops the connection.
/// After the reconnect the client resends exactly the two unacknowledged ones, with their
/// original ids and data, and not the acknowledged one. A direct `send` that was written but
/// not acknowledged is not resent (the server cannot dedupe it): it fails with
/// `ConnectionLost` so the application can decide.
#[actix_rt::test]
async fn unacknowledged_publishes_are_resent_with_their_ids_after_a_reconnect() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let welcome = json!({"type": "welcome", "session": "s", "user": "u",
        "heartbeat": {"interval_ms": 10000, "max_missed": 2}, "max_frame": 65536});
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel::<(u32, Value)>();
    let (ack_tx, mut ack_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    actix_rt::spawn(async move {
        for conn in 1..=2u32 {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            w.write_all(format!("{welcome}\n").as_bytes())
                .await
                .unwrap();
            let wanted = if conn == 1 { 4 } else { 2 };
            for _ in 0..wanted {
                line.clear();
                r.read_line(&mut line).await.unwrap();
                let frame: Value = serde_json::from_str(&line).unwrap();
                frames_tx.send((conn, frame)).unwrap();
            }
            // acknowledge what the test says, then (first connection) drop it
            if conn == 1 {
                let id = ack_rx.recv().await.unwrap();
                let ack = json!({"type": "ack", "id": id, "seq": 1});
                w.write_all(format!("{ack}\n").as_bytes()).await.unwrap();
                let _ = ack_rx.recv().await; // the test saw the ack resolve
            } else {
                for seq in 2..=3 {
                    let id = ack_rx.recv().await.unwrap();
                    let ack = json!({"type": "ack", "id": id, "seq": seq});
                    w.write_all(format!("{ack}\n").as_bytes()).await.unwrap();
                }
                // anything else the client sends now would be a duplicate
                line.clear();
                let extra =
                    tokio::time::timeout(Duration::from_millis(300), r.read_line(&mut line)).await;
                if let Ok(Ok(n)) = extra {
                    if n > 0 {
                        frames_tx
                            .send((conn, serde_json::from_str(&line).unwrap()))
                            .unwrap();
                    }
                }
                // hold the connection until the test ends
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        }
    });

    let (client, _events) = Client::start(client_config(addr, "u"));
    let p1 = client.publish_queued("r", &json!(1), None).await.unwrap();
    let p2 = client.publish_queued("r", &json!(2), None).await.unwrap();
    let p3 = client
        .publish_queued("r", &json!(3), Some("my-id".into()))
        .await
        .unwrap();
    let s1 = client.send_queued("bob", &json!("hi"), None).await.unwrap();
    let mut first = Vec::new();
    for _ in 0..4 {
        first.push(frames_rx.recv().await.unwrap());
    }
    assert!(first.iter().all(|(conn, _)| *conn == 1));
    assert_eq!(
        first
            .iter()
            .map(|(_, f)| f["type"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["publish", "publish", "publish", "send"]
    );
    assert_eq!(first[0].1["id"], p1.id());
    assert_eq!(first[2].1["id"], "my-id");
    ack_tx.send(p1.id().to_owned()).unwrap();
    let (id2, id3) = (p2.id().to_owned(), p3.id().to_owned());
    assert_eq!(p1.await.unwrap().seq, 1);
    ack_tx.send(String::new()).unwrap(); // lets the fake server drop the connection

    assert_eq!(s1.await.unwrap_err(), ClientError::ConnectionLost);
    let mut second = Vec::new();
    for _ in 0..2 {
        second.push(frames_rx.recv().await.unwrap());
    }
    assert!(second.iter().all(|(conn, _)| *conn == 2));
    assert_eq!(second[0].1, first[1].1, "resent unchanged");
    assert_eq!(second[1].1, first[2].1, "resent unchanged");
    ack_tx.send(id2).unwrap();
    ack_tx.send(id3).unwrap();
    assert_eq!(p2.await.unwrap().seq, 2);
    assert_eq!(p3.await.unwrap().seq, 3);
    // nothing more was sent on the second connection
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(frames_rx.try_recv().is_err(), "a duplicate was sent");
}

/// Against the real server: publishing while the connection is cut twice (acks lost, frames
/// lost in flight) still gives every publish exactly one seq, in order. Reusing an id is
/// deduped too: the same ack, no second message.
#[actix_rt::test]
async fn publishing_through_cuts_is_exactly_once() {
    let server = start_server(server_config());
    let addr = server.local_addr();
    let (client, _events) = Client::start(client_config(addr, "busy"));
    let mut pending = Vec::new();
    for n in 1..=60u64 {
        pending.push(
            client
                .publish_queued("log", &json!({"n": n}), None)
                .await
                .unwrap(),
        );
        if n == 20 || n == 40 {
            // cut it while it is online (a kick during a reconnect would find no session)
            let until = std::time::Instant::now() + PATIENCE;
            let round = n / 20;
            while !matches!(client.status().await.unwrap(), s if s.connected && s.connections == round)
            {
                assert!(std::time::Instant::now() < until, "never reconnected");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let kicked = server.kick_user("busy").await.unwrap();
            assert_eq!(kicked, 1);
        }
    }
    let (ids, seqs) = acknowledged(pending).await;
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    assert_eq!(client.status().await.unwrap().connections, 3, "cut twice");

    let first = client
        .publish_queued("log", &json!({"n": 61}), Some("once".into()))
        .await
        .unwrap()
        .await
        .unwrap();
    let again = client
        .publish_queued("log", &json!({"n": 61}), Some("once".into()))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(first.seq, again.seq);

    let mut observer = Raw::hello(addr, "observer").await;
    let (messages, _) = observer.replay("log", 0).await;
    assert_eq!(numbers(&messages), (1..=61).collect::<Vec<_>>());
    let got: Vec<&str> = messages[..60]
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);
    client.close().await;
}
