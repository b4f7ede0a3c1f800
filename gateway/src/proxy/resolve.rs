//! Step 1 of a request: what routing needs from the client's request,
//! checked. The request is taken apart into its [`Exchange`] (its parts, its
//! body and, for an upgrade, the client side of the tunnel), and its host is
//! found (`HostSource`); the handler then resolves the route in the
//! current table snapshot with it.
//!
//! The gateway proxies origin-form and absolute-form requests only:
//! CONNECT and the `*` form get 400 before anything is routed or recorded.
//!
//! # Framing at the edge: who refuses what
//!
//! A request is forwarded only when it can be read one way. Two layers see
//! it before an instance does:
//!
//! | request | RFC | refused by | answer |
//! |---|---|---|---|
//! | `Content-Length` and `Transfer-Encoding` together | 9112 §6.1 | hyper | framed by the chunks alone, `Content-Length` dropped, connection closed after the response (§6.1 allows this instead of a 400); the instance gets chunks only |
//! | `Transfer-Encoding` whose last coding is not `chunked`; any in HTTP/1.0 | 9112 §6.1, §6.3 | hyper | 400, connection closed |
//! | two `Content-Length` that differ, a list (`5, 5`), not digits, too large | 9112 §6.3, 9110 §8.6 | hyper | 400, connection closed |
//! | two equal `Content-Length` | 9110 §8.6 | hyper | forwarded with one |
//! | obsolete line folding; control bytes (NUL, lone CR, DEL) in a value; a name that is not a token; whitespace before the colon; a line without one | 9112 §5.1, §5.2, 9110 §5.5 | hyper (httparse) | 400, connection closed |
//! | HTTP/1.1 without `Host` | 9112 §3.2 | here | 400 |
//! | two `Host` lines (even equal ones) | 9112 §3.2 | here | 400 |
//! | `Host` not `uri-host[:port]` (empty, a path, user information, a non-numeric port, not text) | 9112 §3.2, 9110 §7.2 | here | 400 |
//! | absolute-form target (or HTTP/2 `:authority`) whose host or port differs from `Host`; one with user information or a scheme other than http(s) | 9112 §3.2.2, 9110 §4.2.4 | here | 400 |
//! | absolute-form target agreeing with `Host` (case and the scheme's default port aside), or with no `Host` in HTTP/1.0 | 9112 §3.2.2 | — | routed by the target's authority, forwarded in origin form with `Host` set to it |
//! | HTTP/1.0 without `Host` | 9112 §3.2 (only 1.1 must send it) | — | default route; the instance gets `Host: <its own address>` ([`pool`](super::pool)) |
//! | hop-by-hop headers and those `Connection` names | 9110 §7.6.1 | [`headers`] | removed (never `Host` or `Content-Length`) |
//! | `X-Forwarded-*`, `Forwarded` | 7239 | [`forwarded`](super::forwarded) | replaced, or kept and appended to from `--trusted-proxies` |
//!
//! The gateway's 400s are JSON (`"error":"bad_request"`) and keep the
//! connection open; hyper's parse errors have no body and close it.
//! HTTP/2 requests get the same `Host`/`:authority` checks; their framing is
//! h2's (lengths are frames, and it refuses connection-specific headers).

use std::time::Instant;

use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Method, Request, Version};
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
    /// Where `request`'s host comes from; 400 for a request whose host is
    /// missing, doubled, malformed or ambiguous (see the module doc).
    #[inline]
    pub fn of(request: &Request<Incoming>) -> Result<Self, GatewayError> {
        let header = match headers::get_only(request.headers(), &HOST) {
            Ok(header) => header.cloned(),
            Err(headers::Repeated) => {
                return Err(bad(
                    "the request has more than one Host header; send exactly one",
                ));
            }
        };
        let uri = request.uri();
        let authority = uri.authority().cloned();
        if let Some(authority) = &authority {
            check_target(uri.scheme_str(), authority)?;
        }
        match (&header, &authority) {
            (None, _) if request.version() == Version::HTTP_11 => {
                return Err(bad(
                    "an HTTP/1.1 request needs a Host header (RFC 9112 section 3.2); send the host name of the site",
                ));
            }
            (Some(host), _) if !valid_host(host.as_bytes()) => {
                return Err(bad(
                    "the Host header is not a host name (with an optional port); send a host name such as api.example.com",
                ));
            }
            (Some(host), Some(authority))
                if !same_host(host.as_bytes(), authority, uri.scheme_str()) =>
            {
                return Err(bad(
                    "the Host header and the request target name different hosts; send the same host in both, or an origin-form target (GET /path)",
                ));
            }
            _ => {}
        }
        Ok(HostSource { header, authority })
    }

    /// The host routes are matched on: the target's authority (an HTTP/1
    /// absolute-form target, HTTP/2's `:authority`), else the `Host` header,
    /// else none (HTTP/1.0 without Host: the default route).
    pub fn host(&self) -> Option<&str> {
        match (&self.authority, &self.header) {
            (Some(authority), _) => Some(authority.as_str()),
            // Checked by `of`: a valid host is text.
            (None, Some(value)) => value.to_str().ok(),
            (None, None) => None,
        }
    }
}

fn bad(why: &str) -> GatewayError {
    GatewayError::BadRequest(why.to_owned())
}

/// An absolute-form target (or `:authority`) the gateway routes: an `http` or
/// `https` URI with a host and no user information (RFC 9110 §4.2.4).
fn check_target(scheme: Option<&str>, authority: &Authority) -> Result<(), GatewayError> {
    if scheme.is_some_and(|s| !s.eq_ignore_ascii_case("http") && !s.eq_ignore_ascii_case("https")) {
        return Err(bad(
            "the request target is not an http URI; send GET /path with a Host header",
        ));
    }
    if authority.as_str().contains('@') || !valid_host(authority.as_str().as_bytes()) {
        return Err(bad(
            "the request target's authority is not a host name with an optional port (user information is not allowed)",
        ));
    }
    Ok(())
}

/// The bytes a registered name may hold: unreserved, `%` of
/// percent-encoding, and sub-delims (RFC 3986 §3.2.2). A table, as this
/// is asked of every byte of every request's `Host`.
static NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~%!$&'()*+,;=";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

/// Whether `host` is `uri-host [":" port]` (RFC 9110 §7.2): a registered
/// name (unreserved, percent-encoded and sub-delim characters), an IPv4
/// address, or an IPv6 address in brackets; never empty.
pub(super) fn valid_host(host: &[u8]) -> bool {
    let (name, port) = if host.first() == Some(&b'[') {
        let Some(end) = host.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = std::str::from_utf8(&host[1..end]).ok();
        if inner.is_none_or(|i| i.parse::<std::net::Ipv6Addr>().is_err()) {
            return false;
        }
        (&host[..=end], &host[end + 1..])
    } else {
        match host.iter().position(|&b| b == b':') {
            Some(colon) => (&host[..colon], &host[colon..]),
            None => (host, &host[host.len()..]),
        }
    };
    let name_ok =
        !name.is_empty() && (name[0] == b'[' || name.iter().all(|&b| NAME_BYTES[b as usize]));
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    name_ok && port_ok
}

/// Whether the `Host` header names the same host and port as the target's
/// authority: host names compared without case, a missing port read as the
/// scheme's default.
pub(super) fn same_host(header: &[u8], authority: &Authority, scheme: Option<&str>) -> bool {
    let default_port = match scheme {
        Some(s) if s.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    };
    let (name, port) = split_host(header);
    let port = match port {
        None => default_port,
        Some(p) => match std::str::from_utf8(p)
            .ok()
            .and_then(|p| p.parse::<u16>().ok())
        {
            Some(p) => p,
            None => return false,
        },
    };
    name.eq_ignore_ascii_case(authority.host().as_bytes())
        && port == authority.port_u16().unwrap_or(default_port)
}

/// `host[:port]` split; an empty port (`host:`) counts as none.
fn split_host(host: &[u8]) -> (&[u8], Option<&[u8]>) {
    let colon = if host.first() == Some(&b'[') {
        host.iter()
            .position(|&b| b == b']')
            .and_then(|end| (host.get(end + 1) == Some(&b':')).then_some(end + 1))
    } else {
        host.iter().position(|&b| b == b':')
    };
    match colon {
        Some(c) if c + 1 < host.len() => (&host[..c], Some(&host[c + 1..])),
        Some(c) => (&host[..c], None),
        None => (host, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_hosts() {
        for ok in [
            "a.example",
            "a.example:8080",
            "a.example:",
            "127.0.0.1:80",
            "[::1]",
            "[2001:db8::1]:443",
            "xn--bcher-kva.example",
            "under_score.local",
            "sub-delims!$&'()*+,;=~.and%41percent:1",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a.example:80:80",
            "a.example:http",
            "a example",
            "a/b",
            "user@a.example",
            "[::1",
            "[not-v6]:80",
            "a.example:123456",
            "a\"b",
            "a#b",
            "a\u{e9}.example",
            "a\u{7f}b",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn the_host_header_agrees_with_the_target_up_to_case_and_default_port() {
        let a = |s: &str| s.parse::<Authority>().unwrap();
        assert!(same_host(b"a.example", &a("A.Example"), Some("http")));
        assert!(same_host(b"a.example:80", &a("a.example"), Some("http")));
        assert!(same_host(b"a.example", &a("a.example:80"), None));
        assert!(same_host(b"a.example:443", &a("a.example"), Some("https")));
        assert!(same_host(b"[::1]:8080", &a("[::1]:8080"), Some("http")));
        assert!(!same_host(b"b.example", &a("a.example"), Some("http")));
        assert!(!same_host(b"a.example:8080", &a("a.example"), Some("http")));
        assert!(!same_host(b"a.example:443", &a("a.example"), Some("http")));
        assert!(!same_host(b"[::1]:80", &a("[::2]"), Some("http")));
    }
}
