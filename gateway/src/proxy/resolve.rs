//! Step 1 of a request: what routing needs from the client's request,
//! checked. The request is taken apart into its [`Exchange`] (its parts, its
//! body and, for an upgrade, the client side of the tunnel), and its host is
//! read from the `Host` header, or the URI's authority for HTTP/2; the
//! handler then resolves the route in the current table snapshot with it.
//!
//! The gateway proxies origin-form requests only: CONNECT, the `*` form and
//! a `Host` that is not text get 400 before anything is routed or recorded.

use std::time::Instant;

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Method, Request};
use hyper::body::Incoming;

use super::attempt::Exchange;
use super::body::Reclaimable;
use super::error::GatewayError;
use super::{Inner, headers};

/// The request's `Host` header and URI authority, as the client sent them,
/// kept apart from the exchange (whose headers are rewritten for the
/// instance) so that every table it is resolved in sees the host the client
/// sent.
pub(super) struct HostSource {
    header: Option<HeaderValue>,
    authority: Option<Authority>,
}

impl<'a> Exchange<'a> {
    /// Take `request` apart into the exchange that carries it through the
    /// handler; 400 for a request the gateway does not route.
    #[inline(always)]
    pub fn new(
        proxy: &'a Inner,
        started: Instant,
        mut request: Request<Incoming>,
    ) -> Result<Self, GatewayError> {
        if request.method() == Method::CONNECT || !request.uri().path().starts_with('/') {
            return Err(GatewayError::BadRequest(
                "the gateway proxies origin-form requests (GET /path); CONNECT and `*` are not supported".into(),
            ));
        }
        // An upgrade is asked for (HTTP/1.1 `Connection: upgrade`) exactly
        // when the client side of it is kept.
        let upgrade = headers::is_upgrade(request.version(), request.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let (parts, body) = request.into_parts();
        Ok(Exchange {
            proxy,
            started,
            clock: Some(started),
            parts,
            body: Reclaimable::new(body, proxy.settings.max_body_bytes),
            client_upgrade,
            failed_on: Vec::new(),
            second_chance_used: false,
        })
    }
}

impl HostSource {
    /// Where `request`'s host comes from.
    #[inline]
    pub fn of(request: &Request<Incoming>) -> Self {
        HostSource {
            header: headers::get(request.headers(), &HOST).cloned(),
            authority: request.uri().authority().cloned(),
        }
    }

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
