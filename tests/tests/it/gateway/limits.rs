//! Limits on what a client may send: bodies over `--max-body-bytes` get a
//! 413, and a client that never finishes its headers is cut off.

use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use shoal_tests::Platform;

use super::{gateway_log, http, served_by, wait_routed};

/// One app server behind a gateway with `flags`, routed to.
async fn one_app_behind(flags: &[&str]) -> Platform {
    let platform = Platform::builder()
        .app_servers(1)
        .gateway(flags)
        .start()
        .await;
    let (app, gateway) = (&platform.app_servers[0], platform.gateway());
    wait_routed(&http(), gateway, "/", &[&app.id], Duration::from_secs(5)).await;
    platform
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_gets_a_json_413_and_never_reaches_the_instance() {
    let platform = one_app_behind(&["--max-body-bytes", "1024"]).await;
    let (app, gateway) = (&platform.app_servers[0], platform.gateway());
    let http = http();

    let resp = http
        .put(gateway.url("/kv/small"))
        .body(vec![b's'; 1000])
        .send()
        .await
        .unwrap();
    assert_eq!(
        (resp.status().as_u16(), served_by(&resp)),
        (201, app.id.clone())
    );

    let resp = http
        .put(gateway.url("/kv/big"))
        .body(vec![b'b'; 4096])
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 413, "{body}");
    let error: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    assert!(
        error["error"] == "body_too_large"
            && error["detail"].as_str().is_some_and(|s| !s.is_empty()),
        "want {{\"error\": \"body_too_large\", \"detail\"}}: {error}"
    );

    let stored = http.get(app.url("/kv/big")).send().await.unwrap();
    assert_eq!(
        stored.status(),
        404,
        "the oversize body reached the instance"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_chunked_body_gets_a_413_too() {
    let platform = one_app_behind(&["--max-body-bytes", "1024"]).await;
    let (app, gateway) = (&platform.app_servers[0], platform.gateway());
    let http = http();

    // No length up front: the body is found too big on the way, after the
    // request may already have gone to the instance. Sent at once as any
    // client would: 4 KiB closing the connection, and just over the limit
    // (2 KiB) on a keep-alive connection.
    for (key, chunks, connection) in [("four", 4, "close"), ("two", 2, "keep-alive")] {
        let mut stream = TcpStream::connect(&gateway.addr).await.unwrap();
        let mut request = format!(
            "PUT /kv/{key} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n"
        )
        .into_bytes();
        for _ in 0..chunks {
            request.extend_from_slice(b"400\r\n");
            request.extend_from_slice(&[b'c'; 0x400]);
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"0\r\n\r\n");
        // The gateway may answer and close before reading it all; that is fine.
        let written = stream.write_all(&request).await;
        let (answer, ended) = read_answer(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 413") && answer.contains("body_too_large"),
            "{chunks} KiB chunked, connection {connection}: answer {answer:?} (write: {written:?}, then {ended}); {}",
            gateway_log(gateway)
        );
        let stored = http
            .get(app.url(&format!("/kv/{key}")))
            .send()
            .await
            .unwrap();
        assert_eq!(
            stored.status(),
            404,
            "the oversize body {key} was stored by the instance"
        );
    }
}

/// One response read off `stream`: until it is complete by its
/// `content-length`, the connection closes, or 2 s of silence; and how the
/// reading ended.
pub(super) async fn read_answer(stream: &mut TcpStream) -> (String, String) {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let ended = loop {
        if is_complete(&answer) {
            break "complete".to_owned();
        }
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Err(_) => break "2 s of silence".to_owned(),
            Ok(Ok(0)) => break "EOF".to_owned(),
            Ok(Err(e)) => break format!("read error {e}"),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    };
    (String::from_utf8_lossy(&answer).into_owned(), ended)
}

/// Whether `bytes` hold a whole response with a `content-length`.
fn is_complete(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .is_some_and(|len| body.len() >= len)
}

/// Read until the peer closes the connection (EOF or reset); how long it took
/// from `since`, or None if it stayed open for `limit`.
pub(super) async fn closed_within(
    stream: &mut (impl AsyncRead + Unpin),
    since: Instant,
    limit: Duration,
) -> Option<Duration> {
    let mut buf = [0u8; 4096];
    let deadline = since + limit;
    loop {
        match tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            // An error response (e.g. 408) before closing is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_headers_is_cut_off_after_the_header_read_timeout() {
    let platform = one_app_behind(&["--header-read-timeout", "1s"]).await;
    let gateway = platform.gateway();

    // The same raw request, finished, is answered: the cut-off below is the timeout.
    let mut complete = TcpStream::connect(&gateway.addr).await.unwrap();
    complete
        .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    complete.read_to_end(&mut answer).await.unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // One stops in the middle of its headers; the other trickles a header a
    // byte every 200 ms, which never lets a per-read timer expire.
    let stalled = tokio::spawn({
        let addr = gateway.addr.clone();
        async move {
            let mut stream = TcpStream::connect(&addr).await.unwrap();
            let since = Instant::now();
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                .await
                .unwrap();
            closed_within(&mut stream, since, Duration::from_secs(5)).await
        }
    });
    let trickled = tokio::spawn({
        let addr = gateway.addr.clone();
        async move {
            let stream = TcpStream::connect(&addr).await.unwrap();
            let since = Instant::now();
            let (mut reader, mut writer) = stream.into_split();
            let writing = tokio::spawn(async move {
                if writer
                    .write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    return;
                }
                for _ in 0..25 {
                    // The slow client's pace: a byte every 200 ms.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if writer.write_all(b"z").await.is_err() {
                        return;
                    }
                }
            });
            let closed = closed_within(&mut reader, since, Duration::from_secs(5)).await;
            writing.abort();
            closed
        }
    });
    let stalled = stalled.await.unwrap();
    let trickled = trickled.await.unwrap();
    println!(
        "measured: header read timeout 1 s: stalled client cut off after {stalled:?}, trickling client after {trickled:?}"
    );
    for (what, closed) in [("stalled", stalled), ("trickling", trickled)] {
        let closed = closed.unwrap_or_else(|| {
            panic!(
                "the {what} client was still connected after 5 s; {}",
                gateway_log(gateway)
            )
        });
        assert!(
            closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
            "the {what} client was cut off after {closed:?} with a 1 s header read timeout"
        );
    }
}
