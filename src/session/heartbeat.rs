//! The heartbeat state machine, kept apart from the actor so it can be tested with plain
//! `Instant`s.
//!
//! `run_interval` ticks can arrive late and then in a burst after the arbiter stalled, so
//! nothing here counts ticks: liveness is judged from the time of the last received frame.
//! A peer is declared dead at the first tick where its silence exceeds
//! `max_missed × interval`; with ticks `interval` apart that happens after more than
//! `max_missed × interval` and at most `(max_missed + 1) × interval` of silence. A burst of
//! late ticks sends one ping, not several.

use std::time::{Duration, Instant};

/// What a tick asks the session to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Send `ping{seq}`.
    Ping {
        /// Sequence number for the ping.
        seq: u64,
        /// Pings in a row that went unanswered (by any frame) before this one.
        missed: u32,
    },
    /// A tick that came too soon after the previous ping (a burst): do nothing.
    Skip,
    /// The peer has been silent too long: close with `heartbeat_timeout`.
    Dead {
        /// Pings in a row that went unanswered.
        missed: u32,
    },
}

/// Liveness bookkeeping for one connection.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Duration,
    last_rx: Instant,
    last_ping: Option<Instant>,
    next_seq: u64,
    /// `u16` (the configuration caps it at 1000) keeps every session's copy at 64 bytes.
    max_missed: u16,
    missed: u16,
    /// The latest ping has not been answered yet.
    rtt_pending: bool,
}

impl Heartbeat {
    /// Starts the clock at `now` as if a frame had just arrived.
    pub fn new(interval: Duration, max_missed: u32, now: Instant) -> Self {
        Heartbeat {
            interval,
            max_missed: u16::try_from(max_missed).unwrap_or(u16::MAX),
            last_rx: now,
            last_ping: None,
            next_seq: 1,
            missed: 0,
            rtt_pending: false,
        }
    }

    /// Records that a frame arrived: any frame proves the peer alive.
    pub fn received(&mut self, now: Instant) {
        self.last_rx = now;
        self.missed = 0;
    }

    /// Records a `pong{seq}`. The first answer to our latest ping measures the round trip,
    /// which is returned; other pongs (late, repeated, or with a foreign seq) only prove
    /// liveness.
    pub fn pong(&mut self, seq: Option<u64>, now: Instant) -> Option<Duration> {
        self.received(now);
        // `next_seq` starts at 1, so this never underflows; `seq` comes from the network.
        let answers_latest = seq == Some(self.next_seq - 1);
        let sent = self
            .last_ping
            .filter(|_| answers_latest && self.rtt_pending)?;
        self.rtt_pending = false;
        Some(now.saturating_duration_since(sent))
    }

    /// Decides what to do at a timer tick.
    pub fn tick(&mut self, now: Instant) -> Tick {
        let unanswered = self.last_ping.is_some_and(|ping| ping > self.last_rx);
        if now.saturating_duration_since(self.last_rx) > self.interval * self.max_missed.into() {
            return Tick::Dead {
                missed: u32::from(self.missed) + u32::from(unanswered),
            };
        }
        if self
            .last_ping
            .is_some_and(|ping| now.saturating_duration_since(ping) < self.interval / 2)
        {
            return Tick::Skip;
        }
        if unanswered {
            self.missed = self.missed.saturating_add(1);
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.last_ping = Some(now);
        self.rtt_pending = true;
        Tick::Ping {
            seq,
            missed: self.missed.into(),
        }
    }

    /// Pings in a row that went unanswered.
    #[cfg(test)]
    pub fn missed(&self) -> u32 {
        self.missed.into()
    }

    /// The instant by which the peer will be declared dead if it stays silent.
    pub fn dead_by(&self) -> Instant {
        self.last_rx + self.interval * (u32::from(self.max_missed) + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(100);

    #[test]
    fn silent_peer_dies_inside_the_bound() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, 2, t0);
        assert_eq!(hb.tick(t0 + I), Tick::Ping { seq: 1, missed: 0 });
        assert_eq!(hb.tick(t0 + I * 2), Tick::Ping { seq: 2, missed: 1 });
        // silence of exactly 2 intervals is not yet more than max_missed × interval; a hair more is
        assert_eq!(
            hb.tick(t0 + I * 2 + Duration::from_millis(1)),
            Tick::Dead { missed: 2 }
        );
    }

    #[test]
    fn any_frame_resets_misses() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, 2, t0);
        hb.tick(t0 + I);
        hb.tick(t0 + I * 2);
        assert_eq!(hb.missed(), 1);
        hb.received(t0 + I * 2 + Duration::from_millis(10));
        assert_eq!(hb.missed(), 0);
        assert!(matches!(hb.tick(t0 + I * 3), Tick::Ping { missed: 0, .. }));
        assert!(matches!(hb.tick(t0 + I * 4), Tick::Ping { missed: 1, .. }));
        assert!(matches!(hb.tick(t0 + I * 5), Tick::Dead { .. }));
    }

    #[test]
    fn burst_of_late_ticks_sends_one_ping_and_kills_nobody_alive() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, 2, t0);
        hb.tick(t0 + I);
        hb.pong(Some(1), t0 + I + Duration::from_millis(5));
        // the arbiter stalls for 1.5 intervals; three ticks then arrive together
        let late = t0 + I * 2 + I / 2;
        assert!(matches!(hb.tick(late), Tick::Ping { seq: 2, .. }));
        assert_eq!(hb.tick(late), Tick::Skip);
        assert_eq!(hb.tick(late + Duration::from_millis(1)), Tick::Skip);
    }

    #[test]
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn stays_small() {
        // Every session carries one (BENCHMARKS.md, per-connection cost).
        assert_eq!(std::mem::size_of::<Heartbeat>(), 64);
    }

    #[test]
    fn rtt_is_measured_from_the_latest_ping() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(I, 2, t0);
        hb.tick(t0 + I);
        assert_eq!(
            hb.pong(Some(1), t0 + I + Duration::from_millis(7)),
            Some(Duration::from_millis(7))
        );
        assert_eq!(hb.pong(Some(0), t0 + I + Duration::from_millis(50)), None);
        // a repeated answer proves liveness but measures nothing; a huge seq is no panic
        assert_eq!(hb.pong(Some(1), t0 + I + Duration::from_millis(50)), None);
        assert_eq!(
            hb.pong(Some(u64::MAX), t0 + I + Duration::from_millis(50)),
            None
        );
        assert_eq!(hb.dead_by(), t0 + I + Duration::from_millis(50) + I * 3);
    }
}
