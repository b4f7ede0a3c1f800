//! `POST /counter/{session}`: a per-session counter kept in this instance's
//! memory, answering the incremented count.
//!
//! It is deliberately instance-local state, the kind the source notes warn
//! about: correct while every request of a session reaches the same instance
//! (a `sticky` route), lost when that instance goes away. The seed
//! experiments (`bench/seed-experiments.sh`) set it against the distributed
//! `/kv/{key}` store. Sessions follow the key rules of `/kv/{key}`; at most
//! [`MAX_SESSIONS`] are kept, so a flood of new sessions cannot exhaust memory.

use std::collections::HashMap;
use std::sync::Mutex;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};

use crate::error::ApiError;
use crate::state::AppState;

/// Most sessions one instance counts; a new session past it gets 503.
pub const MAX_SESSIONS: usize = 100_000;

/// The counts by session, shared by every request to this instance.
#[derive(Debug, Default)]
pub struct Counters {
    counts: Mutex<HashMap<String, u64>>,
}

impl Counters {
    /// Add one to `session`'s count and return it; `None` when the session
    /// is new and [`MAX_SESSIONS`] are already counted.
    fn increment(&self, session: &str) -> Option<u64> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(session) {
            *count += 1;
            return Some(*count);
        }
        if counts.len() >= MAX_SESSIONS {
            return None;
        }
        counts.insert(session.to_owned(), 1);
        Some(1)
    }
}

pub async fn increment(
    State(state): State<AppState>,
    session: Result<Path<String>, PathRejection>,
) -> Result<String, ApiError> {
    let session = super::kv::key(session)?;
    state
        .counters()
        .increment(&session)
        .map(|count| count.to_string())
        .ok_or(ApiError::TooManySessions)
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::*;
    use crate::routes::testing::*;

    #[tokio::test]
    async fn counts_each_session_separately_on_this_instance() {
        let t = TestApp::new();
        for expected in 1..=3 {
            let r = t.call(req("POST", "/counter/s1")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.text(), expected.to_string());
            assert_eq!(r.instance.as_deref(), Some(TEST_ID));
        }
        let r = t.call(req("POST", "/counter/s2")).await;
        assert_eq!(r.text(), "1");
        // Another instance (another state) starts from nothing.
        let other = TestApp::new();
        assert_eq!(other.call(req("POST", "/counter/s1")).await.text(), "1");
    }

    #[tokio::test]
    async fn refuses_bad_sessions_and_other_methods() {
        let t = TestApp::new();
        let r = t.call(req("POST", "/counter/a%20b")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.json()["error"], "bad_key");
        let r = t.call(req("GET", "/counter/s1")).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.allow.as_deref(), Some("POST"));
    }

    #[test]
    fn stops_taking_new_sessions_at_the_cap() {
        let counters = Counters::default();
        for i in 0..MAX_SESSIONS {
            assert_eq!(counters.increment(&format!("s{i}")), Some(1));
        }
        assert_eq!(counters.increment("one-too-many"), None);
        assert_eq!(
            counters.increment("s0"),
            Some(2),
            "known sessions still count"
        );
    }
}
