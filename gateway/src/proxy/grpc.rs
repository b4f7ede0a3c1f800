//! The gateway's own answers to gRPC requests: a gRPC client reads the call's
//! outcome from `grpc-status`, not from the HTTP status, and takes a 503
//! with a JSON body for a protocol error (INTERNAL or UNKNOWN, with no
//! word of what happened). So when a request is gRPC (`content-type:
//! application/grpc`, `application/grpc+proto`, ...) and the gateway answers
//! it itself (no instance, instance unreachable or failed, timeout, rate
//! limit, body too large, ...), the answer is a gRPC *trailers-only*
//! response: HTTP 200, `content-type: application/grpc`, `grpc-status`
//! and a percent-encoded `grpc-message` (the JSON error's detail) in the
//! headers, and no body. `x-shoal-instance`, `x-request-id` and
//! `Retry-After` stay, as on every gateway answer.
//!
//! The status for each [`GatewayError`] is [`status`] (one place):
//!
//! | gateway error | HTTP | gRPC status |
//! |---|---|---|
//! | `no_instance`, `overloaded` | 503 | UNAVAILABLE (14) |
//! | `unreachable`, `bad_gateway` | 502 | UNAVAILABLE (14) |
//! | `timeout` | 504 | DEADLINE_EXCEEDED (4) |
//! | `rate_limited` | 429 | RESOURCE_EXHAUSTED (8) |
//! | `body_too_large` | 413 | RESOURCE_EXHAUSTED (8) |
//! | `bad_request`, `client_body` | 400 | INTERNAL (13) |
//!
//! as gRPC's own HTTP-to-status table maps 502, 503, 504 to UNAVAILABLE, and
//! 429 to UNAVAILABLE too; RESOURCE_EXHAUSTED is what gRPC servers answer for
//! a rate limit or an oversized message, and says "do not retry at once".

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode};

use super::error::GatewayError;
use super::response::ResponseBody;

pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
pub static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes the gateway answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    DeadlineExceeded = 4,
    ResourceExhausted = 8,
    Internal = 13,
    Unavailable = 14,
}

/// Whether a request is a gRPC call: its content type is
/// `application/grpc`, alone or with a `+codec` or `;parameters` suffix
/// (the handler asks only for POSTs, as gRPC calls all are).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE) else {
        return false;
    };
    let value = value.as_bytes();
    let prefix = b"application/grpc";
    value.len() >= prefix.len()
        && value[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(value.get(prefix.len()), None | Some(b'+' | b';'))
}

/// The gRPC status for a gateway error.
pub fn status(error: &GatewayError) -> Code {
    match error {
        GatewayError::NoInstance { .. }
        | GatewayError::Overloaded { .. }
        | GatewayError::Unreachable { .. }
        | GatewayError::BadGateway { .. } => Code::Unavailable,
        GatewayError::Timeout { .. } => Code::DeadlineExceeded,
        GatewayError::RateLimited { .. } | GatewayError::BodyTooLarge { .. } => {
            Code::ResourceExhausted
        }
        GatewayError::BadRequest(_) | GatewayError::ClientBody(_) => Code::Internal,
    }
}

/// `message` as gRPC's `grpc-message` wants it: UTF-8, with every byte
/// outside printable ASCII, and `%` itself, percent-encoded.
pub fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for byte in message.bytes() {
        if (0x20..=0x7e).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Turn the gateway's own JSON answer for `error` into a gRPC trailers-only
/// response: its headers (instance, request id, `Retry-After`) and records
/// stay; the status and body go.
pub fn trailers_only(
    error: &GatewayError,
    response: Response<ResponseBody>,
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    parts.status = StatusCode::OK;
    let headers = &mut parts.headers;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.remove(CONTENT_LENGTH);
    headers.insert(&GRPC_STATUS, HeaderValue::from(status(error) as u16));
    let message = format!("{}: {}", error.code(), error.detail());
    if let Ok(value) = HeaderValue::from_str(&percent_encode(&message)) {
        headers.insert(&GRPC_MESSAGE, value);
    }
    Response::from_parts(parts, body.emptied())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;

    use super::*;

    #[test]
    fn grpc_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("Application/GRPC+json"));
        assert!(with("application/grpc;charset=utf-8"));
        assert!(!with("application/grpc-web"));
        assert!(!with("application/grpcx"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn every_gateway_error_has_its_status() {
        let e = |error: GatewayError| status(&error) as u8;
        let instance = || "i-1".to_owned();
        let service = || "app".to_owned();
        assert_eq!(
            e(GatewayError::NoInstance {
                service: service(),
                waited: Duration::ZERO
            }),
            14
        );
        assert_eq!(
            e(GatewayError::Overloaded {
                service: service(),
                instance: instance()
            }),
            14
        );
        assert_eq!(
            e(GatewayError::Unreachable {
                service: service(),
                attempts: 2,
                cause: "refused".into()
            }),
            14
        );
        assert_eq!(
            e(GatewayError::BadGateway {
                service: service(),
                instance: instance(),
                cause: "reset".into()
            }),
            14
        );
        assert_eq!(
            e(GatewayError::Timeout {
                service: service(),
                instance: instance(),
                after: Duration::from_secs(1)
            }),
            4
        );
        assert_eq!(
            e(GatewayError::RateLimited {
                route: "r".into(),
                per_second: 1.0,
                retry_after: Duration::from_secs(1)
            }),
            8
        );
        assert_eq!(e(GatewayError::BodyTooLarge { limit: 10 }), 8);
        assert_eq!(e(GatewayError::BadRequest("x".into())), 13);
        assert_eq!(e(GatewayError::ClientBody("x".into())), 13);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(percent_encode("no instance"), "no instance");
        assert_eq!(percent_encode("100% `app`"), "100%25 `app`");
        assert_eq!(percent_encode("é\n"), "%C3%A9%0A");
    }

    #[tokio::test]
    async fn a_gateway_error_becomes_a_trailers_only_response() {
        let error = GatewayError::NoInstance {
            service: "app".into(),
            waited: Duration::from_millis(1500),
        };
        let response = trailers_only(&error, error.to_response(None));
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers[CONTENT_TYPE], "application/grpc");
        assert_eq!(headers[&GRPC_STATUS], "14");
        let message = headers[&GRPC_MESSAGE].to_str().unwrap();
        assert!(
            message.starts_with("no_instance: service `app` has no ready instance; waited 1500 ms"),
            "{message}"
        );
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["x-shoal-instance"], "-");
        assert!(headers.get(CONTENT_LENGTH).is_none());
        let body = response.into_body().collect().await.unwrap();
        assert!(body.to_bytes().is_empty());
    }
}
