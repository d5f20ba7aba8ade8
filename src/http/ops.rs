//! Operations endpoints outside `/api`: liveness, readiness and the Prometheus scrape.
//!
//! `/healthz` answers as long as the HTTP server runs. `/readyz` asks the registry, so it is
//! 503 when the registry does not answer, the server is draining, or the node has lost its
//! shared store (`broker.url`): a load balancer stops sending new clients to a node that is
//! shutting down while its existing connections drain, or to a node that cannot publish.

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
        Ok(o) if o.draining => {
            HttpResponse::ServiceUnavailable().json(json!({ "ready": false, "reason": "draining" }))
        }
        Ok(o) if !o.store_healthy => HttpResponse::ServiceUnavailable()
            .json(json!({ "ready": false, "reason": "store_unavailable" })),
        Ok(_) => HttpResponse::Ok().json(json!({ "ready": true })),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(json!({ "ready": false, "reason": e.to_string() })),
    }
}

pub(crate) async fn metrics(state: web::Data<ApiState>) -> Result<HttpResponse, ApiError> {
    let text = state.server.render_metrics().await?;
    Ok(HttpResponse::Ok().content_type(CONTENT_TYPE).body(text))
}
