//! Token auth, TLS, and every limit triggering, over real sockets.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::{config, start, Client};
use heartwire::Config;
use heartwire::{mint_token as mint, AuthConfig, LimitsConfig, TlsConfig};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const SECRET: &str = "security-test-secret-0123";

fn with_auth() -> Config {
    Config {
        auth: AuthConfig {
            jwt_secret: Some(SECRET.into()),
            ..AuthConfig::default()
        },
        ..config()
    }
}

fn token(user: &str, rooms: Option<Vec<&str>>) -> String {
    let rooms = rooms.map(|r| r.into_iter().map(String::from).collect());
    mint(SECRET, user, rooms, Duration::from_secs(600)).unwrap()
}

async fn hello_token(addr: SocketAddr, token: &str) -> Client {
    let mut c = Client::connect(addr).await;
    c.send(json!({"type": "hello", "token": token, "user": "someone-else"}))
        .await;
    c
}

#[actix_rt::test]
async fn valid_token_sets_the_user_from_sub() {
    let server = start(with_auth());
    let mut c = hello_token(server.local_addr(), &token("alice", None)).await;
    let welcome = c.recv_type("welcome").await;
    assert_eq!(
        welcome["user"], "alice",
        "the token's subject wins over hello.user"
    );
}

#[actix_rt::test]
async fn missing_forged_and_expired_tokens_are_unauthorized() {
    let server = start(with_auth());
    let forged = mint(
        "another-secret-0123456",
        "alice",
        None,
        Duration::from_secs(600),
    )
    .unwrap();
    let expired = {
        let claims = heartwire::Claims {
            sub: "alice".into(),
            exp: 1_000_000,
            rooms: None,
            send: None,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    };
    for hello in [
        json!({"type": "hello", "user": "alice"}),
        json!({"type": "hello", "token": forged}),
        json!({"type": "hello", "token": expired}),
        json!({"type": "hello", "token": "garbage"}),
    ] {
        let mut c = Client::connect(server.local_addr()).await;
        c.send(hello.clone()).await;
        let frames = c.until_closed().await;
        assert_eq!(frames.len(), 2, "{hello}: {frames:?}");
        assert_eq!(frames[0]["code"], "unauthorized", "{hello}");
        assert_eq!(frames[1], json!({"type": "bye", "reason": "unauthorized"}));
    }
}

#[actix_rt::test]
async fn token_rooms_claim_restricts_subscribe_and_publish() {
    let server = start(with_auth());
    let mut c = hello_token(
        server.local_addr(),
        &token("bob", Some(vec!["lobby", "team-*"])),
    )
    .await;
    c.recv_type("welcome").await;
    c.send(json!({"type": "subscribe", "room": "team-7"})).await;
    assert_eq!(c.recv_non_ping().await["type"], "subscribed");
    c.send(json!({"type": "subscribe", "room": "admin"})).await;
    assert_eq!(c.recv_non_ping().await["code"], "forbidden");
    c.send(json!({"type": "publish", "room": "lobby2", "data": 1, "id": "p1"}))
        .await;
    let e = c.recv_non_ping().await;
    assert_eq!(
        (e["code"].as_str(), e["id"].as_str()),
        (Some("forbidden"), Some("p1"))
    );
    c.send(json!({"type": "publish", "room": "team-7", "data": 1, "id": "p2"}))
        .await;
    assert_eq!(c.recv_non_ping().await["type"], "message");
    assert_eq!(c.recv_non_ping().await["type"], "ack");
}

#[actix_rt::test]
async fn session_ends_when_its_token_expires() {
    let server = start(Config {
        auth: AuthConfig {
            jwt_secret: Some(SECRET.into()),
            leeway: Some(Duration::ZERO),
            ..AuthConfig::default()
        },
        ..config()
    });
    let short = mint(SECRET, "carol", None, Duration::from_secs(1)).unwrap();
    let mut c = hello_token(server.local_addr(), &short).await;
    c.recv_type("welcome").await;
    let frames = c.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "bye", "reason": "unauthorized"}))
    );
}

#[actix_rt::test]
async fn tls_round_trip_with_a_private_ca() {
    let (ca, tls) = crate::common::test_tls();
    let server = start(Config { tls, ..config() });
    let connector = heartwire::testing::tls_connector(&ca);
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = connector.connect(name, tcp).await.expect("TLS handshake");
    let (read, mut write) = tokio::io::split(tls);
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(
            b"{\"type\":\"hello\",\"user\":\"tls\"}\n{\"type\":\"subscribe\",\"room\":\"r\"}\n",
        )
        .await
        .unwrap();
    write
        .write_all(b"{\"type\":\"publish\",\"room\":\"r\",\"data\":\"secret\"}\n")
        .await
        .unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        let line = tokio::time::timeout(crate::common::PATIENCE, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let frame: serde_json::Value = serde_json::from_str(&line).unwrap();
        if frame["type"] != "ping" {
            kinds.push(frame);
        }
    }
    assert_eq!(kinds[0]["type"], "welcome");
    assert_eq!(kinds[1]["type"], "subscribed");
    assert_eq!(kinds[2]["data"], "secret");

    // A plain-text client fails the TLS handshake and is disconnected.
    let mut plain = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    plain
        .write_all(b"{\"type\":\"hello\",\"user\":\"x\"}\n")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let read = tokio::time::timeout(
        crate::common::PATIENCE,
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut sink),
    )
    .await;
    assert!(read.is_ok(), "plain-text client was not disconnected");
    assert!(!String::from_utf8_lossy(&sink).contains("welcome"));
}

#[actix_rt::test]
async fn tls_config_errors_name_the_key() {
    let err = heartwire::ServerBuilder::new(Config {
        tls: TlsConfig {
            cert: Some("/nonexistent/cert.pem".into()),
            key: Some("/nonexistent/key.pem".into()),
        },
        ..config()
    })
    .start()
    .err()
    .expect("refused");
    assert!(err.to_string().contains("tls.cert"), "{err}");
}

fn limited(limits: LimitsConfig) -> Config {
    Config {
        limits,
        shutdown_reconnect: Duration::from_millis(400),
        ..config()
    }
}

#[actix_rt::test]
async fn max_connections_refuses_with_server_full() {
    let server = start(limited(LimitsConfig {
        max_connections: 2,
        ..LimitsConfig::default()
    }));
    let (_a, _) = Client::hello(server.local_addr(), "a").await;
    let (_b, _) = Client::hello(server.local_addr(), "b").await;
    let mut c = Client::connect(server.local_addr()).await;
    let frames = c.until_closed().await;
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["reason"], "server_full");
    let hint = frames[0]["reconnect_ms"].as_u64().unwrap();
    assert!((400..=800).contains(&hint), "{hint}");
    let metrics = server.render_metrics().await.unwrap();
    assert!(
        metrics.contains("heartwire_limit_hits_total{limit=\"max_connections\"} 1"),
        "{metrics}"
    );
}

#[actix_rt::test]
async fn max_connections_per_ip_counts_each_address() {
    let server = start(limited(LimitsConfig {
        max_connections_per_ip: 1,
        ..LimitsConfig::default()
    }));
    let (_a, _) = Client::hello(server.local_addr(), "a").await;
    let mut same_ip = Client::connect(server.local_addr()).await;
    let frames = same_ip.until_closed().await;
    assert_eq!(frames[0]["reason"], "too_many_connections");
    // Another loopback address is another client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(server.local_addr()).await.unwrap();
    let (r, mut w) = stream.into_split();
    w.write_all(b"{\"type\":\"hello\",\"user\":\"b\"}\n")
        .await
        .unwrap();
    let mut line = String::new();
    BufReader::new(r).read_line(&mut line).await.unwrap();
    assert!(line.contains("welcome"), "{line}");
}

#[actix_rt::test]
async fn max_sessions_per_user() {
    let server = start(limited(LimitsConfig {
        max_sessions_per_user: 1,
        ..LimitsConfig::default()
    }));
    let (_a, _) = Client::hello(server.local_addr(), "dup").await;
    let mut b = Client::connect(server.local_addr()).await;
    b.send(json!({"type": "hello", "user": "dup"})).await;
    let frames = b.until_closed().await;
    assert_eq!(frames[0]["code"], "forbidden");
    assert_eq!(
        frames[1],
        json!({"type": "bye", "reason": "too_many_connections"})
    );
    let (_c, _) = Client::hello(server.local_addr(), "other").await;
}

#[actix_rt::test]
async fn max_rooms_per_session_and_name_lengths() {
    let server = start(limited(LimitsConfig {
        max_rooms_per_session: 2,
        max_room_len: 8,
        max_id_len: 4,
        ..LimitsConfig::default()
    }));
    let (mut c, _) = Client::hello(server.local_addr(), "u").await;
    for room in ["r1", "r2"] {
        c.send(json!({"type": "subscribe", "room": room})).await;
        assert_eq!(c.recv_non_ping().await["type"], "subscribed");
    }
    c.send(json!({"type": "subscribe", "room": "r3"})).await;
    assert_eq!(c.recv_non_ping().await["code"], "forbidden");
    c.send(json!({"type": "subscribe", "room": "r1"})).await;
    assert_eq!(
        c.recv_non_ping().await["type"],
        "subscribed",
        "resubscribing is not a new room"
    );
    c.send(json!({"type": "unsubscribe", "room": "123456789"}))
        .await;
    assert_eq!(c.recv_non_ping().await["code"], "bad_request");
    c.send(json!({"type": "publish", "room": "r1", "data": 1, "id": "12345"}))
        .await;
    assert_eq!(c.recv_non_ping().await["code"], "bad_request");
}

#[actix_rt::test]
async fn message_rate_limits_then_closes_sustained_abuse() {
    let server = start(limited(LimitsConfig {
        message_rate: 5,
        message_burst: 5,
        max_rate_violations: 10,
        ..LimitsConfig::default()
    }));
    let (mut c, _) = Client::hello(server.local_addr(), "flood").await;
    let mut burst = String::new();
    for seq in 0..8 {
        burst.push_str(&format!("{{\"type\":\"ping\",\"seq\":{seq}}}\n"));
    }
    c.send_raw(burst.as_bytes()).await;
    let mut pongs = 0;
    let mut limited = 0;
    for _ in 0..8 {
        match c.recv_non_ping().await["type"].as_str() {
            Some("pong") => pongs += 1,
            Some("error") => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    // hello took one token of the burst of 5
    assert!(
        pongs >= 4 && limited >= 1,
        "pongs {pongs}, limited {limited}"
    );
    let flood: String = (0..40)
        .map(|s| format!("{{\"type\":\"ping\",\"seq\":{s}}}\n"))
        .collect();
    c.send_raw(flood.as_bytes()).await;
    let frames = c.until_closed().await;
    assert_eq!(
        frames.last(),
        Some(&json!({"type": "bye", "reason": "rate_limited"}))
    );
    assert!(frames.iter().any(|f| f["code"] == "rate_limited"));
    let metrics = server.render_metrics().await.unwrap();
    assert!(
        metrics.contains("heartwire_closes_total{reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains("heartwire_limit_hits_total{limit=\"message_rate\"} 0"));
}

#[actix_rt::test]
async fn max_connection_age_ends_connections_with_a_hint() {
    let server = start(limited(LimitsConfig {
        max_connection_age: Some(Duration::from_millis(300)),
        ..LimitsConfig::default()
    }));
    let started = Instant::now();
    let (mut c, _) = Client::hello(server.local_addr(), "old").await;
    let frames = c.until_closed().await;
    let bye = frames.last().unwrap();
    assert_eq!(bye["reason"], "max_age");
    assert!(bye["reconnect_ms"].as_u64().is_some());
    assert!(
        started.elapsed() >= Duration::from_millis(270),
        "{:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn accept_rate_spreads_connections_out() {
    let server = start(limited(LimitsConfig {
        accept_rate: 4,
        ..LimitsConfig::default()
    }));
    let started = Instant::now();
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(Client::hello(server.local_addr(), &format!("u{i}")).await);
    }
    // A burst of 4, then one every 250 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn client_library_connects_over_tls() {
    use heartwire::client::{Client, ClientConfig, ClientEvent, ClientTls};
    let (ca, tls) = crate::common::test_tls();
    let server = start(Config { tls, ..config() });
    let tls = ClientTls::with_ca(&ca, "127.0.0.1").unwrap();
    let (client, mut events) =
        Client::start(ClientConfig::new(server.local_addr().to_string(), "tls-client").tls(tls));
    client.subscribe("secure").await.unwrap();
    let ack = client.publish("secure", &json!({"n": 1})).await.unwrap();
    assert_eq!(ack.seq, 1);
    let message = tokio::time::timeout(crate::common::PATIENCE, async {
        while let Some(event) = events.recv().await {
            if let ClientEvent::Message(m) = event {
                return Some(m);
            }
        }
        None
    })
    .await
    .unwrap()
    .expect("a message over TLS");
    assert_eq!(message.data.get(), r#"{"n":1}"#);
    client.close().await;
}
