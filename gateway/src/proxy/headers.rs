//! Header rewriting between client and instance: hop-by-hop headers removed
//! in both directions (RFC 9110 §7.6.1: `Connection` and every header it
//! names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//! `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`),
//! except `Upgrade` and `Connection: upgrade` on an upgrade handshake, which
//! must reach the other side; `Host` kept (the target's authority when the
//! request has one); `X-Forwarded-For/-Proto/-Host` and `Forwarded` set as
//! [`forwarded`] says; `x-shoal-instance` and the sticky
//! `Set-Cookie` on the way back. `Connection` cannot name `Host` or
//! `Content-Length` away: the first is what routing used, the second the
//! body's framing.
//!
//! Two more request headers never reach an instance: `Proxy` (httpoxy: CGI
//! programs would read it as `HTTP_PROXY`) and `Expect` (the gateway answers
//! `100-continue` itself when it starts reading the body).

use bytes::Bytes;
use http::header::{
    CONNECTION, CONTENT_LENGTH, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};

use super::forwarded::{self, Peer, Present};
use crate::balance::sticky;

/// The id of the instance that served a response.
pub const X_SHOAL_INSTANCE: HeaderName = HeaderName::from_static("x-shoal-instance");
/// `x-shoal-instance` on a response no instance was involved in.
pub const NO_INSTANCE: &str = "-";
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const PROXY: HeaderName = HeaderName::from_static("proxy");

/// Header maps with at most this many values are searched by a scan rather
/// than by hashing the name: requests and responses usually carry a handful
/// of headers, and comparing a few names is cheaper than hashing one.
const SCAN_AT_MOST: usize = 12;

/// The first value of `name` in `headers`, as [`HeaderMap::get`] returns it.
pub fn get<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if headers.len() <= SCAN_AT_MOST {
        // Values come entry by entry, an entry's first value first.
        headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    } else {
        headers.get(name)
    }
}

/// A header that must appear at most once appeared more often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Repeated;

/// The only value of `name` in `headers`, or none; [`Repeated`] when there
/// are several (as for two `Host` header lines).
pub fn get_only<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> Result<Option<&'a HeaderValue>, Repeated> {
    let mut found = None;
    if headers.len() <= SCAN_AT_MOST {
        for (n, value) in headers.iter() {
            if n == name {
                if found.is_some() {
                    return Err(Repeated);
                }
                found = Some(value);
            }
        }
        return Ok(found);
    }
    let mut all = headers.get_all(name).iter();
    found = all.next();
    match all.next() {
        Some(_) => Err(Repeated),
        None => Ok(found),
    }
}

/// Whether `headers` has `name`, as [`HeaderMap::contains_key`] says.
pub fn has(headers: &HeaderMap, name: &HeaderName) -> bool {
    get(headers, name).is_some()
}

/// Whether `token` is one of the comma-separated tokens of the `Connection` headers.
pub fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// An HTTP/1.1 upgrade handshake (WebSocket and the like): `Connection:
/// upgrade` plus an `Upgrade` header.
pub fn is_upgrade(version: Version, headers: &HeaderMap) -> bool {
    version == Version::HTTP_11 && has(headers, &UPGRADE) && connection_has(headers, "upgrade")
}

/// Headers removed on every hop, whatever `Connection` says. A `static`,
/// not a `const`: each use of a `const` array builds the array anew and
/// drops it (nine `HeaderName`s, once per header of every message).
static HOP_BY_HOP: [HeaderName; 9] = [
    CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    TRANSFER_ENCODING,
    UPGRADE,
];

/// Whether `name` is one of [`HOP_BY_HOP`]: by its length first, so that
/// most names are ruled out by one comparison instead of nine (each message
/// is scanned, request and response: about 300 instructions a message
/// with `HOP_BY_HOP.contains`).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    let name = name.as_str();
    match name.len() {
        2 => name == "te",
        7 => name == "trailer" || name == "upgrade",
        10 => name == "connection" || name == "keep-alive",
        16 => name == "proxy-connection",
        17 => name == "transfer-encoding",
        18 => name == "proxy-authenticate",
        19 => name == "proxy-authorization",
        _ => false,
    }
}

/// Remove hop-by-hop headers. With `keep_upgrade` (an upgrade handshake),
/// `Upgrade` stays and `Connection` is reduced to `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages have none: one pass over their few headers instead of
    // a lookup per hop-by-hop name.
    if !keep_upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if has(headers, &CONNECTION) {
        // Headers the sender declared hop-by-hop. The usual tokens are names
        // removed below anyway (or not headers at all): skip them without
        // building a HeaderName.
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|t| {
                !t.is_empty()
                    && !["keep-alive", "close", "upgrade"]
                        .iter()
                        .any(|known| t.eq_ignore_ascii_case(known))
            })
            .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
            .collect();
        for name in named {
            // Never let `Connection` name an end-to-end header we rely on:
            // the host routing used, the body's framing.
            if name != HOST && name != CONTENT_LENGTH {
                headers.remove(&name);
            }
        }
        headers.remove(CONNECTION);
    }
    for name in &HOP_BY_HOP[1..HOP_BY_HOP.len() - 1] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(UPGRADE);
    }
}

/// Rewrite a client's request headers for an instance: hop-by-hop headers,
/// `Proxy` and `Expect` removed; `Host` kept, or set to the URI's authority
/// when there is one (HTTP/2's `:authority`, an HTTP/1 absolute-form
/// target: [`resolve`](super::resolve) has checked that a `Host` sent with
/// it agrees); the forwarded headers set for `peer` as [`forwarded`] says,
/// believing the client's own when `trusted`.
pub fn prepare_request(
    headers: &mut HeaderMap,
    uri: &Uri,
    upgrade: bool,
    peer: &Peer,
    trusted: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    // One pass to learn which of the rarer headers are there at all.
    let (mut proxy, mut expect, mut has_host) = (false, false, false);
    let mut present = Present::default();
    for name in headers.keys() {
        if present.note(name) {
            continue;
        }
        if *name == HOST {
            has_host = true;
        } else if *name == PROXY {
            proxy = true;
        } else if *name == EXPECT {
            expect = true;
        }
    }
    if proxy {
        headers.remove(PROXY);
    }
    if expect {
        headers.remove(EXPECT);
    }
    // Room for the headers added below, made once, and no more than they
    // need: one entry more than the map holds can cost a reallocation.
    let added = usize::from(!has_host && uri.authority().is_some()) + present.missing();
    headers.reserve(added);
    let host = match (uri.authority(), get(headers, &HOST)) {
        (Some(authority), Some(host)) if host.as_bytes() == authority.as_str().as_bytes() => {
            Some(host.clone())
        }
        (Some(authority), _) => {
            let value = HeaderValue::from_str(authority.as_str()).ok();
            if let Some(value) = &value {
                headers.insert(HOST, value.clone());
            }
            value
        }
        (None, host) => host.cloned(),
    };
    forwarded::set(headers, peer, trusted, host, present);
}

/// `Set-Cookie` that pins a client to `instance` of `service`.
pub fn sticky_cookie(service: &str, instance: &str) -> HeaderValue {
    let cookie = format!(
        "{}={instance}; Path=/; HttpOnly; SameSite=Lax",
        sticky::cookie_name(service)
    );
    HeaderValue::from_maybe_shared(Bytes::from(cookie))
        .expect("service names and instance ids are valid cookie text")
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::proxy::forwarded::{
        FORWARDED, X_FORWARDED_FOR, X_FORWARDED_HOST, X_FORWARDED_PROTO,
    };

    #[test]
    fn hop_by_hop_names_are_told_by_length_then_name() {
        for name in &HOP_BY_HOP {
            assert!(is_hop_by_hop(name), "{name}");
        }
        // Names of the same lengths, standard and not.
        for other in [
            "tz",
            "referer",
            "warning",
            "upgrades",
            "set-cookie",
            "user-agent",
            "content-encoding",
            "www-authenticate",
            "if-modified-since",
            "x-forwarded-proto",
            "x-proxy-authenticat",
            "content-disposition",
            "host",
            "proxy",
            "x-shoal-instance",
            "trailers",
        ] {
            let name = HeaderName::from_bytes(other.as_bytes()).unwrap();
            assert!(!is_hop_by_hop(&name), "{other}");
            assert!(!HOP_BY_HOP.contains(&name), "{other} is in the list");
        }
    }

    /// A header map of `pairs`, appended in order (repeated names kept).
    pub(in crate::proxy) fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn names(h: &HeaderMap) -> Vec<&str> {
        let mut n: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        n.sort();
        n
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic eA=="),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("accept", "*/*"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["accept", "content-length"]);
    }

    #[test]
    fn connection_cannot_remove_host() {
        let mut h = map(&[("connection", "host"), ("host", "a.example")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[HOST], "a.example");
    }

    #[test]
    fn an_upgrade_keeps_upgrade_and_connection_upgrade_only() {
        let mut h = map(&[
            ("connection", "Upgrade, x-hop"),
            ("x-hop", "1"),
            ("upgrade", "websocket"),
            ("sec-websocket-key", "abc"),
        ]);
        assert!(is_upgrade(Version::HTTP_11, &h));
        assert!(!is_upgrade(Version::HTTP_10, &h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(names(&h), ["connection", "sec-websocket-key", "upgrade"]);
        assert_eq!(h[CONNECTION], "upgrade");
        assert!(!is_upgrade(
            Version::HTTP_11,
            &map(&[("upgrade", "websocket"), ("connection", "keep-alive")])
        ));
    }

    #[test]
    fn forwarded_headers_are_set_and_proxy_and_expect_removed() {
        let peer = Peer::new("10.1.2.3".parse().unwrap(), false);
        let uri: Uri = "/x".parse().unwrap();
        let spoofed = [
            ("host", "shop.example:8080"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("forwarded", "for=1.1.1.1"),
            ("proxy", "http://evil"),
            ("expect", "100-continue"),
        ];
        let mut h = map(&spoofed);
        prepare_request(&mut h, &uri, false, &peer, false);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[FORWARDED], "for=10.1.2.3;proto=http");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "shop.example:8080");
        assert_eq!(h[HOST], "shop.example:8080");
        assert!(h.get(PROXY).is_none() && h.get(EXPECT).is_none());

        let mut h = map(&spoofed);
        prepare_request(&mut h, &uri, false, &peer, true);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 10.1.2.3");
        assert_eq!(h[FORWARDED], "for=1.1.1.1, for=10.1.2.3;proto=http");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "spoofed");

        let mut first_hop = HeaderMap::new();
        prepare_request(&mut first_hop, &uri, false, &peer, false);
        assert_eq!(first_hop[X_FORWARDED_FOR], "10.1.2.3");
        assert!(first_hop.get(X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn the_authority_becomes_the_host_header() {
        let peer = Peer::new("::1".parse().unwrap(), false);
        // HTTP/2 (`:authority`, no Host).
        let uri: Uri = "http://api.example:81/v1".parse().unwrap();
        let mut h = HeaderMap::new();
        prepare_request(&mut h, &uri, false, &peer, false);
        assert_eq!(h[HOST], "api.example:81");
        assert_eq!(h[X_FORWARDED_HOST], "api.example:81");
        assert_eq!(h[X_FORWARDED_FOR], "::1");
        // An absolute-form target with a Host that agrees up to case and
        // the default port: the target's authority is forwarded.
        let uri: Uri = "http://API.example/v1".parse().unwrap();
        let mut h = map(&[("host", "api.example:80")]);
        prepare_request(&mut h, &uri, false, &peer, false);
        assert_eq!(h.get_all(HOST).iter().collect::<Vec<_>>(), ["API.example"]);
    }

    #[test]
    fn connection_cannot_remove_content_length() {
        let mut h = map(&[
            ("connection", "content-length, x-a"),
            ("content-length", "3"),
            ("x-a", "1"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(names(&h), ["content-length"]);
    }

    #[test]
    fn the_sticky_cookie() {
        assert_eq!(
            sticky_cookie("app", "i-1"),
            "shoal-sticky-app=i-1; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
