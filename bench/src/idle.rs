//! `idle` mode: hold N heartbeating connections and let the server ping them.
//!
//! This is the steady state of a push server (most connections idle most of the time), so it
//! is where memory per connection and the cost of one heartbeat round trip are measured: the
//! coordinator samples the server's RSS and CPU during the window while every connection here
//! answers each `ping` with a `pong` at once. Any close by the server during the hold is a
//! false positive of its dead-peer detection and is counted.

use std::sync::Arc;
use std::time::Instant;

use super::shard::{serve, ShardCtx, Slot};

/// One idle connection: handshake, then answer pings until `Stop`.
pub(crate) async fn client(ctx: Arc<ShardCtx>, index: usize, slot: Slot) {
    let since = Instant::now();
    let Some((mut conn, welcome)) = ctx.open(index).await else {
        return drop(slot);
    };
    ctx.established(welcome, since, false);
    drop(slot);
    serve(&ctx, &mut conn, |_| {}).await;
    ctx.gone();
}
