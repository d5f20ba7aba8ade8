//! Reading `/proc`: a process's memory and CPU, the system's load and TCP counters, and the
//! open-file limit.
//!
//! The figures a push server is judged by (bytes per connection, CPU per heartbeat) are
//! measured from outside the server, from what the kernel accounts to its process, so the
//! bench needs no cooperation from the server and works the same against any implementation.
//! CPU times in `/proc/PID/stat` are in clock ticks of `USER_HZ`, which Linux fixes at 100
//! on every architecture it exposes to user space.

use std::collections::BTreeMap;
use std::fs;
use std::io;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`).
const USER_HZ: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcSample {
    /// Resident set size, KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Anonymous resident memory, KiB (`RssAnon`): heap and stacks, without the mapped binary.
    pub rss_anon_kib: u64,
    /// User plus system CPU time consumed so far, seconds.
    pub cpu_seconds: f64,
    /// User-space CPU time consumed so far, seconds (`utime`; the rest is `stime`).
    pub user_cpu_seconds: f64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/PID/stat` and `/proc/PID/status`; `None` for `pid` means this process.
pub fn sample(pid: Option<u32>) -> io::Result<ProcSample> {
    let dir = match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    };
    let stat = fs::read_to_string(format!("{dir}/stat"))?;
    let status = fs::read_to_string(format!("{dir}/status"))?;
    let cpu = parse_stat(&stat)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
    let status = parse_status(&status);
    Ok(ProcSample {
        rss_kib: status.get("VmRSS").copied().unwrap_or(0),
        rss_anon_kib: status.get("RssAnon").copied().unwrap_or(0),
        cpu_seconds: cpu.user + cpu.system,
        user_cpu_seconds: cpu.user,
        threads: cpu.threads,
    })
}

/// What `/proc/PID/stat` says about CPU and threads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StatCpu {
    /// User-space CPU seconds (`utime`).
    pub user: f64,
    /// Kernel CPU seconds (`stime`).
    pub system: f64,
    /// Threads.
    pub threads: u64,
}

/// CPU seconds (utime, stime) and thread count from the text of `/proc/PID/stat`.
pub fn parse_stat(text: &str) -> Option<StatCpu> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let after = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `fields[0]` is field 3 (state); utime is field 14, stime 15, num_threads 20.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let threads: u64 = fields.get(17)?.parse().ok()?;
    Some(StatCpu {
        user: utime as f64 / USER_HZ,
        system: stime as f64 / USER_HZ,
        threads,
    })
}

/// The `kB` values of `/proc/PID/status`, by key.
pub fn parse_status(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, rest) = line.split_once(':')?;
            let value = rest.trim().strip_suffix("kB")?.trim().parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// The 1, 5 and 15 minute load averages.
pub fn loadavg() -> Option<[f64; 3]> {
    let text = fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// The listen-queue counters of `TcpExt` in `/proc/net/netstat` (what
/// `nstat -az TcpExtListenOverflows` shows), for the bench's network namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ListenCounters {
    /// SYNs or completed connections dropped because an accept queue was full.
    pub overflows: u64,
    /// All connection requests dropped at a listener (includes overflows).
    pub drops: u64,
}

impl ListenCounters {
    /// Reads the counters now.
    pub fn read() -> Option<ListenCounters> {
        parse_netstat(&fs::read_to_string("/proc/net/netstat").ok()?)
    }

    /// Counts since `earlier`.
    pub fn since(self, earlier: ListenCounters) -> ListenCounters {
        ListenCounters {
            overflows: self.overflows.saturating_sub(earlier.overflows),
            drops: self.drops.saturating_sub(earlier.drops),
        }
    }
}

/// Parses the `TcpExt:` header and value lines of `/proc/net/netstat`.
pub fn parse_netstat(text: &str) -> Option<ListenCounters> {
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?.split_whitespace().skip(1);
    let values = lines.next()?.split_whitespace().skip(1);
    let mut counters = ListenCounters::default();
    for (name, value) in names.zip(values) {
        match name {
            "ListenOverflows" => counters.overflows = value.parse().ok()?,
            "ListenDrops" => counters.drops = value.parse().ok()?,
            _ => {}
        }
    }
    Some(counters)
}

/// The soft limit on open files of `pid` (this process for `None`), from `/proc/PID/limits`.
pub fn open_file_limit(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/limits"),
        None => "/proc/self/limits".to_owned(),
    };
    parse_open_file_limit(&fs::read_to_string(path).ok()?)
}

/// The soft "Max open files" value from the text of `/proc/PID/limits`.
pub fn parse_open_file_limit(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// Samples a process repeatedly during a window: the largest and the last RSS, and the CPU
/// used between [`Sampler::start`] and [`Sampler::finish`].
#[derive(Debug, Clone)]
pub struct Sampler {
    pid: u32,
    start: ProcSample,
    last: ProcSample,
    samples: u32,
    rss_max_kib: u64,
    rss_sum_kib: u64,
    anon_sum_kib: u64,
}

/// What a [`Sampler`] saw.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// CPU seconds used in the window.
    pub cpu_seconds: f64,
    /// User-space CPU seconds used in the window.
    pub user_cpu_seconds: f64,
    /// Mean RSS over the samples, KiB.
    pub rss_mean_kib: u64,
    /// Largest RSS seen, KiB.
    pub rss_max_kib: u64,
    /// Mean anonymous RSS, KiB.
    pub anon_mean_kib: u64,
    /// Threads at the end.
    pub threads: u64,
    /// The process could not be read at the end (it exited during the window); the figures
    /// stop at the last successful reading.
    pub exited: bool,
}

impl Sampler {
    /// Takes the first reading.
    pub fn start(pid: u32) -> io::Result<Sampler> {
        let start = sample(Some(pid))?;
        Ok(Sampler {
            pid,
            start,
            last: start,
            samples: 1,
            rss_max_kib: start.rss_kib,
            rss_sum_kib: start.rss_kib,
            anon_sum_kib: start.rss_anon_kib,
        })
    }

    /// Takes one more reading (errors are ignored: the process may just have exited).
    pub fn tick(&mut self) {
        if let Ok(s) = sample(Some(self.pid)) {
            self.add(s);
        }
    }

    fn add(&mut self, s: ProcSample) {
        self.last = s;
        self.samples += 1;
        self.rss_max_kib = self.rss_max_kib.max(s.rss_kib);
        self.rss_sum_kib += s.rss_kib;
        self.anon_sum_kib += s.rss_anon_kib;
    }

    /// Takes the last reading and summarises the window. A process that has exited is
    /// summarised up to its last reading, with `exited` set.
    pub fn finish(mut self) -> Window {
        let exited = match sample(Some(self.pid)) {
            Ok(end) => {
                self.add(end);
                false
            }
            Err(_) => true,
        };
        let n = u64::from(self.samples);
        Window {
            cpu_seconds: (self.last.cpu_seconds - self.start.cpu_seconds).max(0.0),
            user_cpu_seconds: (self.last.user_cpu_seconds - self.start.user_cpu_seconds).max(0.0),
            rss_mean_kib: self.rss_sum_kib / n,
            rss_max_kib: self.rss_max_kib,
            anon_mean_kib: self.anon_sum_kib / n,
            threads: self.last.threads,
            exited,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_spaces_in_the_name() {
        let text = "4242 (my (odd) server) S 1 4242 4242 0 -1 4194560 900 0 0 0 \
                    250 130 0 0 20 0 7 0 12345 1000000 500 18446744073709551615";
        let cpu = parse_stat(text).unwrap();
        assert_eq!((cpu.user, cpu.system, cpu.threads), (2.5, 1.3, 7));
    }

    #[test]
    fn status_values_in_kib() {
        let text = "Name:\theartwire\nVmRSS:\t   12345 kB\nRssAnon:\t    9000 kB\nThreads:\t4\n";
        let s = parse_status(text);
        assert_eq!(s.get("VmRSS"), Some(&12345));
        assert_eq!(s.get("RssAnon"), Some(&9000));
        assert_eq!(s.get("Threads"), None);
    }

    #[test]
    fn netstat_listen_counters() {
        let text = "TcpExt: SyncookiesSent ListenOverflows ListenDrops\nTcpExt: 0 17 19\n\
                    IpExt: InNoRoutes\nIpExt: 0\n";
        assert_eq!(
            parse_netstat(text),
            Some(ListenCounters {
                overflows: 17,
                drops: 19
            })
        );
        let a = ListenCounters {
            overflows: 20,
            drops: 25,
        };
        assert_eq!(
            a.since(ListenCounters {
                overflows: 17,
                drops: 19
            }),
            ListenCounters {
                overflows: 3,
                drops: 6
            }
        );
    }

    #[test]
    fn open_file_limit_line() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max open files            20000                20000                files\n";
        assert_eq!(parse_open_file_limit(text), Some(20000));
        assert!(open_file_limit(None).is_some());
    }

    #[test]
    fn samples_this_process() {
        let s = sample(None).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.threads >= 1);
        let mut w = Sampler::start(std::process::id()).unwrap();
        w.tick();
        let w = w.finish();
        assert!(w.rss_max_kib >= w.rss_mean_kib);
        assert!(!w.exited);
        assert!(loadavg().is_some());
    }
}
