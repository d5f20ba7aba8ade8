//! A raw WebSocket protocol client (tokio-tungstenite) and a server with a WebSocket listener.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use heartwire::ws::WsService;
use heartwire::{Config, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::PATIENCE;

/// A server with TCP and WebSocket listeners on port 0.
pub struct WsServer {
    pub server: ServerHandle,
    pub ws: WsService,
}

impl WsServer {
    /// Address of the WebSocket listener.
    pub fn ws_addr(&self) -> SocketAddr {
        self.ws.local_addr()
    }

    /// Address of the TCP listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.server.local_addr()
    }
}

/// `config` with a WebSocket listener on 127.0.0.1:0.
pub fn ws_config(mut config: Config) -> Config {
    config.ws.listen = Some("127.0.0.1:0".parse().unwrap());
    config
}

/// Starts a server and its WebSocket listener (`config.ws.listen` set to port 0 if unset).
pub fn start_ws(mut config: Config) -> WsServer {
    if config.ws.listen.is_none() {
        config = ws_config(config);
    }
    let server = super::start(config.clone());
    let ws = WsService::start(&server, &config)
        .expect("WebSocket listener starts")
        .expect("ws.listen is set");
    WsServer { server, ws }
}

/// What a WebSocket client saw next.
#[derive(Debug)]
pub enum Event {
    /// A text message, parsed as JSON.
    Frame(Value),
    /// A binary message.
    Binary(Vec<u8>),
    /// The server's close frame.
    Close(Option<CloseFrame>),
    /// The connection ended without (further) close frame, or failed.
    End,
}

/// A raw protocol client over WebSocket.
pub struct WsClient<S = MaybeTlsStream<tokio::net::TcpStream>> {
    pub ws: WebSocketStream<S>,
    /// Answer server `ping` frames while waiting in `recv_type`.
    pub auto_pong: bool,
}

impl WsClient {
    /// Connects to `ws://addr/ws`.
    pub async fn connect(addr: SocketAddr) -> WsClient {
        let (ws, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .expect("WebSocket handshake");
        assert_eq!(response.status(), 101);
        WsClient {
            ws,
            auto_pong: true,
        }
    }

    /// Connects with `SO_RCVBUF` set to `rcvbuf` bytes, so that the server's writes block soon
    /// after the client stops reading.
    pub async fn connect_small(addr: SocketAddr, rcvbuf: u32) -> WsClient {
        let stream = super::connect_with_rcvbuf(addr, rcvbuf).await;
        let (ws, _) = tokio_tungstenite::client_async(
            format!("ws://{addr}/ws"),
            MaybeTlsStream::Plain(stream),
        )
        .await
        .expect("WebSocket handshake");
        WsClient::new(ws)
    }

    /// Connects with a 4 KiB receive buffer, says hello as `user` and subscribes to `room`:
    /// a subscriber whose server-side writes block soon once it stops reading.
    pub async fn slow_subscriber(addr: SocketAddr, user: &str, room: &str) -> WsClient {
        let mut c = WsClient::connect_small(addr, 4096).await;
        c.send(json!({"type": "hello", "user": user})).await;
        c.recv_type("welcome").await;
        c.send(json!({"type": "subscribe", "room": room})).await;
        c.recv_type("subscribed").await;
        c
    }

    /// Connects and says hello as `user`; returns the client and its `welcome`.
    pub async fn hello(addr: SocketAddr, user: &str) -> (WsClient, Value) {
        let mut c = WsClient::connect(addr).await;
        c.send(json!({"type": "hello", "user": user})).await;
        let welcome = c.recv_type("welcome").await;
        (c, welcome)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    /// Wraps an established WebSocket stream.
    pub fn new(ws: WebSocketStream<S>) -> Self {
        WsClient {
            ws,
            auto_pong: true,
        }
    }

    /// Sends one frame as a text message.
    pub async fn send(&mut self, frame: Value) {
        self.send_message(Message::text(frame.to_string())).await;
    }

    /// Sends any message.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next event within `wait`, skipping WebSocket pings and pongs; `None` on timeout.
    pub async fn event_within(&mut self, wait: Duration) -> Option<Event> {
        let until = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(until, self.ws.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(text))) => Event::Frame(
                    serde_json::from_str(&text)
                        .unwrap_or_else(|e| panic!("bad JSON {text:?}: {e}")),
                ),
                Some(Ok(Message::Binary(b))) => Event::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => Event::Close(frame),
                Some(Err(_)) | None => Event::End,
            });
        }
    }

    /// The next event; panics after [`PATIENCE`].
    pub async fn event(&mut self) -> Event {
        self.event_within(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("nothing within {PATIENCE:?}"))
    }

    /// The next frame; panics on anything else.
    pub async fn recv(&mut self) -> Value {
        match self.event().await {
            Event::Frame(frame) => frame,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// The next frame that is not a server `ping` (answered when `auto_pong`). Panics after
    /// [`PATIENCE`] in all, however many pings arrive meanwhile.
    pub async fn recv_non_ping(&mut self) -> Value {
        let until = tokio::time::Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            let frame = match self.event_within(left).await {
                Some(Event::Frame(frame)) => frame,
                Some(other) => panic!("expected a frame, got {other:?}"),
                None => panic!("no frame but pings within {PATIENCE:?}"),
            };
            if frame["type"] == "ping" {
                if self.auto_pong {
                    self.send(json!({"type": "pong", "seq": frame["seq"]}))
                        .await;
                }
                continue;
            }
            return frame;
        }
    }

    /// The next non-ping frame, asserting its type.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        super::of_type(self.recv_non_ping().await, kind)
    }

    /// Reads to the end: the frames seen (pings excluded) and the close frame, if any.
    pub async fn until_closed(&mut self) -> (Vec<Value>, Option<CloseFrame>) {
        let mut frames = Vec::new();
        loop {
            match self.event().await {
                Event::Frame(f) if f["type"] == "ping" => {}
                Event::Frame(f) => frames.push(f),
                Event::Binary(b) => panic!("unexpected binary message {b:?}"),
                Event::Close(close) => return (frames, close),
                Event::End => return (frames, None),
            }
        }
    }
}

/// The close frame's code and reason.
pub fn close_of(close: &Option<CloseFrame>) -> (u16, String) {
    let close = close.as_ref().expect("a close frame");
    (u16::from(close.code), close.reason.to_string())
}
