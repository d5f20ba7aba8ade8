//! `chat` mode: N clients in rooms of K, every client publishing into its room at R/s.
//!
//! Fan-out measures one room and one publisher; a chat backend is the opposite shape: many
//! small rooms where everyone talks, so the server sequences N × R publishes per second and
//! delivers N × K × R messages. That is where a single sequencing point (one registry actor
//! per node, one Redis) shows, so this mode finds the publish rate a deployment sustains.
//!
//! Client `i` is in room `ROOM-(i / K)` (the last room may be smaller). In the window each
//! client publishes on its own open-loop schedule (started at a fixed offset within the first
//! period, so that N clients do not publish in lockstep), with an `id` (as the client library
//! does, so the server acks each publish and dedupes resends) and its scheduled send time in
//! `data.t`. Every client counts the `message`s of its room (its own included, as the protocol
//! delivers them), their publish → receive latency, holes in the room's `seq`, and the `ack`s
//! and `error`s its publishes get. An acknowledged publish counts the room's size towards the
//! deliveries expected (a refused one, `error{code:"unavailable"}` say, was never sequenced and
//! is counted as refused), so `missing` is exact as long as every client of the room was
//! established (the report warns otherwise).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::time::Instant as TokioInstant;

use super::client::{self, Frame};
use super::fanout::{sleep_until_some, stamp_of};
use super::report::pct;
use super::shard::{lock, Phase, ShardCtx, Slot, Tally};
use super::stats::Percentiles;
use super::BenchArgs;

/// The room number of client `index` in rooms of `room_size`.
pub fn room_of(index: usize, room_size: usize) -> usize {
    index / room_size.max(1)
}

/// How many of `clients` clients are in room `room` (every room is full but the last).
pub fn members_of(room: usize, room_size: usize, clients: usize) -> usize {
    let room_size = room_size.max(1);
    clients.saturating_sub(room * room_size).min(room_size)
}

/// The name of room `room`: `PREFIX-room`.
pub fn room_name(prefix: &str, room: usize) -> String {
    format!("{prefix}-{room}")
}

/// Where in its first period client `index` publishes first, as a fraction of the period:
/// the golden-ratio sequence spreads any number of clients evenly without knowing how many.
pub fn phase_of(index: usize) -> f64 {
    const GOLDEN: f64 = 0.618_033_988_749_894_8;
    (index as f64 * GOLDEN).fract()
}

/// What a client saw of its room's `seq`s: holes (seqs skipped) and seqs that arrived out of
/// order or twice (a skipped seq that comes later counts as both; the protocol promises
/// neither). A subscriber without `since` starts wherever the room is, so the first seq seen
/// sets the start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqTrack {
    last: Option<u64>,
    /// Seqs skipped between two messages that did arrive.
    pub holes: u64,
    /// Messages whose seq was not above the last one seen.
    pub disorder: u64,
}

impl SeqTrack {
    /// Records the seq of one `message`.
    pub fn see(&mut self, seq: u64) {
        match self.last {
            Some(last) if seq <= last => self.disorder += 1,
            Some(last) => {
                self.holes += seq - last - 1;
                self.last = Some(seq);
            }
            None => self.last = Some(seq),
        }
    }
}

/// A `publish` line for `room` with `id`, stamped `t`, padded with `pad` bytes.
pub fn publish_line(room: &str, id: &str, t: u64, pad: &str) -> Vec<u8> {
    let room = serde_json::Value::from(room);
    let id = serde_json::Value::from(id);
    format!(
        "{{\"type\":\"publish\",\"room\":{room},\"id\":{id},\"data\":{{\"t\":{t},\"p\":\"{pad}\"}}}}\n"
    )
    .into_bytes()
}

/// One chat client: handshake, `subscribe` to its room, then publish on schedule in the window
/// while counting what arrives, until `Stop`.
pub(crate) async fn client(ctx: Arc<ShardCtx>, index: usize, slot: Slot) {
    let plan = &ctx.plan;
    let room = room_of(index, plan.room_size);
    let members = members_of(room, plan.room_size, plan.clients) as u64;
    let room = room_name(&plan.room, room);
    let since = Instant::now();
    let Some((mut conn, welcome)) = ctx.open(index).await else {
        return drop(slot);
    };
    let subscribed = async {
        let line = format!(
            "{{\"type\":\"subscribe\",\"room\":{}}}\n",
            serde_json::Value::from(room.as_str())
        );
        conn.send(line.as_bytes())
            .await
            .map_err(|e| client::Failure::Io(e.to_string()))?;
        client::await_frame(&mut conn, "subscribed").await
    };
    match tokio::time::timeout(plan.connect_timeout(), subscribed).await {
        Ok(Ok(_)) => {}
        Ok(Err(failure)) => {
            ctx.fail(failure.key());
            return drop(slot);
        }
        Err(_) => {
            ctx.fail(client::Failure::Timeout.key());
            return drop(slot);
        }
    }
    ctx.established(welcome, since, false);
    drop(slot);

    let pad = "x".repeat(plan.payload);
    let period = Duration::from_secs_f64(1.0 / plan.publish_rate.max(1e-9));
    let publish_for = Duration::from_millis(plan.publish_ms);
    let mut phase = ctx.phase.clone();
    // (window start, first send, sends so far, id prefix unique to this run: Redis keeps
    // publish ids for dedupe across runs)
    let mut schedule: Option<(TokioInstant, TokioInstant, u64, String)> = None;
    let mut seqs = SeqTrack::default();
    let mut bye = None;
    loop {
        // Publishing ends with the window, so that nothing is sent after the coordinator has
        // seen every expected delivery arrive.
        let next = schedule.as_ref().and_then(|(start, first, k, _)| {
            let at = *first + period.mul_f64(*k as f64);
            (at < *start + publish_for).then_some(at)
        });
        tokio::select! {
            () = sleep_until_some(next) => {
                let (Some(at), Some((_, _, k, run))) = (next, schedule.as_mut()) else { continue };
                let late = TokioInstant::now().saturating_duration_since(at);
                let t = client::unix_micros().saturating_sub(late.as_micros() as u64);
                let line = publish_line(&room, &format!("{run}.{k}"), t, &pad);
                *k += 1;
                if let Err(e) = conn.send(&line).await {
                    ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                    break;
                }
                ctx.add(|c| &c.published);
            }
            line = conn.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        let reason = bye.map_or_else(|| "closed without bye".to_owned(), |r| format!("bye {r}"));
                        ctx.closed_unexpectedly(ctx.phase(), &reason);
                        break;
                    }
                    Err(e) => {
                        ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                        break;
                    }
                };
                let Some(frame) = Frame::parse(&line) else { continue };
                match &*frame.kind {
                    "message" => {
                        ctx.add(|c| &c.delivered);
                        if let Some(seq) = frame.seq {
                            seqs.see(seq);
                        }
                        if let Some(t) = stamp_of(&frame) {
                            lock(&ctx.latency).record(client::unix_micros().saturating_sub(t));
                        }
                    }
                    "ack" => {
                        ctx.add(|c| &c.acked);
                        ctx.counters.expected.fetch_add(members, Ordering::Relaxed);
                    }
                    "error" => {
                        ctx.add(|c| &c.refused);
                        ctx.error_seen(frame.code.as_deref().unwrap_or("none"));
                    }
                    "ping" => {
                        ctx.add(|c| &c.pings);
                        if let Err(e) = conn.send(&client::pong_line(frame.seq)).await {
                            ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                            break;
                        }
                        if ctx.phase() == Phase::Window {
                            ctx.add(|c| &c.round_trips);
                        }
                    }
                    "bye" => bye = Some(frame.reason.as_deref().unwrap_or("none").to_owned()),
                    _ => {}
                }
            }
            changed = phase.changed() => {
                let now = *phase.borrow();
                if changed.is_err() || now == Phase::Stop {
                    break;
                }
                if now == Phase::Window && schedule.is_none() {
                    let start = TokioInstant::now();
                    let first = start + period.mul_f64(phase_of(index));
                    let run = format!("{:x}", client::unix_micros());
                    schedule = Some((start, first, 0, run));
                }
            }
        }
    }
    let add = |counter: &AtomicU64, n| counter.fetch_add(n, Ordering::Relaxed);
    add(&ctx.counters.seq_holes, seqs.holes);
    add(&ctx.counters.seq_disorder, seqs.disorder);
    ctx.gone();
}

/// Chat results.
#[derive(Debug, Clone, Serialize)]
pub struct ChatReport {
    /// Clients established (each subscribed to its room).
    pub clients: u64,
    /// Clients per room.
    pub room_size: usize,
    /// Rooms.
    pub rooms: usize,
    /// Publishes per second each client was asked for.
    pub rate_per_client: f64,
    /// Publishes per second offered: clients × rate.
    pub offered_per_second: f64,
    /// Publishes sent in the window.
    pub published: u64,
    /// Publishes sent per second of --duration.
    pub publish_rate: f64,
    /// Publishes acknowledged.
    pub acked: u64,
    /// Publishes answered with `error`.
    pub refused: u64,
    /// Publishes neither acknowledged nor refused by the end (their deliveries, if any, count
    /// in `delivered` but not in `expected`).
    pub unanswered: u64,
    /// `error` frames by code.
    pub errors: BTreeMap<String, u64>,
    /// Deliveries the acknowledged publishes should have caused (each × its room's size).
    pub expected: u64,
    /// Messages received.
    pub delivered: u64,
    /// Expected but not received by the end.
    pub missing: u64,
    /// Messages received per second of --duration.
    pub delivered_per_second: f64,
    /// Room seqs clients never received between two they did.
    pub seq_holes: u64,
    /// Messages that arrived out of seq order or twice.
    pub seq_disorder: u64,
    /// Publish → receive latency.
    pub latency_ms: Option<Percentiles>,
    /// Publishes per server CPU-second (with --server-pid; summed over nodes).
    pub publishes_per_cpu_second: Option<f64>,
    /// Deliveries per server CPU-second.
    pub deliveries_per_cpu_second: Option<f64>,
}

impl ChatReport {
    /// Adds up a chat run of `args` from its counters, `error` codes and latencies; the
    /// server used `server_cpu` seconds in the window.
    pub fn new(
        args: &BenchArgs,
        tally: &Tally,
        errors: &BTreeMap<String, u64>,
        latency_ms: Option<Percentiles>,
        server_cpu: Option<f64>,
    ) -> ChatReport {
        let duration = args.duration.as_secs_f64().max(1e-9);
        let per_cpu = |n: u64| server_cpu.filter(|&c| c > 0.0).map(|c| n as f64 / c);
        ChatReport {
            clients: tally.established,
            room_size: args.room_size,
            rooms: args.connections.div_ceil(args.room_size.max(1)),
            rate_per_client: args.rate,
            offered_per_second: args.rate * tally.established as f64,
            published: tally.published,
            publish_rate: tally.published as f64 / duration,
            acked: tally.acked,
            refused: tally.refused,
            unanswered: tally.published.saturating_sub(tally.acked + tally.refused),
            errors: errors.clone(),
            expected: tally.expected,
            delivered: tally.delivered,
            missing: tally.expected.saturating_sub(tally.delivered),
            delivered_per_second: tally.delivered as f64 / duration,
            seq_holes: tally.seq_holes,
            seq_disorder: tally.seq_disorder,
            latency_ms,
            publishes_per_cpu_second: per_cpu(tally.published),
            deliveries_per_cpu_second: per_cpu(tally.delivered),
        }
    }

    /// Table rows.
    pub fn rows(&self) -> Vec<(String, String)> {
        let mut rows = vec![
            (
                "chat: clients".to_owned(),
                format!(
                    "{} in {} rooms of {}, {} publishes/s each",
                    self.clients, self.rooms, self.room_size, self.rate_per_client
                ),
            ),
            (
                "chat: published".to_owned(),
                format!(
                    "{} ({:.0}/s of {:.0}/s offered), acked {}, refused {}, unanswered {}",
                    self.published,
                    self.publish_rate,
                    self.offered_per_second,
                    self.acked,
                    self.refused,
                    self.unanswered
                ),
            ),
            (
                "chat: delivered".to_owned(),
                format!(
                    "{} of {} ({} missing), {:.0}/s",
                    self.delivered, self.expected, self.missing, self.delivered_per_second
                ),
            ),
            (
                "chat: seq".to_owned(),
                format!(
                    "{} holes, {} out of order or twice",
                    self.seq_holes, self.seq_disorder
                ),
            ),
            ("chat: latency".to_owned(), pct(&self.latency_ms)),
        ];
        if let (Some(p), Some(d)) = (
            self.publishes_per_cpu_second,
            self.deliveries_per_cpu_second,
        ) {
            rows.push((
                "chat: per server CPU-s".to_owned(),
                format!("{p:.0} publishes, {d:.0} deliveries"),
            ));
        }
        for (code, n) in &self.errors {
            rows.push(("chat: error".to_owned(), format!("{n} × {code}")));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_full_but_the_last() {
        // 23 clients in rooms of 10: rooms 0 and 1 full, room 2 has 3.
        assert_eq!(room_of(0, 10), 0);
        assert_eq!(room_of(9, 10), 0);
        assert_eq!(room_of(10, 10), 1);
        assert_eq!(room_of(22, 10), 2);
        assert_eq!(members_of(0, 10, 23), 10);
        assert_eq!(members_of(1, 10, 23), 10);
        assert_eq!(members_of(2, 10, 23), 3);
        assert_eq!(members_of(3, 10, 23), 0);
        // Every client is in exactly one room: the sizes add up.
        let total: usize = (0..=room_of(22, 10)).map(|r| members_of(r, 10, 23)).sum();
        assert_eq!(total, 23);
        // A room size of 0 is taken as 1, never a division by zero.
        assert_eq!((room_of(5, 0), members_of(5, 0, 23)), (5, 1));
        assert_eq!(room_name("chat", 7), "chat-7");
    }

    #[test]
    fn first_sends_spread_over_the_period() {
        let mut phases: Vec<f64> = (0..100).map(phase_of).collect();
        assert!(phases.iter().all(|p| (0.0..1.0).contains(p)));
        phases.sort_by(f64::total_cmp);
        // 100 clients leave no gap wider than a few hundredths of the period.
        let widest = phases.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
        assert!(widest < 0.03, "{widest}");
    }

    #[test]
    fn seq_holes_and_disorder_are_counted() {
        let mut s = SeqTrack::default();
        for seq in [41, 42, 43, 45, 44, 45, 49] {
            s.see(seq);
        }
        // 44 was skipped (a hole) and came after 45 (disorder), 45 came twice (disorder),
        // 46..=48 never came.
        assert_eq!(s.holes, 1 + 3);
        assert_eq!(s.disorder, 2);
        let mut fresh = SeqTrack::default();
        fresh.see(1000);
        assert_eq!((fresh.holes, fresh.disorder), (0, 0));
    }

    #[test]
    fn publish_line_carries_id_and_stamp() {
        let line = publish_line("r\"1", "ab.3", 77, "xx");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["type"], "publish");
        assert_eq!(v["room"], "r\"1");
        assert_eq!(v["id"], "ab.3");
        assert_eq!(v["data"]["t"], 77);
        assert!(line.ends_with(b"\n"));
    }
}
