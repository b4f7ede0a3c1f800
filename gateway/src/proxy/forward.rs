//! One attempt on one instance: the request as the instance sees it (the
//! route's forward path and the query, in origin form), what a failed send
//! means for retries and health, and the legacy pooled client the active
//! health checks use.

use std::error::Error as StdError;
use std::time::Duration;

use http::uri::PathAndQuery;
use http::{HeaderMap, Method, Request, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::body::{AttemptBody, BodyError};
use super::pool::SendError;
use super::retry::Failure;
use crate::table::RouteEntry;

/// A pooled HTTP/1.1 client to instances (keep-alive, TCP_NODELAY), for the
/// active health checks; requests go through [`pool`](super::pool).
pub type HttpClient = Client<HttpConnector, AttemptBody<Incoming>>;

/// A client with `connect_timeout` per connection attempt that keeps idle
/// connections for `idle_timeout`.
pub fn client(connect_timeout: Duration, idle_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    connector.enforce_http(true);
    // `retry_canceled_requests` stays on: a request that finds its pooled
    // connection closed by the instance (the keep-alive race) is sent again
    // on a fresh one before anything was written.
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(idle_timeout)
        .pool_timer(TokioTimer::new())
        .build(connector)
}

/// Path and query to send: the route's forward path (prefix stripped if it
/// says so) and the original query. Reuses the client's bytes when the path
/// is unchanged.
pub fn forward_path_and_query(entry: &RouteEntry, uri: &Uri) -> PathAndQuery {
    let path = uri.path();
    let forward = entry.forward_path(path);
    if forward == path
        && let Some(pq) = uri.path_and_query()
    {
        return pq.clone();
    }
    let joined = match uri.query() {
        Some(q) => format!("{forward}?{q}"),
        None => forward.into_owned(),
    };
    // Made of parts of a valid URI, with at most a `/` added.
    joined
        .parse()
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// The request for one attempt, in origin form (`GET /path?query`): the
/// connection already goes to the instance.
pub fn request(
    method: &Method,
    path_and_query: PathAndQuery,
    headers: HeaderMap,
    body: AttemptBody<Incoming>,
) -> Request<AttemptBody<Incoming>> {
    let mut request = Request::new(body);
    *request.method_mut() = method.clone();
    *request.uri_mut() = Uri::from(path_and_query);
    *request.headers_mut() = headers;
    request
}

/// What a failed attempt means.
#[derive(Debug)]
pub enum AttemptError {
    /// The instance (or the way to it) failed.
    Failed(Failure, String),
    /// The client's body went over the limit while streaming.
    BodyTooLarge { limit: u64 },
    /// The client's body could not be read (the client went away): not the
    /// instance's fault.
    ClientBody(String),
}

/// Classify an error from sending a request.
pub fn classify(error: &SendError) -> AttemptError {
    match find::<BodyError>(error) {
        Some(BodyError::TooLarge { limit }) => return AttemptError::BodyTooLarge { limit: *limit },
        Some(BodyError::Client(e)) => return AttemptError::ClientBody(e.to_string()),
        Some(BodyError::AlreadyUsed) | None => {}
    }
    let failure = match error {
        SendError::Connect(_) => Failure::NotSent,
        SendError::Http(e) if e.is_canceled() => Failure::NotSent,
        SendError::Http(_) if find::<h2::Error>(error).is_some_and(refused_unprocessed) => {
            Failure::Refused
        }
        SendError::Http(_) => Failure::Reset,
    };
    AttemptError::Failed(failure, chain(error))
}

/// Whether an HTTP/2 stream error says the instance did not process the
/// request (RFC 9113 §8.7): it reset the stream with `REFUSED_STREAM`, or
/// sent a `GOAWAY` whose last stream id is below the stream's (h2 fails
/// only those streams with the peer's `GOAWAY` error; the ones at or below
/// it that the connection's end cuts off fail with an I/O error, as they
/// may have been processed).
pub fn refused_unprocessed(error: &h2::Error) -> bool {
    error.is_remote()
        && (error.is_go_away()
            || (error.is_reset() && error.reason() == Some(h2::Reason::REFUSED_STREAM)))
}

/// The first error of type `T` in `error`'s source chain.
fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// An error and its sources on one line, for logs.
pub fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use registry::model::{BalancePolicy, NamedRoute, Route};

    use super::*;
    use crate::table::{Defaults, LiveState};

    fn entry_with(route_json: &str, f: impl FnOnce(&RouteEntry)) {
        let route: Route = serde_json::from_str(route_json).unwrap();
        let routes = BTreeMap::from([(
            "/shoal/routes/r".to_owned(),
            NamedRoute {
                name: "r".into(),
                route,
            },
        )]);
        let table = LiveState::default().build(
            &BTreeMap::new(),
            &routes,
            &Defaults {
                service: "app".into(),
                policy: BalancePolicy::RoundRobin,
            },
            true,
            1,
            Instant::now(),
        );
        f(&table.routes[0]);
    }

    #[test]
    fn the_forward_path_keeps_the_query() {
        entry_with(
            r#"{"service":"api","path_prefix":"/api","strip_prefix":true}"#,
            |entry| {
                let uri: Uri = "/api/users/7?x=1&y=2".parse().unwrap();
                assert_eq!(forward_path_and_query(entry, &uri), "/users/7?x=1&y=2");
                let uri: Uri = "/api".parse().unwrap();
                assert_eq!(forward_path_and_query(entry, &uri), "/");
                let pq = forward_path_and_query(entry, &uri);
                let request = request(&Method::GET, pq, HeaderMap::new(), AttemptBody::empty());
                assert_eq!(request.uri(), "/");
            },
        );
        entry_with(r#"{"service":"api","path_prefix":"/api"}"#, |entry| {
            let uri: Uri = "http://host.example/api/x?q".parse().unwrap();
            assert_eq!(forward_path_and_query(entry, &uri), "/api/x?q");
        });
    }
}
