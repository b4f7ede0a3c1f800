//! What an operator changes through the admin API. Each handler validates its
//! input with the registry model's own `validate()` (400 with the field and
//! what to fix), then makes one etcd call bounded by `ETCD_CALL_TIMEOUT`
//! (503 when etcd does not answer). Changes that depend on what is stored
//! (pin, retire, rollout) are etcd transactions that compare first, so two
//! operators never overwrite each other unknowingly (409).
//!
//! The gateway does not act on these itself: the autoscaler reads policies,
//! pins and rollouts; an instance drains when its retire key appears; every
//! gateway follows routes.

use std::future::Future;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use registry::RegistryValue;
use registry::config::ETCD_CALL_TIMEOUT;
use registry::keys::validate_segment;
use registry::model::{Rollout, Route, ScalingPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::body::JsonBody;
use super::reads::RouteView;
use crate::admin::{AdminState, ApiError};

type Write<T> = Result<(StatusCode, Json<T>), ApiError>;

/// One etcd call, bounded; a failure or silence is a 503 that says so.
async fn etcd<T>(
    what: &str,
    call: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ApiError> {
    match tokio::time::timeout(ETCD_CALL_TIMEOUT, call).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(ApiError::registry(what, e)),
        Err(_) => Err(ApiError::registry(
            what,
            format!(
                "no answer within {} s (the change may or may not have been made; read it back)",
                ETCD_CALL_TIMEOUT.as_secs()
            ),
        )),
    }
}

fn segment(field: &str, value: &str) -> Result<(), ApiError> {
    validate_segment(field, value).map_err(|e| ApiError::bad_request("invalid", e.to_string()))
}

fn invalid(e: registry::model::ValidationError) -> ApiError {
    ApiError::bad_request("invalid", e.to_string())
}

fn required<T>(body: Option<T>, example: &str) -> Result<T, ApiError> {
    body.ok_or_else(|| {
        ApiError::bad_request(
            "bad_request",
            format!("send a JSON body with `Content-Type: application/json`, e.g. {example}"),
        )
    })
}

fn created_or_updated(existed: bool) -> StatusCode {
    if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
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
    segment("route name", &name)?;
    let route = required(route, r#"{"service":"app","path_prefix":"/api"}"#)?;
    route.validate().map_err(invalid)?;
    let key = state.control.keys().route(&name);
    let json = serde_json::to_string(&route).expect("a Route always serializes");
    let mut client = state.control.client();
    let put = etcd(
        "write the route",
        client.put(key, json, Some(PutOptions::new().with_prev_key())),
    )
    .await?;
    Ok((
        created_or_updated(put.prev_key().is_some()),
        Json(RouteView { name, route }),
    ))
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
    segment("route name", &name)?;
    let key = state.control.keys().route(&name);
    delete(&state, key, &format!("no route `{name}` in the registry")).await
}

async fn delete(state: &AdminState, key: String, missing: &str) -> Write<Deleted> {
    let mut client = state.control.client();
    let deleted = etcd("delete it", client.delete(key.as_str(), None)).await?;
    if deleted.deleted() == 0 {
        return Err(ApiError::not_found(missing));
    }
    Ok((StatusCode::OK, Json(Deleted { deleted: key })))
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
    policy.validate().map_err(invalid)?;
    let key = state.control.keys().policy(&service);
    let json = serde_json::to_string(&policy).expect("a policy always serializes");
    let mut client = state.control.client();
    let put = etcd(
        "write the policy",
        client.put(key, json, Some(PutOptions::new().with_prev_key())),
    )
    .await?;
    Ok((created_or_updated(put.prev_key().is_some()), Json(policy)))
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
    segment("service", &service)?;
    let key = state.control.keys().policy(&service);
    delete(&state, key, &format!("no scaling policy for `{service}`")).await
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
    segment("service", &service)?;
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
    segment("service", &service)?;
    set_pin(&state, &service, None).await
}

/// Read the policy with its mod revision, change `pinned`, write it back only
/// if nobody else wrote it in between.
async fn set_pin(state: &AdminState, service: &str, pinned: Option<u32>) -> Write<ScalingPolicy> {
    let keys = state.control.keys();
    let key = keys.policy(service);
    let mut client = state.control.client();
    let read = etcd("read the policy", client.get(key.as_str(), None)).await?;
    let Some(kv) = read.kvs().first() else {
        return Err(ApiError::not_found(format!(
            "`{service}` has no scaling policy to pin; create one first with PUT /api/v1/policies/{service}"
        )));
    };
    let mut policy = ScalingPolicy::decode(keys, &key, kv.value()).map_err(|e| {
        ApiError::conflict(format!(
            "the stored policy cannot be used ({e}); replace it with PUT /api/v1/policies/{service}"
        ))
    })?;
    if policy.pinned == pinned {
        return Ok((StatusCode::OK, Json(policy)));
    }
    policy.pinned = pinned;
    policy.validate().map_err(invalid)?;
    let json = serde_json::to_string(&policy).expect("a policy always serializes");
    let txn = Txn::new()
        .when([Compare::mod_revision(
            key.as_str(),
            CompareOp::Equal,
            kv.mod_revision(),
        )])
        .and_then([TxnOp::put(key.as_str(), json, None)]);
    let written = etcd("write the policy", client.txn(txn)).await?;
    if !written.succeeded() {
        return Err(ApiError::conflict(format!(
            "the policy for `{service}` changed while it was being updated; read it again and retry"
        )));
    }
    Ok((StatusCode::OK, Json(policy)))
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
    segment("service", &service)?;
    segment("instance id", &id)?;
    let reason = body
        .unwrap_or_default()
        .reason
        .unwrap_or_else(|| "retired through the admin API".to_owned());
    if reason.len() > 1024 || reason.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "invalid",
            "reason: at most 1024 bytes of text without control characters",
        ));
    }
    let keys = state.control.keys();
    let instance = keys.instance(&service, &id);
    let key = keys.retire(&service, &id);
    let value = serde_json::json!({"reason": reason, "by": "api"}).to_string();
    // Only while the instance is registered: a retire key for nobody would
    // wait for an instance that never comes.
    let txn = Txn::new()
        .when([Compare::version(instance.as_str(), CompareOp::Greater, 0)])
        .and_then([TxnOp::put(key.as_str(), value, None)]);
    let mut client = state.control.client();
    let written = etcd("write the retire key", client.txn(txn)).await?;
    if !written.succeeded() {
        return Err(ApiError::not_found(format!(
            "no registered instance `{id}` of `{service}`; GET /api/v1/services/{service} lists them"
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Retiring {
            service,
            id,
            key,
            reason,
        }),
    ))
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
    rollout.validate().map_err(invalid)?;
    let keys = state.control.keys();
    let key = keys.rollout(&service);
    let policy = keys.policy(&service);
    let json = serde_json::to_string(&rollout).expect("a rollout always serializes");
    let txn = Txn::new()
        .when([
            Compare::version(policy.as_str(), CompareOp::Greater, 0),
            Compare::version(key.as_str(), CompareOp::Equal, 0),
        ])
        .and_then([TxnOp::put(key.as_str(), json, None)])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let mut client = state.control.client();
    let written = etcd("write the rollout request", client.txn(txn)).await?;
    if written.succeeded() {
        return Ok((StatusCode::ACCEPTED, Json(rollout)));
    }
    let existing = written.op_responses().into_iter().find_map(|r| match r {
        etcd_client::TxnOpResponse::Get(get) => get.kvs().first().map(|kv| kv.value().to_vec()),
        _ => None,
    });
    match existing {
        Some(value) => {
            let since = Rollout::decode(keys, &key, &value)
                .map(|r| {
                    format!(
                        " (requested by {} at {})",
                        r.requested_by,
                        r.requested_at.to_rfc3339()
                    )
                })
                .unwrap_or_default();
            Err(ApiError::conflict(format!(
                "a rollout of `{service}` is already in progress{since}; wait for it to finish \
                 (GET /api/v1/rollouts)"
            )))
        }
        None => Err(ApiError::not_found(format!(
            "`{service}` has no scaling policy, so the autoscaler does not manage it and nobody would \
             carry the rollout out; create one with PUT /api/v1/policies/{service}"
        ))),
    }
}
