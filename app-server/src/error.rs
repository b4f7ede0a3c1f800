//! The error type at the HTTP edge: every failure a client can cause or see,
//! turned into `{"error": "<code>", "detail": "<what was wrong and how to fix it>"}`
//! with the right status code. Nothing internal leaks into `detail`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::kv::cluster::NotReceived;
use crate::kv::fence::Refusal;
use crate::kv::peers::REFUSED_HEADER;
use crate::kv::store::StorageFailed;
use crate::kv::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::routes::counter::MAX_SESSIONS;
use crate::routes::work::{DEFAULT_ITERATIONS, MAX_ITERATIONS};

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
        "no endpoint at `{0}`; this service answers /, /work?iterations=N, /kv/{{key}}, /counter/{{session}}, /healthz, /readyz and /load"
    )]
    UnknownPath(String),

    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed { method: String, allow: &'static str },

    #[error(
        "`If-Match: {given}` is not a version of this store; use the `ETag` of a GET (e.g. `\"18c2f…-3a1…\"`) or `*`"
    )]
    BadIfMatch { given: String },

    #[error(
        "key `{key}` is at {}, not {given}; GET it again for the current value and `ETag`, then retry",
        current.as_deref().map_or("no value".to_owned(), |c| format!("version \"{c}\""))
    )]
    VersionMismatch {
        key: String,
        current: Option<String>,
        given: String,
    },

    #[error(
        "only {acked} of the {needed} owners needed stored the write to `{key}` ({why}); it may or may not have been kept: retry, or GET to see"
    )]
    TooFewOwners {
        key: String,
        acked: usize,
        needed: usize,
        why: String,
    },

    #[error("the owner of `{key}` did not answer ({why}); retry")]
    OwnerFailed { key: String, why: String },

    #[error(
        "this instance is leaving and stores nothing more; send the copy to the key's next owner"
    )]
    Leaving,

    /// The instance may not coordinate (`kv::fence`); nothing was done.
    #[error(
        "{why}, so another instance may own `{key}` now; nothing was done: retry, and the gateway sends it to an instance that may coordinate it"
    )]
    Refused { key: String, why: Refusal },

    /// The detail says what failed and what to check.
    #[error("{0}; nothing was stored")]
    StorageFailed(String),

    #[error("internal replication call without a valid `x-shoal-kv-version` header")]
    BadVersion,

    #[error("internal replication batch not understood: {0}; nothing was stored")]
    BadBatch(String),

    #[error(
        "this instance already counts {MAX_SESSIONS} sessions and takes no new one; reuse a session or use /kv/{{key}}"
    )]
    TooManySessions,

    #[error("the request failed inside the server; see the instance's logs")]
    Internal,
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadIterations { .. }
            | ApiError::BadQuery(_)
            | ApiError::BadKey { .. }
            | ApiError::BadBody(_)
            | ApiError::BadIfMatch { .. }
            | ApiError::BadVersion
            | ApiError::BadBatch(_) => StatusCode::BAD_REQUEST,
            ApiError::VersionMismatch { .. } => StatusCode::CONFLICT,
            ApiError::TooFewOwners { .. }
            | ApiError::OwnerFailed { .. }
            | ApiError::Leaving
            | ApiError::Refused { .. }
            | ApiError::StorageFailed(_)
            | ApiError::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
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
            ApiError::BadIfMatch { .. } => "bad_if_match",
            ApiError::VersionMismatch { .. } => "version_mismatch",
            ApiError::TooFewOwners { .. } => "too_few_owners",
            ApiError::OwnerFailed { .. } => "owner_unavailable",
            ApiError::Leaving => "leaving",
            ApiError::Refused { why, .. } => why.code(),
            ApiError::StorageFailed(_) => "storage_failed",
            ApiError::TooManySessions => "too_many_sessions",
            ApiError::BadVersion => "bad_version",
            ApiError::BadBatch(_) => "bad_batch",
            ApiError::Internal => "internal",
        }
    }
}

impl From<StorageFailed> for ApiError {
    fn from(e: StorageFailed) -> Self {
        ApiError::StorageFailed(e.to_string())
    }
}

/// A copy a peer sent that this instance did not take.
impl From<NotReceived> for ApiError {
    fn from(e: NotReceived) -> Self {
        match e {
            NotReceived::Leaving => ApiError::Leaving,
            NotReceived::Storage(e) => e.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.code(), "detail": self.to_string() }));
        let mut response = (self.status(), body).into_response();
        match self {
            ApiError::MethodNotAllowed { allow, .. } => {
                response
                    .headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static(allow));
            }
            ApiError::TooFewOwners { .. } | ApiError::OwnerFailed { .. } | ApiError::Leaving => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::Refused { why, .. } => {
                let headers = response.headers_mut();
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                // Nothing was done: any method may be sent again.
                headers.insert(REFUSED_HEADER, HeaderValue::from_static(why.code()));
            }
            _ => {}
        }
        response
    }
}
