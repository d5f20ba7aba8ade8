//! Room names and ids meet the same configured limits on every way in: TCP frames, the
//! `presence` extension, application frames, `ServerHandle` methods and the HTTP API.

use crate::common::{config, start, Client};
use heartwire::{Config, HandleError, LimitsConfig, ServerBuilder, ServerHandle};
use serde_json::json;

/// Rooms of at most 8 bytes, ids of at most 4.
fn short_names() -> Config {
    Config {
        limits: LimitsConfig {
            max_room_len: 8,
            max_id_len: 4,
            ..LimitsConfig::default()
        },
        ..config()
    }
}

const LONG_ROOM: &str = "room-of-9";

fn assert_bad_request(frame: &serde_json::Value, id: Option<&str>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], "bad_request", "{frame}");
    assert_eq!(frame["id"].as_str(), id, "{frame}");
}

#[actix_rt::test]
async fn tcp_frames_presence_and_application_frames_share_the_room_limit() {
    let server = with_typing(short_names());
    let (mut c, _) = Client::hello(server.local_addr(), "alice").await;
    c.send(json!({"type": "subscribe", "room": LONG_ROOM}))
        .await;
    assert_bad_request(&c.recv_non_ping().await, None);
    c.send(json!({"type": "publish", "room": LONG_ROOM, "data": 1, "id": "p1"}))
        .await;
    assert_bad_request(&c.recv_non_ping().await, Some("p1"));
    c.send(json!({"type": "publish", "room": "ok", "data": 1, "id": "12345"}))
        .await;
    assert_eq!(c.recv_non_ping().await["code"], "bad_request");
    c.send(json!({"type": "presence", "room": LONG_ROOM, "id": "q1"}))
        .await;
    assert_bad_request(&c.recv_non_ping().await, Some("q1"));
    c.send(json!({"type": "typing", "room": LONG_ROOM, "id": "t1"}))
        .await;
    assert_bad_request(&c.recv_non_ping().await, Some("t1"));
    // At the limit, everything works.
    c.send(json!({"type": "subscribe", "room": "room-of8"}))
        .await;
    assert_eq!(c.recv_non_ping().await["type"], "subscribed");
    c.send(json!({"type": "presence", "room": "room-of8", "id": "q2"}))
        .await;
    assert_eq!(
        c.recv_non_ping().await,
        json!({"type": "presence", "room": "room-of8", "users": ["alice"], "id": "q2"})
    );
}

/// A server with an application frame that names a room and checks it the documented way.
fn with_typing(config: Config) -> ServerHandle {
    ServerBuilder::new(config)
        .frame_handler(
            "typing",
            |session: &mut heartwire::Session,
             _: &mut actix::Context<heartwire::Session>,
             frame: heartwire::AppFrame| {
                let room = frame
                    .parse::<serde_json::Value>()
                    .ok()
                    .and_then(|v| v["room"].as_str().map(str::to_owned))
                    .unwrap_or_default();
                if session.allowed_room(&room, frame.id.as_deref()).is_some() {
                    session.send_frame(&json!({"type": "typing_ok"}));
                }
            },
        )
        .start()
        .expect("server starts")
}

#[actix_rt::test]
async fn server_handle_methods_use_the_configured_limits() {
    let server = start(short_names());
    let invalid = |r: Result<_, HandleError>, field: &str| match r {
        Err(HandleError::Invalid(e)) => assert_eq!(e.field(), field),
        Err(other) => panic!("expected an invalid {field}, got {other}"),
        Ok(_) => panic!("expected an invalid {field}"),
    };
    invalid(
        server.publish(LONG_ROOM, &1, None).await.map(|_| ()),
        "room",
    );
    invalid(
        server.publish("ok", &1, Some("12345")).await.map(|_| ()),
        "id",
    );
    invalid(server.presence(LONG_ROOM).await.map(|_| ()), "room");
    invalid(server.room(LONG_ROOM).await.map(|_| ()), "room");
    invalid(server.send_to("", &1, None).await.map(|_| ()), "to");
    invalid(
        server.send_to("bob", &1, Some("12345")).await.map(|_| ()),
        "id",
    );
    assert_eq!(
        server.publish("room-of8", &1, Some("1234")).await.unwrap(),
        1
    );
}

#[cfg(feature = "http")]
#[actix_rt::test]
async fn the_http_api_uses_the_configured_limits() {
    use heartwire::http::HttpService;
    let mut c = short_names();
    c.http.listen = Some("127.0.0.1:0".parse().unwrap());
    let server = start(c.clone());
    let api = HttpService::start(&server, &c).unwrap().unwrap();
    let http = awc::Client::default();
    let base = format!("http://{}", api.local_addr());
    let mut res = http
        .post(format!("{base}/api/publish"))
        .send_json(&json!({"room": LONG_ROOM, "data": 1}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap().contains("1 to 8 bytes"),
        "{body}"
    );
    let res = http
        .get(format!("{base}/api/rooms/{LONG_ROOM}/presence"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 400);
    let res = http
        .post(format!("{base}/api/publish"))
        .send_json(&json!({"room": "room-of8", "data": 1, "id": "1234"}))
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 200);
}
