//! What every handler shares: the instance's identity, its lifecycle state,
//! the registration status it reads readiness from, the load counters, the
//! key-value store and the session counters.
//!
//! [`AppState`] never touches etcd itself: readiness is fed by a
//! `watch::Receiver<RegistrationStatus>` (the registration's own, or a plain
//! channel in tests), so the router is built and tested without etcd.

use std::sync::Arc;

use axum::http::HeaderValue;
use registry::keys::validate_segment;
use registry::model::ValidationError;
use registry::{InstanceState, RegistrationStatus};
use tokio::sync::watch;

use crate::kv::Kv;
use crate::routes::counter::Counters;
use crate::stats::Stats;

/// Cheap to clone; every clone sees the same instance.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: String,
    id_header: HeaderValue,
    pid: u32,
    state: watch::Sender<InstanceState>,
    registration: watch::Receiver<RegistrationStatus>,
    stats: Arc<Stats>,
    kv: Arc<Kv>,
    counters: Counters,
}

/// Whether the instance should get new requests, and if not why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// Not serving yet.
    Starting,
    /// Finishing in-flight requests before leaving.
    Draining,
    /// No keep-alive succeeded for a whole TTL: the registry may have dropped it.
    Fenced,
    /// Not (or no longer) in the registry.
    Unregistered,
}

impl Readiness {
    pub fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Starting => "starting",
            Readiness::Draining => "draining",
            Readiness::Fenced => "fenced",
            Readiness::Unregistered => "unregistered",
        }
    }

    pub fn detail(self) -> &'static str {
        match self {
            Readiness::Ready => "serving and registered",
            Readiness::Starting => "the server is not serving yet",
            Readiness::Draining => {
                "finishing in-flight requests before leaving; send new requests elsewhere"
            }
            Readiness::Fenced => {
                "no lease keep-alive has succeeded for a whole TTL, so the registry may have dropped this instance; check that etcd is reachable"
            }
            Readiness::Unregistered => {
                "not registered in etcd yet; registration retries until etcd answers"
            }
        }
    }
}

impl AppState {
    /// A `starting` instance. `id` must be a valid key segment (it goes into
    /// the `x-shoal-instance` header and the registry key).
    pub fn new(
        id: impl Into<String>,
        registration: watch::Receiver<RegistrationStatus>,
    ) -> Result<Self, ValidationError> {
        let id = id.into();
        let kv = Arc::new(Kv::standalone(&id));
        Self::with_kv(id, registration, kv)
    }

    /// A `starting` instance whose key-value store is `kv` (distributed).
    pub fn with_kv(
        id: impl Into<String>,
        registration: watch::Receiver<RegistrationStatus>,
        kv: Arc<Kv>,
    ) -> Result<Self, ValidationError> {
        let id = id.into();
        validate_segment("id", &id)?;
        let id_header = HeaderValue::from_str(&id)
            .map_err(|_| ValidationError::new("id", "is not a valid header value"))?;
        Ok(AppState {
            inner: Arc::new(Inner {
                id,
                id_header,
                pid: std::process::id(),
                state: watch::Sender::new(InstanceState::Starting),
                registration,
                stats: Arc::default(),
                kv,
                counters: Counters::default(),
            }),
        })
    }

    pub fn id(&self) -> &str {
        &self.inner.id
    }

    pub(crate) fn id_header(&self) -> &HeaderValue {
        &self.inner.id_header
    }

    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    pub fn state(&self) -> InstanceState {
        *self.inner.state.borrow()
    }

    /// Change the local lifecycle state. The lifecycle also writes it to the
    /// registry; handlers only read it.
    pub fn set_state(&self, state: InstanceState) {
        self.inner.state.send_replace(state);
    }

    pub fn registration(&self) -> RegistrationStatus {
        self.inner.registration.borrow().clone()
    }

    /// Draining wins over everything (the instance is leaving whatever etcd
    /// says), then starting, then what the registration reports.
    pub fn readiness(&self) -> Readiness {
        match self.state() {
            InstanceState::Draining => return Readiness::Draining,
            InstanceState::Starting => return Readiness::Starting,
            InstanceState::Ready => {}
        }
        let registration = self.inner.registration.borrow();
        if registration.fenced {
            Readiness::Fenced
        } else if !registration.registered {
            Readiness::Unregistered
        } else {
            Readiness::Ready
        }
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    pub fn kv(&self) -> &Arc<Kv> {
        &self.inner.kv
    }

    /// The instance-local session counters of `POST /counter/{session}`.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_state_then_registration() {
        let (reg, rx) = watch::channel(RegistrationStatus::default());
        let state = AppState::new("i1", rx).unwrap();
        assert_eq!(state.readiness(), Readiness::Starting);
        state.set_state(InstanceState::Ready);
        assert_eq!(state.readiness(), Readiness::Unregistered);
        reg.send_modify(|s| s.registered = true);
        assert_eq!(state.readiness(), Readiness::Ready);
        reg.send_modify(|s| s.fenced = true);
        assert_eq!(state.readiness(), Readiness::Fenced);
        state.set_state(InstanceState::Draining);
        assert_eq!(state.readiness(), Readiness::Draining);
    }

    #[test]
    fn ids_must_be_key_segments() {
        let (_reg, rx) = watch::channel(RegistrationStatus::default());
        let err = AppState::new("a b", rx).unwrap_err();
        assert_eq!(err.field, "id");
    }
}
