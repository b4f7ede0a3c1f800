//! The admin listener's router: every endpoint, its OpenAPI description
//! (`GET /api/openapi.json`, generated from the handlers' `#[utoipa::path]`
//! annotations by `utoipa-axum`, so the document and the router come from the
//! same registrations), the token rule and the JSON fallbacks.
//!
//! - [`stats`]: health, metrics and the routing table's services and
//!   instances with their live stats.
//! - [`reads`]: the registry's routes, policies, scaling events and rollouts
//!   (from [`control`](super::control)'s watchers), and the charts' history.
//! - [`writes`]: what an operator changes: routes, policies, pins, retiring an
//!   instance, asking for a rolling restart. Behind [`auth::guard_writes`].
//! - [`specs`]: service specs (`/api/v1/services/{service}/spec`), their
//!   history and undo; writes, behind the token too.
//! - [`stream`]: server-sent events with a snapshot for the dashboard.
//! - [`dashboard`]: the page itself.
//! - [`body`]: JSON request bodies with a size cap; [`params`]: path and
//!   query parameters; [`auth`]: the token. Every rejection of theirs is the
//!   JSON `{"error","detail"}`, like every other error.
//!
//! `tests_endpoints` calls every endpoint in-process over a live in-memory
//! registry; `tests_doc` walks the document and checks it says what the
//! handlers do.
//!
//! Every route is registered with `.routes(routes!(handler))` in [`routes()`],
//! which adds it to the router and to the document at once; the unit tests
//! check that each documented operation is served and that nothing is
//! registered any other way.

pub mod auth;
pub mod body;
pub mod params;
pub mod reads;
pub mod specs;
pub mod stream;
pub mod writes;

#[cfg(test)]
mod tests_doc;
#[cfg(test)]
mod tests_endpoints;

use axum::Router;
use axum::http::{StatusCode, Uri, header};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AdminState, ApiError, ErrorBody, dashboard, stats};

pub use auth::AdminToken;

/// The document's fixed parts; the paths come from the routes.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Shoal gateway admin API",
        description = "Stats, registry reads and operator actions on a Shoal gateway's admin listener. \
                       Writes need `Authorization: Bearer <token>` when the gateway has --admin-token. \
                       Errors are JSON `{\"error\",\"detail\"}`."
    ),
    components(schemas(ErrorBody, stream::DashboardSnapshot))
)]
struct ApiDoc;

/// Every endpoint, in the router and in the OpenAPI document.
pub fn routes() -> OpenApiRouter<AdminState> {
    let reads = OpenApiRouter::with_openapi(<ApiDoc as utoipa::OpenApi>::openapi())
        .routes(routes!(stats::healthz))
        .routes(routes!(stats::metrics_text))
        .routes(routes!(stats::services))
        .routes(routes!(stats::service))
        .routes(routes!(reads::routes_list))
        .routes(routes!(reads::policies_list))
        .routes(routes!(reads::events))
        .routes(routes!(reads::rollouts_list))
        .routes(routes!(reads::history))
        .routes(routes!(stream::stream))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard::page))
        .routes(routes!(dashboard::script))
        .routes(routes!(dashboard::style));
    let writes = OpenApiRouter::new()
        .routes(routes!(writes::put_route))
        .routes(routes!(writes::delete_route))
        .routes(routes!(writes::put_policy))
        .routes(routes!(writes::delete_policy))
        .routes(routes!(writes::pin))
        .routes(routes!(writes::unpin))
        .routes(routes!(writes::retire))
        .routes(routes!(writes::rollout))
        .routes(routes!(specs::get_spec))
        .routes(routes!(specs::put_spec))
        .routes(routes!(specs::delete_spec))
        .routes(routes!(specs::spec_history))
        .routes(routes!(specs::undo_spec));
    reads.merge(writes)
}

/// The admin router.
pub fn app(state: AdminState) -> Router {
    let (router, _doc) = split(state.clone());
    router.with_state(state)
}

/// The router (writes behind the token check) and the OpenAPI document.
fn split(state: AdminState) -> (Router<AdminState>, OpenApi) {
    let (router, doc) = routes().split_for_parts();
    let doc = finish(doc);
    // The token check wraps only the routes whose method changes something.
    let router = router
        .route_layer(middleware::from_fn_with_state(state, auth::guard_writes))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method);
    (router, doc)
}

/// The OpenAPI document of this admin API.
pub fn openapi() -> OpenApi {
    finish(routes().into_openapi())
}

/// What the annotations cannot say once for all: every path parameter is a
/// registry name segment, with the pattern the handlers check; unsigned
/// integers are `uint32` / `uint64` (utoipa writes `int32` / `int64`, whose
/// ranges stop at half of what the fields accept).
fn finish(doc: OpenApi) -> OpenApi {
    let mut json = serde_json::to_value(doc).expect("the document serializes");
    unsigned_formats(&mut json);
    let mut doc: OpenApi = serde_json::from_value(json).expect("the document reads back");
    for item in doc.paths.paths.values_mut() {
        for operation in operations_mut(item) {
            for parameter in operation.parameters.iter_mut().flatten() {
                if parameter.parameter_in == utoipa::openapi::path::ParameterIn::Path {
                    parameter.schema = Some(
                        utoipa::openapi::ObjectBuilder::new()
                            .schema_type(utoipa::openapi::schema::Type::String)
                            .pattern(Some(params::SEGMENT_PATTERN))
                            .into(),
                    );
                }
            }
        }
    }
    doc
}

fn unsigned_formats(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(object) => {
            let unsigned = object
                .get("minimum")
                .and_then(serde_json::Value::as_f64)
                .is_some_and(|m| m >= 0.0);
            if let Some(format) = object.get_mut("format")
                && unsigned
            {
                match format.as_str() {
                    Some("int32") => *format = "uint32".into(),
                    Some("int64") => *format = "uint64".into(),
                    _ => {}
                }
            }
            object.values_mut().for_each(unsigned_formats);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(unsigned_formats),
        _ => {}
    }
}

/// The operations of a path item.
pub fn operations_mut(
    item: &mut utoipa::openapi::PathItem,
) -> impl Iterator<Item = &mut utoipa::openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
    ]
    .into_iter()
    .flatten()
}

/// `GET /api/openapi.json`.
#[utoipa::path(get, path = "/api/openapi.json", tag = "meta",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json")))]
pub async fn openapi_json() -> axum::Json<OpenApi> {
    axum::Json(openapi())
}

/// The paths the API serves, for 404 messages.
fn endpoint_list() -> String {
    openapi()
        .paths
        .paths
        .keys()
        .cloned()
        .collect::<Vec<_>>()
        .join(", ")
}

async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no admin endpoint at `{}`; the admin API serves {} (described in /api/openapi.json)",
            uri.path(),
            endpoint_list()
        ),
    )
}

async fn wrong_method(method: axum::http::Method, uri: Uri) -> Response {
    let path = uri.path();
    let allowed: Vec<String> = openapi()
        .paths
        .paths
        .iter()
        .filter(|(template, _)| template_matches(template, path))
        .flat_map(|(_, item)| methods_of(item))
        .collect();
    let allowed = if allowed.is_empty() {
        vec!["GET".to_owned()]
    } else {
        allowed
    };
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "`{method} {path}` is not served; use {}",
            allowed.join(" or ")
        ),
    )
    .into_response();
    if let Ok(value) = allowed.join(", ").parse() {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// Whether `/a/{x}/b` matches `/a/1/b`.
fn template_matches(template: &str, path: &str) -> bool {
    let (t, p): (Vec<_>, Vec<_>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && !p.is_empty()) || t == p)
}

/// The methods a path item documents, upper case.
pub fn methods_of(item: &utoipa::openapi::PathItem) -> Vec<String> {
    [
        ("GET", item.get.is_some()),
        ("PUT", item.put.is_some()),
        ("POST", item.post.is_some()),
        ("DELETE", item.delete.is_some()),
        ("PATCH", item.patch.is_some()),
        ("HEAD", item.head.is_some()),
        ("OPTIONS", item.options.is_some()),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(m, _)| m.to_owned())
    .collect()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::extract::MatchedPath;
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    use super::*;
    use crate::admin::test_state;

    #[test]
    fn templates_match_concrete_paths() {
        assert!(template_matches(
            "/api/v1/routes/{name}",
            "/api/v1/routes/x"
        ));
        assert!(!template_matches(
            "/api/v1/routes/{name}",
            "/api/v1/routes/"
        ));
        assert!(!template_matches(
            "/api/v1/routes/{name}",
            "/api/v1/routes/x/y"
        ));
        assert!(template_matches("/healthz", "/healthz"));
    }

    /// Every documented operation reaches the handler registered for that
    /// very path (not a fallback).
    #[tokio::test]
    async fn every_documented_operation_is_routed() {
        let state = test_state().await;
        let (router, doc) = split(state.clone());
        let router: Router =
            router
                .route_layer(middleware::from_fn(
                    |matched: MatchedPath,
                     request: axum::extract::Request,
                     next: middleware::Next| async move {
                        let mut response = next.run(request).await;
                        response.headers_mut().insert(
                            "x-matched",
                            matched.as_str().parse().expect("a path is a header value"),
                        );
                        response
                    },
                ))
                .with_state(state);
        let mut operations = 0;
        for (template, item) in &doc.paths.paths {
            let concrete = template
                .split('/')
                .map(|s| if s.starts_with('{') { "x" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            for method in methods_of(item) {
                operations += 1;
                let request = Request::builder()
                    .method(Method::from_bytes(method.as_bytes()).unwrap())
                    .uri(&concrete)
                    .body(Body::empty())
                    .unwrap();
                let response = router.clone().oneshot(request).await.unwrap();
                assert_eq!(
                    response
                        .headers()
                        .get("x-matched")
                        .map(|v| v.to_str().unwrap()),
                    Some(template.as_str()),
                    "{method} {concrete} (documented as {template}) answered {} without reaching its handler",
                    response.status()
                );
            }
        }
        assert_eq!(operations, 27, "update this count with the endpoints");
    }

    /// The other direction: [`routes`] registers everything through
    /// `routes!`, which documents what it routes, and nothing in this crate
    /// adds a route by another way.
    #[test]
    fn nothing_is_routed_without_being_documented() {
        let sources = [
            ("admin/api/mod.rs", include_str!("mod.rs")),
            ("admin/mod.rs", include_str!("../mod.rs")),
            ("admin/stats.rs", include_str!("../stats.rs")),
            ("admin/api/reads.rs", include_str!("reads.rs")),
            ("admin/api/writes.rs", include_str!("writes.rs")),
            ("admin/api/stream.rs", include_str!("stream.rs")),
            ("admin/api/specs.rs", include_str!("specs.rs")),
            (
                "admin/dashboard/mod.rs",
                include_str!("../dashboard/mod.rs"),
            ),
        ];
        for (file, text) in sources {
            for forbidden in [
                concat!(".route", "(\""),
                concat!(".route", "_service("),
                concat!(".nest", "("),
                concat!(".nest", "_service("),
            ] {
                assert!(
                    !text.contains(forbidden),
                    "{file} registers a route with `{forbidden}`; use `.routes(routes!(handler))` \
                     with a #[utoipa::path] so that /api/openapi.json describes it"
                );
            }
        }
        let doc = openapi();
        let registered = include_str!("mod.rs")
            .lines()
            .filter(|l| l.trim_start().starts_with(concat!(".routes(", "routes!(")))
            .count();
        let documented: usize = doc.paths.paths.values().map(|i| methods_of(i).len()).sum();
        assert_eq!(
            registered, documented,
            "one `routes!(handler)` per documented operation"
        );
    }

    #[tokio::test]
    async fn openapi_json_is_served() {
        let router = app(test_state().await);
        let response = router
            .oneshot(
                Request::get("/api/openapi.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert!(doc["paths"]["/api/v1/services/{service}/pin"]["put"].is_object());
        assert!(doc["paths"]["/api/v1/routes/{name}"]["delete"].is_object());
    }
}
