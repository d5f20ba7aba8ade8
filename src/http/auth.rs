//! The API key check of `/api/*`: `Authorization: Bearer <key>`, compared in constant time.
//!
//! A middleware on the `/api` scope rather than an extractor in each handler, so that a new
//! endpoint cannot forget it. `/healthz`, `/readyz` and `/metrics` stay open: probes and
//! scrapers rarely carry credentials, and they reveal counts, not users.

use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use subtle::ConstantTimeEq;

use super::error::ApiError;

/// Lets the request through when no key is configured or when it carries the key.
pub(crate) async fn check(
    key: Option<Arc<str>>,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(key) = key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let refusal = match given {
            None => Some("this API needs `Authorization: Bearer <api key>`"),
            Some(given) if !same(given.as_bytes(), key.as_bytes()) => Some("wrong API key"),
            Some(_) => None,
        };
        if let Some(message) = refusal {
            tracing::info!(path = %req.path(), peer = ?req.peer_addr(), "HTTP API request refused: {message}");
            let response = ApiError::unauthorized(message).error_response();
            return Ok(req.into_response(response));
        }
    }
    next.call(req).await
}

/// The credentials of a `Bearer` authorization value (the scheme is case-insensitive).
fn bearer(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|k| !k.is_empty())
}

/// Compares in constant time (the length is not secret).
fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_compares() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"abcd"));
    }
}
