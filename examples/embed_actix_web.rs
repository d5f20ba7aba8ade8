//! An actix-web application that runs heartwire inside itself.
//!
//! One process, one actix `System`: the application's HTTP server, heartwire's TCP listener
//! and actors, and heartwire's HTTP API mounted under `/heartwire`. The application's own
//! routes push to heartwire users through the [`ServerHandle`]:
//!
//! - `POST /notify/{user}` with `{"text": "..."}` sends a direct message to every session of
//!   that user and answers `{"delivered": n}`;
//! - `POST /announce` with `{"text": "..."}` publishes to the room `announcements` and answers
//!   `{"seq": n}`.
//!
//! Try it:
//!
//! ```text
//! cargo run --example embed_actix_web
//! nc 127.0.0.1 7700      # {"type":"hello","user":"alice"}
//! curl -X POST localhost:8080/notify/alice -H 'content-type: application/json' -d '{"text":"hi"}'
//! curl localhost:8080/heartwire/api/connections
//! ```

use actix_web::{web, App, HttpResponse, HttpServer};
use heartwire::http::HttpApi;
use heartwire::{Config, ServerBuilder, ServerHandle};
use serde::Deserialize;
use serde_json::json;

/// The body of the application's routes.
#[derive(Deserialize)]
pub struct Text {
    /// What to tell.
    pub text: String,
}

async fn notify(
    server: web::Data<ServerHandle>,
    user: web::Path<String>,
    body: web::Json<Text>,
) -> HttpResponse {
    let data = json!({ "kind": "notification", "text": body.text });
    match server.send_to(&user, &data, None).await {
        Ok(delivered) => HttpResponse::Ok().json(json!({ "delivered": delivered })),
        Err(e) => HttpResponse::BadGateway().json(json!({ "error": e.to_string() })),
    }
}

async fn announce(server: web::Data<ServerHandle>, body: web::Json<Text>) -> HttpResponse {
    let data = json!({ "kind": "announcement", "text": body.text });
    match server.publish("announcements", &data, None).await {
        Ok(seq) => HttpResponse::Ok().json(json!({ "seq": seq })),
        Err(e) => HttpResponse::BadGateway().json(json!({ "error": e.to_string() })),
    }
}

/// Everything the application serves: its own routes, and heartwire's API under
/// `/heartwire`. Used by `main` and by the tests.
pub fn configure(server: ServerHandle, api: HttpApi) -> impl Fn(&mut web::ServiceConfig) + Clone {
    move |cfg| {
        let api = api.clone();
        cfg.app_data(web::Data::new(server.clone()))
            .route("/notify/{user}", web::post().to(notify))
            .route("/announce", web::post().to(announce))
            .service(web::scope("/heartwire").configure(move |c| api.configure(c)));
    }
}

/// Runs heartwire and the application in one System until SIGINT/SIGTERM, then drains
/// heartwire's clients (each gets `bye{reason:"shutdown", reconnect_ms}`) and stops the
/// application. Arguments: heartwire's TCP address and the application's HTTP address
/// (defaults `127.0.0.1:7700` and `127.0.0.1:8080`; port 0 picks a free port).
#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:7700".into());
    let app_addr = args.next().unwrap_or_else(|| "127.0.0.1:8080".into());
    let config = Config {
        listen: listen.parse()?,
        ..Config::default()
    };
    // heartwire's actors start in this System, beside the application's HTTP server.
    let server = ServerBuilder::new(config.clone()).start()?;
    let api = HttpApi::new(&server, &config);
    let routes = configure(server.clone(), api);
    // heartwire owns the signals: actix-web's own handling would stop the System (and
    // heartwire's actors with it) before the clients are told anything.
    let app = HttpServer::new(move || App::new().configure(routes.clone()))
        .disable_signals()
        .bind(app_addr.as_str())?;
    let app_addr = app.addrs()[0];
    let app = app.run();
    let app_handle = app.handle();
    actix_web::rt::spawn(app);
    let run = server.run_until_signal();
    println!(
        "heartwire on {}, application on {app_addr}",
        server.local_addr()
    );
    let outcome = run.await;
    app_handle.stop(true).await;
    outcome?;
    Ok(())
}
