//! `autoscaler get services` and `autoscaler describe service NAME`: what
//! the registry says about declared services — the spec and its version,
//! the policy, the instances (and which version each runs), the rollout in
//! progress, the spec history and the newest events. A service scaled by a
//! policy with no spec (it runs the controller's default command) is not
//! declared: `get services` names it on stderr, and `describe service`
//! says where it is shown (`autoscaler status`).

use anyhow::anyhow;
use clap::{Args, Subcommand};
use registry::cli::exit::{Failure, OK};
use registry::cli::{etcd, out};
use registry::model::{Rollout, ScalingPolicy};
use registry::spec::Service;
use registry::{EtcdArgs, Instance, InstanceState, Store};
use serde::Serialize;

use super::{Outcome, OutputFormat, pretty_json, service_name};

/// `autoscaler get ...`.
#[derive(Debug, Args)]
pub struct GetCommand {
    #[arg(skip)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub what: GetWhat,
}

#[derive(Debug, Subcommand)]
pub enum GetWhat {
    /// Every declared service: version, how it runs, its policy, instances, rollout.
    Services {
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// `autoscaler describe ...`.
#[derive(Debug, Args)]
pub struct DescribeCommand {
    #[arg(skip)]
    pub etcd: EtcdArgs,
    #[command(subcommand)]
    pub what: DescribeWhat,
}

#[derive(Debug, Subcommand)]
pub enum DescribeWhat {
    /// One service in full: spec, policy, instances, rollout, history, events.
    Service {
        #[arg(value_parser = service_name)]
        name: String,
        #[arg(long, short, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
}

/// One declared service as the registry has it.
#[derive(Debug, Serialize)]
pub struct ServiceView {
    pub spec: Service,
    pub version: String,
    pub policy: Option<ScalingPolicy>,
    pub instances: Vec<Instance>,
    pub rollout: Option<Rollout>,
}

impl ServiceView {
    async fn read(store: &Store, spec: Service) -> Result<ServiceView, registry::StoreError> {
        let name = spec.name.clone();
        Ok(ServiceView {
            version: spec.version(),
            policy: store.policy(&name).await?.map(|p| p.value),
            instances: store.instances(&name).await?,
            rollout: store.rollout(&name).await?,
            spec,
        })
    }

    /// `2/3 ready, 1 on 1a2b3c4d`: instances, and how many run another version.
    fn instances_line(&self) -> String {
        let ready = self
            .instances
            .iter()
            .filter(|i| i.state == InstanceState::Ready)
            .count();
        let stale = self
            .instances
            .iter()
            .filter(|i| i.version != self.version)
            .count();
        let mut line = format!("{ready}/{} ready", self.instances.len());
        if stale > 0 {
            line.push_str(&format!(", {stale} on an older version"));
        }
        line
    }
}

/// What `get services` says of scaled services that have no spec.
fn undeclared_note(services: &[String]) -> String {
    format!(
        "also scaled, with no spec (each runs the autoscaler's default command): {}; autoscaler status shows them, autoscaler apply -f FILE declares one",
        services.join(", ")
    )
}

fn runs(spec: &Service) -> String {
    match (&spec.process, &spec.docker) {
        (Some(p), _) => p.argv.join(" "),
        (None, Some(d)) => format!("docker {}", d.image),
        (None, None) => "-".to_owned(),
    }
}

fn policy_line(policy: Option<&ScalingPolicy>) -> String {
    match policy {
        Some(p) => {
            let bounds = match p.pinned {
                Some(n) => format!("pinned={n}"),
                None => format!("{}..{}", p.min, p.max),
            };
            format!(
                "{bounds} {} {}",
                super::policy::metric_name(p.metric),
                p.target
            )
        }
        None => "none (not scaled)".to_owned(),
    }
}

pub async fn get(command: GetCommand) -> Outcome {
    let GetWhat::Services { output } = command.what;
    let store = etcd::store(&command.etcd).await?;
    let failure = |e| etcd::store_failure(&command.etcd, e);
    let mut views = Vec::new();
    for spec in store.services().await.map_err(failure)? {
        views.push(ServiceView::read(&store, spec).await.map_err(failure)?);
    }
    let lines = match output {
        OutputFormat::Json => vec![pretty_json(&views)?],
        OutputFormat::Table => {
            if views.is_empty() {
                eprintln!(
                    "no services declared under {}; declare one with autoscaler apply -f FILE",
                    command.etcd.prefix.services()
                );
            }
            // Scaled services with no spec run the controller's default
            // command: not declared, but not to be mistaken for absent.
            let undeclared: Vec<String> = store
                .policies()
                .await
                .map_err(failure)?
                .into_iter()
                .map(|p| p.service)
                .filter(|service| !views.iter().any(|v| &v.spec.name == service))
                .collect();
            if !undeclared.is_empty() {
                eprintln!("{}", undeclared_note(&undeclared));
            }
            let rows: Vec<[String; 7]> = views
                .iter()
                .map(|v| {
                    [
                        v.spec.name.clone(),
                        v.version[..8].to_owned(),
                        v.spec.registration.as_str().to_owned(),
                        runs(&v.spec),
                        policy_line(v.policy.as_ref()),
                        v.instances_line(),
                        if v.rollout.is_some() { "rolling" } else { "-" }.to_owned(),
                    ]
                })
                .collect();
            out::table(
                [
                    "SERVICE",
                    "VERSION",
                    "REGISTRATION",
                    "RUNS",
                    "POLICY",
                    "INSTANCES",
                    "ROLLOUT",
                ],
                &rows,
            )
        }
    };
    out::finish(lines)?;
    Ok(OK)
}

pub async fn describe(command: DescribeCommand) -> Outcome {
    let DescribeWhat::Service { name, output } = command.what;
    let store = etcd::store(&command.etcd).await?;
    let failure = |e| etcd::store_failure(&command.etcd, e);
    let Some(spec) = store.service(&name).await.map_err(failure)? else {
        let scaled = if store.policy(&name).await.map_err(failure)?.is_some() {
            format!(
                " ({name} is scaled by its policy and runs the autoscaler's default command: autoscaler status {name} shows it)"
            )
        } else {
            String::new()
        };
        return Err(Failure::Runtime(anyhow!(
            "no service spec for {name}{scaled}; declare one with autoscaler apply -f FILE (autoscaler get services lists them)"
        )));
    };
    let spec = spec.value;
    let view = ServiceView::read(&store, spec).await.map_err(failure)?;
    let history = store.service_history(&name).await.map_err(failure)?;
    let events = store.events(&name, 10).await.map_err(failure)?;
    if output == OutputFormat::Json {
        #[derive(Serialize)]
        struct Described<'a> {
            #[serde(flatten)]
            view: &'a ServiceView,
            history: Vec<String>,
            events: Vec<&'a registry::model::ScalingEvent>,
        }
        let described = Described {
            view: &view,
            history: history.iter().map(|(_, s)| s.version()).collect(),
            events: events.iter().map(|(_, e)| e).collect(),
        };
        out::finish([pretty_json(&described)?])?;
        return Ok(OK);
    }
    let spec_json = serde_json::to_string_pretty(&view.spec)
        .map_err(|e| Failure::Runtime(anyhow!("cannot encode the spec: {e}")))?;
    let mut lines = vec![
        format!("service:       {name}"),
        format!("version:       {}", view.version),
        format!("registration:  {}", view.spec.registration.as_str()),
        format!("policy:        {}", policy_line(view.policy.as_ref())),
        format!("instances:     {}", view.instances_line()),
    ];
    for i in &view.instances {
        let marker = if i.version == view.version {
            ""
        } else {
            " (older version)"
        };
        lines.push(format!(
            "  {} {} {} {}{marker}",
            i.id,
            i.state,
            i.addr,
            if i.version.is_empty() {
                "-"
            } else {
                &i.version
            }
        ));
    }
    lines.push(match &view.rollout {
        Some(r) => format!(
            "rollout:       in progress, requested by {} at {} ({})",
            r.requested_by,
            r.requested_at.to_rfc3339(),
            super::rollout::progress_line(&name, Some(r), &view.instances)
        ),
        None => "rollout:       none".to_owned(),
    });
    lines.push(format!(
        "history:       {}",
        if history.is_empty() {
            "no earlier versions".to_owned()
        } else {
            history
                .iter()
                .map(|(_, s)| s.version()[..8].to_owned())
                .collect::<Vec<_>>()
                .join(", ")
        }
    ));
    lines.push("spec:".to_owned());
    lines.extend(spec_json.lines().map(|l| format!("  {l}")));
    lines.push("events (newest first):".to_owned());
    if events.is_empty() {
        lines.push("  none".to_owned());
    }
    for (_, e) in &events {
        lines.push(format!(
            "  {} {} {}",
            e.at.format("%H:%M:%S"),
            e.kind,
            e.reason
        ));
    }
    out::finish(lines)?;
    Ok(OK)
}
