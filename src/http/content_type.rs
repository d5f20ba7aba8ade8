//! Every `/api/*` request with a body must say `Content-Type: application/json`.
//!
//! Browsers send `text/plain`, `application/x-www-form-urlencoded` and `multipart/form-data`
//! bodies to any origin without asking first (a "simple" request), so an API that read such a
//! body as JSON could be driven by any web page its user opens. `application/json` cannot be
//! sent cross-origin without a preflight, which the API answers only for `http.cors_origins`.
//! The check is a middleware on the scope, ahead of every handler, so a refused request has no
//! effect and a new endpoint cannot forget it.

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError};

use super::error::ApiError;

/// Refuses, with 415, a request that carries a body not declared as JSON.
pub(crate) async fn check(
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if carries_body(&req) && !declares_json(&req) {
        let response = ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "request bodies must be JSON sent with `Content-Type: application/json`",
        )
        .error_response();
        return Ok(req.into_response(response));
    }
    next.call(req).await
}

/// Methods that carry a body by nature, and any request that announces one.
fn carries_body(req: &ServiceRequest) -> bool {
    let headers = req.headers();
    matches!(
        *req.method(),
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) || headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|len| len.as_bytes() != b"0")
}

/// Exactly one `Content-Type`, whose type is `application/json` (parameters allowed).
fn declares_json(req: &ServiceRequest) -> bool {
    req.headers().get_all(header::CONTENT_TYPE).count() == 1
        && matches!(req.mime_type(), Ok(Some(mime)) if mime.essence_str() == "application/json")
}
