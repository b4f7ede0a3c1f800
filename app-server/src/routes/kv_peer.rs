//! `/_shoal/kv/{key}`: the internal endpoints instances of one service use
//! among themselves to replicate, repair and hand off key-value entries.
//! Not for clients (they use `/kv/{key}`), and not counted as load.
//!
//! - `GET`: the local entry with its version (`x-shoal-kv-version`) and
//!   `x-shoal-kv-tombstone: 1` for a tombstone; 404 if there is none.
//! - `PUT`: keep this copy if it is newer; 200 either way (the sender only
//!   needs to know this instance holds that version or a newer one); 503 if
//!   this instance is leaving.
//! - `DELETE` with `x-shoal-kv-version`: forget that tombstone version.
//!
//! And `POST /_shoal/kv-batch`: many copies in one body (`kv::batch` has
//! its format), each kept if newer, then one flush and one answer: 200,
//! 503 if this instance is leaving (nothing stored) or could not store
//! them, 400 if the body is not a valid batch (nothing stored).

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::kv::batch;
use crate::kv::peers::{OWNERS_HEADER, TOMBSTONE_HEADER, VERSION_HEADER, header_version};
use crate::kv::store::{Applied, Entry};
use crate::routes::kv::{body_error, key};
use crate::state::AppState;

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let entry = state.kv().local(&key).ok_or(ApiError::KeyNotFound(key))?;
    let tombstone = entry.is_tombstone();
    let version = HeaderValue::from_str(&entry.version.to_string()).expect("a version is ASCII");
    let mut response = entry.value.unwrap_or_default().into_response();
    response.headers_mut().insert(VERSION_HEADER, version);
    if tombstone {
        response
            .headers_mut()
            .insert(TOMBSTONE_HEADER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

pub async fn put(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let version = header_version(&headers).ok_or(ApiError::BadVersion)?;
    let body = body.map_err(body_error)?;
    let value = (!headers.contains_key(TOMBSTONE_HEADER)).then_some(body);
    let owners = headers
        .get(OWNERS_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let applied = state.kv().receive(&key, Entry { version, value }, owners)?;
    // The sender counts this copy towards W only once it is held as
    // `--durability` says (already on the disk when it was not newer).
    state.kv().durable().await?;
    Ok(Json(json!({ "stored": applied == Applied::Stored })).into_response())
}

pub async fn batch(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(body_error)?;
    let copies = batch::decode(&body).map_err(|e| ApiError::BadBatch(e.to_string()))?;
    let kv = state.kv();
    let count = copies.len();
    let mut stored = 0;
    for copy in copies {
        let applied = kv.receive(&copy.key, copy.entry, &copy.owners)?;
        stored += (applied == Applied::Stored) as usize;
    }
    // One flush for the whole batch (group commit across its copies).
    kv.durable().await?;
    Ok(Json(json!({ "copies": count, "stored": stored })).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let version = header_version(&headers).ok_or(ApiError::BadVersion)?;
    let purged = state.kv().purge(&key, version);
    Ok(Json(json!({ "purged": purged })).into_response())
}
