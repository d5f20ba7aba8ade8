//! The `heartwire` binary: flags, environment, config file, validation errors, `--help`,
//! and a graceful exit on SIGTERM. Runs the real executable and talks to it over TCP.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::process::{self, serve_command, ChildGuard, TempFile};
use crate::common::PATIENCE;

/// A running server process and the address it announced on stdout.
struct Running {
    child: ChildGuard,
    addr: SocketAddr,
}

fn spawn_server(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut child = ChildGuard::spawn(serve_command(args, env).stderr(Stdio::null()));
    let lines = child.stdout_lines();
    let addr = child.announced(&lines, "listening on ");
    Running { child, addr }
}

/// Runs `heartwire serve ARGS` expecting it to exit by itself; returns (status, stdout, stderr).
fn run_to_exit(args: &[&str], env: &[(&str, &str)]) -> (ExitStatus, String, String) {
    let out = process::run_to_exit(serve_command(args, env));
    let text = |bytes: Vec<u8>| String::from_utf8(bytes).expect("UTF-8 output");
    (out.status, text(out.stdout), text(out.stderr))
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
        "unknown-key.toml",
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
        "honoured.toml",
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
        "precedence.toml",
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
