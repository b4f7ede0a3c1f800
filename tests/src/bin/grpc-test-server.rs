//! `grpc-test-server --port N --instance NAME`: the test `Echo` gRPC service
//! (tests/proto/echo.proto) on 127.0.0.1:N over h2c, answering as NAME. On
//! SIGTERM or Ctrl-C it stops taking calls (HTTP/2 `GOAWAY`), finishes
//! those in flight and exits 0. Started behind `registry run` by the
//! gateway's gRPC tests (`shoal_tests::grpc::GrpcInstance`).

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut port = None;
    let mut instance = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = args.next(),
            "--instance" => instance = args.next(),
            other => bail!(
                "unknown argument `{other}`; usage: grpc-test-server --port N --instance NAME"
            ),
        }
    }
    let port: u16 = port
        .context("--port N is required")?
        .parse()
        .context("--port takes a port number, e.g. 50051")?;
    let instance = instance.context("--instance NAME is required")?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("grpc-test-server: shutting down, finishing calls in flight");
    };
    shoal_tests::grpc::serve(addr, instance, shutdown)
        .await
        .with_context(|| format!("serving on {addr}"))
}
