//! A real gRPC service for the gateway's h2c routes: the `Echo` service of
//! tests/proto/echo.proto served by tonic ([`serve`], which the
//! `grpc-test-server` binary runs behind `registry run`, as any program
//! joins), a launcher for such an instance ([`GrpcInstance`]), a tonic
//! client through the gateway ([`client`]), and unary calls back to back
//! from several clients, counting failures ([`UnaryLoad`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use registry::proc_stat::ProcStat;
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status, Streaming};

use crate::binaries::{bin_path, logs_dir};
use crate::{Etcd, Proc};

/// The code tonic generated from tests/proto/echo.proto.
pub mod proto {
    tonic::include_proto!("shoal.test");
}

use proto::echo_client::EchoClient;
use proto::echo_server::{Echo, EchoServer};
use proto::{EchoReply, EchoRequest, StreamRequest};

/// The service, answering as `instance`.
#[derive(Debug, Clone)]
pub struct EchoService {
    instance: String,
}

type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Ok(Response::new(EchoReply {
            message: request.into_inner().message,
            instance: self.instance.clone(),
            seq: 0,
        }))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<StreamRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let StreamRequest {
            message,
            count,
            interval_ms,
            fail_with,
        } = request.into_inner();
        let instance = self.instance.clone();
        let replies = futures::stream::iter(0..u64::from(count)).then(move |seq| {
            let (message, instance) = (message.clone(), instance.clone());
            async move {
                if seq > 0 {
                    tokio::time::sleep(Duration::from_millis(u64::from(interval_ms))).await;
                }
                Ok(EchoReply {
                    message,
                    instance,
                    seq,
                })
            }
        });
        let end = (!fail_with.is_empty()).then(|| Err(Status::aborted(fail_with)));
        Ok(Response::new(Box::pin(
            replies.chain(futures::stream::iter(end)),
        )))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let instance = self.instance.clone();
        let replies = request.into_inner().enumerate().map(move |(seq, message)| {
            message.map(|m| EchoReply {
                message: m.message,
                instance: instance.clone(),
                seq: seq as u64,
            })
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn fail(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        Err(Status::failed_precondition(request.into_inner().message))
    }
}

/// Serve `Echo` as `instance` on `addr` (h2c) until `shutdown` completes,
/// then finish the calls in flight (a graceful HTTP/2 shutdown: `GOAWAY`).
pub async fn serve(
    addr: SocketAddr,
    instance: String,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    Server::builder()
        .add_service(EchoServer::new(EchoService { instance }))
        .serve_with_shutdown(addr, shutdown)
        .await
}

/// A `grpc-test-server` registered as instance `id` of `service` by
/// `registry run` (TCP readiness probe, 3 s lease, the default 1 s drain
/// grace: gateways stop routing to it before it is told to stop).
pub struct GrpcInstance {
    pub id: String,
    /// The registered address.
    pub addr: String,
    /// The `registry run` wrapper.
    pub wrapper: Proc,
    /// The server's own pid.
    pub pid: u32,
}

#[derive(serde::Deserialize)]
struct Registered {
    addr: String,
    pid: u32,
}

impl GrpcInstance {
    /// Start it and wait until it is registered ready.
    pub async fn start(etcd: &Etcd, service: &str, id: &str) -> GrpcInstance {
        let args: Vec<String> = [
            "--etcd",
            &etcd.endpoint(),
            "run",
            "--service",
            service,
            "--id",
            id,
            "--port-env",
            "PORT",
            "--lease-ttl",
            "3s",
            "--",
            bin_path("grpc-test-server").to_str().expect("a UTF-8 path"),
            "--port",
            "{port}",
            "--instance",
            id,
        ]
        .map(String::from)
        .to_vec();
        let label = format!("grpc-{id}");
        let wrapper = Proc::spawn(&label, &bin_path("registry"), &args, &[], &logs_dir());
        let registered: Registered = wrapper
            .wait_event("registered", Duration::from_secs(20))
            .await;
        GrpcInstance {
            id: id.to_owned(),
            addr: registered.addr,
            wrapper,
            pid: registered.pid,
        }
    }

    /// SIGKILL the server and its wrapper: the instance dies without a
    /// word, its registry entry stays until its lease runs out.
    pub async fn kill9(&mut self) {
        // Already gone is fine: the wrapper is killed next either way.
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        self.wrapper.kill9().await;
    }
}

impl Drop for GrpcInstance {
    /// `Proc` kills the wrapper when the test ends, with SIGKILL, which
    /// leaves `registry run` no chance to stop its server: the server is
    /// killed here, while it is still the wrapper's child (so never a
    /// process that has taken over its pid since). A server left running
    /// outlived every CI run.
    fn drop(&mut self) {
        if ProcStat::of(self.pid).map(|stat| stat.parent) == Some(self.wrapper.pid()) {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        }
    }
}

/// A tonic client for `addr` (the gateway's proxy listener), over h2c.
pub async fn client(addr: &str) -> EchoClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a valid URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(15))
        .connect()
        .await
        .unwrap_or_else(|e| panic!("no h2c connection to {addr}: {e}"));
    EchoClient::new(channel)
}

/// Unary calls back to back from several clients (a connection each).
pub struct UnaryLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    served_by: Arc<Mutex<HashMap<String, u64>>>,
    clients: Vec<JoinHandle<()>>,
}

/// What a [`UnaryLoad`] saw.
#[derive(Debug, Clone)]
pub struct UnaryReport {
    pub ok: u64,
    pub failures: Vec<String>,
    pub served_by: HashMap<String, u64>,
}

impl UnaryLoad {
    /// Start `clients` clients calling `Unary` through `addr`.
    pub async fn start(addr: &str, clients: usize) -> UnaryLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let served_by = Arc::new(Mutex::new(HashMap::new()));
        let mut handles = Vec::new();
        for c in 0..clients {
            let mut client = client(addr).await;
            let (stop, ok) = (stop.clone(), ok.clone());
            let (failures, served_by) = (failures.clone(), served_by.clone());
            handles.push(tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let message = format!("client {c} call {n}");
                    let call = client.unary(EchoRequest {
                        message: message.clone(),
                    });
                    match call.await {
                        Ok(reply) if reply.get_ref().message == message => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            let instance = reply.into_inner().instance;
                            *served_by
                                .lock()
                                .expect("served-by lock")
                                .entry(instance)
                                .or_default() += 1;
                        }
                        Ok(reply) => failures
                            .lock()
                            .expect("failures lock")
                            .push(format!("{message}: wrong reply {:?}", reply.get_ref())),
                        Err(status) => failures
                            .lock()
                            .expect("failures lock")
                            .push(format!("{message}: {status}")),
                    }
                }
            }));
        }
        UnaryLoad {
            stop,
            ok,
            failures,
            served_by,
            clients: handles,
        }
    }

    /// Calls answered so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// The calls that failed so far, with why.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().expect("failures lock").clone()
    }

    /// Calls answered so far by each instance.
    pub fn served_by(&self) -> HashMap<String, u64> {
        self.served_by.lock().expect("served-by lock").clone()
    }

    /// Stop the clients (each finishes its call in flight) and report.
    pub async fn stop(self) -> UnaryReport {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("a load client panicked");
        }
        UnaryReport {
            ok: self.ok.load(Ordering::Relaxed),
            failures: self.failures.lock().expect("failures lock").clone(),
            served_by: self.served_by.lock().expect("served-by lock").clone(),
        }
    }
}
