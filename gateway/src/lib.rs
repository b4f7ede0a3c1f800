//! Shoal's gateway: a reverse proxy that balances requests over the instances
//! registered in etcd, and an admin listener with stats, metrics and health.
//!
//! How a request flows: the [`server`] accepts it (HTTP/1.1 or h2c), the
//! [`proxy`] resolves its route in the current [`table::RoutingTable`]
//! snapshot (kept up to date by [`discovery`]), asks the route's
//! [`balance::Balancer`] for a backend, forwards it, retries on another
//! backend when that is safe, and records the outcome in [`stats`] and
//! [`health`] (passive ejection).
//!
//! Two layers. The data plane is every module but [`admin`], and it imports
//! nothing from [`admin`] (a unit test below reads the sources to check):
//! - [`config`] holds the flags.
//! - [`discovery`] turns the registry into the immutable [`table`] snapshot (ArcSwap);
//!   [`route_index`] finds a request's route in it without scanning the routes;
//!   [`allowed`] leaves out instances outside `--allowed-backends`;
//!   [`grace`] keeps instances that left while ready routable, unconfirmed, for a while.
//! - [`backend`] and [`ewma`] are an instance and its live state (in-flight, peak-EWMA latency, ejection).
//! - [`balance`] has the policies: round-robin, least-request (P2C), consistent-hash, sticky; slow start;
//!   each picks in O(1) or O(log n) for n instances.
//! - [`stats`] records request statistics without locks.
//! - [`server`] is the client-facing listener: connections, timeouts, graceful drain;
//!   [`tls`] its certificates (SNI, reload, expiry) and rustls configuration for `--tls-listen`;
//!   [`registry_certs`] follows the registry's certificates into it (`--tls-registry-certs`).
//! - [`proxy`] is the request handler (one file per concern inside).
//! - [`health`] is passive ejection and optional active `/healthz` checks.
//! - [`access_log`] is the optional JSON access log and its writer thread.
//! - [`hangup`] is SIGHUP: reopen the access log, reload the TLS certificates.
//!
//! The admin side, [`admin`], sits on top and reads the data plane: the
//! admin listener's stats API, Prometheus metrics, router and OpenAPI
//! document, registry reads and writes, dashboard, the control data it
//! follows and the charts' history; and the gateway's announcement in the
//! registry, which carries the admin address.
//!
//! [`run`] puts them together: load the TLS certificates (a start-up error
//! if one cannot be used), bind the listeners (with `--reuse-port`, the
//! proxy listeners only once the registry has been read, so that a gateway
//! started in place of a running one takes traffic when it can route it),
//! print one JSON line to stdout
//! (`{"event":"listening","addr":…,"admin_addr":…,"id":…}`, and `tls_addr`
//! with `--tls-listen`), follow
//! the registry, serve, announce; on SIGTERM or Ctrl-C stop accepting, drain
//! in-flight requests (up to [`DRAIN_TIMEOUT`]; a second signal cuts it
//! short), withdraw the announcement and return.

pub mod access_log;
pub mod admin;
pub mod allowed;
pub mod backend;
pub mod balance;
pub mod config;
pub mod discovery;
pub mod ewma;
pub mod grace;
pub mod hangup;
pub mod health;
pub mod proxy;
pub mod rate_limit;
pub mod registry_certs;
pub mod route_index;
pub mod server;
pub mod stats;
pub mod table;
#[cfg(test)]
mod testing;
pub mod tls;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::{Context, anyhow};
use registry::Watcher;
use registry::model::NamedRoute;
use registry::stop::StopSignals;
use serde::Serialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info, info_span, warn};

pub use config::Config;

use access_log::{AccessLog, Target};
use admin::AdminState;
use admin::announce::Announcement;
use admin::control::Control;
use admin::history::History;
use allowed::AllowedBackends;
use hangup::OnHangup;
use proxy::{Proxy, ProxySettings};
use server::{ClientConnections, Drained, Server, ServerSettings};
use table::Defaults;

/// How long a stopping gateway waits for in-flight requests.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pending connections a listener queues (the kernel caps it at `somaxconn`).
const LISTEN_BACKLOG: u32 = 1024;

/// The line printed to stdout once both listeners are bound; test harnesses
/// read it to learn the addresses (port 0 picks free ports).
#[derive(Debug, Serialize)]
pub struct Listening<'a> {
    pub event: &'static str,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The `--tls-listen` listener, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_addr: Option<SocketAddr>,
    pub id: &'a str,
}

/// Run the gateway until SIGTERM or Ctrl-C, then drain and return. An error
/// when it cannot start, when a server stops by itself, or when the drain
/// was cut short.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let id = config
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let span = info_span!("gateway", %id);
    run_gateway(config, id).instrument(span).await
}

async fn run_gateway(config: Config, id: String) -> anyhow::Result<()> {
    // Before announcing: a harness may signal as soon as it reads the line.
    config.check_admin_exposure().map_err(|e| anyhow!(e))?;
    config.check_hedge_delays().map_err(|e| anyhow!(e))?;
    let tls_pairs = config.tls_pairs().map_err(|e| anyhow!(e))?;
    let certs = tls_pairs.map(tls::Certs::load).transpose()?;
    let access_log = config
        .access_log
        .as_ref()
        .map(|target| AccessLog::start(target.clone()))
        .transpose()?;
    OnHangup {
        // Stdout is not reopened.
        access_log: access_log
            .clone()
            .filter(|_| matches!(config.access_log, Some(Target::File(_)))),
        certs: certs.clone(),
    }
    .spawn()
    .context(
        "cannot install the SIGHUP handler (it reopens --access-log and reloads --tls-cert)",
    )?;
    // SIGHUP is the gateway's "read your files again" (`hangup`), never a stop.
    let mut signals = StopSignals::install_without_hangup()
        .context("cannot install the SIGTERM/SIGINT handlers")?;
    // With --reuse-port the proxy listener opens only once the registry has
    // been read, so that the gateway being replaced keeps every request
    // until this one can route it.
    let early_listeners = if config.reuse_port {
        None
    } else {
        Some(bind_proxy_listeners(&config, false)?)
    };
    let admin_listener = bind(config.admin_listen, "--admin-listen", config.reuse_port)?;
    if config.reuse_port {
        warn_without_handshake_migration();
    }
    let admin_addr = admin_listener
        .local_addr()
        .context("cannot read the admin listener's address")?;

    let client = config
        .etcd
        .connect()
        .await
        .context("cannot connect to etcd; check --etcd, and --etcd-user/--etcd-password and --etcd-ca/--etcd-cert/--etcd-key if etcd requires them")?;
    let keys = &config.etcd.prefix;
    let store = registry::Store::etcd(client.clone(), keys.clone());
    if let Some(certs) = certs.as_ref().filter(|_| config.tls_registry_certs) {
        registry_certs::follow(&store, certs.clone());
    }
    // One watcher of `routes/`, for the routing table and the admin API.
    let routes = Watcher::<NamedRoute>::start(&store, keys.routes());
    let table = discovery::start(
        &store,
        routes.clone(),
        Defaults {
            service: config.default_service.clone(),
            policy: config.default_policy,
        },
        AllowedBackends::new(config.allowed_backends.clone()),
        config.unconfirmed_grace,
    );
    let (listener, tls_listener) = match early_listeners {
        Some(listeners) => listeners,
        None => {
            if !table.wait_for_registry(config.hold_timeout).await {
                warn!(
                    hold_timeout_ms = config.hold_timeout.as_millis() as u64,
                    "the registry has not been read within --hold-timeout; opening the proxy listener anyway (requests wait for instances as usual)"
                );
            }
            bind_proxy_listeners(&config, true)?
        }
    };
    let addr = listener
        .local_addr()
        .context("cannot read the proxy listener's address")?;
    let tls_addr = tls_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()
        .context("cannot read the TLS listener's address")?;
    let live_gateways = Arc::new(AtomicUsize::new(1));
    rate_limit::follow_live_gateways(&store, live_gateways.clone());
    let proxy = Proxy::new(
        table.clone(),
        ProxySettings {
            access_log: access_log.clone(),
            https_port: tls_addr.map(|a| a.port()),
            live_gateways: live_gateways.clone(),
            ..ProxySettings::from_config(&config)
        },
    );
    let stop = CancellationToken::new();
    let sweeper = proxy.spawn_idle_sweeper(stop.clone());

    let settings = ServerSettings::from_config(&config);
    let clients = Arc::new(ClientConnections::default());
    let server = Server::new(listener, proxy.clone(), settings).with_client_counts(clients.clone());
    let tls_server = match (tls_listener, &certs) {
        (Some(listener), Some(certs)) => Some(
            Server::new(listener, proxy.clone(), settings)
                .with_client_counts(clients.clone())
                .with_tls(tls::server_config(certs.clone())),
        ),
        _ => None,
    };
    let mut proxy_task =
        tokio::spawn(serve_both(server, tls_server, stop.clone()).in_current_span());
    let control = Control::start(store, routes);
    let history = History::default();
    let sampler = history.spawn_sampler(table.clone(), control.clone(), stop.clone());
    let admin_app = admin::api::app(AdminState {
        table: table.clone(),
        gateway_id: id.clone(),
        control,
        history,
        token: config.admin_token.clone().map(admin::api::AdminToken::new),
        stop: stop.clone(),
        access_log: access_log.clone(),
        certs,
        live_gateways,
        clients,
    });
    let mut admin_task = tokio::spawn(
        axum::serve(admin_listener, admin_app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future()
            .in_current_span(),
    );
    print_listening(&Listening {
        event: "listening",
        addr,
        admin_addr,
        tls_addr,
        id: &id,
    });

    let announcement = Announcement::start(
        client,
        keys,
        &id,
        &registry::model::advertise_addr(config.admin_advertise.as_deref(), admin_addr),
        config.lease_ttl,
    )
    .context("check --id and --admin-advertise")?;
    let checks = (!config.health_check_interval.is_zero()).then(|| {
        health::spawn_active_checks(
            table,
            proxy.client(),
            config.health_check_interval,
            config.eject_after,
            stop.clone(),
        )
    });
    info!(%addr, %admin_addr, tls_addr = tls_addr.map(tracing::field::display), "serving");

    let failure = tokio::select! {
        signal = signals.recv() => {
            info!(signal, "asked to stop; draining");
            None
        }
        ended = &mut proxy_task => Some(match ended {
            Ok(_) => anyhow!("the proxy server stopped by itself"),
            Err(e) => anyhow!("the proxy server task failed: {e}"),
        }),
        ended = &mut admin_task => Some(match ended {
            Ok(Ok(())) => anyhow!("the admin server stopped by itself"),
            Ok(Err(e)) => anyhow!("the admin server failed: {e}"),
            Err(e) => anyhow!("the admin server task failed: {e}"),
        }),
    };
    stop.cancel();
    if let Some(failure) = failure {
        error!(error = %failure, "not serving any more; withdrawing and stopping");
        proxy_task.abort();
        admin_task.abort();
        announcement.withdraw().await;
        return Err(failure);
    }

    let drained = tokio::select! {
        ended = &mut proxy_task => ended.unwrap_or_else(|e| {
            warn!(error = %e, "the proxy server task failed while draining");
            Drained { complete: false, abandoned: 0 }
        }),
        signal = signals.recv() => {
            warn!(signal, "second signal while draining; abandoning the requests still in flight");
            proxy_task.abort();
            Drained { complete: false, abandoned: 0 }
        }
    };
    // The admin listener has been told to stop too; its requests are short.
    match tokio::time::timeout(Duration::from_secs(1), &mut admin_task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => warn!(error = %e, "the admin server failed while stopping"),
        Ok(Err(e)) => warn!(error = %e, "the admin server task failed while stopping"),
        Err(_) => {
            warn!("admin connections still open after 1 s; closing them");
            admin_task.abort();
        }
    }
    if let Some(checks) = checks {
        checks.abort();
    }
    sampler.abort();
    sweeper.abort();
    if let Some(log) = access_log {
        flush_access_log(log).await;
    }
    announcement.withdraw().await;
    if drained.complete {
        info!("drained and withdrawn; exiting");
        Ok(())
    } else {
        Err(anyhow!(
            "the drain was cut short with {} connection(s) still open (limit {} s)",
            drained.abandoned,
            DRAIN_TIMEOUT.as_secs()
        ))
    }
}

/// Run the plain server and the TLS one (if any) until `stop`, and drain both.
async fn serve_both(
    plain: Server<Proxy>,
    tls: Option<Server<Proxy>>,
    stop: CancellationToken,
) -> Drained {
    let Some(tls) = tls else {
        return plain.run(stop, DRAIN_TIMEOUT).await;
    };
    let (a, b) = tokio::join!(
        plain.run(stop.clone(), DRAIN_TIMEOUT),
        tls.run(stop, DRAIN_TIMEOUT)
    );
    Drained {
        complete: a.complete && b.complete,
        abandoned: a.abandoned + b.abandoned,
    }
}

/// `--listen`, and `--tls-listen` when given.
fn bind_proxy_listeners(
    config: &Config,
    reuse_port: bool,
) -> anyhow::Result<(TcpListener, Option<TcpListener>)> {
    let plain = bind(config.listen, "--listen", reuse_port)?;
    let tls = config
        .tls_listen
        .map(|addr| bind(addr, "--tls-listen", reuse_port))
        .transpose()?;
    Ok((plain, tls))
}

/// Wait (a second at most) for the access log's last lines to be written.
async fn flush_access_log(log: AccessLog) {
    const WAIT: Duration = Duration::from_secs(1);
    let flushed = tokio::task::spawn_blocking(move || log.flush(WAIT)).await;
    if !matches!(flushed, Ok(true)) {
        warn!("the access log's last lines were not written within 1 s");
    }
}

/// With SO_REUSEPORT, Linux moves the connections still in their handshake
/// on a closing listener to another one of the port only when
/// `net.ipv4.tcp_migrate_req` is 1; say so if it is not.
fn warn_without_handshake_migration() {
    let setting = "/proc/sys/net/ipv4/tcp_migrate_req";
    if std::fs::read_to_string(setting).is_ok_and(|v| v.trim() == "0") {
        warn!(
            "--reuse-port: net.ipv4.tcp_migrate_req is 0, so connections still in their handshake when this gateway stops are reset; set it to 1 (sysctl -w net.ipv4.tcp_migrate_req=1) for a lossless replacement"
        );
    }
}

/// Listen on `addr` (SO_REUSEADDR as usual; SO_REUSEPORT with `reuse_port`).
fn bind(addr: SocketAddr, flag: &str, reuse_port: bool) -> anyhow::Result<TcpListener> {
    let listen = || -> std::io::Result<TcpListener> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        socket.set_reuseport(reuse_port)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().with_context(|| {
        let hint = if reuse_port {
            ""
        } else {
            " (or, to start a gateway in place of one still running there, give both --reuse-port)"
        };
        format!("cannot listen on {addr}; choose another {flag} (port 0 picks a free port){hint}")
    })
}

fn print_listening(line: &Listening<'_>) {
    let json = serde_json::to_string(line).expect("the listening line always serializes");
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
        warn!(error = %e, "cannot print the listening line to stdout");
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// The `.rs` files under `dir`, recursively.
    fn sources(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("the source directory is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                sources(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                found.push(path);
            }
        }
    }

    /// Where `text` (Rust source) names the admin module: a path through it
    /// (`crate::admin::x`, `super::admin`, `admin::x` after a grouped
    /// import) or `admin` inside a `use` item (`use crate::{admin, table}`);
    /// comments are skipped. The 1-based line of each.
    fn admin_mentions(text: &str) -> Vec<usize> {
        let is_ident = |c: char| c.is_alphanumeric() || c == '_';
        let mut found = Vec::new();
        let mut in_use = false;
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            let item = code.trim_start();
            let item = match item.strip_prefix("pub") {
                Some(rest) if rest.starts_with('(') => rest.split_once(')').map_or("", |(_, r)| r),
                Some(rest) => rest,
                None => item,
            };
            if item.trim_start().starts_with("use ") {
                in_use = true;
            }
            let mut named = false;
            for (at, _) in code.match_indices("admin") {
                let before = code[..at].chars().next_back();
                let after = &code[at + "admin".len()..];
                if before.is_some_and(is_ident) || after.starts_with(is_ident) {
                    continue; // part of a longer name: admin_listen, readmin
                }
                named |= in_use || after.starts_with("::") || code[..at].ends_with("::");
            }
            if named {
                found.push(n + 1);
            }
            if in_use && code.contains(';') {
                in_use = false;
            }
        }
        found
    }

    #[test]
    fn admin_mentions_finds_every_way_of_naming_the_module() {
        let named = "use crate::admin::AdminState;\n\
                     use super::admin;\n\
                     use crate::{\n    admin,\n    table,\n};\n\
                     let s = admin::stats();\n\
                     pub(crate) use crate::{table, admin};\n";
        assert_eq!(admin_mentions(named), [1, 2, 4, 7, 8]);
        let not_named = "// crate::admin::AdminState in a comment\n\
                         let a = config.admin_listen; // admin::x\n\
                         let flag = \"--admin-listen\";\n\
                         use crate::table;\n";
        assert_eq!(admin_mentions(not_named), Vec::<usize>::new());
    }

    /// The layering rule: the data plane (every module but `admin`) never
    /// names the admin side, so the request path builds and reads without
    /// it. `lib.rs` wires both layers together and `main.rs` only starts it.
    #[test]
    fn the_data_plane_imports_nothing_from_the_admin_side() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let data_plane: Vec<PathBuf> = files
            .into_iter()
            .filter(|f| !f.starts_with(src.join("admin")))
            .filter(|f| *f != src.join("lib.rs") && *f != src.join("main.rs"))
            .collect();
        // Guards against the walk finding nothing and passing vacuously.
        for expected in [
            "proxy/mod.rs",
            "table.rs",
            "server/mod.rs",
            "balance/mod.rs",
        ] {
            assert!(
                data_plane.contains(&src.join(expected)),
                "{expected} was not scanned"
            );
        }
        let mut named = Vec::new();
        for file in data_plane {
            let text = std::fs::read_to_string(&file).expect("a source file is readable");
            let mentions = admin_mentions(&text);
            for (n, line) in text.lines().enumerate() {
                let n = n + 1;
                if line.contains("crate::admin")
                    || line.contains("super::admin")
                    || mentions.contains(&n)
                {
                    named.push(format!("{}:{n}: `{}`", file.display(), line.trim()));
                }
            }
        }
        assert!(
            named.is_empty(),
            "the data plane names the admin side; move what both need into the data plane:\n{}",
            named.join("\n")
        );
    }
}
