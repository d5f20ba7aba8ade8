//! Helpers for the client tests: a real server on port 0, fast client settings, waiting for
//! events with a deadline, a raw protocol peer for checking what the server stored, and a
//! [`gate::Gate`] to hold one client away from a restarted server.

pub mod gate;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use heartwire::client::{BackoffConfig, ClientConfig, ClientEvent, Events};
use heartwire::{Config, ServerBuilder, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Longest wait for anything a test expects; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// Server settings for tests: loopback, port 0, quick heartbeat and shutdown hint.
pub fn server_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        heartbeat_interval: Duration::from_millis(500),
        workers: 2,
        sweep_interval: Duration::from_secs(3600),
        shutdown_reconnect: Duration::from_millis(100),
        drain_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(1),
        ..Config::default()
    }
}

/// Starts a server inside the current actix System.
pub fn start_server(config: Config) -> ServerHandle {
    ServerBuilder::new(config).start().expect("server starts")
}

/// Starts a server on a given address (a restart on the same port).
pub async fn restart_server(config: Config, addr: SocketAddr) -> ServerHandle {
    let until = Instant::now() + PATIENCE;
    loop {
        match ServerBuilder::new(Config {
            listen: addr,
            ..config.clone()
        })
        .start()
        {
            Ok(server) => return server,
            Err(e) if Instant::now() < until => {
                eprintln!("restart on {addr} not yet possible: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot restart on {addr}: {e}"),
        }
    }
}

/// Client settings for tests: quick backoff and timeouts.
pub fn client_config(addr: SocketAddr, user: &str) -> ClientConfig {
    let mut c = ClientConfig::new(addr.to_string(), user);
    c.dial_timeout = Duration::from_secs(2);
    c.handshake_timeout = Duration::from_secs(3);
    c.request_timeout = Duration::from_secs(5);
    c.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        factor: 2.0,
        cap: Duration::from_millis(400),
        reset_after: Duration::from_secs(5),
    };
    c
}

/// Waits for the first event matching `want`, returning it and the events skipped before it.
pub async fn wait_for(
    events: &mut Events,
    what: &str,
    mut want: impl FnMut(&ClientEvent) -> bool,
) -> (ClientEvent, Vec<ClientEvent>) {
    let mut skipped = Vec::new();
    let until = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(until, events.recv()).await {
            Ok(Some(event)) if want(&event) => return (event, skipped),
            Ok(Some(event)) => skipped.push(event),
            Ok(None) => panic!("event stream ended waiting for {what}; saw {skipped:#?}"),
            Err(_) => panic!("timed out waiting for {what}; saw {skipped:#?}"),
        }
    }
}

/// Waits for `Connected`.
pub async fn connected(events: &mut Events) -> ClientEvent {
    wait_for(events, "connected", |e| {
        matches!(e, ClientEvent::Connected { .. })
    })
    .await
    .0
}

/// Waits for `Subscribed` to `room`.
pub async fn subscribed(events: &mut Events, room: &str) -> ClientEvent {
    wait_for(
        events,
        "subscribed",
        |e| matches!(e, ClientEvent::Subscribed { room: r, .. } if r == room),
    )
    .await
    .0
}

/// Asserts that no event matching `bad` arrives within `wait` (other events are skipped).
pub async fn expect_none(events: &mut Events, wait: Duration, bad: impl Fn(&ClientEvent) -> bool) {
    let until = tokio::time::Instant::now() + wait;
    while let Ok(Some(event)) = tokio::time::timeout_at(until, events.recv()).await {
        assert!(!bad(&event), "unexpected event {event:?}");
    }
}

/// A raw protocol peer over a real socket (to look at the server without the client library).
pub struct Raw {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Raw {
    /// Connects and says hello as `user`.
    pub async fn hello(addr: SocketAddr, user: &str) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            reader: BufReader::new(r),
            writer: w,
        };
        raw.send(json!({"type": "hello", "user": user})).await;
        let welcome = raw.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        raw
    }

    pub async fn send(&mut self, frame: Value) {
        self.writer
            .write_all(format!("{frame}\n").as_bytes())
            .await
            .expect("write");
    }

    /// The next frame that is not a ping (pings are answered). Panics after [`PATIENCE`] in
    /// all, however many pings arrive meanwhile.
    pub async fn recv(&mut self) -> Value {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout_at(until, self.reader.read_line(&mut line))
                .await
                .expect("a frame but pings in time")
                .expect("read");
            assert!(n > 0, "connection closed");
            let frame: Value = serde_json::from_str(&line).expect("JSON");
            if frame["type"] == "ping" {
                let seq = frame["seq"].clone();
                self.send(json!({"type": "pong", "seq": seq})).await;
                continue;
            }
            return frame;
        }
    }

    /// Subscribes with `since` and returns the replayed messages and the `subscribed` frame.
    pub async fn replay(&mut self, room: &str, since: u64) -> (Vec<Value>, Value) {
        self.send(json!({"type": "subscribe", "room": room, "since": since}))
            .await;
        let mut messages = Vec::new();
        loop {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("message") => messages.push(frame),
                Some("subscribed") => return (messages, frame),
                _ => panic!("unexpected {frame}"),
            }
        }
    }
}
