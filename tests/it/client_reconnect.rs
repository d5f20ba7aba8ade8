//! Reconnecting: a server restarted on the same port, a client cut off while the server lives,
//! and a hundred clients cut at once.

use std::time::{Duration, Instant};

use crate::client_support::*;
use heartwire::client::{BackoffConfig, Client, ClientEvent, DisconnectReason};
use serde_json::json;

/// A backoff doubling from `initial` up to `cap`, reset only after 30 s connected (longer
/// than any test here).
fn doubling(initial: Duration, cap: Duration) -> BackoffConfig {
    BackoffConfig {
        initial,
        factor: 2.0,
        cap,
        reset_after: Duration::from_secs(30),
    }
}

/// Kill the server (graceful shutdown), keep it down for a while, start it again on the same
/// port: the client comes back by itself, with delays that follow the backoff, and reports
/// the room's new epoch as a gap instead of pretending nothing was missed.
#[actix_rt::test]
async fn server_restart_on_the_same_port_client_returns_following_the_backoff() {
    let server = start_server(server_config());
    let addr = server.local_addr();
    let mut config = client_config(addr, "phoenix");
    config.backoff = doubling(Duration::from_millis(100), Duration::from_millis(800));
    let backoff = config.backoff;
    let (client, mut events) = Client::start(config);
    client.subscribe("r").await.unwrap();
    connected(&mut events).await;
    subscribed(&mut events, "r").await;
    client.publish("r", &json!("before")).await.unwrap();
    wait_for(
        &mut events,
        "own message",
        |e| matches!(e, ClientEvent::Message(m) if m.seq == Some(1)),
    )
    .await;

    assert!(server.shutdown().await, "server drained");
    let (bye, _) = wait_for(&mut events, "bye", |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    let hint = match bye {
        ClientEvent::Disconnected {
            reason:
                DisconnectReason::Bye {
                    reason,
                    reconnect_ms: Some(ms),
                },
        } if reason == "shutdown" => ms,
        other => panic!("expected bye shutdown with a hint, got {other:?}"),
    };

    // Collect the reconnect schedule while the server is down: (attempt, in_ms, announced
    // at, next attempt failed at).
    let down_since = Instant::now();
    let mut schedule: Vec<(u32, u64, Instant)> = Vec::new();
    let mut failures: Vec<Instant> = Vec::new();
    while schedule.len() < 5 || down_since.elapsed() < Duration::from_millis(1200) {
        let (event, _) = wait_for(&mut events, "schedule", |e| {
            matches!(
                e,
                ClientEvent::Reconnecting { .. } | ClientEvent::Disconnected { .. }
            )
        })
        .await;
        match event {
            ClientEvent::Reconnecting { in_ms, attempt } => {
                schedule.push((attempt, in_ms, Instant::now()))
            }
            ClientEvent::Disconnected {
                reason: DisconnectReason::ConnectFailed(_),
            } => failures.push(Instant::now()),
            other => panic!("unexpected {other:?}"),
        }
    }
    let server = restart_server(server_config(), addr).await;
    let (back, skipped) = wait_for(&mut events, "reconnected", |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await;
    assert!(matches!(back, ClientEvent::Connected { reconnects: 1, .. }));
    for event in skipped {
        match event {
            ClientEvent::Reconnecting { in_ms, attempt } => {
                schedule.push((attempt, in_ms, Instant::now()))
            }
            ClientEvent::Disconnected { .. } => failures.push(Instant::now()),
            other => panic!("unexpected {other:?}"),
        }
    }

    // The schedule: attempts count up from 1; the first delay honours the server's hint;
    // each delay stays under its exponential ceiling; delays are not all equal.
    let attempts: Vec<u32> = schedule.iter().map(|s| s.0).collect();
    assert_eq!(attempts, (1..=attempts.len() as u32).collect::<Vec<_>>());
    assert!(schedule[0].1 >= hint, "{schedule:?} vs hint {hint}");
    let b = heartwire::client::Backoff::new(backoff);
    for (i, (attempt, in_ms, _)) in schedule.iter().enumerate().skip(1) {
        let ceiling = b.ceiling(attempt - 1).as_millis() as u64;
        assert!(
            *in_ms <= ceiling,
            "attempt {attempt} (#{i}): {in_ms} ms > {ceiling} ms"
        );
    }
    let distinct: std::collections::HashSet<u64> = schedule.iter().map(|s| s.1).collect();
    assert!(distinct.len() > 1, "{schedule:?}");
    // The client really waited: each failed attempt came no sooner than its announced delay.
    // Both instants are when this test saw the events, which a loaded machine can delay by
    // some tens of milliseconds: long delays are checked, with that much slack.
    for ((_, in_ms, announced), failed) in schedule.iter().zip(&failures) {
        let waited = failed.saturating_duration_since(*announced);
        if *in_ms >= 150 {
            assert!(
                waited + Duration::from_millis(100) >= Duration::from_millis(*in_ms),
                "waited {waited:?}, announced {in_ms} ms"
            );
        }
    }

    // The new server has a new stream for the room: resuming it is reported as a gap.
    let (gap, _) = wait_for(&mut events, "gap", |e| matches!(e, ClientEvent::Gap(_))).await;
    match gap {
        ClientEvent::Gap(g) => {
            assert!(g.epoch_changed(), "{g:?}");
            assert_eq!((g.room.as_str(), g.last_seen), ("r", 1));
        }
        _ => unreachable!(),
    }
    let (sub, _) = wait_for(&mut events, "resubscribed", |e| {
        matches!(e, ClientEvent::Subscribed { .. })
    })
    .await;
    assert!(matches!(
        sub,
        ClientEvent::Subscribed {
            recovered: Some(false),
            ..
        }
    ));
    // And it works again.
    let ack = client.publish("r", &json!("after")).await.unwrap();
    assert_eq!(ack.seq, 1);
    client.close().await;
    server.shutdown().await;
}

/// A client cut off (kicked) while the server lives misses messages published meanwhile; after
/// the reconnect they are replayed: all of them, in order, none twice, with no gap reported.
#[actix_rt::test]
async fn messages_published_while_cut_off_arrive_after_the_reconnect_in_order_once() {
    let server = start_server(server_config());
    let addr = server.local_addr();
    let mut config = client_config(addr, "reader");
    // Reconnect after a noticeable pause so the publishes below happen while it is away.
    config.backoff.initial = Duration::from_millis(600);
    config.backoff.cap = Duration::from_millis(600);
    let (reader, mut events) = Client::start(config);
    reader.subscribe("news").await.unwrap();
    subscribed(&mut events, "news").await;
    let (writer, _writer_events) = Client::start(client_config(addr, "writer"));

    let mut published = 0u64;
    for _ in 0..5 {
        published += 1;
        writer
            .publish("news", &json!({"n": published}))
            .await
            .unwrap();
    }
    let mut all: Vec<ClientEvent> = Vec::new();
    let mut offline_rounds = 0;
    for _round in 0..5 {
        let kicked = server.kick_user("reader").await.unwrap();
        assert_eq!(kicked, 1);
        for _ in 0..10 {
            published += 1;
            writer
                .publish("news", &json!({"n": published}))
                .await
                .unwrap();
        }
        let status = reader.status().await.unwrap();
        if !status.connected {
            offline_rounds += 1;
        }
        collect_until(&mut events, &mut all, |e| {
            matches!(e, ClientEvent::Subscribed { .. })
        })
        .await;
        if offline_rounds >= 2 {
            break;
        }
    }
    assert!(offline_rounds >= 1, "the reader was never seen offline");
    let last = |e: &ClientEvent| matches!(e, ClientEvent::Message(m) if m.seq == Some(published));
    if !all.iter().any(last) {
        collect_until(&mut events, &mut all, last).await;
    }
    // Every message once, in order, and never a gap.
    let seen: Vec<u64> = all
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Message(m) => Some(
                m.data_as::<serde_json::Value>().unwrap()["n"]
                    .as_u64()
                    .unwrap(),
            ),
            ClientEvent::Gap(g) => panic!("no gap expected: {g:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(seen, (1..=published).collect::<Vec<_>>());
    let recovered = all
        .iter()
        .filter(|e| {
            matches!(
                e,
                ClientEvent::Subscribed {
                    recovered: Some(true),
                    ..
                }
            )
        })
        .count();
    assert!(recovered >= 1, "{all:#?}");
    reader.close().await;
    writer.close().await;
}

/// Reads events into `all` until one matches `want` (included).
async fn collect_until(
    events: &mut heartwire::client::Events,
    all: &mut Vec<ClientEvent>,
    want: impl FnMut(&ClientEvent) -> bool,
) {
    let (event, skipped) = wait_for(events, "event", want).await;
    all.extend(skipped);
    all.push(event);
}

/// A hundred clients cut at the same moment do not come back at the same moment: their
/// delays are drawn over the whole `[0, initial]` range, and so are their reconnects.
#[actix_rt::test]
async fn hundred_clients_cut_at_once_reconnect_spread_over_time() {
    const N: usize = 100;
    let server = start_server(server_config());
    let addr = server.local_addr();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<(u64, Instant)>(N);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(N);
    let mut handles = Vec::new();
    for _ in 0..N {
        let mut config = client_config(addr, "herd");
        config.backoff = doubling(Duration::from_millis(1000), Duration::from_secs(4));
        let (client, mut events) = Client::start(config);
        handles.push(client);
        let done = done_tx.clone();
        let ready = ready_tx.clone();
        actix_rt::spawn(async move {
            connected(&mut events).await;
            let _ = ready.send(()).await;
            let (event, _) = wait_for(&mut events, "reconnecting", |e| {
                matches!(e, ClientEvent::Reconnecting { .. })
            })
            .await;
            let ClientEvent::Reconnecting { in_ms, .. } = event else {
                unreachable!()
            };
            connected(&mut events).await;
            let _ = done.send((in_ms, Instant::now())).await;
            // keep draining so the client is never held up by its event buffer
            while events.recv().await.is_some() {}
        });
    }
    for _ in 0..N {
        tokio::time::timeout(PATIENCE, ready_rx.recv())
            .await
            .expect("all connected");
    }
    let cut = Instant::now();
    let kicked = server.kick_user("herd").await.unwrap();
    assert_eq!(kicked, N);
    let mut delays = Vec::new();
    let mut back_at = Vec::new();
    for _ in 0..N {
        let (in_ms, at) = tokio::time::timeout(PATIENCE, done_rx.recv())
            .await
            .expect("all reconnect")
            .unwrap();
        let back = at.duration_since(cut).as_millis() as u64;
        // Nobody comes back before the delay it drew (a loaded machine only adds to it).
        assert!(
            back >= in_ms,
            "back after {back} ms, drawn delay {in_ms} ms"
        );
        delays.push(in_ms);
        back_at.push(back);
    }
    delays.sort_unstable();
    back_at.sort_unstable();
    // Drawn delays: spread over [0, 1000] ms, roughly uniformly (each quarter gets a share).
    assert!(delays[N - 1] <= 1000, "{delays:?}");
    for quarter in 0..4u64 {
        let n = delays
            .iter()
            .filter(|d| **d >= quarter * 250 && **d < (quarter + 1) * 250)
            .count();
        assert!(n >= 10, "only {n} delays in quarter {quarter}: {delays:?}");
    }
    // Actual reconnects: spread over time too. (How many land in one 100 ms slot depends on
    // the test thread's own scheduling on a loaded machine, so it is not asserted.)
    let spread = back_at[N - 1] - back_at[0];
    assert!(
        spread >= 600,
        "reconnects spread over only {spread} ms: {back_at:?}"
    );
    for client in handles {
        client.close().await;
    }
}
