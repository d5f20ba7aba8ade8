//! The `heartwire` binary as a child process, for the tests that run the real executable:
//! started without the runner's `HEARTWIRE_*` and `RUST_LOG` (so that they test what they
//! say), killed when the test ends, its output read on threads so that it never blocks on a
//! full pipe.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::PATIENCE;

/// Kills and reaps the child when a test ends, failed or not.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ChildGuard {
    /// Spawns `cmd` with its stdout piped (stderr as `cmd` says).
    pub fn spawn(cmd: &mut Command) -> ChildGuard {
        ChildGuard(cmd.stdout(Stdio::piped()).spawn().expect("spawn heartwire"))
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Waits for the exit, at most `wait`.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<ExitStatus> {
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

    /// The lines of the child's stdout as they come (taken from it: call once).
    pub fn stdout_lines(&mut self) -> mpsc::Receiver<String> {
        lines(self.0.stdout.take().expect("stdout piped"))
    }

    /// Waits for the line of `lines` that starts with `prefix` (`"listening on "`) and
    /// returns the address after it; panics after [`PATIENCE`], with the exit status.
    pub fn announced(&mut self, lines: &mpsc::Receiver<String>, prefix: &str) -> SocketAddr {
        let until = Instant::now() + PATIENCE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let line = match lines.recv_timeout(left) {
                Ok(line) => line,
                Err(e) => panic!(
                    "no `{prefix}` line ({e:?}); exit status {:?}",
                    self.0.try_wait()
                ),
            };
            if let Some(addr) = line.strip_prefix(prefix) {
                return addr.trim().parse().expect("an address after the prefix");
            }
        }
    }

    /// The child's resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

/// `heartwire serve ARGS` with `env` and none of the runner's `HEARTWIRE_*` or `RUST_LOG`.
pub fn serve_command(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_heartwire"));
    cmd.arg("serve").args(args).stdin(Stdio::null());
    for (key, _) in std::env::vars_os() {
        let key_text = key.to_string_lossy();
        if key_text.starts_with("HEARTWIRE_") || key_text == "RUST_LOG" {
            cmd.env_remove(key);
        }
    }
    cmd.envs(env.iter().copied());
    cmd
}

/// The lines of `output` (a child's stdout or stderr) as they come, read to its end on a
/// thread.
pub fn lines(output: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines() {
            let Ok(line) = line else { break };
            let _ = tx.send(line);
        }
    });
    rx
}

/// All of `output` (a child's stdout or stderr), read to its end on a thread.
pub fn read_to_end(mut output: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = output.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs `cmd`, which must exit by itself within [`PATIENCE`] (it is killed if not), and
/// returns its exit status and output.
pub fn run_to_exit(mut cmd: Command) -> Output {
    let mut child = ChildGuard::spawn(cmd.stderr(Stdio::piped()));
    let stdout = read_to_end(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_to_end(child.0.stderr.take().expect("stderr piped"));
    let status = child
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("{cmd:?} did not exit within {PATIENCE:?}"));
    Output {
        status,
        stdout: stdout.join().expect("stdout read"),
        stderr: stderr.join().expect("stderr read"),
    }
}

/// A file in the temporary directory, removed when the test ends.
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `text` to a fresh file whose name ends in `name` (`"precedence.toml"`).
    pub fn new(name: &str, text: &str) -> TempFile {
        let path = std::env::temp_dir().join(format!(
            "heartwire-{}-{}-{name}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&path, text).expect("write the file");
        TempFile(path)
    }

    /// The file's path, as an argument.
    pub fn path(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
