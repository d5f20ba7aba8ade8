//! The WebSocket transport over real WebSocket connections (tokio-tungstenite): every rule of
//! protocol v1 whose TCP test depends on the transport has its twin here, plus what only a
//! WebSocket has (binary messages, close codes, origins, pings).

use serde_json::json;

use crate::common::ws::{close_of, start_ws, WsClient};
use crate::common::{config, Client};

#[actix_rt::test]
async fn hello_ping_publish_over_websocket() {
    let s = start_ws(config());
    let (mut c, welcome) = WsClient::hello(s.ws_addr(), "alice").await;
    assert_eq!(welcome["user"], "alice");
    assert_eq!(welcome["max_frame"], 65536);
    assert_eq!(welcome["heartbeat"]["interval_ms"], 5000);
    c.send(json!({"type": "ping", "seq": 7})).await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 7}));
    c.send(json!({"type": "subscribe", "room": "lobby"})).await;
    assert_eq!(c.recv_type("subscribed").await["seq"], 0);
    c.send(json!({"type": "publish", "room": "lobby", "data": {"t": "hi"}, "id": "p1"}))
        .await;
    let m = c.recv_type("message").await;
    assert_eq!(
        (m["seq"].as_u64(), &m["data"]),
        (Some(1), &json!({"t": "hi"}))
    );
    assert_eq!(m["from"], "alice");
    assert_eq!(
        c.recv_type("ack").await,
        json!({"type": "ack", "id": "p1", "seq": 1})
    );
    // a client bye: the server answers with a normal close
    c.send(json!({"type": "bye"})).await;
    let (frames, close) = c.until_closed().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(close_of(&close), (1000, "normal".to_owned()));
}

/// `heartwire serve --ws 127.0.0.1:0` announces `ws on IP:PORT` and serves protocol v1 there,
/// in the same rooms as its TCP listener.
#[cfg(feature = "cli")]
#[actix_rt::test]
async fn the_binary_serves_websocket_with_ws_flag() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};

    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_heartwire"))
            .args(["serve", "--listen", "127.0.0.1:0", "--ws", "127.0.0.1:0"])
            .env_remove("HEARTWIRE_WS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn heartwire"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .collect::<Vec<_>>()
    });
    let lines = tokio::time::timeout(crate::common::PATIENCE, lines)
        .await
        .expect("two lines on stdout")
        .unwrap();
    let tcp = lines[0].strip_prefix("listening on ").expect(&lines[0]);
    let ws = lines[1].strip_prefix("ws on ").expect(&lines[1]);
    let (mut w, _) = WsClient::hello(ws.parse().unwrap(), "web").await;
    w.send(json!({"type": "subscribe", "room": "r"})).await;
    w.recv_type("subscribed").await;
    let (mut t, _) = Client::hello(tcp.parse().unwrap(), "tcp").await;
    t.send(json!({"type": "publish", "room": "r", "data": "from tcp"}))
        .await;
    assert_eq!(w.recv_type("message").await["data"], "from tcp");
}
