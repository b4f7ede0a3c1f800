//! The admin API's stats: health, metrics, and the routing table's services
//! and instances with their live stats. Everything is read from the current
//! routing-table snapshot
//! ([`TableHandle::load`](crate::table::TableHandle::load)), so a handler
//! never blocks the request path.
//!
//! `GET /healthz` → [`HealthReport`], `GET /api/v1/services` → a JSON array
//! of [`ServiceSummary`] (one per service the table knows, sorted by name),
//! `GET /api/v1/services/{service}` → [`ServiceDetail`] (the summary plus
//! one [`InstanceView`] per registered instance whatever its state, sorted
//! by id). These types, and what each field means, are the wire contract in
//! `registry::wire::gateway`: the autoscaler decodes the very same types.
//! This file fills them from the routing table ([`service_summary`],
//! [`service_detail`], [`instance_view`]).
//!
//! An unknown service is a 404 `{"error":"not_found","detail":"no service `x`
//! in the registry; known services: a, b"}`; a known service with no instance
//! is a 200 with an empty `instances`.
//!
//! `GET /metrics` → Prometheus text format, see [`super::metrics`].
//!
//! The router, the registry-backed endpoints, the writes and the dashboard
//! are in [`super::api`]; any other path is a 404 and any other method a 405,
//! both JSON `{"error","detail"}` like every error of the admin API.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use registry::InstanceState;
pub use registry::wire::gateway::{
    HealthReport, InstanceStatus, InstanceView, ServiceDetail, ServiceSummary,
};

use super::api::params::Name;
use super::{AdminState, ApiError, metrics};
use crate::backend::Backend;
use crate::table::ServicePool;

/// An instance's registry state and passive health at one moment, read
/// under one lock.
#[derive(Debug, Clone)]
pub struct InstanceHealth {
    pub registry_state: InstanceState,
    /// Time left in the ejection; `None` when not ejected.
    pub ejected_for: Option<Duration>,
    pub consecutive_failures: u32,
    pub ejections: u32,
    /// Kept routable after leaving the registry (see [`crate::grace`]).
    pub unconfirmed: bool,
}

impl InstanceHealth {
    pub fn of(backend: &Backend, now: Instant) -> Self {
        let health = backend.state.health();
        InstanceHealth {
            registry_state: backend.instance.state,
            ejected_for: health
                .ejected_until
                .filter(|until| *until > now)
                .map(|until| until - now),
            consecutive_failures: health.consecutive_failures,
            ejections: health.ejections,
            unconfirmed: backend.unconfirmed.is_some(),
        }
    }

    pub fn status(&self) -> InstanceStatus {
        if self.ejected_for.is_some() {
            return InstanceStatus::Ejected;
        }
        if self.unconfirmed {
            return InstanceStatus::Unconfirmed;
        }
        match self.registry_state {
            InstanceState::Starting => InstanceStatus::Starting,
            InstanceState::Ready => InstanceStatus::Ready,
            InstanceState::Draining => InstanceStatus::Draining,
        }
    }
}

/// A service's summary from its pool.
pub fn service_summary(pool: &ServicePool, now: Instant) -> ServiceSummary {
    let c = &pool.counters;
    let load = |v: &AtomicU64| v.load(Ordering::Relaxed);
    ServiceSummary {
        name: pool.service.clone(),
        ready_instances: pool.ready.len(),
        total_instances: pool.all.len(),
        ejected_instances: pool.all.iter().filter(|b| b.state.is_ejected(now)).count(),
        unconfirmed_instances: pool.all.iter().filter(|b| b.unconfirmed.is_some()).count(),
        stats: c.requests.snapshot(now),
        held_now: c.held_now.load(Ordering::Relaxed),
        held_total: load(&c.held_total),
        hold_timeouts_total: load(&c.hold_timeouts_total),
        retries_total: load(&c.retries_total),
        retries_refused_total: load(&c.retries_refused_total),
        hedges_total: load(&c.hedges_total),
        hedges_won_total: load(&c.hedges_won_total),
        headers_p99_ms: c.latency.p99().map(|p| p.as_secs_f64() * 1000.0),
    }
}

/// A service's detail from its pool: `now` for the stats window and
/// ejections, `wall` for instance ages.
pub fn service_detail(pool: &ServicePool, now: Instant, wall: DateTime<Utc>) -> ServiceDetail {
    ServiceDetail {
        summary: service_summary(pool, now),
        instances: pool
            .all
            .iter()
            .map(|b| instance_view(b, now, wall))
            .collect(),
    }
}

/// One instance as the admin API shows it.
pub fn instance_view(backend: &Backend, now: Instant, wall: DateTime<Utc>) -> InstanceView {
    let i = &backend.instance;
    let health = InstanceHealth::of(backend, now);
    let age = (wall - i.started_at).num_milliseconds().max(0);
    InstanceView {
        id: i.id.clone(),
        addr: i.addr.clone(),
        version: i.version.clone(),
        zone: i.zone.clone(),
        labels: i.labels.clone(),
        weight: i.weight,
        state: health.status(),
        registry_state: health.registry_state,
        ejected: health.ejected_for.is_some(),
        ejected_for_ms: health.ejected_for.map(|d| d.as_millis() as u64),
        consecutive_failures: health.consecutive_failures,
        ejections: health.ejections,
        age_secs: age as f64 / 1000.0,
        stats: backend.state.stats.snapshot(now),
        peak_ewma_ms: backend.state.rtt.get_nanos(std::time::Instant::now()) / 1e6,
    }
}

/// `GET /healthz`.
#[utoipa::path(get, path = "/healthz", tag = "stats",
    responses((status = 200, description = "Always 200; `registry` says whether etcd is connected", body = HealthReport)))]
pub async fn healthz(State(state): State<AdminState>) -> Json<HealthReport> {
    let table = state.table.load();
    let connected = table.registry_connected;
    Json(HealthReport {
        status: "ok".into(),
        gateway_id: state.gateway_id.clone(),
        registry: if connected { "connected" } else { "unreachable" }.into(),
        generation: table.generation,
        services: table.pools.len(),
        detail: (!connected).then(|| {
            format!(
                "the registry (etcd) is unreachable: routing uses the last known instances and routes \
                 (table generation {}) until it is back",
                table.generation
            )
        }),
    })
}

/// `GET /api/v1/services`.
#[utoipa::path(get, path = "/api/v1/services", tag = "stats",
    responses((status = 200, description = "Every service the routing table knows, with its request stats", body = Vec<ServiceSummary>)))]
pub async fn services(State(state): State<AdminState>) -> Json<Vec<ServiceSummary>> {
    let table = state.table.load();
    let now = Instant::now();
    Json(
        table
            .pools
            .values()
            .map(|pool| service_summary(pool, now))
            .collect(),
    )
}

/// `GET /api/v1/services/{service}`.
#[utoipa::path(get, path = "/api/v1/services/{service}", tag = "stats",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, description = "The service and every registered instance with live stats", body = ServiceDetail),
        (status = 400, description = "Invalid service name", body = crate::admin::ErrorBody),
        (status = 404, description = "No such service", body = crate::admin::ErrorBody),
    ))]
pub async fn service(
    State(state): State<AdminState>,
    Name(name): Name,
) -> Result<Json<ServiceDetail>, ApiError> {
    let table = state.table.load();
    let Some(pool) = table.pool(&name) else {
        let known: Vec<&str> = table.pools.keys().map(String::as_str).collect();
        let known = if known.is_empty() {
            "none yet".to_owned()
        } else {
            known.join(", ")
        };
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            error: "not_found",
            detail: format!("no service `{name}` in the registry; known services: {known}"),
        });
    };
    Ok(Json(service_detail(pool, Instant::now(), Utc::now())))
}

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "stats",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
pub async fn metrics_text(State(state): State<AdminState>) -> Response {
    let table = state.table.load();
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(
            &table,
            Instant::now(),
            &metrics::GatewayFigures {
                dropped: state.access_log.as_ref().map_or(0, |log| log.dropped()),
                tls_expiry: state.certs.as_ref().map(|c| c.expiry()).unwrap_or_default(),
                live_gateways: state.live_gateways.load(Ordering::Relaxed),
                clients: metrics::ClientFigures::of(&state.clients),
            },
        ),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::Ordering;

    use axum::Router;
    use axum::body::Body;
    use axum::http::Request;
    use registry::Instance;
    use registry::model::{BalancePolicy, NamedRoute, Route};
    use serde_json::{Value, json};
    use tower::ServiceExt;

    use super::*;
    use crate::admin::test_state_with;
    use crate::table::{Defaults, LiveState, RoutingTable, TableHandle};

    fn instance(id: &str, state: InstanceState) -> Instance {
        let mut i = Instance::new("app", format!("127.0.0.1:{}", 1000 + id.len()));
        i.id = id.into();
        i.state = state;
        i.version = "1.2.3".into();
        i.zone = "z1".into();
        i.weight = 3;
        i.labels = BTreeMap::from([("tier".to_owned(), "gold".to_owned())]);
        i.started_at = Utc::now() - chrono::Duration::seconds(42);
        i
    }

    fn build(instances: &[Instance], connected: bool, epoch: Instant) -> RoutingTable {
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
                .map(|i| (format!("/shoal/instances/app/{}", i.id), i.clone()))
                .collect(),
            &routes,
            &Defaults {
                service: "app".into(),
                policy: BalancePolicy::RoundRobin,
            },
            connected,
            3,
            epoch,
        )
    }

    async fn router(table: RoutingTable) -> Router {
        let (table, _publisher) = TableHandle::new(table);
        crate::admin::api::app(test_state_with(table).await)
    }

    async fn get(router: &Router, uri: &str) -> (StatusCode, String, String) {
        let response = router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            content_type,
            String::from_utf8(body.to_vec()).unwrap(),
        )
    }

    async fn get_json(router: &Router, uri: &str) -> (StatusCode, Value) {
        let (status, content_type, body) = get(router, uri).await;
        assert_eq!(content_type, "application/json", "{uri}");
        (status, serde_json::from_str(&body).unwrap())
    }

    #[tokio::test]
    async fn healthz_says_whether_the_registry_is_there() {
        let now = Instant::now();
        let (status, body) = get_json(&router(build(&[], true, now)).await, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body,
            json!({"status": "ok", "gateway_id": "gw-1", "registry": "connected", "generation": 3, "services": 2})
        );

        let (status, body) = get_json(&router(build(&[], false, now)).await, "/healthz").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "still serving from the last snapshot"
        );
        assert_eq!(body["registry"], "unreachable");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains("last known instances"), "{detail}");
    }

    /// A table whose stats epoch is 5 s ago, so the 10 s window holds whole
    /// seconds of traffic recorded "in the past".
    fn busy_table() -> RoutingTable {
        let epoch = Instant::now() - Duration::from_millis(5500);
        let t = build(
            &[
                instance("a", InstanceState::Ready),
                instance("b", InstanceState::Ready),
                instance("c", InstanceState::Draining),
            ],
            true,
            epoch,
        );
        let pool = t.pool("app").unwrap();
        let (a, b) = (&pool.all[0], &pool.all[1]);
        // `a`: 20 requests in each of seconds 1 and 2, one of them a 502.
        for s in 1..=2 {
            for n in 0..20 {
                let status = if s == 1 && n == 0 { 502 } else { 200 };
                a.state.stats.start();
                a.state.stats.record(
                    Some(status),
                    Duration::from_millis(3),
                    epoch + Duration::from_secs(s),
                );
                pool.counters.requests.record_finished(
                    Some(status),
                    Duration::from_millis(3),
                    epoch + Duration::from_secs(s),
                );
            }
        }
        a.state.stats.start(); // one still in flight
        a.state
            .rtt
            .observe(Duration::from_millis(70), epoch + Duration::from_secs(2));
        // `b`: failing, ejected for a while longer.
        b.state.update_health(|health| {
            health.consecutive_failures = 5;
            health.ejections = 2;
            health.ejected_until = Some(Instant::now() + Duration::from_secs(60));
        });
        pool.counters.held_now.store(1, Ordering::Relaxed);
        pool.counters.held_total.store(6, Ordering::Relaxed);
        pool.counters
            .hold_timeouts_total
            .store(2, Ordering::Relaxed);
        pool.counters.retries_total.store(3, Ordering::Relaxed);
        pool.counters
            .retries_refused_total
            .store(1, Ordering::Relaxed);
        pool.counters.hedges_total.store(5, Ordering::Relaxed);
        pool.counters.hedges_won_total.store(4, Ordering::Relaxed);
        t
    }

    #[tokio::test]
    async fn services_lists_every_service_with_its_stats() {
        let (status, body) = get_json(&router(busy_table()).await, "/api/v1/services").await;
        assert_eq!(status, StatusCode::OK);
        let list = body.as_array().unwrap();
        let names: Vec<_> = list.iter().map(|s| s["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["api", "app"]);

        let api = &list[0];
        assert_eq!(api["total_instances"], 0);
        assert_eq!(api["requests_total"], 0);
        assert_eq!(api["p50_ms"], Value::Null);

        let app = &list[1];
        assert_eq!(app["ready_instances"], 2);
        assert_eq!(app["total_instances"], 3);
        assert_eq!(app["ejected_instances"], 1);
        assert_eq!(app["requests_total"], 40);
        assert_eq!(app["errors_total"], 1);
        assert_eq!(app["in_flight"], 0);
        // The window figures are checked in `service_rates_cover_the_window`:
        // a service's stats start when the table is built, so the requests
        // recorded here all fall in the current, still-open second.
        assert_eq!(app["held_now"], 1);
        assert_eq!(app["held_total"], 6);
        assert_eq!(app["hold_timeouts_total"], 2);
        assert_eq!(app["retries_total"], 3);
        assert_eq!(app["retries_refused_total"], 1);
        assert_eq!(app["hedges_total"], 5);
        assert_eq!(app["hedges_won_total"], 4);
        assert_eq!(app["headers_p99_ms"], Value::Null, "no full second yet");
        let mut keys: Vec<_> = app.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "ejected_instances",
                "error_rate",
                "errors_total",
                "headers_p99_ms",
                "hedges_total",
                "hedges_won_total",
                "held_now",
                "held_total",
                "hold_timeouts_total",
                "in_flight",
                "name",
                "p50_ms",
                "p95_ms",
                "p99_ms",
                "rate",
                "ready_instances",
                "requests_total",
                "retries_refused_total",
                "retries_total",
                "total_instances",
                "unconfirmed_instances",
            ],
            "the autoscaler reads these names"
        );
    }

    #[test]
    fn service_rates_cover_the_window() {
        let t = build(&[instance("a", InstanceState::Ready)], true, Instant::now());
        let t0 = Instant::now();
        let pool = t.pool("app").unwrap();
        for s in 1..=2 {
            for n in 0..20 {
                let status = if s == 1 && n == 0 { 502 } else { 200 };
                pool.counters.requests.record_finished(
                    Some(status),
                    Duration::from_millis(3),
                    t0 + Duration::from_secs(s),
                );
            }
        }
        let summary = service_summary(pool, t0 + Duration::from_millis(5500));
        // 40 requests over the 5 whole seconds the stats have existed.
        assert_eq!(summary.stats.rate, 8.0);
        assert_eq!(summary.stats.error_rate, 0.2);
        let p50 = summary.stats.p50_ms.unwrap();
        assert!((2.0..=5.0).contains(&p50), "{p50}");
        assert!(summary.stats.p99_ms.unwrap() <= 5.0);
        let later = service_summary(pool, t0 + Duration::from_secs(20));
        assert_eq!((later.stats.rate, later.stats.p50_ms), (0.0, None));
        assert_eq!(later.stats.requests_total, 40, "totals never decay");
    }

    #[tokio::test]
    async fn a_service_shows_every_instance_with_its_health() {
        let (status, body) = get_json(&router(busy_table()).await, "/api/v1/services/app").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["name"], "app");
        assert_eq!(body["requests_total"], 40);
        let instances = body["instances"].as_array().unwrap();
        let ids: Vec<_> = instances
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["a", "b", "c"], "every instance, not only ready ones");

        let a = &instances[0];
        assert_eq!(a["addr"], "127.0.0.1:1001");
        assert_eq!(a["version"], "1.2.3");
        assert_eq!(a["zone"], "z1");
        assert_eq!(a["labels"], json!({"tier": "gold"}));
        assert_eq!(a["weight"], 3);
        assert_eq!(a["state"], "ready");
        assert_eq!(a["registry_state"], "ready");
        assert_eq!(a["ejected"], false);
        assert_eq!(a["ejected_for_ms"], Value::Null);
        assert_eq!(a["in_flight"], 1);
        assert_eq!(a["requests_total"], 40);
        assert_eq!(a["errors_total"], 1);
        assert_eq!(a["rate"], 8.0);
        assert!((2.0..=5.0).contains(&a["p95_ms"].as_f64().unwrap()));
        assert_eq!(a["consecutive_failures"], 0);
        // The 70 ms peak replaced the 30 ms default at once; since then it has
        // decayed for 3.5 s of the 10 s time constant: 70 × e^-0.35 ≈ 49.3.
        let ewma = a["peak_ewma_ms"].as_f64().unwrap();
        assert!((45.0..=50.0).contains(&ewma), "peak_ewma_ms {ewma}");
        let age = a["age_secs"].as_f64().unwrap();
        assert!((42.0..50.0).contains(&age), "{age}");

        let b = &instances[1];
        assert_eq!(b["state"], "ejected");
        assert_eq!(b["registry_state"], "ready");
        assert_eq!(b["ejected"], true);
        let left = b["ejected_for_ms"].as_u64().unwrap();
        assert!((50_000..=60_000).contains(&left), "{left}");
        assert_eq!(b["consecutive_failures"], 5);
        assert_eq!(b["ejections"], 2);
        assert_eq!(b["rate"], 0.0);
        assert_eq!(b["p50_ms"], Value::Null);

        assert_eq!(instances[2]["state"], "draining");
        assert_eq!(
            instances[2]["peak_ewma_ms"], 30.0,
            "the default for an unmeasured instance"
        );
    }

    #[tokio::test]
    async fn a_service_without_instances_is_an_empty_list() {
        let (status, body) = get_json(&router(busy_table()).await, "/api/v1/services/api").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["instances"], json!([]));
        assert_eq!(body["total_instances"], 0);
    }

    #[tokio::test]
    async fn unknown_services_and_paths_are_json_404s() {
        let router = router(busy_table()).await;
        let (status, body) = get_json(&router, "/api/v1/services/nope").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            json!({
                "error": "not_found",
                "detail": "no service `nope` in the registry; known services: api, app"
            })
        );

        let (status, body) = get_json(&router, "/api/v2/whatever").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(body["error"], "not_found");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("/api/v2/whatever")
        );

        let response = router
            .clone()
            .oneshot(Request::post("/healthz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "method_not_allowed");
    }

    #[tokio::test]
    async fn metrics_are_prometheus_text() {
        let (status, content_type, body) = get(&router(busy_table()).await, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        assert!(
            body.contains(
                "shoal_gateway_upstream_requests_total{service=\"app\",instance=\"a\",class=\"2xx\"} 39\n"
            ),
            "{body}"
        );
        assert!(body.contains("shoal_gateway_ejected{service=\"app\",instance=\"b\"} 1\n"));
        assert!(body.contains("shoal_gateway_instances{service=\"app\",state=\"ejected\"} 1\n"));
        assert!(body.contains("shoal_gateway_registry_connected 1\n"));
    }
}
