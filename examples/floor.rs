//! The measured floor for `heartwire bench` (BENCHMARKS.md, issue 13): the least a server can
//! do per heartbeat round trip and per fan-out delivery over the same loopback sockets.
//!
//! One thread, one `epoll` set, no runtime, no actors, no tasks, no timers but one wheel of
//! 10 ms slots: a `ping` is one `write` from the loop, a `pong` one `read`, a publication one
//! `write` per subscriber in a plain loop. It speaks just enough of the protocol for the bench
//! (`hello` → `welcome`, `ping`/`pong`, `subscribe` → `subscribed`, `publish` → `message` to
//! the room) and none of its safety: no budgets, no limits, no slow-consumer handling, no
//! dead-peer verdict, frames that would block are dropped. It is not a server; it shows how
//! much of heartwire's CPU is the kernel's and how much is heartwire's own.
//!
//!     cargo run --release --example floor -- 127.0.0.1:7716 1000
//!
//! (listen address, heartbeat interval in ms).

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

const SLOT: Duration = Duration::from_millis(10);
const LISTENER: u64 = u64::MAX;

struct Conn {
    stream: TcpStream,
    pending: Vec<u8>,
    next_seq: u64,
    hello: bool,
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7716".to_owned());
    let interval_ms: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let listener = TcpListener::bind(&listen)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    // SAFETY: plain system calls on descriptors this process owns.
    let epoll = unsafe { libc::epoll_create1(0) };
    add(epoll, listener.as_raw_fd(), LISTENER);

    let slots = (interval_ms / SLOT.as_millis() as u64).max(1) as usize;
    let mut wheel: Vec<Vec<RawFd>> = vec![Vec::new(); slots];
    let start = Instant::now();
    let mut done_slot = 0u64;
    let mut conns: HashMap<RawFd, Conn> = HashMap::new();
    let mut room: Vec<RawFd> = Vec::new();
    let mut room_seq = 0u64;
    let mut sessions = 0u64;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let next = start + SLOT * (done_slot as u32 + 1);
        let wait = next.saturating_duration_since(Instant::now()).as_millis() as i32;
        // SAFETY: `events` outlives the call and holds `events.len()` entries.
        let n = unsafe { libc::epoll_wait(epoll, events.as_mut_ptr(), events.len() as i32, wait) };
        for event in &events[..n.max(0) as usize] {
            let token = event.u64;
            if token == LISTENER {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(true);
                    let _ = stream.set_nodelay(true);
                    let fd = stream.as_raw_fd();
                    add(epoll, fd, fd as u64);
                    conns.insert(
                        fd,
                        Conn {
                            stream,
                            pending: Vec::new(),
                            next_seq: 1,
                            hello: false,
                        },
                    );
                }
                continue;
            }
            let fd = token as RawFd;
            let mut closed = false;
            let mut lines: Vec<Vec<u8>> = Vec::new();
            if let Some(conn) = conns.get_mut(&fd) {
                loop {
                    match conn.stream.read(&mut buf) {
                        Ok(0) => {
                            closed = true;
                            break;
                        }
                        Ok(n) => {
                            conn.pending.extend_from_slice(&buf[..n]);
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(_) => {
                            closed = true;
                            break;
                        }
                    }
                }
                while let Some(at) = conn.pending.iter().position(|&b| b == b'\n') {
                    let rest = conn.pending.split_off(at + 1);
                    lines.push(std::mem::replace(&mut conn.pending, rest));
                }
            }
            for line in lines {
                let Ok(frame) = serde_json::from_slice::<Frame<'_>>(&line) else {
                    continue;
                };
                match frame.kind {
                    "hello" => {
                        sessions += 1;
                        let welcome = format!(
                            "{{\"type\":\"welcome\",\"session\":\"floor-{sessions}\",\"user\":{},\"heartbeat\":{{\"interval_ms\":{interval_ms},\"max_missed\":2}},\"max_frame\":65536,\"server\":\"floor\"}}\n",
                            serde_json::to_string(frame.user.unwrap_or("")).unwrap_or_default()
                        );
                        if let Some(conn) = conns.get_mut(&fd) {
                            conn.hello = true;
                            let _ = conn.stream.write(welcome.as_bytes());
                        }
                        wheel[fastrand::usize(..slots)].push(fd);
                    }
                    "subscribe" => {
                        room.push(fd);
                        let reply = format!(
                            "{{\"type\":\"subscribed\",\"room\":{},\"seq\":{room_seq},\"epoch\":\"floor\"}}\n",
                            serde_json::to_string(frame.room.unwrap_or("")).unwrap_or_default()
                        );
                        if let Some(conn) = conns.get_mut(&fd) {
                            let _ = conn.stream.write(reply.as_bytes());
                        }
                    }
                    "publish" => {
                        room_seq += 1;
                        let message = format!(
                            "{{\"type\":\"message\",\"room\":{},\"seq\":{room_seq},\"from\":\"u\",\"data\":{}}}\n",
                            serde_json::to_string(frame.room.unwrap_or("")).unwrap_or_default(),
                            frame.data.map_or("null", |d| d.get())
                        );
                        for member in &room {
                            if let Some(conn) = conns.get_mut(member) {
                                let _ = conn.stream.write(message.as_bytes());
                            }
                        }
                    }
                    _ => {}
                }
            }
            if closed {
                conns.remove(&fd);
                room.retain(|&m| m != fd);
            }
        }
        // Ping every connection whose slot has come.
        let now_slot = (start.elapsed().as_nanos() / SLOT.as_nanos()) as u64;
        while done_slot < now_slot {
            done_slot += 1;
            let slot = &mut wheel[done_slot as usize % slots];
            slot.retain(|fd| {
                let Some(conn) = conns.get_mut(fd) else {
                    return false;
                };
                if !conn.hello {
                    return false;
                }
                let mut line = [0u8; 48];
                let mut cursor = std::io::Cursor::new(&mut line[..]);
                let _ = writeln!(cursor, "{{\"type\":\"ping\",\"seq\":{}}}", conn.next_seq);
                let len = cursor.position() as usize;
                conn.next_seq += 1;
                let _ = conn.stream.write(&line[..len]);
                true
            });
        }
    }
}

/// The fields of a client frame the floor looks at.
#[derive(serde::Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    user: Option<&'a str>,
    #[serde(borrow)]
    room: Option<&'a str>,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

fn add(epoll: RawFd, fd: RawFd, token: u64) {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: token,
    };
    // SAFETY: `event` is valid for the call; the kernel copies it.
    unsafe { libc::epoll_ctl(epoll, libc::EPOLL_CTL_ADD, fd, &mut event) };
}
