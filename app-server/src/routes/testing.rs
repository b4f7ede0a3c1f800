//! Helpers for router tests: an app on a plain status channel (no etcd) and
//! one-shot calls that collect the parts a test looks at.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use registry::RegistrationStatus;
use tokio::sync::watch;
use tower::ServiceExt;

use super::{BoxedApp, INSTANCE_HEADER, app};
use crate::kv::peers::REFUSED_HEADER;
use crate::state::AppState;

pub const TEST_ID: &str = "test-instance";

pub struct TestApp {
    pub state: AppState,
    pub registration: watch::Sender<RegistrationStatus>,
    pub router: BoxedApp,
}

impl TestApp {
    /// A `starting`, unregistered instance.
    pub fn new() -> Self {
        let (registration, rx) = watch::channel(RegistrationStatus::default());
        let state = AppState::new(TEST_ID, rx).unwrap();
        TestApp {
            router: BoxedApp::new(app(state.clone())),
            state,
            registration,
        }
    }

    pub async fn call(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &header::HeaderValue| v.to_str().unwrap().to_owned())
        };
        let instance = header(INSTANCE_HEADER);
        let content_type = header(header::CONTENT_TYPE);
        let allow = header(header::ALLOW);
        let etag = header(header::ETAG);
        let refused = header(REFUSED_HEADER);
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            instance,
            content_type,
            allow,
            etag,
            refused,
            body: body.to_vec(),
        }
    }

    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.call(req("GET", path)).await.json()
    }
}

pub fn req(method: &str, path: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap()
}

pub fn req_if_match(
    method: &str,
    path: &str,
    if_match: &str,
    body: impl Into<Body>,
) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(header::IF_MATCH, if_match)
        .body(body.into())
        .unwrap()
}

pub fn req_with(method: &str, path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .body(body.into())
        .unwrap()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub instance: Option<String>,
    pub content_type: Option<String>,
    pub allow: Option<String>,
    pub etag: Option<String>,
    /// `x-shoal-kv-refused`.
    pub refused: Option<String>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    /// An error body: `{"error": code, "detail": ...}` and nothing else; returns the detail.
    pub fn error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(
            self.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.content_type.as_deref(), Some("application/json"));
        let body = self.json();
        let object = body.as_object().unwrap();
        assert_eq!(object.len(), 2, "{body}");
        assert_eq!(body["error"], code, "{body}");
        body["detail"].as_str().unwrap().to_owned()
    }
}
