//! Errors of the HTTP API: always a JSON body `{"error": CODE, "message": TEXT}` with an HTTP
//! status that fits, including for bodies, queries and paths that do not parse.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

use crate::server::HandleError;

/// An API error: status, machine-readable code, human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (`bad_request`, `unauthorized`, `forbidden`, `not_found`,
    /// `method_not_allowed`, `payload_too_large`, `unsupported_media_type`,
    /// `misdirected_request`, `unavailable`).
    pub code: &'static str,
    /// What went wrong.
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with `status` and `code`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no or wrong API key.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 404: no such thing.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 503: the server cannot do it now.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            response.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        response.json(Body {
            error: self.code,
            message: &self.message,
        })
    }
}

impl From<HandleError> for ApiError {
    fn from(e: HandleError) -> Self {
        match e {
            HandleError::Invalid(_) | HandleError::Encode(_) => {
                ApiError::bad_request(e.to_string())
            }
            HandleError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                e.to_string(),
            ),
            HandleError::Registry(_) | HandleError::Broker(_) => {
                tracing::warn!(error = %e, "HTTP API request failed");
                ApiError::unavailable(e.to_string())
            }
        }
    }
}
