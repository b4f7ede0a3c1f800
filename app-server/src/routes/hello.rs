//! `GET /`: says which instance and process answered.

use axum::extract::State;

use crate::state::AppState;

pub async fn hello(State(state): State<AppState>) -> String {
    format!("Hello from instance {} (pid {})", state.id(), state.pid())
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use crate::routes::testing::*;

    #[tokio::test]
    async fn says_hello_with_id_and_pid() {
        let t = TestApp::new();
        let r = t.call(req("GET", "/")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.text(),
            format!("Hello from instance {TEST_ID} (pid {})", std::process::id())
        );
        assert_eq!(r.content_type.as_deref(), Some("text/plain; charset=utf-8"));
        assert_eq!(r.instance.as_deref(), Some(TEST_ID));
    }
}
