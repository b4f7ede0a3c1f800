//! The HTTP surface: [`app`] assembles the router from one file per concern.
//!
//! - [`hello`]: `GET /`
//! - [`work`]: `GET /work?iterations=N`, CPU-bound busy loop
//! - [`kv`]: `GET|PUT|DELETE /kv/{key}`
//! - [`counter`]: `POST /counter/{session}`, an instance-local counter
//! - [`kv_peer`]: `/_shoal/kv/{key}`, `/_shoal/kv-batch` and `/_shoal/kv-stream`, replication between instances
//! - [`health`]: `GET /healthz`, `/readyz`, `/load`
//!
//! Application routes (the first four) are wrapped in the request counter that
//! feeds `/load`; the probes are not, so probing never looks like load. Every
//! response, errors and unknown paths included, carries `x-shoal-instance`.

pub mod counter;
pub mod health;
pub mod hello;
pub mod kv;
pub mod kv_peer;
pub mod work;

#[cfg(test)]
pub(crate) mod testing;

use std::convert::Infallible;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::{get, post};
use tower::util::{MapFutureLayer, MapResponseLayer};

use crate::error::ApiError;
use crate::kv::MAX_VALUE_BYTES;
use crate::state::AppState;

/// Header naming the instance that answered; lets clients and tests see the balancing.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-shoal-instance");

/// The whole service as a router; needs no etcd.
pub fn app(state: AppState) -> Router {
    let application = Router::new()
        .route("/", get(hello::hello).fallback(only_get))
        .route("/work", get(work::work).fallback(only_get))
        .route(
            "/kv/{*key}",
            get(kv::get)
                .put(kv::put)
                .delete(kv::delete)
                .fallback(kv::method_not_allowed)
                // Bytes refuses bigger bodies; kv::put turns that into our 413.
                .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES)),
        )
        .route(
            "/counter/{session}",
            post(counter::increment).fallback(only_post),
        )
        .route_layer(MapFutureLayer::new({
            let state = state.clone();
            move |response| count_request(state.clone(), response)
        }));
    let internal = Router::new()
        .route(
            "/_shoal/kv/{*key}",
            get(kv_peer::get)
                .put(kv_peer::put)
                .delete(kv_peer::delete)
                .layer(DefaultBodyLimit::max(MAX_VALUE_BYTES)),
        )
        .route(
            crate::kv::batch::PATH,
            post(kv_peer::batch).layer(DefaultBodyLimit::max(crate::kv::batch::MAX_BATCH_BYTES)),
        )
        .route(crate::kv::link::PATH, get(kv_peer::stream));
    let probes = Router::new()
        .route("/healthz", get(health::healthz).fallback(only_get))
        .route("/readyz", get(health::readyz).fallback(only_get))
        .route("/load", get(health::load).fallback(only_get));
    application
        .merge(probes)
        .merge(internal)
        .fallback(unknown_path)
        .layer(tag_instance(state.id_header().clone()))
        .with_state(state)
}

/// Count an application request for `/load`, in flight until it has
/// answered (`app` wraps each application route's future in it with a
/// plain `tower` layer: `middleware::from_fn` boxed a future and a `Next`
/// per request).
async fn count_request(
    state: AppState,
    response: RouteFuture<Infallible>,
) -> Result<Response, Infallible> {
    let in_flight = state.stats().begin();
    let response = response.await;
    in_flight.finish();
    response
}

/// Name the instance on every response (`x-shoal-instance`); a plain
/// `tower` layer, as [`count_request`]'s.
fn tag_instance(id: HeaderValue) -> MapResponseLayer<impl Fn(Response) -> Response + Clone> {
    MapResponseLayer::new(move |mut response: Response| {
        response.headers_mut().insert(INSTANCE_HEADER, id.clone());
        response
    })
}

async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::UnknownPath(uri.path().to_owned())
}

async fn only_post(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow: "POST",
    }
}

async fn only_get(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET, HEAD",
    }
}

#[cfg(test)]
mod tests {
    use axum::http::StatusCode;

    use super::testing::*;

    #[tokio::test]
    async fn unknown_paths_are_json_404s_with_the_instance_header() {
        let t = TestApp::new();
        let r = t.call(req("GET", "/nope")).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
        assert_eq!(r.instance.as_deref(), Some(TEST_ID));
        let body = r.json();
        assert_eq!(body["error"], "not_found");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("no endpoint at `/nope`"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn wrong_methods_are_json_405s_naming_the_allowed_ones() {
        let t = TestApp::new();
        for path in ["/", "/work", "/healthz", "/readyz", "/load"] {
            let r = t.call(req("POST", path)).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
            assert_eq!(r.allow.as_deref(), Some("GET, HEAD"), "{path}");
            assert_eq!(r.json()["error"], "method_not_allowed", "{path}");
            assert_eq!(r.instance.as_deref(), Some(TEST_ID), "{path}");
        }
    }
}
