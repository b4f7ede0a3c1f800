//! What an operator changes through the admin API. Each handler calls one
//! operation of the registry store ([`registry::store::Store`]), which
//! validates the input with the model's own `validate()` (400 with the field
//! and what to fix), bounds the etcd call (503 when etcd does not answer)
//! and makes the changes that depend on what is stored (pin, retire,
//! rollout) compare-first transactions, so two operators never overwrite
//! each other unknowingly (409).
//!
//! The gateway does not act on these itself: the autoscaler reads policies,
//! pins and rollouts; an instance drains when its retire key appears; every
//! gateway follows routes.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use registry::StoreError;
use registry::keys::validate_segment;
use registry::model::{RetireRequest, Rollout, Route, ScalingPolicy};
use registry::store::{OUTCOME_UNKNOWN, Written};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::body::JsonBody;
use super::reads::RouteView;
use crate::admin::{AdminState, ApiError};

type Write<T> = Result<(StatusCode, Json<T>), ApiError>;

/// What the store answered that no handler expects as an outcome of its own:
/// bad input (400), an unusable stored value (409), etcd away (503).
fn store_error(e: StoreError) -> ApiError {
    match e {
        StoreError::Invalid(e) => ApiError::bad_request("invalid", e.to_string()),
        StoreError::Malformed(e) => ApiError::conflict(format!(
            "a stored value this change depends on cannot be used ({e}); replace it with a PUT"
        )),
        StoreError::Unavailable {
            what,
            detail,
            write,
        } => ApiError::registry(
            what,
            if write {
                format!("{detail} ({OUTCOME_UNKNOWN})")
            } else {
                detail
            },
        ),
        StoreError::Refused { what, detail } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_refused",
            format!("the registry (etcd) refused to {what}: {detail}"),
        ),
        e => ApiError::conflict(e.to_string()),
    }
}

fn segment(field: &str, value: &str) -> Result<(), ApiError> {
    validate_segment(field, value).map_err(|e| ApiError::bad_request("invalid", e.to_string()))
}

fn required<T>(body: Option<T>, example: &str) -> Result<T, ApiError> {
    body.ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("send a JSON body with `Content-Type: application/json`, e.g. {example}"),
        )
    })
}

fn created_or_updated(written: Written) -> StatusCode {
    match written {
        Written::Replaced => StatusCode::OK,
        Written::Created => StatusCode::CREATED,
    }
}

fn deleted(existed: bool, key: String, missing: impl FnOnce() -> String) -> Write<Deleted> {
    if !existed {
        return Err(ApiError::not_found(missing()));
    }
    Ok((StatusCode::OK, Json(Deleted { deleted: key })))
}

/// What a delete answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Deleted {
    /// The registry key removed.
    pub deleted: String,
}

/// `PUT /api/v1/routes/{name}`.
#[utoipa::path(put, path = "/api/v1/routes/{name}", tag = "operator",
    params(("name" = String, Path, description = "Route name (letters, digits, `.`, `_`, `-`)")),
    request_body(content = Object, description = "A Route: `service` (required), `path_prefix` (default `/`), \
        `host`, `policy` (round-robin | least-request | consistent-hash | sticky), `hash_key`, `strip_prefix`, \
        `timeout_ms`, `try_timeout_ms`, `retries`", content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = RouteView),
        (status = 200, description = "Replaced", body = RouteView),
        (status = 400, description = "Invalid name or route; `detail` names the field", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn put_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    JsonBody(route): JsonBody<Route>,
) -> Write<RouteView> {
    let route = required(route, r#"{"service":"app","path_prefix":"/api"}"#)?;
    let written = state
        .control
        .store()
        .put_route(&name, &route)
        .await
        .map_err(store_error)?;
    Ok((created_or_updated(written), Json(RouteView { name, route })))
}

/// `DELETE /api/v1/routes/{name}`.
#[utoipa::path(delete, path = "/api/v1/routes/{name}", tag = "operator",
    params(("name" = String, Path, description = "Route name")),
    responses(
        (status = 200, description = "Deleted", body = Deleted),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such route", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn delete_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Write<Deleted> {
    let store = state.control.store();
    let existed = store.delete_route(&name).await.map_err(store_error)?;
    deleted(existed, store.keys().route(&name), || {
        format!("no route `{name}` in the registry")
    })
}

/// `PUT /api/v1/policies/{service}`.
#[utoipa::path(put, path = "/api/v1/policies/{service}", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = Object, description = "A ScalingPolicy: `min`, `max`, `metric` (inflight | rps | \
        p95-latency | cpu), `target`, and optionally `tolerance`, `scale_up_stabilization_secs`, \
        `scale_down_stabilization_secs`, `max_scale_up_step`, `max_scale_down_step`, `step_period_secs`, \
        `warmup_secs`, `pinned`. `service` may be omitted; if present it must match the path.",
        content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = Object),
        (status = 200, description = "Replaced", body = Object),
        (status = 400, description = "Invalid policy; `detail` names the field", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn put_policy(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    JsonBody(body): JsonBody<Value>,
) -> Write<ScalingPolicy> {
    segment("service", &service)?;
    let mut body = required(body, r#"{"min":1,"max":5,"metric":"inflight","target":4}"#)?;
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the policy must be a JSON object",
        ));
    };
    match fields.get("service") {
        None => {
            fields.insert("service".into(), Value::String(service.clone()));
        }
        Some(Value::String(s)) if *s == service => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid",
                format!(
                    "policy.service: the body says {other} but the path says `{service}`; make them agree or leave `service` out"
                ),
            ));
        }
    }
    let policy: ScalingPolicy = serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(
            "invalid_json",
            format!("not a scaling policy: {e}; e.g. {{\"min\":1,\"max\":5,\"metric\":\"inflight\",\"target\":4}}"),
        )
    })?;
    let written = state
        .control
        .store()
        .put_policy(&policy)
        .await
        .map_err(store_error)?;
    Ok((created_or_updated(written), Json(policy)))
}

/// `DELETE /api/v1/policies/{service}`.
#[utoipa::path(delete, path = "/api/v1/policies/{service}", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "Deleted; the autoscaler stops managing the service", body = Deleted),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such policy", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn delete_policy(
    State(state): State<AdminState>,
    Path(service): Path<String>,
) -> Write<Deleted> {
    let store = state.control.store();
    let existed = store.delete_policy(&service).await.map_err(store_error)?;
    deleted(existed, store.keys().policy(&service), || {
        format!("no scaling policy for `{service}`")
    })
}

/// Body of `PUT .../pin`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinBody {
    /// The replica count to hold (0..=1000); replaces the metric's answer.
    pub replicas: u32,
}

/// `PUT /api/v1/services/{service}/pin`.
#[utoipa::path(put, path = "/api/v1/services/{service}/pin", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = PinBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Pinned; the policy as stored", body = Object),
        (status = 400, description = "Invalid replica count", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "The service has no policy", body = crate::admin::ErrorBody),
        (status = 409, description = "The policy changed meanwhile; read it and try again", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn pin(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    JsonBody(body): JsonBody<PinBody>,
) -> Write<ScalingPolicy> {
    let body = required(body, r#"{"replicas":3}"#)?;
    set_pin(&state, &service, Some(body.replicas)).await
}

/// `DELETE /api/v1/services/{service}/pin`.
#[utoipa::path(delete, path = "/api/v1/services/{service}/pin", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "Unpinned (or was not pinned); the policy as stored", body = Object),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "The service has no policy", body = crate::admin::ErrorBody),
        (status = 409, description = "The policy changed meanwhile; try again", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn unpin(
    State(state): State<AdminState>,
    Path(service): Path<String>,
) -> Write<ScalingPolicy> {
    set_pin(&state, &service, None).await
}

/// Set or clear the pin: a compare-and-set on the policy's revision.
async fn set_pin(state: &AdminState, service: &str, pinned: Option<u32>) -> Write<ScalingPolicy> {
    match state.control.store().set_pin(service, pinned).await {
        Ok(change) => Ok((StatusCode::OK, Json(change.policy))),
        Err(StoreError::NoPolicy { .. }) => Err(ApiError::not_found(format!(
            "`{service}` has no scaling policy to pin; create one first with PUT /api/v1/policies/{service}"
        ))),
        Err(StoreError::Conflict { .. }) => Err(ApiError::conflict(format!(
            "the policy for `{service}` changed while it was being updated; read it again and retry"
        ))),
        Err(StoreError::Malformed(e)) => Err(ApiError::conflict(format!(
            "the stored policy cannot be used ({e}); replace it with PUT /api/v1/policies/{service}"
        ))),
        Err(e) => Err(store_error(e)),
    }
}

/// Optional body of `POST .../retire`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetireBody {
    /// Why, for the logs (default "retired through the admin API").
    pub reason: Option<String>,
}

/// What a retire answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Retiring {
    pub service: String,
    pub id: String,
    /// The retire key written.
    pub key: String,
    pub reason: String,
}

/// `POST /api/v1/services/{service}/instances/{id}/retire`.
#[utoipa::path(post, path = "/api/v1/services/{service}/instances/{id}/retire", tag = "operator",
    params(("service" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    request_body(content = Option<RetireBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "The retire key is written; the instance drains and leaves by itself", body = Retiring),
        (status = 400, description = "Bad service, id or reason", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "No such registered instance", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn retire(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
    JsonBody(body): JsonBody<RetireBody>,
) -> Write<Retiring> {
    let reason = body
        .unwrap_or_default()
        .reason
        .unwrap_or_else(|| "retired through the admin API".to_owned());
    let request = RetireRequest::new(reason, Some("api"));
    let store = state.control.store();
    match store.retire(&service, &id, &request).await {
        Ok(()) => Ok((
            StatusCode::ACCEPTED,
            Json(Retiring {
                key: store.keys().retire(&service, &id),
                service,
                id,
                reason: request.reason,
            }),
        )),
        Err(StoreError::NotRegistered { .. }) => Err(ApiError::not_found(format!(
            "no registered instance `{id}` of `{service}`; GET /api/v1/services/{service} lists them"
        ))),
        Err(e) => Err(store_error(e)),
    }
}

/// Optional body of `POST .../rollout`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutBody {
    /// New instances started beyond the desired count at a time (default 1).
    pub max_surge: Option<u32>,
    /// Old instances retired before their replacement is ready (default 0).
    pub max_unavailable: Option<u32>,
}

/// `POST /api/v1/services/{service}/rollout`.
#[utoipa::path(post, path = "/api/v1/services/{service}/rollout", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = Option<RolloutBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "Requested; the autoscaler replaces every instance and deletes the request when done", body = Object),
        (status = 400, description = "Invalid surge/unavailable", body = crate::admin::ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = crate::admin::ErrorBody),
        (status = 404, description = "The service has no policy (the autoscaler does not manage it)", body = crate::admin::ErrorBody),
        (status = 409, description = "A rollout of the service is already in progress", body = crate::admin::ErrorBody),
        (status = 503, description = "etcd unreachable", body = crate::admin::ErrorBody),
    ))]
pub async fn rollout(
    State(state): State<AdminState>,
    Path(service): Path<String>,
    JsonBody(body): JsonBody<RolloutBody>,
) -> Write<Rollout> {
    segment("service", &service)?;
    let body = body.unwrap_or_default();
    let mut rollout = Rollout::request(service.clone(), "api");
    if let Some(n) = body.max_surge {
        rollout.max_surge = n;
    }
    if let Some(n) = body.max_unavailable {
        rollout.max_unavailable = n;
    }
    match state.control.store().request_rollout(&rollout).await {
        Ok(()) => Ok((StatusCode::ACCEPTED, Json(rollout))),
        Err(StoreError::RolloutInProgress(existing)) => Err(ApiError::conflict(format!(
            "a rollout of `{service}` is already in progress (requested by {} at {}); wait for it to finish \
             (GET /api/v1/rollouts)",
            existing.requested_by,
            existing.requested_at.to_rfc3339()
        ))),
        Err(StoreError::NoPolicy { .. }) => Err(ApiError::not_found(format!(
            "`{service}` has no scaling policy, so the autoscaler does not manage it and nobody would \
             carry the rollout out; create one with PUT /api/v1/policies/{service}"
        ))),
        Err(e) => Err(store_error(e)),
    }
}
