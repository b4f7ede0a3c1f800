//! The app-server's `/kv/{key}` keys: `check_key` on arbitrary text, and the
//! real router on arbitrary request paths. An accepted key is 1 to
//! `MAX_KEY_BYTES` bytes of `[A-Za-z0-9._:~-]`, and it is exactly the path's
//! segment after `/kv/`, percent-decoded; nothing panics.

#![no_main]

use std::sync::OnceLock;

use app_server::kv::{MAX_KEY_BYTES, check_key};
use app_server::routes::BoxedApp;
use app_server::{AppState, app};
use axum::body::Body;
use axum::http::{Request, Uri};
use http_body_util::BodyExt;
use libfuzzer_sys::fuzz_target;
use registry::RegistrationStatus;
use tower::ServiceExt;

fn allowed(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_BYTES
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:~-".contains(&b))
}

/// Percent-decoding as RFC 3986 says, written independently of the router's.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

struct Harness {
    runtime: tokio::runtime::Runtime,
    router: BoxedApp,
}

fn harness() -> &'static Harness {
    static HARNESS: OnceLock<Harness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        let (status, rx) = tokio::sync::watch::channel(RegistrationStatus::default());
        // The router only reads the status; keep the sender for the whole run.
        std::mem::forget(status);
        Harness {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            router: BoxedApp::new(app(AppState::new("fuzz", rx).expect("a valid id"))),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match check_key(text) {
        Ok(()) => assert!(allowed(text), "check_key accepted {text:?}"),
        Err(why) => assert!(!allowed(text), "check_key refused {text:?}: {why}"),
    }

    let Ok(uri) = format!("/kv/{text}").parse::<Uri>() else {
        return;
    };
    let h = harness();
    let request = Request::put(uri.clone())
        .body(Body::from("v"))
        .expect("a request");
    let (status, body) = h.runtime.block_on(async {
        let response = h.router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("a body")
            .to_bytes();
        (status, body)
    });
    assert!(
        !status.is_server_error(),
        "PUT {uri} answered {status}: {}",
        String::from_utf8_lossy(&body)
    );
    if status.is_success() {
        let reply: serde_json::Value = serde_json::from_slice(&body).expect("a JSON reply");
        let key = reply["key"].as_str().expect("the reply names the key");
        assert!(allowed(key), "PUT {uri} stored under {key:?}");
        let segment = uri.path().strip_prefix("/kv/").expect("routed under /kv/");
        assert_eq!(
            Some(key),
            percent_decode(segment).as_deref(),
            "PUT {uri} stored under a key that is not its path segment"
        );
        // Delete it again, so the store stays small over a long run.
        let delete = Request::delete(uri.clone())
            .body(Body::empty())
            .expect("a request");
        let status = h
            .runtime
            .block_on(h.router.clone().oneshot(delete))
            .expect("infallible")
            .status();
        assert_eq!(status, 204, "DELETE {uri} after a successful PUT");
    }
});
