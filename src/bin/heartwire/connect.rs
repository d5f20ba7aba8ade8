//! `heartwire connect`: a line-oriented client for people and scripts.
//!
//! Received `message` frames are printed on stdout, one JSON line each, exactly as the wire
//! shape (`{"type":"message","room":...,"seq":...,"from":...,"data":...}`), so the output can
//! be piped into `jq` or another program. Everything about the connection (connected,
//! disconnected: reason, reconnecting in N ms, recovered, gap, errors) goes to stderr, one
//! status line each, so stdout stays machine-readable.
//!
//! Each stdin line is published to the first subscribed room: a line that is valid JSON is
//! sent as that JSON value, anything else as a JSON string. Commands: `/send USER TEXT`,
//! `/join ROOM`, `/leave ROOM`; a line starting with `//` publishes the text after the first
//! `/`. Publishing never blocks on the network: lines typed while the server is away are
//! queued and delivered (exactly once) after the reconnect. The command runs until it gets
//! SIGINT or SIGTERM (or, with `--exit-on-eof`, until stdin ends and every queued line is
//! acknowledged), through any number of server restarts.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, SignalKind};

use heartwire::client::{
    BackoffConfig, Client, ClientConfig, ClientEvent, ClientHandle, ClientTls,
};

use crate::serve_args::duration;
use crate::usage_error;

/// Options of `heartwire connect`.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server address, HOST:PORT.
    #[arg(value_name = "ADDR")]
    pub addr: String,
    /// User name for `hello`.
    #[arg(long, env = "HEARTWIRE_USER", value_name = "USER")]
    pub user: Option<String>,
    /// Token for `hello`, for servers with authentication.
    #[arg(
        long,
        env = "HEARTWIRE_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Room to join (repeatable); stdin lines are published to the first one.
    #[arg(long = "subscribe", value_name = "ROOM")]
    pub subscribe: Vec<String>,
    /// Ceiling of the first reconnect delay.
    #[arg(long, default_value = "250ms", value_parser = duration, value_name = "DUR")]
    pub backoff_initial: Duration,
    /// Largest reconnect delay ceiling.
    #[arg(long, default_value = "30s", value_parser = duration, value_name = "DUR")]
    pub backoff_cap: Duration,
    /// Longest wait for a TCP connection.
    #[arg(long, default_value = "5s", value_parser = duration, value_name = "DUR")]
    pub dial_timeout: Duration,
    /// Lines that may wait for the server (while it is away); more are refused with an error.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub max_pending: usize,
    /// Exit when stdin ends, once every published line is acknowledged.
    #[arg(long)]
    pub exit_on_eof: bool,
    /// Connect with TLS, trusting the CA certificates in this PEM file.
    #[arg(long, env = "HEARTWIRE_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Name to verify the server certificate against [default: the host part of ADDR].
    #[arg(long, value_name = "NAME", requires = "tls_ca")]
    pub tls_server_name: Option<String>,
}

impl ConnectArgs {
    /// The client configuration these options describe.
    pub fn to_config(&self) -> Result<ClientConfig, String> {
        if self.user.is_none() && self.token.is_none() {
            return Err("give --user or --token".into());
        }
        let mut config = ClientConfig::new(self.addr.clone(), String::new());
        config.user = self.user.clone();
        config.token = self.token.clone();
        config.dial_timeout = self.dial_timeout;
        config.max_pending = self.max_pending;
        config.backoff = BackoffConfig {
            initial: self.backoff_initial,
            cap: self.backoff_cap,
            ..BackoffConfig::default()
        };
        if let Some(ca) = &self.tls_ca {
            let host = match self.addr.rsplit_once(':') {
                Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
                None => self.addr.as_str(),
            };
            let server_name = self
                .tls_server_name
                .clone()
                .unwrap_or_else(|| host.to_owned());
            config.tls = Some(ClientTls::with_ca(ca, server_name).map_err(|e| e.to_string())?);
        }
        Ok(config)
    }
}

/// One status line on stderr.
fn status(text: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// The status line for an event, or the JSON line for a message (stdout).
fn print_event(event: &ClientEvent) {
    match event {
        ClientEvent::Message(m) => {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{}", m.to_json_line());
            let _ = out.flush();
        }
        ClientEvent::Connected { session, user, .. } => {
            status(format_args!("connected as {user} (session {session})"))
        }
        ClientEvent::Disconnected { reason } => status(format_args!("disconnected: {reason}")),
        ClientEvent::Reconnecting { in_ms, .. } => {
            status(format_args!("reconnecting in {in_ms} ms"))
        }
        ClientEvent::Subscribed {
            room,
            seq,
            recovered,
            ..
        } => match recovered {
            Some(true) => status(format_args!("recovered {room} at seq {seq}")),
            Some(false) => status(format_args!(
                "subscribed {room} at seq {seq} (not recovered)"
            )),
            None => status(format_args!("subscribed {room} at seq {seq}")),
        },
        ClientEvent::Unsubscribed { room } => status(format_args!("unsubscribed {room}")),
        ClientEvent::Gap(gap) => status(format_args!("gap: {gap}")),
        ClientEvent::ServerError { code, message } => {
            status(format_args!("server error {code}: {message}"))
        }
        ClientEvent::Frame { frame, .. } => status(format_args!("frame: {frame}")),
        ClientEvent::Closed => status(format_args!("closed")),
    }
}

/// What a stdin line asks for.
#[derive(Debug, PartialEq)]
enum Line<'a> {
    Publish(serde_json::Value),
    Send(&'a str, serde_json::Value),
    Join(&'a str),
    Leave(&'a str),
    Nothing,
    Bad(String),
}

fn as_data(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_owned()))
}

fn parse_line(line: &str) -> Line<'_> {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.trim().is_empty() {
        return Line::Nothing;
    }
    if let Some(text) = line.strip_prefix("//") {
        return Line::Publish(serde_json::Value::String(format!("/{text}")));
    }
    let Some(command) = line.strip_prefix('/') else {
        return Line::Publish(as_data(line));
    };
    let (name, rest) = command.split_once(' ').unwrap_or((command, ""));
    let rest = rest.trim();
    match name {
        "send" => match rest.split_once(' ') {
            Some((user, text)) if !user.is_empty() => Line::Send(user, as_data(text.trim())),
            _ => Line::Bad("usage: /send USER TEXT".into()),
        },
        "join" if !rest.is_empty() => Line::Join(rest),
        "leave" if !rest.is_empty() => Line::Leave(rest),
        "join" | "leave" => Line::Bad(format!("usage: /{name} ROOM")),
        _ => Line::Bad(format!(
            "unknown command /{name} (commands: /send USER TEXT, /join ROOM, /leave ROOM)"
        )),
    }
}

/// Runs `heartwire connect` until a signal (or the end of stdin with `--exit-on-eof`).
pub fn run(args: ConnectArgs) -> ExitCode {
    let config = match args.to_config() {
        Ok(config) => config,
        Err(e) => return usage_error(e),
    };
    let system = actix_rt::System::new();
    system.block_on(async move {
        let (mut term, mut int) = match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(term), Ok(int)) => (term, int),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("heartwire: cannot install signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        let (client, mut events) = Client::start(config);
        let mut rooms: Vec<String> = Vec::new();
        for room in &args.subscribe {
            if let Err(e) = client.subscribe(room).await {
                return usage_error(format!("cannot subscribe to {room:?}: {e}"));
            }
            if !rooms.contains(room) {
                rooms.push(room.clone());
            }
        }
        let printer = actix_rt::spawn(async move {
            while let Some(event) = events.recv().await {
                print_event(&event);
            }
        });
        let input = read_stdin(client.clone(), rooms, args.exit_on_eof);
        let code = tokio::select! {
            _ = term.recv() => ExitCode::SUCCESS,
            _ = int.recv() => ExitCode::SUCCESS,
            code = input => code,
        };
        client.close().await;
        // Let the printer drain the last events (it ends with the stream).
        let _ = tokio::time::timeout(Duration::from_secs(1), printer).await;
        code
    })
}

/// Stdin lines, read on a thread of their own. tokio's stdin reads on the runtime's
/// blocking pool, and a runtime does not finish shutting down while a read is blocked there:
/// Ctrl-C would wait for the next Enter. A plain thread is not waited for at exit.
fn stdin_lines() -> tokio::sync::mpsc::Receiver<std::io::Result<String>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    rx
}

/// Publishes stdin lines and runs commands. Returns only at EOF with `exit_on_eof`.
async fn read_stdin(client: ClientHandle, mut rooms: Vec<String>, exit_on_eof: bool) -> ExitCode {
    let mut lines = stdin_lines();
    let mut acks: Vec<actix_rt::task::JoinHandle<bool>> = Vec::new();
    // A line refused at once (queue full, not a room) could not be sent either.
    let mut refused = false;
    loop {
        let line = match lines.recv().await {
            Some(Ok(line)) => line,
            None => break,
            Some(Err(e)) => {
                status(format_args!("stdin: {e}"));
                break;
            }
        };
        acks.retain(|h| !h.is_finished());
        match parse_line(&line) {
            Line::Nothing => {}
            Line::Bad(message) => status(format_args!("{message}")),
            Line::Join(room) => match client.subscribe(room).await {
                Ok(()) => {
                    if !rooms.iter().any(|r| r == room) {
                        rooms.push(room.to_owned());
                    }
                }
                Err(e) => status(format_args!("cannot join {room}: {e}")),
            },
            Line::Leave(room) => match client.unsubscribe(room).await {
                Ok(()) => rooms.retain(|r| r != room),
                Err(e) => status(format_args!("cannot leave {room}: {e}")),
            },
            Line::Publish(data) => {
                let Some(room) = rooms.first() else {
                    status(format_args!("no room to publish to: /join ROOM first"));
                    refused = true;
                    continue;
                };
                match client.publish_queued(room, &data, None).await {
                    Ok(pending) => acks.push(actix_rt::spawn(async move {
                        match pending.await {
                            Ok(_) => true,
                            Err(e) => {
                                status(format_args!("publish failed: {e}"));
                                false
                            }
                        }
                    })),
                    Err(e) => {
                        status(format_args!("publish refused: {e}"));
                        refused = true;
                    }
                }
            }
            Line::Send(to, data) => match client.send_queued(to, &data, None).await {
                Ok(pending) => {
                    let to = to.to_owned();
                    acks.push(actix_rt::spawn(async move {
                        match pending.await {
                            Ok(ack) => {
                                status(format_args!("sent to {to}: {} session(s)", ack.delivered));
                                true
                            }
                            Err(e) => {
                                status(format_args!("send to {to} failed: {e}"));
                                false
                            }
                        }
                    }))
                }
                Err(e) => {
                    status(format_args!("send refused: {e}"));
                    refused = true;
                }
            },
        }
    }
    if !exit_on_eof {
        // Keep receiving until a signal ends the process.
        std::future::pending::<()>().await;
    }
    let mut ok = !refused;
    for ack in acks {
        ok &= ack.await.unwrap_or(false);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_and_commands() {
        assert_eq!(
            parse_line("hello there"),
            Line::Publish(json!("hello there"))
        );
        assert_eq!(parse_line(r#"{"a":1}"#), Line::Publish(json!({"a": 1})));
        assert_eq!(parse_line("//etc"), Line::Publish(json!("/etc")));
        assert_eq!(
            parse_line("/send bob hi you"),
            Line::Send("bob", json!("hi you"))
        );
        assert_eq!(parse_line("/join r2"), Line::Join("r2"));
        assert_eq!(parse_line("/leave r2"), Line::Leave("r2"));
        assert_eq!(parse_line("   "), Line::Nothing);
        assert!(matches!(parse_line("/send bob"), Line::Bad(_)));
        assert!(matches!(parse_line("/join"), Line::Bad(_)));
        assert!(matches!(parse_line("/what"), Line::Bad(_)));
    }
}
