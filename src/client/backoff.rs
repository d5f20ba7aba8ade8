//! Reconnect delays: capped exponential growth with full jitter.
//!
//! Many clients lose their connection at the same moment (a server restart, a network blip),
//! and if they all retry on the same schedule they arrive together, overload the server and
//! fail together again. Full jitter (AWS's name for it) draws each delay uniformly from
//! `[0, ceiling]`, where the ceiling grows `initial × factor^attempt` up to `cap`. Because the
//! randomness is applied *after* the cap, clients that have been failing for a long time stay
//! spread over `[0, cap]` instead of converging on `cap` in lockstep (socket.io's delays all
//! become equal once they reach their maximum).
//!
//! The ceiling sequence comes from `backon`'s [`ExponentialBuilder`] without its own jitter:
//! backon's jitter *adds* up to 100 % to the capped delay (`[d, 2d)`), which is not full
//! jitter (a herd at attempt one still waits at least `initial`) and overshoots the cap by up
//! to twice. So backon provides the capped exponential, and this module draws the full
//! jitter on top of it.
//!
//! Two more rules: a connection that stayed up for [`BackoffConfig::reset_after`] resets the
//! sequence (a single blip after hours of uptime retries quickly), and a server's
//! `bye.reconnect_ms` hint is a lower bound on the next delay.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Settings of the reconnect backoff.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay: the first retry waits a random time in `[0, initial]`.
    pub initial: Duration,
    /// Growth of the ceiling per failed attempt.
    pub factor: f32,
    /// Largest ceiling; delays stay random in `[0, cap]` once it is reached.
    pub cap: Duration,
    /// A connection that stayed up at least this long resets the sequence to `initial`.
    pub reset_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(250),
            factor: 2.0,
            cap: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// The state of the reconnect schedule; lives in the client actor and survives restarts.
#[derive(Debug)]
pub struct Backoff {
    config: BackoffConfig,
    ceilings: <ExponentialBuilder as BackoffBuilder>::Backoff,
    rng: fastrand::Rng,
    attempt: u32,
}

impl Backoff {
    /// A fresh schedule.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_rng(config, fastrand::Rng::new())
    }

    /// A schedule with a seeded random source, for reproducible tests.
    pub fn with_seed(config: BackoffConfig, seed: u64) -> Self {
        Self::with_rng(config, fastrand::Rng::with_seed(seed))
    }

    fn with_rng(config: BackoffConfig, rng: fastrand::Rng) -> Self {
        Backoff {
            ceilings: Self::ceilings(&config),
            config,
            rng,
            attempt: 0,
        }
    }

    fn ceilings(config: &BackoffConfig) -> <ExponentialBuilder as BackoffBuilder>::Backoff {
        // Guard against nonsense that would make backon's arithmetic misbehave: a factor below
        // one would shrink the ceiling, a cap below `initial` would be ignored by it.
        let factor = if config.factor.is_finite() && config.factor >= 1.0 {
            config.factor
        } else {
            1.0
        };
        ExponentialBuilder::new()
            .with_min_delay(config.initial)
            .with_max_delay(config.cap.max(config.initial))
            .with_factor(factor)
            .without_max_times()
            .build()
    }

    /// The settings.
    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Attempts made since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts over from `initial`.
    pub fn reset(&mut self) {
        self.ceilings = Self::ceilings(&self.config);
        self.attempt = 0;
    }

    /// Resets when a connection that has just ended stayed up long enough.
    pub fn connection_ended(&mut self, uptime: Duration) {
        if uptime >= self.config.reset_after {
            self.reset();
        }
    }

    /// The ceiling of attempt number `attempt` (0-based): `min(cap, initial × factor^attempt)`.
    /// Computed from the settings (backon's iterator cannot be peeked); for tests and for
    /// applications that want to show the schedule.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let cap = self.config.cap.max(self.config.initial);
        let grown = self.config.initial.as_secs_f64()
            * f64::from(self.config.factor.max(1.0)).powi(attempt.min(1024) as i32);
        if !grown.is_finite() || grown >= cap.as_secs_f64() {
            cap
        } else {
            Duration::from_secs_f64(grown)
        }
    }

    /// The next delay: uniform in `[0, ceiling]`, then raised to `at_least` (a server's
    /// `reconnect_ms` hint) when that is larger.
    pub fn next_delay(&mut self, at_least: Option<Duration>) -> Duration {
        let ceiling = self.ceilings.next().unwrap_or(self.config.cap);
        self.attempt = self.attempt.saturating_add(1);
        let jittered = ceiling.mul_f64(self.rng.f64());
        match at_least {
            Some(floor) if floor > jittered => floor,
            _ => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BackoffConfig {
        BackoffConfig {
            initial: Duration::from_millis(100),
            factor: 2.0,
            cap: Duration::from_millis(1000),
            reset_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn delays_stay_under_a_growing_capped_ceiling() {
        let mut b = Backoff::with_seed(config(), 7);
        for attempt in 0..20 {
            let ceiling = b.ceiling(attempt);
            let d = b.next_delay(None);
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
        }
        assert_eq!(b.attempt(), 20);
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(4), Duration::from_millis(1000));
    }

    #[test]
    fn jitter_survives_the_cap() {
        let mut b = Backoff::with_seed(config(), 1);
        for _ in 0..10 {
            b.next_delay(None);
        }
        // long past the cap: delays must still be spread over [0, cap], not pinned to it
        let delays: Vec<Duration> = (0..200).map(|_| b.next_delay(None)).collect();
        let below_half = delays
            .iter()
            .filter(|d| **d < Duration::from_millis(500))
            .count();
        assert!(
            (60..=140).contains(&below_half),
            "{below_half} of 200 below half the cap"
        );
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(1000)));
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 190);
    }

    #[test]
    fn hint_is_a_lower_bound_and_reset_starts_over() {
        let mut b = Backoff::with_seed(config(), 3);
        let hint = Duration::from_millis(700);
        assert!(b.next_delay(Some(hint)) >= hint);
        for _ in 0..5 {
            b.next_delay(None);
        }
        b.connection_ended(Duration::from_secs(1));
        assert_eq!(b.attempt(), 6, "a short connection does not reset");
        b.connection_ended(Duration::from_secs(5));
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay(None) <= Duration::from_millis(100));
    }

    #[test]
    fn nonsense_settings_do_not_panic() {
        let mut b = Backoff::with_seed(
            BackoffConfig {
                initial: Duration::from_millis(500),
                factor: f32::NAN,
                cap: Duration::ZERO,
                reset_after: Duration::ZERO,
            },
            9,
        );
        for _ in 0..5 {
            assert!(b.next_delay(None) <= Duration::from_millis(500));
        }
    }
}
