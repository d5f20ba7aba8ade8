//! `churn` mode: connect, `hello`, `welcome`, `bye`, close, again, in parallel loops.
//!
//! Reconnect storms (a deploy, a network blip) are when a push server accepts the most
//! connections per second, and accepting is a different cost from holding: the accept loop,
//! socket options, session set-up and tear-down. Each loop here runs complete cycles back to
//! back during the window; a cycle counts once the server has closed the socket after the
//! client's `bye`, so the server has done all its work for it. Connect → `welcome` times are
//! recorded; failures are counted by cause, never retried.

use std::sync::Arc;
use std::time::Instant;

use super::client::{self, Failure};
use super::shard::{lock, Phase, ShardCtx};

/// Runs cycles until the shard leaves the window.
pub(crate) async fn cycle_loop(ctx: Arc<ShardCtx>, n: usize) {
    let plan = &ctx.plan;
    let user = format!("{}-churn-{}-{n}", plan.user, plan.shard);
    let mut i = 0usize;
    while ctx.phase() == Phase::Window {
        let source = plan.source(n + i * plan.concurrency.max(1));
        i += 1;
        let since = Instant::now();
        match cycle(&ctx, source, &user, since).await {
            Ok(()) => ctx.add(|c| &c.cycles),
            Err(failure) => {
                ctx.add(|c| &c.cycle_failures);
                ctx.fail(failure.key());
            }
        }
    }
}

async fn cycle(
    ctx: &ShardCtx,
    source: Option<std::net::Ipv4Addr>,
    user: &str,
    since: Instant,
) -> Result<(), Failure> {
    let plan = &ctx.plan;
    let (mut conn, _) = client::open(
        plan.target,
        plan.transport,
        source,
        user,
        plan.connect_timeout(),
    )
    .await?;
    lock(&ctx.latency).record(since.elapsed().as_micros() as u64);
    conn.send(b"{\"type\":\"bye\"}\n")
        .await
        .map_err(|e| Failure::Io(e.to_string()))?;
    // Read until the server closes; a reset instead of a clean end of stream is still the
    // server closing.
    let closed = async { while let Ok(Some(_)) = conn.next_line().await {} };
    match tokio::time::timeout(plan.connect_timeout(), closed).await {
        Ok(()) => Ok(()),
        Err(_) => Err(Failure::Io("server did not close after bye".to_owned())),
    }
}
