//! Several server processes measured as one: the nodes of a cluster.
//!
//! The nodes of a heartwire cluster (`--broker redis://…` with `--reuse-port`) share one port
//! and the kernel spreads the bench's connections over them, so what the cluster costs is the
//! sum over its processes, and whether each node holds its share as cheaply as a lone server
//! is a per-node figure. `--server-pid` may therefore be given once per node: the server
//! figures of the report are sums over them (RSS, CPU; deliveries per CPU-second are per
//! CPU-second of the whole cluster), and [`NodeReport`]s list each process with the
//! connections it held. The bench cannot ask a node which connections it took, so those are
//! counted from the process's open descriptors (`/proc/PID/fd`, before the ramp and at the end
//! of the window).

use std::io;

use serde::Serialize;

use super::proc::{self, ProcSample, Sampler, Window};

/// Readings of every server process before the ramp.
#[derive(Debug, Clone)]
pub struct Before {
    pids: Vec<u32>,
    samples: Vec<ProcSample>,
    files: Vec<Option<u64>>,
}

impl Before {
    /// Reads every process in `pids`; `None` when there is none or one cannot be read.
    pub fn read(pids: &[u32]) -> Option<Before> {
        let samples = pids
            .iter()
            .map(|&pid| proc::sample(Some(pid)).ok())
            .collect::<Option<Vec<_>>>()?;
        (!samples.is_empty()).then(|| Before {
            pids: pids.to_vec(),
            samples,
            files: pids.iter().map(|&pid| open_files(pid)).collect(),
        })
    }
}

/// Samples every server process during the window.
#[derive(Debug, Clone)]
pub struct NodesSampler {
    before: Before,
    samplers: Vec<Sampler>,
}

/// What the sampler saw: sums over the processes, and each process when there are several.
#[derive(Debug, Clone)]
pub struct Measured {
    /// The sum of the processes' readings before the ramp.
    pub before: ProcSample,
    /// The sum of the processes' windows (`rss_max_kib` is the sum of each one's largest).
    pub window: Window,
    /// Each process, when there are several.
    pub nodes: Vec<NodeReport>,
}

/// One server process of several.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReport {
    /// Its pid.
    pub pid: u32,
    /// RSS before the ramp, KiB.
    pub rss_before_kib: u64,
    /// Mean RSS in the window, KiB.
    pub rss_window_kib: u64,
    /// Descriptors it opened between before the ramp and the end of the window: the
    /// connections it held (plus any other file it opened meanwhile).
    pub connections: Option<u64>,
    /// `(rss_window − rss_before) / connections`, bytes.
    pub rss_per_connection: Option<f64>,
    /// CPU seconds in the window.
    pub cpu_seconds: f64,
    /// CPU in the window as a share of one core, percent.
    pub cpu_percent: f64,
}

impl NodesSampler {
    /// Takes the first reading of every process read in `before`.
    pub fn start(before: Before) -> io::Result<NodesSampler> {
        let samplers = before
            .pids
            .iter()
            .map(|&pid| Sampler::start(pid))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(NodesSampler { before, samplers })
    }

    /// Takes one more reading of every process.
    pub fn tick(&mut self) {
        for s in &mut self.samplers {
            s.tick();
        }
    }

    /// Takes the last readings and summarises a window of `seconds`.
    pub fn finish(self, seconds: f64) -> Measured {
        let before = self.before;
        let windows: Vec<Window> = self.samplers.into_iter().map(Sampler::finish).collect();
        let nodes = if windows.len() > 1 {
            windows
                .iter()
                .zip(&before.samples)
                .zip(before.pids.iter().zip(&before.files))
                .map(|((w, b), (&pid, &files_before))| {
                    let connections = files_before
                        .zip(open_files(pid))
                        .map(|(b, a)| a.saturating_sub(b));
                    NodeReport {
                        pid,
                        rss_before_kib: b.rss_kib,
                        rss_window_kib: w.rss_mean_kib,
                        connections,
                        rss_per_connection: connections.filter(|&n| n > 0).map(|n| {
                            (w.rss_mean_kib as f64 - b.rss_kib as f64) * 1024.0 / n as f64
                        }),
                        cpu_seconds: w.cpu_seconds,
                        cpu_percent: 100.0 * w.cpu_seconds / seconds.max(1e-9),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Measured {
            before: sum_samples(&before.samples),
            window: sum_windows(&windows),
            nodes,
        }
    }
}

/// The sum of several processes' readings.
fn sum_samples(samples: &[ProcSample]) -> ProcSample {
    ProcSample {
        rss_kib: samples.iter().map(|s| s.rss_kib).sum(),
        rss_anon_kib: samples.iter().map(|s| s.rss_anon_kib).sum(),
        cpu_seconds: samples.iter().map(|s| s.cpu_seconds).sum(),
        user_cpu_seconds: samples.iter().map(|s| s.user_cpu_seconds).sum(),
        threads: samples.iter().map(|s| s.threads).sum(),
    }
}

/// The sum of several processes' windows.
fn sum_windows(windows: &[Window]) -> Window {
    Window {
        cpu_seconds: windows.iter().map(|w| w.cpu_seconds).sum(),
        user_cpu_seconds: windows.iter().map(|w| w.user_cpu_seconds).sum(),
        rss_mean_kib: windows.iter().map(|w| w.rss_mean_kib).sum(),
        rss_max_kib: windows.iter().map(|w| w.rss_max_kib).sum(),
        anon_mean_kib: windows.iter().map(|w| w.anon_mean_kib).sum(),
        threads: windows.iter().map(|w| w.threads).sum(),
        exited: windows.iter().any(|w| w.exited),
    }
}

/// How many descriptors `pid` has open.
pub fn open_files(pid: u32) -> Option<u64> {
    let entries = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(entries.count() as u64)
}

/// Table rows for the nodes, one each.
pub fn rows(nodes: &[NodeReport]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| {
            let held = match (n.connections, n.rss_per_connection) {
                (Some(c), Some(per)) => format!("{c} connections, {:.2} KiB each", per / 1024.0),
                (Some(c), None) => format!("{c} connections"),
                _ => "connections unknown".to_owned(),
            };
            (
                format!("server: node {}", n.pid),
                format!(
                    "RSS {:.1} → {:.1} MiB, {held}, CPU {:.2} s ({:.0}% of a core)",
                    n.rss_before_kib as f64 / 1024.0,
                    n.rss_window_kib as f64 / 1024.0,
                    n.cpu_seconds,
                    n.cpu_percent
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_are_over_every_process() {
        let a = ProcSample {
            rss_kib: 100,
            rss_anon_kib: 60,
            cpu_seconds: 1.5,
            user_cpu_seconds: 1.0,
            threads: 4,
        };
        let b = ProcSample {
            rss_kib: 300,
            rss_anon_kib: 200,
            cpu_seconds: 0.5,
            user_cpu_seconds: 0.25,
            threads: 5,
        };
        let s = sum_samples(&[a, b]);
        assert_eq!((s.rss_kib, s.rss_anon_kib, s.threads), (400, 260, 9));
        assert!((s.cpu_seconds - 2.0).abs() < 1e-9);
        assert!((s.user_cpu_seconds - 1.25).abs() < 1e-9);
    }

    #[test]
    fn one_process_has_no_node_rows_several_have_one_each() {
        let me = std::process::id();
        let one = NodesSampler::start(Before::read(&[me]).unwrap()).unwrap();
        let m = one.finish(1.0);
        assert!(m.nodes.is_empty());
        assert!(m.window.rss_mean_kib > 0);

        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        // Until its loader and locale set-up are done the child opens and closes files; wait
        // until it sleeps with the same files open twice in a row.
        let settled = || {
            let state = std::fs::read_to_string(format!("/proc/{}/stat", child.id()));
            let asleep = state.is_ok_and(|s| s.rsplit(')').next().unwrap().trim().starts_with('S'));
            let files = open_files(child.id());
            std::thread::sleep(std::time::Duration::from_millis(20));
            asleep && files.is_some() && files == open_files(child.id())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !settled() && std::time::Instant::now() < deadline {}
        let pids = [me, child.id()];
        let before = Before::read(&pids).unwrap();
        let mut two = NodesSampler::start(before).unwrap();
        two.tick();
        let m = two.finish(1.0);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(m.nodes.len(), 2);
        assert_eq!(m.nodes[0].pid, me);
        assert!(m.nodes[0].connections.is_some(), "{:?}", m.nodes);
        // The child opened nothing in the window.
        assert_eq!(m.nodes[1].connections, Some(0), "{:?}", m.nodes);
        assert_eq!(
            m.window.rss_mean_kib,
            m.nodes[0].rss_window_kib + m.nodes[1].rss_window_kib
        );
        assert_eq!(rows(&m.nodes).len(), 2);
        assert!(Before::read(&[]).is_none());
    }
}
