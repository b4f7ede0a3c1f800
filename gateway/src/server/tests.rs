//! The server on real sockets with a handler of its own (no proxy behind
//! it): quiet HTTP/1 connections park and are served again, keep what a
//! pipelining client sent, and still close at the idle timeout and at
//! shutdown.

use std::time::{Duration, Instant};

use http::StatusCode;
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// Answers `ok`, or `101` to `Upgrade: echo` and then echoes every byte.
#[derive(Clone)]
struct Echo;

type EchoBody = http_body_util::combinators::MapErr<Full<Bytes>, fn(Infallible) -> BoxError>;

fn body(text: &'static str) -> EchoBody {
    Full::new(Bytes::from_static(text.as_bytes())).map_err(|never| match never {})
}

impl Handler for Echo {
    type Body = EchoBody;

    async fn call(self, mut request: Request<Incoming>, _: Arc<ConnInfo>) -> Response<EchoBody> {
        if request.headers().get(http::header::UPGRADE).is_none() {
            return Response::new(body("ok"));
        }
        crate::testing::spawn_upgraded_echo(hyper::upgrade::on(&mut request));
        Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "echo")
            .body(body(""))
            .unwrap()
    }
}

struct Running {
    addr: SocketAddr,
    clients: Arc<ClientConnections>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Drained>,
}

async fn serve(settings: ServerSettings) -> Running {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let clients = Arc::new(ClientConnections::default());
    let stop = CancellationToken::new();
    let server = Server::new(listener, Echo, settings).with_client_counts(clients.clone());
    let task = tokio::spawn(server.run(stop.clone(), Duration::from_secs(5)));
    Running {
        addr,
        clients,
        stop,
        task,
    }
}

fn settings() -> ServerSettings {
    ServerSettings {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
        max_header_bytes: 64 * 1024,
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";

/// One response off `stream` (head and a `content-length` body); panics on
/// a close or 5 s of silence.
async fn response(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let text = String::from_utf8_lossy(&read).into_owned();
        if let Some((head, rest)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .filter_map(|l| l.split_once(':'))
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .map_or(0, |(_, v)| v.trim().parse::<usize>().unwrap());
            if rest.len() >= length {
                return text;
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("a response within 5 s")
            .unwrap();
        assert!(n > 0, "closed after {text:?}");
        read.extend_from_slice(&buf[..n]);
    }
}

/// Wait up to 5 s for `done`.
async fn until(what: &str, done: impl Fn() -> bool) {
    crate::testing::poll(what, async || {
        if done() {
            Ok(())
        } else {
            Err("not yet".to_owned())
        }
    })
    .await;
}

#[tokio::test]
async fn a_quiet_keep_alive_connection_parks_and_is_served_again_on_the_same_socket() {
    let server = serve(settings()).await;
    let clients = &server.clients;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    for round in 1..=3 {
        stream.write_all(GET).await.unwrap();
        let answer = response(&mut stream).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "round {round}: {answer}"
        );
        assert!(answer.ends_with("ok"), "round {round}: {answer}");
        until("the connection parks", || clients.parked() == 1).await;
        assert_eq!(clients.releases(), round, "one release per quiet spell");
        assert_eq!(clients.open(), 1);
    }
    // An upgrade on a connection that has parked: hyper's new connection
    // hands the socket to the tunnel.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n")
        .await
        .unwrap();
    let answer = response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    stream.write_all(b"through the tunnel").await.unwrap();
    let mut echoed = [0u8; 18];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echoed))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echoed, b"through the tunnel");
}

#[tokio::test]
async fn quiet_plain_connections_wait_in_the_lot_with_no_task_each() {
    let server = serve(settings()).await;
    let tasks = tokio::runtime::Handle::current().metrics();
    let before = tasks.num_alive_tasks();
    let mut streams = Vec::new();
    for _ in 0..50 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(GET).await.unwrap();
        response(&mut stream).await;
        streams.push(stream);
    }
    for round in 1..=2 {
        until("all park", || server.clients.parked() == 50).await;
        // Each connection's task ends once its socket is in the lot.
        until("no task per parked connection", || {
            tasks.num_alive_tasks() == before
        })
        .await;
        assert_eq!(server.clients.open(), 50);
        for stream in &mut streams {
            stream.write_all(GET).await.unwrap();
            let answer = response(stream).await;
            assert!(
                answer.starts_with("HTTP/1.1 200"),
                "round {round}: {answer}"
            );
        }
    }
    until("all park again", || server.clients.parked() == 50).await;
    // Clients closing parked connections: the lot closes them.
    drop(streams);
    until("the closed connections are gone", || {
        server.clients.open() == 0 && server.clients.parked() == 0
    })
    .await;
    assert_eq!(tasks.num_alive_tasks(), before);
}

#[tokio::test]
async fn a_pipelined_request_s_start_read_before_a_release_is_kept() {
    let server = serve(settings()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    // A whole request and the start of the next, in one write.
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let answer = response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // hyper holds the second request's start while the connection is
    // quiet; the release hands it back instead of losing it.
    until("a release", || server.clients.releases() == 1).await;
    assert_eq!(
        server.clients.parked(),
        0,
        "bytes of a request are waiting: not parked"
    );
    stream.write_all(b"st: x\r\n\r\n").await.unwrap();
    let answer = response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_timeout() {
    let server = serve(ServerSettings {
        idle_timeout: Duration::from_millis(1500),
        ..settings()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(GET).await.unwrap();
    response(&mut stream).await;
    let answered = Instant::now();
    until("the connection parks", || server.clients.parked() == 1).await;
    let mut rest = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut rest))
        .await
        .expect("closed by the idle timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without a byte");
    let took = answered.elapsed();
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(3),
        "closed {took:?} after its last response, with a 1.5 s idle timeout"
    );
    until("the connection is no longer counted", || {
        server.clients.open() == 0
    })
    .await;
}

#[tokio::test]
async fn at_shutdown_a_parked_connection_gets_one_more_request_answered_with_close() {
    let server = serve(settings()).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    for s in [&mut stream, &mut silent] {
        s.write_all(GET).await.unwrap();
        response(s).await;
    }
    until("both connections park", || server.clients.parked() == 2).await;
    server.stop.cancel();
    stream.write_all(GET).await.unwrap();
    let answer = response(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    // The one that sends nothing is closed after LAST_CALL; the drain ends.
    let drained = tokio::time::timeout(Duration::from_secs(5), server.task)
        .await
        .expect("drained within 5 s")
        .unwrap();
    assert_eq!(
        drained,
        Drained {
            complete: true,
            abandoned: 0
        }
    );
    for s in [&mut stream, &mut silent] {
        let mut rest = [0u8; 16];
        assert_eq!(s.read(&mut rest).await.unwrap_or(0), 0, "closed");
    }
}

/// A resolver with no certificate: enough to build a TLS connection's
/// future, which is never polled here.
#[derive(Debug)]
struct NoCert;

impl rustls::server::ResolvesServerCert for NoCert {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// Every connection's task holds its future's full size for its whole life,
/// idle or not, and async steps that pass a value along each keep a slot
/// for it: a TLS session inline cost 5 KB per connection this way, and
/// `before_headers` as an `async fn` held its step twice (400 bytes). Bounds
/// with room to spare (in a debug build a plain task measured 1,056 bytes and
/// a TLS one 1,088), to catch those, not compiler drift.
#[tokio::test]
async fn a_connection_s_task_stays_small_over_tcp_and_over_tls() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let _client = TcpStream::connect(addr).await.unwrap();
    let (stream, remote) = listener.accept().await.unwrap();
    let shared = Arc::new(Listener {
        handler: Echo,
        builders: Builders::new(&settings()),
        settings: settings(),
        shutdown: CancellationToken::new(),
        clients: Arc::default(),
        lot: None,
        connections: TaskTracker::new(),
        runtime: tokio::runtime::Handle::current(),
    });
    let context = || Context {
        listener: shared.clone(),
        open: OpenConnection::new(Arc::default()),
    };
    let plain = std::mem::size_of_val(&serve_connection(stream, remote, context()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(NoCert));
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let _client = TcpStream::connect(addr).await.unwrap();
    let (stream, remote) = listener.accept().await.unwrap();
    let tls = std::mem::size_of_val(&serve_tls(acceptor, stream, remote, context()));
    println!("measured: connection task futures: plain {plain} bytes, TLS {tls} bytes");
    assert!(
        plain <= 1280,
        "a plain connection's future is {plain} bytes"
    );
    assert!(tls <= 1280, "a TLS connection's future is {tls} bytes");
}
