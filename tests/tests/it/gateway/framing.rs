//! Strict HTTP/1.1 framing at the edge, on raw sockets: what a client may
//! not send (no or two `Host` headers, `Content-Length` with
//! `Transfer-Encoding`, bad `Content-Length`, obsolete line folding, invalid
//! header bytes, an absolute-form target for another host) and what the
//! gateway rewrites (hop-by-hop headers, `X-Forwarded-*`, `Forwarded`,
//! `--trusted-proxies`).
//!
//! The instance is a [`Recorder`]: a raw TCP listener registered in the
//! registry as an instance of `app`, which keeps the bytes of every request
//! it is sent and answers `200 ok`. A refused request is followed by a good
//! one on a fresh connection; once the recorder has that one, the refused one
//! would have arrived before it had it been forwarded.
//!
//! Which layer refuses what is in the gateway's `proxy/resolve.rs` module
//! doc; a 400 the gateway makes has a JSON body (`"error":"bad_request"`),
//! one hyper makes while parsing has none and closes the connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::{Instance, InstanceState, Keys};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use shoal_tests::{Gateway, Platform, wait_until};

use super::limits::read_answer;
use super::{gateway_log, http, put_route, wait_routed};

/// An instance that records the requests it gets (see the module doc).
pub(super) struct Recorder {
    pub(super) id: String,
    addr: String,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Recorder {
    pub(super) async fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        tokio::spawn(accept(listener, seen.clone()));
        Recorder {
            id: String::new(),
            addr,
            seen,
        }
    }

    /// Register as a ready instance of `service`.
    pub(super) async fn register(&mut self, platform: &Platform, service: &str) {
        let mut instance = Instance::new(service, self.addr.clone());
        instance.state = InstanceState::Ready;
        self.id = instance.id.clone();
        let mut client = platform.client.clone();
        client
            .put(
                Keys::default().instance(service, &instance.id),
                instance.to_json(),
                None,
            )
            .await
            .expect("register the recorder");
    }

    /// The request whose request line has `path`, waiting up to 5 s.
    pub(super) async fn request_for(&self, path: &str, gateway: &Gateway) -> String {
        let found = wait_until(Duration::from_secs(5), path, || self.find(path).is_some()).await;
        if let Err(e) = found {
            panic!(
                "{e}: the instance never got {path}; it got {:#?}; {}",
                self.seen.lock().unwrap(),
                gateway_log(gateway)
            );
        }
        self.find(path).expect("just found")
    }

    fn find(&self, path: &str) -> Option<String> {
        let line = format!(" {path} HTTP/");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .find(|r| r.lines().next().is_some_and(|l| l.contains(&line)))
            .cloned()
    }

    /// Check that the request for `refused` never reached the instance: send
    /// a good request after it and wait for that one.
    async fn never_got(&self, refused: &str, gateway: &Gateway) {
        let barrier = format!("{}-after", refused);
        let answer = exchange(
            gateway,
            format!("GET {barrier} HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{barrier}: {answer}");
        self.request_for(&barrier, gateway).await;
        assert!(
            self.find(refused).is_none(),
            "{refused} was refused yet reached the instance: {:?}",
            self.find(refused)
        );
    }
}

async fn accept(listener: TcpListener, seen: Arc<Mutex<Vec<String>>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        tokio::spawn(record(stream, seen.clone()));
    }
}

/// Serve one connection: each request read whole (by its `content-length`,
/// or to the last chunk), recorded, and answered `200 ok`.
async fn record(mut stream: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut buf = Vec::new();
    loop {
        let Some(head_end) = read_until(&mut stream, &mut buf, |b| {
            find(b, b"\r\n\r\n").map(|i| i + 4)
        })
        .await
        else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let length = header_values(&head, "content-length")
            .first()
            .and_then(|v| v.parse::<usize>().ok());
        let chunked = header_values(&head, "transfer-encoding")
            .iter()
            .any(|v| v.eq_ignore_ascii_case("chunked"));
        let end = match (length, chunked) {
            (_, true) => {
                read_until(&mut stream, &mut buf, |b| {
                    find(&b[head_end - 2..], b"\r\n0\r\n\r\n").map(|i| head_end - 2 + i + 7)
                })
                .await
            }
            (Some(len), false) => {
                read_until(&mut stream, &mut buf, |b| {
                    (b.len() >= head_end + len).then_some(head_end + len)
                })
                .await
            }
            (None, false) => Some(head_end),
        };
        let Some(end) = end else {
            return;
        };
        seen.lock()
            .unwrap()
            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
        buf.drain(..end);
        if stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Read into `buf` until `done` finds where what is wanted ends; None if
/// the connection ends first.
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    done: impl Fn(&[u8]) -> Option<usize>,
) -> Option<usize> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = done(buf) {
            return Some(end);
        }
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The values of header `name` in a recorded request's head, in order.
pub(super) fn header_values(request: &str, name: &str) -> Vec<String> {
    let head = request.split("\r\n\r\n").next().unwrap_or_default();
    head.split("\r\n")
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

/// Write `request` on a new connection and read one answer.
async fn exchange(gateway: &Gateway, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(&gateway.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    read_answer(&mut stream).await.0
}

/// [`exchange`], and whether the gateway closed the connection after the
/// answer (EOF or reset within 2 s).
async fn exchange_and_closed(gateway: &Gateway, request: &[u8]) -> (String, bool) {
    let mut stream = TcpStream::connect(&gateway.addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let (answer, ended) = read_answer(&mut stream).await;
    let closed = if ended == "EOF" {
        true
    } else {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        )
    };
    (answer, closed)
}

/// A gateway with `flags` and a recorder as the only instance of `app`,
/// routed to.
pub(super) async fn behind_recorder(flags: &[&str]) -> (Platform, Recorder) {
    let platform = Platform::builder().gateway(flags).start().await;
    let mut recorder = Recorder::start().await;
    recorder.register(&platform, "app").await;
    wait_routed(
        &http(),
        platform.gateway(),
        "/",
        &[&recorder.id],
        Duration::from_secs(10),
    )
    .await;
    (platform, recorder)
}

/// A 400 made by the gateway (JSON body), not by hyper's parser.
fn is_gateway_400(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 400") && answer.contains(r#""error":"bad_request""#)
}

/// A 400 made by hyper's parser: no body.
fn is_parser_400(answer: &str) -> bool {
    answer.starts_with("HTTP/1.1 400") && !answer.contains("bad_request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_without_host_gets_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let answer = exchange(gateway, b"GET /no-host HTTP/1.1\r\nAccept: */*\r\n\r\n").await;
    assert!(is_gateway_400(&answer), "{answer}");
    assert!(
        answer.contains("Host"),
        "the detail names the header: {answer}"
    );
    recorder.never_got("/no-host", gateway).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_get_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, hosts) in [
        (
            "/two-hosts",
            "Host: shop.example\r\nHost: admin.example\r\n",
        ),
        (
            "/two-same-hosts",
            "Host: shop.example\r\nHost: shop.example\r\n",
        ),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\n{hosts}\r\n");
        let answer = exchange(gateway, request.as_bytes()).await;
        assert!(is_gateway_400(&answer), "{path}: {answer}");
        recorder.never_got(path, gateway).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_a_host_name_gets_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, host) in [
        ("/empty-host", ""),
        ("/host-path", "shop.example/admin"),
        ("/host-userinfo", "user@shop.example"),
        ("/host-port", "shop.example:http"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        let answer = exchange(gateway, request.as_bytes()).await;
        assert!(is_gateway_400(&answer), "Host `{host}`: {answer}");
        recorder.never_got(path, gateway).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http10_request_without_host_goes_to_the_default_route() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let answer = exchange(gateway, b"GET /old-client HTTP/1.0\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    let seen = recorder.request_for("/old-client", gateway).await;
    // HTTP/1.1 to the instance, so a Host: the instance's own address.
    assert_eq!(
        header_values(&seen, "host"),
        [recorder.addr.as_str()],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "x-forwarded-host"),
        Vec::<String>::new(),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_form_target_is_routed_by_its_authority_and_one_for_another_host_gets_400() {
    let (platform, app) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let mut api = Recorder::start().await;
    api.register(&platform, "api").await;
    put_route(
        &platform.etcd,
        "api",
        r#"{"host":"api.example","path_prefix":"/","service":"api"}"#,
    )
    .await;
    let http = http();
    let routed =
        shoal_tests::wait_until_async(Duration::from_secs(10), "api.example routed", || async {
            // Refused or held until the route and the instance are in; either way, try again.
            let sent = http
                .get(gateway.url("/api-routed"))
                .header("host", "api.example")
                .send()
                .await;
            sent.is_ok() && api.find("/api-routed").is_some()
        })
        .await;
    if let Err(e) = routed {
        panic!("{e}; {}", gateway_log(gateway));
    }

    // Host and target agree (up to case and the default port): routed by
    // the target, forwarded in origin form with the target's authority.
    for (path, request) in [
        (
            "/abs-agree",
            "GET http://api.example/abs-agree HTTP/1.1\r\nHost: API.example:80\r\n\r\n",
        ),
        (
            "/abs-old",
            "GET http://api.example/abs-old HTTP/1.0\r\n\r\n",
        ),
    ] {
        let answer = exchange(gateway, request.as_bytes()).await;
        // Answered in the client's version.
        assert!(
            answer.starts_with("HTTP/1.") && answer[8..].starts_with(" 200 "),
            "{path}: {answer}"
        );
        let seen = api.request_for(path, gateway).await;
        assert!(
            seen.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "origin form: {seen}"
        );
        assert_eq!(header_values(&seen, "host"), ["api.example"], "{seen}");
        assert!(app.find(path).is_none(), "{path} went to the default route");
    }

    // They disagree: which one would the instance believe? Neither.
    let refused = [
        (
            "/abs-other",
            "GET http://api.example/abs-other HTTP/1.1\r\nHost: shop.example\r\n\r\n",
        ),
        (
            "/abs-port",
            "GET http://api.example:8080/abs-port HTTP/1.1\r\nHost: api.example\r\n\r\n",
        ),
        (
            "/abs-no-host",
            "GET http://api.example/abs-no-host HTTP/1.1\r\n\r\n",
        ),
        (
            "/abs-ftp",
            "GET ftp://api.example/abs-ftp HTTP/1.1\r\nHost: api.example\r\n\r\n",
        ),
        (
            "/abs-user",
            "GET http://user@api.example/abs-user HTTP/1.1\r\nHost: api.example\r\n\r\n",
        ),
    ];
    for (path, request) in refused {
        let answer = exchange(gateway, request.as_bytes()).await;
        assert!(is_gateway_400(&answer), "{path}: {answer}");
    }
    app.never_got("/abs-other", gateway).await;
    for (path, _) in refused {
        assert!(
            api.find(path).is_none() && app.find(path).is_none(),
            "{path} was forwarded"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_framed_by_the_chunks_alone_and_the_connection_closed()
 {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, framing) in [
        (
            "/cl-te",
            "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
        ),
        (
            "/te-cl",
            "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n",
        ),
    ] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: shop.example\r\n{framing}\r\n5\r\nhello\r\n0\r\n\r\n"
        );
        let (answer, closed) = exchange_and_closed(gateway, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{path}: {answer}");
        assert!(
            closed,
            "{path}: the connection stayed open after an ambiguous request"
        );
        let seen = recorder.request_for(path, gateway).await;
        let lengths = header_values(&seen, "content-length");
        let encodings = header_values(&seen, "transfer-encoding");
        assert!(
            lengths.is_empty()
                && encodings == ["chunked"]
                && seen.ends_with("5\r\nhello\r\n0\r\n\r\n"),
            "{path}: forwarded with one framing, the chunks': {seen:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_encoding_other_than_chunked_gets_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, version, coding) in [
        ("/te-gzip", "1.1", "gzip"),
        ("/te-chunked-gzip", "1.1", "chunked, gzip"),
        ("/te-http10", "1.0", "chunked"),
    ] {
        let request = format!(
            "POST {path} HTTP/{version}\r\nHost: shop.example\r\nTransfer-Encoding: {coding}\r\n\r\n0\r\n\r\n"
        );
        let (answer, closed) = exchange_and_closed(gateway, request.as_bytes()).await;
        assert!(
            is_parser_400(&answer) && closed,
            "{path}: {answer} (closed: {closed})"
        );
        recorder.never_got(path, gateway).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_differing_or_invalid_content_length_gets_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, lengths) in [
        ("/cl-differ", "Content-Length: 5\r\nContent-Length: 6\r\n"),
        ("/cl-list", "Content-Length: 5, 6\r\n"),
        ("/cl-same-list", "Content-Length: 5, 5\r\n"),
        ("/cl-word", "Content-Length: five\r\n"),
        ("/cl-sign", "Content-Length: +5\r\n"),
        ("/cl-negative", "Content-Length: -5\r\n"),
        ("/cl-huge", "Content-Length: 99999999999999999999999\r\n"),
    ] {
        let request = format!("POST {path} HTTP/1.1\r\nHost: shop.example\r\n{lengths}\r\nhello!");
        let (answer, closed) = exchange_and_closed(gateway, request.as_bytes()).await;
        assert!(
            is_parser_400(&answer) && closed,
            "{path}: {answer} (closed: {closed})"
        );
        recorder.never_got(path, gateway).await;
    }

    // The same length twice is one length: forwarded once.
    let answer = exchange(
        gateway,
        b"POST /cl-same HTTP/1.1\r\nHost: shop.example\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = recorder.request_for("/cl-same", gateway).await;
    assert_eq!(header_values(&seen, "content-length"), ["5"], "{seen}");
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn obsolete_line_folding_gets_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    for (path, headers) in [
        ("/fold-space", "Host: shop.example\r\nX-Folded: a\r\n b\r\n"),
        ("/fold-tab", "Host: shop.example\r\nX-Folded: a\r\n\tb\r\n"),
        ("/fold-host", "Host: shop.example\r\n evil.example\r\n"),
    ] {
        let request = format!("GET {path} HTTP/1.1\r\n{headers}\r\n");
        let (answer, closed) = exchange_and_closed(gateway, request.as_bytes()).await;
        assert!(
            is_parser_400(&answer) && closed,
            "{path}: {answer} (closed: {closed})"
        );
        recorder.never_got(path, gateway).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_header_bytes_get_400() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let cases: [(&str, &[u8]); 7] = [
        ("/nul-in-value", b"X-Bad: a\x00b\r\n"),
        ("/cr-in-value", b"X-Bad: a\rb\r\n"),
        ("/del-in-value", b"X-Bad: a\x7fb\r\n"),
        ("/space-in-name", b"X Bad: v\r\n"),
        ("/space-before-colon", b"X-Bad : v\r\n"),
        ("/paren-in-name", b"X(Bad): v\r\n"),
        ("/no-colon", b"X-Bad\r\n"),
    ];
    for (path, line) in cases {
        let mut request = format!("GET {path} HTTP/1.1\r\nHost: shop.example\r\n").into_bytes();
        request.extend_from_slice(line);
        request.extend_from_slice(b"\r\n");
        let (answer, closed) = exchange_and_closed(gateway, &request).await;
        assert!(
            is_parser_400(&answer) && closed,
            "{path}: {answer} (closed: {closed})"
        );
        recorder.never_got(path, gateway).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_never_reach_the_instance() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let request = b"GET /hops HTTP/1.1\r\nHost: shop.example\r\n\
        Connection: keep-alive, X-Secret-Hop\r\nConnection: X-Other-Hop, Content-Length\r\n\
        X-Secret-Hop: 1\r\nX-Other-Hop: 2\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\n\
        TE: trailers\r\nTrailer: X-Sum\r\nProxy-Authorization: Basic eA==\r\nProxy: http://evil.example\r\n\
        X-Kept: yes\r\n\r\n";
    let answer = exchange(gateway, request).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = recorder.request_for("/hops", gateway).await;
    for hop in [
        "connection",
        "x-secret-hop",
        "x-other-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "proxy-authorization",
        "proxy",
    ] {
        assert_eq!(
            header_values(&seen, hop),
            Vec::<String>::new(),
            "{hop} reached the instance: {seen}"
        );
    }
    assert_eq!(header_values(&seen, "x-kept"), ["yes"], "{seen}");
}

/// A request claiming to come through another proxy, from 6.6.6.6 over TLS.
const SPOOFED: &[u8] = b"GET /spoofed HTTP/1.1\r\nHost: shop.example\r\n\
    X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example\r\n\
    Forwarded: for=6.6.6.6;proto=https\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_s_forwarded_headers_are_replaced() {
    let (platform, recorder) = behind_recorder(&[]).await;
    let gateway = platform.gateway();
    let answer = exchange(gateway, SPOOFED).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = recorder.request_for("/spoofed", gateway).await;
    assert_eq!(
        header_values(&seen, "x-forwarded-for"),
        ["127.0.0.1"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "forwarded"),
        ["for=127.0.0.1;proto=http"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "x-forwarded-proto"),
        ["http"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "x-forwarded-host"),
        ["shop.example"],
        "{seen}"
    );
    assert!(
        !seen.contains("6.6.6.6") && !seen.contains("evil"),
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_s_forwarded_headers_are_kept_and_appended_to() {
    // The test connects from 127.0.0.1: the peer is a trusted proxy.
    let (platform, recorder) =
        behind_recorder(&["--trusted-proxies", "192.0.2.0/24,127.0.0.0/8"]).await;
    let gateway = platform.gateway();
    let answer = exchange(gateway, SPOOFED).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = recorder.request_for("/spoofed", gateway).await;
    assert_eq!(
        header_values(&seen, "x-forwarded-for"),
        ["6.6.6.6, 127.0.0.1"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "forwarded"),
        ["for=6.6.6.6;proto=https, for=127.0.0.1;proto=http"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "x-forwarded-proto"),
        ["https"],
        "{seen}"
    );
    assert_eq!(
        header_values(&seen, "x-forwarded-host"),
        ["evil.example"],
        "{seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_trusted_proxies_entry_stops_the_gateway_naming_it() {
    let out = shoal_tests::run_to_exit(
        "gateway",
        &["--trusted-proxies", "10.0.0.0/8,10.0.0.0/33"],
        Duration::from_secs(10),
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("--trusted-proxies") && stderr.contains("`10.0.0.0/33` is not a network"),
        "{stderr}"
    );
}
