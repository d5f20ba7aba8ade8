//! Cross-origin access to `/api/*` from browsers, off unless `http.cors_origins` lists origins.
//!
//! Without CORS headers a browser lets no other origin read an answer, and refuses to send a
//! request that needs a preflight; since every `/api/*` body must be `application/json`, every
//! cross-origin call that could change something needs one. Listed origins get what a browser
//! client needs (`GET` and `POST` with `Authorization` and `Content-Type`), nothing more: no
//! credentials mode (the key travels in an explicit header, never in a cookie), no wildcard.
//! The matching is actix-cors'; this module configures it and gives its refusals the API's
//! JSON error body.

use actix_cors::{Cors, CorsError};
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{header, Method, StatusCode, Uri};
use actix_web::middleware::Next;
use actix_web::{Error, ResponseError};

use super::error::ApiError;

/// How long a browser may cache a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: usize = 600;

/// Checks an entry of `http.cors_origins` and returns it as browsers send it in `Origin`
/// (lower case): `scheme://host[:port]`, nothing after.
pub(crate) fn parse_origin(text: &str) -> Result<String, &'static str> {
    const SHAPE: &str = "expected `http://host[:port]` or `https://host[:port]`, exactly as \
                         browsers send it in `Origin` (no path, no trailing slash, no wildcard)";
    let uri: Uri = text.parse().map_err(|_| SHAPE)?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(SHAPE);
    };
    let bare = format!("{scheme}://{authority}");
    if !matches!(scheme, "http" | "https") || bare != text || authority.as_str().contains('@') {
        return Err(SHAPE);
    }
    if authority.host().contains('*') {
        return Err(SHAPE);
    }
    let default_port = if scheme == "https" { 443 } else { 80 };
    if authority.port_u16() == Some(default_port) {
        return Err("browsers leave the scheme's default port out of `Origin`; drop it");
    }
    Ok(bare.to_ascii_lowercase())
}

/// The CORS middleware for `origins`; entries that do not parse are left out (the
/// configuration check reports them).
pub(crate) fn middleware(origins: &[String]) -> Cors {
    origins
        .iter()
        .filter_map(|origin| match parse_origin(origin) {
            Ok(origin) => Some(origin),
            Err(reason) => {
                tracing::error!(%origin, "ignoring http.cors_origins entry: {reason}");
                None
            }
        })
        .fold(Cors::default(), |cors, origin| cors.allowed_origin(&origin))
        .allowed_methods([Method::GET, Method::POST])
        .allowed_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(PREFLIGHT_MAX_AGE)
}

/// Turns actix-cors' plain-text refusals (a preflight from an origin not listed, or asking for
/// a method or header not allowed) into the API's JSON errors: 403 for the origin, 400 for the
/// rest.
pub(crate) async fn json_errors<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let res = next.call(req).await?;
    let refusal = res
        .response()
        .error()
        .and_then(|e| e.as_error::<CorsError>())
        .map(|e| {
            let status = match e {
                CorsError::OriginNotAllowed => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            (status, e.to_string())
        });
    let Some((status, message)) = refusal else {
        return Ok(res.map_into_boxed_body());
    };
    tracing::debug!(path = %res.request().path(), "CORS request refused: {message}");
    let code = if status == StatusCode::FORBIDDEN {
        "forbidden"
    } else {
        "bad_request"
    };
    let response = ApiError::new(status, code, format!("CORS: {message}")).error_response();
    Ok(res.into_response(response))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_taken_as_browsers_send_them() {
        assert_eq!(
            parse_origin("https://Admin.Example").unwrap(),
            "https://admin.example"
        );
        assert_eq!(
            parse_origin("http://localhost:3000").unwrap(),
            "http://localhost:3000"
        );
        for bad in [
            "*",
            "null",
            "https://*.example",
            "https://a.example/",
            "https://a.example?x",
            "https://u@a.example",
            "http://a.example:80",
            "ws://a.example",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
