//! A real `redis-server` (Debian package `redis-server`) per test: a free port, a directory of
//! its own, killed with `kill -9` when dropped. Where redis-server is not installed the tests
//! that need it say so and pass, unless `HEARTWIRE_REQUIRE_REDIS` is set (CI sets it), in
//! which case they fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// How a test's Redis keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Nothing survives a restart (`--save '' --appendonly no`).
    None,
    /// Every write is in the append-only file before it is answered (`appendfsync always`):
    /// a `kill -9` loses nothing acknowledged.
    Aof,
}

/// A running redis-server.
pub struct Redis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    persistence: Persistence,
    /// A TLS port too, with (certificate, key) files.
    tls: Option<(u16, PathBuf, PathBuf)>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Redis {
    /// Starts one, or `None` (with the reason printed) where redis-server is missing and CI
    /// does not require it.
    pub fn start(persistence: Persistence) -> Option<Redis> {
        Self::start_with(persistence, None)
    }

    /// Starts one that also serves TLS (`rediss://`) with the PEM `cert` and `key`.
    pub fn start_tls(cert: &Path, key: &Path) -> Option<Redis> {
        Self::start_with(
            Persistence::None,
            Some((free_port(), cert.to_owned(), key.to_owned())),
        )
    }

    fn start_with(persistence: Persistence, tls: Option<(u16, PathBuf, PathBuf)>) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            if std::env::var_os("HEARTWIRE_REQUIRE_REDIS").is_some() {
                panic!("HEARTWIRE_REQUIRE_REDIS is set but redis-server is not installed");
            }
            eprintln!("redis-server is not installed (apt-get install redis-server); not run here");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "heartwire-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut redis = Redis {
            child: None,
            port: free_port(),
            dir,
            persistence,
            tls,
        };
        redis.spawn();
        Some(redis)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.persistence {
            Persistence::None => cmd.args(["--appendonly", "no"]),
            Persistence::Aof => cmd.args(["--appendonly", "yes", "--appendfsync", "always"]),
        };
        if let Some((port, cert, key)) = &self.tls {
            cmd.arg("--tls-port")
                .arg(port.to_string())
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]);
        }
        self.child = Some(cmd.spawn().expect("redis-server starts"));
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if self.ping() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("redis-server on port {} did not answer", self.port);
    }

    fn ping(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 64];
        s.write_all(b"PING\r\n").is_ok()
            && matches!(s.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `rediss://localhost:<tls port>/0`.
    pub fn tls_url(&self) -> String {
        let port = self.tls.as_ref().map_or(0, |t| t.0);
        format!("rediss://localhost:{port}/0")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory (with what it persisted).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// `kill -STOP`: the process stops, its sockets stay open.
    pub fn pause(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
    }

    /// `kill -CONT`.
    pub fn resume(&self) {
        unsafe { libc::kill(self.pid(), libc::SIGCONT) };
    }

    /// Runs one command with `redis-cli` (for checks a test makes on the store itself).
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .arg("-p")
            .arg(self.port.to_string())
            .args(args)
            .output()
            .expect("redis-cli runs");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused server must not outlive the test stopped.
            unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
        }
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
