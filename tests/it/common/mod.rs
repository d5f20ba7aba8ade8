#![allow(dead_code)]
//! Test harness: a real server on port 0 and a raw line-oriented client over real sockets.

#[cfg(feature = "cli")]
pub mod process;
#[cfg(feature = "redis")]
pub mod redis;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use heartwire::{Config, ServerBuilder, ServerHandle};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Longest wait for anything a test expects; generous for a loaded 2-core machine.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A config for tests: loopback, port 0, fast heartbeat unless a test changes it.
pub fn config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        heartbeat_interval: Duration::from_secs(5),
        workers: 2,
        sweep_interval: Duration::from_secs(3600),
        ..Config::default()
    }
}

/// Starts a server with `config` inside the current actix System.
pub fn start(config: Config) -> ServerHandle {
    ServerBuilder::new(config).start().expect("server starts")
}

/// A raw protocol client.
pub struct Client {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    /// Answer server pings automatically while waiting in `recv_type`.
    pub auto_pong: bool,
    line: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (r, w) = stream.into_split();
        Client {
            reader: BufReader::new(r),
            writer: w,
            auto_pong: true,
            line: String::new(),
        }
    }

    /// Connects and completes the handshake as `user`; returns the client and its welcome.
    pub async fn hello(addr: SocketAddr, user: &str) -> (Client, Value) {
        let mut c = Client::connect(addr).await;
        c.send(json!({"type": "hello", "user": user})).await;
        let welcome = c.recv_type("welcome").await;
        (c, welcome)
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_raw(format!("{frame}\n").as_bytes()).await;
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write");
    }

    /// Next frame, or `None` at EOF. Panics after [`PATIENCE`].
    pub async fn try_recv(&mut self) -> Option<Value> {
        self.try_recv_within(PATIENCE)
            .await
            .unwrap_or_else(|| panic!("no frame within {PATIENCE:?}"))
    }

    /// `Some(next frame or None at EOF)`, or `None` if nothing came within `wait`.
    pub async fn try_recv_within(&mut self, wait: Duration) -> Option<Option<Value>> {
        self.line.clear();
        match tokio::time::timeout(wait, self.reader.read_line(&mut self.line)).await {
            Err(_) => None,
            Ok(Ok(0)) | Ok(Err(_)) => Some(None),
            Ok(Ok(_)) => Some(Some(
                serde_json::from_str(&self.line)
                    .unwrap_or_else(|e| panic!("bad JSON {:?}: {e}", self.line)),
            )),
        }
    }

    /// Next frame; panics at EOF.
    pub async fn recv(&mut self) -> Value {
        self.try_recv().await.expect("connection closed")
    }

    /// Next frame that is not a server ping (answering pings when `auto_pong`). Panics after
    /// [`PATIENCE`] in all, however many pings arrive meanwhile, so that a frame that never
    /// comes fails the test instead of hanging it.
    pub async fn recv_non_ping(&mut self) -> Value {
        let until = Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let frame = self
                .try_recv_within(left)
                .await
                .unwrap_or_else(|| panic!("no frame but pings within {PATIENCE:?}"))
                .expect("connection closed");
            if frame["type"] == "ping" {
                if self.auto_pong {
                    let seq = frame["seq"].clone();
                    self.send(json!({"type": "pong", "seq": seq})).await;
                }
                continue;
            }
            return frame;
        }
    }

    /// Skips pings and returns the next frame, asserting its type.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        of_type(self.recv_non_ping().await, kind)
    }

    /// Reads until EOF (answering nothing); returns the frames seen, pings excluded.
    pub async fn until_closed(&mut self) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Some(frame) = self.try_recv().await {
            if frame["type"] != "ping" {
                seen.push(frame);
            }
        }
        seen
    }

    /// Asserts that nothing but pings arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            match self.try_recv_within(left).await {
                None => return,
                Some(Some(f)) if f["type"] == "ping" => continue,
                Some(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }
}

/// `frame`, after asserting that its type is `kind`.
pub fn of_type(frame: Value, kind: &str) -> Value {
    assert_eq!(frame["type"], kind, "expected {kind}, got {frame}");
    frame
}

/// A TCP connection to `addr` with `SO_RCVBUF` set to `rcvbuf` bytes (the kernel may round it
/// up), so that the server's writes to it block soon after it stops reading.
pub async fn connect_with_rcvbuf(addr: SocketAddr, rcvbuf: u32) -> TcpStream {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
    }
    .expect("socket");
    socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Polls `check` until it is true or [`PATIENCE`] passes.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

impl Client {
    /// Writes `bytes` in pieces of `piece` bytes, each flushed as its own TCP segment
    /// (`TCP_NODELAY`) with `pause` between them, so the server sees a frame split across
    /// many reads.
    pub async fn send_in_pieces(&mut self, bytes: &[u8], piece: usize, pause: Duration) {
        self.writer
            .as_ref()
            .set_nodelay(true)
            .expect("set TCP_NODELAY");
        for chunk in bytes.chunks(piece.max(1)) {
            self.writer.write_all(chunk).await.expect("write");
            self.writer.flush().await.expect("flush");
            tokio::time::sleep(pause).await;
        }
    }

    /// Reads frames (skipping pings) until EOF or until `wait` has passed; returns the frames
    /// seen and whether EOF was reached.
    pub async fn frames_until_closed_within(&mut self, wait: Duration) -> (Vec<Value>, bool) {
        let until = Instant::now() + wait;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.try_recv_within(left).await {
                None => return (seen, false),
                Some(None) => return (seen, true),
                Some(Some(f)) if f["type"] == "ping" => continue,
                Some(Some(f)) => seen.push(f),
            }
        }
    }
}

/// Completes the handshake as `user` and subscribes to `room`; returns the client and its
/// `subscribed` frame.
pub async fn subscriber(addr: SocketAddr, user: &str, room: &str) -> (Client, Value) {
    let (mut c, _) = Client::hello(addr, user).await;
    c.send(json!({"type": "subscribe", "room": room})).await;
    let subscribed = c.recv_type("subscribed").await;
    assert_eq!(subscribed["room"], room, "{subscribed}");
    (c, subscribed)
}

impl Client {
    /// Writes raw bytes, reporting a closed connection instead of panicking.
    pub async fn send_raw_checked(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes).await
    }

    /// The next raw line (without parsing it); panics at EOF or after [`PATIENCE`].
    pub async fn recv_raw_line(&mut self) -> String {
        self.line.clear();
        match tokio::time::timeout(PATIENCE, self.reader.read_line(&mut self.line)).await {
            Ok(Ok(n)) if n > 0 => self.line.clone(),
            other => panic!("no line: {other:?}"),
        }
    }
}

/// The first page (ten) of the server's connections, as the application sees them.
pub async fn first_connections(server: &ServerHandle) -> heartwire::ConnectionPage {
    server
        .connections(heartwire::ConnectionQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("registry answers")
}

/// The registry's current counts.
pub async fn stats(server: &ServerHandle) -> heartwire::Overview {
    server.overview().await.expect("registry answers")
}

/// Polls the registry until `check` holds for its stats, or panics after [`PATIENCE`] with
/// the last stats seen.
pub async fn eventually_stats<F>(server: &ServerHandle, what: &str, check: F)
where
    F: Fn(&heartwire::Overview) -> bool,
{
    let until = Instant::now() + PATIENCE;
    loop {
        let now = stats(server).await;
        if check(&now) {
            return;
        }
        if Instant::now() >= until {
            panic!("timed out waiting for: {what}; last stats {now:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes `data` into `room` through the server API (`from: null`); returns its seq.
pub async fn server_publish(server: &ServerHandle, room: &str, data: Value) -> u64 {
    server
        .publish(room, &data, None)
        .await
        .expect("server publishes")
}

/// A raw connection whose receive buffer is tiny, so that the server's writes to it block
/// soon after it stops reading. Reads and writes whole lines by hand.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    /// Connects with `SO_RCVBUF` set to `rcvbuf` bytes (the kernel may round it up).
    pub async fn connect_small(addr: SocketAddr, rcvbuf: u32) -> RawClient {
        RawClient {
            stream: connect_with_rcvbuf(addr, rcvbuf).await,
            buf: Vec::new(),
        }
    }

    /// Connects with a 4 KiB receive buffer, says hello as `user` and subscribes to `room`:
    /// a subscriber whose server-side writes block soon once it stops reading.
    pub async fn slow_subscriber(addr: SocketAddr, user: &str, room: &str) -> RawClient {
        let mut c = RawClient::connect_small(addr, 4096).await;
        c.send(json!({"type": "hello", "user": user})).await;
        c.recv_type("welcome").await;
        c.send(json!({"type": "subscribe", "room": room})).await;
        c.recv_type("subscribed").await;
        c
    }

    pub async fn send(&mut self, frame: Value) {
        self.stream
            .write_all(format!("{frame}\n").as_bytes())
            .await
            .expect("write");
    }

    /// Reads until a non-ping frame of type `kind` arrives; panics on anything else but pings.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        use tokio::io::AsyncReadExt;
        let until = Instant::now() + PATIENCE;
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=pos).collect();
                let frame: Value = serde_json::from_slice(&line).expect("JSON line");
                if frame["type"] == "ping" {
                    continue;
                }
                return of_type(frame, kind);
            }
            let mut chunk = [0u8; 4096];
            let left = until.saturating_duration_since(Instant::now());
            let n = tokio::time::timeout(left, self.stream.read(&mut chunk))
                .await
                .unwrap_or_else(|_| panic!("no {kind} within {PATIENCE:?}"))
                .expect("read");
            assert!(n > 0, "EOF while waiting for {kind}");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads everything until EOF (a reset counts as EOF). Returns the complete lines as
    /// frames (pings included) and the bytes of an incomplete last line, if the stream was
    /// cut in the middle of one. Panics if EOF does not come within `wait`.
    pub async fn read_to_eof(&mut self, wait: Duration) -> (Vec<Value>, Vec<u8>) {
        use tokio::io::AsyncReadExt;
        let until = Instant::now() + wait;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("no EOF within {wait:?}"),
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
        let buf = std::mem::take(&mut self.buf);
        let complete = buf.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let frames = buf[..complete]
            .split(|b| *b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("JSON line"))
            .collect();
        (frames, buf[complete..].to_vec())
    }
}

/// Writes a test CA and a server certificate for `localhost` and `127.0.0.1` into a fresh
/// directory: (CA, certificate, key), as PEM files.
pub fn test_pki() -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let dir = std::env::temp_dir().join(format!(
        "heartwire-tls-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&paths.0, ca.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// A test CA's certificate (PEM file) and the server's TLS settings: a certificate for
/// `localhost` and `127.0.0.1` it signed, and its key.
pub fn test_tls() -> (PathBuf, heartwire::TlsConfig) {
    let (ca, cert, key) = test_pki();
    let tls = heartwire::TlsConfig {
        cert: Some(cert),
        key: Some(key),
    };
    (ca, tls)
}

#[cfg(feature = "ws")]
pub mod ws;
