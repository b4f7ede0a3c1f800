//! `GET /work?iterations=N`: a CPU-bound busy loop, the load generator the
//! autoscaler's CPU and latency policies are exercised with.
//!
//! The loop runs on the blocking pool so that a busy instance still answers
//! `/healthz` and `/readyz` on time.

use std::hint::black_box;
use std::time::Instant;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use serde::{Deserialize, Serialize};
use tracing::error;

use crate::error::ApiError;
use crate::state::AppState;

/// Iterations when the query does not say.
pub const DEFAULT_ITERATIONS: u64 = 10_000_000;
/// Most iterations one request may ask for (tens of seconds of CPU).
pub const MAX_ITERATIONS: u64 = 10_000_000_000;

#[derive(Debug, Deserialize)]
pub struct WorkQuery {
    // Taken as text so that a bad value gets our message, not serde's.
    iterations: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct WorkReport {
    pub instance: String,
    pub pid: u32,
    pub iterations: u64,
    pub elapsed_ms: f64,
}

/// `None` means the default; anything but a whole number in range is refused.
pub fn parse_iterations(given: Option<&str>) -> Result<u64, ApiError> {
    let Some(given) = given else {
        return Ok(DEFAULT_ITERATIONS);
    };
    match given.parse::<u64>() {
        Ok(n) if (1..=MAX_ITERATIONS).contains(&n) => Ok(n),
        _ => Err(ApiError::BadIterations {
            given: given.to_owned(),
        }),
    }
}

/// Spin for `iterations` steps. `black_box` keeps the optimiser from
/// replacing the loop with its closed form.
pub fn busy_loop(iterations: u64) -> u64 {
    let mut acc: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..iterations {
        acc = black_box(acc.rotate_left(5) ^ i).wrapping_mul(0x2545_f491_4f6c_dd1d);
    }
    acc
}

pub async fn work(
    State(state): State<AppState>,
    query: Result<Query<WorkQuery>, QueryRejection>,
) -> Result<Json<WorkReport>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadQuery(e.body_text()))?;
    let iterations = parse_iterations(query.iterations.as_deref())?;
    let elapsed_ms = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        black_box(busy_loop(iterations));
        started.elapsed().as_secs_f64() * 1000.0
    })
    .await
    .map_err(|e| {
        error!(iterations, error = %e, "work task failed");
        ApiError::Internal
    })?;
    Ok(Json(WorkReport {
        instance: state.id().to_owned(),
        pid: state.pid(),
        iterations,
        elapsed_ms,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::testing::*;
    use axum::http::StatusCode;

    #[test]
    fn iterations_default_and_bounds() {
        assert_eq!(parse_iterations(None).unwrap(), DEFAULT_ITERATIONS);
        assert_eq!(parse_iterations(Some("1")).unwrap(), 1);
        assert_eq!(
            parse_iterations(Some("10000000000")).unwrap(),
            MAX_ITERATIONS
        );
        for bad in [
            "0",
            "10000000001",
            "-5",
            "abc",
            "",
            "1.5",
            "99999999999999999999999",
        ] {
            assert!(
                matches!(
                    parse_iterations(Some(bad)),
                    Err(ApiError::BadIterations { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_loop_depends_on_its_input() {
        assert_ne!(busy_loop(1000), busy_loop(1001));
        assert_eq!(busy_loop(1000), busy_loop(1000));
    }

    #[tokio::test]
    async fn bad_iterations_are_400s_naming_the_range() {
        let t = TestApp::new();
        for bad in ["0", "10000000001", "abc", "-1"] {
            let r = t.call(req("GET", &format!("/work?iterations={bad}"))).await;
            let detail = r.error(StatusCode::BAD_REQUEST, "bad_iterations");
            assert!(
                detail.contains(&format!("iterations `{bad}` is not allowed"))
                    && detail.contains("1..=10000000000"),
                "{detail}"
            );
            assert_eq!(r.instance.as_deref(), Some(TEST_ID));
        }
    }

    #[tokio::test]
    async fn a_small_work_call_reports_what_it_did() {
        let t = TestApp::new();
        let r = t.call(req("GET", "/work?iterations=1000")).await;
        assert_eq!(r.status, StatusCode::OK);
        let body = r.json();
        assert_eq!(body["instance"], TEST_ID);
        assert_eq!(body["pid"], std::process::id());
        assert_eq!(body["iterations"], 1000);
        let elapsed = body["elapsed_ms"].as_f64().unwrap();
        assert!((0.0..1000.0).contains(&elapsed), "{elapsed}");
    }
}
