//! Framing and error rules of protocol v1: newline-delimited JSON, `max_frame`, bad frames,
//! bad requests and unknown types, over real sockets.

use std::time::Duration;

use crate::common::{config, start, Client};
use heartwire::Config;
use serde_json::{json, Value};

const MAX_FRAME: usize = 256;

/// Framing tests: small `max_frame`, and a heartbeat slow enough never to close anyone.
fn framing_config() -> Config {
    Config {
        max_frame: MAX_FRAME,
        max_bad_frames: 100,
        heartbeat_interval: Duration::from_secs(60),
        ..config()
    }
}

/// A `ping` frame of exactly `len` bytes (no newline), padded with an ignored field.
fn ping_of_len(seq: u64, len: usize) -> Vec<u8> {
    let base = format!(r#"{{"type":"ping","seq":{seq},"pad":""}}"#);
    assert!(len >= base.len(), "{len} is too short for a ping");
    let line = format!(
        r#"{{"type":"ping","seq":{seq},"pad":"{}"}}"#,
        "x".repeat(len - base.len())
    );
    assert_eq!(line.len(), len);
    line.into_bytes()
}

/// Reads the next `n` non-ping frames.
async fn recv_n(c: &mut Client, n: usize) -> Vec<Value> {
    let mut frames = Vec::with_capacity(n);
    for _ in 0..n {
        frames.push(c.recv_non_ping().await);
    }
    frames
}

/// Asserts `frame` is `error{code}` with the given `id` (or none).
fn assert_error(frame: &Value, code: &str, id: Option<&str>) {
    assert_eq!(frame["type"], "error", "expected error {code}, got {frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        frame["message"].is_string(),
        "error needs a message: {frame}"
    );
    match id {
        Some(id) => assert_eq!(
            frame["id"], id,
            "the offending frame's id is echoed: {frame}"
        ),
        None => assert!(frame["id"].is_null(), "no id to echo: {frame}"),
    }
}

/// Asserts the connection still answers: a ping gets its pong.
async fn assert_usable(c: &mut Client, seq: u64) {
    c.send(json!({"type": "ping", "seq": seq})).await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "pong", "seq": seq}),
        "connection no longer usable"
    );
}

/// Reads until EOF and asserts the server's last words were exactly `bye{reason}`.
async fn assert_closed_with(c: &mut Client, reason: &str) {
    let frames = c.until_closed().await;
    assert_eq!(
        frames.len(),
        1,
        "expected only bye{{{reason}}}, got {frames:?}"
    );
    assert_eq!(frames[0]["type"], "bye", "{frames:?}");
    assert_eq!(frames[0]["reason"], reason, "{frames:?}");
}

#[actix_rt::test]
async fn non_json_line_is_bad_frame_and_connection_stays_usable() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send_raw(b"this is not json\n").await;
    assert_error(&c.recv_non_ping().await, "bad_frame", None);
    c.send_raw(b"{\"type\":\"ping\",\"seq\":1\n").await; // truncated object
    assert_error(&c.recv_non_ping().await, "bad_frame", None);
    assert_usable(&mut c, 2).await;
    // Rooms still work too.
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    assert_eq!(c.recv_type("subscribed").await["room"], "r");
}

#[actix_rt::test]
async fn json_without_a_string_type_is_bad_frame() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    let lines: [&[u8]; 10] = [
        b"{}",
        br#"{"type":5,"id":"n"}"#,
        br#"{"type":null}"#,
        br#"{"type":["ping"]}"#,
        br#"{"type":{"name":"ping"}}"#,
        br#"{"typ":"ping","seq":1}"#,
        br#"[{"type":"ping"}]"#,
        br#""ping""#,
        b"42",
        b"",
    ];
    for line in lines {
        c.send_raw(&[line, b"\n"].concat()).await;
        let frame = c.recv_non_ping().await;
        assert_eq!(
            frame["type"],
            "error",
            "{:?}: {frame}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(
            frame["code"],
            "bad_frame",
            "{:?}: {frame}",
            String::from_utf8_lossy(line)
        );
    }
    assert_usable(&mut c, 1).await;
}

#[actix_rt::test]
async fn too_many_bad_frames_close_with_protocol_error() {
    let server = start(Config {
        max_bad_frames: 3,
        ..framing_config()
    });
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    for _ in 0..2 {
        c.send_raw(b"garbage\n").await;
        assert_error(&c.recv_non_ping().await, "bad_frame", None);
    }
    // Lines that are frames, even refused ones, are not bad frames and do not count.
    for i in 0..3 {
        c.send(json!({"type": "publish", "data": 1, "id": format!("b{i}")}))
            .await;
        assert_error(
            &c.recv_non_ping().await,
            "bad_request",
            Some(&format!("b{i}")),
        );
        c.send(json!({"type": "no_such_type", "id": format!("u{i}")}))
            .await;
        assert_error(
            &c.recv_non_ping().await,
            "unknown_type",
            Some(&format!("u{i}")),
        );
    }
    assert_usable(&mut c, 1).await;

    // The third bad line closes the connection.
    c.send_raw(b"{not json}\n").await;
    let frames = c.until_closed().await;
    let (bye, before) = frames.split_last().expect("a bye before EOF");
    assert_eq!(bye["type"], "bye", "{frames:?}");
    assert_eq!(bye["reason"], "protocol_error", "{frames:?}");
    assert!(before.len() <= 1, "{frames:?}");
    for f in before {
        assert_error(f, "bad_frame", None);
    }
}

#[actix_rt::test]
async fn line_longer_than_max_frame_closes_with_frame_too_large() {
    let server = start(framing_config());
    let (mut c, welcome) = Client::hello(server.local_addr(), "u").await;
    assert_eq!(welcome["max_frame"], MAX_FRAME);
    // A valid frame one byte too long, behind a frame that is answered first.
    let mut bytes = b"{\"type\":\"ping\",\"seq\":1}\n".to_vec();
    bytes.extend(ping_of_len(2, MAX_FRAME + 1));
    bytes.push(b'\n');
    c.send_raw(&bytes).await;
    let frames = c.until_closed().await;
    assert_eq!(
        frames.len(),
        2,
        "expected pong then bye{{frame_too_large}}, got {frames:?}"
    );
    assert_eq!(frames[0], json!({"type": "pong", "seq": 1}));
    assert_eq!(frames[1]["type"], "bye");
    assert_eq!(frames[1]["reason"], "frame_too_large");
}

#[actix_rt::test]
async fn overlong_line_without_newline_closes_without_waiting_for_one() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    // The start of a frame that never ends; the client keeps its socket open and waits.
    let mut bytes = b"{\"type\":\"ping\",\"pad\":\"".to_vec();
    bytes.resize(MAX_FRAME * 4, b'x');
    c.send_raw(&bytes).await;
    assert_closed_with(&mut c, "frame_too_large").await;
}

/// The boundary of the case above: `max_frame + 1` bytes without a newline are already a
/// line longer than `max_frame` (the last byte is not `\r`, so no `\r\n` ending can make it
/// fit).
#[actix_rt::test]
async fn line_one_byte_over_max_frame_without_newline_closes() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    let bytes = ping_of_len(1, MAX_FRAME + 1);
    assert_ne!(bytes.last(), Some(&b'\r'));
    c.send_raw(&bytes).await;
    let (frames, closed) = c.frames_until_closed_within(Duration::from_secs(5)).await;
    assert!(
        closed,
        "server still waiting for a newline after {} bytes; frames: {frames:?}",
        MAX_FRAME + 1
    );
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["reason"], "frame_too_large", "{frames:?}");
}

#[actix_rt::test]
async fn line_of_exactly_max_frame_bytes_is_accepted() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send_raw(&[ping_of_len(7, MAX_FRAME), b"\n".to_vec()].concat())
        .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 7}));
    // With a `\r\n` ending too: the `\r` is part of the ending, not of the line.
    c.send_raw(&[ping_of_len(8, MAX_FRAME), b"\r\n".to_vec()].concat())
        .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 8}));
    // A publish whose `message` is exactly `max_frame` long (with the largest seq the server
    // reserves room for) is delivered; one byte more is refused, as the server never sends
    // a frame over the limit it announced.
    let message = |data: &str| {
        json!({"type": "message", "room": "r", "seq": u64::MAX, "from": "u", "data": data, "id": "big"})
            .to_string()
    };
    let data = "d".repeat(MAX_FRAME - message("").len());
    assert_eq!(message(&data).len(), MAX_FRAME);
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    c.recv_type("subscribed").await;
    c.send(json!({"type": "publish", "room": "r", "data": data, "id": "big"}))
        .await;
    let frames = [c.recv_non_ping().await, c.recv_non_ping().await];
    let delivered = frames
        .iter()
        .find(|f| f["type"] == "message")
        .unwrap_or_else(|| panic!("{frames:?}"));
    assert_eq!(delivered["data"], data.as_str());
    assert!(frames.iter().any(|f| f["type"] == "ack"), "{frames:?}");
    let over = format!("{data}d");
    c.send(json!({"type": "publish", "room": "r", "data": over, "id": "over"}))
        .await;
    let refused = c.recv_non_ping().await;
    assert_eq!(
        (refused["code"].as_str(), refused["id"].as_str()),
        (Some("bad_request"), Some("over")),
        "{refused}"
    );
    assert_usable(&mut c, 9).await;
}

#[actix_rt::test]
async fn crlf_line_endings_are_accepted() {
    let server = start(framing_config());
    let mut c = Client::connect(server.local_addr()).await;
    c.send_raw(b"{\"type\":\"hello\",\"user\":\"crlf\"}\r\n")
        .await;
    let welcome = c.recv_type("welcome").await;
    assert_eq!(welcome["user"], "crlf", "the \\r is not part of the frame");
    c.send_raw(b"{\"type\":\"ping\",\"seq\":1}\r\n{\"type\":\"subscribe\",\"room\":\"r\"}\r\n")
        .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    assert_eq!(c.recv_type("subscribed").await["room"], "r");
    // Mixed endings on one connection.
    c.send_raw(b"{\"type\":\"ping\",\"seq\":2}\n{\"type\":\"ping\",\"seq\":3}\r\n")
        .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 2}));
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 3}));
}

#[actix_rt::test]
async fn known_type_with_missing_or_invalid_field_is_bad_request_with_id() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    let cases = [
        (
            json!({"type": "publish", "data": 1, "id": "p1"}),
            Some("p1"),
        ),
        (
            json!({"type": "publish", "room": "r", "id": "p2"}),
            Some("p2"),
        ),
        (
            json!({"type": "publish", "room": 5, "data": 1, "id": "p3"}),
            Some("p3"),
        ),
        (
            json!({"type": "publish", "room": "", "data": 1, "id": "p4"}),
            Some("p4"),
        ),
        (json!({"type": "publish", "data": 1}), None),
        (json!({"type": "send", "data": 1, "id": "s1"}), Some("s1")),
        (json!({"type": "send", "to": "x", "id": "s2"}), Some("s2")),
        (json!({"type": "subscribe", "id": "q1"}), Some("q1")),
        (
            json!({"type": "subscribe", "room": "r", "since": "yesterday"}),
            None,
        ),
        (json!({"type": "unsubscribe"}), None),
    ];
    for (frame, id) in cases {
        c.send(frame.clone()).await;
        let answer = c.recv_non_ping().await;
        assert_eq!(answer["code"], "bad_request", "{frame} -> {answer}");
        assert_error(&answer, "bad_request", id);
    }
    // Nothing was published or subscribed by the refused frames.
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    assert_eq!(c.recv_type("subscribed").await["seq"], 0);
    assert_usable(&mut c, 1).await;
}

#[actix_rt::test]
async fn unknown_type_is_answered_and_the_connection_stays_open() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send(json!({"type": "teleport", "id": "t1", "where": "mars"}))
        .await;
    assert_error(&c.recv_non_ping().await, "unknown_type", Some("t1"));
    c.send(json!({"type": "teleport"})).await;
    assert_error(&c.recv_non_ping().await, "unknown_type", None);
    assert_usable(&mut c, 1).await;
    // Many of them do not close the connection (they are not bad frames).
    for i in 0..20 {
        c.send(json!({"type": format!("x{i}"), "id": format!("i{i}")}))
            .await;
        assert_error(
            &c.recv_non_ping().await,
            "unknown_type",
            Some(&format!("i{i}")),
        );
    }
    assert_usable(&mut c, 2).await;
}

#[actix_rt::test]
async fn invalid_utf8_line_is_bad_frame_and_connection_stays_open() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    let lines: [&[u8]; 3] = [
        b"\xff\xfe\xfd",
        b"{\"type\":\"pi\xffng\",\"seq\":1}",
        b"{\"type\":\"ping\xc3\",\"seq\":1}",
    ];
    for line in lines {
        c.send_raw(&[line, b"\n"].concat()).await;
        let frame = c.recv_non_ping().await;
        assert_eq!(frame["code"], "bad_frame", "{line:?}: {frame}");
    }
    assert_usable(&mut c, 1).await;
}

/// Invalid UTF-8 makes the whole line invalid JSON, even inside a field the server does not
/// look at.
#[actix_rt::test]
async fn invalid_utf8_inside_any_string_is_bad_frame() {
    let server = start(framing_config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    c.send(json!({"type": "subscribe", "room": "r"})).await;
    c.recv_type("subscribed").await;
    let lines: [&[u8]; 3] = [
        b"{\"type\":\"ping\",\"seq\":1,\"note\":\"\xff\xfe\"}",
        b"{\"type\":\"publish\",\"room\":\"r\",\"data\":\"\xc3(\",\"id\":\"u1\"}",
        b"{\"type\":\"publish\",\"room\":\"r\",\"data\":1,\"id\":\"u2\",\"x\":\"\xed\xa0\x80\"}",
    ];
    for line in lines {
        c.send_raw(&[line, b"\n"].concat()).await;
        let frame = c.recv_non_ping().await;
        assert_eq!(
            (frame["type"].as_str(), frame["code"].as_str()),
            (Some("error"), Some("bad_frame")),
            "{:?}: {frame}",
            String::from_utf8_lossy(line)
        );
    }
    assert_usable(&mut c, 2).await;
}

#[actix_rt::test]
async fn several_frames_in_one_write_are_all_handled_in_order() {
    let server = start(framing_config());
    let mut c = Client::connect(server.local_addr()).await;
    let mut batch = String::new();
    for frame in [
        json!({"type": "hello", "user": "batch"}),
        json!({"type": "ping", "seq": 1}),
        json!({"type": "subscribe", "room": "r"}),
        json!({"type": "ping", "seq": 2}),
        json!({"type": "publish", "room": "r", "data": "hi", "id": "b1"}),
    ] {
        batch.push_str(&format!("{frame}\n"));
    }
    c.send_raw(batch.as_bytes()).await;
    assert_eq!(c.recv_type("welcome").await["user"], "batch");
    // PROTOCOL.md does not order answers of different kinds against each other (a `pong` may
    // overtake a `subscribed`), so check each kind's own order.
    let frames = recv_n(&mut c, 5).await;
    let kinds =
        |kind: &str| -> Vec<&Value> { frames.iter().filter(|f| f["type"] == kind).collect() };
    assert_eq!(
        kinds("pong"),
        [
            &json!({"type": "pong", "seq": 1}),
            &json!({"type": "pong", "seq": 2})
        ],
        "{frames:?}"
    );
    assert_eq!(kinds("subscribed").len(), 1, "{frames:?}");
    assert_eq!(
        kinds("ack"),
        [&json!({"type": "ack", "id": "b1", "seq": 1})],
        "{frames:?}"
    );
    let message = kinds("message");
    assert_eq!(message.len(), 1, "{frames:?}");
    assert_eq!(
        (&message[0]["data"], &message[0]["seq"]),
        (&json!("hi"), &json!(1))
    );
    let pos = |kind: &str| frames.iter().position(|f| f["type"] == kind);
    assert!(
        pos("subscribed") < pos("message"),
        "replay/live order: subscribed comes before the room's messages: {frames:?}"
    );
}

#[actix_rt::test]
async fn a_frame_split_across_many_writes_is_reassembled() {
    let server = start(framing_config());
    let mut c = Client::connect(server.local_addr()).await;
    // Byte by byte, each byte its own segment.
    c.send_in_pieces(
        b"{\"type\":\"hello\",\"user\":\"slow\"}\n",
        1,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(c.recv_type("welcome").await["user"], "slow");
    c.send_in_pieces(
        b"{\"type\":\"ping\",\"seq\":1}\r\n{\"type\":\"ping\",\"seq\":2}\n",
        1,
        Duration::from_millis(1),
    )
    .await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 1}));
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 2}));
    // Cuts that straddle frames and multi-byte UTF-8 characters.
    let frames = "{\"type\":\"subscribe\",\"room\":\"pièce\"}\n{\"type\":\"ping\",\"seq\":3}\n";
    c.send_in_pieces(frames.as_bytes(), 5, Duration::from_millis(2))
        .await;
    let mut got = recv_n(&mut c, 2).await;
    got.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0], json!({"type": "pong", "seq": 3}), "{got:?}");
    assert_eq!(got[1]["type"], "subscribed", "{got:?}");
    assert_eq!(got[1]["room"], "pièce", "{got:?}");
    // A pause in the middle of a frame is not an end of frame.
    c.send_raw(b"{\"type\":\"pi").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send_raw(b"ng\",\"seq\":4}\n").await;
    assert_eq!(c.recv_non_ping().await, json!({"type": "pong", "seq": 4}));
}

#[actix_rt::test]
async fn room_names_are_limited_to_256_bytes() {
    let server = start(config());
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    let longest = "r".repeat(256);
    let too_long = "r".repeat(257);
    // Multi-byte characters count in bytes: 129 × 2 = 258 bytes.
    let too_long_utf8 = "é".repeat(129);

    c.send(json!({"type": "subscribe", "room": longest})).await;
    assert_eq!(c.recv_type("subscribed").await["room"], longest.as_str());

    for room in [&too_long, &too_long_utf8] {
        c.send(json!({"type": "subscribe", "room": room})).await;
        assert_error(&c.recv_non_ping().await, "bad_request", None);
        c.send(json!({"type": "publish", "room": room, "data": 1, "id": "long"}))
            .await;
        assert_error(&c.recv_non_ping().await, "bad_request", Some("long"));
        c.send(json!({"type": "unsubscribe", "room": room})).await;
        assert_error(&c.recv_non_ping().await, "bad_request", None);
    }
    c.send(json!({"type": "subscribe", "room": ""})).await;
    assert_error(&c.recv_non_ping().await, "bad_request", None);

    // The 256-byte room works end to end.
    c.send(json!({"type": "publish", "room": longest, "data": "ok", "id": "fits"}))
        .await;
    let mut got = [c.recv_non_ping().await, c.recv_non_ping().await];
    got.sort_by_key(|f| f["type"].as_str().unwrap_or_default().to_owned());
    assert_eq!(got[0], json!({"type": "ack", "id": "fits", "seq": 1}));
    assert_eq!(got[1]["room"], longest.as_str());
    assert_usable(&mut c, 1).await;
}
