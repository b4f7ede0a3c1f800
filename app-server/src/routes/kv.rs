//! `GET|PUT|DELETE /kv/{key}`: the instance's key-value API over [`KvStore`].
//!
//! Keys are checked here so that every method refuses the same keys with
//! the same message; values are raw bytes up to 1 MiB.
//!
//! [`KvStore`]: crate::store::KvStore

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{PutOutcome, check_key};

fn key(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
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

pub async fn get(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let value = state
        .kv()
        .get(&key)
        .await
        .ok_or(ApiError::KeyNotFound(key))?;
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], value).into_response())
}

pub async fn put(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let key = key(path)?;
    let value = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::ValueTooLarge
        } else {
            ApiError::BadBody(e.body_text())
        }
    })?;
    let bytes = value.len();
    let status = match state.kv().put(&key, value).await {
        PutOutcome::Created => StatusCode::CREATED,
        PutOutcome::Replaced => StatusCode::OK,
    };
    Ok((status, Json(json!({ "key": key, "bytes": bytes }))).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let key = key(path)?;
    if state.kv().delete(&key).await {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::KeyNotFound(key))
    }
}

pub async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::MethodNotAllowed {
        method: method.to_string(),
        allow: "GET, HEAD, PUT, DELETE",
    }
}

#[cfg(test)]
mod tests {
    use crate::routes::testing::*;
    use crate::store::MAX_VALUE_BYTES;
    use axum::http::StatusCode;

    #[tokio::test]
    async fn put_get_replace_delete() {
        let t = TestApp::new();
        let r = t.call(req_with("PUT", "/kv/user:42", "hello")).await;
        assert_eq!(r.status, StatusCode::CREATED);
        assert_eq!(r.json(), serde_json::json!({"key": "user:42", "bytes": 5}));

        let r = t.call(req("GET", "/kv/user:42")).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.body, b"hello");
        assert_eq!(r.content_type.as_deref(), Some("application/octet-stream"));
        assert_eq!(r.instance.as_deref(), Some(TEST_ID));

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
        assert!(t.state.kv().is_empty());
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
