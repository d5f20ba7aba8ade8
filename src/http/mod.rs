//! The HTTP API: push to users and rooms, disconnect, look at rooms, presence and
//! connections, and the operations endpoints (`/healthz`, `/readyz`, `/metrics`).
//!
//! It is actix-web 4 running in the same actix `System` as the server's actors: handlers reach
//! the registry through its `Addr` (inside a [`ServerHandle`] shared as `web::Data`), with the
//! same awaited, mailbox-bounded requests sessions use. Two ways to run it:
//!
//! - **Standalone**: set `http.listen` (`--http ADDR`) and start [`HttpService`] beside the
//!   server; stop it after [`ServerHandle::shutdown`], so that `/readyz` reports the drain
//!   while it lasts (the `heartwire` binary does exactly this).
//! - **Embedded**: an actix-web application mounts [`HttpApi::configure`] in its own `App` (at
//!   the root or in a scope) next to its own routes.
//!
//! Endpoints (JSON in and out; errors are `{"error": CODE, "message": TEXT}`):
//!
//! | method and path | body or query | answer |
//! |---|---|---|
//! | `POST /api/publish` | `{room, data, id?}` | `{seq}` |
//! | `POST /api/send` | `{to, data, id?}` | `{delivered}` |
//! | `POST /api/disconnect` | `{user}` or `{session}` | `{disconnected}` |
//! | `GET /api/rooms` | `?limit&after` | `{rooms, total, next}` |
//! | `GET /api/rooms/{room}` | | `{room, members, users, seq, epoch, history_len}` |
//! | `GET /api/rooms/{room}/presence` | | `{room, users}` |
//! | `GET /api/connections` | `?limit&after&user` | `{connections, total, next}` |
//! | `GET /api/stats` | | counts, `draining`, history totals |
//! | `GET /metrics` | | OpenMetrics text |
//! | `GET /healthz`, `GET /readyz` | | `{status}`, `{ready}` (503 while draining) |
//!
//! With `http.api_key` set, `/api/*` needs `Authorization: Bearer <key>`, compared in
//! constant time.
//!
//! The server does not know about this module: the dependency goes one way, from the API to
//! the [`ServerHandle`] it drives.
//!
//! [`ServerHandle`]: crate::ServerHandle
//! [`ServerHandle::shutdown`]: crate::ServerHandle::shutdown

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::ServiceRequest;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};

use crate::config::Config;
use crate::server::{ServerHandle, StartError};

mod api;
mod auth;
mod config;
mod error;
mod ops;

pub use config::HttpConfig;
pub use error::ApiError;

/// What the handlers share.
pub(crate) struct ApiState {
    server: ServerHandle,
    api_key: Option<Arc<str>>,
    page_size: usize,
    max_page_size: usize,
}

impl ApiState {
    /// The page size for a requested `limit`: the default when absent, capped at the maximum.
    fn page_limit(&self, limit: Option<usize>) -> usize {
        limit.unwrap_or(self.page_size).clamp(1, self.max_page_size)
    }
}

/// The HTTP API of one server, to mount in an actix-web `App`. Cheap to clone.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use actix_web::{App, HttpServer};
/// let config = heartwire::Config::default();
/// let server = heartwire::ServerBuilder::new(config.clone()).start()?;
/// let api = heartwire::http::HttpApi::new(&server, &config);
/// HttpServer::new(move || {
///     let api = api.clone();
///     App::new().service(actix_web::web::scope("/push").configure(move |c| api.configure(c)))
/// })
/// .bind("127.0.0.1:8080")?
/// .run()
/// .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpApi {
    state: web::Data<ApiState>,
    max_body: usize,
}

impl HttpApi {
    /// The API of `server`, with the key and page sizes of `config.http`. Request bodies are
    /// limited to `config.max_frame` bytes: a pushed message has to fit in a frame anyway.
    pub fn new(server: &ServerHandle, config: &Config) -> Self {
        HttpApi {
            state: web::Data::new(ApiState {
                server: server.clone(),
                api_key: config.http.api_key.as_deref().map(Arc::from),
                page_size: config.http.page_size,
                max_page_size: config.http.max_page_size,
            }),
            max_body: config.max_frame,
        }
    }

    /// Registers `/api/*`, `/metrics`, `/healthz` and `/readyz` (use it with
    /// `App::configure` or `Scope::configure`). Everything the API needs (its state, its JSON
    /// error handling, its key check) is attached to its own resources, so the application's
    /// other routes are untouched.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let state = self.state.clone();
        let key = state.api_key.clone();
        // Bodies are JSON whatever their content type says (`curl -d` sends a form type).
        let json = web::JsonConfig::default()
            .limit(self.max_body)
            .content_type_required(false)
            .error_handler(|e, _| json_error(e).into());
        let query = web::QueryConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("invalid query: {e}")).into());
        let path = web::PathConfig::default()
            .error_handler(|e, _| ApiError::bad_request(format!("invalid path: {e}")).into());
        cfg.service(
            resource("/healthz")
                .app_data(state.clone())
                .route(web::get().to(ops::healthz)),
        )
        .service(
            resource("/readyz")
                .app_data(state.clone())
                .route(web::get().to(ops::readyz)),
        )
        .service(
            resource("/metrics")
                .app_data(state.clone())
                .route(web::get().to(ops::metrics)),
        )
        .service(
            web::scope("/api")
                .app_data(state)
                .app_data(json)
                .app_data(query)
                .app_data(path)
                .wrap(from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
                    auth::check(key.clone(), req, next)
                }))
                .configure(api::routes)
                .default_service(web::to(not_found)),
        );
    }
}

/// A body that is too large is a 413, anything else about it a 400.
fn json_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError::{Overflow, OverflowKnownLength};
    match e {
        Overflow { limit } | OverflowKnownLength { limit, .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {limit} bytes (max_frame)"),
        ),
        e => ApiError::bad_request(format!("invalid JSON body: {e}")),
    }
}

/// A resource whose other methods get a JSON 405.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::not_found(format!("no endpoint {}", req.path())).error_response()
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    ApiError::new(
        actix_web::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    )
    .error_response()
}

/// The HTTP API as a server of its own, beside a heartwire server (`http.listen`).
#[derive(Clone)]
pub struct HttpService {
    addr: SocketAddr,
    handle: actix_web::dev::ServerHandle,
}

impl HttpService {
    /// Starts the HTTP API of `server` on `config.http.listen` in the current actix `System`;
    /// `None` when no address is configured. It handles no signals: stop it with
    /// [`HttpService::stop`] after the server's drain.
    pub fn start(
        server: &ServerHandle,
        config: &Config,
    ) -> Result<Option<HttpService>, StartError> {
        let Some(configured) = config.http.listen else {
            return Ok(None);
        };
        let failed = |source| StartError::Http {
            addr: configured,
            source,
        };
        let listener = TcpListener::bind(configured).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        let api = HttpApi::new(server, config);
        let http = HttpServer::new(move || {
            let api = api.clone();
            // Access log through `log` (which the binary's tracing subscriber picks up); probes
            // and scrapes would drown the rest.
            let access_log = actix_web::middleware::Logger::default()
                .exclude("/healthz")
                .exclude("/readyz")
                .exclude("/metrics");
            App::new()
                .wrap(access_log)
                .configure(move |c| api.configure(c))
                .default_service(web::to(not_found))
        })
        .workers(config.http.workers)
        .disable_signals()
        .shutdown_timeout(config.http.shutdown_timeout.as_secs())
        .listen(listener)
        .map_err(failed)?
        .run();
        let handle = http.handle();
        actix_rt::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        tracing::info!(%addr, "HTTP API listening");
        Ok(Some(HttpService { addr, handle }))
    }

    /// The address the HTTP API listens on (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the HTTP server, letting requests in flight finish (within
    /// `http.shutdown_timeout`).
    pub async fn stop(&self) {
        self.handle.stop(true).await;
    }
}
