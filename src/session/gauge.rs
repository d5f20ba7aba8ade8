//! Live numbers of one connection that the registry reads when the application lists
//! connections: last heartbeat round trip, consecutive misses, and the instant by which the
//! connection will be declared dead if it stays silent.
//!
//! The session owns the real state (its [`Heartbeat`](crate::session::heartbeat::Heartbeat)); asking
//! every session actor for it would cost one message per connection per listing. Instead each
//! session publishes those few numbers into a [`SessionGauge`] it shares (`Arc`) with the
//! registry. Writes are single relaxed atomic stores on the session's own thread (one per
//! received frame at most), reads happen only when someone lists connections; the numbers of
//! one connection may be a frame apart from each other, which a monitoring view tolerates.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Marks an unset value in the `u64` slots.
const UNSET: u64 = u64::MAX;

/// A connection's live numbers, written by its session, read by the registry.
#[derive(Debug)]
pub struct SessionGauge {
    wire_id: Arc<str>,
    /// Kept here once for both the session and the registry.
    peer: SocketAddr,
    connected_at: SystemTime,
    /// The base of the stored offsets.
    started: Instant,
    rtt_us: AtomicU64,
    missed: AtomicU32,
    /// Milliseconds after `started`.
    dead_by_ms: AtomicU64,
}

impl SessionGauge {
    /// A gauge for a connection that starts now.
    pub fn new(wire_id: Arc<str>, peer: SocketAddr) -> Arc<SessionGauge> {
        Arc::new(SessionGauge {
            wire_id,
            peer,
            connected_at: SystemTime::now(),
            started: Instant::now(),
            rtt_us: AtomicU64::new(UNSET),
            missed: AtomicU32::new(0),
            dead_by_ms: AtomicU64::new(UNSET),
        })
    }

    /// The session id as sent in `welcome.session`.
    pub fn wire_id(&self) -> &Arc<str> {
        &self.wire_id
    }

    /// The remote address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Wall-clock time of the accept.
    pub fn connected_at(&self) -> SystemTime {
        self.connected_at
    }

    /// Records the instant by which the connection is closed if nothing more arrives.
    pub fn set_dead_by(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.started).as_millis();
        self.dead_by_ms
            .store(u64::try_from(ms).unwrap_or(UNSET - 1), Relaxed);
    }

    /// Records a frame's arrival: misses are over, and the deadline moved to `dead_by`.
    pub fn alive(&self, dead_by: Instant) {
        self.set_dead_by(dead_by);
        if self.missed.load(Relaxed) != 0 {
            self.missed.store(0, Relaxed);
        }
    }

    /// Records the round trip of the latest answered ping.
    pub fn set_rtt(&self, rtt: Duration) {
        let us = u64::try_from(rtt.as_micros()).unwrap_or(UNSET - 1);
        self.rtt_us.store(us, Relaxed);
    }

    /// Records the consecutive unanswered pings.
    pub fn set_missed(&self, missed: u32) {
        self.missed.store(missed, Relaxed);
    }

    /// Round trip of the latest answered ping.
    pub fn rtt(&self) -> Option<Duration> {
        match self.rtt_us.load(Relaxed) {
            UNSET => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Consecutive unanswered pings.
    pub fn missed(&self) -> u32 {
        self.missed.load(Relaxed)
    }

    /// The instant by which the connection is declared dead if it stays silent (before the
    /// handshake: its handshake deadline).
    pub fn dead_by(&self) -> Option<Instant> {
        match self.dead_by_ms.load(Relaxed) {
            UNSET => None,
            ms => Some(self.started + Duration::from_millis(ms)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_and_reads_back() {
        let g = SessionGauge::new("n-1".into(), ([127, 0, 0, 1], 9).into());
        assert_eq!((g.rtt(), g.missed(), g.dead_by()), (None, 0, None));
        g.set_rtt(Duration::from_micros(1500));
        g.set_missed(2);
        let at = Instant::now() + Duration::from_secs(3);
        g.alive(at);
        assert_eq!(g.rtt(), Some(Duration::from_micros(1500)));
        assert_eq!(g.missed(), 0);
        let back = g.dead_by().unwrap();
        assert!(back <= at && at - back < Duration::from_millis(2));
    }
}
