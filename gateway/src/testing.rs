//! Test support shared by the crate's unit tests.

use std::time::Duration;

/// Polls `check` every 10 ms until it answers `Ok`; after 5 s, fails naming
/// `what` and the last `Err` (what the check saw).
pub(crate) async fn poll<T>(what: &str, mut check: impl AsyncFnMut() -> Result<T, String>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match check().await {
            Ok(done) => return done,
            Err(seen) => assert!(tokio::time::Instant::now() < deadline, "{what}: {seen}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serve `app` on a fresh loopback port, in a task of its own; its address.
pub(crate) async fn serve_router(app: axum::Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A ready instance `i-1` of `app` at `addr`, with fresh live state.
pub(crate) fn ready_backend(addr: std::net::SocketAddr) -> crate::backend::Backend {
    let mut instance = registry::Instance::new("app", addr.to_string());
    instance.id = "i-1".into();
    instance.state = registry::InstanceState::Ready;
    crate::backend::Backend::new(
        instance,
        std::sync::Arc::new(crate::backend::BackendState::new(std::time::Instant::now())),
    )
    .unwrap()
}

/// Echo every byte of the upgraded connection `on_upgrade` gives, in a task
/// of its own, until the peer closes it.
pub(crate) fn spawn_upgraded_echo(on_upgrade: hyper::upgrade::OnUpgrade) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    tokio::spawn(async move {
        let upgraded = on_upgrade.await.expect("the connection is upgraded");
        let mut io = hyper_util::rt::TokioIo::new(upgraded);
        let mut buf = [0u8; 1024];
        loop {
            let n = io.read(&mut buf).await.unwrap_or(0);
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    });
}
