//! The API key check of `/api/*`: `Authorization: Bearer <key>`, compared in constant time
//! with every configured key.
//!
//! Several keys are valid at once so that a key can be rotated without a moment where
//! clients fail: add the new key, move the clients, drop the old one. The given key is
//! compared with each of them, every time, and the results are combined without branching,
//! so the answer time tells neither whether a key was close nor which one matched.
//!
//! A middleware on the `/api` scope rather than an extractor in each handler, so that a new
//! endpoint cannot forget it. `/healthz`, `/readyz` and `/metrics` stay open: probes and
//! scrapers rarely carry credentials, and they reveal counts, not users.

use std::fmt;
use std::sync::Arc;

use actix_web::body::BoxBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use subtle::{Choice, ConstantTimeEq};

use super::error::ApiError;

/// The accepted API keys. Its `Debug` shows how many there are, never a key.
pub(crate) struct ApiKeys(Box<[Box<[u8]>]>);

impl ApiKeys {
    /// The keys of `keys` (duplicates once); `None` when there are none.
    pub(crate) fn new<'a>(keys: impl Iterator<Item = &'a str>) -> Option<ApiKeys> {
        let mut keys: Vec<Box<[u8]>> = keys.map(|k| k.as_bytes().into()).collect();
        keys.sort_unstable();
        keys.dedup();
        (!keys.is_empty()).then(|| ApiKeys(keys.into()))
    }

    /// Whether `given` is one of the keys. Compares with all of them whatever the outcome; a
    /// length differing from a key's is not a secret, its bytes are.
    fn accepts(&self, given: &[u8]) -> bool {
        let mut found = Choice::from(0);
        for key in self.0.iter() {
            found |= key.as_ref().ct_eq(given);
        }
        found.into()
    }

    /// How many keys there are.
    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys(<{} redacted>)", self.0.len())
    }
}

/// Lets the request through when no key is configured or when it carries one of the keys.
pub(crate) async fn check(
    keys: Option<Arc<ApiKeys>>,
    req: ServiceRequest,
    next: Next<BoxBody>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    if let Some(keys) = keys {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer);
        let refusal = match given {
            None => Some("this API needs `Authorization: Bearer <api key>`"),
            Some(given) if !keys.accepts(given.as_bytes()) => Some("wrong API key"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn accepts_any_of_the_keys_and_nothing_else() {
        assert!(ApiKeys::new(std::iter::empty()).is_none());
        let keys = ApiKeys::new(["old-key", "new-key", "old-key"].into_iter()).unwrap();
        assert_eq!(keys.len(), 2);
        assert!(keys.accepts(b"old-key"));
        assert!(keys.accepts(b"new-key"));
        for wrong in [
            &b"new-kez"[..],
            b"new-key2",
            b"new-ke",
            b"",
            b"old-keynew-key",
        ] {
            assert!(!keys.accepts(wrong), "{wrong:?}");
        }
        let debug = format!("{keys:?}");
        assert!(
            !debug.contains("key-") && debug.contains("2 redacted"),
            "{debug}"
        );
    }
}
