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
//!
//! And `GET /_shoal/kv-stream` with `Upgrade: shoal-kv-stream/1`: the
//! connection becomes a link (`kv::link`) whose frames are batches,
//! answered in order with the status the batch endpoint would give.

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::{debug, warn};

use crate::error::ApiError;
use crate::kv::peers::{OWNERS_HEADER, TOMBSTONE_HEADER, VERSION_HEADER, header_version};
use crate::kv::store::{Applied, Entry};
use crate::kv::{Kv, MAX_VALUE_BYTES, batch, link};
use crate::routes::body::LimitedBody;
use crate::routes::kv::key;
use crate::state::AppState;

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let entry = state.kv().local(&key).ok_or(ApiError::KeyNotFound(key))?;
    let tombstone = entry.is_tombstone();
    let version = entry.version.header_value();
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
    body: Result<LimitedBody<MAX_VALUE_BYTES>, ApiError>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let version = header_version(&headers).ok_or(ApiError::BadVersion)?;
    let LimitedBody(body) = body?;
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
    body: Result<LimitedBody<{ batch::MAX_BATCH_BYTES }>, ApiError>,
) -> Result<Response, ApiError> {
    let LimitedBody(body) = body?;
    let kv = state.kv();
    let (count, stored) = receive_batch(kv, &body)?;
    // One flush for the whole batch (group commit across its copies).
    kv.durable().await?;
    Ok(Json(json!({ "copies": count, "stored": stored })).into_response())
}

/// Keep each copy of a batch body that is newer than this instance's;
/// (copies, copies stored). Not flushed yet.
fn receive_batch(kv: &Kv, body: &[u8]) -> Result<(usize, usize), ApiError> {
    let copies = batch::decode(body).map_err(|e| ApiError::BadBatch(e.to_string()))?;
    let count = copies.len();
    let mut stored = 0;
    for copy in copies {
        let applied = kv.receive(&copy.key, copy.entry, &copy.owners)?;
        stored += (applied == Applied::Stored) as usize;
    }
    Ok((count, stored))
}

/// Switch the connection to a link (`kv::link`), served by [`serve_link`].
pub async fn stream(State(state): State<AppState>, mut request: Request) -> Response {
    let asks_for_link = request
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|protocol| protocol == link::PROTOCOL);
    if !asks_for_link {
        let why = format!(
            "{} needs `Connection: upgrade` and `Upgrade: {}`",
            link::PATH,
            link::PROTOCOL
        );
        return ApiError::BadBatch(why).into_response();
    }
    let upgrade = hyper::upgrade::on(&mut request);
    let kv = state.kv().clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => serve_link(&kv, TokioIo::new(upgraded)).await,
            Err(e) => debug!(error = %e, "a link upgrade did not complete"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, link::PROTOCOL)
        .body(Body::empty())
        .expect("a response with these parts always builds")
}

/// One frame's batch received: the status it is answered with, unless the flush fails.
fn receive_frame(kv: &Kv, body: &[u8]) -> Result<(), StatusCode> {
    receive_batch(kv, body).map(drop).map_err(|e| {
        if e.status() == StatusCode::BAD_REQUEST {
            warn!(error = %e, "a peer sent a batch that is not valid");
        }
        e.status()
    })
}

/// Store the frames of a link as they come and answer each in order: the
/// frames read together are flushed once (`--durability fsync`) and
/// answered in one write. Ends when the sender closes the link or sends
/// something that is not a frame.
async fn serve_link(kv: &Kv, mut io: impl AsyncRead + AsyncWrite + Unpin) {
    let mut buffer = BytesMut::new();
    let mut received = Vec::new();
    let mut answers = Vec::new();
    loop {
        loop {
            match link::next_frame(&mut buffer) {
                Ok(Some(body)) => received.push(receive_frame(kv, &body)),
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "closing a link from a peer");
                    return;
                }
            }
        }
        if !received.is_empty() {
            let flushed = match received.iter().any(Result::is_ok) {
                true => kv.durable().await.map_err(|e| {
                    warn!(error = %e, "copies from a peer were not flushed");
                    ApiError::from(e).status()
                }),
                false => Ok(()),
            };
            for outcome in received.drain(..) {
                let status = outcome.and(flushed).err().unwrap_or(StatusCode::OK);
                link::encode_answer(status, &mut answers);
            }
            if io.write_all(&answers).await.is_err() {
                return;
            }
            answers.clear();
        }
        buffer.reserve(64 << 10);
        match io.read_buf(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
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
