//! Peers for the key-value store's unit tests, on real sockets: a member
//! at an address, and a peer played by hand (a link accepted and frames
//! answered as the test says).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use axum::http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::link;
use super::membership::Member;

/// The member `id` listening at `addr`.
pub fn peer_at(id: &str, addr: SocketAddr) -> Member {
    Member {
        id: id.into(),
        addr: addr.to_string().into(),
        weight: 1,
        started: SystemTime::UNIX_EPOCH,
    }
}

/// The member `id` at an address that refuses connections at once.
pub fn refusing_member(id: &str) -> Member {
    peer_at(id, SocketAddr::from(([127, 0, 0, 1], 1)))
}

/// A peer `id` played by hand on a real socket: `handle` gets each
/// connection; returns the member and the count of connections taken.
pub async fn fake_peer<F, Fut>(id: &str, handle: F) -> (Member, Arc<AtomicUsize>)
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let member = peer_at(id, listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(handle(stream));
        }
    });
    (member, accepted)
}

/// Read a request's head and switch to a link, as this version does;
/// any other request (a read of a key, say) is answered 404 and false
/// returned.
pub async fn accept_link(stream: &mut TcpStream) -> bool {
    let head = read_head(stream).await;
    if !head.starts_with(&format!("GET {} ", link::PATH)) {
        let not_found = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        stream.write_all(not_found.as_bytes()).await.unwrap();
        return false;
    }
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: {}\r\n\r\n",
        link::PROTOCOL
    );
    stream.write_all(answer.as_bytes()).await.unwrap();
    true
}

/// A request's head (request line and headers), as text; its body, if
/// any, is left unread.
pub async fn read_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(stream.read_u8().await.unwrap());
    }
    String::from_utf8(head).unwrap()
}

/// The next frame's batch body on a link.
pub async fn read_frame(stream: &mut TcpStream) -> Vec<u8> {
    let len = stream.read_u32_le().await.unwrap();
    let mut body = vec![0; len as usize];
    stream.read_exact(&mut body).await.unwrap();
    body
}

/// Answer one frame with `status`.
pub async fn answer_frame(stream: &mut TcpStream, status: StatusCode) {
    let mut answer = Vec::new();
    link::encode_answer(status, &mut answer);
    stream.write_all(&answer).await.unwrap();
}
