//! After a server restart, the client gets everything the new server still holds: the gap
//! for what the old server took with it, then the new epoch's retained messages, once each
//! and in seq order, before any later live message.
//!
//! Every test restarts a real in-process server on the same port. Alice connects directly and
//! comes back first; Bob connects through a [`Gate`] that the test keeps closed until Alice
//! has published into the new epoch, so "Bob comes back a moment later" is a decision of the
//! test, not a race between backoff delays.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use crate::client_support::gate::Gate;
use crate::client_support::*;
use heartwire::client::{Client, ClientConfig, ClientEvent, ClientHandle, Events};
use heartwire::{Config, ServerHandle};
use serde_json::{json, Value};

/// Test client settings with room for every event: the tests read events in bursts.
fn roomy_client(addr: SocketAddr, user: &str) -> ClientConfig {
    let mut c = client_config(addr, user);
    c.event_buffer = 1 << 16;
    c
}

/// Test server settings with room for `history_size` messages per room.
fn keeping(history_size: usize) -> Config {
    Config {
        history_size,
        ..server_config()
    }
}

/// A server, Alice connected to it directly, Bob through a gate.
struct Scene {
    server: Option<ServerHandle>,
    config: Config,
    addr: SocketAddr,
    gate: Gate,
    alice: ClientHandle,
    alice_events: Events,
    bob: ClientHandle,
    bob_events: Events,
    rooms: Vec<String>,
}

impl Scene {
    /// Starts the server and both clients, subscribed to `rooms`.
    async fn start(config: Config, rooms: &[&str]) -> Scene {
        let server = start_server(config.clone());
        let addr = server.local_addr();
        let gate = Gate::start(addr);
        let (alice, mut alice_events) = Client::start(roomy_client(addr, "alice"));
        let (bob, mut bob_events) = Client::start(roomy_client(gate.addr(), "bob"));
        for room in rooms {
            alice.subscribe(room).await.expect("alice subscribes");
            bob.subscribe(room).await.expect("bob subscribes");
        }
        let names: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
        subscribed_to_all(&mut alice_events, &names).await;
        subscribed_to_all(&mut bob_events, &names).await;
        Scene {
            server: Some(server),
            config,
            addr,
            gate,
            alice,
            alice_events,
            bob,
            bob_events,
            rooms: names,
        }
    }

    /// Restarts the server on the same port with Bob held off; returns once the new server
    /// listens, whether Alice is back or not.
    async fn replace_server(&mut self) {
        self.gate.close();
        if let Some(server) = self.server.take() {
            assert!(server.shutdown().await, "server drained");
        }
        self.server = Some(restart_server(self.config.clone(), self.addr).await);
    }

    /// Restarts the server on the same port with Bob held off; returns once Alice is back
    /// and resubscribed to every room.
    async fn restart(&mut self) {
        self.replace_server().await;
        reconnected(&mut self.alice_events, "alice back").await;
        subscribed_to_all(&mut self.alice_events, &self.rooms).await;
    }

    /// Lets Bob back in; returns his events up to his `subscribed` in every room.
    async fn bob_returns(&mut self) -> Vec<ClientEvent> {
        self.gate.open();
        let (back, mut events) = reconnected(&mut self.bob_events, "bob back").await;
        events.push(back);
        events.extend(subscribed_to_all(&mut self.bob_events, &self.rooms).await);
        events
    }

    /// Waits for Bob to receive `seq` in `room`; returns his events up to it.
    async fn bob_gets(&mut self, room: &str, seq: u64) -> Vec<ClientEvent> {
        let (event, mut events) = wait_for(&mut self.bob_events, "bob's message", |e| {
            matches!(e, ClientEvent::Message(m) if m.room.as_deref() == Some(room) && m.seq == Some(seq))
        })
        .await;
        events.push(event);
        events
    }

    /// Publishes as Alice and returns the seq.
    async fn publish(&self, room: &str, data: Value) -> u64 {
        self.alice.publish(room, &data).await.expect("acked").seq
    }

    /// Asserts that Bob gets no further message or gap (nothing twice, nothing late), then
    /// closes everything.
    async fn finish_with_nothing_more_for_bob(mut self) {
        expect_none(
            &mut self.bob_events,
            Duration::from_millis(300),
            is_room_event,
        )
        .await;
        self.finish().await;
    }

    async fn finish(self) {
        self.alice.close().await;
        self.bob.close().await;
        if let Some(server) = self.server {
            server.shutdown().await;
        }
    }
}

/// Waits for a `Connected` after a reconnect; returns it and the events before it.
async fn reconnected(events: &mut Events, what: &str) -> (ClientEvent, Vec<ClientEvent>) {
    wait_for(events, what, |e| {
        matches!(
            e,
            ClientEvent::Connected {
                reconnects: 1..,
                ..
            }
        )
    })
    .await
}

/// Waits for `subscribed` in every room, in any order; returns the events up to the last.
async fn subscribed_to_all(events: &mut Events, rooms: &[String]) -> Vec<ClientEvent> {
    let mut seen = Vec::new();
    let mut waiting = rooms.to_vec();
    while !waiting.is_empty() {
        let (event, skipped) = wait_for(
            events,
            "subscribed",
            |e| matches!(e, ClientEvent::Subscribed { room, .. } if waiting.contains(room)),
        )
        .await;
        if let ClientEvent::Subscribed { room, .. } = &event {
            waiting.retain(|r| r != room);
        }
        seen.extend(skipped);
        seen.push(event);
    }
    seen
}

/// A room's events in a comparable form: `gap-epoch L->R` (the room restarted),
/// `gap L->R` (a hole within an epoch), `mSEQ DATA`, `subSEQ RECOVERED`.
fn summary(events: &[ClientEvent], room: &str) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Gap(g) if g.room == room => Some(if g.epoch_changed() {
                format!("gap-epoch {}->{}", g.last_seen, g.resume_seq)
            } else {
                format!("gap {}->{}", g.last_seen, g.resume_seq)
            }),
            ClientEvent::Message(m) if m.room.as_deref() == Some(room) => {
                Some(format!("m{} {}", m.seq.unwrap_or(0), m.data.get()))
            }
            ClientEvent::Subscribed {
                room: r,
                seq,
                recovered,
                ..
            } if r == room => Some(format!("sub{seq} {recovered:?}")),
            _ => None,
        })
        .collect()
}

fn is_room_event(e: &ClientEvent) -> bool {
    matches!(e, ClientEvent::Message(_) | ClientEvent::Gap(_))
}

/// The issue's scenario: Alice comes back first and publishes seq 1 of the new epoch; Bob
/// comes back a moment later, resumes with his old position, and gets the gap, then seq 1
/// exactly once, then what is published after.
#[actix_rt::test]
async fn bob_gets_seq_1_of_the_new_epoch_once_after_the_gap() {
    let mut scene = Scene::start(server_config(), &["lobby"]).await;
    assert_eq!(scene.publish("lobby", json!("before")).await, 1);
    scene.bob_gets("lobby", 1).await;

    scene.restart().await;
    assert_eq!(
        scene.publish("lobby", json!("while down 1")).await,
        1,
        "seq 1 of the new epoch"
    );
    let mut events = scene.bob_returns().await;
    assert_eq!(scene.publish("lobby", json!("after")).await, 2);
    events.extend(scene.bob_gets("lobby", 2).await);
    assert_eq!(
        summary(&events, "lobby"),
        [
            "gap-epoch 1->1",
            r#"m1 "while down 1""#,
            "sub1 Some(false)",
            r#"m2 "after""#
        ],
        "{events:#?}"
    );
    let gap = events.iter().find_map(|e| match e {
        ClientEvent::Gap(g) => Some(g.clone()),
        _ => None,
    });
    let gap = gap.expect("a gap");
    assert_ne!(gap.previous_epoch, gap.epoch);
    // Nothing comes twice later either.
    scene.finish_with_nothing_more_for_bob().await;
}

/// Several rooms at once: each gets its own gap, then its own retained messages, in order;
/// a room whose new epoch is empty gets the gap only.
#[actix_rt::test]
async fn every_room_gets_its_gap_then_its_retained_messages() {
    let rooms = ["a", "b", "c"];
    let mut scene = Scene::start(server_config(), &rooms).await;
    for room in rooms {
        assert_eq!(scene.publish(room, json!(format!("{room} old"))).await, 1);
    }
    for room in rooms {
        scene.bob_gets(room, 1).await;
    }

    scene.restart().await;
    for n in 1..=2 {
        scene.publish("a", json!(format!("a{n}"))).await;
    }
    for n in 1..=3 {
        scene.publish("c", json!(format!("c{n}"))).await;
    }
    let mut events = scene.bob_returns().await;
    // Live messages afterwards, one per room.
    let next = [("a", 3), ("b", 1), ("c", 4)];
    for (room, seq) in next {
        assert_eq!(
            scene.publish(room, json!(format!("{room} live"))).await,
            seq
        );
    }
    for (room, seq) in next {
        // Rooms are independent streams: wait for each without assuming an order across them.
        if !events.iter().any(|e| {
            matches!(e, ClientEvent::Message(m) if m.room.as_deref() == Some(room) && m.seq == Some(seq))
        }) {
            events.extend(scene.bob_gets(room, seq).await);
        }
    }
    assert_eq!(
        summary(&events, "a"),
        [
            "gap-epoch 1->1",
            r#"m1 "a1""#,
            r#"m2 "a2""#,
            "sub2 Some(false)",
            r#"m3 "a live""#
        ],
        "{events:#?}"
    );
    assert_eq!(
        summary(&events, "b"),
        ["gap-epoch 1->1", "sub0 Some(false)", r#"m1 "b live""#],
        "{events:#?}"
    );
    assert_eq!(
        summary(&events, "c"),
        [
            "gap-epoch 1->1",
            r#"m1 "c1""#,
            r#"m2 "c2""#,
            r#"m3 "c3""#,
            "sub3 Some(false)",
            r#"m4 "c live""#
        ],
        "{events:#?}"
    );
    scene.finish_with_nothing_more_for_bob().await;
}

/// The new epoch already holds more than `history_size` messages: Bob gets what is retained,
/// preceded by a second gap (in the new epoch) for the seqs the server no longer has.
#[actix_rt::test]
async fn a_new_epoch_past_history_size_is_a_second_gap_then_what_is_retained() {
    let mut scene = Scene::start(keeping(3), &["r"]).await;
    scene.publish("r", json!("old")).await;
    scene.bob_gets("r", 1).await;

    scene.restart().await;
    for n in 1..=5 {
        assert_eq!(scene.publish("r", json!(n)).await, n);
    }
    let mut events = scene.bob_returns().await;
    assert_eq!(scene.publish("r", json!(6)).await, 6);
    events.extend(scene.bob_gets("r", 6).await);
    assert_eq!(
        summary(&events, "r"),
        [
            "gap-epoch 1->1",
            "gap 0->3",
            "m3 3",
            "m4 4",
            "m5 5",
            "sub5 Some(false)",
            "m6 6"
        ],
        "{events:#?}"
    );
    let second = events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Gap(g) => Some(g),
            _ => None,
        })
        .nth(1)
        .expect("a second gap");
    assert_eq!(second.to_string(), "room r: missed seq 1..2");
    scene.finish().await;
}

/// A restart while Alice keeps publishing: Bob's stream is the old epoch up to a gap, then
/// the new epoch from seq 1 without a hole, a duplicate or a swap. Bob's frames to the server
/// are delayed (150 ms) so that live messages arrive between his resubscribe and his fetch
/// of the new epoch's history: the seam the client must merge.
#[actix_rt::test]
async fn a_restart_while_messages_flow_leaves_no_duplicate_and_no_swap_at_the_seam() {
    let mut scene = Scene::start(keeping(100_000), &["flow"]).await;
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let stop = Rc::new(Cell::new(false));
    let publisher = {
        let alice = scene.alice.clone();
        let stop = stop.clone();
        actix_rt::spawn(async move {
            let mut n = 0u64;
            while !stop.get() {
                n += 1;
                let ack = alice
                    .publish("flow", &json!({ "n": n }))
                    .await
                    .expect("acked");
                let _ = acks_tx.send(ack.seq);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            n
        })
    };
    async fn next_ack(acks: &mut tokio::sync::mpsc::UnboundedReceiver<u64>) -> u64 {
        tokio::time::timeout(PATIENCE, acks.recv())
            .await
            .expect("acks keep coming")
            .expect("publisher alive")
    }

    let mut all = scene.bob_gets("flow", 10).await;
    // Restart while publishing; Alice's publishes wait out the restart in her queue.
    scene.replace_server().await;
    // The new epoch numbers from 1 again: wait until it holds at least 20 messages.
    let mut last = 0;
    let mut new_epoch = false;
    while !(new_epoch && last >= 20) {
        let seq = next_ack(&mut acks).await;
        new_epoch |= seq <= last;
        last = seq;
    }
    scene.gate.delay_upstream(Duration::from_millis(150));
    all.extend(scene.bob_returns().await);
    let back_at = match all.last() {
        Some(ClientEvent::Subscribed { seq, .. }) => *seq,
        other => panic!("expected subscribed, got {other:?}"),
    };
    // Keep publishing a while after Bob's return, then stop.
    while last < back_at + 30 {
        last = next_ack(&mut acks).await;
    }
    stop.set(true);
    let published = publisher.await.expect("publisher");
    while let Ok(seq) = acks.try_recv() {
        last = seq;
    }
    all.extend(scene.bob_gets("flow", last).await);

    // Split Bob's stream at the epoch change.
    let gap_at = all
        .iter()
        .position(|e| matches!(e, ClientEvent::Gap(g) if g.epoch_changed()))
        .unwrap_or_else(|| panic!("an epoch gap in {all:#?}"));
    let messages = |events: &[ClientEvent]| -> Vec<(u64, u64)> {
        events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Message(m) => Some((
                    m.seq.unwrap_or(0),
                    m.data_as::<Value>().ok()?["n"].as_u64()?,
                )),
                ClientEvent::Gap(g) => panic!("a second gap: {g:?} in {events:#?}"),
                _ => None,
            })
            .collect()
    };
    let before = messages(&all[..gap_at]);
    let after = messages(&all[gap_at + 1..]);
    let seqs = |m: &[(u64, u64)]| m.iter().map(|(s, _)| *s).collect::<Vec<_>>();
    assert_eq!(seqs(&before), (1..=before.len() as u64).collect::<Vec<_>>());
    assert_eq!(
        seqs(&after),
        (1..=last).collect::<Vec<_>>(),
        "the new epoch once, in order"
    );
    let increasing = |m: &[(u64, u64)]| m.windows(2).all(|w| w[0].1 < w[1].1);
    assert!(increasing(&before) && increasing(&after), "{all:#?}");
    assert_eq!(after.last().map(|m| m.1), Some(published));
    // The recovered subscription is reported after the messages fetched up to it.
    let sub_at = all
        .iter()
        .rposition(|e| matches!(e, ClientEvent::Subscribed { .. }))
        .expect("subscribed");
    assert!(matches!(
        all[sub_at],
        ClientEvent::Subscribed {
            recovered: Some(false),
            ..
        }
    ));
    let fetched = messages(&all[gap_at + 1..sub_at]);
    assert_eq!(fetched.last().map(|m| m.0), Some(back_at));
    scene.finish_with_nothing_more_for_bob().await;
}
