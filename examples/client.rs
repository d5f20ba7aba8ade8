//! The heartwire client in a plain `#[actix_rt::main]`.
//!
//! ```text
//! cargo run --example client              # starts its own server on a free port
//! cargo run --example client -- HOST:PORT # or talks to a running `heartwire serve`
//! ```
//!
//! Two clients join the room `lobby`: `alice` reads her events as a `Stream`, `bob` gets his
//! as actix messages in his own actor (a `Recipient<ClientEvent>`). Alice publishes; then,
//! with the embedded server, Alice is cut off (kicked) while Bob keeps publishing, and on her
//! reconnect the client replays what she missed: each message once, in order, and
//! `Subscribed { recovered: Some(true) }` says nothing was lost. Finally a request/response
//! round trip and its timeout.

use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt;
use heartwire::client::{Client, ClientConfig, ClientError, ClientEvent};
use heartwire::{Config, ServerBuilder};
use serde_json::json;

/// Bob's application actor: it receives the client's events as ordinary actix messages.
struct Bob;

impl Actor for Bob {
    type Context = Context<Self>;
}

impl Handler<ClientEvent> for Bob {
    type Result = ();

    fn handle(&mut self, event: ClientEvent, _: &mut Context<Self>) {
        if let ClientEvent::Message(m) = event {
            println!("bob   <- {}", m.to_json_line());
        }
    }
}

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Use the given server, or start one in this process.
    let (addr, server) = match std::env::args().nth(1) {
        Some(addr) => (addr, None),
        None => {
            let server = ServerBuilder::new(Config {
                listen: "127.0.0.1:0".parse()?,
                ..Config::default()
            })
            .start()?;
            (server.local_addr().to_string(), Some(server))
        }
    };
    println!("server at {addr}");

    // Alice: events as a Stream.
    let (alice, mut alice_events) = Client::start(ClientConfig::new(addr.clone(), "alice"));
    alice.subscribe("lobby").await?;
    // Bob: events to an actor.
    let bob_actor = Bob.start();
    let bob = Client::start_with_recipient(
        ClientConfig::new(addr.clone(), "bob"),
        bob_actor.recipient(),
    );
    bob.subscribe("lobby").await?;

    // Publishing waits for the server's ack (and would wait through a reconnect). Alice's
    // subscription goes out before her queued publish, so she sees it; Bob's client may not
    // have connected yet, and a first subscription starts at the room's current position.
    let ack = alice.publish("lobby", &json!({"text": "hi all"})).await?;
    println!("alice -> seq {} (id {})", ack.seq, ack.id);

    if let Some(server) = &server {
        // Cut Alice off, and publish while she is away.
        server.kick_user("alice").await?;
        for n in 1..=3 {
            bob.publish("lobby", &json!({"text": format!("missed {n}")}))
                .await?;
        }
    }

    // Alice's view: connection events, the replay, the recovery.
    let deadline = tokio::time::sleep(Duration::from_secs(3));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline => break,
            event = alice_events.next() => match event {
                Some(ClientEvent::Message(m)) => println!("alice <- {}", m.to_json_line()),
                Some(ClientEvent::Subscribed { room, recovered: Some(true), .. }) => {
                    println!("alice: resumed {room}, nothing missed");
                    if server.is_some() { break; }
                }
                Some(ClientEvent::Gap(gap)) => println!("alice: GAP {gap}"),
                Some(other) => println!("alice: {other:?}"),
                None => break,
            },
        }
    }

    // Request/response on the same connection: answered by the frame carrying our id.
    match alice.request(json!({"type": "no_such_type"})).await {
        Err(ClientError::Server { code, message }) => println!("request -> {code}: {message}"),
        other => println!("request -> {other:?}"),
    }

    alice.close().await;
    bob.close().await;
    if let Some(server) = server {
        server.shutdown().await;
    }
    Ok(())
}
