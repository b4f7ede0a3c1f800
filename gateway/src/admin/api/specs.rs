//! Service specs through the admin API (`/api/v1/services/{service}/spec`):
//! read the stored [`Service`] with its version, put a new one (validated;
//! the one it replaces goes to the spec history), delete it, list the
//! history, and undo (the newest earlier spec back). Each is one operation
//! of the registry store; the autoscaler rolls instances onto a new
//! version by itself.
//!
//! Reads here go to the store (bounded and retried), not to a watcher:
//! specs are read one at a time and rarely.

use std::borrow::Cow;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use registry::StoreError;
use registry::spec::Service;
use registry::store::{ServiceChange, Written};
use registry::wire::admin::{Deleted, SpecChange, SpecHistoryEntry, SpecView, SpecWritten};
use serde_json::Value;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::body::JsonBody;
use super::params::Name;
use super::writes::{deleted, named_body, required, store_error, without_required};
use crate::admin::{AdminState, ApiError, ErrorBody};

const SPEC_EXAMPLE: &str = r#"{"process":{"argv":["node","server.js","{port}"]}}"#;

/// The request body of `PUT .../spec`: a [`Service`] whose `name` may be
/// left out.
pub struct SpecBody;

impl PartialSchema for SpecBody {
    fn schema() -> RefOr<Schema> {
        without_required::<Service>(
            "name",
            "A Service spec; `name` may be left out (it must match the path if given). \
             Also: `process` or `docker` (at least one); a process gets its port by `{port}` \
             in argv or `port_env`.",
        )
    }
}

impl ToSchema for SpecBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("SpecBody")
    }
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <Service as ToSchema>::schemas(schemas);
    }
}

fn no_spec(service: &str) -> ApiError {
    ApiError::not_found(format!(
        "`{service}` has no service spec; declare one with PUT /api/v1/services/{service}/spec"
    ))
}

fn change(service: String, change: ServiceChange) -> SpecChange {
    let written = match change.written {
        _ if change.unchanged() => SpecWritten::Unchanged,
        Written::Created => SpecWritten::Created,
        Written::Replaced => SpecWritten::Replaced,
    };
    SpecChange {
        service,
        written,
        previous: change.previous,
        version: change.version,
    }
}

/// `GET /api/v1/services/{service}/spec`.
#[utoipa::path(get, path = "/api/v1/services/{service}/spec", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The stored spec and its version", body = SpecView),
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 404, description = "The service has no spec", body = ErrorBody),
        (status = 409, description = "The stored spec cannot be decoded; replace it with a PUT", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn get_spec(
    State(state): State<AdminState>,
    Name(service): Name,
) -> Result<Json<SpecView>, ApiError> {
    let stored = state
        .control
        .store()
        .service(&service)
        .await
        .map_err(store_error)?
        .ok_or_else(|| no_spec(&service))?;
    Ok(Json(SpecView {
        version: stored.value.version(),
        spec: stored.value,
    }))
}

/// `PUT /api/v1/services/{service}/spec`.
#[utoipa::path(put, path = "/api/v1/services/{service}/spec", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = SpecBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = SpecChange),
        (status = 200, description = "Replaced (the previous spec is in the history) or unchanged", body = SpecChange),
        (status = 400, description = "Invalid service, body or spec; `detail` names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 409, description = "The spec changed meanwhile; read it and try again", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn put_spec(
    State(state): State<AdminState>,
    Name(service): Name,
    JsonBody(body): JsonBody<Value>,
) -> Result<(StatusCode, Json<SpecChange>), ApiError> {
    let body = required(body, SPEC_EXAMPLE)?;
    let spec: Service = named_body(body, "name", &service, "service", SPEC_EXAMPLE)?;
    let written = state
        .control
        .store()
        .put_service(&spec)
        .await
        .map_err(|e| match e {
            StoreError::Conflict { .. } => ApiError::conflict(format!(
                "the spec of `{service}` changed while it was being written; read it again and retry"
            )),
            e => store_error(e),
        })?;
    let status = if written.written == Written::Created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(change(service, written))))
}

/// `DELETE /api/v1/services/{service}/spec`.
#[utoipa::path(delete, path = "/api/v1/services/{service}/spec", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "Deleted, with its history; the autoscaler runs the service with its default command", body = Deleted),
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "The service has no spec", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn delete_spec(
    State(state): State<AdminState>,
    Name(service): Name,
) -> Result<(StatusCode, Json<Deleted>), ApiError> {
    let store = state.control.store();
    let existed = store.delete_service(&service).await.map_err(store_error)?;
    deleted(existed, store.keys().service(&service), || {
        format!("`{service}` has no service spec")
    })
}

/// `GET /api/v1/services/{service}/spec/history`.
#[utoipa::path(get, path = "/api/v1/services/{service}/spec/history", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The earlier specs, newest first (empty without any)", body = Vec<SpecHistoryEntry>),
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 409, description = "A stored spec cannot be decoded", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn spec_history(
    State(state): State<AdminState>,
    Name(service): Name,
) -> Result<Json<Vec<SpecHistoryEntry>>, ApiError> {
    let history = state
        .control
        .store()
        .service_history(&service)
        .await
        .map_err(store_error)?;
    Ok(Json(
        history
            .into_iter()
            .map(|(seq, spec)| SpecHistoryEntry {
                seq,
                version: spec.version(),
                spec,
            })
            .collect(),
    ))
}

/// `POST /api/v1/services/{service}/spec/undo`.
#[utoipa::path(post, path = "/api/v1/services/{service}/spec/undo", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The newest earlier spec is back; the one it replaced is in the history", body = SpecChange),
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "The service has no spec", body = ErrorBody),
        (status = 409, description = "No earlier spec to go back to, or the spec changed meanwhile", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn undo_spec(
    State(state): State<AdminState>,
    Name(service): Name,
) -> Result<Json<SpecChange>, ApiError> {
    let undone = state
        .control
        .store()
        .undo_service(&service)
        .await
        .map_err(|e| match e {
            StoreError::NoService { .. } => no_spec(&service),
            StoreError::NothingToUndo { .. } => ApiError::conflict(format!(
                "`{service}` has no earlier spec to go back to: it has not changed since it was declared \
                 (GET /api/v1/services/{service}/spec/history)"
            )),
            StoreError::Conflict { .. } => ApiError::conflict(format!(
                "the spec of `{service}` changed while it was being rolled back; try again"
            )),
            e => store_error(e),
        })?;
    Ok(Json(change(service, undone)))
}
