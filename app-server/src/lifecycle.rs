//! The instance's life from bind to exit: announce, register, serve, drain.
//!
//! 1. Bind the listener and print one JSON line to stdout (see [`Announcement`]).
//! 2. Register in etcd as `starting` (the registration retries on its own, so
//!    the instance serves even while etcd is down), serve, then mark `ready`.
//! 3. On SIGTERM, Ctrl-C or the retire key: mark `draining`, wait (briefly)
//!    until etcd has it, keep accepting for `--drain-grace` so gateways notice,
//!    then stop accepting and wait for in-flight requests up to
//!    `--drain-timeout`. A second signal stops waiting.
//!    The key-value store hands every entry to its other owners from the
//!    moment the instance is draining, and once more after the last
//!    in-flight request, before the lease goes (`kv::sync::hand_off`), both
//!    within `--drain-timeout` of the draining mark (a second after it when
//!    the registry lists no other instance to take them); once every entry
//!    is handed off, the `--data-dir` journal is emptied.
//! 4. Revoke the lease (deleting the key), delete the retire key if there was
//!    one, and exit 0 if the drain finished, 1 if it was cut short.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use axum::ServiceExt as _;
use chrono::Utc;
use registry::{Instance, InstanceState, Registration, Store};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::Config;
use crate::crash;
use crate::kv::store::LocalStore;
use crate::kv::{self, Kv};
use crate::routes::app;
use crate::state::AppState;
use registry::stop::{RetireWatch, StopSignals};

/// How long the drain waits for etcd to confirm the `draining` state before
/// carrying on regardless (gateways then learn it when the key goes).
const DRAINING_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long start-up waits for the registry's list of the service's
/// instances, so that the key-value store does not start alone.
const KV_FIRST_SYNC: Duration = Duration::from_secs(2);

/// The one line printed to stdout once the listener is bound, e.g.
/// `{"event":"listening","addr":"127.0.0.1:40123","id":"…","service":"app","pid":4242}`.
/// Test harnesses and the process driver read it to learn the address.
#[derive(Debug, Serialize)]
pub struct Announcement<'a> {
    pub event: &'static str,
    /// The advertised address.
    pub addr: &'a str,
    pub id: &'a str,
    pub service: &'a str,
    pub pid: u32,
}

/// Run the instance until it is told to stop and has drained.
///
/// Returns the process exit code: success when the drain finished in time,
/// 1 when `--drain-timeout` (or a second signal) cut it short.
pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    let id = config.instance_id();
    let span = info_span!("instance", %id, service = %config.service);
    run_instance(config, id).instrument(span).await
}

async fn run_instance(config: Config, id: String) -> anyhow::Result<ExitCode> {
    // Before announcing: a harness may signal as soon as it reads the line.
    let mut signals =
        StopSignals::install().context("cannot install the SIGTERM/SIGINT handlers")?;

    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}; choose another --listen (port 0 picks a free port)",
            config.listen
        )
    })?;
    let bound = listener
        .local_addr()
        .context("cannot read the listener's address")?;
    let addr = advertise_addr(config.advertise.as_deref(), bound);
    let instance = instance(&config, &id, &addr);
    instance
        .validate()
        .map_err(|e| anyhow!("this instance cannot be registered: {e}"))?;
    announce(&Announcement {
        event: "listening",
        addr: &addr,
        id: &id,
        service: &config.service,
        pid: std::process::id(),
    });
    info!(%bound, advertise = %addr, "listening");

    if let Some(window) = config.crash_after {
        crash::spawn(window);
    }

    let kv_config = config.kv_config().map_err(|e| anyhow!(e))?;
    let client = config
        .etcd
        .connect()
        .await
        .context("cannot connect to etcd; check --etcd, and --etcd-user/--etcd-password and --etcd-ca/--etcd-cert/--etcd-key if etcd requires them")?;
    let keys = &config.etcd.prefix;
    let registry_store = Store::etcd(client.clone(), keys.clone());
    let store = match &config.data_dir {
        Some(dir) => LocalStore::open(dir)?,
        None => LocalStore::default(),
    };
    let kv = Arc::new(Kv::with_store(&id, &addr, kv_config, store));
    let kv_stop = CancellationToken::new();
    kv::feed::start(
        &registry_store,
        &config.service,
        kv.clone(),
        kv_stop.clone(),
        KV_FIRST_SYNC,
    )
    .await;
    tokio::spawn(kv::sync::run(kv.clone(), kv_stop.clone()).in_current_span());
    let registration = Registration::start(client.clone(), keys, instance, config.lease_ttl)
        .context("cannot start the registration")?;
    kv.fence().on_lease(registration.watch_status());
    let retire = RetireWatch::start(&registry_store, &config.service, &id);
    let state =
        AppState::with_kv(id, registration.watch_status(), kv).context("bad instance id")?;

    let stop_accepting = CancellationToken::new();
    let mut server = tokio::spawn(
        axum::serve(listener, app(state.clone()).into_make_service())
            .with_graceful_shutdown(stop_accepting.clone().cancelled_owned())
            .into_future()
            .in_current_span(),
    );
    set_state(&state, &registration, InstanceState::Ready);
    info!(key = %registration.key(), "serving");

    tokio::select! {
        signal = signals.recv() => info!(signal, "asked to stop; draining"),
        reason = retire.requested() => info!(key = %retire.key(), %reason, "retire key written; draining"),
        ended = &mut server => {
            // axum only returns on shutdown; anything else is a bug or a dead listener.
            let why = match ended {
                Ok(Ok(())) => "the server stopped by itself".to_owned(),
                Ok(Err(e)) => format!("the server failed: {e}"),
                Err(e) => format!("the server task failed: {e}"),
            };
            error!(reason = %why, "not serving any more; deregistering");
            registration.deregister().await;
            return Err(anyhow!(why));
        }
    }

    let drained = drain(
        &config,
        &state,
        &registration,
        &stop_accepting,
        &mut server,
        &mut signals,
    )
    .await;
    kv_stop.cancel();
    registration.deregister().await;
    retire.clean_up(&registry_store).await;
    if drained {
        info!("drained and deregistered; exiting");
        Ok(ExitCode::SUCCESS)
    } else {
        warn!("deregistered without finishing every in-flight request; exiting with code 1");
        Ok(ExitCode::from(1))
    }
}

/// Steps 3 of the module doc. True if every in-flight request finished and
/// every key-value entry reached another instance.
async fn drain(
    config: &Config,
    state: &AppState,
    registration: &Registration,
    stop_accepting: &CancellationToken,
    server: &mut JoinHandle<std::io::Result<()>>,
    signals: &mut StopSignals,
) -> bool {
    set_state(state, registration, InstanceState::Draining);
    if !registration
        .wait_written(InstanceState::Draining, DRAINING_WRITE_TIMEOUT)
        .await
    {
        warn!(
            timeout_ms = DRAINING_WRITE_TIMEOUT.as_millis() as u64,
            "etcd has not confirmed the draining state; gateways may keep sending requests until the key goes"
        );
    }

    // Hand the key-value entries over while gateways move away; the second
    // hand-off below sends what in-flight writes stored meanwhile.
    // Both hand-offs share one deadline: with nowhere to send the entries
    // (every instance stopping at once), the drain ends after one
    // `--drain-timeout`, not two.
    let kv = state.kv().clone();
    let handoff_deadline = tokio::time::Instant::now() + config.drain_timeout;
    let early_handoff = tokio::spawn(
        async move { kv::sync::hand_off(&kv, handoff_deadline).await }.in_current_span(),
    );

    let grace = config.drain_grace;
    let cut_short = tokio::select! {
        () = tokio::time::sleep(grace) => false,
        signal = signals.recv() => {
            warn!(signal, "second signal during the drain grace period; stopping now");
            true
        }
    };
    stop_accepting.cancel();
    if cut_short {
        server.abort();
        return false;
    }

    let timeout = config.drain_timeout;
    info!(
        in_flight = state.stats().in_flight(),
        timeout_ms = timeout.as_millis() as u64,
        "stopped accepting; waiting for in-flight requests"
    );
    let served = tokio::select! {
        ended = &mut *server => match ended {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "the server failed while draining");
                false
            }
            Err(e) => {
                warn!(error = %e, "the server task failed while draining");
                false
            }
        },
        () = tokio::time::sleep(timeout) => {
            warn!(
                in_flight = state.stats().in_flight(),
                timeout_ms = timeout.as_millis() as u64,
                "drain timeout hit; abandoning the requests still in flight (raise --drain-timeout to wait longer)"
            );
            server.abort();
            false
        }
        signal = signals.recv() => {
            warn!(signal, in_flight = state.stats().in_flight(), "second signal while draining; abandoning the requests still in flight");
            server.abort();
            false
        }
    };
    let entries = state.kv().store().len();
    match early_handoff.await {
        Ok(early) => debug!(?early, "early key-value hand-off ended"),
        Err(e) => warn!(error = %e, "the key-value hand-off task failed"),
    }
    // Its outcome is the one said: it covers what the early one left.
    let handoff = kv::sync::hand_off(state.kv(), handoff_deadline).await;
    handoff.log(entries, state.kv().store().has_data_dir());
    let handed_off = handoff.is_complete();
    if handed_off {
        // Every entry lives on at its other owners; a later instance on the
        // same --data-dir must not bring back values deleted meanwhile.
        if let Err(e) = state.kv().store().forget_all() {
            warn!(error = %e, "cannot empty the key-value data directory after handing every entry off; an instance started on it later may bring back stale values");
        }
    }
    served && handed_off
}

/// The local state (what `/readyz` and `/load` say) and the registry entry move together.
fn set_state(state: &AppState, registration: &Registration, new: InstanceState) {
    state.set_state(new);
    registration.set_state(new);
}

/// Where gateways should connect: `--advertise`, else the bound address, with
/// an unspecified IP replaced by loopback (and a note in the log that only
/// local gateways can reach it).
pub fn advertise_addr(configured: Option<&str>, bound: SocketAddr) -> String {
    let addr = registry::model::advertise_addr(configured, bound);
    if configured.is_none() && bound.ip().is_unspecified() {
        info!(
            %bound,
            advertise = %addr,
            "bound to every interface without --advertise; advertising loopback, which only local gateways can reach (set --advertise for others)"
        );
    }
    addr
}

fn instance(config: &Config, id: &str, addr: &str) -> Instance {
    Instance {
        id: id.to_owned(),
        service: config.service.clone(),
        addr: addr.to_owned(),
        state: InstanceState::Starting,
        version: config.version_label.clone(),
        weight: config.weight,
        zone: config.zone.clone().unwrap_or_default(),
        started_at: Utc::now(),
        labels: config.labels.iter().cloned().collect(),
    }
}

fn announce(line: &Announcement<'_>) {
    let json = serde_json::to_string(line).expect("the announcement always serializes");
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{json}").and_then(|()| stdout.flush()) {
        warn!(error = %e, "cannot write the listening line to stdout");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn the_announcement_has_the_documented_shape() {
        let line = serde_json::to_string(&Announcement {
            event: "listening",
            addr: "127.0.0.1:4000",
            id: "i1",
            service: "app",
            pid: 42,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"event":"listening","addr":"127.0.0.1:4000","id":"i1","service":"app","pid":42}"#
        );
    }

    #[test]
    fn the_registered_instance_carries_the_flags() {
        let config = Config::try_parse_from([
            "app-server",
            "--service",
            "web",
            "--version-label",
            "v2",
            "--weight",
            "3",
            "--zone",
            "z1",
            "--label",
            "a=1",
        ])
        .unwrap();
        let i = instance(&config, "i1", "127.0.0.1:4000");
        assert_eq!(
            (i.id.as_str(), i.service.as_str(), i.addr.as_str()),
            ("i1", "web", "127.0.0.1:4000")
        );
        assert_eq!(i.state, InstanceState::Starting);
        assert_eq!(
            (i.version.as_str(), i.weight, i.zone.as_str()),
            ("v2", 3, "z1")
        );
        assert_eq!(i.labels.get("a").map(String::as_str), Some("1"));
        i.validate().unwrap();
    }
}
