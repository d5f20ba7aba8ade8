//! The progress bar shown on standard error while the bench ramps and holds.
//!
//! A bench of tens of thousands of connections takes seconds to ramp and minutes to soak;
//! without a live view a stuck ramp looks the same as a slow one. The bar is drawn only on a
//! terminal (indicatif hides itself otherwise) and never on standard output, which `--json`
//! keeps for the report.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::shard::Tally;
use super::Mode;

/// The live view of a bench run; a no-op when disabled.
pub struct Progress {
    bar: ProgressBar,
    ramp_started: std::sync::Mutex<Instant>,
}

impl Progress {
    /// A bar on standard error, or a hidden one.
    pub fn new(enabled: bool) -> Progress {
        let target = if enabled {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        bar.set_style(
            ProgressStyle::with_template("{msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress {
            bar,
            ramp_started: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Switches to the ramp: `total` connection attempts.
    pub fn ramp(&self, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        self.bar.set_prefix("ramp");
        self.bar.set_message("");
        *self.ramp_started.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
    }

    /// Shows the ramp's counters.
    pub fn ramp_update(&self, t: &Tally) {
        self.bar.set_position(t.resolved());
        let started = *self.ramp_started.lock().unwrap_or_else(|p| p.into_inner());
        let seconds = started.elapsed().as_secs_f64();
        let rate = (t.established + t.publishers) as f64 / seconds.max(1e-3);
        self.bar.set_message(format!(
            "{} failed, {:.1}s, {:.0} conn/s",
            t.failed, seconds, rate
        ));
    }

    /// Switches to a timed phase of `length` called `name`.
    pub fn timed(&self, name: &str, length: Duration) {
        self.bar.reset();
        self.bar.set_length(length.as_millis() as u64);
        self.bar.set_position(0);
        self.bar.set_style(
            ProgressStyle::with_template("{prefix:>6} [{bar:30}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        self.bar.set_prefix(name.to_owned());
        self.bar.set_message("");
    }

    /// Shows the window's counters after `elapsed`.
    pub fn timed_update(&self, mode: Mode, elapsed: Duration, t: &Tally) {
        self.bar.set_position(elapsed.as_millis() as u64);
        let message = match mode {
            Mode::Idle => format!(
                "{:.1}s  open {}  round trips {}  closed by server {}",
                elapsed.as_secs_f64(),
                t.open,
                t.round_trips,
                t.closed_unexpectedly
            ),
            Mode::Fanout => format!(
                "{:.1}s  published {}  delivered {}  closed {}",
                elapsed.as_secs_f64(),
                t.published,
                t.delivered,
                t.closed_unexpectedly
            ),
            Mode::Detect => format!(
                "{:.1}s  silent {}  closed inside {}  early {}  late {}",
                elapsed.as_secs_f64(),
                t.silent,
                t.inside,
                t.early,
                t.late
            ),
            Mode::Chat => format!(
                "{:.1}s  published {}  acked {}  delivered {} of {}  closed {}",
                elapsed.as_secs_f64(),
                t.published,
                t.acked,
                t.delivered,
                t.expected,
                t.closed_unexpectedly
            ),
            Mode::Churn => format!(
                "{:.1}s  cycles {}  failed {}",
                elapsed.as_secs_f64(),
                t.cycles,
                t.cycle_failures
            ),
        };
        self.bar.set_message(message);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
