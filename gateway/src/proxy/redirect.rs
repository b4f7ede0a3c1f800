//! A route's `https_redirect`: a request that came over plain HTTP gets a
//! 308 to the same host and target over HTTPS, instead of being proxied.
//!
//! - Location: `https://{host}{:port}{path?query}`, the host without the
//!   request's port, and `:port` the `--tls-listen` port unless it is 443
//!   (443 when the gateway has no TLS listener: TLS ends in front of it).
//!   308, not 301: the method and body are kept.
//! - Not redirected: a request over `--tls-listen`; and one from a
//!   `--trusted-proxies` peer saying `X-Forwarded-Proto: https` (a load
//!   balancer in front terminated TLS; redirecting would loop).
//! - A request without a host (HTTP/1.0) cannot be redirected: 400.
//!
//! The host was checked in step 1 ([`resolve`](super::resolve)): it is
//! `uri-host[:port]`, so it goes into `Location` as it is.

use http::{HeaderMap, HeaderValue, StatusCode, Uri};

use super::error::GatewayError;
use super::forwarded::{Peer, X_FORWARDED_PROTO};

/// Whether a request on `peer`'s connection, with `headers`, goes to HTTPS
/// first; `trusted` says whether the peer is a trusted proxy.
pub fn wanted(peer: &Peer, trusted: bool, headers: &HeaderMap) -> bool {
    if peer.tls {
        return false;
    }
    !(trusted
        && headers
            .get(X_FORWARDED_PROTO)
            .is_some_and(|proto| proto.as_bytes().eq_ignore_ascii_case(b"https")))
}

/// The `Location` for `host` and `uri` with the HTTPS port `https_port`.
pub fn location(
    host: Option<&str>,
    uri: &Uri,
    https_port: u16,
) -> Result<HeaderValue, GatewayError> {
    let Some(host) = host else {
        return Err(GatewayError::BadRequest(
            "this route redirects to HTTPS, which needs the request's host; send a Host header"
                .into(),
        ));
    };
    let host = without_port(host);
    let target = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let location = if https_port == 443 {
        format!("https://{host}{target}")
    } else {
        format!("https://{host}:{https_port}{target}")
    };
    HeaderValue::try_from(location)
        .map_err(|_| GatewayError::BadRequest("the request's host cannot be redirected".into()))
}

/// `host` without its `:port`; an IPv6 literal keeps its brackets.
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

pub const STATUS: StatusCode = StatusCode::PERMANENT_REDIRECT;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::tests::map;

    #[test]
    fn locations_keep_host_path_and_query_and_name_a_non_default_port() {
        let uri: Uri = "/a/b?x=1&y=2".parse().unwrap();
        let at = |host, port| location(Some(host), &uri, port).unwrap();
        assert_eq!(at("shop.example", 443), "https://shop.example/a/b?x=1&y=2");
        assert_eq!(
            at("shop.example:8080", 8443),
            "https://shop.example:8443/a/b?x=1&y=2"
        );
        assert_eq!(at("[::1]:8080", 443), "https://[::1]/a/b?x=1&y=2");
        let root: Uri = "http://shop.example".parse().unwrap();
        assert_eq!(
            location(Some("shop.example"), &root, 443).unwrap(),
            "https://shop.example/"
        );
        let err = location(None, &uri, 443).unwrap_err();
        assert!(err.detail().contains("send a Host header"), "{err:?}");
    }

    #[test]
    fn only_plain_requests_not_vouched_for_by_a_trusted_proxy_are_redirected() {
        let plain = Peer::new("10.0.0.1".parse().unwrap(), false);
        let tls = Peer::new("10.0.0.1".parse().unwrap(), true);
        let says_https = map(&[("x-forwarded-proto", "HTTPS")]);
        let none = HeaderMap::new();
        assert!(wanted(&plain, false, &none));
        assert!(!wanted(&tls, false, &none));
        assert!(!wanted(&plain, true, &says_https));
        assert!(
            wanted(&plain, false, &says_https),
            "an untrusted client's word is not taken"
        );
        assert!(wanted(&plain, true, &map(&[("x-forwarded-proto", "http")])));
    }
}
