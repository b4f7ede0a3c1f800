//! The responses the gateway makes itself: `{"error": "<code>", "detail":
//! "<what happened and what to do>"}` with the status that fits, and the
//! headers every response carries (`x-shoal-instance`, `Retry-After` on 503).
//!
//! A detail tells the client what it did wrong or what to try; it names the
//! service and instance ids (which clients already see in `x-shoal-instance`)
//! but nothing else internal such as instance addresses.

use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Response, StatusCode};

use super::headers::{NO_INSTANCE, X_SHOAL_INSTANCE};
use super::response::ResponseBody;

/// Something the gateway answers on its own instead of an instance.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GatewayError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("request body larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("no ready instance of service {service} after waiting {waited:?}")]
    NoInstance { service: String, waited: Duration },
    #[error(
        "instance {instance} of service {service} is at its concurrency limit and its queue is full"
    )]
    Overloaded { service: String, instance: String },
    #[error("could not reach service {service} after {attempts} attempt(s): {cause}")]
    Unreachable {
        service: String,
        attempts: usize,
        cause: String,
    },
    #[error("instance {instance} of service {service} failed before answering: {cause}")]
    BadGateway {
        service: String,
        instance: String,
        cause: String,
    },
    #[error("instance {instance} of service {service} sent no response headers within {after:?}")]
    Timeout {
        service: String,
        instance: String,
        after: Duration,
    },
    #[error("the request body could not be read from the client: {0}")]
    ClientBody(String),
    #[error("over route {route}'s rate limit")]
    RateLimited {
        route: String,
        per_second: f64,
        retry_after: Duration,
    },
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::BadRequest(_) | GatewayError::ClientBody(_) => StatusCode::BAD_REQUEST,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::NoInstance { .. } | GatewayError::Overloaded { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            GatewayError::Unreachable { .. } | GatewayError::BadGateway { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The machine-readable `error` code.
    pub fn code(&self) -> &'static str {
        match self {
            GatewayError::BadRequest(_) => "bad_request",
            GatewayError::ClientBody(_) => "client_body",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::NoInstance { .. } => "no_instance",
            GatewayError::Overloaded { .. } => "overloaded",
            GatewayError::Unreachable { .. } => "unreachable",
            GatewayError::BadGateway { .. } => "bad_gateway",
            GatewayError::Timeout { .. } => "timeout",
            GatewayError::RateLimited { .. } => "rate_limited",
        }
    }

    /// The human-readable `detail`: what happened and what to do.
    pub fn detail(&self) -> String {
        match self {
            GatewayError::BadRequest(why) => why.clone(),
            GatewayError::ClientBody(why) => {
                format!("reading the request body failed ({why}); send the request again")
            }
            GatewayError::BodyTooLarge { limit } => format!(
                "the request body is larger than the gateway's limit of {limit} bytes; send less (the operator sets the limit with --max-body-bytes)"
            ),
            GatewayError::NoInstance { service, waited } => format!(
                "service `{service}` has no ready instance; waited {} ms for one to register; retry later (it may be scaling up from zero)",
                waited.as_millis()
            ),
            GatewayError::Overloaded { service, instance } => format!(
                "instance `{instance}` of service `{service}` is at its concurrency limit and its queue is full; retry after the delay in Retry-After"
            ),
            GatewayError::Unreachable {
                service, attempts, ..
            } => format!(
                "no instance of service `{service}` took the request ({attempts} attempt(s): connection refused, or refused unprocessed); it was not processed; the service may be restarting; retry later"
            ),
            GatewayError::BadGateway {
                service, instance, ..
            } => format!(
                "instance `{instance}` of service `{service}` closed the connection before answering; the request may or may not have been processed"
            ),
            GatewayError::Timeout {
                service,
                instance,
                after,
            } => format!(
                "instance `{instance}` of service `{service}` sent no response within {} ms; the request may still be processed there",
                after.as_millis()
            ),
            GatewayError::RateLimited {
                route, per_second, ..
            } => format!(
                "route `{route}` allows {per_second} request(s) per second; retry after the delay in Retry-After"
            ),
        }
    }

    /// The response, with `x-shoal-instance` set to `instance` (the last
    /// instance the request went to) or `-` when none was involved.
    pub fn to_response(&self, instance: Option<&HeaderValue>) -> Response<ResponseBody> {
        let body = serde_json::json!({ "error": self.code(), "detail": self.detail() });
        let mut bytes = serde_json::to_vec(&body).expect("a JSON value always serializes");
        bytes.push(b'\n');
        let mut response = Response::new(ResponseBody::full(Bytes::from(bytes)));
        *response.status_mut() = self.status();
        // For the handler: a gRPC call gets the error in gRPC's terms
        // ([`grpc`](super::grpc)).
        response.extensions_mut().insert(self.clone());
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(
            X_SHOAL_INSTANCE,
            instance
                .cloned()
                .unwrap_or(HeaderValue::from_static(NO_INSTANCE)),
        );
        match self {
            GatewayError::RateLimited { retry_after, .. } => {
                let secs = crate::rate_limit::retry_after_secs(*retry_after);
                headers.insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            _ if self.status() == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    async fn json_of(response: Response<ResponseBody>) -> serde_json::Value {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn errors_are_json_with_the_right_status_and_headers() {
        let e = GatewayError::NoInstance {
            service: "app".into(),
            waited: Duration::from_secs(10),
        };
        let response = e.to_response(None);
        assert_eq!(response.status(), 503);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        assert_eq!(response.headers()[X_SHOAL_INSTANCE], "-");
        assert_eq!(response.headers()[CONTENT_TYPE], "application/json");
        let body = json_of(response).await;
        assert_eq!(body["error"], "no_instance");
        assert!(
            body["detail"].as_str().unwrap().contains("waited 10000 ms"),
            "{body}"
        );

        let e = GatewayError::Timeout {
            service: "app".into(),
            instance: "i1".into(),
            after: Duration::from_millis(250),
        };
        let response = e.to_response(Some(&HeaderValue::from_static("i1")));
        assert_eq!(response.status(), 504);
        assert_eq!(response.headers()[X_SHOAL_INSTANCE], "i1");
        assert!(response.headers().get(RETRY_AFTER).is_none());
        assert_eq!(json_of(response).await["error"], "timeout");
        assert_eq!(GatewayError::BodyTooLarge { limit: 1 }.status(), 413);

        let e = GatewayError::RateLimited {
            route: "api".into(),
            per_second: 2.5,
            retry_after: Duration::from_millis(1200),
        };
        let response = e.to_response(None);
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[RETRY_AFTER], "2", "rounded up");
        let body = json_of(response).await;
        assert_eq!(body["error"], "rate_limited");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("route `api` allows 2.5"),
            "{body}"
        );
        assert_eq!(GatewayError::BadRequest("x".into()).status(), 400);
    }
}
