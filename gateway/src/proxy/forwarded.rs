//! Who the client is, as an instance is told: `X-Forwarded-For`,
//! `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` (RFC 7239), and
//! whose word on it the gateway takes (`--trusted-proxies`).
//!
//! The rules, for each request (called from
//! [`prepare_request`](super::headers::prepare_request)):
//! - The connection's peer (the address the TCP connection came from) is
//!   trusted when it is in one of the `--trusted-proxies` networks (empty by
//!   default: nobody is).
//! - Peer not trusted: whatever the client sent in `X-Forwarded-For`,
//!   `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded` is dropped and
//!   replaced: `X-Forwarded-For: <peer>`, `X-Forwarded-Proto: http` (`https`
//!   on a `--tls-listen` connection), `X-Forwarded-Host: <Host>` (absent
//!   when the request has no host), `Forwarded: for=<peer>;proto=http` (or
//!   `https`). A client cannot make an instance believe it comes from
//!   another address or over TLS.
//! - Peer trusted (a load balancer in front of the gateway): its
//!   `X-Forwarded-For` is kept and the peer appended (`<earlier>, <peer>`,
//!   several header lines folded into one); its `Forwarded` is kept and our
//!   element appended the same way; its `X-Forwarded-Proto` and
//!   `X-Forwarded-Host` are kept (it may have terminated TLS), and set as
//!   above when it sent none.
//! - The client's address, for anything keyed by client IP, is
//!   [`client_address`]: the peer, or behind trusted proxies the right-most
//!   `X-Forwarded-For` entry that is not itself a trusted proxy. (Today
//!   nothing in the gateway keys on it: balancing keys on headers, paths,
//!   query parameters and cookies; it is there for per-client limits.)
//!
//! `Forwarded` carries no `host=`: the gateway forwards `Host` unchanged
//! (RFC 7239 §5.3 makes the parameter optional), and leaving it out lets
//! the whole element be made once per connection, so the common case (no
//! trusted proxies) allocates nothing per request for these headers (the
//! values are shared; the map is grown once, by the entries added).

use std::net::IpAddr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const FORWARDED: HeaderName = http::header::FORWARDED;

/// `--trusted-proxies`: the networks whose forwarded headers are believed.
/// Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Arc<[IpNet]>,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        TrustedProxies { nets: nets.into() }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    /// Whether `ip` is in one of the networks (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        if self.nets.is_empty() {
            return false;
        }
        let ip = ip.to_canonical();
        self.nets.iter().any(|net| net.contains(&ip))
    }
}

/// The peer of a client connection and the header values that name it,
/// made once per connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub ip: IpAddr,
    /// The connection is TLS (`--tls-listen`).
    pub tls: bool,
    /// The peer as an `X-Forwarded-For` entry.
    pub forwarded_for: HeaderValue,
    /// This hop's `Forwarded` element: `for=<peer>;proto=http` (or `https`).
    pub forwarded: HeaderValue,
}

impl Peer {
    /// The peer at `ip`, on a TLS connection or not.
    pub fn new(ip: IpAddr, tls: bool) -> Self {
        let ip = ip.to_canonical();
        let proto = if tls { "https" } else { "http" };
        let forwarded = match ip {
            IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            // RFC 7239 §6: an IPv6 node is bracketed, and so quoted.
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        Peer {
            ip,
            tls,
            forwarded_for: value(ip.to_string()),
            forwarded: value(forwarded),
        }
    }

    /// The `X-Forwarded-Proto` this hop sets.
    pub fn proto(&self) -> HeaderValue {
        HeaderValue::from_static(if self.tls { "https" } else { "http" })
    }
}

fn value(text: String) -> HeaderValue {
    HeaderValue::from_maybe_shared(Bytes::from(text))
        .expect("an IP address and RFC 7239 syntax are valid header values")
}

/// Which of the forwarded headers a request carries, found in the one pass
/// [`prepare_request`](super::headers::prepare_request) makes over its names.
#[derive(Debug, Default, Clone, Copy)]
pub struct Present {
    pub forwarded_for: bool,
    pub proto: bool,
    pub host: bool,
    pub forwarded: bool,
}

impl Present {
    /// How many of the four headers are missing (each an entry [`set`] adds).
    pub fn missing(&self) -> usize {
        [self.forwarded_for, self.proto, self.host, self.forwarded]
            .iter()
            .filter(|p| !**p)
            .count()
    }

    /// Note `name` if it is one of the forwarded headers; whether it was.
    #[inline]
    pub fn note(&mut self, name: &HeaderName) -> bool {
        let flag = if *name == X_FORWARDED_FOR {
            &mut self.forwarded_for
        } else if *name == X_FORWARDED_PROTO {
            &mut self.proto
        } else if *name == X_FORWARDED_HOST {
            &mut self.host
        } else if *name == FORWARDED {
            &mut self.forwarded
        } else {
            return false;
        };
        *flag = true;
        true
    }
}

/// Set the forwarded headers of a request from `peer` (see the module doc);
/// `host` is the request's host, `trusted` whether the peer is a trusted
/// proxy, `present` which of the headers the client sent.
pub fn set(
    headers: &mut HeaderMap,
    peer: &Peer,
    trusted: bool,
    host: Option<HeaderValue>,
    present: Present,
) {
    if trusted {
        if present.forwarded_for {
            append(headers, X_FORWARDED_FOR, &peer.forwarded_for);
        } else {
            headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
        }
        if present.forwarded {
            append(headers, FORWARDED, &peer.forwarded);
        } else {
            headers.insert(FORWARDED, peer.forwarded.clone());
        }
        if !present.proto {
            headers.insert(X_FORWARDED_PROTO, peer.proto());
        }
        if !present.host
            && let Some(host) = host
        {
            headers.insert(X_FORWARDED_HOST, host);
        }
        return;
    }
    // `insert` replaces every value the client sent.
    headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
    headers.insert(FORWARDED, peer.forwarded.clone());
    headers.insert(X_FORWARDED_PROTO, peer.proto());
    match host {
        Some(host) => {
            headers.insert(X_FORWARDED_HOST, host);
        }
        None if present.host => {
            headers.remove(X_FORWARDED_HOST);
        }
        None => {}
    }
}

/// `name: <earlier values>, <hop>`, folding several header lines into one.
fn append(headers: &mut HeaderMap, name: HeaderName, hop: &HeaderValue) {
    let earlier: Vec<&HeaderValue> = headers.get_all(&name).iter().collect();
    let len = earlier.iter().map(|v| v.len() + 2).sum::<usize>() + hop.len();
    let mut joined = BytesMut::with_capacity(len);
    for value in earlier {
        joined.put_slice(value.as_bytes());
        joined.put_slice(b", ");
    }
    joined.put_slice(hop.as_bytes());
    match HeaderValue::from_maybe_shared(joined.freeze()) {
        Ok(value) => {
            headers.insert(name, value);
        }
        // Earlier values were valid header values and so is the hop; keep
        // at least the hop we know about.
        Err(_) => {
            headers.insert(name, hop.clone());
        }
    }
}

/// The client's address: `peer` unless it is a trusted proxy; then, walking
/// the request's `X-Forwarded-For` entries from the right, the first that is
/// not a trusted proxy. When every entry is trusted, the left-most; when an
/// entry is not an address, the trusted hop to its right (what is left of a
/// malformed entry cannot be told apart from what a client made up).
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let lines: Vec<&HeaderValue> = headers.get_all(X_FORWARDED_FOR).iter().collect();
    let mut client = peer;
    for line in lines.into_iter().rev() {
        let Ok(line) = line.to_str() else {
            return client;
        };
        for entry in line.rsplit(',') {
            let Some(ip) = parse_entry(entry.trim()) else {
                return client;
            };
            if !trusted.contains(ip) {
                return ip;
            }
            client = ip;
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5`,
/// `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .map(|ip| ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::headers::tests::map;

    fn present(h: &HeaderMap) -> Present {
        let mut p = Present::default();
        for name in h.keys() {
            p.note(name);
        }
        p
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect())
    }

    fn spoofed() -> HeaderMap {
        map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "spoofed.example"),
            ("forwarded", "for=9.9.9.9;proto=https"),
        ])
    }

    #[test]
    fn an_untrusted_peer_s_forwarded_headers_are_replaced() {
        let peer = Peer::new("10.1.2.3".parse().unwrap(), false);
        let mut h = spoofed();
        let p = present(&h);
        set(
            &mut h,
            &peer,
            false,
            Some(HeaderValue::from_static("shop.example")),
            p,
        );
        assert_eq!(
            h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["10.1.2.3"]
        );
        assert_eq!(
            h.get_all(FORWARDED).iter().collect::<Vec<_>>(),
            ["for=10.1.2.3;proto=http"]
        );
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "shop.example");

        // No host: a client-supplied X-Forwarded-Host does not survive.
        let mut h = spoofed();
        let p = present(&h);
        set(&mut h, &peer, false, None, p);
        assert!(h.get(X_FORWARDED_HOST).is_none());
    }

    #[test]
    fn a_trusted_peer_s_forwarded_headers_are_kept_and_appended_to() {
        let peer = Peer::new("10.1.2.3".parse().unwrap(), false);
        let mut h = spoofed();
        let p = present(&h);
        set(
            &mut h,
            &peer,
            true,
            Some(HeaderValue::from_static("shop.example")),
            p,
        );
        assert_eq!(
            h.get_all(X_FORWARDED_FOR).iter().collect::<Vec<_>>(),
            ["1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3"]
        );
        assert_eq!(
            h.get_all(FORWARDED).iter().collect::<Vec<_>>(),
            ["for=9.9.9.9;proto=https, for=10.1.2.3;proto=http"]
        );
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "spoofed.example");

        // A trusted peer that sent none gets ours.
        let mut h = HeaderMap::new();
        set(
            &mut h,
            &peer,
            true,
            Some(HeaderValue::from_static("a.example")),
            Present::default(),
        );
        assert_eq!(h[X_FORWARDED_FOR], "10.1.2.3");
        assert_eq!(h[FORWARDED], "for=10.1.2.3;proto=http");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "a.example");
    }

    #[test]
    fn a_tls_connection_is_https() {
        let peer = Peer::new("10.1.2.3".parse().unwrap(), true);
        assert_eq!(peer.forwarded, "for=10.1.2.3;proto=https");
        let mut h = spoofed();
        let p = present(&h);
        set(&mut h, &peer, false, None, p);
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[FORWARDED], "for=10.1.2.3;proto=https");
        let mut h = HeaderMap::new();
        set(&mut h, &peer, true, None, Present::default());
        assert_eq!(h[X_FORWARDED_PROTO], "https");
    }

    #[test]
    fn ipv6_peers_are_quoted_in_forwarded_and_mapped_ipv4_is_ipv4() {
        let peer = Peer::new("2001:db8::7".parse().unwrap(), false);
        assert_eq!(peer.forwarded, "for=\"[2001:db8::7]\";proto=http");
        assert_eq!(peer.forwarded_for, "2001:db8::7");
        let mapped = Peer::new("::ffff:192.0.2.1".parse().unwrap(), false);
        assert_eq!(mapped.forwarded, "for=192.0.2.1;proto=http");
        assert!(trusted(&["192.0.2.0/24"]).contains("::ffff:192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn the_client_address_is_the_right_most_untrusted_entry() {
        let proxies = trusted(&["10.0.0.0/8", "fd00::/8"]);
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let cases: [(&[(&str, &str)], &str); 8] = [
            // Untrusted peer: its own address, whatever it claims.
            (&[("x-forwarded-for", "6.6.6.6")], "192.0.2.1"),
            // Trusted peer, no header: the peer.
            (&[], "10.0.0.1"),
            (&[("x-forwarded-for", "203.0.113.5")], "203.0.113.5"),
            // A spoofed entry left of the real client is not believed.
            (
                &[("x-forwarded-for", "6.6.6.6, 203.0.113.5, 10.9.9.9")],
                "203.0.113.5",
            ),
            (
                &[
                    ("x-forwarded-for", "6.6.6.6"),
                    ("x-forwarded-for", "203.0.113.5, fd00::1"),
                ],
                "203.0.113.5",
            ),
            // Every hop trusted: the left-most.
            (&[("x-forwarded-for", "10.7.7.7, 10.8.8.8")], "10.7.7.7"),
            // Garbage: the trusted hop to its right.
            (&[("x-forwarded-for", "unknown, 10.8.8.8")], "10.8.8.8"),
            (&[("x-forwarded-for", "203.0.113.5:4711")], "203.0.113.5"),
        ];
        for (i, (pairs, want)) in cases.iter().enumerate() {
            let from = if i == 0 {
                "192.0.2.1".parse().unwrap()
            } else {
                peer
            };
            let got = client_address(from, &map(pairs), &proxies);
            assert_eq!(got, want.parse::<IpAddr>().unwrap(), "case {i}: {pairs:?}");
        }
        // No trusted proxies: always the peer.
        let h = map(&[("x-forwarded-for", "203.0.113.5")]);
        assert_eq!(client_address(peer, &h, &TrustedProxies::default()), peer);
    }
}
