//! gRPC through the gateway: a real tonic client over h2c to the gateway,
//! which speaks h2c to real tonic servers (`grpc-test-server`, registered
//! by `registry run`) on a route with `"upstream_protocol": "h2c"`.
//! Unary, server-streaming and bidi calls with their trailers; the
//! gateway's own answers as gRPC statuses; under unary load, one instance
//! killed -9 and another drained: no call fails but those in flight on the
//! killed instance when it died (which may have been processed, so are
//! not sent again), none at the drain, and none at all on a route that
//! says its calls are idempotent.

use std::time::{Duration, Instant};

use shoal_tests::grpc::proto::{EchoRequest, StreamRequest};
use shoal_tests::grpc::{GrpcInstance, UnaryLoad, client};
use shoal_tests::wait::wait_until;
use shoal_tests::{Platform, wait_for};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::{INSTANCE, gateway_log, http, wait_known};

const SERVICE: &str = "grpc";
/// Clients calling back to back in the kill and drain test.
const CLIENTS: usize = 4;
const ROUTE: &str = r#"{"path_prefix":"/shoal.test.Echo/","service":"grpc","upstream_protocol":"h2c","policy":"round-robin"}"#;

/// A platform with the h2c route and `ids` gRPC instances, each listed
/// ready by the gateway.
async fn platform(ids: &[&str], gateway_flags: &[&str]) -> (Platform, Vec<GrpcInstance>) {
    platform_with(ROUTE, ids, gateway_flags).await
}

/// [`platform`] with `route` as the `grpc` route.
async fn platform_with(
    route: &str,
    ids: &[&str],
    gateway_flags: &[&str],
) -> (Platform, Vec<GrpcInstance>) {
    let platform = Platform::builder()
        .route("grpc", route)
        .gateway(gateway_flags)
        .start()
        .await;
    let mut instances = Vec::new();
    for id in ids {
        instances.push(GrpcInstance::start(&platform.etcd, SERVICE, id).await);
    }
    wait_known(
        &http(),
        platform.gateway(),
        SERVICE,
        ids,
        Duration::from_secs(10),
    )
    .await;
    (platform, instances)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_server_streaming_and_bidi_calls_pass_through_with_their_trailers() {
    let (platform, _instances) = platform(&["g-1", "g-2"], &[]).await;
    let gateway = platform.gateway();
    let mut echo = client(&gateway.addr).await;

    // Unary: the reply, and the gateway's header naming the instance.
    let reply = echo
        .unary(EchoRequest {
            message: "hello".into(),
        })
        .await
        .unwrap_or_else(|s| panic!("unary call failed: {s}; {}", gateway_log(gateway)));
    let served_by = reply
        .metadata()
        .get(INSTANCE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let reply = reply.into_inner();
    assert_eq!(reply.message, "hello");
    assert_eq!(served_by.as_deref(), Some(reply.instance.as_str()));

    // An instance's own error status arrives as it sent it.
    let status = echo
        .fail(EchoRequest {
            message: "not today".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status}");
    assert_eq!(status.message(), "not today");

    // Server streaming: 5 replies 100 ms apart arrive as they are sent, not
    // together at the end; then the status in the trailers (HTTP/2 trailers
    // after the data).
    let started = Instant::now();
    let mut stream = echo
        .server_stream(StreamRequest {
            message: "tick".into(),
            count: 5,
            interval_ms: 100,
            fail_with: "stopped after five".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut arrivals = Vec::new();
    let end = loop {
        match stream.message().await {
            Ok(Some(reply)) => {
                assert_eq!(reply.seq, arrivals.len() as u64);
                assert_eq!(reply.message, "tick");
                arrivals.push(started.elapsed());
            }
            Ok(None) => panic!("the stream ended without its trailers' status"),
            Err(status) => break status,
        }
    };
    assert_eq!(arrivals.len(), 5, "{arrivals:?}");
    assert_eq!(end.code(), Code::Aborted, "{end}");
    assert_eq!(end.message(), "stopped after five");
    let spread = arrivals[4] - arrivals[0];
    println!("server stream: replies arrived at {arrivals:?}");
    assert!(
        spread >= Duration::from_millis(300),
        "the replies arrived together ({arrivals:?}): the stream was buffered"
    );

    // A stream that ends well: OK in its trailers.
    let mut stream = echo
        .server_stream(StreamRequest {
            message: "ok".into(),
            count: 2,
            interval_ms: 0,
            fail_with: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut n = 0;
    while let Some(reply) = stream.message().await.expect("no error status") {
        assert_eq!(reply.seq, n);
        n += 1;
    }
    assert_eq!(n, 2);
    assert!(
        stream.trailers().await.expect("trailers").is_some(),
        "the OK status came in trailers"
    );

    // Bidi: each reply comes back before the next request is sent, so
    // neither body is held back by the gateway.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = echo
        .bidi(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..5u64 {
        tx.send(EchoRequest {
            message: format!("ping {i}"),
        })
        .await
        .unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(5), replies.message())
            .await
            .unwrap_or_else(|_| panic!("no reply to ping {i} within 5 s: a body is buffered"))
            .unwrap()
            .expect("a reply");
        assert_eq!(reply.message, format!("ping {i}"));
        assert_eq!(reply.seq, i);
    }
    drop(tx);
    assert!(
        replies.message().await.unwrap().is_none(),
        "the stream ends"
    );
    assert!(replies.trailers().await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_own_answers_are_grpc_statuses() {
    // No instance of the service: held for the hold timeout, then
    // UNAVAILABLE with what happened (not an HTTP 503 with a JSON body).
    let (platform, _) = platform(&[], &["--hold-timeout", "300ms"]).await;
    let gateway = platform.gateway();
    let mut echo = client(&gateway.addr).await;
    let status = echo
        .unary(EchoRequest {
            message: "anyone?".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status}");
    assert!(
        status
            .message()
            .starts_with("no_instance: service `grpc` has no ready instance; waited 300 ms"),
        "{status}"
    );
    assert_eq!(status.metadata().get(INSTANCE).unwrap(), "-");

    // Over the route's rate limit: RESOURCE_EXHAUSTED.
    super::put_route(
        &platform.etcd,
        "grpc",
        r#"{"path_prefix":"/shoal.test.Echo/","service":"grpc","upstream_protocol":"h2c","rate_limit":{"per_second":0.01,"burst":1,"by":{"from":"route"}}}"#,
    )
    .await;
    let limited = wait_for(Duration::from_secs(10), "the rate limit applies", || {
        let mut echo = echo.clone();
        async move {
            let status = echo
                .unary(EchoRequest {
                    message: "again".into(),
                })
                .await
                .unwrap_err();
            (status.code() == Code::ResourceExhausted).then_some(status)
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}; {}", gateway_log(gateway)));
    assert!(
        limited
            .message()
            .starts_with("rate_limited: route `grpc` allows 0.01"),
        "{limited}"
    );
}

/// What the kill and drain scenario saw: the load's report, and the calls
/// that had failed by the time the drain began.
struct KillAndDrain {
    report: shoal_tests::grpc::UnaryReport,
    failed_at_kill: Vec<String>,
}

/// 4 clients calling `Unary` back to back through `route` to 3 instances;
/// once each has served 100 calls, g-1 is killed -9; 500 calls later g-2
/// is drained; 500 calls later the load stops. Only calls in flight on
/// the killed instance when it died may fail by the drain, none after.
async fn kill_and_drain(route: &str) -> KillAndDrain {
    let ids = ["g-1", "g-2", "g-3"];
    let (platform, mut instances) = platform_with(route, &ids, &[]).await;
    let gateway = platform.gateway();
    let load = UnaryLoad::start(&gateway.addr, CLIENTS).await;
    let all_serve = wait_until(
        Duration::from_secs(10),
        "every instance serves calls",
        || {
            let served = load.served_by();
            ids.iter()
                .all(|id| served.get(*id).copied().unwrap_or(0) >= 100)
        },
    )
    .await;
    assert!(all_serve.is_ok(), "{:?}", load.served_by());

    // Killed -9: its registry entry stays until its lease runs out (3 s);
    // the gateway's connection to it is cut, and new ones are refused
    // (nothing sent: retried on another instance). The calls it had been
    // sent and not answered when it died may have been processed: the
    // gateway cannot know, so it does not send a POST again (unless the
    // route says its calls are idempotent) and answers UNAVAILABLE
    // (bad_gateway). At most one per client is in flight.
    let mut killed = instances.remove(0);
    killed.kill9().await;
    let at_kill = load.ok();
    let more = wait_until(
        Duration::from_secs(20),
        "500 more calls after the kill",
        || load.ok() >= at_kill + 500,
    )
    .await;
    assert!(
        more.is_ok(),
        "only {} calls since the kill",
        load.ok() - at_kill
    );
    let in_flight_at_kill = load.failures();
    let cut_off =
        "bad_gateway: instance `g-1` of service `grpc` closed the connection before answering";
    assert!(
        in_flight_at_kill.len() <= CLIENTS && in_flight_at_kill.iter().all(|f| f.contains(cut_off)),
        "only calls in flight on the killed instance may fail (at most one per client), not: {in_flight_at_kill:#?}; {}",
        gateway_log(gateway)
    );

    // Drained: SIGTERM to its `registry run`, which marks it draining,
    // waits its drain grace and hands SIGTERM on; the server says GOAWAY
    // and finishes its calls. Not one call may fail.
    let mut drained = instances.remove(0);
    drained.wrapper.signal(nix::sys::signal::Signal::SIGTERM);
    let status = drained.wrapper.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "the drained instance exited {status:?}");
    let at_drain = load.ok();
    let more = wait_until(
        Duration::from_secs(20),
        "500 more calls after the drain",
        || load.ok() >= at_drain + 500,
    )
    .await;
    assert!(
        more.is_ok(),
        "only {} calls since the drain",
        load.ok() - at_drain
    );

    let report = load.stop().await;
    assert_eq!(
        report.failures,
        in_flight_at_kill,
        "calls failed after the kill's in-flight ones; {}",
        gateway_log(gateway)
    );
    assert!(report.served_by.get("g-3").copied().unwrap_or(0) > 0);
    KillAndDrain {
        report,
        failed_at_kill: in_flight_at_kill,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_calls_fail_only_if_in_flight_on_an_instance_killed_and_none_at_a_drain() {
    let seen = kill_and_drain(ROUTE).await;
    let report = &seen.report;
    println!(
        "unary calls under a kill -9 and a drain ({CLIENTS} clients): {} answered, {} failed \
         (all in flight on the killed instance when it died); by instance: {:?}",
        report.ok,
        report.failures.len(),
        report.served_by
    );
    assert!(seen.failed_at_kill.len() <= CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_unary_call_fails_on_an_idempotent_route_while_an_instance_is_killed_and_another_drained()
 {
    // The route says its calls may run twice: those cut off by the kill
    // are sent again to another instance, with their body.
    let seen = kill_and_drain(
        r#"{"path_prefix":"/shoal.test.Echo/","service":"grpc","upstream_protocol":"h2c","policy":"round-robin","idempotent":true}"#,
    )
    .await;
    let report = &seen.report;
    println!(
        "unary calls on an idempotent route under a kill -9 and a drain ({CLIENTS} clients): {} answered, {} failed; by instance: {:?}",
        report.ok,
        report.failures.len(),
        report.served_by
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} calls failed, first: {:?}",
        report.failures.len(),
        report.ok + report.failures.len() as u64,
        report.failures.first()
    );
}
