//! `idle` mode: hold N heartbeating connections and let the server ping them.
//!
//! This is the steady state of a push server (most connections idle most of the time), so it
//! is where memory per connection and the cost of one heartbeat round trip are measured: the
//! coordinator samples the server's RSS and CPU during the window while every connection here
//! answers each `ping` with a `pong` at once. Any close by the server during the hold is a
//! false positive of its dead-peer detection and is counted.

use std::sync::Arc;
use std::time::Instant;

use super::client;
use super::shard::{serve, ShardCtx, Slot};

/// One idle connection: handshake, then answer pings until `Stop`.
pub(crate) async fn client(ctx: Arc<ShardCtx>, index: usize, slot: Slot) {
    let plan = &ctx.plan;
    let user = format!("{}-{index}", plan.user);
    let since = Instant::now();
    let opened = client::open(
        plan.target,
        plan.source(index),
        &user,
        plan.connect_timeout(),
    )
    .await;
    let (mut conn, welcome) = match opened {
        Ok(pair) => pair,
        Err(failure) => {
            ctx.fail(failure.key());
            return drop(slot);
        }
    };
    ctx.established(welcome, since, false);
    drop(slot);
    serve(&ctx, &mut conn, |_| {}).await;
    ctx.gone();
}
