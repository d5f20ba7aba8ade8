//! Operations endpoints outside `/api`: liveness, readiness and the Prometheus scrape.
//!
//! `/healthz` answers as long as the HTTP server runs. `/readyz` asks the registry, so it is
//! 503 when the registry does not answer or the server is draining: a load balancer stops
//! sending new clients to a node that is shutting down while its existing connections drain.

use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::ApiState;
use crate::metrics::CONTENT_TYPE;

pub(crate) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub(crate) async fn readyz(state: web::Data<ApiState>) -> HttpResponse {
    match state.server.overview().await {
        Ok(o) if !o.draining => HttpResponse::Ok().json(json!({ "ready": true })),
        Ok(_) => {
            HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": "draining" }))
        }
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({ "ready": false, "reason": e.to_string() })),
    }
}

pub(crate) async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let text = state.server.render_metrics().await?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
