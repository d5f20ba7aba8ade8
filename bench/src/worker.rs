//! Running shards: in this process, or in worker processes over pipes.
//!
//! A worker is this same executable started as `heartwire bench MODE --worker`: it reads its
//! [`Plan`] as the first line of standard input, then [`Command`]s one per line, and writes
//! [`Event`]s one per line on standard output (logs go to standard error). The coordinator
//! sees in-process and worker shards through the same [`ShardHandle`], so the orchestration
//! has one code path. Workers are killed if the coordinator drops them, and a worker whose
//! standard input closes stops as if told to.

use std::io;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command as Process};
use tokio::sync::mpsc;

use super::shard::{run_shard, Command, Event, Plan};

/// A running shard, however it runs.
pub struct ShardHandle {
    commands: mpsc::UnboundedSender<Command>,
    /// The worker's process id, for CPU accounting (`None` when in-process).
    pub pid: Option<u32>,
    _child: Option<Child>,
}

impl ShardHandle {
    /// Sends a command; a shard that is gone ignores it (its absence shows in the events).
    pub fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }
}

/// Starts `plan` as a task of this process; its events arrive on `events` tagged with `shard`.
pub fn spawn_local(plan: Plan, events: mpsc::UnboundedSender<(usize, Event)>) -> ShardHandle {
    let shard = plan.shard;
    let (commands, command_rx) = mpsc::unbounded_channel();
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    tokio::spawn(run_shard(plan, command_rx, event_tx, true));
    tokio::spawn(async move {
        while let Some(event) = event_rx.recv().await {
            if events.send((shard, event)).is_err() {
                break;
            }
        }
    });
    ShardHandle {
        commands,
        pid: None,
        _child: None,
    }
}

/// Starts `plan` in a worker process: `exe` (this executable when `None`) with
/// `bench MODE --worker`.
pub fn spawn_process(
    plan: Plan,
    exe: Option<&std::path::Path>,
    events: mpsc::UnboundedSender<(usize, Event)>,
) -> io::Result<ShardHandle> {
    let shard = plan.shard;
    let exe = match exe {
        Some(exe) => exe.to_owned(),
        None => std::env::current_exe()?,
    };
    let mode = serde_json::to_value(plan.mode)?;
    let mode = mode.as_str().unwrap_or("idle").to_owned();
    let mut child = Process::new(exe)
        .args(["bench", &mode, "--worker"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id();
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("worker has no stdin"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("worker has no stdout"))?;
    let (commands, mut command_rx) = mpsc::unbounded_channel::<Command>();
    let mut first = serde_json::to_vec(&plan)?;
    first.push(b'\n');
    tokio::spawn(async move {
        if stdin.write_all(&first).await.is_err() {
            return;
        }
        while let Some(command) = command_rx.recv().await {
            let Ok(mut line) = serde_json::to_vec(&command) else {
                continue;
            };
            line.push(b'\n');
            if stdin.write_all(&line).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut done = false;
        while let Ok(Some(line)) = lines.next_line().await {
            match serde_json::from_str::<Event>(&line) {
                Ok(event) => {
                    done |= matches!(event, Event::Done { .. } | Event::Failed { .. });
                    if events.send((shard, event)).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let error = format!("unreadable worker event: {e}");
                    let _ = events.send((shard, Event::Failed { error }));
                    return;
                }
            }
        }
        if !done {
            let error = "worker process exited without reporting".to_owned();
            let _ = events.send((shard, Event::Failed { error }));
        }
    });
    Ok(ShardHandle {
        commands,
        pid,
        _child: Some(child),
    })
}

/// The body of `heartwire bench MODE --worker`: runs one shard over standard input/output.
pub async fn run_worker() -> io::Result<()> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let first = input
        .next_line()
        .await?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no plan on stdin"))?;
    let plan: Plan = serde_json::from_str(&first)?;
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = input.next_line().await {
            match serde_json::from_str::<Command>(&line) {
                Ok(command) => {
                    if command_tx.send(command).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable command"),
            }
        }
        // The coordinator is gone: stop.
        let _ = command_tx.send(Command::Stop);
    });
    let (event_tx, mut event_rx) = mpsc::unbounded_channel();
    let shard = tokio::spawn(run_shard(plan, command_rx, event_tx, false));
    let mut stdout = tokio::io::stdout();
    while let Some(event) = event_rx.recv().await {
        let mut line = serde_json::to_vec(&event)?;
        line.push(b'\n');
        stdout.write_all(&line).await?;
        stdout.flush().await?;
        if matches!(event, Event::Done { .. }) {
            break;
        }
    }
    let _ = shard.await;
    Ok(())
}
