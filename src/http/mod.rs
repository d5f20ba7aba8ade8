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
//! | `GET /api/stats` | | counts, `draining`, `store_healthy`, history totals |
//! | `GET /metrics` | | OpenMetrics text |
//! | `GET /healthz`, `GET /readyz` | | `{status}`, `{ready}` (503 while draining or without the shared store) |
//!
//! On a node of a cluster (`broker.url`) the API acts on the cluster (publish, send,
//! disconnect, presence, a room's `seq`/`epoch`/`history_len`) and shows this node (connections,
//! the room list, members, the counts of `/api/stats`).
//!
//! What guards `/api/*`, outermost first (SECURITY.md has the threat model):
//!
//! 1. **Host** (`host.rs`): without an API key, or with `http.allowed_hosts` set, a request
//!    must name the API by a loopback name or address or a listed host, else 421: a defence
//!    against DNS rebinding.
//! 2. **CORS** (`cors.rs`): off unless `http.cors_origins` lists origins; then actix-cors
//!    answers their preflights and adds the headers to their requests.
//! 3. **API key** (`auth.rs`): with `http.api_key`/`http.api_keys`, `Authorization: Bearer
//!    <key>`, compared in constant time with every key, else 401.
//! 4. **Content type** (`content_type.rs`): a body must be `application/json`, else 415, so
//!    that no "simple" cross-site request reaches a handler.
//!
//! `/healthz`, `/readyz` and `/metrics` are outside the scope: open to probes and scrapers
//! whatever their `Host`, read-only, and revealing counts, not users.
//!
//! With `http.tls`, [`HttpService`] serves all of it over TLS with the server's certificate
//! (rustls, the *ring* provider, as on the TCP listener).
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
use actix_web::middleware::{from_fn, Condition, Next};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer, ResponseError};

use crate::config::Config;
use crate::server::{ServerHandle, StartError};

mod api;
mod auth;
mod config;
mod content_type;
mod cors;
mod error;
mod host;
mod ops;

use self::auth::ApiKeys;
use self::host::HostPolicy;

pub use config::HttpConfig;
pub use error::ApiError;

/// What the handlers share.
pub(crate) struct ApiState {
    server: ServerHandle,
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
    keys: Option<Arc<ApiKeys>>,
    hosts: HostPolicy,
    cors_origins: Arc<[String]>,
    max_body: usize,
}

impl HttpApi {
    /// The API of `server`, with the keys, host and CORS policies and page sizes of
    /// `config.http` (its `listen` and `tls` concern [`HttpService`] alone). Request bodies
    /// are limited to `config.max_frame` bytes: a pushed message has to fit in a frame anyway.
    pub fn new(server: &ServerHandle, config: &Config) -> Self {
        let keys = ApiKeys::new(config.http.keys()).map(Arc::new);
        HttpApi {
            state: web::Data::new(ApiState {
                server: server.clone(),
                page_size: config.http.page_size,
                max_page_size: config.http.max_page_size,
            }),
            hosts: HostPolicy::new(&config.http.allowed_hosts, keys.is_some()),
            keys,
            cors_origins: config.http.cors_origins.clone().into(),
            max_body: config.max_frame,
        }
    }

    /// Registers `/api/*`, `/metrics`, `/healthz` and `/readyz` (use it with
    /// `App::configure` or `Scope::configure`). Everything the API needs (its state, its JSON
    /// error handling, its guards) is attached to its own resources, so the application's
    /// other routes are untouched.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let state = self.state.clone();
        let keys = self.keys.clone();
        let hosts = self.hosts.clone();
        let cors = Condition::new(
            !self.cors_origins.is_empty(),
            cors::middleware(&self.cors_origins),
        );
        // The content type is checked before any extractor runs (`content_type.rs`).
        let json = web::JsonConfig::default()
            .limit(self.max_body)
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
                // The last `wrap` runs first: Host, CORS, key, content type.
                .wrap(from_fn(content_type::check))
                .wrap(from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
                    auth::check(keys.clone(), req, next)
                }))
                .wrap(cors)
                .wrap(from_fn(cors::json_errors))
                .wrap(from_fn(move |req: ServiceRequest, next: Next<BoxBody>| {
                    host::check(hosts.clone(), req, next)
                }))
                .configure(api::routes)
                .default_service(web::to(not_found)),
        );
    }
}

/// A body that is too large is a 413, one not declared as JSON a 415 (the content-type check
/// stops those first), anything else about it a 400.
fn json_error(e: actix_web::error::JsonPayloadError) -> ApiError {
    use actix_web::error::JsonPayloadError::{ContentType, Overflow, OverflowKnownLength};
    match e {
        Overflow { limit } | OverflowKnownLength { limit, .. } => ApiError::new(
            actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("request bodies are limited to {limit} bytes (max_frame)"),
        ),
        ContentType => ApiError::new(
            actix_web::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be JSON sent with `Content-Type: application/json`",
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
    /// Starts the HTTP API of `server` on `config.http.listen` in the current actix `System`,
    /// over TLS when `config.http.tls` is set; `None` when no address is configured. It
    /// handles no signals: stop it with [`HttpService::stop`] after the server's drain.
    pub fn start(
        server: &ServerHandle,
        config: &Config,
    ) -> Result<Option<HttpService>, StartError> {
        let Some(configured) = config.http.listen else {
            return Ok(None);
        };
        config.http.validate()?;
        let tls = server_tls(config)?;
        let failed = |source| StartError::Http {
            addr: configured,
            source,
        };
        let listener = TcpListener::bind(configured).map_err(failed)?;
        let addr = listener.local_addr().map_err(failed)?;
        let api = HttpApi::new(server, config);
        let keys = api.keys.as_ref().map_or(0, |k| k.len());
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
        .shutdown_timeout(config.http.shutdown_timeout.as_secs());
        let http = match tls {
            #[cfg(feature = "tls")]
            Some(tls) => http.listen_rustls_0_23(listener, tls),
            #[cfg(not(feature = "tls"))]
            Some(never) => match never {},
            None => http.listen(listener),
        }
        .map_err(failed)?
        .run();
        let handle = http.handle();
        actix_rt::spawn(async move {
            if let Err(error) = http.await {
                tracing::error!(%error, "HTTP server failed");
            }
        });
        let h = &config.http;
        if keys == 0 && !addr.ip().is_loopback() && h.allowed_hosts.is_empty() {
            tracing::warn!(
                %addr,
                "the HTTP API has no key: /api/* answers only requests whose Host is a loopback \
                 name or address; list the names clients use in http.allowed_hosts"
            );
        }
        tracing::info!(
            %addr,
            tls = h.tls,
            api_keys = keys,
            allowed_hosts = ?h.allowed_hosts,
            cors_origins = ?h.cors_origins,
            "HTTP API listening"
        );
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

/// The TLS configuration of the HTTP API: the server's own certificate and key (`tls.*`),
/// the same rustls provider as the TCP listener; `None` without `http.tls`.
#[cfg(feature = "tls")]
fn server_tls(config: &Config) -> Result<Option<tokio_rustls::rustls::ServerConfig>, StartError> {
    if !config.http.tls {
        return Ok(None);
    }
    match config.tls.server_config()? {
        Some(tls) => Ok(Some(tls)),
        None => Err(crate::config::invalid(
            "http.tls",
            "serving the HTTP API over TLS needs tls.cert and tls.key (--tls-cert, --tls-key)",
        )
        .into()),
    }
}

/// Without the `tls` feature there is no TLS configuration to build (`http.tls` fails the
/// configuration check).
#[cfg(not(feature = "tls"))]
fn server_tls(_: &Config) -> Result<Option<std::convert::Infallible>, StartError> {
    Ok(None)
}
