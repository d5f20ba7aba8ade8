//! The extension points, over real sockets: application frame handlers, application actor
//! messages handled by `Session` and by `Registry`. Uses the handlers and messages of
//! `examples/custom_frame.rs` itself, so the example is tested as shipped.

#[path = "../../examples/custom_frame.rs"]
#[allow(dead_code)]
mod custom_frame;

use crate::common::{config, start, stats, Client};
use custom_frame::{Announce, CountUsers, SessionsOf};
use heartwire::{ServerBuilder, ServerHandle};
use serde_json::json;

fn start_extended() -> ServerHandle {
    custom_frame::with_handlers(ServerBuilder::new(config()))
        .start()
        .expect("server starts")
}

#[actix_rt::test]
async fn custom_frame_handler_answers() {
    let server = start_extended();
    let (mut c, welcome) = Client::hello(server.local_addr(), "alice").await;
    c.send(json!({"type": "whoami", "id": "1"})).await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "whoami", "id": "1", "user": "alice", "session": welcome["session"]})
    );
    c.send(json!({"type": "whoami"})).await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "whoami", "user": "alice", "session": welcome["session"]})
    );
    // A handler's bad_request keeps the connection open.
    c.send(json!({"type": "announce", "id": "2"})).await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("bad_request"), Some("2"))
    );
    c.send(json!({"type": "ping", "seq": 3})).await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 3}));
}

#[actix_rt::test]
async fn custom_frame_before_hello_is_not_ready() {
    let server = start_extended();
    let mut c = Client::connect(server.local_addr()).await;
    c.send(json!({"type": "whoami", "id": "0"})).await;
    let e = c.recv().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("not_ready"), Some("0"))
    );
}

#[actix_rt::test]
async fn unknown_type_without_handler_is_an_error_and_the_connection_stays() {
    let server = start_extended();
    let (mut c, _) = Client::hello(server.local_addr(), "alice").await;
    c.send(json!({"type": "nope", "id": "x"})).await;
    let e = c.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unknown_type"), Some("x"))
    );
    // Handlers belong to their server: a plain server does not know `whoami`.
    let plain = start(config());
    let (mut p, _) = Client::hello(plain.local_addr(), "bob").await;
    p.send(json!({"type": "whoami", "id": "y"})).await;
    let e = p.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("unknown_type"), Some("y"))
    );
    for c in [&mut c, &mut p] {
        c.send(json!({"type": "ping", "seq": 1})).await;
        assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    }
}

/// An application message sent to session actors (addresses from an application registry
/// message) comes out as a frame on those sessions' sockets.
#[actix_rt::test]
async fn custom_session_message_reaches_the_wire() {
    let server = start_extended();
    let addr = server.local_addr();
    let (mut bob1, _) = Client::hello(addr, "bob").await;
    let (mut bob2, _) = Client::hello(addr, "bob").await;
    let (mut alice, _) = Client::hello(addr, "alice").await;

    let sessions = server
        .registry()
        .send(SessionsOf("bob".into()))
        .await
        .unwrap();
    assert_eq!(sessions.len(), 2);
    for session in &sessions {
        session
            .send(Announce {
                from: "ops".into(),
                text: "maintenance at noon".into(),
            })
            .await
            .expect("session alive");
    }
    let expected = json!({"type": "announce", "from": "ops", "text": "maintenance at noon"});
    assert_eq!(bob1.recv_non_ping().await, expected);
    assert_eq!(bob2.recv_non_ping().await, expected);
    let nobody = server
        .registry()
        .send(SessionsOf("nobody".into()))
        .await
        .unwrap();
    assert!(nobody.is_empty());

    // The same message sent from a frame handler of another session.
    alice
        .send(json!({"type": "announce", "to": "bob", "text": "lunch?", "id": "a1"}))
        .await;
    assert_eq!(
        alice.recv_non_ping().await,
        json!({"type": "announced", "id": "a1", "sessions": 2})
    );
    let expected = json!({"type": "announce", "from": "alice", "text": "lunch?"});
    assert_eq!(bob1.recv_non_ping().await, expected);
    assert_eq!(bob2.recv_non_ping().await, expected);
    alice
        .send(json!({"type": "announce", "to": "carol", "text": "?", "id": "a2"}))
        .await;
    assert_eq!(
        alice.recv_non_ping().await,
        json!({"type": "announced", "id": "a2", "sessions": 0})
    );
    alice
        .expect_silence(std::time::Duration::from_millis(100))
        .await;
}

/// An application message handled by the registry, from the application and from a frame
/// handler.
#[actix_rt::test]
async fn custom_registry_message_works() {
    let server = start_extended();
    let addr = server.local_addr();
    let users = || vec!["alice".to_owned(), "bob".to_owned(), "carol".to_owned()];
    assert_eq!(
        server.registry().send(CountUsers(users())).await.unwrap(),
        0
    );

    let (mut alice, _) = Client::hello(addr, "alice").await;
    let (bob, _) = Client::hello(addr, "bob").await;
    let (_bob2, _) = Client::hello(addr, "bob").await;
    assert_eq!(
        server.registry().send(CountUsers(users())).await.unwrap(),
        2
    );

    alice
        .send(json!({"type": "online", "users": ["alice", "bob", "carol"], "id": "o1"}))
        .await;
    assert_eq!(
        alice.recv_non_ping().await,
        json!({"type": "online", "id": "o1", "count": 2})
    );

    drop(bob);
    crate::common::eventually_stats(&server, "one bob session left", |s| s.sessions == 2).await;
    assert_eq!(
        server.registry().send(CountUsers(users())).await.unwrap(),
        2
    );
    assert_eq!(stats(&server).await.users, 2);
}

/// The example's `typing` frame: the room's other members get the event, the sender does not,
/// and a session outside the room is refused.
#[actix_rt::test]
async fn typing_reaches_the_other_members_of_the_room_only() {
    let server = start_extended();
    let addr = server.local_addr();
    let (mut alice, _) = crate::common::subscriber(addr, "alice", "lobby").await;
    let (mut bob, _) = crate::common::subscriber(addr, "bob", "lobby").await;
    let (mut carol, _) = Client::hello(addr, "carol").await;
    alice.send(json!({"type": "typing", "room": "lobby"})).await;
    assert_eq!(
        bob.recv_non_ping().await,
        json!({"type": "typing", "room": "lobby", "user": "alice"})
    );
    // Alice hears nothing of her own typing: her next frame is the pong.
    alice.send(json!({"type": "ping", "seq": 7})).await;
    assert_eq!(
        alice.recv_non_ping().await,
        json!({"type": "pong", "seq": 7})
    );
    carol
        .send(json!({"type": "typing", "room": "lobby", "id": "t"}))
        .await;
    let e = carol.recv_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("t"))
    );
    bob.send(json!({"type": "ping", "seq": 8})).await;
    assert_eq!(bob.recv_non_ping().await, json!({"type": "pong", "seq": 8}));
}
