//! Every admin endpoint called in-process (`Router::oneshot`) over a live
//! in-memory registry (`registry::store::memory::MemoryEtcd`, held to etcd's
//! behaviour by the store's conformance suite): success and error cases,
//! the token rule, and what the extractors refuse. Every answer is also
//! checked against the OpenAPI document: its status is one the operation
//! declares, with the declared content type and headers.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use registry::Keys;
use registry::model::{Instance, InstanceState, ScalingEvent};
use registry::store::memory::MemoryEtcd;
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{app, openapi, template_matches};
use crate::admin::{empty_table, test_state_over};
use crate::testing::poll;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Api {
    router: Router,
    etcd: MemoryEtcd,
    doc: Value,
    keys: Keys,
}

struct Answer {
    status: StatusCode,
    body: Value,
    headers: axum::http::HeaderMap,
}

impl Api {
    /// The router over a live in-memory etcd, with `token` for writes; its
    /// watchers have listed.
    async fn start(token: Option<&str>) -> Api {
        let etcd = MemoryEtcd::default();
        let state = test_state_over(empty_table(), &etcd, token);
        let api = Api {
            router: app(state.clone()),
            etcd,
            doc: serde_json::to_value(openapi()).unwrap(),
            keys: Keys::default(),
        };
        wait_for("the watchers' first lists", || state.control.synced()).await;
        api
    }

    async fn send(&self, request: Request<Body>) -> Answer {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                panic!(
                    "{method} {path}: {status} not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                )
            })
        };
        self.check_documented(&method, &path, status, &headers);
        Answer {
            status,
            body,
            headers,
        }
    }

    /// The answer is one the document declares for the operation (when the
    /// path and method are documented), with its content type.
    fn check_documented(
        &self,
        method: &Method,
        path: &str,
        status: StatusCode,
        headers: &axum::http::HeaderMap,
    ) {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let operation = self.doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .filter(|(template, _)| template_matches(template, path))
            .find_map(|(_, item)| item.get(method.as_str().to_lowercase()));
        let Some(operation) = operation else {
            assert!(
                matches!(
                    status,
                    StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED
                ),
                "{method} {path} is not documented yet answered {status}"
            );
            assert_eq!(content_type, "application/json");
            return;
        };
        let declared = &operation["responses"][status.as_str()];
        assert!(
            declared.is_object(),
            "{method} {path} answered {status}, which its operation does not declare"
        );
        for name in declared["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(n, _)| n)
        {
            assert!(
                headers.contains_key(name.as_str()),
                "{method} {path} {status}: the declared header `{name}` is missing"
            );
        }
        let types: Vec<&String> = declared["content"].as_object().unwrap().keys().collect();
        assert!(
            types.iter().any(|t| content_type.starts_with(t.as_str())),
            "{method} {path} {status}: `{content_type}`, declared {types:?}"
        );
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&str>,
        token: Option<&str>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let body = body.map_or_else(Body::empty, |b| Body::from(b.to_owned()));
        self.send(request.body(body).unwrap()).await
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None, None).await
    }

    /// A write with the token.
    async fn write(&self, method: Method, path: &str, body: Option<&str>) -> Answer {
        self.call(method, path, body, Some(TOKEN)).await
    }

    /// Reads `path` until `done` holds of its body.
    async fn read_until(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        poll(what, async || {
            let answer = self.get(path).await;
            if answer.status == StatusCode::OK && done(&answer.body) {
                Ok(answer.body)
            } else {
                Err(format!("last {} {:#}", answer.status, answer.body))
            }
        })
        .await
    }

    fn stored(&self, key: &str) -> Option<Value> {
        self.etcd
            .get(key)
            .map(|(v, _)| serde_json::from_str(&v).unwrap())
    }
}

async fn wait_for(what: &str, done: impl Fn() -> bool) {
    poll(
        what,
        async || if done() { Ok(()) } else { Err(String::new()) },
    )
    .await;
}

/// An error answer: the status, the code, a detail containing `hint`, and
/// nothing else.
#[track_caller]
fn assert_error(got: &Answer, status: StatusCode, error: &str, hint: &str) {
    let body = &got.body;
    assert_eq!(got.status, status, "{body:#}");
    assert_eq!(body["error"], error, "{body:#}");
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains(hint),
        "detail should mention `{hint}`: {detail}"
    );
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "{body:#}");
}

const ROUTE: &str = r#"{"service":"api","path_prefix":"/api","policy":"round-robin"}"#;
const POLICY: &str = r#"{"min":1,"max":5,"metric":"inflight","target":4}"#;

#[tokio::test]
async fn routes_are_written_with_the_token_and_read_back() {
    let api = Api::start(Some(TOKEN)).await;
    assert_eq!(api.get("/api/v1/routes").await.body, json!([]));

    let got = api
        .call(Method::PUT, "/api/v1/routes/api", Some(ROUTE), None)
        .await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authorization: Bearer",
    );
    assert_eq!(
        got.headers["www-authenticate"],
        "Bearer realm=\"shoal-admin\""
    );
    let got = api
        .call(
            Method::PUT,
            "/api/v1/routes/api",
            Some(ROUTE),
            Some("not-the-token-at-all"),
        )
        .await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "not this gateway's --admin-token",
    );
    let mut basic = Request::put("/api/v1/routes/api")
        .header(header::AUTHORIZATION, "Basic abc")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(ROUTE))
        .unwrap();
    basic.headers_mut();
    let got = api.send(basic).await;
    assert_error(
        &got,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "must be `Bearer <token>`",
    );
    assert_eq!(api.stored(&api.keys.route("api")), None, "nothing written");

    let got = api
        .write(Method::PUT, "/api/v1/routes/api", Some(ROUTE))
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{:#}", got.body);
    assert_eq!(
        (&got.body["name"], &got.body["service"]),
        (&json!("api"), &json!("api"))
    );
    let stored = api.stored(&api.keys.route("api")).unwrap();
    assert_eq!(
        (&stored["path_prefix"], &stored["policy"]),
        (&json!("/api"), &json!("round-robin"))
    );
    let got = api
        .write(
            Method::PUT,
            "/api/v1/routes/api",
            Some(r#"{"service":"api","path_prefix":"/v2"}"#),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "a replaced route is 200");
    api.read_until("/api/v1/routes", "the route listed", |v| {
        v[0]["name"] == "api" && v[0]["path_prefix"] == "/v2"
    })
    .await;

    // Invalid input says what to fix, and writes nothing.
    for (body, error, hint) in [
        (
            r#"{"service":"api","path_prefix":"api"}"#,
            "invalid",
            "route.path_prefix: `api` must start with `/`",
        ),
        (
            r#"{"service":"api","policy":"consistent-hash"}"#,
            "invalid",
            "route.hash_key",
        ),
        (r#"{"service": "#, "invalid_json", "not valid JSON"),
        (r#"{}"#, "invalid_json", "missing field `service`"),
        (r#"["api"]"#, "invalid_json", "must be a JSON object"),
        (
            r#"{"service":"api","retries":11}"#,
            "invalid",
            "route.retries: at most 10",
        ),
    ] {
        let got = api
            .write(Method::PUT, "/api/v1/routes/api", Some(body))
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, error, hint);
    }
    let got = api
        .write(Method::PUT, "/api/v1/routes/a%20b", Some(ROUTE))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "use letters, digits",
    );
    let got = api.write(Method::PUT, "/api/v1/routes/api", None).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "send a JSON body",
    );
    let huge = format!(
        r#"{{"service":"api","path_prefix":"/{}"}}"#,
        "x".repeat(70 * 1024)
    );
    let got = api
        .write(Method::PUT, "/api/v1/routes/api", Some(&huge))
        .await;
    assert_error(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "65536 bytes",
    );
    let form = Request::put("/api/v1/routes/api")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from("service=api"))
        .unwrap();
    let got = api.send(form).await;
    assert_error(
        &got,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
        "Content-Type: application/json",
    );
    assert_eq!(
        api.stored(&api.keys.route("api")).unwrap()["path_prefix"],
        "/v2",
        "refused writes change nothing"
    );

    let got = api.write(Method::DELETE, "/api/v1/routes/api", None).await;
    assert_eq!(got.status, StatusCode::OK, "{:#}", got.body);
    assert_eq!(got.body["deleted"], api.keys.route("api"));
    let got = api.write(Method::DELETE, "/api/v1/routes/api", None).await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", "no route `api`");
    let got = api.write(Method::DELETE, "/api/v1/routes/..", None).await;
    assert_error(&got, StatusCode::BAD_REQUEST, "invalid", "reserved");
}

#[tokio::test]
async fn policies_pins_and_their_errors() {
    let api = Api::start(Some(TOKEN)).await;
    let got = api
        .write(Method::PUT, "/api/v1/policies/app", Some(POLICY))
        .await;
    assert_eq!(got.status, StatusCode::CREATED, "{:#}", got.body);
    assert_eq!(got.body["service"], "app");
    assert_eq!(got.body["tolerance"], 0.1, "defaults filled in");
    for (body, error, hint) in [
        (
            r#"{"service":"web","min":1,"max":5,"metric":"inflight","target":4}"#,
            "invalid",
            "the path says `app`",
        ),
        (
            r#"{"min":6,"max":5,"metric":"inflight","target":4}"#,
            "invalid",
            "policy.min: min 6 is above max 5",
        ),
        (
            r#"{"min":1,"max":5,"metric":"qps","target":4}"#,
            "invalid_json",
            "unknown variant `qps`",
        ),
        (
            r#"{"min":1,"max":5,"metric":"rps"}"#,
            "invalid_json",
            "missing field `target`",
        ),
    ] {
        let got = api
            .write(Method::PUT, "/api/v1/policies/app", Some(body))
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, error, hint);
    }
    let got = api
        .call(Method::PUT, "/api/v1/policies/app", Some(POLICY), None)
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    api.read_until("/api/v1/policies", "the policy listed", |v| {
        v[0]["service"] == "app" && v[0]["max"] == 5
    })
    .await;

    // Pin and unpin: compare-and-set on the policy.
    let got = api
        .write(
            Method::PUT,
            "/api/v1/services/app/pin",
            Some(r#"{"replicas":3}"#),
        )
        .await;
    assert_eq!(got.status, StatusCode::OK, "{:#}", got.body);
    assert_eq!(got.body["pinned"], 3);
    let stored = api.stored(&api.keys.policy("app")).unwrap();
    assert_eq!(
        (&stored["pinned"], &stored["min"], &stored["max"]),
        (&json!(3), &json!(1), &json!(5))
    );
    for (body, error, hint) in [
        (
            r#"{"replicas":1001}"#,
            "invalid",
            "policy.pinned: at most 1000",
        ),
        (
            r#"{"replica":3}"#,
            "invalid_json",
            "unknown field `replica`",
        ),
        (r#"{"replicas":-1}"#, "invalid_json", "invalid value"),
        (r#"{"replicas":"3"}"#, "invalid_json", "invalid type"),
    ] {
        let got = api
            .write(Method::PUT, "/api/v1/services/app/pin", Some(body))
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, error, hint);
    }
    let got = api
        .write(
            Method::PUT,
            "/api/v1/services/nope/pin",
            Some(r#"{"replicas":3}"#),
        )
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "PUT /api/v1/policies/nope",
    );
    let got = api
        .write(Method::DELETE, "/api/v1/services/app/pin", None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{:#}", got.body);
    assert_eq!(got.body.get("pinned"), None);
    assert_eq!(
        api.stored(&api.keys.policy("app")).unwrap().get("pinned"),
        None
    );
    let got = api
        .write(Method::DELETE, "/api/v1/services/nope/pin", None)
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "no scaling policy",
    );

    // A stored policy that cannot be decoded: the pin's compare-and-set
    // refuses to build on it.
    api.etcd.put(&api.keys.policy("bad"), "{not json");
    let got = api
        .write(
            Method::PUT,
            "/api/v1/services/bad/pin",
            Some(r#"{"replicas":1}"#),
        )
        .await;
    assert_error(
        &got,
        StatusCode::CONFLICT,
        "conflict",
        "replace it with PUT /api/v1/policies/bad",
    );

    let got = api
        .write(Method::DELETE, "/api/v1/policies/app", None)
        .await;
    assert_eq!(got.status, StatusCode::OK);
    let got = api
        .write(Method::DELETE, "/api/v1/policies/app", None)
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "no scaling policy for `app`",
    );
}

fn event(desired: u32) -> String {
    serde_json::to_string(&ScalingEvent {
        service: "app".into(),
        at: chrono::Utc::now(),
        kind: "decision".into(),
        current: desired - 1,
        desired,
        reason: format!("{} → {desired}: test", desired - 1),
        bounded_by: None,
        inputs: Default::default(),
        instance: None,
    })
    .unwrap()
}

#[tokio::test]
async fn events_rollouts_and_retiring() {
    let api = Api::start(Some(TOKEN)).await;
    for (seq, desired) in [(1u64, 2u32), (2, 3), (3, 4)] {
        api.etcd.put(&api.keys.event("app", seq), event(desired));
    }
    let events = api
        .read_until("/api/v1/events/app?limit=2", "the two newest events", |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 2 && a[0]["desired"] == 4)
        })
        .await;
    assert_eq!(events[1]["desired"], 3, "newest first: {events:#}");
    assert_eq!(
        api.get("/api/v1/events/app")
            .await
            .body
            .as_array()
            .unwrap()
            .len(),
        3
    );
    assert_eq!(api.get("/api/v1/events/other").await.body, json!([]));
    let got = api.get("/api/v1/events/app?limit=0").await;
    assert_error(&got, StatusCode::BAD_REQUEST, "bad_request", "use 1..=1000");
    let got = api.get("/api/v1/events/app?limit=many").await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "bad query string `limit=many`",
    );
    let got = api.get("/api/v1/events/a%20b").await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "use letters, digits",
    );
    let got = api.get("/api/v1/events/%FF").await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "bad_request",
        "bad path parameter",
    );

    // Rollouts: only for a service with a policy, one at a time.
    let rollout =
        |body: Option<&'static str>| api.write(Method::POST, "/api/v1/services/app/rollout", body);
    let got = rollout(None).await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "has no scaling policy",
    );
    let got = api
        .write(
            Method::PUT,
            "/api/v1/policies/app",
            Some(r#"{"min":1,"max":3,"metric":"rps","target":50}"#),
        )
        .await;
    assert_eq!(got.status, StatusCode::CREATED);
    let got = rollout(Some(r#"{"max_surge":0,"max_unavailable":0}"#)).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "rollout.max_surge",
    );
    let got = rollout(Some(r#"[2]"#)).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "must be a JSON object",
    );
    let got = rollout(Some(r#"{"max_surge":"2"}"#)).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_json",
        "invalid type",
    );
    let got = api
        .call(Method::POST, "/api/v1/services/app/rollout", None, None)
        .await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");
    let got = rollout(Some(r#"{"max_surge":2}"#)).await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{:#}", got.body);
    assert_eq!(
        (&got.body["max_surge"], &got.body["max_unavailable"]),
        (&json!(2), &json!(0))
    );
    let stored = api.stored(&api.keys.rollout("app")).unwrap();
    assert_eq!(
        (&stored["requested_by"], &stored["service"]),
        (&json!("api"), &json!("app"))
    );
    let got = rollout(None).await;
    assert_error(
        &got,
        StatusCode::CONFLICT,
        "conflict",
        "already in progress (requested by api",
    );
    api.read_until("/api/v1/rollouts", "the rollout listed", |v| {
        v[0]["service"] == "app" && v[0]["max_surge"] == 2
    })
    .await;

    // Retire: only a registered instance; the key is what the instance watches.
    let got = api
        .write(
            Method::POST,
            "/api/v1/services/app/instances/no-such-instance/retire",
            Some(r#"{"reason":"test"}"#),
        )
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "no registered instance `no-such-instance`",
    );
    assert_eq!(
        api.stored(&api.keys.retire("app", "no-such-instance")),
        None
    );
    let mut instance = Instance::new("app", "127.0.0.1:9");
    instance.state = InstanceState::Ready;
    let id = instance.id.clone();
    api.etcd.put(
        &api.keys.instance("app", &id),
        serde_json::to_string(&instance).unwrap(),
    );
    let path = format!("/api/v1/services/app/instances/{id}/retire");
    let long = format!(r#"{{"reason":"{}"}}"#, "é".repeat(257));
    let got = api.write(Method::POST, &path, Some(&long)).await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "at most 256 characters",
    );
    let got = api
        .write(Method::POST, &path, Some(r#"{"reason":"a\u0007b"}"#))
        .await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "control characters",
    );
    let got = api
        .write(Method::POST, &path, Some(r#"{"reason":"test says so"}"#))
        .await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "{:#}", got.body);
    assert_eq!(got.body["key"], api.keys.retire("app", &id));
    let stored = api.stored(&api.keys.retire("app", &id)).unwrap();
    assert_eq!(
        (&stored["reason"], &stored["by"]),
        (&json!("test says so"), &json!("api"))
    );
    let got = api.write(Method::POST, &path, None).await;
    assert_eq!(got.status, StatusCode::ACCEPTED, "the body is optional");
    assert_eq!(got.body["reason"], "retired through the admin API");
}

#[tokio::test]
async fn service_specs_history_and_undo() {
    let api = Api::start(Some(TOKEN)).await;
    let path = "/api/v1/services/web/spec";
    let v1 = r#"{"process":{"argv":["node","server.js","{port}"]}}"#;
    let v2 = r#"{"name":"web","process":{"argv":["node","server.js","{port}"],"env":{"A":"2"}}}"#;

    let got = api.get(path).await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "PUT /api/v1/services/web/spec",
    );
    let got = api
        .write(Method::POST, "/api/v1/services/web/spec/undo", None)
        .await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "has no service spec",
    );
    let got = api.call(Method::PUT, path, Some(v1), None).await;
    assert_error(&got, StatusCode::UNAUTHORIZED, "unauthorized", "Bearer");

    let got = api.write(Method::PUT, path, Some(v1)).await;
    assert_eq!(got.status, StatusCode::CREATED, "{:#}", got.body);
    assert_eq!(
        (&got.body["written"], &got.body["previous"]),
        (&json!("created"), &Value::Null)
    );
    let first = got.body["version"].as_str().unwrap().to_owned();
    assert_eq!(first.len(), 16);
    let got = api.get(path).await;
    assert_eq!(got.body["version"], first.as_str());
    assert_eq!(
        got.body["spec"]["name"], "web",
        "the name comes from the path"
    );
    assert_eq!(
        got.body["spec"]["registration"], "managed",
        "defaults filled in"
    );
    let got = api.write(Method::PUT, path, Some(v1)).await;
    assert_eq!(
        (got.status, &got.body["written"]),
        (StatusCode::OK, &json!("unchanged"))
    );
    let got = api
        .write(Method::POST, "/api/v1/services/web/spec/undo", None)
        .await;
    assert_error(&got, StatusCode::CONFLICT, "conflict", "no earlier spec");

    let got = api.write(Method::PUT, path, Some(v2)).await;
    assert_eq!(
        (got.status, &got.body["written"]),
        (StatusCode::OK, &json!("replaced"))
    );
    assert_eq!(got.body["previous"], first.as_str());
    let second = got.body["version"].as_str().unwrap().to_owned();
    assert_ne!(first, second);
    let history = api.get("/api/v1/services/web/spec/history").await.body;
    assert_eq!(history.as_array().unwrap().len(), 1, "{history:#}");
    assert_eq!(history[0]["version"], first.as_str());

    let got = api
        .write(Method::POST, "/api/v1/services/web/spec/undo", None)
        .await;
    assert_eq!(got.status, StatusCode::OK, "{:#}", got.body);
    assert_eq!(
        (&got.body["previous"], &got.body["version"]),
        (&json!(second), &json!(first))
    );
    assert_eq!(api.get(path).await.body["version"], first.as_str());

    for (body, error, hint) in [
        (
            r#"{"name":"other","process":{"argv":["x","{port}"]}}"#,
            "invalid",
            "the path says `web`",
        ),
        (r#"{}"#, "invalid", "says neither how to run it"),
        (
            r#"{"process":{"argv":["node"]}}"#,
            "invalid",
            "does not tell the program its port",
        ),
        (
            r#"{"process":{"argv":["x","{port}"]},"replicas":2}"#,
            "invalid_json",
            "unknown field `replicas`",
        ),
        (
            r#"{"process":{"argv":["x","{port}"]},"drain_grace_secs":3601}"#,
            "invalid",
            "at most 3600",
        ),
    ] {
        let got = api.write(Method::PUT, path, Some(body)).await;
        assert_error(&got, StatusCode::BAD_REQUEST, error, hint);
    }

    let got = api.write(Method::DELETE, path, None).await;
    assert_eq!(got.status, StatusCode::OK, "{:#}", got.body);
    assert_eq!(got.body["deleted"], api.keys.service("web"));
    assert_eq!(
        api.get("/api/v1/services/web/spec/history").await.body,
        json!([]),
        "with its history"
    );
    let got = api.write(Method::DELETE, path, None).await;
    assert_error(
        &got,
        StatusCode::NOT_FOUND,
        "not_found",
        "has no service spec",
    );
}

#[tokio::test]
async fn without_a_token_writes_need_none_and_etcd_down_is_503() {
    let api = Api::start(None).await;
    let got = api
        .call(Method::PUT, "/api/v1/policies/app", Some(POLICY), None)
        .await;
    assert_eq!(
        got.status,
        StatusCode::CREATED,
        "no token configured, none needed"
    );
    api.read_until("/api/v1/policies", "the policy listed", |v| {
        v[0]["service"] == "app"
    })
    .await;

    api.etcd.set_up(false);
    for (method, path, body) in [
        (
            Method::PUT,
            "/api/v1/routes/api",
            Some(r#"{"service":"api"}"#),
        ),
        (Method::DELETE, "/api/v1/policies/app", None),
        (Method::POST, "/api/v1/services/app/rollout", None),
        (Method::DELETE, "/api/v1/services/app/spec", None),
    ] {
        let got = api.call(method.clone(), path, body, None).await;
        assert_error(
            &got,
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "the registry (etcd) cannot be reached",
        );
    }
    // Reads keep the last snapshot, and say so.
    poll("reads marked unreachable", async || {
        let got = api.get("/api/v1/policies").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(
            got.body[0]["service"], "app",
            "the last snapshot is still served"
        );
        let marked = &got.headers["x-shoal-registry"];
        if marked == "unreachable" {
            Ok(())
        } else {
            Err(format!("x-shoal-registry: {marked:?}"))
        }
    })
    .await;
}

#[tokio::test]
async fn before_the_first_list_reads_are_503() {
    let etcd = MemoryEtcd::default();
    etcd.set_up(false);
    let api = Api {
        router: app(test_state_over(empty_table(), &etcd, None)),
        etcd,
        doc: serde_json::to_value(openapi()).unwrap(),
        keys: Keys::default(),
    };
    for path in [
        "/api/v1/routes",
        "/api/v1/policies",
        "/api/v1/rollouts",
        "/api/v1/events/app",
    ] {
        let got = api.get(path).await;
        assert_error(
            &got,
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "no list has succeeded",
        );
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_are_json_errors() {
    let api = Api::start(Some(TOKEN)).await;
    let got = api.get("/api/v1/nothing").await;
    assert_error(&got, StatusCode::NOT_FOUND, "not_found", "/api/v1/routes");
    let got = api.write(Method::POST, "/api/v1/routes/x", None).await;
    assert_error(
        &got,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "PUT or DELETE",
    );
    assert_eq!(got.headers["allow"], "PUT, DELETE");
}

#[tokio::test]
async fn the_stream_opens_with_history_then_a_snapshot() {
    use http_body_util::BodyExt;
    let api = Api::start(None).await;
    // A declared service with no instance yet is on the dashboard too.
    let spec = r#"{"process":{"argv":["node","server.js","{port}"]}}"#;
    let got = api
        .write(Method::PUT, "/api/v1/services/web/spec", Some(spec))
        .await;
    let version = got.body["version"].as_str().unwrap().to_owned();
    let response = api
        .router
        .clone()
        .oneshot(Request::get("/api/v1/stream").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains(&version) || !text.ends_with("\n\n") {
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("an event within 5 s")
            .expect("the stream stays open")
            .unwrap();
        if let Ok(data) = frame.into_data() {
            text.push_str(std::str::from_utf8(&data).unwrap());
        }
    }
    assert!(text.starts_with("event: history\n"), "{text}");
    let snapshot = text
        .split("\n\n")
        .find(|block| block.starts_with("event: snapshot") && block.contains(&version))
        .and_then(|block| block.lines().find_map(|l| l.strip_prefix("data: ")))
        .expect("a snapshot with data");
    let snapshot: Value = serde_json::from_str(snapshot).unwrap();
    assert_eq!(snapshot["gateway_id"], "gw-1");
    let web = snapshot["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "web")
        .unwrap_or_else(|| panic!("no `web` panel: {snapshot:#}"));
    assert_eq!(web["spec_version"], version.as_str());
    assert_eq!(
        (&web["on_spec_version"], &web["total_instances"]),
        (&json!(0), &json!(0))
    );

    // The data is the documented DashboardSnapshot: every required field of
    // it and of each panel (with what it flattens in) is there.
    let schemas = &api.doc["components"]["schemas"];
    for field in required_fields(schemas, &schemas["DashboardSnapshot"]) {
        assert!(snapshot.get(&field).is_some(), "snapshot without `{field}`");
    }
    let fields = required_fields(schemas, &schemas["ServicePanel"]);
    assert!(fields.len() > 10, "{fields:?}");
    for field in fields {
        assert!(
            web.get(&field).is_some(),
            "panel without `{field}`: {web:#}"
        );
    }
}

/// The required properties of `schema`, following `$ref` and `allOf`.
fn required_fields(schemas: &Value, schema: &Value) -> Vec<String> {
    if let Some(name) = schema["$ref"].as_str() {
        let name = name.trim_start_matches("#/components/schemas/");
        return required_fields(schemas, &schemas[name]);
    }
    let mut fields: Vec<String> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    for part in schema["allOf"].as_array().into_iter().flatten() {
        fields.extend(required_fields(schemas, part));
    }
    fields
}

/// Spec reads go to the store, which retries them within its bound: with
/// etcd down they answer 503 after it (paused time), as do spec writes.
#[tokio::test(start_paused = true)]
async fn spec_reads_and_writes_are_503_while_etcd_is_down() {
    let api = Api::start(Some(TOKEN)).await;
    let spec = r#"{"process":{"argv":["node","server.js","{port}"]}}"#;
    let got = api
        .write(Method::PUT, "/api/v1/services/web/spec", Some(spec))
        .await;
    assert_eq!(got.status, StatusCode::CREATED);
    api.etcd.set_up(false);
    for (method, path) in [
        (Method::GET, "/api/v1/services/web/spec"),
        (Method::GET, "/api/v1/services/web/spec/history"),
        (Method::POST, "/api/v1/services/web/spec/undo"),
        (Method::PUT, "/api/v1/services/web/spec"),
    ] {
        let body = (method == Method::PUT).then_some(spec);
        let got = api.write(method.clone(), path, body).await;
        assert_error(
            &got,
            StatusCode::SERVICE_UNAVAILABLE,
            "registry_unavailable",
            "the registry (etcd) cannot be reached",
        );
    }
}

/// The reads that need no registry, checked against the document too: the
/// charts' history, a service's stats by a bad name, and the dashboard's
/// files with their content types and CSP.
#[tokio::test]
async fn history_stats_and_the_dashboard_files() {
    let api = Api::start(None).await;
    let got = api.get("/api/v1/history").await;
    assert_eq!(got.status, StatusCode::OK);
    assert!(got.body.is_object(), "{:#}", got.body);
    let got = api.get("/api/v1/services/a%20b").await;
    assert_error(
        &got,
        StatusCode::BAD_REQUEST,
        "invalid",
        "use letters, digits",
    );
    for (path, kind) in [
        ("/dashboard", "text/html"),
        ("/dashboard/dashboard.js", "text/javascript"),
        ("/dashboard/dashboard.css", "text/css"),
    ] {
        let response = api
            .router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let headers = response.headers();
        api.check_documented(&Method::GET, path, response.status(), headers);
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with(kind),
            "{path}"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(csp.contains("default-src 'none'"), "{path}: {csp}");
    }
}
