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

use std::borrow::Cow;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use registry::StoreError;
use registry::model::{RetireRequest, Rollout, Route, ScalingPolicy};
use registry::store::{OUTCOME_UNKNOWN, Written};
use registry::wire::admin::{
    Deleted, MAX_RETIRE_REASON_CHARS, PinBody, RetireBody, Retiring, RolloutBody, RouteView,
};
use serde::de::DeserializeOwned;
use serde_json::Value;
use utoipa::openapi::{RefOr, Schema};
use utoipa::{PartialSchema, ToSchema};

use super::body::JsonBody;
use super::params::{Name, ServiceAndId};
use crate::admin::{AdminState, ApiError, ErrorBody};

type Write<T> = Result<(StatusCode, Json<T>), ApiError>;

/// What the store answered that no handler expects as an outcome of its own:
/// bad input (400), an unusable stored value (409), etcd away (503).
pub(super) fn store_error(e: StoreError) -> ApiError {
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
        // The gateway's etcd user lacks the rights: nothing was written.
        StoreError::Denied { what, detail } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_denied",
            format!("the registry (etcd) does not let the gateway's user {what}: {detail}"),
        ),
        e => ApiError::conflict(e.to_string()),
    }
}

pub(super) fn required<T>(body: Option<T>, example: &str) -> Result<T, ApiError> {
    body.ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("send a JSON body with `Content-Type: application/json`, e.g. {example}"),
        )
    })
}

pub(super) fn created_or_updated(written: Written) -> StatusCode {
    match written {
        Written::Replaced => StatusCode::OK,
        Written::Created => StatusCode::CREATED,
    }
}

pub(super) fn deleted(
    existed: bool,
    key: String,
    missing: impl FnOnce() -> String,
) -> Write<Deleted> {
    if !existed {
        return Err(ApiError::not_found(missing()));
    }
    Ok((StatusCode::OK, Json(Deleted { deleted: key })))
}

/// A body naming the object of its path in `field`, which may be left out:
/// filled in from the path, or refused when it says something else. Then
/// decoded as `T`.
pub(super) fn named_body<T: DeserializeOwned>(
    body: Value,
    field: &str,
    name: &str,
    what: &str,
    example: &str,
) -> Result<T, ApiError> {
    let mut body = body;
    let Some(fields) = body.as_object_mut() else {
        return Err(ApiError::bad_request(
            "invalid_json",
            format!("the {what} must be a JSON object, e.g. {example}"),
        ));
    };
    match fields.get(field) {
        None => {
            fields.insert(field.into(), Value::String(name.to_owned()));
        }
        Some(Value::String(s)) if s == name => {}
        Some(other) => {
            return Err(ApiError::bad_request(
                "invalid",
                format!(
                    "{what}.{field}: the body says {other} but the path says `{name}`; make them agree or leave `{field}` out"
                ),
            ));
        }
    }
    serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request("invalid_json", format!("not a {what}: {e}; e.g. {example}"))
    })
}

/// The schema of `T` with `field` no longer required (it comes from the path).
pub(super) fn without_required<T: PartialSchema>(field: &str, description: &str) -> RefOr<Schema> {
    let mut schema = T::schema();
    if let RefOr::T(Schema::Object(object)) = &mut schema {
        object.required.retain(|f| f != field);
        object.description = Some(description.to_owned());
    }
    schema
}

/// The request body of `PUT /api/v1/policies/{service}`: a [`ScalingPolicy`]
/// whose `service` may be left out.
pub struct PolicyBody;

impl PartialSchema for PolicyBody {
    fn schema() -> RefOr<Schema> {
        without_required::<ScalingPolicy>(
            "service",
            "A ScalingPolicy; `service` may be left out (it must match the path if given). \
             Also: `min` <= `max`.",
        )
    }
}

impl ToSchema for PolicyBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("PolicyBody")
    }
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        <ScalingPolicy as ToSchema>::schemas(schemas);
    }
}

/// `PUT /api/v1/routes/{name}`.
#[utoipa::path(put, path = "/api/v1/routes/{name}", tag = "operator",
    params(("name" = String, Path, description = "Route name (letters, digits, `.`, `_`, `-`)")),
    request_body(content = Route, description = "A Route. `consistent-hash` needs `hash_key`.",
        content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = RouteView),
        (status = 200, description = "Replaced", body = RouteView),
        (status = 400, description = "Invalid name, body or route; `detail` names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn put_route(
    State(state): State<AdminState>,
    Name(name): Name,
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
        (status = 400, description = "Invalid name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such route", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn delete_route(State(state): State<AdminState>, Name(name): Name) -> Write<Deleted> {
    let store = state.control.store();
    let existed = store.delete_route(&name).await.map_err(store_error)?;
    deleted(existed, store.keys().route(&name), || {
        format!("no route `{name}` in the registry")
    })
}

const POLICY_EXAMPLE: &str = r#"{"min":1,"max":5,"metric":"inflight","target":4}"#;

/// `PUT /api/v1/policies/{service}`.
#[utoipa::path(put, path = "/api/v1/policies/{service}", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = PolicyBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ScalingPolicy),
        (status = 200, description = "Replaced", body = ScalingPolicy),
        (status = 400, description = "Invalid service, body or policy; `detail` names the field", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn put_policy(
    State(state): State<AdminState>,
    Name(service): Name,
    JsonBody(body): JsonBody<Value>,
) -> Write<ScalingPolicy> {
    let body = required(body, POLICY_EXAMPLE)?;
    let policy: ScalingPolicy = named_body(body, "service", &service, "policy", POLICY_EXAMPLE)?;
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
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such policy", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn delete_policy(State(state): State<AdminState>, Name(service): Name) -> Write<Deleted> {
    let store = state.control.store();
    let existed = store.delete_policy(&service).await.map_err(store_error)?;
    deleted(existed, store.keys().policy(&service), || {
        format!("no scaling policy for `{service}`")
    })
}

/// `PUT /api/v1/services/{service}/pin`.
#[utoipa::path(put, path = "/api/v1/services/{service}/pin", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = PinBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Pinned; the policy as stored", body = ScalingPolicy),
        (status = 400, description = "Invalid service, body or replica count", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "The service has no policy", body = ErrorBody),
        (status = 409, description = "The policy changed meanwhile, or cannot be used; read it and try again", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn pin(
    State(state): State<AdminState>,
    Name(service): Name,
    JsonBody(body): JsonBody<PinBody>,
) -> Write<ScalingPolicy> {
    let body = required(body, r#"{"replicas":3}"#)?;
    set_pin(&state, &service, Some(body.replicas)).await
}

/// `DELETE /api/v1/services/{service}/pin`.
#[utoipa::path(delete, path = "/api/v1/services/{service}/pin", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "Unpinned (or was not pinned); the policy as stored", body = ScalingPolicy),
        (status = 400, description = "Invalid service name", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "The service has no policy", body = ErrorBody),
        (status = 409, description = "The policy changed meanwhile, or cannot be used; try again", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn unpin(State(state): State<AdminState>, Name(service): Name) -> Write<ScalingPolicy> {
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

/// `POST /api/v1/services/{service}/instances/{id}/retire`.
#[utoipa::path(post, path = "/api/v1/services/{service}/instances/{id}/retire", tag = "operator",
    params(("service" = String, Path, description = "Service name"), ("id" = String, Path, description = "Instance id")),
    request_body(content = Option<RetireBody>, description = "Optional", content_type = "application/json"),
    responses(
        (status = 202, description = "The retire key is written; the instance drains and leaves by itself", body = Retiring),
        (status = 400, description = "Bad service, id, body or reason", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "No such registered instance", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn retire(
    State(state): State<AdminState>,
    ServiceAndId(service, id): ServiceAndId,
    JsonBody(body): JsonBody<RetireBody>,
) -> Write<Retiring> {
    let reason = body
        .unwrap_or_default()
        .reason
        .unwrap_or_else(|| "retired through the admin API".to_owned());
    if reason.chars().count() > MAX_RETIRE_REASON_CHARS {
        return Err(ApiError::bad_request(
            "invalid",
            format!("retire.reason: at most {MAX_RETIRE_REASON_CHARS} characters"),
        ));
    }
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

/// `POST /api/v1/services/{service}/rollout`.
#[utoipa::path(post, path = "/api/v1/services/{service}/rollout", tag = "operator",
    params(("service" = String, Path, description = "Service name")),
    request_body(content = Option<RolloutBody>, description = "Optional", content_type = "application/json"),
    responses(
        (status = 202, description = "Requested; the autoscaler replaces every instance and deletes the request when done", body = Rollout),
        (status = 400, description = "Invalid service, body or surge/unavailable (not both 0)", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token", body = ErrorBody),
        (status = 404, description = "The service has no policy (the autoscaler does not manage it)", body = ErrorBody),
        (status = 409, description = "A rollout of the service is already in progress", body = ErrorBody),
        (status = 413, description = "Body over 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not `application/json`", body = ErrorBody),
        (status = 503, description = "etcd unreachable", body = ErrorBody),
    ))]
pub async fn rollout(
    State(state): State<AdminState>,
    Name(service): Name,
    JsonBody(body): JsonBody<RolloutBody>,
) -> Write<Rollout> {
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
