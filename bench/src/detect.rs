//! `detect` mode: N clients fall silent at one moment; how long until the server closes each?
//!
//! The protocol promises that a silent client is closed after more than
//! `max_missed × interval` and at most `(max_missed + 1) × interval` since its last frame,
//! with both numbers announced in `welcome`. Each connection here answers pings until the
//! window starts, then sends nothing more and keeps reading; the delay from its last frame
//! sent to the first sign of the close (`bye`, or end of stream without one) is checked
//! against that bound. A client closed before it fell silent is a false positive.
//!
//! The delay is measured at the client, so it includes the loopback trip of the `bye` and
//! the bench's own scheduling; the lower bound is still exact (the server cannot have heard
//! the last frame before it was sent), and the upper bound gets a tolerance (`--tolerance`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::client::{self, Frame, HeartbeatInfo};
use super::shard::{lock, Phase, ShardCtx, Slot};

/// The window a silent client must be closed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    /// Exclusive lower end: `max_missed × interval`.
    pub low: Duration,
    /// Inclusive upper end: `(max_missed + 1) × interval`.
    pub high: Duration,
}

impl Bound {
    /// The bound announced by `welcome.heartbeat`.
    pub fn from_welcome(hb: HeartbeatInfo) -> Bound {
        let interval = Duration::from_millis(hb.interval_ms);
        Bound {
            low: interval * hb.max_missed,
            high: interval * (hb.max_missed + 1),
        }
    }

    /// Where a close `delay` after the last frame falls, allowing `tolerance` past the top.
    pub fn classify(&self, delay: Duration, tolerance: Duration) -> Verdict {
        if delay <= self.low {
            Verdict::Early
        } else if delay <= self.high + tolerance {
            Verdict::Inside
        } else {
            Verdict::Late
        }
    }
}

/// How a close compares with the bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// At or before the lower end: the server gave up too soon.
    Early,
    /// Within the bound (plus tolerance).
    Inside,
    /// After the upper end plus tolerance.
    Late,
}

/// One client that answers pings until the window, then falls silent and times the close.
pub(crate) async fn silent_client(ctx: Arc<ShardCtx>, index: usize, slot: Slot) {
    let since = Instant::now();
    let Some((mut conn, welcome)) = ctx.open(index).await else {
        return drop(slot);
    };
    let bound = welcome.heartbeat.map(Bound::from_welcome);
    ctx.established(welcome, since, false);
    drop(slot);

    let mut last_sent = Instant::now();
    let mut silent = false;
    let mut bye: Option<(Instant, String)> = None;
    let mut phase = ctx.phase.clone();
    loop {
        tokio::select! {
            line = conn.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    Err(_) => break,
                };
                let Some(frame) = Frame::parse(&line) else { continue };
                match &*frame.kind {
                    "ping" => {
                        ctx.add(|c| &c.pings);
                        if !silent {
                            // Stamped before the write: the server cannot have read the pong
                            // before this instant, so a measured delay never undercounts.
                            last_sent = Instant::now();
                            if conn.send(&client::pong_line(frame.seq)).await.is_err() {
                                break;
                            }
                        }
                    }
                    "bye" if bye.is_none() => {
                        let reason = frame.reason.as_deref().unwrap_or("none").to_owned();
                        bye = Some((Instant::now(), reason));
                    }
                    _ => {}
                }
            }
            changed = phase.changed() => {
                let now = *phase.borrow();
                if changed.is_err() || now == Phase::Stop {
                    if silent {
                        ctx.add(|c| &c.never);
                    }
                    return ctx.gone();
                }
                if now == Phase::Window && !silent {
                    silent = true;
                    ctx.add(|c| &c.silent);
                }
            }
        }
    }
    // The server closed the connection.
    let closed_at = bye.as_ref().map_or_else(Instant::now, |(at, _)| *at);
    let reason = bye.map_or_else(
        || "closed without bye".to_owned(),
        |(_, r)| format!("bye {r}"),
    );
    ctx.gone();
    if !silent {
        return ctx.closed_unexpectedly(ctx.phase(), &reason);
    }
    let delay = closed_at.saturating_duration_since(last_sent);
    lock(&ctx.delays).record(delay.as_micros() as u64);
    ctx.close_seen(format!("silent: {reason}"));
    let tolerance = Duration::from_millis(ctx.plan.tolerance_ms);
    match bound.map(|b| b.classify(delay, tolerance)) {
        Some(Verdict::Inside) => ctx.add(|c| &c.inside),
        Some(Verdict::Early) => ctx.add(|c| &c.early),
        Some(Verdict::Late) | None => ctx.add(|c| &c.late),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound() -> Bound {
        Bound::from_welcome(HeartbeatInfo {
            interval_ms: 1000,
            max_missed: 2,
        })
    }

    #[test]
    fn bound_from_welcome() {
        assert_eq!(
            bound(),
            Bound {
                low: Duration::from_secs(2),
                high: Duration::from_secs(3)
            }
        );
    }

    #[test]
    fn lower_end_is_exclusive_upper_end_inclusive_plus_tolerance() {
        let b = bound();
        let tol = Duration::from_millis(50);
        let ms = Duration::from_millis;
        assert_eq!(b.classify(ms(1500), tol), Verdict::Early);
        assert_eq!(b.classify(ms(2000), tol), Verdict::Early);
        assert_eq!(b.classify(ms(2001), tol), Verdict::Inside);
        assert_eq!(b.classify(ms(3000), tol), Verdict::Inside);
        assert_eq!(b.classify(ms(3050), tol), Verdict::Inside);
        assert_eq!(b.classify(ms(3051), tol), Verdict::Late);
        assert_eq!(b.classify(ms(3001), Duration::ZERO), Verdict::Late);
    }
}
