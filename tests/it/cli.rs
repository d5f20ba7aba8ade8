//! The `heartwire` binary: flags, environment, config file, validation errors, `--help`,
//! and a graceful exit on SIGTERM. Runs the real executable and talks to it over TCP.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest wait for anything; generous for a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(10);

/// Kills and reaps the child when a test ends, failed or not.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the exit, at most `wait`.
    fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
        let until = Instant::now() + wait;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// `heartwire serve ARGS` with `env` and no inherited `HEARTWIRE_*` variables.
fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartwire"));
    cmd.arg("serve").args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("HEARTWIRE_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// A running server process and the address it announced on stdout.
struct Running {
    child: ChildGuard,
    addr: SocketAddr,
}

fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = ChildGuard(
        serve_command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn heartwire"),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Reads stdout to the end so the child never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    let until = Instant::now() + PATIENCE;
    let addr = loop {
        let left = until.saturating_duration_since(Instant::now());
        let line = match rx.recv_timeout(left) {
            Ok(line) => line,
            Err(e) => panic!(
                "no `listening on` line ({e:?}); exit status {:?}",
                child.0.try_wait()
            ),
        };
        if let Some(addr) = line.strip_prefix("listening on ") {
            break addr.trim().parse().expect("address after `listening on`");
        }
    };
    Running { child, addr }
}

/// Runs `heartwire serve ARGS` expecting it to exit by itself; returns (status, stdout, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let mut child = ChildGuard(
        serve_command(args, env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heartwire"),
    );
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("`serve {args:?}` did not exit"));
    let mut out = String::new();
    let mut err = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    child
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status, out, err)
}

/// A blocking line client.
struct LineClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineClient {
    fn connect(addr: SocketAddr) -> LineClient {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        LineClient {
            writer: stream.try_clone().unwrap(),
            reader: BufReader::new(stream),
        }
    }

    fn hello(addr: SocketAddr, user: &str) -> (LineClient, Value) {
        let mut c = LineClient::connect(addr);
        c.send(json!({"type": "hello", "user": user}));
        let welcome = c.recv_non_ping().expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (c, welcome)
    }

    fn send(&mut self, frame: Value) {
        self.writer
            .write_all(format!("{frame}\n").as_bytes())
            .expect("write");
    }

    /// Next frame, `None` at EOF; panics after [`PATIENCE`].
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("JSON line")),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!("nothing received within {PATIENCE:?}")
            }
            Err(_) => None,
        }
    }

    /// Next frame that is not a ping, answering pings; `None` at EOF.
    fn recv_non_ping(&mut self) -> Option<Value> {
        loop {
            let frame = self.recv()?;
            if frame["type"] == "ping" {
                // The server may be closing: a failed pong is not the test's concern.
                let pong = json!({"type": "pong", "seq": frame["seq"]});
                let _ = self.writer.write_all(format!("{pong}\n").as_bytes());
                continue;
            }
            return Some(frame);
        }
    }
}

/// A config file removed when the test ends.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let path =
            std::env::temp_dir().join(format!("heartwire-cli-{}-{name}.toml", std::process::id()));
        std::fs::write(&path, text).expect("write config file");
        TempFile(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn serve_honours_flags_and_exits_cleanly_on_sigterm() {
    let mut server = spawn_server(
        &[
            "--listen",
            "127.0.0.1:0",
            "--heartbeat-interval",
            "200ms",
            "--max-missed",
            "2",
            "--handshake-timeout",
            "1s",
            "--max-frame",
            "4096",
            "--workers",
            "1",
        ],
        &[],
    );
    assert!(server.addr.ip().is_loopback());
    assert_ne!(server.addr.port(), 0);

    // A connection that never says hello is closed after the 1 s handshake timeout.
    let mut silent = LineClient::connect(server.addr);
    let connected = Instant::now();
    assert_eq!(
        silent.recv(),
        Some(json!({"type": "bye", "reason": "handshake_timeout"}))
    );
    assert!(connected.elapsed() >= Duration::from_millis(900));
    assert_eq!(silent.recv(), None);

    let (mut client, welcome) = LineClient::hello(server.addr, "alice");
    assert_eq!(
        welcome["heartbeat"],
        json!({"interval_ms": 200, "max_missed": 2})
    );
    assert_eq!(welcome["max_frame"], 4096);
    // The server pings every 200 ms.
    let ping = client.recv().expect("a ping");
    assert_eq!(ping["type"], "ping", "{ping}");
    client.send(json!({"type": "pong", "seq": ping["seq"]}));

    let killed = Command::new("kill")
        .args(["-TERM", &server.child.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let signalled = Instant::now();

    let bye = client.recv_non_ping().expect("bye before EOF");
    assert_eq!(bye["type"], "bye", "{bye}");
    assert_eq!(bye["reason"], "shutdown", "{bye}");
    assert!(bye["reconnect_ms"].is_u64(), "{bye}");
    assert_eq!(client.recv_non_ping(), None, "EOF after bye");

    // The default drain timeout is 10 s; a drain with one well-behaved client takes far less.
    let status = server
        .child
        .wait_exit(Duration::from_secs(8))
        .expect("exited after SIGTERM");
    assert!(status.success(), "{status:?}");
    assert!(signalled.elapsed() < Duration::from_secs(8));
}

#[test]
fn invalid_flag_value_is_named_and_fails() {
    let (status, _, stderr) = run_to_exit(&["--listen", "127.0.0.1:0", "--max-missed", "0"], &[]);
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("max_missed"), "stderr: {stderr}");
}

#[test]
fn unknown_config_file_key_is_named_and_fails() {
    let file = TempFile::new(
        "unknown-key",
        "listen = \"127.0.0.1:0\"\nheartbeat_intervall = \"300ms\"\n",
    );
    let (status, _, stderr) = run_to_exit(&["--config", file.path()], &[]);
    assert!(!status.success(), "{status:?}");
    assert!(stderr.contains("heartbeat_intervall"), "stderr: {stderr}");
}

fn welcome_of(args: &[&str], env: &[(&str, &str)]) -> Value {
    let server = spawn_server(args, env);
    let (_client, welcome) = LineClient::hello(server.addr, "u");
    welcome
}

#[test]
fn config_file_is_honoured() {
    let file = TempFile::new(
        "honoured",
        "listen = \"127.0.0.1:0\"\nheartbeat_interval = \"300ms\"\nmax_missed = 3\n",
    );
    let welcome = welcome_of(&["--config", file.path()], &[]);
    assert_eq!(
        welcome["heartbeat"],
        json!({"interval_ms": 300, "max_missed": 3})
    );
}

#[test]
fn environment_is_honoured_and_flags_beat_it() {
    let listen = ["--listen", "127.0.0.1:0"];
    let env = [("HEARTWIRE_MAX_FRAME", "2048")];
    assert_eq!(welcome_of(&listen, &env)["max_frame"], 2048);
    let with_flag = ["--listen", "127.0.0.1:0", "--max-frame", "4096"];
    assert_eq!(welcome_of(&with_flag, &env)["max_frame"], 4096);

    // The environment beats the config file, which beats the defaults.
    let file = TempFile::new(
        "precedence",
        "listen = \"127.0.0.1:0\"\nmax_frame = 1024\nheartbeat_interval = \"300ms\"\n",
    );
    let welcome = welcome_of(&["--config", file.path()], &env);
    assert_eq!(welcome["max_frame"], 2048);
    assert_eq!(welcome["heartbeat"]["interval_ms"], 300);
    let welcome = welcome_of(&["--config", file.path()], &[]);
    assert_eq!(welcome["max_frame"], 1024);
    // The listen address can come from the environment too.
    let welcome = welcome_of(&[], &[("HEARTWIRE_LISTEN", "127.0.0.1:0")]);
    assert_eq!(welcome["heartbeat"]["interval_ms"], 30_000, "default");
}

#[test]
fn serve_help_lists_every_flag() {
    let (status, stdout, _) = run_to_exit(&["--help"], &[]);
    assert!(status.success(), "{status:?}");
    for flag in [
        "--listen",
        "--heartbeat-interval",
        "--max-missed",
        "--handshake-timeout",
        "--max-frame",
        "--workers",
        "--config",
    ] {
        assert!(
            stdout.contains(flag),
            "`serve --help` lacks {flag}:\n{stdout}"
        );
    }
}

#[test]
fn token_mints_the_rooms_and_send_claims() {
    let secret = "cli-token-secret-0123";
    let out = Command::new(env!("CARGO_BIN_EXE_heartwire"))
        .args(["token", "--secret", secret, "--user", "alice"])
        .args([
            "--rooms",
            "lobby,team-*",
            "--send",
            "support,bot-*",
            "--ttl",
            "5m",
        ])
        .output()
        .expect("run heartwire token");
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    let claims = jsonwebtoken::decode::<heartwire::Claims>(
        token.trim(),
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()),
        &validation,
    )
    .expect("a valid token")
    .claims;
    assert_eq!(claims.sub, "alice");
    assert_eq!(claims.rooms.unwrap(), ["lobby", "team-*"]);
    assert_eq!(claims.send.unwrap(), ["support", "bot-*"]);
}
