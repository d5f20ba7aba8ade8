//! A TCP relay in front of a server that a test can close, open and slow down.
//!
//! Which client reconnects first after a server restart is otherwise a race between random
//! backoff delays. With one client behind a gate, the test decides: it closes the gate before
//! the restart, lets the others come back and publish, then opens it. A closed gate accepts
//! and drops connections at once, so the client sees a failed handshake and keeps retrying on
//! its backoff. The relay runs on plain threads, independent of the test's runtime, so it
//! serves async tests and tests that drive child processes alike.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A relay to one server address; open when started.
pub struct Gate {
    addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    open: AtomicBool,
    stopped: AtomicBool,
    /// Milliseconds added before each chunk relayed from a client to the server.
    upstream_delay_ms: AtomicU64,
}

impl Gate {
    /// Listens on a loopback port and relays every connection to `target` while open.
    pub fn start(target: SocketAddr) -> Gate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let addr = listener.local_addr().expect("gate address");
        let state = Arc::new(State {
            open: AtomicBool::new(true),
            stopped: AtomicBool::new(false),
            upstream_delay_ms: AtomicU64::new(0),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if shared.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if !shared.open.load(Ordering::SeqCst) {
                    continue; // dropped: the client reads EOF at once
                }
                let Ok(server) = TcpStream::connect(target) else {
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                let (Ok(client2), Ok(server2)) = (client.try_clone(), server.try_clone()) else {
                    continue;
                };
                pipe(client, server, Some(shared.clone()));
                pipe(server2, client2, None);
            }
        });
        Gate { addr, state }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections again.
    pub fn open(&self) {
        self.state.open.store(true, Ordering::SeqCst);
    }

    /// Drops new connections as soon as they are accepted; established ones stay.
    pub fn close(&self) {
        self.state.open.store(false, Ordering::SeqCst);
    }

    /// Delays everything clients send to the server by `delay` (per chunk read).
    pub fn delay_upstream(&self, delay: Duration) {
        self.state
            .upstream_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees `stopped`.
        let _ = TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to` on a thread; when either side ends, closes both so that the other
/// direction ends too.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Option<Arc<State>>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let ms = delay
                .as_ref()
                .map_or(0, |s| s.upstream_delay_ms.load(Ordering::SeqCst));
            if ms > 0 {
                std::thread::sleep(Duration::from_millis(ms));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}
