//! `heartwire connect` end to end: real binaries, a real server process, real sockets.
//! Messages come out on stdout as JSON lines, status on stderr, stdin lines are published,
//! and the client survives the server being killed and started again on the same port.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const PATIENCE: Duration = Duration::from_secs(15);
const BIN: &str = env!("CARGO_BIN_EXE_heartwire");

/// A child process, killed when dropped, with its output read line by line on threads.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    name: &'static str,
}

impl Proc {
    fn spawn(name: &'static str, args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn heartwire");
        let lines = |r: Box<dyn std::io::Read + Send>| {
            let (tx, rx) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.stdout.take().expect("stdout")));
        let stderr = lines(Box::new(child.stderr.take().expect("stderr")));
        Proc {
            stdin: child.stdin.take(),
            child,
            stdout,
            stderr,
            name,
        }
    }

    /// The first line on `stream` matching `want`; panics after PATIENCE with what was seen.
    fn wait_line(stream: &Receiver<String>, name: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match stream.recv_timeout(left) {
                Ok(line) if want(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("{name}: no matching line; saw {seen:#?}"),
            }
        }
    }

    fn stdout_line(&self, want: impl Fn(&str) -> bool) -> String {
        Self::wait_line(&self.stdout, self.name, want)
    }

    fn stderr_line(&self, want: impl Fn(&str) -> bool) -> String {
        Self::wait_line(&self.stderr, self.name, want)
    }

    fn type_line(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{line}").expect("write stdin");
        stdin.flush().expect("flush stdin");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(listen: &str) -> (Proc, String) {
    let server = Proc::spawn(
        "server",
        &[
            "serve",
            "--listen",
            listen,
            "--heartbeat-interval",
            "500ms",
            "--shutdown-reconnect",
            "100ms",
        ],
    );
    let line = server.stdout_line(|l| l.starts_with("listening on "));
    let addr = line.trim_start_matches("listening on ").trim().to_owned();
    (server, addr)
}

fn message(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("stdout line is not JSON: {line:?}: {e}"))
}

#[test]
fn connect_prints_messages_publishes_stdin_and_survives_a_server_restart() {
    let (server, addr) = serve("127.0.0.1:0");
    let mut alice = Proc::spawn(
        "alice",
        &[
            "connect",
            &addr,
            "--user",
            "alice",
            "--subscribe",
            "lobby",
            "--backoff-initial",
            "100ms",
            "--backoff-cap",
            "400ms",
        ],
    );
    alice.stderr_line(|l| l.starts_with("connected as alice"));
    alice.stderr_line(|l| l == "subscribed lobby at seq 0");
    let mut bob = Proc::spawn(
        "bob",
        &["connect", &addr, "--user", "bob", "--subscribe", "lobby"],
    );
    bob.stderr_line(|l| l.starts_with("subscribed lobby"));

    // a stdin line is published to the first room; every subscriber prints it as JSON
    alice.type_line("hello world");
    for who in [&alice, &bob] {
        let m = message(&who.stdout_line(|_| true));
        assert_eq!(m["type"], "message");
        assert_eq!(m["room"], "lobby");
        assert_eq!(m["seq"], 1);
        assert_eq!(m["from"], "alice");
        assert_eq!(m["data"], "hello world");
    }
    // JSON lines are sent as JSON; /send goes to one user, without room or seq
    bob.type_line(r#"{"n": 2}"#);
    assert_eq!(
        message(&alice.stdout_line(|_| true))["data"],
        json!({"n": 2})
    );
    bob.type_line("/send alice psst");
    let direct = message(&alice.stdout_line(|_| true));
    assert_eq!(direct["data"], "psst");
    assert_eq!(direct["from"], "bob");
    assert!(direct.get("room").is_none() && direct.get("seq").is_none());
    bob.stderr_line(|l| l == "sent to alice: 1 session(s)");
    bob.type_line("/nope");
    bob.stderr_line(|l| l.starts_with("unknown command /nope"));

    // kill the server outright, start it again on the same port
    drop(server);
    alice.stderr_line(|l| l.starts_with("disconnected: "));
    alice.stderr_line(|l| l.starts_with("reconnecting in "));
    // typed while the server is down: queued, delivered after the reconnect
    alice.type_line("while you were out");
    let (_server, again) = serve(&addr);
    assert_eq!(again, addr);
    alice.stderr_line(|l| l.starts_with("connected as alice"));
    // the new server's room has a new epoch: reported, never silent
    alice.stderr_line(|l| l.starts_with("gap: room lobby restarted"));
    bob.stderr_line(|l| l.starts_with("connected as bob"));
    let m = message(&alice.stdout_line(|_| true));
    assert_eq!(m["data"], "while you were out");
    assert_eq!(m["seq"], 1, "the restarted server numbers from 1");
}

/// The issue-15 scenario with real processes: alice comes back first from a server restart and
/// publishes; bob, held off by a gate, comes back later and shows the gap on stderr, then the
/// message the new server holds on stdout, once, before what is published after.
#[test]
fn connect_shows_the_gap_then_what_the_restarted_server_holds() {
    let (server, addr) = serve("127.0.0.1:0");
    let gate = crate::client_support::gate::Gate::start(addr.parse().expect("server address"));
    let fast = ["--backoff-initial", "100ms", "--backoff-cap", "400ms"];
    let connect = |user: &str, to: &str| -> Vec<String> {
        let mut args = vec!["connect", to, "--user", user, "--subscribe", "lobby"];
        args.extend(fast);
        args.into_iter().map(str::to_owned).collect()
    };
    let spawn = |name: &'static str, args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Proc::spawn(name, &args)
    };
    let mut alice = spawn("alice", connect("alice", &addr));
    let bob = spawn("bob", connect("bob", &gate.addr().to_string()));
    alice.stderr_line(|l| l == "subscribed lobby at seq 0");
    bob.stderr_line(|l| l == "subscribed lobby at seq 0");
    alice.type_line("before");
    assert_eq!(message(&bob.stdout_line(|_| true))["data"], "before");

    // Kill the server with bob held off; alice comes back first and publishes.
    gate.close();
    drop(server);
    bob.stderr_line(|l| l.starts_with("disconnected: "));
    let (_server, again) = serve(&addr);
    assert_eq!(again, addr);
    alice.stderr_line(|l| l.starts_with("gap: room lobby restarted"));
    alice.stderr_line(|l| l.starts_with("subscribed lobby at seq 0"));
    alice.type_line("while down 1");
    let m = message(&alice.stdout_line(|l| l.contains("while down 1")));
    // Seq 1, or 2 when the kill came before alice read the ack of "before": she then resent
    // it and the new server sequenced it first.
    let seq = m["seq"].as_u64().expect("a seq");
    assert!(seq == 1 || seq == 2, "{m}");

    // Bob comes back: the gap, then the new epoch from seq 1, each once, then what follows.
    gate.open();
    bob.stderr_line(|l| l.starts_with("gap: room lobby restarted"));
    let caught_up = format!("subscribed lobby at seq {seq} (not recovered)");
    bob.stderr_line(|l| l == caught_up);
    for expected in 1..=seq {
        let m = message(&bob.stdout_line(|_| true));
        assert_eq!(m["seq"], expected, "{m}");
        let data = if expected == seq {
            "while down 1"
        } else {
            "before"
        };
        assert_eq!(m["data"], data, "{m}");
    }
    alice.type_line("after");
    let m = message(&bob.stdout_line(|_| true));
    assert_eq!(
        (m["seq"].clone(), m["data"].clone()),
        (json!(seq + 1), json!("after"))
    );
}

#[test]
fn connect_without_user_or_token_is_a_usage_error() {
    let out = Command::new(BIN)
        .args(["connect", "127.0.0.1:1"])
        .env_remove("HEARTWIRE_USER")
        .env_remove("HEARTWIRE_TOKEN")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--user"));
}

impl Proc {
    /// Waits for the exit, at most `wait`.
    fn wait_exit(&mut self, wait: Duration) -> Option<std::process::ExitStatus> {
        let until = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() >= until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// SIGTERM while stdin is open and idle: the client says `bye` and exits at once, without
/// waiting for a line. The server is a raw listener here, to see exactly what the client sends.
#[test]
fn connect_exits_promptly_on_sigterm_while_stdin_is_idle() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (got_tx, got) = channel();
    std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut hello = String::new();
        reader.read_line(&mut hello).unwrap();
        let welcome = json!({"type": "welcome", "session": "s-1", "user": "idle",
            "heartbeat": {"interval_ms": 10_000, "max_missed": 2}, "max_frame": 65536,
            "server": "test"});
        writeln!(&stream, "{welcome}").unwrap();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            let _ = got_tx.send(line);
        }
        let _ = got_tx.send("EOF".to_owned());
    });
    let mut client = Proc::spawn("client", &["connect", &addr, "--user", "idle"]);
    client.stderr_line(|l| l.starts_with("connected as idle"));
    let signalled = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &client.child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = client
        .wait_exit(Duration::from_secs(5))
        .expect("exits on SIGTERM with stdin idle");
    assert!(status.success(), "{status:?}");
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "{:?}",
        signalled.elapsed()
    );
    let mut frames = Vec::new();
    while let Ok(line) = got.recv_timeout(PATIENCE) {
        if line == "EOF" {
            break;
        }
        frames.push(line);
    }
    assert!(
        frames.iter().any(|f| f.contains("\"type\":\"bye\"")),
        "a bye before the close: {frames:?}"
    );
}

/// With `--exit-on-eof`, a line that could not be sent makes the exit status 1.
#[test]
fn connect_exit_on_eof_fails_when_a_line_could_not_be_sent() {
    let (_server, addr) = serve("127.0.0.1:0");
    // No --subscribe: there is no room to publish the line to.
    let mut client = Proc::spawn(
        "client",
        &["connect", &addr, "--user", "nobody", "--exit-on-eof"],
    );
    client.type_line("lost line");
    drop(client.stdin.take());
    let status = client
        .wait_exit(PATIENCE)
        .expect("exits at the end of stdin");
    assert_eq!(status.code(), Some(1), "{status:?}");
}
