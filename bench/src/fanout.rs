//! `fanout` mode: N subscribers in one room, publishers at a fixed open-loop rate.
//!
//! Publishers send on a schedule (message k at `start + k / rate`) whatever happens to
//! earlier messages, so a slow server shows up as latency rather than as a lower offered
//! rate. Each message carries its scheduled send time in `data.t` (microseconds of the
//! system clock, which every process on the machine shares); a publisher running late
//! stamps the scheduled time, so its lateness counts as latency too. Subscribers record
//! `now − t` for every message and answer pings as usual.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::time::Instant as TokioInstant;

use super::client::{self, Frame};
use super::shard::{lock, serve, Phase, ShardCtx, Slot};

#[derive(Deserialize)]
struct Stamp {
    t: u64,
}

/// The send time in a message's `data`, if the bench put one there.
pub fn stamp_of(frame: &Frame<'_>) -> Option<u64> {
    let data = frame.data?;
    serde_json::from_str::<Stamp>(data.get()).ok().map(|s| s.t)
}

/// A `publish` line for `room` stamped `t`, padded with `pad` bytes.
pub fn publish_line(room: &str, t: u64, pad: &str) -> Vec<u8> {
    let room = serde_json::Value::from(room);
    format!("{{\"type\":\"publish\",\"room\":{room},\"data\":{{\"t\":{t},\"p\":\"{pad}\"}}}}\n")
        .into_bytes()
}

/// One subscriber: handshake, `subscribe`, then record the latency of every message.
pub(crate) async fn subscriber(ctx: Arc<ShardCtx>, index: usize, slot: Slot) {
    let plan = &ctx.plan;
    let user = format!("{}-{index}", plan.user);
    let since = Instant::now();
    let attempt = async {
        let (mut conn, welcome) = client::open(
            plan.target,
            plan.transport,
            plan.source(index),
            &user,
            plan.connect_timeout(),
        )
        .await?;
        let room = serde_json::Value::from(plan.room.as_str());
        let line = format!("{{\"type\":\"subscribe\",\"room\":{room}}}\n");
        conn.send(line.as_bytes())
            .await
            .map_err(|e| client::Failure::Io(e.to_string()))?;
        tokio::time::timeout(
            plan.connect_timeout(),
            client::await_frame(&mut conn, "subscribed"),
        )
        .await
        .unwrap_or(Err(client::Failure::Timeout))?;
        Ok::<_, client::Failure>((conn, welcome))
    };
    let (mut conn, welcome) = match attempt.await {
        Ok(pair) => pair,
        Err(failure) => {
            ctx.fail(failure.key());
            return drop(slot);
        }
    };
    ctx.established(welcome, since, false);
    drop(slot);
    serve(&ctx, &mut conn, |frame| {
        if frame.kind == "message" {
            ctx.add(|c| &c.delivered);
            if let Some(t) = stamp_of(frame) {
                let latency = client::unix_micros().saturating_sub(t);
                lock(&ctx.latency).record(latency);
            }
        }
    })
    .await;
    ctx.gone();
}

/// One publisher: handshake, wait for the window, publish on schedule, answer pings.
pub(crate) async fn publisher(ctx: Arc<ShardCtx>, n: usize, slot: Slot) {
    let plan = &ctx.plan;
    let user = format!("{}-pub-{}-{n}", plan.user, plan.shard);
    let since = Instant::now();
    let source = plan.source(n);
    let (mut conn, welcome) = match client::open(
        plan.target,
        plan.transport,
        source,
        &user,
        plan.connect_timeout(),
    )
    .await
    {
        Ok(pair) => pair,
        Err(failure) => {
            ctx.fail(failure.key());
            return drop(slot);
        }
    };
    ctx.established(welcome, since, true);
    drop(slot);
    let pad = "x".repeat(plan.payload);
    let mut phase = ctx.phase.clone();
    let mut schedule: Option<(TokioInstant, u64)> = None;
    let end_after = Duration::from_millis(plan.publish_ms);
    loop {
        let next = match schedule {
            Some((start, k)) if plan.publish_rate > 0.0 => {
                let at = start + Duration::from_secs_f64(k as f64 / plan.publish_rate);
                (at < start + end_after).then_some(at)
            }
            _ => None,
        };
        tokio::select! {
            () = sleep_until_some(next) => {
                let Some(at) = next else { continue };
                let late = TokioInstant::now().saturating_duration_since(at);
                let t = client::unix_micros().saturating_sub(late.as_micros() as u64);
                if let Err(e) = conn.send(&publish_line(&plan.room, t, &pad)).await {
                    ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                    break;
                }
                ctx.add(|c| &c.published);
                if let Some((_, k)) = &mut schedule {
                    *k += 1;
                }
            }
            line = conn.next_line() => {
                let line = match line {
                    Ok(Some(line)) => line,
                    Ok(None) => {
                        ctx.closed_unexpectedly(ctx.phase(), "closed");
                        break;
                    }
                    Err(e) => {
                        ctx.closed_unexpectedly(ctx.phase(), &format!("i/o: {e}"));
                        break;
                    }
                };
                if let Some(frame) = Frame::parse(&line) {
                    if frame.kind == "ping" {
                        ctx.add(|c| &c.pings);
                        if conn.send(&client::pong_line(frame.seq)).await.is_err() {
                            ctx.closed_unexpectedly(ctx.phase(), "i/o");
                            break;
                        }
                    }
                }
            }
            changed = phase.changed() => {
                let now = *phase.borrow();
                if changed.is_err() || now == Phase::Stop {
                    break;
                }
                if now == Phase::Window && schedule.is_none() {
                    schedule = Some((TokioInstant::now(), 0));
                }
            }
        }
    }
    ctx.gone();
}

/// Sleeps until `at`, or forever when there is no instant.
pub(crate) async fn sleep_until_some(at: Option<TokioInstant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_line_round_trips_its_stamp() {
        let line = publish_line("r\"oom", 123_456, "xx");
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["room"], "r\"oom");
        assert_eq!(v["data"]["t"], 123_456);
        let msg = format!(
            "{{\"type\":\"message\",\"room\":\"r\",\"seq\":1,\"from\":\"u\",\"data\":{}}}",
            v["data"]
        );
        let frame = Frame::parse(msg.as_bytes()).unwrap();
        assert_eq!(stamp_of(&frame), Some(123_456));
    }
}
