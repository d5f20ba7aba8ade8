//! Limits that keep one client, one address or one user from taking the server down.
//!
//! Global caps are on by default and generous; per-IP and per-session rate limits are off by
//! default, because many clients share NAT addresses (NATS and Centrifugo ship them off too);
//! `SECURITY.md` recommends values. Each limit logs when it triggers.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;

use crate::config::ConfigError;
use crate::names::{NameLimits, MAX_ID_LEN, MAX_ROOM_LEN};

/// `[limits]` settings. A value of 0 turns a limit off where the text says so.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Connections open at once; more are refused with `bye{reason:"server_full"}`.
    pub max_connections: usize,
    /// Connections open at once from one IP address; 0 = off.
    pub max_connections_per_ip: usize,
    /// Connections accepted per second; past it the server waits before accepting more
    /// (the backlog holds them); 0 = off.
    pub accept_rate: u32,
    /// Sessions one user may have at once; 0 = off.
    pub max_sessions_per_user: usize,
    /// Rooms one session may be subscribed to.
    pub max_rooms_per_session: usize,
    /// Longest room name in bytes (at most the protocol's 256).
    pub max_room_len: usize,
    /// Longest publish/send `id` in bytes (at most the protocol's 128).
    pub max_id_len: usize,
    /// Frames per second one session may send (token bucket); 0 = off.
    pub message_rate: u32,
    /// Burst allowed above `message_rate`; 0 = one second's worth.
    pub message_burst: u32,
    /// Rate-limited frames in a row after which the session is closed.
    pub max_rate_violations: u32,
    /// Age after which the server ends a connection with `bye{reason:"max_age"}` (±10%
    /// jitter), so load rebalances; unset = never.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Option<Duration>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 100_000,
            max_connections_per_ip: 0,
            accept_rate: 0,
            max_sessions_per_user: 256,
            max_rooms_per_session: 1024,
            max_room_len: MAX_ROOM_LEN,
            max_id_len: MAX_ID_LEN,
            message_rate: 0,
            message_burst: 0,
            max_rate_violations: 50,
            max_connection_age: None,
        }
    }
}

impl LimitsConfig {
    /// Checks the values; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| {
            Err(ConfigError::Invalid {
                key,
                reason: reason.to_owned(),
            })
        };
        if self.max_connections == 0 {
            return invalid("limits.max_connections", "must be at least 1");
        }
        if self.max_rooms_per_session == 0 {
            return invalid("limits.max_rooms_per_session", "must be at least 1");
        }
        if !(1..=MAX_ROOM_LEN).contains(&self.max_room_len) {
            return invalid("limits.max_room_len", "must be between 1 and 256");
        }
        if !(1..=MAX_ID_LEN).contains(&self.max_id_len) {
            return invalid("limits.max_id_len", "must be between 1 and 128");
        }
        if self.max_rate_violations == 0 {
            return invalid("limits.max_rate_violations", "must be at least 1");
        }
        if self
            .max_connection_age
            .is_some_and(|d| d < Duration::from_millis(10))
        {
            return invalid("limits.max_connection_age", "must be at least 10ms");
        }
        Ok(())
    }

    /// The name rules these limits set.
    pub(crate) fn names(&self) -> NameLimits {
        NameLimits::new(self.max_room_len, self.max_id_len)
    }

    /// A per-session frame rate limiter, when `message_rate` is set.
    pub(crate) fn session_rate_limiter(&self) -> Option<DefaultDirectRateLimiter> {
        let rate = NonZeroU32::new(self.message_rate)?;
        let burst = NonZeroU32::new(self.message_burst).unwrap_or(rate);
        Some(RateLimiter::direct(
            Quota::per_second(rate).allow_burst(burst),
        ))
    }

    /// A limiter for the accept loop, when `accept_rate` is set.
    pub(crate) fn accept_rate_limiter(&self) -> Option<DefaultDirectRateLimiter> {
        let rate = NonZeroU32::new(self.accept_rate)?;
        Some(RateLimiter::direct(Quota::per_second(rate)))
    }

    /// This connection's age limit with ±10% jitter, so connections accepted together do not
    /// all end together.
    pub(crate) fn jittered_max_age(&self) -> Option<Duration> {
        self.max_connection_age
            .map(|age| age.mul_f64(0.9 + 0.2 * fastrand::f64()))
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` reached.
    ServerFull,
    /// `max_connections_per_ip` reached for this address.
    IpLimit,
}

/// Counts open connections, in total and per IP, and hands out permits.
#[derive(Debug)]
pub(crate) struct ConnectionTracker {
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_total: usize,
    max_per_ip: usize,
}

/// One admitted connection; dropping it (also when a session dies by a panic) frees its slot.
#[derive(Debug)]
pub(crate) struct ConnectionPermit {
    tracker: Arc<ConnectionTracker>,
    ip: Option<IpAddr>,
}

impl ConnectionTracker {
    /// A tracker enforcing `limits`.
    pub(crate) fn new(limits: &LimitsConfig) -> Arc<Self> {
        Arc::new(ConnectionTracker {
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            max_total: limits.max_connections,
            max_per_ip: limits.max_connections_per_ip,
        })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Admits a connection from `ip`, or says why not.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_total).then_some(n + 1)
            });
        if admitted.is_err() {
            return Err(Refusal::ServerFull);
        }
        let mut permit = ConnectionPermit {
            tracker: self.clone(),
            ip: None,
        };
        if self.max_per_ip > 0 {
            let mut per_ip = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_ip.entry(ip).or_insert(0);
            if *count >= self.max_per_ip {
                return Err(Refusal::IpLimit);
            }
            *count += 1;
            permit.ip = Some(ip);
        }
        Ok(permit)
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.tracker.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut per_ip = self
                .tracker
                .per_ip
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_count_and_free_their_slots() {
        let limits = LimitsConfig {
            max_connections: 3,
            max_connections_per_ip: 2,
            ..LimitsConfig::default()
        };
        let t = ConnectionTracker::new(&limits);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let p1 = t.admit(a).unwrap();
        let _p2 = t.admit(a).unwrap();
        assert_eq!(t.admit(a).unwrap_err(), Refusal::IpLimit);
        let _p3 = t.admit(b).unwrap();
        assert_eq!(t.admit(b).unwrap_err(), Refusal::ServerFull);
        drop(p1);
        assert_eq!(t.open(), 2);
        let _p4 = t.admit(a).unwrap();
        assert_eq!(t.open(), 3);
    }

    #[test]
    fn rate_limiter_allows_a_burst_then_refuses() {
        let limits = LimitsConfig {
            message_rate: 5,
            message_burst: 10,
            ..LimitsConfig::default()
        };
        let limiter = limits.session_rate_limiter().unwrap();
        let allowed = (0..20).filter(|_| limiter.check().is_ok()).count();
        assert_eq!(allowed, 10);
        assert!(LimitsConfig::default().session_rate_limiter().is_none());
    }

    #[test]
    fn max_age_jitter_stays_within_ten_percent() {
        let limits = LimitsConfig {
            max_connection_age: Some(Duration::from_secs(100)),
            ..LimitsConfig::default()
        };
        for _ in 0..100 {
            let age = limits.jittered_max_age().unwrap();
            assert!(age >= Duration::from_secs(90) && age <= Duration::from_secs(110));
        }
    }
}
