//! The presence extension: `presence{room}` and `join`/`leave` events in configured rooms.

use std::time::Duration;

use crate::common::{config, start, Client};
use heartwire::Config;
use serde_json::{json, Value};

async fn subscribe(c: &mut Client, room: &str) {
    c.send(json!({"type": "subscribe", "room": room})).await;
    c.recv_type("subscribed").await;
}

#[actix_rt::test]
async fn presence_lists_the_users_of_a_room() {
    let server = start(config());
    let addr = server.local_addr();
    let (mut a, _) = Client::hello(addr, "alice").await;
    let (mut b1, _) = Client::hello(addr, "bob").await;
    let (mut b2, _) = Client::hello(addr, "bob").await;
    let (mut carol, _) = Client::hello(addr, "carol").await;
    subscribe(&mut b1, "room").await;
    subscribe(&mut b2, "room").await;
    subscribe(&mut a, "room").await;

    // Anyone may ask, subscribed or not; users are listed once, sorted.
    carol
        .send(json!({"type": "presence", "room": "room", "id": "q1"}))
        .await;
    assert_eq!(
        carol.recv_non_ping().await,
        json!({"type": "presence", "room": "room", "users": ["alice", "bob"], "id": "q1"})
    );
    carol
        .send(json!({"type": "presence", "room": "empty"}))
        .await;
    assert_eq!(
        carol.recv_non_ping().await,
        json!({"type": "presence", "room": "empty", "users": []})
    );
    carol.send(json!({"type": "presence", "id": "q2"})).await;
    let e = carol.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("bad_request"), &json!("q2"))
    );

    // Without events configured, joining and leaving is silent.
    subscribe(&mut carol, "room").await;
    a.send(json!({"type": "unsubscribe", "room": "room"})).await;
    a.recv_type("unsubscribed").await;
    b1.expect_silence(Duration::from_millis(200)).await;

    // Before the handshake it is refused like every other frame.
    let mut anon = Client::connect(addr).await;
    anon.send(json!({"type": "presence", "room": "room"})).await;
    assert_eq!(anon.recv().await["code"], "not_ready");
}

/// A crowded room whose answer would not fit in `max_frame` (nor in the asker's outbound
/// budget, which would close it as a slow consumer): the answer stays within `max_frame`,
/// lists the first users (sorted) that fit and says `truncated`, and the asker stays
/// connected. The application's view (behind the HTTP API) stays complete.
#[actix_rt::test]
async fn a_presence_answer_longer_than_max_frame_is_truncated() {
    let server = start(Config {
        max_frame: 1024,
        outbound_budget: 4096,
        ..config()
    });
    let addr = server.local_addr();
    let names: Vec<String> = (0..40)
        .map(|i| format!("{i:02}{}", "u".repeat(101)))
        .collect();
    let mut members = Vec::new();
    for name in &names {
        let (mut c, _) = Client::hello(addr, name).await;
        subscribe(&mut c, "crowd").await;
        members.push(c);
    }
    let (mut asker, welcome) = Client::hello(addr, "asker").await;
    let max_frame = welcome["max_frame"].as_u64().unwrap() as usize;
    asker
        .send(json!({"type": "presence", "room": "crowd", "id": "q"}))
        .await;
    let line = loop {
        let line = asker.recv_raw_line().await;
        let frame: Value = serde_json::from_str(&line).unwrap();
        if frame["type"] != "ping" {
            break line;
        }
    };
    let frame = line.trim_end_matches('\n');
    assert!(
        frame.len() <= max_frame,
        "a {} byte frame, over max_frame ({max_frame}): {frame}",
        frame.len()
    );
    let answer: Value = serde_json::from_str(frame).unwrap();
    assert_eq!(
        (
            &answer["type"],
            &answer["room"],
            &answer["truncated"],
            &answer["id"]
        ),
        (
            &json!("presence"),
            &json!("crowd"),
            &json!(true),
            &json!("q")
        ),
        "{answer}"
    );
    let users: Vec<String> = serde_json::from_value(answer["users"].clone()).unwrap();
    assert!(
        !users.is_empty() && users.len() < names.len(),
        "{} users",
        users.len()
    );
    assert_eq!(users, names[..users.len()], "the first users, sorted");

    // Still connected and served.
    asker
        .send(json!({"type": "presence", "room": "empty"}))
        .await;
    assert_eq!(
        asker.recv_non_ping().await,
        json!({"type": "presence", "room": "empty", "users": []})
    );
    let everyone: Vec<String> = server
        .presence("crowd")
        .await
        .unwrap()
        .iter()
        .map(|u| u.as_str().to_owned())
        .collect();
    assert_eq!(everyone, names);
}

#[actix_rt::test]
async fn join_and_leave_follow_users_in_configured_rooms() {
    let server = start(Config {
        presence_events: vec!["chat:".into()],
        ..config()
    });
    let addr = server.local_addr();
    let (mut a, _) = Client::hello(addr, "alice").await;
    let (mut b1, _) = Client::hello(addr, "bob").await;
    let (mut b2, _) = Client::hello(addr, "bob").await;
    subscribe(&mut a, "chat:1").await;

    // Bob's first session joins: alice hears it; bob's own session does not get an event.
    subscribe(&mut b1, "chat:1").await;
    assert_eq!(
        a.recv_non_ping().await,
        json!({"type": "join", "room": "chat:1", "user": "bob"})
    );
    // A second session of a present user announces nothing.
    subscribe(&mut b2, "chat:1").await;
    b1.send(json!({"type": "publish", "room": "chat:1", "data": "marker"}))
        .await;
    assert_eq!(a.recv_non_ping().await["data"], "marker");
    assert_eq!(b1.recv_non_ping().await["data"], "marker");
    assert_eq!(b2.recv_non_ping().await["data"], "marker");

    // Bob leaves with one session: still present, nothing said.
    b1.send(json!({"type": "unsubscribe", "room": "chat:1"}))
        .await;
    b1.recv_type("unsubscribed").await;
    a.send(json!({"type": "presence", "room": "chat:1"})).await;
    assert_eq!(a.recv_non_ping().await["users"], json!(["alice", "bob"]));

    // His last session goes away (a close, not an unsubscribe): leave.
    b2.send(json!({"type": "bye"})).await;
    assert!(b2.until_closed().await.is_empty());
    assert_eq!(
        a.recv_non_ping().await,
        json!({"type": "leave", "room": "chat:1", "user": "bob"})
    );
    a.send(json!({"type": "presence", "room": "chat:1"})).await;
    assert_eq!(a.recv_non_ping().await["users"], json!(["alice"]));

    // Rooms outside the prefixes have no events.
    subscribe(&mut a, "other").await;
    subscribe(&mut b1, "other").await;
    b1.send(json!({"type": "unsubscribe", "room": "other"}))
        .await;
    b1.recv_type("unsubscribed").await;
    a.expect_silence(Duration::from_millis(200)).await;
}

#[actix_rt::test]
async fn star_enables_events_everywhere_and_unsubscribe_announces_leave() {
    let server = start(Config {
        presence_events: vec!["*".into()],
        ..config()
    });
    let addr = server.local_addr();
    let (mut a, _) = Client::hello(addr, "alice").await;
    let (mut b, _) = Client::hello(addr, "bob").await;
    subscribe(&mut a, "any").await;
    subscribe(&mut b, "any").await;
    assert_eq!(a.recv_non_ping().await["type"], "join");
    b.send(json!({"type": "unsubscribe", "room": "any"})).await;
    b.recv_type("unsubscribed").await;
    assert_eq!(
        a.recv_non_ping().await,
        json!({"type": "leave", "room": "any", "user": "bob"})
    );
}

#[actix_rt::test]
async fn an_application_may_replace_the_presence_handler() {
    let server = heartwire::ServerBuilder::new(config())
        .frame_handler(
            "presence",
            |s: &mut heartwire::Session,
             _: &mut actix::Context<heartwire::Session>,
             _: heartwire::AppFrame| {
                s.send_frame(&json!({"type": "presence", "hidden": true}));
            },
        )
        .start()
        .unwrap();
    let (mut a, _) = Client::hello(server.local_addr(), "alice").await;
    a.send(json!({"type": "presence", "room": "r"})).await;
    assert_eq!(
        a.recv_non_ping().await,
        json!({"type": "presence", "hidden": true})
    );
}
