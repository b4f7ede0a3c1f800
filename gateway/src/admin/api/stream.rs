//! `GET /api/v1/stream`: server-sent events for the dashboard. The first
//! event (`history`) carries every service's samples of the last minutes;
//! then a `snapshot` event with the whole picture is pushed at once on any
//! change of the routing table or the registry's control data, and at least
//! every second otherwise (stats move without registry changes).
//!
//! One task per subscriber builds the snapshots; it ends when the client goes
//! away or the gateway stops.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use chrono::Utc;
use futures::Stream;
use registry::model::{Rollout, ScalingEvent, ScalingPolicy};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::debug;
use utoipa::ToSchema;

use crate::admin::AdminState;
use crate::admin::history::Sample;
use crate::admin::stats::{ServiceDetail, ServiceSummary, service_detail};

/// A snapshot is pushed at least this often.
pub const PERIOD: Duration = Duration::from_secs(1);
/// ... and at most this often, however busy the registry.
pub const MIN_GAP: Duration = Duration::from_millis(50);
/// Events per service in a snapshot.
pub const EVENTS_PER_SERVICE: usize = 20;

/// Everything the dashboard shows, at one moment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DashboardSnapshot {
    pub gateway_id: String,
    /// Unix time in milliseconds.
    pub at_ms: i64,
    /// `connected` or `unreachable` (etcd).
    pub registry: &'static str,
    /// While unreachable: what that means for what is shown.
    pub registry_detail: Option<String>,
    /// Routing-table generation.
    pub generation: u64,
    pub services: Vec<ServicePanel>,
}

/// One service on the dashboard.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ServicePanel {
    /// The service's stats and every instance (as `GET /api/v1/services/{service}`).
    #[serde(flatten)]
    pub detail: ServiceDetail,
    pub policy: Option<ScalingPolicy>,
    /// The newest scaling event's `desired`.
    pub desired: Option<u32>,
    pub rollout: Option<Rollout>,
    /// Newest first.
    pub events: Vec<ScalingEvent>,
    /// The newest chart sample.
    pub sample: Option<Sample>,
    /// The version of the service's spec (`null` without a spec).
    pub spec_version: Option<String>,
    /// How many instances run `spec_version` (`null` without a spec):
    /// during a rollout, its progress ("2/4 on the new version").
    pub on_spec_version: Option<usize>,
}

impl DashboardSnapshot {
    pub fn of(state: &AdminState) -> Self {
        let table = state.table.load();
        let (now, wall) = (Instant::now(), Utc::now());
        let control = &state.control;
        let latest = state.history.latest();
        let connected = table.registry_connected && control.connected();
        DashboardSnapshot {
            gateway_id: state.gateway_id.clone(),
            at_ms: wall.timestamp_millis(),
            registry: if connected {
                "connected"
            } else {
                "unreachable"
            },
            registry_detail: (!connected).then(|| {
                "the registry (etcd) is unreachable: this shows the last known instances, \
                 policies and events; stats are live"
                    .to_owned()
            }),
            generation: table.generation,
            services: {
                // Every service the table knows, and every declared one
                // (a spec with no instance yet).
                let mut details: BTreeMap<String, ServiceDetail> = table
                    .pools
                    .iter()
                    .map(|(name, pool)| (name.clone(), service_detail(pool, now, wall)))
                    .collect();
                for spec in control.specs().entries.values() {
                    details
                        .entry(spec.name.clone())
                        .or_insert_with(|| empty_detail(&spec.name));
                }
                details
                    .into_iter()
                    .map(|(name, detail)| {
                        let spec_version = control.spec(&name).map(|s| s.version());
                        let on_spec_version = spec_version
                            .as_ref()
                            .map(|v| detail.instances.iter().filter(|i| &i.version == v).count());
                        ServicePanel {
                            policy: control.policy(&name),
                            desired: control.desired(&name),
                            rollout: control.rollout(&name),
                            events: control.events_of(&name, EVENTS_PER_SERVICE),
                            sample: latest.get(&name).cloned(),
                            spec_version,
                            on_spec_version,
                            detail,
                        }
                    })
                    .collect()
            },
        }
    }
}

/// A declared service the routing table does not know yet: no instance.
fn empty_detail(name: &str) -> ServiceDetail {
    ServiceDetail {
        summary: ServiceSummary {
            name: name.to_owned(),
            ready_instances: 0,
            total_instances: 0,
            ejected_instances: 0,
            unconfirmed_instances: 0,
            stats: Default::default(),
            held_now: 0,
            held_total: 0,
            hold_timeouts_total: 0,
            retries_total: 0,
            retries_refused_total: 0,
            hedges_total: 0,
            hedges_won_total: 0,
            headers_p99_ms: None,
        },
        instances: Vec::new(),
    }
}

/// `GET /api/v1/stream`.
#[utoipa::path(get, path = "/api/v1/stream", tag = "stats",
    responses((status = 200, content_type = "text/event-stream",
        description = "Server-sent events, never ending: first `history` (its data: samples per service, as \
                       /api/v1/history), then `snapshot` (its data: a `DashboardSnapshot`, \
                       #/components/schemas/DashboardSnapshot) on every change and at least every second",
        body = String)))]
pub async fn stream(
    State(state): State<AdminState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(feed(state, tx));
    Sse::new(ReceiverStream::new(rx)).keep_alive(KeepAlive::default())
}

async fn feed(state: AdminState, tx: mpsc::Sender<Result<Event, Infallible>>) {
    let history: BTreeMap<String, Vec<Sample>> = state.history.all();
    if !send(&tx, "history", &history).await {
        return;
    }
    let mut table_changes = state.table.changes();
    let mut control_changes = state.control.changes();
    loop {
        table_changes.borrow_and_update();
        if !send(&tx, "snapshot", &DashboardSnapshot::of(&state)).await {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(PERIOD) => {}
            changed = table_changes.changed() => if changed.is_err() { return },
            () = control_changes.changed() => {}
            () = tx.closed() => return,
            () = state.stop.cancelled() => return,
        }
        tokio::time::sleep(MIN_GAP).await;
    }
}

/// Whether the client is still there.
async fn send<T: Serialize>(
    tx: &mpsc::Sender<Result<Event, Infallible>>,
    name: &str,
    value: &T,
) -> bool {
    let event = match Event::default().event(name).json_data(value) {
        Ok(event) => event,
        Err(e) => {
            debug!(error = %e, "cannot encode a dashboard event");
            return false;
        }
    };
    tx.send(Ok(event)).await.is_ok()
}
