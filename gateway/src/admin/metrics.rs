//! `/metrics`: the current routing table's statistics in the Prometheus text
//! exposition format 0.0.4, written by hand (the format is a few lines of
//! rules; a client library would only add a second registry of the same
//! numbers that [`crate::stats`] already keeps lock-free).
//!
//! Families, with their labels (every family has one HELP and one TYPE line,
//! and its samples follow them contiguously):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `shoal_gateway_requests_total` | counter | `route`, `service`, `class` |
//! | `shoal_gateway_rate_limited_total` | counter | `route`, `service` (routes with a `rate_limit`) |
//! | `shoal_gateway_upstream_requests_total` | counter | `service`, `instance`, `class` |
//! | `shoal_gateway_request_duration_seconds` | histogram | `service` (+ `le`) |
//! | `shoal_gateway_in_flight` | gauge | `service`, `instance` |
//! | `shoal_gateway_ejected` | gauge (0/1) | `service`, `instance` |
//! | `shoal_gateway_consecutive_failures` | gauge | `service`, `instance` |
//! | `shoal_gateway_peak_ewma_seconds` | gauge | `service`, `instance` |
//! | `shoal_gateway_instances` | gauge | `service`, `state` |
//! | `shoal_gateway_held` | gauge | `service` |
//! | `shoal_gateway_held_total` | counter | `service` |
//! | `shoal_gateway_hold_timeouts_total` | counter | `service` |
//! | `shoal_gateway_retries_total` | counter | `service` |
//! | `shoal_gateway_retries_refused_total` | counter | `service` |
//! | `shoal_gateway_hedges_total` | counter | `service` |
//! | `shoal_gateway_hedges_won_total` | counter | `service` |
//! | `shoal_gateway_registry_connected` | gauge (0/1) | none |
//! | `shoal_gateway_table_generation` | gauge | none |
//! | `shoal_gateway_access_log_dropped_total` | counter | none (0 without `--access-log`) |
//! | `shoal_gateway_tls_cert_expiry_seconds` | gauge | `name` (the `--tls-cert` path, or `registry:{name}` for `{prefix}/certs/{name}`; only with `--tls-listen`) |
//! | `shoal_gateway_live_gateways` | gauge | none |
//! | `shoal_gateway_client_connections` | gauge | `state`: `active`, or `parked` (HTTP/1, idle, hyper's state released) |
//! | `shoal_gateway_client_connection_releases_total` | counter | none |
//!
//! Two request counters rather than one family with two label sets, so that
//! `sum()` over either never double counts: `requests_total` counts client
//! requests once each, by the route that matched them (the default route is
//! `route="(default)"`); `upstream_requests_total` counts attempts sent to an
//! instance, so a retried request appears once per instance it tried.
//! `class` is `1xx`..`5xx`, or `failed` when no response came back (see
//! [`Class`]); every class is exported, zeros included, so series never
//! appear out of nowhere. `shoal_gateway_instances` uses the admin API's
//! states (`starting`, `ready`, `draining`, `ejected`; an ejected instance
//! counts only as `ejected`), so the states of a service sum to its instances.

use std::fmt::{self, Display, Write};
use std::time::Instant;

use crate::admin::stats::{InstanceHealth, InstanceStatus};
use crate::stats::{Class, RequestStats};
use crate::table::RoutingTable;

/// The `Content-Type` of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the gateway knows besides its routing table.
#[derive(Debug, Clone, Default)]
pub struct GatewayFigures {
    /// Access log lines dropped (0 without `--access-log`).
    pub dropped: u64,
    /// Seconds each TLS certificate has left: name, seconds (empty without
    /// `--tls-listen`).
    pub tls_expiry: Vec<(String, i64)>,
    /// Live gateways in the registry, which shared rate limits divide by.
    pub live_gateways: usize,
    pub clients: ClientFigures,
}

/// The proxy listeners' client connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientFigures {
    pub open: usize,
    pub parked: usize,
    pub releases: u64,
}

impl ClientFigures {
    pub fn of(clients: &crate::server::ClientConnections) -> Self {
        ClientFigures {
            open: clients.open(),
            parked: clients.parked(),
            releases: clients.releases(),
        }
    }
}

/// Render every family for `table` and `figures`, as of `now`.
pub fn render(table: &RoutingTable, now: Instant, figures: &GatewayFigures) -> String {
    let mut out = Exposition::default();
    out.write_table(table, now)
        .and_then(|()| out.write_access_log(figures.dropped))
        .and_then(|()| out.write_tls_expiry(&figures.tls_expiry))
        .and_then(|()| out.write_live_gateways(figures.live_gateways))
        .and_then(|()| out.write_clients(figures.clients))
        .expect("formatting into a String never fails");
    out.text
}

#[derive(Default)]
struct Exposition {
    text: String,
}

/// A sample value as Prometheus spells it.
enum Value {
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Float(v) => fmt_float(f, v),
        }
    }
}

fn fmt_float(f: &mut fmt::Formatter<'_>, v: f64) -> fmt::Result {
    if v.is_nan() {
        f.write_str("NaN")
    } else if v.is_infinite() {
        f.write_str(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        // Rust never uses exponent notation here, and Prometheus parses
        // plain decimals of any length.
        write!(f, "{v}")
    }
}

impl From<bool> for Value {
    fn from(v: bool) -> Self {
        Value::Uint(u64::from(v))
    }
}

impl Exposition {
    fn write_table(&mut self, table: &RoutingTable, now: Instant) -> fmt::Result {
        let routes = table.routes.iter().chain([&table.default_route]);
        let pools = || table.pools.values();
        let backends = || {
            pools().flat_map(|pool| {
                pool.all
                    .iter()
                    .map(move |b| (pool.service.as_str(), b.as_ref()))
            })
        };

        self.family(
            "shoal_gateway_requests_total",
            "counter",
            "Client requests by the route that matched them, its service, and the response's status class (failed: no response).",
        )?;
        for route in routes {
            self.classes(
                "shoal_gateway_requests_total",
                &[("route", &route.name), ("service", &route.route.service)],
                &route.stats,
            )?;
        }

        self.family(
            "shoal_gateway_rate_limited_total",
            "counter",
            "Requests answered 429 by their route's rate limit, by this gateway (limits are kept per gateway).",
        )?;
        for route in table.routes.iter() {
            if let Some(limiter) = &route.limiter {
                self.sample(
                    "shoal_gateway_rate_limited_total",
                    &[("route", &route.name), ("service", &route.route.service)],
                    Value::Uint(limiter.limited()),
                )?;
            }
        }

        self.family(
            "shoal_gateway_upstream_requests_total",
            "counter",
            "Attempts sent to an instance (a retried request counts once per instance), by status class (failed: no response).",
        )?;
        for (service, b) in backends() {
            self.classes(
                "shoal_gateway_upstream_requests_total",
                &[("service", service), ("instance", b.id())],
                &b.state.stats,
            )?;
        }

        self.family(
            "shoal_gateway_request_duration_seconds",
            "histogram",
            "Time from receiving a client request to the end of its response headers (or its failure), per service.",
        )?;
        for pool in pools() {
            let h = pool.counters.durations.histogram();
            for (le, count) in &h.buckets {
                let le = Value::Float(*le).to_string();
                self.sample(
                    "shoal_gateway_request_duration_seconds_bucket",
                    &[("service", &pool.service), ("le", &le)],
                    Value::Uint(*count),
                )?;
            }
            let labels = [("service", pool.service.as_str())];
            self.sample(
                "shoal_gateway_request_duration_seconds_sum",
                &labels,
                Value::Float(h.sum_seconds),
            )?;
            self.sample(
                "shoal_gateway_request_duration_seconds_count",
                &labels,
                Value::Uint(h.count),
            )?;
        }

        let healths: Vec<_> = backends()
            .map(|(service, b)| (service, b, InstanceHealth::of(b, now)))
            .collect();

        self.family(
            "shoal_gateway_in_flight",
            "gauge",
            "Requests sent to an instance and not finished yet.",
        )?;
        for (service, b, _) in &healths {
            self.sample(
                "shoal_gateway_in_flight",
                &[("service", service), ("instance", b.id())],
                Value::Int(b.state.stats.in_flight()),
            )?;
        }

        self.family(
            "shoal_gateway_ejected",
            "gauge",
            "1 while an instance is ejected after consecutive failures, else 0.",
        )?;
        for (service, b, health) in &healths {
            self.sample(
                "shoal_gateway_ejected",
                &[("service", service), ("instance", b.id())],
                health.ejected_for.is_some().into(),
            )?;
        }

        self.family(
            "shoal_gateway_consecutive_failures",
            "gauge",
            "Failures in a row of an instance (reset by a success).",
        )?;
        for (service, b, health) in &healths {
            self.sample(
                "shoal_gateway_consecutive_failures",
                &[("service", service), ("instance", b.id())],
                Value::Uint(health.consecutive_failures.into()),
            )?;
        }

        self.family(
            "shoal_gateway_peak_ewma_seconds",
            "gauge",
            "Peak-EWMA latency estimate of an instance, as least-request balancing sees it.",
        )?;
        for (service, b, _) in &healths {
            self.sample(
                "shoal_gateway_peak_ewma_seconds",
                &[("service", service), ("instance", b.id())],
                Value::Float(b.state.rtt.get_nanos(std::time::Instant::now()) / 1e9),
            )?;
        }

        self.family(
            "shoal_gateway_instances",
            "gauge",
            "Registered instances per service by state (an ejected instance counts only as ejected).",
        )?;
        for pool in pools() {
            let mut counts = [0u64; InstanceStatus::ALL.len()];
            for (_, _, health) in healths.iter().filter(|(s, ..)| *s == pool.service) {
                counts[health.status() as usize] += 1;
            }
            for status in InstanceStatus::ALL {
                self.sample(
                    "shoal_gateway_instances",
                    &[("service", &pool.service), ("state", status.label())],
                    Value::Uint(counts[status as usize]),
                )?;
            }
        }

        type Counter = fn(&crate::stats::ServiceCounters) -> Value;
        let per_service: [(&str, &str, &str, Counter); 7] = [
            (
                "shoal_gateway_held",
                "gauge",
                "Requests waiting right now for a ready instance of the service (scale from zero).",
                |c| Value::Int(load_i(&c.held_now)),
            ),
            (
                "shoal_gateway_held_total",
                "counter",
                "Requests that had to wait for a ready instance of the service.",
                |c| Value::Uint(load_u(&c.held_total)),
            ),
            (
                "shoal_gateway_hold_timeouts_total",
                "counter",
                "Held requests that gave up waiting and got a 503.",
                |c| Value::Uint(load_u(&c.hold_timeouts_total)),
            ),
            (
                "shoal_gateway_retries_total",
                "counter",
                "Extra attempts made on another instance.",
                |c| Value::Uint(load_u(&c.retries_total)),
            ),
            (
                "shoal_gateway_retries_refused_total",
                "counter",
                "Retries and hedges not made because the retry budget was spent.",
                |c| Value::Uint(load_u(&c.retries_refused_total)),
            ),
            (
                "shoal_gateway_hedges_total",
                "counter",
                "Hedges: requests also sent to a second instance after waiting past the service's recent p99.",
                |c| Value::Uint(load_u(&c.hedges_total)),
            ),
            (
                "shoal_gateway_hedges_won_total",
                "counter",
                "Hedges whose response was relayed (they beat the first attempt).",
                |c| Value::Uint(load_u(&c.hedges_won_total)),
            ),
        ];
        for (name, kind, help, value) in per_service {
            self.family(name, kind, help)?;
            for pool in pools() {
                self.sample(name, &[("service", &pool.service)], value(&pool.counters))?;
            }
        }

        self.family(
            "shoal_gateway_registry_connected",
            "gauge",
            "1 while the registry (etcd) watch is connected; 0 while routing uses the last known snapshot.",
        )?;
        self.sample(
            "shoal_gateway_registry_connected",
            &[],
            table.registry_connected.into(),
        )?;

        self.family(
            "shoal_gateway_table_generation",
            "gauge",
            "Generation of the routing table in use (increases with every registry change).",
        )?;
        self.sample(
            "shoal_gateway_table_generation",
            &[],
            Value::Uint(table.generation),
        )
    }

    fn write_access_log(&mut self, dropped: u64) -> fmt::Result {
        let name = "shoal_gateway_access_log_dropped_total";
        self.family(
            name,
            "counter",
            "Access log lines dropped because the writer could not keep up.",
        )?;
        self.sample(name, &[], Value::Uint(dropped))
    }

    fn write_live_gateways(&mut self, live: usize) -> fmt::Result {
        let name = "shoal_gateway_live_gateways";
        self.family(
            name,
            "gauge",
            "Gateways registered in the registry (at least this one): what shared rate limits are divided by.",
        )?;
        self.sample(name, &[], Value::Uint(live as u64))
    }

    fn write_clients(&mut self, clients: ClientFigures) -> fmt::Result {
        let name = "shoal_gateway_client_connections";
        self.family(
            name,
            "gauge",
            "Client connections open on the proxy listeners: active, or parked (HTTP/1, idle, holding no buffers).",
        )?;
        // Read apart, so a connection parking between the reads may count twice.
        let active = clients.open.saturating_sub(clients.parked);
        self.sample(name, &[("state", "active")], Value::Uint(active as u64))?;
        self.sample(
            name,
            &[("state", "parked")],
            Value::Uint(clients.parked as u64),
        )?;
        let name = "shoal_gateway_client_connection_releases_total";
        self.family(
            name,
            "counter",
            "Times a quiet HTTP/1 client connection released its buffers and parked.",
        )?;
        self.sample(name, &[], Value::Uint(clients.releases))
    }

    fn write_tls_expiry(&mut self, certs: &[(String, i64)]) -> fmt::Result {
        if certs.is_empty() {
            return Ok(());
        }
        let name = "shoal_gateway_tls_cert_expiry_seconds";
        self.family(
            name,
            "gauge",
            "Seconds until the TLS certificate's notAfter (negative once expired).",
        )?;
        for (cert, left) in certs {
            self.sample(name, &[("name", cert)], Value::Int(*left))?;
        }
        Ok(())
    }

    /// One sample per status class.
    fn classes(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        stats: &RequestStats,
    ) -> fmt::Result {
        let mut with_class = labels.to_vec();
        with_class.push(("class", ""));
        for class in Class::ALL {
            *with_class.last_mut().expect("pushed above") = ("class", class.label());
            self.sample(name, &with_class, Value::Uint(stats.total(class)))?;
        }
        Ok(())
    }

    fn family(&mut self, name: &str, kind: &str, help: &str) -> fmt::Result {
        write!(self.text, "# HELP {name} ")?;
        escape(&mut self.text, help, false)?;
        writeln!(self.text, "\n# TYPE {name} {kind}")
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: Value) -> fmt::Result {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                write!(self.text, "{key}=\"")?;
                escape(&mut self.text, val, true)?;
                self.text.push('"');
            }
            self.text.push('}');
        }
        writeln!(self.text, " {value}")
    }
}

/// Escape a label value (`\`, `"`, newline) or HELP text (`\`, newline).
fn escape(out: &mut String, text: &str, quote: bool) -> fmt::Result {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    Ok(())
}

fn load_u(v: &std::sync::atomic::AtomicU64) -> u64 {
    v.load(std::sync::atomic::Ordering::Relaxed)
}

fn load_i(v: &std::sync::atomic::AtomicI64) -> i64 {
    v.load(std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use registry::model::{BalancePolicy, NamedRoute, Route};
    use registry::{Instance, InstanceState};

    use super::*;
    use crate::table::{DEFAULT_ROUTE, Defaults, LiveState};

    fn instance(service: &str, id: &str, state: InstanceState) -> Instance {
        let mut i = Instance::new(service, "127.0.0.1:1000");
        i.id = id.into();
        i.state = state;
        i
    }

    fn table(instances: &[Instance], now: Instant) -> RoutingTable {
        let route: Route =
            serde_json::from_str(r#"{"service":"api","path_prefix":"/api"}"#).unwrap();
        let routes = BTreeMap::from([(
            "/shoal/routes/api".to_owned(),
            NamedRoute {
                name: "api".into(),
                route,
            },
        )]);
        LiveState::default().build(
            &instances
                .iter()
                .map(|i| {
                    (
                        format!("/shoal/instances/{}/{}", i.service, i.id),
                        i.clone(),
                    )
                })
                .collect(),
            &routes,
            &Defaults {
                service: "app".into(),
                policy: BalancePolicy::LeastRequest,
            },
            false,
            7,
            now,
        )
    }

    /// One parsed sample line: name, labels, value.
    type Sample = (String, Vec<(String, String)>, f64);

    /// A strict parser for what this module writes: HELP and TYPE once per
    /// family and before its samples, every other line `name{labels} value`.
    fn parse(text: &str) -> (HashMap<String, String>, Vec<Sample>) {
        let mut types = HashMap::new();
        let mut helps = HashMap::new();
        let mut samples = Vec::new();
        assert!(text.ends_with('\n'));
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP has text");
                assert!(!help.is_empty());
                assert!(
                    helps.insert(name.to_owned(), ()).is_none(),
                    "HELP twice: {name}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE has a kind");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(helps.contains_key(name), "TYPE before HELP: {name}");
                assert!(
                    types.insert(name.to_owned(), kind.to_owned()).is_none(),
                    "TYPE twice: {name}"
                );
                continue;
            }
            assert!(!line.starts_with('#'), "{line}");
            let name_end = line.find(['{', ' ']).expect("a name");
            let name = &line[..name_end];
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{line}"
            );
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(body) = rest.strip_prefix('{') {
                let mut chars = body.char_indices();
                loop {
                    let start = chars.as_str();
                    let eq = start.find("=\"").expect("label=\"value\"");
                    let key = start[..eq].to_owned();
                    assert!(
                        key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "{line}"
                    );
                    for _ in 0..eq + 2 {
                        chars.next();
                    }
                    let mut value = String::new();
                    loop {
                        match chars.next().expect("closing quote").1 {
                            '\\' => match chars.next().expect("escaped char").1 {
                                'n' => value.push('\n'),
                                c @ ('\\' | '"') => value.push(c),
                                c => panic!("bad escape \\{c} in {line}"),
                            },
                            '"' => break,
                            '\n' => panic!("raw newline in {line}"),
                            c => value.push(c),
                        }
                    }
                    labels.push((key, value));
                    match chars.next().expect("`,` or `}`").1 {
                        ',' => continue,
                        '}' => break,
                        c => panic!("unexpected {c} in {line}"),
                    }
                }
                rest = chars.as_str();
            }
            let value = rest.strip_prefix(' ').expect("one space before the value");
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
                })
                .unwrap_or(name);
            assert!(types.contains_key(family), "sample before its TYPE: {line}");
            samples.push((name.to_owned(), labels, value));
        }
        (types, samples)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
        let matching: Vec<_> = samples
            .iter()
            .filter(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .collect();
        assert_eq!(matching.len(), 1, "{name} {labels:?}: {matching:?}");
        matching[0].2
    }

    #[test]
    fn every_family_is_well_formed_and_counts_what_was_recorded() {
        let t0 = Instant::now();
        let t = table(
            &[
                instance("app", "a", InstanceState::Ready),
                instance("app", "b", InstanceState::Draining),
                instance("app", "c", InstanceState::Starting),
            ],
            t0,
        );
        let pool = t.pool("app").unwrap();
        let a = &pool.all[0];
        a.state.stats.start();
        a.state.stats.start();
        a.state
            .stats
            .record(Some(200), Duration::from_millis(3), t0);
        a.state
            .stats
            .record_finished(None, Duration::from_millis(40), t0);
        t.default_route
            .stats
            .record_finished(Some(200), Duration::from_millis(3), t0);
        t.default_route
            .stats
            .record_finished(Some(503), Duration::from_millis(3), t0);
        for (status, latency) in [
            (200, Duration::from_millis(3)),
            (503, Duration::from_secs(60)),
        ] {
            pool.counters.requests.start();
            pool.counters.record(Some(status), latency, t0);
        }
        pool.counters.retries_total.store(4, Ordering::Relaxed);
        pool.counters.hedges_total.store(6, Ordering::Relaxed);
        pool.counters.held_now.store(2, Ordering::Relaxed);
        pool.counters.held_total.store(9, Ordering::Relaxed);
        pool.all[1]
            .state
            .update_health(|h| h.ejected_until = Some(t0 + Duration::from_secs(5)));

        let (types, samples) = parse(&render(&t, t0, &GatewayFigures::default()));
        for (family, kind) in [
            ("shoal_gateway_requests_total", "counter"),
            ("shoal_gateway_upstream_requests_total", "counter"),
            ("shoal_gateway_request_duration_seconds", "histogram"),
            ("shoal_gateway_in_flight", "gauge"),
            ("shoal_gateway_ejected", "gauge"),
            ("shoal_gateway_instances", "gauge"),
            ("shoal_gateway_held", "gauge"),
            ("shoal_gateway_held_total", "counter"),
            ("shoal_gateway_retries_total", "counter"),
            ("shoal_gateway_retries_refused_total", "counter"),
            ("shoal_gateway_hedges_total", "counter"),
            ("shoal_gateway_hedges_won_total", "counter"),
            ("shoal_gateway_registry_connected", "gauge"),
        ] {
            assert_eq!(
                types.get(family).map(String::as_str),
                Some(kind),
                "{family}"
            );
        }

        let route = |route, class| {
            value(
                &samples,
                "shoal_gateway_requests_total",
                &[("route", route), ("class", class)],
            )
        };
        assert_eq!(route(DEFAULT_ROUTE, "2xx"), 1.0);
        assert_eq!(route(DEFAULT_ROUTE, "5xx"), 1.0);
        assert_eq!(
            route("api", "2xx"),
            0.0,
            "routes are exported before their first request"
        );
        let upstream = |instance, class| {
            value(
                &samples,
                "shoal_gateway_upstream_requests_total",
                &[("service", "app"), ("instance", instance), ("class", class)],
            )
        };
        assert_eq!(upstream("a", "2xx"), 1.0);
        assert_eq!(upstream("a", "failed"), 1.0);
        assert_eq!(upstream("b", "2xx"), 0.0);
        let instance = |name, instance| {
            value(
                &samples,
                name,
                &[("service", "app"), ("instance", instance)],
            )
        };
        assert_eq!(instance("shoal_gateway_in_flight", "a"), 1.0);
        assert_eq!(instance("shoal_gateway_ejected", "a"), 0.0);
        assert_eq!(instance("shoal_gateway_ejected", "b"), 1.0);
        assert_eq!(instance("shoal_gateway_peak_ewma_seconds", "c"), 0.03);

        let bucket = |le| {
            value(
                &samples,
                "shoal_gateway_request_duration_seconds_bucket",
                &[("service", "app"), ("le", le)],
            )
        };
        assert_eq!(bucket("0.002"), 0.0);
        assert_eq!(bucket("0.005"), 1.0);
        assert_eq!(bucket("30"), 1.0);
        assert_eq!(bucket("+Inf"), 2.0);
        let app = |name| value(&samples, name, &[("service", "app")]);
        assert_eq!(app("shoal_gateway_request_duration_seconds_count"), 2.0);
        assert!((app("shoal_gateway_request_duration_seconds_sum") - 60.003).abs() < 1e-9);
        assert_eq!(app("shoal_gateway_retries_total"), 4.0);
        assert_eq!(app("shoal_gateway_hedges_total"), 6.0);
        assert_eq!(app("shoal_gateway_held"), 2.0);
        assert_eq!(app("shoal_gateway_held_total"), 9.0);

        let state = |service, state| {
            value(
                &samples,
                "shoal_gateway_instances",
                &[("service", service), ("state", state)],
            )
        };
        assert_eq!(
            [
                state("app", "ready"),
                state("app", "starting"),
                state("app", "draining")
            ],
            [1.0, 1.0, 0.0]
        );
        assert_eq!(
            state("app", "ejected"),
            1.0,
            "the ejected draining instance"
        );
        assert_eq!(
            state("api", "ready"),
            0.0,
            "a routed service with no instances"
        );
        assert_eq!(
            value(&samples, "shoal_gateway_registry_connected", &[]),
            0.0
        );
        assert_eq!(value(&samples, "shoal_gateway_table_generation", &[]), 7.0);

        // Once the ejection has run out, the instance is back to its registry state.
        let (_, later) = parse(&render(
            &t,
            t0 + Duration::from_secs(6),
            &GatewayFigures::default(),
        ));
        assert_eq!(
            value(&later, "shoal_gateway_ejected", &[("instance", "b")]),
            0.0
        );
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        let hostile = "a\"b\nc\\d";
        let t = table(
            &[instance("app", hostile, InstanceState::Ready)],
            Instant::now(),
        );
        let text = render(&t, Instant::now(), &GatewayFigures::default());
        assert!(
            text.contains(r#"shoal_gateway_in_flight{service="app",instance="a\"b\nc\\d"} 0"#),
            "{text}"
        );
        let (_, samples) = parse(&text);
        assert_eq!(
            value(
                &samples,
                "shoal_gateway_in_flight",
                &[("instance", hostile)]
            ),
            0.0
        );
    }

    #[test]
    fn tls_certificate_expiry_is_a_gauge_per_certificate() {
        let t = table(&[], Instant::now());
        let without = render(&t, Instant::now(), &GatewayFigures::default());
        assert!(
            !without.contains("tls_cert_expiry"),
            "no TLS family without certificates"
        );
        let certs = [("/etc/a.pem".to_owned(), 86_400), ("b.pem".to_owned(), -5)];
        let (types, samples) = parse(&render(
            &t,
            Instant::now(),
            &GatewayFigures {
                tls_expiry: certs.to_vec(),
                ..GatewayFigures::default()
            },
        ));
        let name = "shoal_gateway_tls_cert_expiry_seconds";
        assert_eq!(types[name], "gauge");
        assert_eq!(value(&samples, name, &[("name", "/etc/a.pem")]), 86_400.0);
        assert_eq!(value(&samples, name, &[("name", "b.pem")]), -5.0);
    }

    #[test]
    fn client_connections_are_split_into_active_and_parked() {
        let t = table(&[], Instant::now());
        let (types, samples) = parse(&render(
            &t,
            Instant::now(),
            &GatewayFigures {
                clients: ClientFigures {
                    open: 5,
                    parked: 3,
                    releases: 7,
                },
                ..GatewayFigures::default()
            },
        ));
        let name = "shoal_gateway_client_connections";
        assert_eq!(types[name], "gauge");
        assert_eq!(value(&samples, name, &[("state", "active")]), 2.0);
        assert_eq!(value(&samples, name, &[("state", "parked")]), 3.0);
        let name = "shoal_gateway_client_connection_releases_total";
        assert_eq!(types[name], "counter");
        assert_eq!(value(&samples, name, &[]), 7.0);
    }

    #[test]
    fn floats_are_spelled_the_prometheus_way() {
        let show = |v| Value::Float(v).to_string();
        assert_eq!(show(f64::INFINITY), "+Inf");
        assert_eq!(show(f64::NEG_INFINITY), "-Inf");
        assert_eq!(show(f64::NAN), "NaN");
        assert_eq!(show(0.0005), "0.0005");
        assert_eq!(show(30.0), "30");
        assert_eq!(show(1e-7), "0.0000001");
    }
}
