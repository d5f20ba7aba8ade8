//! The WebSocket transport over real WebSocket connections (tokio-tungstenite): every rule of
//! protocol v1 whose TCP test depends on the transport has its twin here, plus what only a
//! WebSocket has (binary messages, close codes, origins, pings).

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use heartwire::Config;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;

use crate::common::ws::{close_of, start_ws, WsClient};
use crate::common::{config, eventually_stats, stats, subscriber, test_tls, Client, PATIENCE};

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

/// One frame of a fragmented message: `data` (text, or the continuation), final when `fin`.
fn fragment(payload: Bytes, data: Data, fin: bool) -> Message {
    Message::Frame(Frame::message(payload, OpCode::Data(data), fin))
}

/// Reads `c` to its end, asserting that the server sent `bye{reason}` and nothing else;
/// returns the close frame's code and reason.
async fn closed_after_bye<S: AsyncRead + AsyncWrite + Unpin>(
    c: &mut WsClient<S>,
    reason: &str,
) -> (u16, String) {
    let (frames, close) = c.until_closed().await;
    assert_eq!(frames, [json!({"type": "bye", "reason": reason})]);
    close_of(&close)
}

/// `heartwire serve --ws 127.0.0.1:0` announces `ws on IP:PORT` and serves protocol v1 there,
/// in the same rooms as its TCP listener.
#[cfg(feature = "cli")]
#[actix_rt::test]
async fn the_binary_serves_websocket_with_ws_flag() {
    use crate::common::process::{serve_command, ChildGuard};

    let mut child = ChildGuard::spawn(
        serve_command(&["--listen", "127.0.0.1:0", "--ws", "127.0.0.1:0"], &[])
            .stderr(std::process::Stdio::null()),
    );
    let lines = child.stdout_lines();
    let next_line = || lines.recv_timeout(PATIENCE).expect("two lines on stdout");
    let (first, second) = (next_line(), next_line());
    let tcp = first.strip_prefix("listening on ").expect(&first);
    let ws = second.strip_prefix("ws on ").expect(&second);
    let (mut w, _) = WsClient::hello(ws.parse().unwrap(), "web").await;
    w.send(json!({"type": "subscribe", "room": "r"})).await;
    w.recv_type("subscribed").await;
    let (mut t, _) = Client::hello(tcp.parse().unwrap(), "tcp").await;
    t.send(json!({"type": "publish", "room": "r", "data": "from tcp"}))
        .await;
    assert_eq!(w.recv_type("message").await["data"], "from tcp");
}

/// No `hello` within the handshake timeout: `bye{handshake_timeout}`, then close 4000.
#[actix_rt::test]
async fn no_hello_in_time_closes_with_handshake_timeout() {
    let s = start_ws(Config {
        handshake_timeout: Duration::from_millis(200),
        ..config()
    });
    let mut c = WsClient::connect(s.ws_addr()).await;
    assert_eq!(
        closed_after_bye(&mut c, "handshake_timeout").await,
        (4000, "handshake_timeout".to_owned())
    );
}

/// A silent WebSocket client is closed inside the same bound as a TCP one.
#[actix_rt::test]
async fn silent_client_is_closed_inside_the_bound() {
    let interval = Duration::from_millis(200);
    let s = start_ws(Config {
        heartbeat_interval: interval,
        max_missed: 2,
        ..config()
    });
    let (mut c, _) = WsClient::hello(s.ws_addr(), "quiet").await;
    let last_sent = Instant::now();
    c.auto_pong = false;
    let (frames, close) = c.until_closed().await;
    let silence = last_sent.elapsed();
    assert_eq!(
        frames,
        [json!({"type": "bye", "reason": "heartbeat_timeout"})]
    );
    assert_eq!(close_of(&close), (4000, "heartbeat_timeout".to_owned()));
    assert!(silence > interval * 2, "closed too early: {silence:?}");
    assert!(
        silence <= interval * 3 + Duration::from_millis(250),
        "closed too late: {silence:?}"
    );
}

/// A WebSocket ping is answered with a pong carrying its payload and, like any frame, proves
/// the client alive: a client that answers no JSON ping but sends WebSocket pings stays.
#[actix_rt::test]
async fn websocket_pings_are_answered_and_prove_life() {
    // Long enough that a loaded machine does not stall the client past the bound.
    let interval = Duration::from_millis(300);
    let s = start_ws(Config {
        heartbeat_interval: interval,
        max_missed: 2,
        ..config()
    });
    let (mut c, _) = WsClient::hello(s.ws_addr(), "pinger").await;
    let until = Instant::now() + interval * 8;
    let mut pongs = 0;
    while Instant::now() < until {
        c.send_message(Message::Ping(Bytes::from_static(b"hb")))
            .await;
        let wait = tokio::time::Instant::now() + interval / 2;
        while let Ok(Some(message)) = tokio::time::timeout_at(wait, c.ws.next()).await {
            match message.expect("connection stays up") {
                Message::Pong(payload) => {
                    assert_eq!(&payload[..], b"hb");
                    pongs += 1;
                }
                Message::Text(text) => {
                    let frame: Value = serde_json::from_str(&text).unwrap();
                    assert_eq!(frame["type"], "ping", "closed a live client: {frame}");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(pongs >= 8, "{pongs} pongs");
    c.send(json!({"type": "ping", "seq": 1})).await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
}

/// `max_frame` is the size of one message's payload; a trailing `\n` does not count. One byte
/// more closes with `bye{frame_too_large}` and close 1009, also when the excess comes in a
/// later fragment.
#[actix_rt::test]
async fn message_over_max_frame_closes_with_1009() {
    let s = start_ws(Config {
        max_frame: 1024,
        ..config()
    });
    let exact = |extra: &str| {
        let frame = json!({"type": "ping", "seq": 1, "pad": ""}).to_string();
        let pad = "x".repeat(1024 - frame.len());
        let frame = json!({"type": "ping", "seq": 1, "pad": pad}).to_string();
        assert_eq!(frame.len(), 1024);
        format!("{frame}{extra}")
    };
    let (mut c, _) = WsClient::hello(s.ws_addr(), "big").await;
    for text in [exact(""), exact("\n")] {
        c.send_message(Message::text(text)).await;
        assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    }
    c.send_message(Message::text(exact(" "))).await;
    assert_eq!(
        closed_after_bye(&mut c, "frame_too_large").await,
        (1009, "frame_too_large".to_owned())
    );

    // Fragments: 600 + 600 bytes of one text message.
    let (mut c, _) = WsClient::hello(s.ws_addr(), "fragments").await;
    let half = Bytes::from(vec![b' '; 600]);
    c.send_message(fragment(half.clone(), Data::Text, false))
        .await;
    c.send_message(fragment(half, Data::Continue, true)).await;
    assert_eq!(closed_after_bye(&mut c, "frame_too_large").await.0, 1009);
}

/// A message fragmented into several frames is one frame of the protocol.
#[actix_rt::test]
async fn fragmented_message_is_reassembled() {
    let s = start_ws(config());
    let (mut c, _) = WsClient::hello(s.ws_addr(), "frag").await;
    let text = json!({"type": "ping", "seq": 42}).to_string().into_bytes();
    let (a, rest) = text.split_at(5);
    let (b, d) = rest.split_at(7);
    c.send_message(fragment(Bytes::copy_from_slice(a), Data::Text, false))
        .await;
    c.send_message(Message::Ping(Bytes::from_static(b"between")))
        .await;
    c.send_message(fragment(Bytes::copy_from_slice(b), Data::Continue, false))
        .await;
    c.send_message(fragment(Bytes::copy_from_slice(d), Data::Continue, true))
        .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 42}));
}

/// A header announcing a huge message is refused when it arrives, not after the server has
/// buffered the message: the client gets `bye{frame_too_large}` and 1009 while it has sent
/// a few kilobytes of a declared 1 GiB.
#[actix_rt::test]
async fn huge_declared_message_is_refused_at_its_header() {
    let s = start_ws(config());
    let (mut c, _) = WsClient::hello(s.ws_addr(), "liar").await;
    // Write a frame header by hand under the client: text, FIN, masked, 64-bit length.
    let mut header = vec![0x81, 0x80 | 127];
    header.extend_from_slice(&(1u64 << 30).to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    header.extend(std::iter::repeat_n(b'x', 8 * 1024));
    let raw = c.ws.get_mut();
    let MaybeTlsStream::Plain(tcp) = raw else {
        panic!("plain TCP expected")
    };
    tcp.write_all(&header).await.unwrap();
    assert_eq!(closed_after_bye(&mut c, "frame_too_large").await.0, 1009);
}

/// A binary message is a bad frame: `error{code:"bad_frame"}` and the connection stays usable;
/// `max_bad_frames` of them close with `protocol_error` and 1008.
#[actix_rt::test]
async fn binary_message_is_a_bad_frame() {
    let s = start_ws(Config {
        max_bad_frames: 3,
        ..config()
    });
    let (mut c, _) = WsClient::hello(s.ws_addr(), "bin").await;
    c.send_message(Message::binary(b"{\"type\":\"ping\"}".to_vec()))
        .await;
    let e = c.recv_type("error").await;
    assert_eq!(e["code"], "bad_frame", "{e}");
    c.send(json!({"type": "ping", "seq": 2})).await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 2}));
    // A text frame that is no JSON counts towards the same limit.
    c.send_message(Message::text("not json")).await;
    assert_eq!(c.recv_type("error").await["code"], "bad_frame");
    c.send_message(Message::binary(vec![0u8; 3])).await;
    let (frames, close) = c.until_closed().await;
    assert_eq!(frames[0]["code"], "bad_frame");
    assert_eq!(
        frames[1],
        json!({"type": "bye", "reason": "protocol_error"})
    );
    assert_eq!(close_of(&close), (1008, "protocol_error".to_owned()));
}

/// Text that is not UTF-8 breaks RFC 6455: `bye{protocol_error}` and 1008.
#[actix_rt::test]
async fn invalid_utf8_text_closes_with_protocol_error() {
    let s = start_ws(config());
    let (mut c, _) = WsClient::hello(s.ws_addr(), "utf8").await;
    c.send_message(fragment(
        Bytes::from_static(b"{\"type\":\"\xff\"}"),
        Data::Text,
        true,
    ))
    .await;
    assert_eq!(closed_after_bye(&mut c, "protocol_error").await.0, 1008);
}

/// After `bye` the close frame carries the code PROTOCOL.md gives for the reason, and the
/// reason as its text; what was queued before the `bye` comes first.
#[cfg(feature = "jwt")]
#[actix_rt::test]
async fn close_codes_follow_the_bye_reason() {
    let s = start_ws(Config {
        auth: heartwire::AuthConfig {
            jwt_secret: Some("ws-test-secret-0123456789".into()),
            ..heartwire::AuthConfig::default()
        },
        ..config()
    });
    let token = |user| {
        heartwire::mint_token(
            "ws-test-secret-0123456789",
            user,
            None,
            Duration::from_secs(60),
        )
        .unwrap()
    };
    // unauthorized: 1008
    let mut c = WsClient::connect(s.ws_addr()).await;
    c.send(json!({"type": "hello", "user": "nobody"})).await;
    let (frames, close) = c.until_closed().await;
    assert_eq!(frames[0]["code"], "unauthorized");
    assert_eq!(frames[1], json!({"type": "bye", "reason": "unauthorized"}));
    assert_eq!(close_of(&close), (1008, "unauthorized".to_owned()));

    // kicked: 4000, after the message queued before it
    let mut k = WsClient::connect(s.ws_addr()).await;
    k.send(json!({"type": "hello", "token": token("kick")}))
        .await;
    k.recv_type("welcome").await;
    k.send(json!({"type": "subscribe", "room": "r"})).await;
    k.recv_type("subscribed").await;
    s.server.publish("r", &"before", None).await.unwrap();
    assert_eq!(s.server.kick_user("kick").await.unwrap(), 1);
    let (frames, close) = k.until_closed().await;
    assert_eq!(frames[0]["data"], "before");
    assert_eq!(frames[1], json!({"type": "bye", "reason": "kicked"}));
    assert_eq!(close_of(&close), (4000, "kicked".to_owned()));

    // shutdown: 1001, with the reconnect hint
    let mut d = WsClient::connect(s.ws_addr()).await;
    d.send(json!({"type": "hello", "token": token("drained")}))
        .await;
    d.recv_type("welcome").await;
    let shutdown = s.server.clone();
    let drained = actix_rt::spawn(async move { shutdown.shutdown().await });
    let (frames, close) = d.until_closed().await;
    assert_eq!(frames[0]["reason"], "shutdown");
    assert!(frames[0]["reconnect_ms"].as_u64().is_some(), "{frames:?}");
    assert_eq!(close_of(&close), (1001, "shutdown".to_owned()));
    assert!(drained.await.unwrap(), "every session drained");
}

/// A client that closes the WebSocket gets the close echoed, and its session is gone.
#[actix_rt::test]
async fn client_close_is_answered_and_ends_the_session() {
    let s = start_ws(config());
    let (mut c, _) = WsClient::hello(s.ws_addr(), "leaver").await;
    eventually_stats(&s.server, "one session", |o| o.sessions == 1).await;
    c.send_message(Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    })))
    .await;
    let (frames, close) = c.until_closed().await;
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(close_of(&close).0, 1000);
    eventually_stats(&s.server, "no session", |o| o.sessions == 0).await;
}

/// Pages of other origins are refused with 403 before any upgrade; the page's own host, a
/// configured origin and clients without `Origin` are let in.
#[actix_rt::test]
async fn origins_are_checked_before_the_upgrade() {
    let s = start_ws(config());
    let addr = s.ws_addr();
    let with_origin = |origin: &str| {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    match tokio_tungstenite::connect_async(with_origin("http://evil.example")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let (ws, _) = tokio_tungstenite::connect_async(with_origin(&format!("http://{addr}")))
        .await
        .expect("same host");
    let mut c = WsClient::new(ws);
    c.send(json!({"type": "hello", "user": "page"})).await;
    c.recv_type("welcome").await;
    assert_eq!(
        stats(&s.server).await.sessions,
        1,
        "the refused one never got a session"
    );

    let listed = start_ws(Config {
        ws: heartwire::ws::WsConfig {
            allowed_origins: vec!["https://app.example".into()],
            ..heartwire::ws::WsConfig::default()
        },
        ..config()
    });
    let addr = listed.ws_addr();
    let with_origin = |origin: &str| {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    tokio_tungstenite::connect_async(with_origin("https://app.example"))
        .await
        .expect("listed origin");
    match tokio_tungstenite::connect_async(with_origin(&format!("http://{addr}"))).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403 once origins are listed, got {other:?}"),
    }
}

/// `wss://` with the server's `tls.cert`/`tls.key`, verified against a private CA.
#[cfg(feature = "tls")]
#[actix_rt::test]
async fn secure_websocket_with_a_private_ca() {
    let (ca, tls) = test_tls();
    let s = start_ws(Config { tls, ..config() });
    let tcp = tokio::net::TcpStream::connect(s.ws_addr()).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = heartwire::testing::tls_connector(&ca)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let (ws, response) = tokio_tungstenite::client_async("wss://localhost/ws", tls)
        .await
        .expect("WebSocket handshake over TLS");
    assert_eq!(response.status(), 101);
    let mut c = WsClient::new(ws);
    c.send(json!({"type": "hello", "user": "secure"})).await;
    c.recv_type("welcome").await;
    assert_eq!(s.server.kick_user("secure").await.unwrap(), 1);
    assert_eq!(closed_after_bye(&mut c, "kicked").await.0, 4000);

    // A plain-text WebSocket client gets no upgrade from the TLS listener.
    let plain = tokio::time::timeout(
        PATIENCE,
        tokio_tungstenite::connect_async(format!("ws://{}/ws", s.ws_addr())),
    )
    .await
    .expect("refused in time");
    assert!(
        plain.is_err(),
        "a plain WebSocket must not be served over TLS"
    );
}

/// `hello.heartbeat.interval_ms` is granted within `heartbeat_min`/`heartbeat_max`, announced
/// in `welcome`, and the dead-peer bound follows the granted interval, on TCP and WebSocket.
#[actix_rt::test]
async fn heartbeat_negotiation_on_both_transports() {
    let s = start_ws(Config {
        heartbeat_interval: Duration::from_millis(400),
        heartbeat_min: Some(Duration::from_millis(100)),
        heartbeat_max: Some(Duration::from_secs(2)),
        max_missed: 2,
        ..config()
    });
    let hello = |user: &str, ms: Option<u64>| match ms {
        Some(ms) => json!({"type": "hello", "user": user, "heartbeat": {"interval_ms": ms}}),
        None => json!({"type": "hello", "user": user}),
    };
    for (asked, granted) in [
        (Some(50), 100),
        (Some(250), 250),
        (Some(60_000), 2000),
        (None, 400),
    ] {
        let mut t = Client::connect(s.tcp_addr()).await;
        t.send(hello("tcp", asked)).await;
        let w = t.recv_type("welcome").await;
        assert_eq!(
            w["heartbeat"],
            json!({"interval_ms": granted, "max_missed": 2}),
            "{asked:?}"
        );
        let mut c = WsClient::connect(s.ws_addr()).await;
        c.send(hello("ws", asked)).await;
        let w = c.recv_type("welcome").await;
        assert_eq!(
            w["heartbeat"],
            json!({"interval_ms": granted, "max_missed": 2}),
            "{asked:?}"
        );
    }
    // A malformed request is a bad request, not a default.
    let mut t = Client::connect(s.tcp_addr()).await;
    t.send(json!({"type": "hello", "user": "x", "heartbeat": {"interval_ms": "soon"}}))
        .await;
    assert_eq!(t.recv_non_ping().await["code"], "bad_request");

    // Enforced per session: silent clients granted 100 ms go within (200, 300] ms; one granted
    // 2 s, silent as long, is still there.
    let interval = Duration::from_millis(100);
    let mut fast_tcp = Client::connect(s.tcp_addr()).await;
    fast_tcp.send(hello("fast-tcp", Some(100))).await;
    fast_tcp.recv_type("welcome").await;
    let tcp_since = Instant::now();
    let mut fast_ws = WsClient::connect(s.ws_addr()).await;
    fast_ws.send(hello("fast-ws", Some(100))).await;
    fast_ws.recv_type("welcome").await;
    let ws_since = Instant::now();
    let mut slow = WsClient::connect(s.ws_addr()).await;
    slow.send(hello("slow", Some(2000))).await;
    slow.recv_type("welcome").await;
    let tcp_frames = fast_tcp.until_closed().await;
    let tcp_silence = tcp_since.elapsed();
    fast_ws.auto_pong = false;
    let (ws_frames, _) = fast_ws.until_closed().await;
    let ws_silence = ws_since.elapsed();
    for (frames, silence) in [(tcp_frames, tcp_silence), (ws_frames, ws_silence)] {
        assert_eq!(
            frames,
            [json!({"type": "bye", "reason": "heartbeat_timeout"})]
        );
        assert!(silence > interval * 2, "closed too early: {silence:?}");
        assert!(
            silence <= interval * 3 + Duration::from_millis(250),
            "too late: {silence:?}"
        );
    }
    // Silent as long as the fast ones, the 2 s session is still open (it may have been pinged).
    slow.send(json!({"type": "ping", "seq": 3})).await;
    assert_eq!(
        slow.recv_non_ping().await,
        json!({"type": "pong", "seq": 3})
    );
}

/// TCP and WebSocket subscribers of one room receive the same gapless stream, whichever
/// transport each message was published from.
#[actix_rt::test]
async fn mixed_rooms_deliver_one_gapless_stream_to_both_transports() {
    let s = start_ws(config());
    let (mut tcp_sub, _) = subscriber(s.tcp_addr(), "tcp-sub", "mixed").await;
    let (mut ws_sub, _) = WsClient::hello(s.ws_addr(), "ws-sub").await;
    ws_sub
        .send(json!({"type": "subscribe", "room": "mixed"}))
        .await;
    ws_sub.recv_type("subscribed").await;
    let (mut tcp_pub, _) = Client::hello(s.tcp_addr(), "tcp-pub").await;
    let (mut ws_pub, _) = WsClient::hello(s.ws_addr(), "ws-pub").await;
    const N: u64 = 200;
    for n in 1..=N {
        let frame = json!({"type": "publish", "room": "mixed", "data": n, "id": format!("m{n}")});
        if n % 2 == 0 {
            tcp_pub.send(frame).await;
        } else {
            ws_pub.send(frame).await;
        }
    }
    let mut tcp_seen = Vec::new();
    let mut ws_seen = Vec::new();
    for _ in 0..N {
        tcp_seen.push(tcp_sub.recv_type("message").await);
        ws_seen.push(ws_sub.recv_type("message").await);
    }
    assert_eq!(tcp_seen, ws_seen, "the same stream on both transports");
    for (i, m) in tcp_seen.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "gapless: {m}");
    }
    let from: std::collections::HashSet<_> = tcp_seen
        .iter()
        .map(|m| m["from"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(from.len(), 2, "published from both transports: {from:?}");
    // and the acks went back to each publisher on its own transport
    for _ in 0..N / 2 {
        tcp_pub.recv_type("ack").await;
        ws_pub.recv_type("ack").await;
    }
}

/// `max_connections` and `max_connections_per_ip` count WebSocket and TCP connections
/// together; a refused WebSocket gets the same `bye` as TCP, then close 4000.
#[actix_rt::test]
async fn connection_limits_count_both_transports() {
    let s = start_ws(Config {
        limits: heartwire::LimitsConfig {
            max_connections: 2,
            ..heartwire::LimitsConfig::default()
        },
        shutdown_reconnect: Duration::from_millis(400),
        ..config()
    });
    let (_t, _) = Client::hello(s.tcp_addr(), "t").await;
    let (_w, _) = WsClient::hello(s.ws_addr(), "w").await;
    let mut refused = WsClient::connect(s.ws_addr()).await;
    let (frames, close) = refused.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["reason"], "server_full");
    let hint = frames[0]["reconnect_ms"].as_u64().unwrap();
    assert!((400..=800).contains(&hint), "{hint}");
    assert_eq!(close_of(&close), (4000, "server_full".to_owned()));
    let mut tcp = Client::connect(s.tcp_addr()).await;
    assert_eq!(tcp.until_closed().await[0]["reason"], "server_full");
    let metrics = s.server.render_metrics().await.unwrap();
    assert!(
        metrics.contains("heartwire_limit_hits_total{limit=\"max_connections\"} 2"),
        "{metrics}"
    );
}

/// `max_connections_per_ip` counts a client's TCP and WebSocket connections together.
#[actix_rt::test]
async fn per_ip_limit_counts_both_transports() {
    let s = start_ws(Config {
        limits: heartwire::LimitsConfig {
            max_connections_per_ip: 1,
            ..heartwire::LimitsConfig::default()
        },
        ..config()
    });
    let (_t, _) = Client::hello(s.tcp_addr(), "t").await;
    let mut refused = WsClient::connect(s.ws_addr()).await;
    let (frames, close) = refused.until_closed().await;
    assert_eq!(frames[0]["reason"], "too_many_connections", "{frames:?}");
    assert_eq!(close_of(&close), (4000, "too_many_connections".to_owned()));
}

/// The listener serves the browser page at `/` and the JavaScript client at `/heartwire.js`,
/// compiled into the binary.
#[actix_rt::test]
async fn page_and_client_module_are_served() {
    let s = start_ws(config());
    let http = awc::Client::default();
    for (path, kind, start) in [
        ("/", "text/html; charset=utf-8", "<!doctype html>"),
        ("/heartwire.js", "text/javascript; charset=utf-8", ""),
    ] {
        let mut res = http
            .get(format!("http://{}{path}", s.ws_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        assert_eq!(res.headers().get("content-type").unwrap(), kind);
        let body = res.body().await.unwrap();
        assert!(body.starts_with(start.as_bytes()), "{path}");
        assert!(!body.is_empty());
    }
    let res = http
        .get(format!("http://{}/nothing", s.ws_addr()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// The TCP slow-consumer test over WebSocket: a subscriber that never reads is closed as a
/// slow consumer and leaves the registry, while a reading subscriber of the same room gets
/// every message in order and the publisher is never held up.
#[actix_rt::test]
async fn slow_consumer_is_cut_off_and_nobody_else_suffers() {
    let s = start_ws(Config {
        outbound_budget: 64 * 1024,
        max_frame: 4096,
        close_timeout: Duration::from_millis(300),
        heartbeat_interval: Duration::from_secs(120),
        ..config()
    });
    let mut slow = WsClient::slow_subscriber(s.ws_addr(), "slow", "flood").await;
    let (mut good, _) = WsClient::hello(s.ws_addr(), "good").await;
    good.send(json!({"type": "subscribe", "room": "flood"}))
        .await;
    good.recv_type("subscribed").await;
    let (mut publisher, _) = WsClient::hello(s.ws_addr(), "pub").await;
    assert_eq!(stats(&s.server).await.sessions, 3);

    const BATCH: u64 = 32;
    let pad = "x".repeat(1000);
    let started = Instant::now();
    let (mut published, mut received) = (0u64, 0u64);
    let mut gone_at = None;
    loop {
        for _ in 0..BATCH {
            published += 1;
            publisher
                .send(json!({"type": "publish", "room": "flood", "data": {"n": published, "pad": pad}}))
                .await;
        }
        while received < published {
            let m = good.recv_type("message").await;
            received += 1;
            assert_eq!(m["seq"], received, "gapless, in order: {m}");
        }
        if gone_at.is_none() && stats(&s.server).await.sessions == 2 {
            gone_at = Some(published);
        }
        if gone_at.is_some_and(|at| published >= at + 4 * BATCH) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "slow consumer still registered after {published} messages"
        );
    }
    eprintln!("slow WebSocket consumer removed after {gone_at:?} messages");
    publisher.send(json!({"type": "ping", "seq": 5})).await;
    assert_eq!(
        publisher.recv_non_ping().await,
        json!({"type": "pong", "seq": 5})
    );

    // The slow client gets a gapless prefix, then `bye{slow_consumer}` and 4000, or (when the
    // flush was cut after `close_timeout`) just the end.
    let (frames, close) = slow.until_closed().await;
    let (messages, bye) = match frames.split_last() {
        Some((bye, rest)) if bye["type"] == "bye" => (rest, Some(bye)),
        _ => (frames.as_slice(), None),
    };
    for (i, m) in messages.iter().enumerate() {
        assert_eq!(m["seq"], i as u64 + 1, "a gapless prefix: {m}");
    }
    assert!((messages.len() as u64) < published);
    if let Some(bye) = bye {
        assert_eq!(*bye, json!({"type": "bye", "reason": "slow_consumer"}));
        assert_eq!(close_of(&close), (4000, "slow_consumer".to_owned()));
    }
    eprintln!(
        "slow client read {} messages, bye: {}",
        messages.len(),
        bye.is_some()
    );
}

/// WebSocket subscribers that stop reading cost the server a bounded amount of memory each:
/// its outbound budget, the writer's window in actix-ws's channel and actix-http's write
/// buffer, however much is published to them. Measured on the binary's resident memory, with
/// the closing flush held open (`close_timeout` 60 s) so the stuck connections stay.
#[cfg(feature = "cli")]
#[actix_rt::test]
async fn stuck_websocket_subscribers_cost_bounded_memory() {
    use crate::common::process::{serve_command, ChildGuard};

    let args = [
        "--listen",
        "127.0.0.1:0",
        "--ws",
        "127.0.0.1:0",
        "--outbound-budget",
        "131072",
        "--history-size",
        "1",
        "--heartbeat-interval",
        "120s",
        "--close-timeout",
        "60s",
        "--workers",
        "2",
    ];
    let mut child =
        ChildGuard::spawn(serve_command(&args, &[]).stderr(std::process::Stdio::null()));
    let lines = child.stdout_lines();
    let addr = child.announced(&lines, "ws on ");
    let rss_kib = || child.rss_kib();

    const STUCK: usize = 16;
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        stuck.push(WsClient::slow_subscriber(addr, &format!("stuck{i}"), "big").await);
    }
    let (mut publisher, _) = WsClient::hello(addr, "pub").await;
    // 60 KB messages; each round is 9 MB for every subscriber: past kernel buffers and budget.
    let pad = "y".repeat(60_000);
    let round = |n: u64| {
        let frames: Vec<Value> = (0..150)
            .map(|i| json!({"type": "publish", "room": "big", "data": pad, "id": format!("{n}-{i}")}))
            .collect();
        frames
    };
    let before = rss_kib();
    let mut after = Vec::new();
    for n in 0..2 {
        for frame in round(n) {
            publisher.send(frame).await;
        }
        for _ in 0..150 {
            publisher.recv_type("ack").await;
        }
        after.push(rss_kib());
    }
    let grown = after[1].saturating_sub(before);
    eprintln!("RSS before {before} KiB, after rounds {after:?} KiB: {grown} KiB for {STUCK} stuck");
    // Budget 128 KiB + window 16 KiB + a frame + actix-http's buffer (32 KiB + a chunk), and
    // slack for allocator pages: 512 KiB each.
    assert!(
        grown < STUCK as u64 * 512,
        "{grown} KiB for {STUCK} stuck subscribers"
    );
    // A second round as large as the first holds no more.
    assert!(
        after[1] < after[0] + 4 * 1024,
        "memory kept growing with what was published: {after:?}"
    );
    drop(stuck);
}
