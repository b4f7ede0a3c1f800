//! Step 1 of a request: what routing needs from the client's request,
//! checked. The request is taken apart (its parts, its body and, for an
//! upgrade, the client side of the tunnel), and its host is read from the
//! `Host` header, or the URI's authority for HTTP/2; the handler then
//! resolves the route in the current table snapshot with it.
//!
//! The gateway proxies origin-form requests only: CONNECT, the `*` form and
//! a `Host` that is not text get 400 before anything is routed or recorded.

use http::header::HOST;
use http::request::Parts;
use http::uri::Authority;
use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;

use super::error::GatewayError;
use super::headers;

/// The client's request, taken apart for the handler's steps.
pub(super) struct ClientRequest {
    pub parts: Parts,
    pub body: Incoming,
    /// Whether it asks for an upgrade (HTTP/1.1 `Connection: upgrade`).
    pub upgrade: bool,
    /// The client side of that upgrade.
    pub client_upgrade: Option<OnUpgrade>,
    /// Where its host comes from, kept apart from `parts` (whose headers are
    /// rewritten for the instance) so that every table it is resolved in
    /// sees the host the client sent.
    pub host: HostSource,
}

/// The request's `Host` header and URI authority, as the client sent them.
pub(super) struct HostSource {
    header: Option<HeaderValue>,
    authority: Option<Authority>,
}

impl ClientRequest {
    /// Take `request` apart; 400 for a request the gateway does not route.
    pub fn new(mut request: Request<Incoming>) -> Result<Self, GatewayError> {
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            return Err(GatewayError::BadRequest(
                "the gateway proxies origin-form requests (GET /path); CONNECT and `*` are not supported".into(),
            ));
        }
        let upgrade = headers::is_upgrade(request.version(), request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        let host = HostSource {
            header: headers::get(&parts.headers, &HOST).cloned(),
            authority: parts.uri.authority().cloned(),
        };
        Ok(ClientRequest {
            parts,
            body,
            upgrade,
            client_upgrade,
            host,
        })
    }
}

impl HostSource {
    /// The host routes are matched on: the `Host` header, else the URI's
    /// authority (HTTP/2), else none; 400 when the header is not text.
    pub fn host(&self) -> Result<Option<&str>, GatewayError> {
        match (&self.header, &self.authority) {
            (Some(value), _) => match value.to_str() {
                Ok(host) => Ok(Some(host)),
                Err(_) => Err(GatewayError::BadRequest(
                    "the Host header is not valid text; send a host name such as api.example.com"
                        .into(),
                )),
            },
            (None, Some(authority)) => Ok(Some(authority.as_str())),
            (None, None) => Ok(None),
        }
    }
}
