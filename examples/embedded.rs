//! Embedding a heartwire server in your own program.
//!
//! Starts a server on `127.0.0.1:7700`, pushes a server-side message into the room `news`
//! every three seconds, and shuts down gracefully on Ctrl-C: every connected client gets
//! `bye{reason:"shutdown", reconnect_ms}` after whatever was already queued for it.
//!
//! Run it with
//!
//! ```text
//! cargo run --example embedded
//! ```
//!
//! and try it from another terminal with `nc 127.0.0.1 7700`, typing one JSON object per line:
//!
//! ```text
//! {"type":"hello","user":"alice"}
//! {"type":"subscribe","room":"news"}
//! ```
//!
//! The ticks then arrive as `{"type":"message","room":"news","seq":N,"from":null,"data":{…}}`.
//! The server also sends `{"type":"ping","seq":N}` every 30 s; answer with
//! `{"type":"pong","seq":N}` (or any frame) or the connection is closed after a minute or so
//! of silence. `RUST_LOG=debug` shows what the server does.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use heartwire::{Config, ServerBuilder};
use serde_json::json;
use tracing_subscriber::EnvFilter;

#[actix_rt::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();

    // Everything not set here keeps its default (see `heartwire::Config`).
    let config = Config {
        listen: "127.0.0.1:7700".parse()?,
        ..Config::default()
    };
    // `start` must run inside an actix System, which `#[actix_rt::main]` provides. It binds
    // the listener and starts the registry, the worker threads and the accept loop.
    let server = ServerBuilder::new(config).start()?;
    println!("listening on {}", server.local_addr());

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut ticker = tokio::time::interval(Duration::from_secs(3));
    ticker.tick().await; // the first tick is immediate; push after three seconds
    let mut tick = 0u64;
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                tick += 1;
                let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
                // A server-side push (`from: null`): the room sequences it like any publish
                // and every subscriber receives it.
                match server.publish("news", &json!({"tick": tick, "at": at}), None).await {
                    Ok(seq) => println!("pushed tick {tick} to news as seq {seq}"),
                    Err(e) => eprintln!("push failed: {e}"),
                }
            }
            signal = &mut ctrl_c => {
                signal?;
                break;
            }
        }
    }

    // Stop accepting, say bye to everyone, wait for them (at most `drain_timeout`).
    println!("shutting down");
    let drained = server.shutdown().await;
    println!(
        "{}",
        if drained {
            "every connection closed cleanly"
        } else {
            "drain timed out; remaining connections dropped"
        }
    );
    Ok(())
}
