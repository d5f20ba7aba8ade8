//! The bench's protocol client: one plain tokio task per connection, no actor.
//!
//! It speaks protocol v1 over TCP, or over WebSocket (`--transport ws`, tokio-tungstenite,
//! one text message per frame at `ws://TARGET/ws`): the modes above the connection see
//! lines either way, so every mode measures either transport.
//! Tens of thousands of these share one or two cores with the server being measured, so a
//! connection is just a socket and a small growable read buffer, frames are parsed by
//! borrowing from that buffer, and writes go straight to the socket (a `pong` is a few dozen
//! bytes that always fit in the socket's send buffer).
//!
//! Sockets are spread over source addresses 127.0.0.2, 127.0.0.3, … with
//! `IP_BIND_ADDRESS_NO_PORT`: binding to `(ip, 0)` before `connect` with that option lets the
//! kernel pick the port at connect time from the full 4-tuple, so each source address gives
//! its own ~28k ephemeral ports instead of every bind reserving a port for all destinations.

use std::borrow::Cow;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Initial read buffer of a bench connection; it grows when a burst of frames arrives.
const READ_BUFFER: usize = 256;
/// A line longer than this is a protocol violation by the server under test.
const MAX_LINE: usize = 1 << 20;

/// The source addresses to spread connections over for `target`: 127.0.0.2 onwards when the
/// target is on loopback and `count > 0`, none otherwise (the kernel then chooses).
pub fn source_addresses(target: SocketAddr, count: u8) -> Vec<Ipv4Addr> {
    match target.ip() {
        IpAddr::V4(ip) if ip.is_loopback() && count > 0 => (0..count.min(250))
            .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i))
            .collect(),
        _ => Vec::new(),
    }
}

/// Sets `IP_BIND_ADDRESS_NO_PORT` (Linux 4.2+): a later `bind(ip, 0)` picks no port, and
/// `connect` picks one unique for the whole 4-tuple. socket2 0.6 has no setter for it.
#[cfg(target_os = "linux")]
fn set_bind_address_no_port(socket: &Socket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid open socket descriptor, a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How the bench reaches the server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Newline-delimited JSON over TCP.
    #[default]
    Tcp,
    /// One JSON frame per WebSocket text message, at `ws://TARGET/ws`.
    Ws,
}

/// WebSocket read buffer of a bench connection: tungstenite's default (128 KiB) times tens of
/// thousands of connections would not fit beside the server.
const WS_READ_BUFFER: usize = 4096;

/// One client connection that reads and writes protocol lines, whatever the transport.
pub struct Conn {
    io: Io,
    buf: BytesMut,
}

enum Io {
    Tcp(TcpStream),
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Conn {
    /// Connects to `target` over `transport`, from `source` (port chosen at connect time)
    /// when given.
    pub async fn connect(
        target: SocketAddr,
        source: Option<Ipv4Addr>,
        transport: Transport,
    ) -> io::Result<Conn> {
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(ip) = source {
            #[cfg(target_os = "linux")]
            set_bind_address_no_port(&socket)?;
            socket.bind(&SocketAddr::from((ip, 0)).into())?;
        }
        let stream: std::net::TcpStream = socket.into();
        let stream = TcpSocket::from_std_stream(stream).connect(target).await?;
        let io = match transport {
            Transport::Tcp => Io::Tcp(stream),
            Transport::Ws => {
                let config = WebSocketConfig::default()
                    .read_buffer_size(WS_READ_BUFFER)
                    .write_buffer_size(0);
                let url = format!("ws://{target}/ws");
                let (ws, _) =
                    tokio_tungstenite::client_async_with_config(url, stream, Some(config))
                        .await
                        .map_err(io::Error::other)?;
                Io::Ws(Box::new(ws))
            }
        };
        Ok(Conn {
            io,
            buf: BytesMut::with_capacity(READ_BUFFER),
        })
    }

    /// Writes one complete frame (a line ending in `\n`; a WebSocket message carries it
    /// without).
    pub async fn send(&mut self, line: &[u8]) -> io::Result<()> {
        match &mut self.io {
            Io::Tcp(stream) => stream.write_all(line).await,
            Io::Ws(ws) => {
                let frame = line.strip_suffix(b"\n").unwrap_or(line);
                let text = String::from_utf8(frame.to_vec()).map_err(io::Error::other)?;
                ws.send(Message::text(text)).await.map_err(io::Error::other)
            }
        }
    }

    /// The next line without its `\n` (and `\r`), or `None` at end of stream. Cancel-safe:
    /// bytes already read stay buffered for the next call.
    pub async fn next_line(&mut self) -> io::Result<Option<Bytes>> {
        let stream = match &mut self.io {
            Io::Tcp(stream) => stream,
            Io::Ws(ws) => {
                // tungstenite answers WebSocket pings itself, with the next write.
                loop {
                    return match ws.next().await {
                        Some(Ok(Message::Text(text))) => Ok(Some(Bytes::from(text))),
                        Some(Ok(Message::Binary(_))) => Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "binary message from the server",
                        )),
                        Some(Ok(Message::Close(_))) | None => Ok(None),
                        Some(Ok(_)) => continue,
                        Some(Err(e)) => Err(io::Error::other(e)),
                    };
                }
            }
        };
        loop {
            if let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
                let mut line = self.buf.split_to(pos + 1);
                line.truncate(pos);
                if line.last() == Some(&b'\r') {
                    line.truncate(pos - 1);
                }
                if self.buf.is_empty() && self.buf.capacity() > 16 * READ_BUFFER {
                    // A burst made the buffer large; give the memory back.
                    self.buf = BytesMut::with_capacity(READ_BUFFER);
                }
                return Ok(Some(line.freeze()));
            }
            if self.buf.len() > MAX_LINE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "line longer than 1 MiB",
                ));
            }
            if self.buf.capacity() - self.buf.len() < 64 {
                self.buf.reserve(READ_BUFFER.max(self.buf.len()));
            }
            if stream.read_buf(&mut self.buf).await? == 0 {
                self.buf.advance(self.buf.len());
                return Ok(None);
            }
        }
    }
}

/// The fields of a server frame the bench looks at; everything else is ignored.
#[derive(Debug, Deserialize)]
pub struct Frame<'a> {
    /// `type`.
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    /// `ping.seq`, `message.seq`.
    pub seq: Option<u64>,
    /// `bye.reason`.
    #[serde(borrow)]
    pub reason: Option<Cow<'a, str>>,
    /// `error.code`.
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    /// `welcome.heartbeat`.
    pub heartbeat: Option<HeartbeatInfo>,
    /// `welcome.server`.
    #[serde(borrow)]
    pub server: Option<Cow<'a, str>>,
    /// `message.data`.
    #[serde(borrow)]
    pub data: Option<&'a RawValue>,
}

impl<'a> Frame<'a> {
    /// Parses one line.
    pub fn parse(line: &'a [u8]) -> Option<Frame<'a>> {
        serde_json::from_slice(line).ok()
    }
}

/// The heartbeat parameters announced in `welcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct HeartbeatInfo {
    /// Ping interval.
    pub interval_ms: u64,
    /// Missed pings that close a silent client.
    pub max_missed: u32,
}

/// What `welcome` told the bench.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Welcome {
    /// Heartbeat parameters.
    pub heartbeat: Option<HeartbeatInfo>,
    /// `welcome.server`.
    pub server: Option<String>,
}

/// Why a connection did not get as far as `welcome` (or `subscribed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// `connect` (or bind) failed.
    Connect(String),
    /// Nothing within the connect timeout.
    Timeout,
    /// The server sent `bye` first.
    Bye(String),
    /// The server closed the socket first.
    Closed,
    /// Reading or writing failed after connecting.
    Io(String),
}

impl Failure {
    /// The key the failure is counted under in reports.
    pub fn key(&self) -> String {
        match self {
            Failure::Connect(e) => format!("connect: {e}"),
            Failure::Timeout => "timed out before welcome".to_owned(),
            Failure::Bye(reason) => format!("bye before welcome: {reason}"),
            Failure::Closed => "closed before welcome".to_owned(),
            Failure::Io(e) => format!("i/o before welcome: {e}"),
        }
    }
}

/// Connects over `transport`, says `hello` as `user` and waits for `welcome`, all within
/// `timeout`.
pub async fn open(
    target: SocketAddr,
    transport: Transport,
    source: Option<Ipv4Addr>,
    user: &str,
    timeout: Duration,
) -> Result<(Conn, Welcome), Failure> {
    let attempt = async {
        let mut conn = Conn::connect(target, source, transport)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let hello = serde_json::json!({"type": "hello", "user": user, "client": "heartwire-bench"});
        let mut line = hello.to_string().into_bytes();
        line.push(b'\n');
        conn.send(&line)
            .await
            .map_err(|e| Failure::Io(e.to_string()))?;
        let welcome = await_frame(&mut conn, "welcome").await?;
        Ok((conn, welcome))
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(Failure::Timeout))
}

/// Reads until a frame of `kind` arrives, answering pings; returns what `welcome` said (empty
/// for other kinds).
pub async fn await_frame(conn: &mut Conn, kind: &str) -> Result<Welcome, Failure> {
    loop {
        let line = match conn.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => return Err(Failure::Closed),
            Err(e) => return Err(Failure::Io(e.to_string())),
        };
        let Some(frame) = Frame::parse(&line) else {
            continue;
        };
        if frame.kind == kind {
            return Ok(Welcome {
                heartbeat: frame.heartbeat,
                server: frame.server.map(Cow::into_owned),
            });
        }
        match &*frame.kind {
            "ping" => {
                let pong = pong_line(frame.seq);
                conn.send(&pong)
                    .await
                    .map_err(|e| Failure::Io(e.to_string()))?;
            }
            "bye" => {
                let reason = frame.reason.as_deref().unwrap_or("none").to_owned();
                return Err(Failure::Bye(reason));
            }
            _ => {}
        }
    }
}

/// `{"type":"pong","seq":N}\n`.
pub fn pong_line(seq: Option<u64>) -> Vec<u8> {
    match seq {
        Some(seq) => format!("{{\"type\":\"pong\",\"seq\":{seq}}}\n").into_bytes(),
        None => b"{\"type\":\"pong\"}\n".to_vec(),
    }
}

/// Microseconds since the Unix epoch: the clock of publish timestamps, shared by every
/// process on the machine.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_only_for_loopback() {
        let lo: SocketAddr = "127.0.0.1:7700".parse().unwrap();
        assert_eq!(
            source_addresses(lo, 3),
            vec![
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3),
                Ipv4Addr::new(127, 0, 0, 4)
            ]
        );
        assert!(source_addresses(lo, 0).is_empty());
        assert!(source_addresses("10.0.0.1:7700".parse().unwrap(), 3).is_empty());
        assert_eq!(source_addresses(lo, 255).len(), 250);
    }

    #[test]
    fn parses_the_fields_it_needs() {
        let f = Frame::parse(br#"{"type":"welcome","session":"a-1","user":"u","heartbeat":{"interval_ms":1000,"max_missed":2},"max_frame":65536,"server":"x/1"}"#).unwrap();
        assert_eq!(f.kind, "welcome");
        assert_eq!(
            f.heartbeat,
            Some(HeartbeatInfo {
                interval_ms: 1000,
                max_missed: 2
            })
        );
        let f = Frame::parse(br#"{"type":"message","room":"r","seq":9,"data":{"t":5}}"#).unwrap();
        assert_eq!(f.seq, Some(9));
        assert_eq!(f.data.unwrap().get(), r#"{"t":5}"#);
        assert!(Frame::parse(b"not json").is_none());
        assert_eq!(pong_line(Some(3)), b"{\"type\":\"pong\",\"seq\":3}\n");
    }
}
