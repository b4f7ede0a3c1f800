//! Load signals: what every gateway observes of a service, merged.
//!
//! Each gateway registered under `{prefix}/gateways/` serves
//! `GET /api/v1/services/{service}` on its admin address, a
//! [`ServiceDetail`] (the wire contract, `registry::wire::gateway`). The
//! collector asks every one of them each tick and merges: in-flight requests and request rates add up across gateways;
//! the p95 latency is the worst gateway's (a conservative reading); held
//! requests add up. A gateway that does not answer, or answers something
//! that is not a whole `ServiceDetail`, is listed in `silent`, and its
//! silence is never read as zero load: the controller refuses to scale down
//! on a partial picture. A 404 (the gateway knows no such service yet) is
//! an answer: no traffic for it there.

use std::collections::BTreeMap;
use std::time::Duration;

use registry::model::GatewayInfo;
use registry::wire::gateway::ServiceDetail;

/// How long one gateway may take to answer.
pub const GATEWAY_TIMEOUT: Duration = Duration::from_millis(800);

/// One instance's load summed over the gateways that answered.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceObservation {
    pub in_flight: f64,
    pub rate: f64,
    /// Every answering gateway has it ejected.
    pub ejected: bool,
}

/// A service's load as every answering gateway sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServiceLoad {
    pub rate: f64,
    pub p95_ms: Option<f64>,
    pub held: u64,
    pub instances: BTreeMap<String, InstanceObservation>,
    pub gateways_answered: usize,
    /// Gateways that did not answer, with why.
    pub silent: Vec<(String, String)>,
}

impl ServiceLoad {
    /// Whether every gateway answered (and there was at least one).
    pub fn complete(&self) -> bool {
        self.silent.is_empty() && self.gateways_answered > 0
    }
}

/// Merge what each gateway answered: the service's detail, `None` when the
/// gateway does not know the service, or why it did not answer.
pub fn merge(answers: Vec<(String, Result<Option<ServiceDetail>, String>)>) -> ServiceLoad {
    let mut load = ServiceLoad::default();
    let mut ejected_by: BTreeMap<String, usize> = BTreeMap::new();
    for (gateway, answer) in answers {
        let detail = match answer {
            Err(why) => {
                load.silent.push((gateway, why));
                continue;
            }
            Ok(detail) => detail,
        };
        load.gateways_answered += 1;
        let Some(detail) = detail else { continue };
        let service = &detail.summary;
        load.rate += service.stats.rate;
        load.held += service.held_now.max(0) as u64;
        load.p95_ms = match (load.p95_ms, service.stats.p95_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        for i in detail.instances {
            let obs = load.instances.entry(i.id.clone()).or_default();
            obs.in_flight += i.stats.in_flight.max(0) as f64;
            obs.rate += i.stats.rate;
            if i.ejected {
                *ejected_by.entry(i.id).or_default() += 1;
            }
        }
    }
    for (id, obs) in &mut load.instances {
        obs.ejected =
            load.gateways_answered > 0 && ejected_by.get(id) == Some(&load.gateways_answered);
    }
    load
}

/// What one gateway's answer says: the detail on 200, nothing known on 404,
/// otherwise (another status, or a body that is not a whole
/// [`ServiceDetail`]) why it cannot be used.
pub fn read_answer(url: &str, status: u16, body: &[u8]) -> Result<Option<ServiceDetail>, String> {
    match status {
        200 => serde_json::from_slice(body)
            .map(Some)
            .map_err(|e| format!("unreadable answer from {url}: {e}")),
        404 => Ok(None),
        status => Err(format!("HTTP {status} from {url}")),
    }
}

/// Ask every gateway about `service`, concurrently.
pub async fn collect(
    http: &reqwest::Client,
    gateways: &[GatewayInfo],
    service: &str,
) -> ServiceLoad {
    let asks = gateways.iter().map(|g| async move {
        let url = format!("http://{}/api/v1/services/{service}", g.admin_addr);
        let answer = async {
            let resp = http
                .get(&url)
                .timeout(GATEWAY_TIMEOUT)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let status = resp.status().as_u16();
            let body = resp.bytes().await.map_err(|e| e.to_string())?;
            read_answer(&url, status, &body)
        }
        .await;
        (g.id.clone(), answer)
    });
    merge(futures::future::join_all(asks).await)
}

#[cfg(test)]
mod tests {
    use registry::InstanceState;
    use registry::wire::gateway::{InstanceStatus, InstanceView, ServiceSummary, StatsSnapshot};

    use super::*;

    fn view(
        rate: f64,
        p95: Option<f64>,
        held: i64,
        instances: &[(&str, i64, f64, bool)],
    ) -> Option<ServiceDetail> {
        let stats = |in_flight, rate, p95_ms| StatsSnapshot {
            in_flight,
            rate,
            p95_ms,
            ..StatsSnapshot::default()
        };
        Some(ServiceDetail {
            summary: ServiceSummary {
                name: "app".into(),
                ready_instances: instances.len(),
                total_instances: instances.len(),
                ejected_instances: 0,
                unconfirmed_instances: 0,
                stats: stats(0, rate, p95),
                held_now: held,
                held_total: 0,
                hold_timeouts_total: 0,
                retries_total: 0,
                retries_refused_total: 0,
                hedges_total: 0,
                hedges_won_total: 0,
                headers_p99_ms: None,
            },
            instances: instances
                .iter()
                .map(|&(id, in_flight, rate, ejected)| InstanceView {
                    id: id.into(),
                    addr: "127.0.0.1:1".into(),
                    version: String::new(),
                    zone: String::new(),
                    labels: BTreeMap::new(),
                    weight: 1,
                    state: InstanceStatus::Ready,
                    registry_state: InstanceState::Ready,
                    ejected,
                    ejected_for_ms: None,
                    consecutive_failures: 0,
                    ejections: 0,
                    age_secs: 1.0,
                    stats: stats(in_flight, rate, None),
                    peak_ewma_ms: 1.0,
                })
                .collect(),
        })
    }

    #[test]
    fn gateways_add_up_and_the_worst_p95_wins() {
        let load = merge(vec![
            (
                "g1".into(),
                Ok(view(
                    10.0,
                    Some(20.0),
                    1,
                    &[("a", 3, 6.0, false), ("b", 1, 4.0, true)],
                )),
            ),
            (
                "g2".into(),
                Ok(view(
                    5.0,
                    Some(80.0),
                    2,
                    &[("a", 2, 5.0, false), ("b", 0, 0.0, true)],
                )),
            ),
        ]);
        assert_eq!(load.rate, 15.0);
        assert_eq!(load.p95_ms, Some(80.0));
        assert_eq!(load.held, 3);
        assert_eq!(
            load.instances["a"],
            InstanceObservation {
                in_flight: 5.0,
                rate: 11.0,
                ejected: false
            }
        );
        assert!(load.instances["b"].ejected, "ejected by every gateway");
        assert!(load.complete());
    }

    #[test]
    fn a_silent_gateway_is_reported_not_counted_as_zero() {
        let load = merge(vec![
            ("g1".into(), Ok(view(10.0, None, 0, &[("a", 3, 6.0, true)]))),
            ("g2".into(), Err("connection refused".into())),
        ]);
        assert!(!load.complete());
        assert_eq!(
            load.silent,
            vec![("g2".to_owned(), "connection refused".to_owned())]
        );
        assert_eq!(load.gateways_answered, 1);
        assert!(
            load.instances["a"].ejected,
            "ejected by every gateway that answered"
        );
        assert!(
            !merge(vec![]).complete(),
            "no gateway at all is not a complete picture"
        );
    }

    #[test]
    fn an_answer_that_is_not_a_whole_service_detail_is_silence() {
        let url = "http://gw/api/v1/services/app";
        let whole = serde_json::to_vec(&view(2.5, None, 0, &[("a", 1, 2.5, false)])).unwrap();
        let read = read_answer(url, 200, &whole).unwrap().unwrap();
        assert_eq!(read.instances[0].stats.in_flight, 1);
        assert_eq!(
            read_answer(url, 404, b"{}").unwrap(),
            None,
            "no such service there yet"
        );

        // A gateway that renamed `in_flight` must not read as zero load.
        let renamed = String::from_utf8(whole)
            .unwrap()
            .replace("\"in_flight\"", "\"inflight\"");
        let err = read_answer(url, 200, renamed.as_bytes()).unwrap_err();
        assert!(err.contains("in_flight"), "{err}");
        let load = merge(vec![("g1".into(), Err(err))]);
        assert!(!load.complete());
        assert!(matches!(read_answer(url, 500, b""), Err(e) if e.contains("HTTP 500")));
    }
}
