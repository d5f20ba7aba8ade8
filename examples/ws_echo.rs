//! An echo server on heartwire's WebSocket transport, for the Autobahn test suite.
//!
//! Autobahn's fuzzing client sends messages and expects them back unchanged, which `/ws` (a
//! protocol v1 endpoint) cannot do. This serves `/echo` through exactly the set-up `/ws` uses
//! (`heartwire::ws::transport`: the same actix-web server settings, origin check, frame guard
//! and limits), with messages of up to 16 MiB, so the suite judges the transport itself.
//!
//! ```text
//! cargo run --release --example ws_echo -- 127.0.0.1:9001      # prints `ws on 127.0.0.1:9001`
//! kosoku ws://127.0.0.1:9001/echo -x '12.*' -x '13.*'
//! ```

use std::io::Write;
use std::process::ExitCode;

use actix_web::{web, HttpRequest, HttpResponse};
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, ProtocolError};
use futures_util::StreamExt;
use heartwire::ws::transport::{self, WsTransport};
use heartwire::Config;

/// Autobahn's largest messages are 16 MiB.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1).and_then(|a| a.parse().ok()) else {
        eprintln!("usage: ws_echo IP:PORT");
        return ExitCode::from(2);
    };
    let mut config = Config::default();
    config.ws.listen = Some(addr);
    actix_rt::System::new().block_on(async move {
        let listener = match transport::bind(addr, &config) {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("ws_echo: {e}");
                return ExitCode::FAILURE;
            }
        };
        let local = listener.local_addr().unwrap_or(addr);
        let echo = web::Data::new(WsTransport::new(MAX_MESSAGE, &config.ws.allowed_origins));
        let server = transport::serve(listener, &config, move |cfg| {
            cfg.app_data(echo.clone())
                .route("/echo", web::get().to(echo_route));
        });
        let server = match server {
            Ok(server) => server,
            Err(e) => {
                eprintln!("ws_echo: {e}");
                return ExitCode::FAILURE;
            }
        };
        println!("ws on {local}");
        let _ = std::io::stdout().flush();
        match server.await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("ws_echo: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// Text back as text, binary as binary, ping as pong, close as close with the same code; a
/// broken message closes with the code RFC 6455 asks for.
async fn echo_route(
    req: HttpRequest,
    body: web::Payload,
    transport: web::Data<WsTransport>,
) -> HttpResponse {
    let upgraded = match transport.upgrade(&req, body).await {
        Ok(upgraded) => upgraded,
        Err(refused) => return refused,
    };
    let mut session = upgraded.session;
    let mut messages = upgraded.messages;
    actix_rt::spawn(async move {
        let close = loop {
            let sent = match messages.next().await {
                Some(Ok(AggregatedMessage::Text(text))) => session.text(text).await,
                Some(Ok(AggregatedMessage::Binary(bytes))) => session.binary(bytes).await,
                Some(Ok(AggregatedMessage::Ping(payload))) => session.pong(&payload).await,
                Some(Ok(AggregatedMessage::Pong(_))) => Ok(()),
                Some(Ok(AggregatedMessage::Close(reason))) => {
                    break Some(CloseReason {
                        code: reason.map_or(CloseCode::Normal, |r| r.code),
                        description: None,
                    })
                }
                Some(Err(error)) => break Some(close_for(&error).into()),
                None => break None,
            };
            if sent.is_err() {
                return;
            }
        };
        let _ = session.close(close).await;
    });
    upgraded.response
}

/// 1009 for a message over the limit, 1007 for text that is not UTF-8, 1002 for the rest.
fn close_for(error: &ProtocolError) -> CloseCode {
    match error {
        e if transport::is_too_large(e) => CloseCode::Size,
        ProtocolError::Io(e)
            if e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("utf-8") =>
        {
            CloseCode::Invalid
        }
        _ => CloseCode::Protocol,
    }
}
