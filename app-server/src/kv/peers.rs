//! Calls from one instance to another: the internal replication endpoints
//! (`/_shoal/kv/{key}`, see `routes::kv_peer`) and forwarding a client's
//! request to the key's primary.
//!
//! Copies for the other owners go in batches ([`super::batch`]), on a
//! long-lived link per peer ([`super::link`]).
//!
//! One pooled HTTP/1.1 client (reqwest) with short timeouts: a peer that
//! does not connect within [`CONNECT_TIMEOUT`] is treated like a refused one
//! (marked down by the caller), and no call waits longer than
//! [`CALL_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use bytes::Bytes;

use super::batch::{self, BatchRefused, Batches};
use super::membership::Member;
use super::store::Entry;
use super::version::Version;

pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The entry's version, on internal calls and responses.
pub const VERSION_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-version");
/// `1` on an internal call or response that carries a tombstone.
pub const TOMBSTONE_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-tombstone");
/// The owner ids (primary first) the writer sends a copy to.
pub const OWNERS_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-owners");
/// Set on a client request forwarded to the primary: handle it, never forward again.
pub const FORWARDED_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-forwarded-by");
/// On a request a primary without its lease hands over to the key's
/// successor: the handing instance's id ([`crate::kv::Coordination`]).
pub const HANDOVER_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-handed-over-by");
/// On a 503 answer that did nothing at all (`lease_lost`): why. A client
/// or gateway may send any method again.
pub const REFUSED_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-refused");
/// On a response: the instance that coordinated the request.
pub const PRIMARY_HEADER: HeaderName = HeaderName::from_static("x-shoal-kv-primary");

/// Why a call to a peer did not give an answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// Not there (refused, no connection in time) or leaving: skip it as an owner.
    #[error("{id} is unreachable or leaving: {why}")]
    Unavailable { id: String, why: String },
    /// The connection broke before an answer (reset, closed): the peer may
    /// have died meanwhile (then a new connection is refused) or may have
    /// acted on the call.
    #[error("{id} closed the connection before answering: {why}")]
    Reset { id: String, why: String },
    #[error("{id} failed: {why}")]
    Failed { id: String, why: String },
}

/// A forwarded request's answer, passed back to the client as is.
#[derive(Debug)]
pub struct Forwarded {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

#[derive(Debug, Clone)]
pub struct Peers {
    http: reqwest::Client,
    batches: Arc<Batches>,
}

impl Default for Peers {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT)
            .pool_idle_timeout(Duration::from_secs(30))
            .tcp_nodelay(true)
            .no_proxy()
            .build()
            .expect("a client with these settings always builds");
        Peers {
            http,
            batches: Arc::default(),
        }
    }
}

impl Peers {
    /// The peer's copy of `key` (a tombstone included), or `None` if it has none.
    pub async fn fetch(&self, peer: &Member, key: &str) -> Result<Option<Entry>, PeerError> {
        let response = self
            .http
            .get(internal_url(peer, key))
            .send()
            .await
            .map_err(|e| error(peer, e))?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            StatusCode::OK => {
                let version = header_version(response.headers())
                    .ok_or_else(|| failed(peer, "answered without a valid version header"))?;
                let tombstone = response.headers().contains_key(TOMBSTONE_HEADER);
                let body = response.bytes().await.map_err(|e| error(peer, e))?;
                Ok(Some(Entry {
                    version,
                    value: (!tombstone).then_some(body),
                }))
            }
            status => Err(status_error(&peer.id, status)),
        }
    }

    /// Give the peer a copy of `entry` (it keeps the newer of its own and
    /// this), in a batch with the other copies on their way to it.
    pub async fn push(
        &self,
        peer: &Member,
        key: &str,
        entry: &Entry,
        owners: &str,
    ) -> Result<(), PeerError> {
        batch::push(self, peer, key, entry, owners).await
    }

    pub(super) fn batches(&self) -> &Arc<Batches> {
        &self.batches
    }

    /// Send one batch body ([`batch::PATH`]).
    pub(super) async fn send_batch(&self, peer: &Member, body: Bytes) -> Result<(), BatchRefused> {
        let response = self
            .http
            .post(format!("http://{}{}", peer.addr, batch::PATH))
            .header(axum::http::header::CONTENT_TYPE, "application/octet-stream")
            .body(body)
            .send()
            .await
            .map_err(|e| BatchRefused::Peer(error(peer, e)))?;
        match response.status() {
            StatusCode::OK => Ok(()),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED => {
                Err(BatchRefused::NotUnderstood)
            }
            status => Err(BatchRefused::Peer(status_error(&peer.id, status))),
        }
    }

    /// One copy in a request of its own (`PUT /_shoal/kv/{key}`), for a
    /// peer without the batch endpoint.
    pub(super) async fn push_one(
        &self,
        peer: &Member,
        key: &str,
        entry: &Entry,
        owners: &str,
    ) -> Result<(), PeerError> {
        let mut request = self
            .http
            .put(internal_url(peer, key))
            .header(VERSION_HEADER, entry.version.header_value())
            .header(OWNERS_HEADER, owners);
        request = match &entry.value {
            Some(value) => request.body(value.clone()),
            None => request.header(TOMBSTONE_HEADER, "1"),
        };
        let response = request.send().await.map_err(|e| error(peer, e))?;
        match response.status() {
            StatusCode::OK => Ok(()),
            status => Err(status_error(&peer.id, status)),
        }
    }

    /// Ask the peer to forget a tombstone every owner has.
    pub async fn purge(&self, peer: &Member, key: &str, version: Version) -> Result<(), PeerError> {
        let response = self
            .http
            .delete(internal_url(peer, key))
            .header(VERSION_HEADER, version.header_value())
            .send()
            .await
            .map_err(|e| error(peer, e))?;
        match response.status() {
            StatusCode::OK | StatusCode::NO_CONTENT | StatusCode::NOT_FOUND => Ok(()),
            status => Err(status_error(&peer.id, status)),
        }
    }

    /// Send a client's request on to `peer` (the key's primary).
    pub async fn forward(
        &self,
        peer: &Member,
        from: &str,
        method: Method,
        key: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Forwarded, PeerError> {
        let mut request = self
            .http
            .request(method, format!("http://{}/kv/{key}", peer.addr))
            .header(FORWARDED_HEADER, from)
            .body(body);
        for name in [
            axum::http::header::IF_MATCH,
            axum::http::header::CONTENT_TYPE,
            HANDOVER_HEADER,
        ] {
            if let Some(value) = headers.get(&name) {
                request = request.header(name, value);
            }
        }
        let response = request.send().await.map_err(|e| error(peer, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(|e| error(peer, e))?;
        Ok(Forwarded {
            status,
            headers,
            body,
        })
    }
}

fn internal_url(peer: &Member, key: &str) -> String {
    format!("http://{}/_shoal/kv/{key}", peer.addr)
}

pub fn header_version(headers: &HeaderMap) -> Option<Version> {
    headers.get(VERSION_HEADER)?.to_str().ok()?.parse().ok()
}

fn error(peer: &Member, e: reqwest::Error) -> PeerError {
    if e.is_connect() {
        PeerError::Unavailable {
            id: peer.id.to_string(),
            why: e.to_string(),
        }
    } else if e.is_timeout() || e.status().is_some() {
        failed(peer, &e.to_string())
    } else {
        PeerError::Reset {
            id: peer.id.to_string(),
            why: e.to_string(),
        }
    }
}

fn failed(peer: &Member, why: &str) -> PeerError {
    PeerError::Failed {
        id: peer.id.to_string(),
        why: why.to_owned(),
    }
}

/// The error for a peer's (`id`'s) answer other than success.
pub(super) fn status_error(id: &str, status: StatusCode) -> PeerError {
    if status == StatusCode::SERVICE_UNAVAILABLE {
        PeerError::Unavailable {
            id: id.to_owned(),
            why: "it is leaving".into(),
        }
    } else {
        PeerError::Failed {
            id: id.to_owned(),
            why: format!("answered {status}"),
        }
    }
}
