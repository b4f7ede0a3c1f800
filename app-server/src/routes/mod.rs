//! The HTTP surface: [`app`] assembles the router from one file per concern.
//!
//! - [`hello`]: `GET /`
//! - [`work`]: `GET /work?iterations=N`, CPU-bound busy loop
//! - [`kv`]: `GET|PUT|DELETE /kv/{key}`
//! - [`counter`]: `POST /counter/{session}`, an instance-local counter
//! - [`kv_peer`]: `/_shoal/kv/{key}`, `/_shoal/kv-batch` and `/_shoal/kv-stream`, replication between instances
//! - [`health`]: `GET /healthz`, `/readyz`, `/load`
//! - [`body`]: request bodies read under a size limit (413 beyond it)
//!
//! Application handlers (the first four routes') are wrapped in the request
//! counter that feeds `/load` ([`counted`]); the probes are not, so probing
//! never looks like load. Every response, errors and unknown paths
//! included, carries `x-shoal-instance`: [`app`] wraps the whole router in
//! that layer once, outside axum, which would otherwise apply it to every
//! route again and box it per request.

pub mod body;
pub mod counted;
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
use axum::extract::Request;
use axum::handler::Handler;
use axum::http::{HeaderName, HeaderValue, Method, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use tower::util::{BoxCloneSyncService, MapResponseLayer};
use tower::{Layer, Service};

use self::counted::Counted;
use crate::error::ApiError;
use crate::state::AppState;

/// Header naming the instance that answered; lets clients and tests see the balancing.
pub const INSTANCE_HEADER: HeaderName = HeaderName::from_static("x-shoal-instance");

/// [`app`] behind one box, for whatever must name its type (the router
/// tests, the fuzzer); serving uses [`app`] as it is.
pub type BoxedApp = BoxCloneSyncService<Request, Response, Infallible>;

/// The whole service: the router, each response named by the instance. It
/// needs no etcd.
pub fn app(
    state: AppState,
) -> impl Service<Request, Response = Response, Error = Infallible, Future: Send>
+ Clone
+ Send
+ Sync
+ 'static {
    tag_instance(state.id_header().clone()).layer(router(state))
}

/// Every route, with the request counter on the application's handlers.
fn router(state: AppState) -> Router {
    // Layers go on the handlers, not on the routes (`route_layer`): axum
    // boxes a route again for each layer put on it, every request; a
    // handler's layers live in the handler's one box.
    let counted = Counted::new(state.stats().clone());
    let application = Router::new()
        .route(
            "/",
            get(hello::hello.layer(counted.clone())).fallback(only_get),
        )
        .route(
            "/work",
            get(work::work.layer(counted.clone())).fallback(only_get),
        )
        .route(
            "/kv/{*key}",
            get(kv::get.layer(counted.clone()))
                .put(kv::put.layer(counted.clone()))
                .delete(kv::delete.layer(counted.clone()))
                .fallback(kv::method_not_allowed),
        )
        .route(
            "/counter/{session}",
            post(counter::increment.layer(counted)).fallback(only_post),
        );
    let internal = Router::new()
        .route(
            "/_shoal/kv/{*key}",
            get(kv_peer::get).put(kv_peer::put).delete(kv_peer::delete),
        )
        .route(crate::kv::batch::PATH, post(kv_peer::batch))
        .route(crate::kv::link::PATH, get(kv_peer::stream));
    let probes = Router::new()
        .route("/healthz", get(health::healthz).fallback(only_get))
        .route("/readyz", get(health::readyz).fallback(only_get))
        .route("/load", get(health::load).fallback(only_get));
    application
        .merge(probes)
        .merge(internal)
        .fallback(unknown_path)
        .with_state(state)
}

/// Name the instance on every response (`x-shoal-instance`); a plain
/// `tower` layer put around the whole router.
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
