//! `GET /load` on an app server: what it knows of its own load, for the
//! autoscaler's `cpu` policies (and operators). Not counted as load itself.

use serde::{Deserialize, Serialize};

/// Latency percentiles in milliseconds; `null` when no request finished in
/// the window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    #[serde(deserialize_with = "super::nullable")]
    pub p50: Option<f64>,
    #[serde(deserialize_with = "super::nullable")]
    pub p95: Option<f64>,
}

/// The `/load` document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadReport {
    pub instance: String,
    /// `starting`, `ready`, `draining`.
    pub state: String,
    pub in_flight: u64,
    pub requests_total: u64,
    /// How far back `latency_ms` looks.
    pub window_secs: u64,
    pub latency_ms: Percentiles,
    /// Process user + system CPU time; `null` if the OS would not say.
    #[serde(deserialize_with = "super::nullable")]
    pub cpu_seconds: Option<f64>,
    pub uptime_secs: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_load_report_survives_a_round_trip_and_needs_every_field() {
        let report = LoadReport {
            instance: "i1".into(),
            state: "ready".into(),
            in_flight: 2,
            requests_total: 10,
            window_secs: 10,
            latency_ms: Percentiles {
                p50: Some(1.0),
                p95: None,
            },
            cpu_seconds: Some(0.5),
            uptime_secs: 3.25,
        };
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["latency_ms"]["p95"], serde_json::Value::Null);
        assert_eq!(
            serde_json::from_value::<LoadReport>(json.clone()).unwrap(),
            report
        );
        let mut partial = json;
        partial.as_object_mut().unwrap().remove("cpu_seconds");
        let err = serde_json::from_value::<LoadReport>(partial).unwrap_err();
        assert!(err.to_string().contains("cpu_seconds"), "{err}");
    }
}
