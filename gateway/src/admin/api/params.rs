//! Path and query parameters of the admin API, with errors in the API's
//! `{"error","detail"}` shape: axum's own `Path` and `Query` extractors
//! answer a bad segment or query string in plain text.
//!
//! Path segments that name a registry object (a service, a route, an
//! instance) are also checked against the registry's key rules here, so
//! every endpoint refuses `a b` or `..` the same way (400 `invalid`).

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use registry::keys::validate_segment;
use serde::de::DeserializeOwned;

use crate::admin::ApiError;

/// The pattern of a registry name segment (what
/// `registry::keys::validate_segment` accepts), for the OpenAPI document.
pub const SEGMENT_PATTERN: &str = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$";

/// `Path<T>` answering JSON errors.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(t)| ApiPath(t))
            .map_err(|e| {
                ApiError::bad_request(
                    "bad_request",
                    format!("bad path parameter: {}", e.body_text()),
                )
            })
    }
}

/// `Query<T>` answering JSON errors.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(t)| ApiQuery(t))
            .map_err(|e| {
                ApiError::bad_request(
                    "bad_request",
                    format!(
                        "bad query string `{}`: {}",
                        parts.uri.query().unwrap_or_default(),
                        e.body_text()
                    ),
                )
            })
    }
}

/// One registry name from the path (`{service}`, `{name}`), checked.
pub struct Name(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Name {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath(name) = ApiPath::<String>::from_request_parts(parts, state).await?;
        segment(&name)?;
        Ok(Name(name))
    }
}

/// `{service}` and `{id}` from the path, checked.
pub struct ServiceAndId(pub String, pub String);

impl<S: Send + Sync> FromRequestParts<S> for ServiceAndId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath((service, id)) =
            ApiPath::<(String, String)>::from_request_parts(parts, state).await?;
        segment(&service)?;
        segment(&id)?;
        Ok(ServiceAndId(service, id))
    }
}

fn segment(value: &str) -> Result<(), ApiError> {
    validate_segment("path", value).map_err(|e| {
        ApiError::bad_request(
            "invalid",
            format!("{e} (a name in the path is 1 to 128 of letters, digits, `.`, `_`, `-`)"),
        )
    })
}
