//! The source notes' experiments, rerun on Shoal (`bench/seed-experiments.sh`,
//! issue 8). Each experiment starts its own fresh platform ([`platform`]:
//! etcd, a gateway, `autoscaler run` with the process driver and its app
//! servers),
//! measures one thing and returns a [`Row`]: Shoal's figure, the source's
//! figure, the goal, and whether it was met. [`run`] runs them in order and
//! [`Report::render`] prints the table with a summary line.
//!
//! - [`scaling`]: `/work` requests/s with 1 instance vs one per core.
//! - [`crash`]: instances crashing every 1–3 s under load; error %.
//! - [`rolling_restart`]: `autoscaler rollout restart` under load.
//! - [`stateful`]: a per-session counter, sticky vs in the distributed KV.
//! - [`dynamic`]: time from registration to first request, and from
//!   deregistration to last.
//! - [`peer_to_peer`]: `registry::PeerBalancer` vs the gateway.

pub mod crash;
pub mod dynamic;
pub mod peer_to_peer;
pub mod rolling_restart;
pub mod scaling;
pub mod stateful;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use shoal_tests::platform::PlatformBuilder;
use shoal_tests::{LoadReport, Platform};

/// What to run; see `bench/src/bin/seed_experiments.rs` for the variables.
#[derive(Debug, Clone)]
pub struct Config {
    /// Each measuring phase (scaling, rolling restart, dynamic, peer-to-peer).
    pub phase: Duration,
    /// Load time of the crash experiment.
    pub crash_load: Duration,
    /// Instances in the crash experiment.
    pub crash_instances: usize,
    /// Concurrent clients of every load.
    pub clients: usize,
    /// Sessions of the stateful experiment.
    pub sessions: usize,
    /// Increments per session and phase of the stateful experiment.
    pub increments: usize,
}

/// Whether an experiment met its goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// It did not run to the end: why.
    CouldNotRun(String),
}

/// One experiment's line in the table, and the details behind it.
#[derive(Debug, Clone)]
pub struct Row {
    pub experiment: &'static str,
    pub shoal: String,
    pub source: &'static str,
    pub goal: String,
    pub verdict: Verdict,
    /// Failure reasons, per-instance counts and the like; printed under the table.
    pub details: Vec<String>,
}

/// Every row, plus the crash row's error rate for the summary.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub crash_error_percent: Option<f64>,
}

impl Report {
    /// The table (Markdown), then `N experiments, N met ...` as the last line.
    pub fn render(&self) -> String {
        let header = [
            "experiment",
            "Shoal's figure",
            "the source's figure",
            "goal",
            "verdict",
        ];
        let cells: Vec<[String; 5]> = self
            .rows
            .iter()
            .map(|r| {
                let verdict = match &r.verdict {
                    Verdict::Met => "met".to_owned(),
                    Verdict::NotMet => "not met".to_owned(),
                    Verdict::CouldNotRun(why) => format!("could not run: {why}"),
                };
                [
                    r.experiment.to_owned(),
                    r.shoal.clone(),
                    r.source.to_owned(),
                    r.goal.clone(),
                    verdict,
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let padded: Vec<String> = cells
                .iter()
                .zip(widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect();
            format!("| {} |", padded.join(" | "))
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&header.map(str::to_owned)));
        let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
        let _ = writeln!(out, "|-{}-|", rule.join("-|-"));
        for row in &cells {
            let _ = writeln!(out, "{}", line(row));
        }
        let _ = write!(out, "{}", self.summary());
        out
    }

    /// `6 experiments, 5 met, 1 not met; crash: 0.012% errors`.
    pub fn summary(&self) -> String {
        let count =
            |v: &dyn Fn(&Verdict) -> bool| self.rows.iter().filter(|r| v(&r.verdict)).count();
        let met = count(&|v| *v == Verdict::Met);
        let not_met = count(&|v| *v == Verdict::NotMet);
        let failed = count(&|v| matches!(v, Verdict::CouldNotRun(_)));
        let mut out = format!("{} experiments, {met} met", self.rows.len());
        if not_met > 0 {
            let _ = write!(out, ", {not_met} not met");
        }
        if failed > 0 {
            let _ = write!(out, ", {failed} could not run");
        }
        match self.crash_error_percent {
            Some(p) => {
                let _ = write!(out, "; crash: {p:.3}% of requests failed");
            }
            None => out.push_str("; crash: no figure"),
        }
        out
    }

    /// Every row's details, for stderr.
    pub fn details(&self) -> String {
        let mut out = String::new();
        for row in &self.rows {
            for d in &row.details {
                let _ = writeln!(out, "{}: {d}", row.experiment);
            }
        }
        out
    }
}

/// Run every experiment in order; one that cannot run becomes a
/// `could not run` row and the others still run.
pub async fn run(config: &Config) -> Report {
    let mut report = Report::default();
    let outcome = |name: &'static str, source: &'static str, r: anyhow::Result<Row>| {
        r.unwrap_or_else(|e| Row {
            experiment: name,
            shoal: "-".into(),
            source,
            goal: "-".into(),
            verdict: Verdict::CouldNotRun(format!("{e:#}")),
            details: Vec::new(),
        })
    };
    eprintln!("seed-experiments: scaling");
    report.rows.push(outcome(
        scaling::NAME,
        scaling::SOURCE,
        scaling::run(config).await,
    ));
    eprintln!("seed-experiments: crash");
    match crash::run(config).await {
        Ok((row, percent)) => {
            report.crash_error_percent = Some(percent);
            report.rows.push(row);
        }
        Err(e) => report
            .rows
            .push(outcome(crash::NAME, crash::SOURCE, Err(e))),
    }
    eprintln!("seed-experiments: rolling restart");
    report.rows.push(outcome(
        rolling_restart::NAME,
        rolling_restart::SOURCE,
        rolling_restart::run(config).await,
    ));
    eprintln!("seed-experiments: stateful");
    report.rows.push(outcome(
        stateful::NAME,
        stateful::SOURCE,
        stateful::run(config).await,
    ));
    eprintln!("seed-experiments: dynamic");
    report.rows.push(outcome(
        dynamic::NAME,
        dynamic::SOURCE,
        dynamic::run(config).await,
    ));
    eprintln!("seed-experiments: peer-to-peer");
    report.rows.push(outcome(
        peer_to_peer::NAME,
        peer_to_peer::SOURCE,
        peer_to_peer::run(config).await,
    ));
    report
}

/// The platform every experiment starts (`shoal_tests::Platform`): a fresh
/// etcd, a gateway and `autoscaler run` (process driver, 500 ms interval,
/// 3 s leases); each experiment adds its routes, its instance count
/// (`.pinned(n)`, which waits until they are ready and routed) and its
/// instances' environment.
pub fn platform() -> PlatformBuilder {
    Platform::builder()
        .gateway(&[])
        .autoscalers(1)
        .autoscaler_flags(&["--interval", "500ms", "--lease-ttl", "3s"])
}

/// Let load run for `length` of a measuring phase: the phase's length is
/// the setting (`PHASE_SECS`, `CRASH_SECS`), so its end is a time, not a
/// condition.
pub async fn measure_for(length: Duration) {
    tokio::time::sleep(length).await;
}

/// Requests and failures by kind (`GET`, `POST`), with failure reasons.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// kind → (requests, failed).
    pub counts: BTreeMap<String, (u64, u64)>,
    /// "kind: reason" → count.
    pub reasons: BTreeMap<String, u64>,
    /// "kind: reason" → the first answer's `detail`, as evidence.
    pub examples: BTreeMap<String, String>,
}

impl Tally {
    /// Count one answer: 2xx is a success, anything else a failure whose
    /// reason is the status and the gateway's or app's `error` code, or the
    /// transport error's kind.
    pub async fn record(&mut self, kind: &str, answer: Result<reqwest::Response, reqwest::Error>) {
        let entry = self.counts.entry(kind.to_owned()).or_default();
        entry.0 += 1;
        let (reason, detail) = match answer {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => {
                let status = r.status();
                let body = r.json::<serde_json::Value>().await.unwrap_or_default();
                let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
                (format!("{status} {}", field("error")), field("detail"))
            }
            Err(e) if e.is_timeout() => ("timeout".into(), e.to_string()),
            Err(e) if e.is_connect() => ("connect error".into(), e.to_string()),
            Err(e) => ("transport error".into(), e.to_string()),
        };
        entry.1 += 1;
        let reason = format!("{kind}: {reason}");
        self.examples.entry(reason.clone()).or_insert(detail);
        *self.reasons.entry(reason).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Tally) {
        for (kind, (n, failed)) in &other.counts {
            let entry = self.counts.entry(kind.clone()).or_default();
            entry.0 += n;
            entry.1 += failed;
        }
        for (reason, n) in &other.reasons {
            *self.reasons.entry(reason.clone()).or_default() += n;
        }
        for (reason, detail) in &other.examples {
            self.examples
                .entry(reason.clone())
                .or_insert_with(|| detail.clone());
        }
    }

    /// (requests, failed) over every kind.
    pub fn total(&self) -> (u64, u64) {
        self.counts
            .values()
            .fold((0, 0), |(n, f), (n2, f2)| (n + n2, f + f2))
    }

    /// (requests, failed) of one kind.
    pub fn of(&self, kind: &str) -> (u64, u64) {
        self.counts.get(kind).copied().unwrap_or_default()
    }

    /// `failed N × reason (e.g. detail)` lines, most frequent first.
    pub fn reason_lines(&self) -> Vec<String> {
        let mut reasons: Vec<_> = self.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        reasons
            .into_iter()
            .map(|(reason, n)| {
                let example = self.examples.get(reason).map_or("", String::as_str);
                format!("failed {n} × {reason} (e.g. {example})")
            })
            .collect()
    }
}

/// `failed` of `n` as a percentage (0 when nothing was sent).
pub fn percent(failed: u64, n: u64) -> f64 {
    if n == 0 {
        0.0
    } else {
        failed as f64 * 100.0 / n as f64
    }
}

/// Largest share over smallest among `counts` (∞ when an instance got none
/// of `expected` instances).
pub fn spread(counts: &BTreeMap<String, u64>, expected: usize) -> f64 {
    if counts.len() < expected || counts.is_empty() {
        return f64::INFINITY;
    }
    let max = counts.values().max().copied().unwrap_or(0) as f64;
    let min = counts.values().min().copied().unwrap_or(0) as f64;
    if min == 0.0 { f64::INFINITY } else { max / min }
}

/// The first ten failures of a load, one detail line each.
pub fn failure_lines(report: &LoadReport) -> impl Iterator<Item = String> + '_ {
    report
        .failures
        .iter()
        .take(10)
        .map(|f| format!("failed: {f}"))
}

/// Pick a verdict.
pub fn verdict(met: bool) -> Verdict {
    if met { Verdict::Met } else { Verdict::NotMet }
}
