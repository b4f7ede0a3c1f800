//! The gateway's route matching: a routing table built from arbitrary routes
//! (the ones the registry would accept) resolves arbitrary host/path pairs
//! without panicking, and the route it picks is the best one that matches,
//! checked against an independent statement of the rule:
//! - a route matches when its host (if any) equals the request's host without
//!   port, case-insensitively, and its prefix is a prefix of the path ending
//!   at a segment boundary;
//! - host-specific routes beat host-less ones, then the longest prefix wins;
//! - nothing matches: the default route.
//!
//! Then the forwarded path (prefix stripped or not) still starts with `/`.

#![no_main]

use std::collections::BTreeMap;
use std::time::Instant;

use arbitrary::Arbitrary;
use gateway::table::{DEFAULT_ROUTE, Defaults, LiveState};
use libfuzzer_sys::fuzz_target;
use registry::keys::validate_segment;
use registry::model::{BalancePolicy, HashKey, NamedRoute, Route, UpstreamProtocol};

#[derive(Debug, Arbitrary)]
struct FuzzRoute {
    name: String,
    host: Option<String>,
    path_prefix: String,
    strip_prefix: bool,
    hashed: bool,
    /// Matching must not depend on the protocol spoken to instances.
    h2c: bool,
}

#[derive(Debug, Arbitrary)]
struct Input {
    routes: Vec<FuzzRoute>,
    requests: Vec<(Option<String>, String)>,
}

/// The request's host without its port, as a client sends it in `Host`.
fn host_without_port(host: &str) -> &str {
    if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h).unwrap_or(host);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

fn matches(route: &Route, host: Option<&str>, path: &str) -> bool {
    let host_ok = match (&route.host, host) {
        (None, _) => true,
        (Some(want), Some(got)) => want.eq_ignore_ascii_case(host_without_port(got)),
        (Some(_), None) => false,
    };
    let prefix = route.path_prefix.as_str();
    let prefix_ok = path == prefix
        || (path.starts_with(prefix)
            && (prefix.ends_with('/') || path[prefix.len()..].starts_with('/')));
    host_ok && prefix_ok
}

/// How good a match is: host-specific first, then longer prefixes.
fn rank(route: &Route) -> (bool, usize) {
    (route.host.is_some(), route.path_prefix.len())
}

fuzz_target!(|input: Input| {
    let mut routes = BTreeMap::new();
    for (n, r) in input.routes.into_iter().take(16).enumerate() {
        let route = Route {
            host: r.host,
            path_prefix: r.path_prefix,
            service: format!("svc{}", n % 3),
            policy: if r.hashed {
                BalancePolicy::ConsistentHash
            } else {
                BalancePolicy::RoundRobin
            },
            hash_key: r.hashed.then_some(HashKey::PathSegment(0)),
            strip_prefix: r.strip_prefix,
            timeout_ms: None,
            try_timeout_ms: None,
            retries: None,
            https_redirect: false,
            rate_limit: None,
            upstream_protocol: if r.h2c {
                UpstreamProtocol::H2c
            } else {
                UpstreamProtocol::Http1
            },
            idempotent: r.h2c,
        };
        // The registry skips what does not validate; so does the table's input.
        if validate_segment("route", &r.name).is_err() || route.validate().is_err() {
            continue;
        }
        routes.insert(
            format!("/shoal/routes/{}", r.name),
            NamedRoute {
                name: r.name,
                route,
            },
        );
    }
    let defaults = Defaults {
        service: "app".into(),
        policy: BalancePolicy::LeastRequest,
    };
    let table = LiveState::default().build(
        &BTreeMap::new(),
        &routes,
        &defaults,
        true,
        1,
        Instant::now(),
    );

    for (host, path) in input.requests.iter().take(16) {
        let host = host.as_deref();
        let chosen = table.resolve(host, path);
        let best = routes
            .values()
            .filter(|r| matches(&r.route, host, path))
            .map(|r| rank(&r.route))
            .max();
        if chosen.name == DEFAULT_ROUTE {
            assert_eq!(
                best, None,
                "a route matches {host:?} {path:?} but the default was chosen"
            );
            continue;
        }
        assert!(
            matches(&chosen.route, host, path),
            "route {} does not match {host:?} {path:?}",
            chosen.name
        );
        assert_eq!(
            Some(rank(&chosen.route)),
            best,
            "route {} chosen for {host:?} {path:?} but a better one matches",
            chosen.name
        );
        let forwarded = chosen.forward_path(path);
        if path.starts_with('/') {
            assert!(
                forwarded.starts_with('/'),
                "forwarded {forwarded:?} for {path:?}"
            );
        }
        let after = chosen.path_after_prefix(path);
        assert!(path.ends_with(after));
    }
});
