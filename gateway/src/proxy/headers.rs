//! Header rewriting between client and instance: hop-by-hop headers removed
//! in both directions (RFC 9110 §7.6.1: `Connection` and every header it
//! names, `Keep-Alive`, `Proxy-Connection`, `Proxy-Authenticate`,
//! `Proxy-Authorization`, `TE`, `Trailer`, `Transfer-Encoding`, `Upgrade`),
//! except `Upgrade` and `Connection: upgrade` on an upgrade handshake, which
//! must reach the other side; `X-Forwarded-For/-Proto/-Host` added;
//! `x-shoal-instance` and the sticky `Set-Cookie` on the way back.
//!
//! Two more request headers never reach an instance: `Proxy` (httpoxy: CGI
//! programs would read it as `HTTP_PROXY`) and `Expect` (the gateway answers
//! `100-continue` itself when it starts reading the body).

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{
    CONNECTION, EXPECT, HOST, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER,
    TRANSFER_ENCODING, UPGRADE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Uri, Version};

use crate::balance::sticky;

/// The id of the instance that served a response.
pub const X_SHOAL_INSTANCE: HeaderName = HeaderName::from_static("x-shoal-instance");
/// `x-shoal-instance` on a response no instance was involved in.
pub const NO_INSTANCE: &str = "-";
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
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

/// Headers removed on every hop, whatever `Connection` says.
const HOP_BY_HOP: [HeaderName; 9] = [
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

/// Remove hop-by-hop headers. With `keep_upgrade` (an upgrade handshake),
/// `Upgrade` stays and `Connection` is reduced to `upgrade`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most messages have none: one pass over their few headers instead of
    // a lookup per hop-by-hop name.
    if !keep_upgrade && !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
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
            // Never let `Connection` name an end-to-end header we rely on.
            if name != HOST {
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
/// `Proxy` and `Expect` removed; `Host` kept (filled in from the URI for
/// HTTP/2 clients, which send `:authority` instead); `X-Forwarded-For`
/// appended with `client_ip`; `X-Forwarded-Proto: http`; `X-Forwarded-Host`
/// set to the client's host.
pub fn prepare_request(headers: &mut HeaderMap, uri: &Uri, upgrade: bool, client_ip: &HeaderValue) {
    strip_hop_by_hop(headers, upgrade);
    // One pass to learn which of the rarer headers are there at all.
    let (mut proxy, mut expect, mut forwarded_for) = (false, false, false);
    for name in headers.keys() {
        if *name == PROXY {
            proxy = true;
        } else if *name == EXPECT {
            expect = true;
        } else if *name == X_FORWARDED_FOR {
            forwarded_for = true;
        }
    }
    if proxy {
        headers.remove(PROXY);
    }
    if expect {
        headers.remove(EXPECT);
    }
    // Room for the headers added below, made once.
    headers.reserve(4);
    let host = match get(headers, &HOST) {
        Some(host) => Some(host.clone()),
        None => {
            let value = uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok());
            if let Some(value) = &value {
                headers.insert(HOST, value.clone());
            }
            value
        }
    };
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
    if forwarded_for {
        append_forwarded_for(headers, client_ip);
    } else {
        headers.insert(X_FORWARDED_FOR, client_ip.clone());
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
}

/// `X-Forwarded-For: <earlier hops>, <client_ip>`, folding several headers into one.
fn append_forwarded_for(headers: &mut HeaderMap, client_ip: &HeaderValue) {
    let earlier: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    if earlier.is_empty() {
        headers.insert(X_FORWARDED_FOR, client_ip.clone());
        return;
    }
    let len = earlier.iter().map(|v| v.len() + 2).sum::<usize>() + client_ip.len();
    let mut joined = BytesMut::with_capacity(len);
    for value in earlier {
        joined.put_slice(value.as_bytes());
        joined.put_slice(b", ");
    }
    joined.put_slice(client_ip.as_bytes());
    match HeaderValue::from_maybe_shared(joined.freeze()) {
        Ok(value) => {
            headers.insert(X_FORWARDED_FOR, value);
        }
        // Earlier values were valid header values and so is the IP; keep
        // at least the hop we know about.
        Err(_) => {
            headers.insert(X_FORWARDED_FOR, client_ip.clone());
        }
    }
}

/// The `X-Forwarded-For` value for a client address.
pub fn forwarded_for_value(ip: std::net::IpAddr) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(ip.to_string()))
        .expect("an IP address is a valid header value")
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
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
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
    fn forwarded_headers_are_added() {
        let ip = forwarded_for_value("10.1.2.3".parse().unwrap());
        let uri: Uri = "/x".parse().unwrap();
        let mut h = map(&[
            ("host", "shop.example:8080"),
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed"),
            ("proxy", "http://evil"),
            ("expect", "100-continue"),
        ]);
        prepare_request(&mut h, &uri, false, &ip);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "shop.example:8080");
        assert_eq!(h[HOST], "shop.example:8080");
        assert!(h.get(PROXY).is_none() && h.get(EXPECT).is_none());

        let mut first_hop = HeaderMap::new();
        prepare_request(&mut first_hop, &uri, false, &ip);
        assert_eq!(first_hop[X_FORWARDED_FOR], "10.1.2.3");
        assert!(first_hop.get(X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn http2_authority_becomes_the_host_header() {
        let ip = forwarded_for_value("::1".parse().unwrap());
        let uri: Uri = "http://api.example:81/v1".parse().unwrap();
        let mut h = HeaderMap::new();
        prepare_request(&mut h, &uri, false, &ip);
        assert_eq!(h[HOST], "api.example:81");
        assert_eq!(h[X_FORWARDED_HOST], "api.example:81");
        assert_eq!(h[X_FORWARDED_FOR], "::1");
    }

    #[test]
    fn the_sticky_cookie() {
        assert_eq!(
            sticky_cookie("app", "i-1"),
            "shoal-sticky-app=i-1; Path=/; HttpOnly; SameSite=Lax"
        );
    }
}
