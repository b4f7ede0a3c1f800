//! The proxy end to end, without etcd: real backends (axum on 127.0.0.1:0),
//! a routing table built by hand and published like discovery would, the
//! real [`Server`] in front, and a real HTTP client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::Request as AxumRequest;
use axum::response::IntoResponse;
use axum::routing::{any, get, post};
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use registry::model::{BalancePolicy, NamedRoute, Route};
use registry::{Instance, InstanceState};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::*;
use crate::health::MAX_EJECTION;
use crate::server::{Drained, Server, ServerSettings};
use crate::table::{Defaults, LiveState, TablePublisher};
use crate::testing::serve_router;

/// The registry as the test sets it: instances and routes, published on change.
struct Registry {
    live: LiveState,
    publisher: TablePublisher,
    instances: BTreeMap<String, Instance>,
    routes: BTreeMap<String, NamedRoute>,
    policy: BalancePolicy,
    generation: u64,
}

impl Registry {
    fn new(policy: BalancePolicy) -> (Arc<Mutex<Registry>>, TableHandle) {
        let mut live = LiveState::default();
        let table = live.build(
            &BTreeMap::new(),
            &BTreeMap::new(),
            &defaults(policy),
            true,
            0,
            Instant::now(),
        );
        let (handle, publisher) = TableHandle::new(table);
        let registry = Registry {
            live,
            publisher,
            instances: BTreeMap::new(),
            routes: BTreeMap::new(),
            policy,
            generation: 0,
        };
        (Arc::new(Mutex::new(registry)), handle)
    }

    fn put_instance(&mut self, id: &str, addr: SocketAddr, state: InstanceState) {
        let mut instance = Instance::new("app", addr.to_string());
        instance.id = id.into();
        instance.state = state;
        self.instances
            .insert(format!("/shoal/instances/app/{id}"), instance);
        self.publish();
    }

    fn put_route(&mut self, name: &str, json: &str) {
        let route: Route = serde_json::from_str(json).unwrap();
        route.validate().unwrap();
        self.routes.insert(
            format!("/shoal/routes/{name}"),
            NamedRoute {
                name: name.into(),
                route,
            },
        );
        self.publish();
    }

    fn publish(&mut self) {
        self.generation += 1;
        let table = self.live.build(
            &self.instances,
            &self.routes,
            &defaults(self.policy),
            true,
            self.generation,
            Instant::now(),
        );
        self.publisher.publish(table);
    }
}

/// Register an instance (the address is computed before the lock is taken).
fn put(registry: &Arc<Mutex<Registry>>, id: &str, addr: SocketAddr, state: InstanceState) {
    registry.lock().unwrap().put_instance(id, addr, state);
}

fn defaults(policy: BalancePolicy) -> Defaults {
    Defaults {
        service: "app".into(),
        policy,
    }
}

fn settings() -> ProxySettings {
    ProxySettings {
        hold_timeout: Duration::from_secs(5),
        slow_start: Duration::ZERO,
        connect_timeout: Duration::from_secs(1),
        response_timeout: Duration::from_secs(10),
        try_timeout: None,
        upstream_idle_timeout: Duration::from_secs(30),
        retries: 2,
        max_body_bytes: 1024 * 1024,
        max_inflight_per_instance: 0,
        queue_per_instance: 0,
        ejection: EjectionPolicy {
            after: 5,
            base: Duration::from_secs(1),
            max: MAX_EJECTION,
        },
        hedge: HedgePolicy::default(),
        trusted_proxies: TrustedProxies::default(),
        trace_headers: true,
        access_log: None,
        https_port: None,
        live_gateways: Arc::new(std::sync::atomic::AtomicUsize::new(1)),
    }
}

fn server_settings() -> ServerSettings {
    ServerSettings {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_header_bytes: 64 * 1024,
    }
}

/// A running gateway in front of a hand-made table.
struct Gateway {
    addr: SocketAddr,
    proxy: Proxy,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Drained>,
}

async fn gateway(table: TableHandle, settings: ProxySettings, server: ServerSettings) -> Gateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let proxy = Proxy::new(table, settings);
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        Server::new(listener, proxy.clone(), server).run(stop.clone(), Duration::from_secs(5)),
    );
    Gateway {
        addr,
        proxy,
        stop,
        task,
    }
}

/// A backend that says who it is, echoes, sleeps, shows headers and upgrades.
async fn backend(name: &'static str) -> SocketAddr {
    let app = Router::new()
        .route("/", get(move || async move { name }))
        .route("/hello", get(move || async move { name }))
        .route("/echo", post(|body: Bytes| async move { body }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(1500)).await;
                "slow"
            }),
        )
        .route(
            "/headers",
            get(|headers: HeaderMap| async move {
                let pick = |n: &str| {
                    headers
                        .get_all(n)
                        .iter()
                        .map(|v| v.to_str().unwrap().to_owned())
                        .collect::<Vec<_>>()
                };
                axum::Json(serde_json::json!({
                    "x-forwarded-for": pick("x-forwarded-for"),
                    "x-forwarded-proto": pick("x-forwarded-proto"),
                    "x-forwarded-host": pick("x-forwarded-host"),
                    "host": pick("host"),
                    "x-hop": pick("x-hop"),
                    "te": pick("te"),
                    "x-kept": pick("x-kept"),
                }))
            }),
        )
        .route("/ws", any(upgrade_echo))
        .layer(axum::middleware::map_response(
            move |mut response: axum::response::Response| async move {
                response
                    .headers_mut()
                    .insert("x-backend", http::HeaderValue::from_static(name));
                response
            },
        ));
    serve_router(app).await
}

/// Answers `Upgrade: echo` with 101, then echoes every byte.
async fn upgrade_echo(mut request: AxumRequest) -> axum::response::Response {
    crate::testing::spawn_upgraded_echo(hyper::upgrade::on(&mut request));
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("upgrade", "echo")
        .header("connection", "upgrade")
        .body(AxumBody::empty())
        .unwrap()
        .into_response()
}

/// An address nothing listens on (connection refused).
async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

type TestClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn instance(&self) -> &str {
        self.headers[headers::X_SHOAL_INSTANCE].to_str().unwrap()
    }

    fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

async fn send(client: &TestClient, request: Request<Full<Bytes>>) -> Reply {
    let response = client.request(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

fn get_req(gw: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::get(format!("http://{gw}{path}"))
        .body(Full::default())
        .unwrap()
}

#[tokio::test]
async fn round_robin_spreads_evenly_and_names_the_instance() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    for name in ["a", "b", "c"] {
        let addr = backend(name).await;
        put(&registry, name, addr, InstanceState::Ready);
    }
    let gw = gateway(table, settings(), server_settings()).await;
    let client = client();
    let mut counts = BTreeMap::new();
    for _ in 0..30 {
        let reply = send(&client, get_req(gw.addr, "/")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.instance(),
            reply.text(),
            "x-shoal-instance names who answered"
        );
        *counts.entry(reply.text().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(
        counts,
        BTreeMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );
}

#[tokio::test]
async fn a_post_is_retried_on_another_instance_when_the_connection_is_refused() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    {
        put(&registry, "dead", dead_addr().await, InstanceState::Ready);
        put(
            &registry,
            "live",
            backend("live").await,
            InstanceState::Ready,
        );
    }
    let gw = gateway(table.clone(), settings(), server_settings()).await;
    let client = client();
    for i in 0..6 {
        let payload = format!("payload number {i}, with some bytes").repeat(100);
        let request = Request::post(format!("http://{}/echo", gw.addr))
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.instance(), "live");
        assert_eq!(reply.text(), payload, "the body arrived intact");
    }
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert!(counters.retries_total.load(Ordering::Relaxed) >= 1);
    // A chunked body (no Content-Length) is reclaimed just the same.
    let chunks =
        || {
            futures::stream::iter(["chunk-1 ", "chunk-2"].map(|c| {
                Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(c)))
            }))
        };
    let streaming: Client<HttpConnector, http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http();
    for _ in 0..2 {
        let request = Request::post(format!("http://{}/echo", gw.addr))
            .body(http_body_util::StreamBody::new(chunks()))
            .unwrap();
        let response = streaming.request(request).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "chunk-1 chunk-2");
    }
}

#[tokio::test]
async fn all_instances_refusing_gives_502_json() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    {
        put(&registry, "d1", dead_addr().await, InstanceState::Ready);
        put(&registry, "d2", dead_addr().await, InstanceState::Ready);
    }
    let gw = gateway(table, settings(), server_settings()).await;
    let reply = send(&client(), get_req(gw.addr, "/")).await;
    assert_eq!(reply.status, 502);
    assert_eq!(reply.json()["error"], "unreachable");
    assert!(["d1", "d2"].contains(&reply.instance()));
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table,
        ProxySettings {
            max_body_bytes: 16,
            ..settings()
        },
        server_settings(),
    )
    .await;
    let client = client();
    let request = Request::post(format!("http://{}/echo", gw.addr))
        .body(Full::new(Bytes::from(vec![b'x'; 100])))
        .unwrap();
    let reply = send(&client, request).await;
    assert_eq!(reply.status, 413);
    assert_eq!(reply.json()["error"], "body_too_large");
    assert_eq!(reply.instance(), "-", "refused before any instance");

    // Without Content-Length the limit is enforced while streaming.
    let chunks = futures::stream::iter(
        ["0123456789", "0123456789"]
            .map(|c| Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(Bytes::from(c)))),
    );
    let streaming: Client<HttpConnector, http_body_util::StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("http://{}/echo", gw.addr))
        .body(http_body_util::StreamBody::new(chunks))
        .unwrap();
    let response = streaming.request(request).await.unwrap();
    assert_eq!(response.status(), 413);

    let small = Request::post(format!("http://{}/echo", gw.addr))
        .body(Full::new(Bytes::from_static(b"small")))
        .unwrap();
    assert_eq!(send(&client, small).await.text(), "small");
}

#[tokio::test]
async fn a_slow_instance_past_the_route_timeout_gives_504() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    {
        put(&registry, "a", backend("a").await, InstanceState::Ready);
        registry.lock().unwrap().put_route(
            "slow",
            r#"{"service":"app","path_prefix":"/slow","timeout_ms":200}"#,
        );
    }
    let gw = gateway(table, settings(), server_settings()).await;
    let started = Instant::now();
    let reply = send(&client(), get_req(gw.addr, "/slow")).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "timeout");
    assert_eq!(reply.instance(), "a");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_millis(1000),
        "{took:?}"
    );
}

#[tokio::test]
async fn with_no_instance_a_request_is_held_then_gets_503() {
    let (_registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let gw = gateway(
        table.clone(),
        ProxySettings {
            hold_timeout: Duration::from_millis(300),
            ..settings()
        },
        server_settings(),
    )
    .await;
    let started = Instant::now();
    let reply = send(&client(), get_req(gw.addr, "/")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "no_instance");
    assert_eq!(reply.headers["retry-after"], "1");
    assert_eq!(reply.instance(), "-");
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(counters.held_total.load(Ordering::Relaxed), 1);
    assert_eq!(counters.held_now.load(Ordering::Relaxed), 0);
    assert_eq!(counters.hold_timeouts_total.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_held_request_goes_to_the_first_instance_that_registers() {
    let (registry, table) = Registry::new(BalancePolicy::LeastRequest);
    let gw = gateway(table.clone(), settings(), server_settings()).await;
    let addr = backend("late").await;
    let publisher = {
        let registry = registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            put(&registry, "late", addr, InstanceState::Starting);
            tokio::time::sleep(Duration::from_millis(100)).await;
            put(&registry, "late", addr, InstanceState::Ready);
        })
    };
    let started = Instant::now();
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "late");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "held until ready"
    );
    publisher.await.unwrap();
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(counters.held_total.load(Ordering::Relaxed), 1);
    assert_eq!(counters.hold_timeouts_total.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_sticky_cookie_is_set_and_honoured() {
    let (registry, table) = Registry::new(BalancePolicy::Sticky);
    for name in ["a", "b", "c"] {
        let addr = backend(name).await;
        put(&registry, name, addr, InstanceState::Ready);
    }
    let gw = gateway(table, settings(), server_settings()).await;
    let client = client();
    let first = send(&client, get_req(gw.addr, "/")).await;
    let cookie = first.headers["set-cookie"].to_str().unwrap().to_owned();
    let pinned = first.instance().to_owned();
    assert_eq!(
        cookie,
        format!("shoal-sticky-app={pinned}; Path=/; HttpOnly; SameSite=Lax")
    );
    for _ in 0..10 {
        let request = Request::get(format!("http://{}/", gw.addr))
            .header("cookie", format!("theme=dark; shoal-sticky-app={pinned}"))
            .body(Full::default())
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!(reply.instance(), pinned);
        assert!(
            reply.headers.get("set-cookie").is_none(),
            "no rewrite while pinned"
        );
    }
}

#[tokio::test]
async fn an_upgrade_is_passed_through_both_ways() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(table, settings(), server_settings()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET /ws HTTP/1.1\r\nHost: chat.example\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("upgrade: echo"), "{head}");
    assert!(lower.contains("connection: upgrade"), "{head}");
    assert!(lower.contains("x-shoal-instance: a"), "{head}");
    for message in ["ping", "a longer message through the tunnel"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(buf, message.as_bytes());
    }
}

async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&head));
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A request with spoofed forwarded headers and a hop-by-hop header, as
/// `backend`'s `/headers` saw it through a gateway with `settings`.
async fn seen_through(settings: ProxySettings) -> serde_json::Value {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(table, settings, server_settings()).await;
    let request = Request::get(format!("http://{}/headers", gw.addr))
        .header("host", "shop.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("te", "trailers")
        .header("x-kept", "yes")
        .body(Full::default())
        .unwrap();
    send(&client(), request).await.json()
}

#[tokio::test]
async fn forwarded_headers_are_set_and_hop_by_hop_ones_removed() {
    let seen = seen_through(settings()).await;
    assert_eq!(seen["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["http"]));
    assert_eq!(
        seen["x-forwarded-host"],
        serde_json::json!(["shop.example"])
    );
    assert_eq!(seen["host"], serde_json::json!(["shop.example"]));
    assert_eq!(seen["x-hop"], serde_json::json!([]));
    assert_eq!(seen["te"], serde_json::json!([]));
    assert_eq!(seen["x-kept"], serde_json::json!(["yes"]));
}

#[tokio::test]
async fn a_trusted_proxy_s_forwarded_headers_are_kept() {
    let trusting = ProxySettings {
        trusted_proxies: TrustedProxies::new(vec!["127.0.0.0/8".parse().unwrap()]),
        ..settings()
    };
    let seen = seen_through(trusting).await;
    assert_eq!(
        seen["x-forwarded-for"],
        serde_json::json!(["203.0.113.9, 127.0.0.1"])
    );
    assert_eq!(seen["x-forwarded-proto"], serde_json::json!(["https"]));
}

#[tokio::test]
async fn an_h2c_host_header_that_disagrees_with_the_authority_gets_400() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(table, settings(), server_settings()).await;
    let h2: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = |host: String| {
        Request::get(format!("http://{}/headers", gw.addr))
            .header("host", host)
            .body(Full::default())
            .unwrap()
    };
    let other = send(&h2, request("other.example".into())).await;
    assert_eq!(other.status, StatusCode::BAD_REQUEST);
    let error = other.json();
    assert_eq!(error["error"], "bad_request");
    assert!(
        error["detail"]
            .as_str()
            .unwrap()
            .contains("name different hosts"),
        "{error}"
    );
    let same = send(&h2, request(gw.addr.to_string())).await;
    assert_eq!(same.status, StatusCode::OK);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(table, settings(), server_settings()).await;
    let h2: TestClient = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let response = h2.request(get_req(gw.addr, "/headers")).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()[headers::X_SHOAL_INSTANCE], "a");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        seen["host"],
        serde_json::json!([gw.addr.to_string()]),
        "Host from :authority"
    );
}

#[tokio::test]
async fn a_503_from_a_draining_instance_is_retried_for_idempotent_methods() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let leaving_addr = {
        let registry = registry.clone();
        let app = Router::new().fallback(move || {
            let registry = registry.clone();
            async move {
                // The instance starts draining as this request arrives.
                let addr = registry.lock().unwrap().instances["/shoal/instances/app/leaving"]
                    .addr
                    .clone();
                put(
                    &registry,
                    "leaving",
                    addr.parse().unwrap(),
                    InstanceState::Draining,
                );
                (StatusCode::SERVICE_UNAVAILABLE, "draining")
            }
        });
        serve_router(app).await
    };
    {
        put(&registry, "leaving", leaving_addr, InstanceState::Ready);
        put(
            &registry,
            "stays",
            backend("stays").await,
            InstanceState::Ready,
        );
    }
    let gw = gateway(table.clone(), settings(), server_settings()).await;
    let client = client();
    // Round-robin over [leaving, stays] starts with `leaving`.
    let reply = send(&client, get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.instance(), "stays");
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(
        counters.retries_total.load(Ordering::Relaxed),
        1,
        "went to `leaving` first"
    );
}

#[tokio::test]
async fn past_the_concurrency_limit_and_queue_requests_get_503_retry_after() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table,
        ProxySettings {
            max_inflight_per_instance: 1,
            queue_per_instance: 1,
            ..settings()
        },
        server_settings(),
    )
    .await;
    let client = client();
    let slow = || {
        let client = client.clone();
        let addr = gw.addr;
        tokio::spawn(async move { send(&client, get_req(addr, "/slow")).await })
    };
    let first = slow();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = slow();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let refused = send(&client, get_req(gw.addr, "/hello")).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.json()["error"], "overloaded");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(
        queued.await.unwrap().status,
        200,
        "the queued request ran after the first"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(table, settings(), server_settings()).await;
    let client = client();
    let in_flight = {
        let client = client.clone();
        let addr = gw.addr;
        tokio::spawn(async move { send(&client, get_req(addr, "/slow")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.stop.cancel();
    let drained = gw.task.await.unwrap();
    assert_eq!(
        drained,
        Drained {
            complete: true,
            abandoned: 0
        }
    );
    assert_eq!(in_flight.await.unwrap().status, 200);
    assert!(
        TcpStream::connect(gw.addr).await.is_err(),
        "no longer accepting"
    );
    drop(gw.proxy);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table,
        settings(),
        ServerSettings {
            header_read_timeout: Duration::from_millis(300),
            ..server_settings()
        },
    )
    .await;

    // Starts a request and never finishes it.
    let mut slow = TcpStream::connect(gw.addr).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    // Connects and says nothing.
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let started = Instant::now();
    for stream in [&mut slow, &mut silent] {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(3), stream.read(&mut buf))
            .await
            .expect("cut off well before 3 s")
            .unwrap_or(0);
        assert_eq!(n, 0, "closed without a response");
    }
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );

    // A keep-alive connection idle between requests is not a slow client.
    let mut kept = TcpStream::connect(gw.addr).await.unwrap();
    for _ in 0..2 {
        kept.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let head = read_head(&mut kept).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let mut body = [0u8; 1];
        kept.read_exact(&mut body).await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
}

#[tokio::test]
async fn bad_requests_get_400_json() {
    let (_registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let gw = gateway(table, settings(), server_settings()).await;
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: caf\xc3\xa9\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-shoal-instance: -"),
        "{head}"
    );
    let mut stream = TcpStream::connect(gw.addr).await.unwrap();
    stream
        .write_all(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn oversized_headers_get_431_and_idle_connections_are_closed() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table,
        settings(),
        ServerSettings {
            max_header_bytes: 16 * 1024,
            idle_timeout: Duration::from_millis(300),
            ..server_settings()
        },
    )
    .await;
    let mut big = TcpStream::connect(gw.addr).await.unwrap();
    let filler = "x".repeat(32 * 1024);
    // The server may close before it has read everything; only the answer matters.
    let _ = big
        .write_all(format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {filler}\r\n\r\n").as_bytes())
        .await;
    let head = read_head(&mut big).await;
    assert!(head.starts_with("HTTP/1.1 431"), "{head}");

    let mut idle = TcpStream::connect(gw.addr).await.unwrap();
    idle.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut idle).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut body = [0u8; 1];
    idle.read_exact(&mut body).await.unwrap();
    let started = Instant::now();
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(3), idle.read(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(1),
        "{took:?}"
    );
}

/// Round-robin over `a-stuck` (takes requests, never answers: a frozen
/// process) and `b-ok`, starting with `a-stuck`.
async fn stuck_then_ok() -> (Arc<Mutex<Registry>>, TableHandle) {
    first_then_ok("a-stuck", stuck_backend().await).await
}

/// Round-robin over `first` (an `a-…` id, at `addr`) and `b-ok`, starting
/// with `first`.
async fn first_then_ok(first: &str, addr: SocketAddr) -> (Arc<Mutex<Registry>>, TableHandle) {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, first, addr, InstanceState::Ready);
    put(
        &registry,
        "b-ok",
        backend("b-ok").await,
        InstanceState::Ready,
    );
    (registry, table)
}

/// A GET through the gateway at `addr` (first to `a-stuck`, see
/// [`stuck_then_ok`]) answered by `b-ok`, after at least `min` and within `max`.
async fn get_answered_by_b_ok(addr: SocketAddr, min: Duration, max: Duration) {
    let started = Instant::now();
    let reply = send(&client(), get_req(addr, "/hello")).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.instance(), "b-ok");
    assert!(took >= min && took < max, "{took:?}");
}

/// An instance that takes requests and never answers (a frozen process).
async fn stuck_backend() -> SocketAddr {
    let app = Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(30)).await;
        "too late"
    });
    serve_router(app).await
}

#[tokio::test]
async fn past_the_per_try_timeout_an_idempotent_request_is_tried_on_another_instance() {
    let (registry, table) = stuck_then_ok().await;
    registry.lock().unwrap().put_route(
        "all",
        r#"{"service":"app","path_prefix":"/","policy":"round-robin","try_timeout_ms":200}"#,
    );
    let gw = gateway(table.clone(), settings(), server_settings()).await;
    get_answered_by_b_ok(gw.addr, Duration::from_millis(200), Duration::from_secs(5)).await;
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(counters.retries_total.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn past_the_per_try_timeout_a_post_gets_504_and_is_not_sent_twice() {
    let (_registry, table) = stuck_then_ok().await;
    let gw = gateway(
        table.clone(),
        ProxySettings {
            try_timeout: Some(Duration::from_millis(200)),
            ..settings()
        },
        server_settings(),
    )
    .await;
    let request = Request::post(format!("http://{}/echo", gw.addr))
        .body(Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let started = Instant::now();
    let reply = send(&client(), request).await;
    let took = started.elapsed();
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.json()["error"], "timeout");
    assert_eq!(reply.instance(), "a-stuck");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(counters.retries_total.load(Ordering::Relaxed), 0);
}

/// Settings whose hedge waits `delay` while the service has no p99 yet.
fn hedging_after(delay: Duration) -> ProxySettings {
    ProxySettings {
        hedge: HedgePolicy {
            enabled: true,
            min_delay: Duration::from_millis(10),
            max_delay: delay,
        },
        ..settings()
    }
}

#[tokio::test]
async fn a_get_stuck_past_the_hedge_delay_is_answered_by_another_instance() {
    let (_registry, table) = stuck_then_ok().await;
    let gw = gateway(
        table.clone(),
        hedging_after(Duration::from_millis(100)),
        server_settings(),
    )
    .await;
    let pool = table.load().pool("app").unwrap().clone();
    let counters = &pool.counters;
    // A busy service's window: 250 earlier requests allow 2% + 1 = 6 hedges
    // (the budget's own tests check that rule; this one is about the race).
    for _ in 0..250 {
        counters.retry_budget.deposit(tokio::time::Instant::now());
    }
    get_answered_by_b_ok(gw.addr, Duration::from_millis(100), Duration::from_secs(2)).await;
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 1);
    assert_eq!(counters.hedges_won_total.load(Ordering::Relaxed), 1);
    assert_eq!(counters.retries_total.load(Ordering::Relaxed), 0);

    // Every request round-robin sends to the stuck instance loses its race:
    // five in a row eject it (--eject-after), and then no request waits.
    let stuck = pool.all.iter().find(|b| b.id() == "a-stuck").unwrap();
    for _ in 0..9 {
        let reply = send(&client(), get_req(gw.addr, "/hello")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert!(stuck.state.is_ejected(now()), "ejected by lost races");
    assert_eq!(counters.hedges_won_total.load(Ordering::Relaxed), 5);
    let started = Instant::now();
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.instance(), "b-ok");
    assert!(started.elapsed() < Duration::from_millis(100));
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn a_consistent_hash_request_is_not_hedged_away_from_its_key_s_instance() {
    let (registry, table) = stuck_then_ok().await;
    registry.lock().unwrap().put_route(
        "by-user",
        r#"{"service":"app","path_prefix":"/","policy":"consistent-hash","hash_key":{"from":"header","name":"x-user"},"timeout_ms":300}"#,
    );
    let gw = gateway(
        table.clone(),
        hedging_after(Duration::from_millis(50)),
        server_settings(),
    )
    .await;
    let counters = table.load().pool("app").unwrap().counters.clone();
    for _ in 0..250 {
        counters.retry_budget.deposit(tokio::time::Instant::now());
    }
    // Keys until one belongs to the stuck instance: it waits out the route's
    // timeout there (504) rather than being answered by the other one.
    let mut stuck_key = None;
    for n in 0..40 {
        let key = format!("user-{n}");
        let request = Request::get(format!("http://{}/hello", gw.addr))
            .header("x-user", &key)
            .body(Full::default())
            .unwrap();
        let reply = send(&client(), request).await;
        if reply.instance() == "a-stuck" {
            assert_eq!(reply.status, 504, "{}", reply.text());
            stuck_key = Some(key);
            break;
        }
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert!(stuck_key.is_some(), "no key of 40 belongs to a-stuck");
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn a_request_with_a_body_a_spent_budget_or_hedging_off_is_not_hedged() {
    let (registry, table) = stuck_then_ok().await;
    registry.lock().unwrap().put_route(
        "all",
        r#"{"service":"app","path_prefix":"/","policy":"round-robin","timeout_ms":400}"#,
    );
    let gw = gateway(
        table.clone(),
        hedging_after(Duration::from_millis(50)),
        server_settings(),
    )
    .await;
    let counters = table.load().pool("app").unwrap().counters.clone();
    // A PUT with a body: idempotent, but its body cannot be sent twice.
    let request = Request::put(format!("http://{}/echo", gw.addr))
        .body(Full::new(Bytes::from_static(b"once")))
        .unwrap();
    let reply = send(&client(), request).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(reply.instance(), "a-stuck");
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 0);
    // The round robin's next pick is b-ok; skip it.
    assert_eq!(send(&client(), get_req(gw.addr, "/")).await.status, 200);

    // A spent budget: no hedge, and the refusal is counted.
    while counters
        .retry_budget
        .try_withdraw(tokio::time::Instant::now())
    {}
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 0);
    assert_eq!(counters.retries_refused_total.load(Ordering::Relaxed), 1);

    // Hedging off.
    let (_registry, table) = stuck_then_ok().await;
    let off = ProxySettings {
        hedge: HedgePolicy {
            enabled: false,
            ..HedgePolicy::default()
        },
        response_timeout: Duration::from_millis(400),
        ..settings()
    };
    let gw = gateway(table.clone(), off, server_settings()).await;
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    let counters = table.load().pool("app").unwrap().counters.clone();
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 0);
}

/// A gateway hedging after 50 ms (no p99 yet) in front of
/// [`stuck_then_ok`], round robin with a 3 s timeout; and the service's pool.
async fn hedging_in_front_of_stuck_then_ok() -> (Gateway, Arc<table::ServicePool>) {
    let (registry, table) = stuck_then_ok().await;
    hedging_in_front_of(&registry, table, Duration::from_millis(50), 3000).await
}

/// A gateway hedging after `delay` (no p99 yet) in front of `registry`'s
/// instances, one route to them by round robin with a `timeout_ms`
/// timeout; and the service's pool.
async fn hedging_in_front_of(
    registry: &Mutex<Registry>,
    table: TableHandle,
    delay: Duration,
    timeout_ms: u64,
) -> (Gateway, Arc<table::ServicePool>) {
    registry.lock().unwrap().put_route(
        "all",
        &format!(
            r#"{{"service":"app","path_prefix":"/","policy":"round-robin","timeout_ms":{timeout_ms}}}"#
        ),
    );
    let gw = gateway(table.clone(), hedging_after(delay), server_settings()).await;
    let pool = table.load().pool("app").unwrap().clone();
    (gw, pool)
}

#[tokio::test]
async fn a_get_whose_instance_is_ejected_while_it_waits_is_hedged_whatever_the_budget() {
    let (gw, pool) = hedging_in_front_of_stuck_then_ok().await;
    let counters = &pool.counters;
    while counters
        .retry_budget
        .try_withdraw(tokio::time::Instant::now())
    {}
    // The round robin's first pick is the stuck instance; the budget
    // refuses the hedge, so the request waits on it...
    let started = Instant::now();
    let addr = gw.addr;
    let waiting = tokio::spawn(async move { send(&client(), get_req(addr, "/hello")).await });
    crate::testing::poll("the hedge refused", async || {
        match counters.retries_refused_total.load(Ordering::Relaxed) {
            1 => Ok(()),
            n => Err(format!("{n} refused")),
        }
    })
    .await;
    assert!(!waiting.is_finished());
    // ...until passive health ejects the instance (as lost races do to a
    // frozen one): then it is hedged at once.
    let stuck = pool.all.iter().find(|b| b.id() == "a-stuck").unwrap();
    stuck
        .state
        .update_health(|h| h.ejected_until = Some(now() + Duration::from_secs(10)));
    let reply = waiting.await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.instance(), "b-ok");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 1);
}

/// A frozen instance under light traffic: the budget allows one hedge, which
/// the instance loses; the requests still waiting on it past their hedge
/// time are further evidence (it has answered nothing since it lost), so
/// it is ejected by them and they are hedged, rather than each waiting out
/// the route's timeout because the budget allowed too few races to eject it.
#[tokio::test]
async fn requests_waiting_on_an_instance_that_lost_its_race_eject_it_when_the_budget_is_spent() {
    let (gw, pool) = hedging_in_front_of_stuck_then_ok().await;
    let started = Instant::now();
    // Ten requests at once, five on each instance (round robin): the
    // window's ten requests allow 2% + 1 = one hedge.
    let client = client();
    let replies =
        futures::future::join_all((0..10).map(|_| send(&client, get_req(gw.addr, "/hello")))).await;
    let took = started.elapsed();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.instance(), "b-ok");
    }
    assert!(took < Duration::from_secs(2), "{took:?}");
    let stuck = pool.all.iter().find(|b| b.id() == "a-stuck").unwrap();
    assert!(stuck.state.is_ejected(now()), "{:?}", stuck.state.health());
    let counters = &pool.counters;
    assert_eq!(counters.hedges_total.load(Ordering::Relaxed), 5);
    assert_eq!(counters.retries_refused_total.load(Ordering::Relaxed), 4);
}

/// An instance that works on one request at a time, `each` per request (a
/// single-threaded server under CPU-bound load): the requests it holds wait
/// in a queue, but it answers one every `each`.
async fn one_at_a_time_backend(name: &'static str, each: Duration) -> SocketAddr {
    let worker = Arc::new(tokio::sync::Mutex::new(()));
    let app = Router::new().fallback(move || {
        let worker = worker.clone();
        async move {
            let _busy = worker.lock().await;
            tokio::time::sleep(each).await;
            name
        }
    });
    serve_router(app).await
}

/// A busy instance is not a frozen one: it loses the race the budget allows
/// (so it has failed since its last answer), and the requests queued on it
/// wait past their hedge time; but it answers every 25 ms, each answer
/// after those requests were sent, so they are no evidence against it. Seen
/// in the compose check: a gateway ejected one of two instances running
/// CPU-bound requests, which sent their load to the other.
#[tokio::test]
async fn requests_queued_on_a_busy_instance_that_keeps_answering_do_not_eject_it() {
    let busy = one_at_a_time_backend("a-busy", Duration::from_millis(25)).await;
    let (registry, table) = first_then_ok("a-busy", busy).await;
    let (gw, pool) = hedging_in_front_of(&registry, table, Duration::from_millis(100), 5000).await;
    // Twelve requests on each instance at once (round robin): a-busy's
    // first answer comes at 25 ms, its last at about 300, and the ones
    // queued past 100 ms wait past their hedge time.
    let client = client();
    let replies =
        futures::future::join_all((0..24).map(|_| send(&client, get_req(gw.addr, "/hello")))).await;
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let busy = pool.all.iter().find(|b| b.id() == "a-busy").unwrap();
    let health = busy.state.health();
    assert_eq!(health.ejections, 0, "{health:?}");
    assert!(!busy.state.is_ejected(now()));
    // The budget (2% of 24 requests, plus one) allows one hedge: at most
    // one of a-busy's requests is answered elsewhere.
    let answered_by_busy = replies.iter().filter(|r| r.instance() == "a-busy").count();
    assert!(
        answered_by_busy >= 11,
        "a-busy answered {answered_by_busy} of its 12"
    );
    let counters = &pool.counters;
    assert!(
        counters.retries_refused_total.load(Ordering::Relaxed) > 0,
        "no request waited on a-busy with its hedge refused: the test shows nothing"
    );
}

/// A burst's connections to an instance close once idle past
/// `--upstream-idle-timeout`, with no further request to the gateway.
#[tokio::test]
async fn idle_connections_to_instances_are_closed_without_traffic() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table.clone(),
        ProxySettings {
            upstream_idle_timeout: Duration::from_millis(200),
            ..settings()
        },
        server_settings(),
    )
    .await;
    let client = client();
    let replies =
        futures::future::join_all((0..4).map(|_| send(&client, get_req(gw.addr, "/hello")))).await;
    assert!(replies.iter().all(|r| r.status == 200));
    let a = table.load().pool("app").unwrap().all[0].clone();
    crate::testing::poll("connections parked", async || match a.conns.idle() {
        0 => Err("none parked".to_owned()),
        _ => Ok(()),
    })
    .await;
    let stop = CancellationToken::new();
    let sweeper = gw.proxy.spawn_idle_sweeper(stop.clone());
    crate::testing::poll("idle connections closed", async || match a.conns.idle() {
        0 => Ok(()),
        n => Err(format!("{n} still idle")),
    })
    .await;
    stop.cancel();
    sweeper.await.unwrap();
}

/// The access log's lines so far, once they are `n`; panics after 5 s.
async fn log_lines(
    log: &crate::access_log::AccessLog,
    path: &std::path::Path,
    n: usize,
) -> Vec<serde_json::Value> {
    crate::testing::poll(&format!("{n} access log line(s)"), async || {
        assert!(log.flush(Duration::from_secs(1)));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(lines.len() <= n, "more lines than {n}: {text}");
        if lines.len() == n {
            Ok(lines)
        } else {
            Err(text)
        }
    })
    .await
}

#[tokio::test]
async fn the_gateway_s_own_error_carries_the_request_id_and_is_logged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let log =
        crate::access_log::AccessLog::start(crate::access_log::Target::File(path.clone())).unwrap();
    let (_registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let gw = gateway(
        table,
        ProxySettings {
            hold_timeout: Duration::from_millis(200),
            access_log: Some(log.clone()),
            ..settings()
        },
        server_settings(),
    )
    .await;
    let reply = send(&client(), get_req(gw.addr, "/nothing?secret=1")).await;
    assert_eq!(reply.status, 503);
    let id = reply.headers[trace::X_REQUEST_ID]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(id.len(), 32);
    let line = log_lines(&log, &path, 1).await.remove(0);
    assert_eq!(line["status"], 503);
    assert_eq!(line["path"], "/nothing", "no query string");
    assert_eq!(line["route"], "(default)");
    assert_eq!(line["service"], "app");
    assert!(line["instance"].is_null(), "{line}");
    assert!(line["upstream_ms"].is_null(), "{line}");
    assert!(line["held_ms"].as_f64().unwrap() >= 200.0, "{line}");
    assert_eq!(line["request_id"], id.as_str());
    assert_eq!(line["client"], "127.0.0.1");
    assert!(line["bytes"].as_u64().unwrap() > 0, "the JSON error body");
}

#[tokio::test]
async fn with_trace_headers_off_no_ids_are_set() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    put(&registry, "a", backend("a").await, InstanceState::Ready);
    let gw = gateway(
        table,
        ProxySettings {
            trace_headers: false,
            ..settings()
        },
        server_settings(),
    )
    .await;
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert_eq!(reply.status, 200);
    assert!(!reply.headers.contains_key(trace::X_REQUEST_ID));
    let reply = send(&client(), get_req(gw.addr, "/hello")).await;
    assert!(!reply.headers.contains_key(trace::X_REQUEST_ID));
}

/// An HTTP/2 instance that takes no request: it answers the first HEADERS
/// frame of each connection with `GOAWAY` (last stream id 0, NO_ERROR),
/// as a server shutting down says "I processed none of yours"; or, with
/// `vanish`, drops the connection then, as a killed one does (the request
/// may have been processed). Raw frames, so that happens at a known
/// point. Counts the requests it saw.
async fn refusing_h2c_instance(vanish: bool) -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    const SETTINGS: u8 = 0x4;
    const HEADERS: u8 = 0x1;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let refused = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = refused.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let count = count.clone();
            tokio::spawn(async move {
                let mut preface = [0u8; 24];
                socket.read_exact(&mut preface).await?;
                assert_eq!(&preface, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
                socket
                    .write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
                    .await?;
                loop {
                    let mut head = [0u8; 9];
                    socket.read_exact(&mut head).await?;
                    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                    let mut payload = vec![0u8; len];
                    socket.read_exact(&mut payload).await?;
                    match (head[3], head[4]) {
                        (SETTINGS, 0) => {
                            socket
                                .write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                                .await?;
                        }
                        (HEADERS, _) => {
                            count.fetch_add(1, Ordering::SeqCst);
                            if vanish {
                                return Ok(());
                            }
                            // GOAWAY: 8 bytes, last stream id 0, NO_ERROR.
                            let goaway = [0, 0, 8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                            socket.write_all(&goaway).await?;
                        }
                        _ => {}
                    }
                }
                #[allow(unreachable_code)]
                Ok::<(), std::io::Error>(())
            });
        }
    });
    (addr, refused)
}

#[tokio::test]
async fn a_post_an_h2c_instance_refused_unprocessed_goes_to_another_with_its_body() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let (refusing, refused) = refusing_h2c_instance(false).await;
    put(&registry, "a", refusing, InstanceState::Ready);
    // axum serves h2c (prior knowledge) as well as HTTP/1.1.
    put(&registry, "b", backend("b").await, InstanceState::Ready);
    registry.lock().unwrap().put_route(
        "grpc",
        r#"{"path_prefix":"/","service":"app","upstream_protocol":"h2c","policy":"round-robin"}"#,
    );
    let gw = gateway(table, settings(), server_settings()).await;
    let client = client();
    for i in 0..6 {
        let payload = format!("call {i}: not processed by a, so sent to b whole");
        let request = Request::post(format!("http://{}/echo", gw.addr))
            .body(Full::new(Bytes::from(payload.clone())))
            .unwrap();
        let reply = send(&client, request).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.instance(), "b");
        assert_eq!(reply.text(), payload, "the body, replayed");
    }
    assert!(
        refused.load(Ordering::SeqCst) >= 1,
        "the refusing instance was tried"
    );
}

#[tokio::test]
async fn a_post_cut_off_on_an_h2c_instance_is_sent_again_only_on_an_idempotent_route() {
    let (registry, table) = Registry::new(BalancePolicy::RoundRobin);
    let (vanishing, seen) = refusing_h2c_instance(true).await;
    put(&registry, "a", vanishing, InstanceState::Ready);
    put(&registry, "b", backend("b").await, InstanceState::Ready);
    let route = |idempotent: bool| {
        format!(
            r#"{{"path_prefix":"/","service":"app","upstream_protocol":"h2c","policy":"round-robin","idempotent":{idempotent}}}"#
        )
    };
    let gw = gateway(table, settings(), server_settings()).await;
    let client = client();
    let post = |i: usize| {
        Request::post(format!("http://{}/echo", gw.addr))
            .body(Full::new(Bytes::from(format!("call {i}"))))
            .unwrap()
    };
    // Not idempotent: a call cut off on `a` may have run there; 502.
    registry.lock().unwrap().put_route("grpc", &route(false));
    let mut cut_off = 0;
    for i in 0..4 {
        let reply = send(&client, post(i)).await;
        match reply.status {
            StatusCode::OK => assert_eq!(reply.text(), format!("call {i}")),
            StatusCode::BAD_GATEWAY => {
                assert_eq!(reply.json()["error"], "bad_gateway");
                cut_off += 1;
            }
            other => panic!("{other}: {}", reply.text()),
        }
    }
    assert!(cut_off >= 1, "round-robin sent some to `a`");
    // The route says its calls may run twice: sent again, with the body.
    registry.lock().unwrap().put_route("grpc", &route(true));
    let before = seen.load(Ordering::SeqCst);
    for i in 0..4 {
        let reply = send(&client, post(i)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.instance(), "b");
        assert_eq!(reply.text(), format!("call {i}"), "the body, replayed");
    }
    assert!(seen.load(Ordering::SeqCst) > before, "`a` was tried");
}
