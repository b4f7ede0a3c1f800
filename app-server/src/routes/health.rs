//! The probes: `/healthz` (the process runs), `/readyz` (send me requests),
//! and `/load` (what the autoscaler reads; the document is the wire
//! contract `registry::wire::load`). None of them counts as load.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use registry::wire::load::LoadReport;
use serde_json::{Value, json};
use tracing::warn;

use crate::state::{AppState, Readiness};
use crate::stats::{WINDOW, cpu_seconds};

pub async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "alive", "instance": state.id() }))
}

/// 200 only when the instance is `ready` and its registration is live; 503
/// otherwise, with `status` saying why (`starting`, `draining`, `fenced`,
/// `unregistered`).
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let readiness = state.readiness();
    let registration = state.registration();
    let status = if readiness == Readiness::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": readiness.as_str(),
        "instance": state.id(),
        "detail": readiness.detail(),
        "registered": registration.registered,
        "fenced": registration.fenced,
    });
    (status, Json(body))
}

pub async fn load(State(state): State<AppState>) -> Json<LoadReport> {
    let stats = state.stats().snapshot();
    let cpu_seconds = cpu_seconds()
        .inspect_err(|e| warn!(error = %e, "getrusage failed; reporting cpu_seconds as null"))
        .ok();
    Json(LoadReport {
        instance: state.id().to_owned(),
        state: state.state().to_string(),
        in_flight: stats.in_flight,
        requests_total: stats.requests_total,
        window_secs: WINDOW.as_secs(),
        latency_ms: stats.latency_ms,
        cpu_seconds,
        uptime_secs: stats.uptime.as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::{Body, Bytes};
    use axum::http::StatusCode;
    use registry::InstanceState;

    use crate::routes::testing::*;

    #[tokio::test]
    async fn healthz_is_alive_whatever_the_state() {
        let t = TestApp::new();
        for state in [InstanceState::Starting, InstanceState::Draining] {
            t.state.set_state(state);
            let r = t.call(req("GET", "/healthz")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(
                r.json(),
                serde_json::json!({"status": "alive", "instance": TEST_ID})
            );
        }
    }

    #[tokio::test]
    async fn readyz_follows_the_lifecycle_and_the_registration() {
        let t = TestApp::new();
        let readyz = || async {
            let r = t.call(req("GET", "/readyz")).await;
            assert_eq!(r.instance.as_deref(), Some(TEST_ID));
            (r.status, r.json()["status"].as_str().unwrap().to_owned())
        };
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(readyz().await, (unavailable, "starting".into()));

        t.state.set_state(InstanceState::Ready);
        assert_eq!(readyz().await, (unavailable, "unregistered".into()));

        t.registration.send_modify(|s| s.registered = true);
        assert_eq!(readyz().await, (StatusCode::OK, "ready".into()));
        let body = t.get_json("/readyz").await;
        assert_eq!(body["instance"], TEST_ID);
        assert_eq!(body["registered"], true);

        t.registration.send_modify(|s| s.fenced = true);
        assert_eq!(readyz().await, (unavailable, "fenced".into()));
        assert!(
            t.get_json("/readyz").await["detail"]
                .as_str()
                .unwrap()
                .contains("etcd"),
        );

        t.registration.send_modify(|s| s.fenced = false);
        assert_eq!(readyz().await, (StatusCode::OK, "ready".into()));
        t.state.set_state(InstanceState::Draining);
        assert_eq!(readyz().await, (unavailable, "draining".into()));
    }

    #[tokio::test]
    async fn load_counts_application_requests_only() {
        let t = TestApp::new();
        let load = t.get_json("/load").await;
        assert_eq!(load["instance"], TEST_ID);
        assert_eq!(load["state"], "starting");
        assert_eq!(load["in_flight"], 0);
        assert_eq!(load["requests_total"], 0);
        assert_eq!(load["window_secs"], 10);
        assert_eq!(
            load["latency_ms"],
            serde_json::json!({"p50": null, "p95": null})
        );
        assert!(load["cpu_seconds"].as_f64().unwrap() > 0.0, "{load}");
        assert!(load["uptime_secs"].as_f64().unwrap() >= 0.0, "{load}");

        // Probes are not load.
        for path in ["/healthz", "/readyz", "/load", "/nope"] {
            t.call(req("GET", path)).await;
        }
        let load = t.get_json("/load").await;
        assert_eq!(load["requests_total"], 0, "{load}");
        assert_eq!(load["latency_ms"]["p95"], serde_json::Value::Null);

        // Application requests are, errors included, whichever handler
        // answers them (the counter is a layer on each).
        t.call(req("GET", "/")).await;
        t.call(req("GET", "/work?iterations=10")).await;
        t.call(req("GET", "/work?iterations=0")).await;
        t.call(req("GET", "/kv/missing")).await;
        t.call(req_with("PUT", "/kv/counted", "v")).await;
        t.call(req("DELETE", "/kv/counted")).await;
        t.call(req("POST", "/counter/s1")).await;
        let load = t.get_json("/load").await;
        assert_eq!(load["requests_total"], 7, "{load}");
        assert_eq!(load["in_flight"], 0, "{load}");
        let p50 = load["latency_ms"]["p50"].as_f64().unwrap();
        let p95 = load["latency_ms"]["p95"].as_f64().unwrap();
        assert!(0.0 <= p50 && p50 <= p95, "{load}");
    }

    #[tokio::test]
    async fn a_request_is_in_flight_until_it_answers_and_probes_never_are() {
        let t = TestApp::new();
        // A PUT whose body arrives only when the test says so.
        let (mut body_tx, body_rx) =
            futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let slow = tokio::spawn({
            let router = t.router.clone();
            async move {
                use tower::ServiceExt;
                router
                    .oneshot(req_with("PUT", "/kv/slow", Body::from_stream(body_rx)))
                    .await
                    .unwrap()
                    .status()
            }
        });

        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let load = t.get_json("/load").await;
            // The /load request itself is never counted, so exactly 1 here.
            if load["in_flight"] == 1 {
                break;
            }
            assert_eq!(load["in_flight"], 0, "{load}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "the PUT never started: {load}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        t.call(req("GET", "/healthz")).await;
        t.call(req("GET", "/readyz")).await;
        assert_eq!(t.get_json("/load").await["in_flight"], 1);

        use futures::SinkExt;
        body_tx
            .send(Ok(Bytes::from_static(b"value")))
            .await
            .unwrap();
        drop(body_tx);
        assert_eq!(slow.await.unwrap(), StatusCode::CREATED);
        let load = t.get_json("/load").await;
        assert_eq!(load["in_flight"], 0, "{load}");
        assert_eq!(load["requests_total"], 1, "{load}");
    }
}
