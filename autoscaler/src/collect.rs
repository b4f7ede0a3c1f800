//! Load signals: what every gateway observes of a service, merged.
//!
//! Each gateway registered under `{prefix}/gateways/` serves
//! `GET /api/v1/services/{service}` on its admin address (see the gateway's
//! `admin.rs` for the fields). The collector asks every one of them each tick
//! and merges: in-flight requests and request rates add up across gateways;
//! the p95 latency is the worst gateway's (a conservative reading); held
//! requests add up. A gateway that does not answer is listed in `silent`, and
//! its silence is never read as zero load: the controller refuses to scale
//! down on a partial picture.

use std::collections::BTreeMap;
use std::time::Duration;

use registry::model::GatewayInfo;
use serde::Deserialize;

/// How long one gateway may take to answer.
pub const GATEWAY_TIMEOUT: Duration = Duration::from_millis(800);

/// The part of a gateway's service view the autoscaler reads.
#[derive(Debug, Clone, Deserialize)]
pub struct GatewayServiceView {
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub p95_ms: Option<f64>,
    #[serde(default)]
    pub held_now: i64,
    #[serde(default)]
    pub instances: Vec<GatewayInstanceView>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayInstanceView {
    pub id: String,
    #[serde(default)]
    pub in_flight: i64,
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub ejected: bool,
}

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

/// Merge what each gateway answered (or why it did not).
pub fn merge(answers: Vec<(String, Result<GatewayServiceView, String>)>) -> ServiceLoad {
    let mut load = ServiceLoad::default();
    let mut ejected_by: BTreeMap<String, usize> = BTreeMap::new();
    for (gateway, answer) in answers {
        match answer {
            Err(why) => load.silent.push((gateway, why)),
            Ok(view) => {
                load.gateways_answered += 1;
                load.rate += view.rate;
                load.held += view.held_now.max(0) as u64;
                load.p95_ms = match (load.p95_ms, view.p95_ms) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                for i in view.instances {
                    let obs = load.instances.entry(i.id.clone()).or_default();
                    obs.in_flight += i.in_flight.max(0) as f64;
                    obs.rate += i.rate;
                    if i.ejected {
                        *ejected_by.entry(i.id).or_default() += 1;
                    }
                }
            }
        }
    }
    for (id, obs) in &mut load.instances {
        obs.ejected =
            load.gateways_answered > 0 && ejected_by.get(id) == Some(&load.gateways_answered);
    }
    load
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
            match resp.status().as_u16() {
                200 => resp
                    .json::<GatewayServiceView>()
                    .await
                    .map_err(|e| format!("unreadable answer: {e}")),
                // The gateway knows no such service yet: no traffic for it there.
                404 => Ok(GatewayServiceView {
                    rate: 0.0,
                    p95_ms: None,
                    held_now: 0,
                    instances: Vec::new(),
                }),
                status => Err(format!("HTTP {status} from {url}")),
            }
        }
        .await;
        (g.id.clone(), answer)
    });
    merge(futures::future::join_all(asks).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(
        rate: f64,
        p95: Option<f64>,
        held: i64,
        instances: &[(&str, i64, f64, bool)],
    ) -> GatewayServiceView {
        GatewayServiceView {
            rate,
            p95_ms: p95,
            held_now: held,
            instances: instances
                .iter()
                .map(|&(id, in_flight, rate, ejected)| GatewayInstanceView {
                    id: id.into(),
                    in_flight,
                    rate,
                    ejected,
                })
                .collect(),
        }
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
    fn reads_the_gateway_admin_json() {
        let json = r#"{"name":"app","ready_instances":1,"rate":2.5,"p95_ms":null,"held_now":0,"in_flight":1,
            "instances":[{"id":"a","addr":"127.0.0.1:1","in_flight":1,"rate":2.5,"ejected":false,"p95_ms":3.0}]}"#;
        let v: GatewayServiceView = serde_json::from_str(json).unwrap();
        assert_eq!(v.instances[0].in_flight, 1);
        assert_eq!(v.p95_ms, None);
    }
}
