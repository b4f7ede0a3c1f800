//! `GET|PUT|DELETE /kv/{key}`: the client API of the distributed store.
//!
//! Keys are checked here so that every method refuses the same keys with the
//! same message; values are raw bytes up to 1 MiB. A request for a key this
//! instance is not the primary of is forwarded to the primary (then to the
//! other owners, if the primary refuses the connection); a forwarded request
//! is always handled where it lands, so a request is forwarded at most once.
//!
//! `GET` answers with the value and its version as `ETag`; `PUT` and
//! `DELETE` take `If-Match: "<version>"` (or `*`) as a compare-and-set (409
//! when it does not hold).

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::debug;

use crate::error::ApiError;
use crate::kv::fence::Refusal;
use crate::kv::membership::Member;
use crate::kv::peers::{
    FORWARDED_HEADER, Forwarded, HANDOVER_HEADER, PRIMARY_HEADER, PeerError, REFUSED_HEADER,
};
use crate::kv::store::Precondition;
use crate::kv::version::Version;
use crate::kv::{Admitted, Coordination, KvError, MAX_VALUE_BYTES, Route, check_key};
use crate::routes::body;
use crate::state::AppState;

/// The checked key of a `/kv/{key}` or `/_shoal/kv/{key}` path.
pub(crate) fn key(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(key) = path.map_err(|e| ApiError::BadKey {
        key: String::new(),
        why: e.body_text(),
    })?;
    check_key(&key).map_err(|why| ApiError::BadKey {
        key: key.clone(),
        why,
    })?;
    Ok(key)
}

fn if_match(headers: &HeaderMap) -> Result<Option<Precondition>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let given = String::from_utf8_lossy(value.as_bytes()).into_owned();
    if given.trim() == "*" {
        return Ok(Some(Precondition::Exists));
    }
    Version::from_etag(&given)
        .map(|v| Some(Precondition::Version(v)))
        .ok_or(ApiError::BadIfMatch { given })
}

/// `GET`: the request is taken whole, as it has no body to read, so that
/// its headers are borrowed rather than cloned (axum's `HeaderMap`
/// extractor copies them).
pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let (method, headers) = (request.method().clone(), request.headers());
    let admitted = match handling(&state, method, &key, headers, Bytes::new()).await {
        Handling::Here(admitted) => admitted,
        Handling::Answered(answer) => return answer,
    };
    let entry = state
        .kv()
        .read(&key, &admitted)
        .await
        .ok_or(ApiError::KeyNotFound(key))?;
    let value = entry.value.unwrap_or_default();
    // `Bytes` answers as `application/octet-stream` by itself.
    Ok(([(header::ETAG, entry.version.etag())], value).into_response())
}

/// `PUT`: the request is taken whole, and its headers moved out of it
/// before the body is read ([`body::read`], at most a value's size), so
/// that they are not cloned.
pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let (parts, body) = request.into_parts();
    let (method, headers) = (parts.method, parts.headers);
    let value = body::read(body, MAX_VALUE_BYTES).await?;
    let precondition = if_match(&headers)?;
    let admitted = match handling(&state, method, &key, &headers, value.clone()).await {
        Handling::Here(admitted) => admitted,
        Handling::Answered(answer) => return answer,
    };
    let bytes = value.len();
    let written = state
        .kv()
        .write(
            &key,
            Some(value),
            precondition.unwrap_or(Precondition::None),
            &admitted,
        )
        .await
        .map_err(|e| write_error(&key, &headers, e))?;
    let status = if written.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = stored_json(&key, bytes, written.version, written.copies);
    Ok((
        status,
        [
            (header::ETAG, written.version.etag()),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

/// A `PUT`'s answer body, `{"key":…,"bytes":…,"version":…,"copies":…}`,
/// written out directly: through serde_json (`axum::Json` of a struct) it
/// was about a tenth of a PUT's instructions (`bench/kv-cost.sh`). Nothing
/// in it needs escaping: a checked key ([`check_key`]) and a version are
/// ASCII letters, digits and `._:~-`.
fn stored_json(key: &str, bytes: usize, version: Version, copies: usize) -> String {
    debug_assert!(check_key(key).is_ok(), "{key:?} is not a checked key");
    let mut numbers = itoa::Buffer::new();
    let mut body = String::with_capacity(key.len() + 96);
    body.push_str(r#"{"key":""#);
    body.push_str(key);
    body.push_str(r#"","bytes":"#);
    body.push_str(numbers.format(bytes));
    body.push_str(r#","version":""#);
    version.push_to(&mut body);
    body.push_str(r#"","copies":"#);
    body.push_str(numbers.format(copies));
    body.push('}');
    body
}

/// `DELETE`: taken whole, as `GET` is.
pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let (method, headers) = (request.method().clone(), request.headers());
    let precondition = if_match(headers)?;
    let admitted = match handling(&state, method, &key, headers, Bytes::new()).await {
        Handling::Here(admitted) => admitted,
        Handling::Answered(answer) => return answer,
    };
    match state
        .kv()
        .write(
            &key,
            None,
            precondition.unwrap_or(Precondition::Exists),
            &admitted,
        )
        .await
    {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(KvError::Mismatch(_)) if precondition.is_none() => Err(ApiError::KeyNotFound(key)),
        Err(e) => Err(write_error(&key, headers, e)),
    }
}

/// Where a client request for a key is handled.
enum Handling {
    /// Coordinated by this instance.
    Here(Admitted),
    /// Sent to another instance: its answer, or why there is none.
    Answered(Result<Response, ApiError>),
}

/// Forward to the key's primary; else coordinate here once the fence lets
/// the request in ([`crate::kv::Kv::admit`]); else hand over to the key's
/// successor. Only the instance that has no one to hand over to waits for
/// its view to be confirmed again: a handed-over request, or one with no
/// successor to take it (an instance cut off from etcd hands over at once;
/// when all of etcd restarts, the successor is the one that waits).
async fn handling(
    state: &AppState,
    method: Method,
    key: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Handling {
    if let Some(answer) = forward(state, method.clone(), key, headers, body.clone()).await {
        return Handling::Answered(answer);
    }
    let how = match headers.get(HANDOVER_HEADER) {
        Some(hander) => {
            if let Some(answer) = pass_on(state, &method, key, headers, &body, hander).await {
                return Handling::Answered(answer);
            }
            Coordination::HandedOver
        }
        None => Coordination::Primary,
    };
    let kv = state.kv();
    let last_resort = how == Coordination::HandedOver;
    let why = match kv.admit(how, last_resort).await {
        Ok(admitted) => return Handling::Here(admitted),
        Err(why) => why,
    };
    if !last_resort {
        if let Some(answer) = hand_over(state, method, key, headers, body, why).await {
            return Handling::Answered(answer);
        }
        if why == Refusal::ViewUnconfirmed
            && let Ok(admitted) = kv.admit(how, true).await
        {
            return Handling::Here(admitted);
        }
    }
    Handling::Answered(Err(ApiError::Refused {
        key: key.to_owned(),
        why,
    }))
}

/// This instance must not coordinate (`why`): others may already own its
/// keys, or soon will. The key's successor (the next instance of its
/// ranking, primary once this one is out of the view) coordinates instead,
/// asking the key's holders first; a request handed over once is not
/// handed over again. `None`: there is no successor, or it could not be
/// reached.
async fn hand_over(
    state: &AppState,
    method: Method,
    key: &str,
    headers: &HeaderMap,
    body: Bytes,
    why: Refusal,
) -> Option<Result<Response, ApiError>> {
    let successor = state.kv().membership().successor(key)?;
    debug!(key, %why, successor = %successor.id, "handing the request over");
    let mut headers = headers.clone();
    headers.insert(HANDOVER_HEADER, state.id_header().clone());
    match state
        .kv()
        .peers()
        .forward(&successor, state.id(), method, key, &headers, body)
        .await
    {
        Ok(answer) => Some(Ok(relayed(answer, &successor))),
        Err(e) => {
            state.kv().note_failure(&successor, &e);
            None
        }
    }
}

/// A request handed over by `hander` goes on to the key's primary when this
/// instance's view names one other than the two of them: the hander's view
/// was behind (unconfirmed), and that primary may be coordinating the key
/// already. It goes on once, still marked as handed over: the primary
/// coordinates it asking the holders, and hands it over no further.
/// `None`: coordinate here (this instance is the primary; the primary is
/// the hander, whose lease is running out; it was passed on already; or
/// the primary could not be reached).
async fn pass_on(
    state: &AppState,
    method: &Method,
    key: &str,
    headers: &HeaderMap,
    body: &Bytes,
    hander: &HeaderValue,
) -> Option<Result<Response, ApiError>> {
    // Straight from the hander (its id in both headers), not passed on yet.
    if headers.get(FORWARDED_HEADER) != Some(hander) {
        return None;
    }
    let Route::Forward(owners) = state.kv().route(key) else {
        return None;
    };
    let primary = owners.first()?;
    if primary.id.as_bytes() == hander.as_bytes() {
        return None;
    }
    let forwarded = state
        .kv()
        .peers()
        .forward(
            primary,
            state.id(),
            method.clone(),
            key,
            headers,
            body.clone(),
        )
        .await;
    match forwarded {
        Ok(answer) => Some(Ok(relayed(answer, primary))),
        Err(e) => {
            state.kv().note_failure(primary, &e);
            None
        }
    }
}

fn write_error(key: &str, headers: &HeaderMap, error: KvError) -> ApiError {
    match error {
        KvError::Mismatch(m) => ApiError::VersionMismatch {
            key: key.to_owned(),
            current: m.current.map(|v| v.to_string()),
            given: headers
                .get(header::IF_MATCH)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default(),
        },
        KvError::Storage(e) => e.into(),
        KvError::Refused(why) => ApiError::Refused {
            key: key.to_owned(),
            why,
        },
        KvError::TooFewOwners { acked, needed, why } => ApiError::TooFewOwners {
            key: key.to_owned(),
            acked,
            needed,
            why,
        },
    }
}

/// Send the request to the key's primary unless this instance is the one to
/// handle it; `None` means "handle it here".
async fn forward(
    state: &AppState,
    method: Method,
    key: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Option<Result<Response, ApiError>> {
    if headers.contains_key(FORWARDED_HEADER) {
        return None;
    }
    let Route::Forward(owners) = state.kv().route(key) else {
        return None;
    };
    for owner in owners.iter().filter(|o| !o.is(state.id())) {
        match state
            .kv()
            .peers()
            .forward(
                owner,
                state.id(),
                method.clone(),
                key,
                headers,
                body.clone(),
            )
            .await
        {
            Ok(answer) => return Some(Ok(relayed(answer, owner))),
            Err(e @ PeerError::Unavailable { .. }) => state.kv().note_failure(owner, &e),
            Err(e) => {
                state.kv().note_failure(owner, &e);
                return Some(Err(ApiError::OwnerFailed {
                    key: key.to_owned(),
                    why: e.to_string(),
                }));
            }
        }
    }
    // No owner could be reached: coordinate here (the sync task moves the
    // key to its owners once they are back or gone from the registry).
    None
}

/// The answer of the instance `owner` that coordinated a request, as this
/// instance's answer, naming `owner` in `x-shoal-kv-primary`.
fn relayed(answer: Forwarded, owner: &Member) -> Response {
    let mut response = (answer.status, answer.body).into_response();
    for name in [
        header::CONTENT_TYPE,
        header::ETAG,
        header::RETRY_AFTER,
        header::ALLOW,
        REFUSED_HEADER,
    ] {
        if let Some(value) = answer.headers.get(&name) {
            response.headers_mut().insert(name, value.clone());
        }
    }
    // Who coordinated it: the instance that answered, or the one it relayed.
    let coordinator = answer
        .headers
        .get(PRIMARY_HEADER)
        .cloned()
        .or_else(|| HeaderValue::from_str(&owner.id).ok());
    if let Some(id) = coordinator {
        response.headers_mut().insert(PRIMARY_HEADER, id);
    }
    response
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET, HEAD, PUT, DELETE",
    }
}

#[cfg(test)]
mod tests {
    use crate::kv::MAX_VALUE_BYTES;
    use crate::routes::testing::*;
    use axum::http::StatusCode;

    /// The hand-written `PUT` answer is the JSON serde would write: every
    /// character a key may hold, the largest numbers.
    #[test]
    fn a_put_answer_is_the_json_of_its_fields() {
        use crate::kv::version::Version;
        let key = "aZ09._:~-";
        let version = Version {
            hlc: u64::MAX,
            node: 0xabc,
        };
        let body = super::stored_json(key, usize::MAX, version, 3);
        let parsed: serde_json::Value = serde_json::from_str(&body).expect(&body);
        assert_eq!(
            parsed,
            serde_json::json!({
                "key": key,
                "bytes": usize::MAX,
                "version": version.to_string(),
                "copies": 3,
            }),
            "{body}"
        );
    }

    /// The key's successor, handed a request by `h`, passes it on once to
    /// the primary of its own view (`p`); a request that was passed on
    /// already is coordinated where it is, never passed on again.
    #[tokio::test]
    async fn a_handed_over_request_is_passed_on_to_the_primary_once_and_never_again() {
        use crate::kv::peers::{FORWARDED_HEADER, HANDOVER_HEADER};
        use crate::kv::testing::{fake_peer, read_head, refusing_member as member};
        use axum::body::Body;
        use axum::http::Request;
        use tokio::io::AsyncWriteExt;
        use tokio::sync::mpsc;

        // `p` answers every request `ok` and tells the test what it was.
        let (to_test, mut heads) = mpsc::unbounded_channel();
        let (p, _) = fake_peer("p", move |mut stream| {
            let to_test = to_test.clone();
            async move {
                let head = read_head(&mut stream).await;
                to_test.send(head).unwrap();
                let ok = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
                stream.write_all(ok.as_bytes()).await.unwrap();
            }
        })
        .await;
        let t = TestApp::new();
        let kv = t.state.kv();
        kv.membership()
            .update(vec![member(TEST_ID), member("h"), p.clone()]);
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| &*kv.membership().owners(k)[0].id == "p")
            .unwrap();
        let handed_over = |forwarded_by: &str| {
            Request::get(format!("/kv/{key}"))
                .header(HANDOVER_HEADER, "h")
                .header(FORWARDED_HEADER, forwarded_by)
                .body(Body::empty())
                .unwrap()
        };

        // Straight from `h`: passed on to `p`, still marked as handed over by `h`.
        let r = t.call(handed_over("h")).await;
        assert_eq!((r.status, r.text()), (StatusCode::OK, "ok".into()));
        let head = heads.recv().await.unwrap().to_ascii_lowercase();
        assert!(head.starts_with(&format!("get /kv/{key} ")), "{head}");
        assert!(
            head.contains(&format!("{FORWARDED_HEADER}: {TEST_ID}")),
            "{head}"
        );
        assert!(head.contains(&format!("{HANDOVER_HEADER}: h")), "{head}");

        // Passed on already (by another instance than `h`): coordinated
        // here. `p` may be asked for its copy, never sent the request.
        let r = t.call(handed_over("s")).await;
        assert_ne!(r.text(), "ok", "passed on a second time");
        while let Ok(head) = heads.try_recv() {
            assert!(head.starts_with("GET /_shoal/kv/"), "{head}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn no_coordination_without_a_live_lease() {
        use crate::kv::LEASE_MARGIN;
        use crate::kv::fence::JOIN_DELAY;
        use registry::InstanceState;
        use std::time::Duration;
        use tokio::time::Instant;

        let t = TestApp::new();
        t.state.kv().fence().on_lease(t.registration.subscribe());
        // Not registered yet: no lease.
        let r = t.call(req_with("PUT", "/kv/k", "v")).await;
        r.error(StatusCode::SERVICE_UNAVAILABLE, "lease_lost");
        let lease_for = |d: Duration| {
            t.registration
                .send_modify(|s| s.lease_until = Some(Instant::now() + d));
        };
        t.registration.send_modify(|s| {
            s.lease = Some(1);
            s.written_state = Some(InstanceState::Ready);
            s.written_at = Some(Instant::now());
        });
        lease_for(Duration::from_secs(3));
        // Ready a moment ago: the first write waits for the join delay.
        let asked = Instant::now();
        assert_eq!(
            t.call(req_with("PUT", "/kv/k", "v")).await.status,
            StatusCode::CREATED
        );
        assert_eq!(asked.elapsed(), JOIN_DELAY);
        lease_for(Duration::from_secs(3));
        assert_eq!(t.call(req("GET", "/kv/k")).await.status, StatusCode::OK);
        // The lease's end near (no keep-alive for a while): reads, writes
        // and deletes all refused, and nothing changed.
        tokio::time::advance(Duration::from_secs(3) - LEASE_MARGIN).await;
        for request in [
            req("GET", "/kv/k"),
            req_with("PUT", "/kv/k", "w"),
            req("DELETE", "/kv/k"),
        ] {
            let r = t.call(request).await;
            let detail = r.error(StatusCode::SERVICE_UNAVAILABLE, "lease_lost");
            assert!(detail.contains("is etcd reachable"), "{detail}");
            assert_eq!(r.refused.as_deref(), Some("lease_lost"));
        }
        lease_for(Duration::from_secs(3));
        assert_eq!(t.call(req("GET", "/kv/k")).await.body, b"v");
    }

    #[tokio::test]
    async fn put_get_replace_delete() {
        let t = TestApp::new();
        let r = t.call(req_with("PUT", "/kv/user:42", "hello")).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        let body = r.json();
        assert_eq!(
            (body["key"].as_str(), body["bytes"].as_u64()),
            (Some("user:42"), Some(5))
        );
        assert_eq!(body["copies"], 1);
        let etag = format!("\"{}\"", body["version"].as_str().unwrap());
        assert_eq!(r.etag.as_deref(), Some(etag.as_str()));

        let r = t.call(req("GET", "/kv/user:42")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(r.instance.as_deref(), Some(TEST_ID));
        assert_eq!(r.etag.as_deref(), Some(etag.as_str()));

        let r = t
            .call(req_with("PUT", "/kv/user:42", vec![0u8, 255, 1]))
            .await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.json()["bytes"], 3);
        assert_eq!(t.call(req("GET", "/kv/user:42")).await.body, [0u8, 255, 1]);

        let r = t.call(req("DELETE", "/kv/user:42")).await;
        assert_eq!(r.status, StatusCode::NO_CONTENT);
        assert!(r.body.is_empty());

        let detail = t
            .call(req("GET", "/kv/user:42"))
            .await
            .error(StatusCode::NOT_FOUND, "key_not_found");
        assert!(detail.contains("`user:42`"), "{detail}");
        t.call(req("DELETE", "/kv/user:42"))
            .await
            .error(StatusCode::NOT_FOUND, "key_not_found");
    }

    #[tokio::test]
    async fn if_match_is_a_compare_and_set() {
        let t = TestApp::new();
        let missing = t.call(req_if_match("PUT", "/kv/c", "*", "0")).await;
        let detail = missing.error(StatusCode::CONFLICT, "version_mismatch");
        assert!(detail.contains("no value"), "{detail}");

        let first = t.call(req_with("PUT", "/kv/c", "1")).await;
        let v1 = first.etag.clone().unwrap();
        let second = t.call(req_if_match("PUT", "/kv/c", &v1, "2")).await;
        assert_eq!(second.status, StatusCode::OK);
        let v2 = second.etag.clone().unwrap();
        assert_ne!(v1, v2);

        // The stale version loses and names the current one.
        let stale = t.call(req_if_match("PUT", "/kv/c", &v1, "3")).await;
        let detail = stale.error(StatusCode::CONFLICT, "version_mismatch");
        assert!(detail.contains(v2.as_str()), "{detail} vs {v2}");
        assert_eq!(t.call(req("GET", "/kv/c")).await.body, b"2");

        let bad = t.call(req_if_match("DELETE", "/kv/c", "W/\"x\"", "")).await;
        bad.error(StatusCode::BAD_REQUEST, "bad_if_match");
        let stale_delete = t.call(req_if_match("DELETE", "/kv/c", &v1, "")).await;
        stale_delete.error(StatusCode::CONFLICT, "version_mismatch");
        let delete = t.call(req_if_match("DELETE", "/kv/c", &v2, "")).await;
        assert_eq!(delete.status, StatusCode::NO_CONTENT);
        t.call(req("GET", "/kv/c"))
            .await
            .error(StatusCode::NOT_FOUND, "key_not_found");
        // A recreated key starts a new history: the old ETag does not match.
        t.call(req_with("PUT", "/kv/c", "4")).await;
        let old = t.call(req_if_match("PUT", "/kv/c", &v2, "5")).await;
        old.error(StatusCode::CONFLICT, "version_mismatch");
    }

    #[tokio::test]
    async fn internal_copies_keep_the_newest_version() {
        let t = TestApp::new();
        let put = |version: &str, body: &'static str, tombstone: bool| {
            let mut b = axum::http::Request::builder()
                .method("PUT")
                .uri("/_shoal/kv/r")
                .header("x-shoal-kv-version", version);
            if tombstone {
                b = b.header("x-shoal-kv-tombstone", "1");
            }
            b.body(axum::body::Body::from(body)).unwrap()
        };
        assert_eq!(
            t.call(put("20-1", "new", false)).await.json()["stored"],
            true
        );
        assert_eq!(
            t.call(put("10-1", "old", false)).await.json()["stored"],
            false
        );
        let r = t.call(req("GET", "/_shoal/kv/r")).await;
        assert_eq!(r.body, b"new");
        assert_eq!(
            t.call(req("GET", "/kv/r")).await.etag.as_deref(),
            Some("\"20-1\"")
        );
        assert_eq!(t.call(put("30-1", "", true)).await.json()["stored"], true);
        t.call(req("GET", "/kv/r"))
            .await
            .error(StatusCode::NOT_FOUND, "key_not_found");
        let missing_version = axum::http::Request::builder()
            .method("PUT")
            .uri("/_shoal/kv/r")
            .body(axum::body::Body::from("x"))
            .unwrap();
        t.call(missing_version)
            .await
            .error(StatusCode::BAD_REQUEST, "bad_version");
    }

    #[tokio::test]
    async fn bad_keys_are_400s_naming_the_rule() {
        let t = TestApp::new();
        let long = format!("/kv/{}", "k".repeat(257));
        for (method, path, why) in [
            ("GET", "/kv/a%20b", "it contains ' '"),
            ("PUT", "/kv/a/b", "it contains '/'"),
            ("DELETE", "/kv/a%2Fb", "it contains '/'"),
            ("GET", long.as_str(), "it is 257 bytes long"),
        ] {
            let detail = t
                .call(req_with(method, path, "v"))
                .await
                .error(StatusCode::BAD_REQUEST, "bad_key");
            assert!(
                detail.contains(why) && detail.contains("1..=256 bytes of letters, digits"),
                "{method} {path}: {detail}"
            );
        }
        assert!(t.state.kv().store().is_empty());
        // 256 bytes is fine.
        let ok = format!("/kv/{}", "k".repeat(256));
        assert_eq!(
            t.call(req_with("PUT", &ok, "v")).await.status,
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn values_over_one_mib_are_json_413s() {
        let t = TestApp::new();
        let r = t
            .call(req_with("PUT", "/kv/big", vec![b'x'; MAX_VALUE_BYTES]))
            .await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json()["bytes"], MAX_VALUE_BYTES);

        let r = t
            .call(req_with("PUT", "/kv/big", vec![b'y'; MAX_VALUE_BYTES + 1]))
            .await;
        let detail = r.error(StatusCode::PAYLOAD_TOO_LARGE, "value_too_large");
        assert!(detail.contains("1 MiB"), "{detail}");
        assert_eq!(r.instance.as_deref(), Some(TEST_ID));
        // The old value is untouched.
        assert_eq!(
            t.call(req("GET", "/kv/big")).await.body.len(),
            MAX_VALUE_BYTES
        );
    }

    #[tokio::test]
    async fn other_methods_are_405s() {
        let t = TestApp::new();
        let r = t.call(req("POST", "/kv/a")).await;
        r.error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
        assert_eq!(r.allow.as_deref(), Some("GET, HEAD, PUT, DELETE"));
    }
}
