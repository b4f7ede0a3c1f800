//! Step 5 of a request: the answer to the client, with the request (and
//! its last attempt) recorded. Either the instance's response, relayed with
//! `x-shoal-instance`, `x-request-id` (with `--trace-headers`) and, when the policy asks, the sticky cookie (an
//! upgrade's `101` also joins both sides into a tunnel), or the gateway's
//! own JSON error.

use http::header::SET_COOKIE;
use http::{HeaderValue, Response, StatusCode};
use hyper::upgrade::OnUpgrade;

use super::attempt::Answer;
use super::error::GatewayError;
use super::record::{AttemptRecord, RequestRecord};
use super::response::ResponseBody;
use super::{headers, trace, upgrade};

/// The instance's response on its way to the client.
#[inline(always)]
pub(super) fn respond(
    answer: Answer,
    service: &str,
    mut record: RequestRecord,
    client_upgrade: Option<OnUpgrade>,
) -> Response<ResponseBody> {
    let Answer {
        mut response,
        instance,
        set_cookie,
        mut attempt,
    } = answer;
    let status = response.status();
    let switching = status == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        let Some(client_upgrade) = client_upgrade else {
            attempt.set_status(Some(status.as_u16()));
            let id = attempt.backend().id().to_owned();
            let e = GatewayError::BadGateway {
                service: service.to_owned(),
                instance: id,
                cause: "101 Switching Protocols to a request that asked for no upgrade".into(),
            };
            return fail(e, Some(&instance), record, Some(attempt));
        };
        let instance_upgrade = hyper::upgrade::on(&mut response);
        upgrade::spawn_tunnel(
            client_upgrade,
            instance_upgrade,
            attempt.backend().id(),
            service,
        );
    }
    let (mut parts, body) = response.into_parts();
    headers::strip_hop_by_hop(&mut parts.headers, switching);
    if set_cookie {
        parts.headers.append(
            SET_COOKIE,
            headers::sticky_cookie(service, attempt.backend().id()),
        );
    }
    record.answered_by(&instance, Some(attempt.started()));
    parts.headers.insert(headers::X_SHOAL_INSTANCE, instance);
    if let Some(id) = record.take_request_id() {
        parts.headers.insert(trace::X_REQUEST_ID, id);
    }
    record.set_status(Some(status.as_u16()));
    attempt.set_status(Some(status.as_u16()));
    Response::from_parts(parts, ResponseBody::from_instance(body, record, attempt))
}

/// A response the gateway made, with the request (and attempt) recorded.
pub(super) fn fail(
    error: GatewayError,
    instance: Option<&HeaderValue>,
    mut record: RequestRecord,
    attempt: Option<AttemptRecord>,
) -> Response<ResponseBody> {
    record.set_status(Some(error.status().as_u16()));
    if let Some(instance) = instance {
        record.answered_by(instance, None);
    }
    let response = error.to_response(instance);
    let (mut parts, body) = response.into_parts();
    if let Some(id) = record.take_request_id() {
        parts.headers.insert(trace::X_REQUEST_ID, id);
    }
    Response::from_parts(parts, body.with_records(Some(record), attempt))
}

/// A redirect the gateway made (a route's `https_redirect`), recorded like
/// any answer; no instance was involved.
pub(super) fn redirect(
    status: StatusCode,
    location: HeaderValue,
    mut record: RequestRecord,
) -> Response<ResponseBody> {
    record.set_status(Some(status.as_u16()));
    let mut response = Response::new(ResponseBody::empty());
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(http::header::LOCATION, location);
    headers.insert(
        headers::X_SHOAL_INSTANCE,
        HeaderValue::from_static(headers::NO_INSTANCE),
    );
    if let Some(id) = record.take_request_id() {
        headers.insert(trace::X_REQUEST_ID, id);
    }
    let (parts, body) = response.into_parts();
    Response::from_parts(parts, body.with_records(Some(record), None))
}
