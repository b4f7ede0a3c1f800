//! The error type at the HTTP edge: every failure a client can cause or see,
//! turned into `{"error": "<code>", "detail": "<what was wrong and how to fix it>"}`
//! with the right status code. Nothing internal leaks into `detail`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::routes::work::{DEFAULT_ITERATIONS, MAX_ITERATIONS};
use crate::store::{MAX_KEY_BYTES, MAX_VALUE_BYTES};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(
        "iterations `{given}` is not allowed; use a whole number in 1..={MAX_ITERATIONS} (default {DEFAULT_ITERATIONS})"
    )]
    BadIterations { given: String },

    #[error("{0}")]
    BadQuery(String),

    #[error(
        "key `{key}` is not allowed: {why}; keys are 1..={MAX_KEY_BYTES} bytes of letters, digits, `.`, `_`, `:`, `~` and `-`"
    )]
    BadKey { key: String, why: String },

    #[error("value is larger than the {MAX_VALUE_BYTES}-byte (1 MiB) limit; store a smaller value")]
    ValueTooLarge,

    #[error("cannot read the request body: {0}")]
    BadBody(String),

    #[error("no value under key `{0}`; PUT /kv/{0} first")]
    KeyNotFound(String),

    #[error(
        "no endpoint at `{0}`; this service answers /, /work?iterations=N, /kv/{{key}}, /healthz, /readyz and /load"
    )]
    UnknownPath(String),

    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },

    #[error("the request failed inside the server; see the instance's logs")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadIterations { .. }
            | ApiError::BadQuery(_)
            | ApiError::BadKey { .. }
            | ApiError::BadBody(_) => StatusCode::BAD_REQUEST,
            ApiError::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::KeyNotFound(_) | ApiError::UnknownPath(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Short machine-readable code for the `error` field.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::BadIterations { .. } => "bad_iterations",
            ApiError::BadQuery(_) => "bad_query",
            ApiError::BadKey { .. } => "bad_key",
            ApiError::ValueTooLarge => "value_too_large",
            ApiError::BadBody(_) => "bad_body",
            ApiError::KeyNotFound(_) => "key_not_found",
            ApiError::UnknownPath(_) => "not_found",
            ApiError::MethodNotAllowed { .. } => "method_not_allowed",
            ApiError::Internal => "internal",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code(), "detail": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        if let ApiError::MethodNotAllowed { allow, .. } = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}
