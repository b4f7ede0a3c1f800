//! `autoscaler`: parse flags, set up logging, run the subcommand, map its
//! outcome to an exit code (0 ok, 1 runtime failure, 2 usage error or etcd
//! unreachable). The subcommands live in the library: [`autoscaler::run`]
//! and [`autoscaler::cli`].

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry::EtcdArgs;
use registry::LogArgs;
use registry::cli::exit::Failure;

use autoscaler::cli::apply::ApplyArgs;
use autoscaler::cli::events::EventsArgs;
use autoscaler::cli::policy::PolicyCommand;
use autoscaler::cli::rollout::RolloutCommand;
use autoscaler::cli::scale::ScaleArgs;
use autoscaler::cli::services::{DescribeCommand, GetCommand};
use autoscaler::cli::status::StatusArgs;
use autoscaler::run::RunConfig;

const LONG_ABOUT: &str = "\
Shoal's autoscaler: the controller, and the commands that steer it.

  autoscaler run                      the controller (leader-elected; scales every service with a policy)
  autoscaler apply -f shoal.yaml [--dry-run] [--prune]
                                      declare services, policies and routes (a diff, then one transaction)
  autoscaler get services             every declared service: version, policy, instances, rollout
  autoscaler describe service NAME    one service in full: spec, instances, history, events
  autoscaler policy set SERVICE --min N --max N --metric inflight|rps|p95-latency|cpu --target X
  autoscaler policy get [SERVICE]     the policies, as a table or JSON
  autoscaler policy delete SERVICE
  autoscaler scale SERVICE N          pin a service at N instances (--unpin to hand it back to the metric)
  autoscaler status [SERVICE]         instances, bounds and the last decision, per service
  autoscaler events SERVICE [--follow]
  autoscaler rollout restart SERVICE [--max-surge N] [--max-unavailable N]
                                      replace every instance, a few at a time (progress until done)
  autoscaler rollout status SERVICE   a rollout's progress and the versions instances run
  autoscaler rollout undo SERVICE     put the previous spec back (the controller rolls onto it)
  autoscaler completions bash|zsh|fish|elvish|powershell
                                      shell completions on stdout

A running controller also rolls every service with a policy on SIGUSR2.

Logs go to stderr, command output to stdout.

Exit codes:
  0  success
  1  runtime failure (e.g. no policy to scale)
  2  usage error (including an invalid policy), or etcd could not be reached";

/// Shoal's autoscaler.
#[derive(Debug, Parser)]
#[command(
    name = "autoscaler",
    version,
    about = "Shoal's autoscaler: the controller and the commands that steer it (exit codes: 0 ok, 1 runtime failure, 2 usage or etcd unreachable)",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    /// Global: accepted before or after the subcommand.
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(subcommand)]
    command: Command,
}

impl Cli {
    /// Parse, and hand the etcd flags to the subcommand.
    fn parse_args(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, clap::Error> {
        let mut cli = Cli::try_parse_from(args)?;
        let etcd = cli.etcd.clone();
        match &mut cli.command {
            Command::Run(config) => config.etcd = etcd,
            Command::Policy(command) => command.etcd = etcd,
            Command::Scale(args) => args.etcd = etcd,
            Command::Status(args) => args.etcd = etcd,
            Command::Events(args) => args.etcd = etcd,
            Command::Rollout(command) => *command.etcd_mut() = etcd,
            Command::Apply(args) => args.etcd = etcd,
            Command::Get(command) => command.etcd = etcd,
            Command::Describe(command) => command.etcd = etcd,
            Command::Completions { .. } => {}
        }
        Ok(cli)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: elect a leader, scale every service with a policy.
    Run(Box<RunConfig>),
    /// Declare services, policies and routes from a file: a diff, then one transaction.
    Apply(ApplyArgs),
    /// List declared objects (`get services`).
    Get(GetCommand),
    /// Show one object in full (`describe service NAME`).
    Describe(DescribeCommand),
    /// Set, show or delete scaling policies.
    Policy(PolicyCommand),
    /// Pin a service at N instances (or `--unpin`): the pin overrides the metric.
    Scale(ScaleArgs),
    /// Per service: instances by state, bounds, target, the last decision.
    Status(StatusArgs),
    /// A service's scaling events, oldest first; `--follow` for new ones.
    Events(EventsArgs),
    /// Rolling restarts.
    Rollout(RolloutCommand),
    /// Print shell completions, e.g. `autoscaler completions bash > /etc/bash_completion.d/autoscaler`.
    Completions { shell: clap_complete::Shell },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_args(std::env::args_os()).unwrap_or_else(|e| e.exit());
    cli.log.init();
    let outcome = match cli.command {
        Command::Run(config) => {
            return match autoscaler::run::run(*config).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "autoscaler failed");
                    ExitCode::FAILURE
                }
            };
        }
        Command::Policy(command) => autoscaler::cli::policy::run(command).await,
        Command::Scale(args) => autoscaler::cli::scale::run(args).await,
        Command::Status(args) => autoscaler::cli::status::run(args).await,
        Command::Events(args) => autoscaler::cli::events::run(args).await,
        Command::Rollout(command) => autoscaler::cli::rollout::run(command).await,
        Command::Apply(args) => autoscaler::cli::apply::run(args).await,
        Command::Get(command) => autoscaler::cli::services::get(command).await,
        Command::Describe(command) => autoscaler::cli::services::describe(command).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "autoscaler",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => report(failure),
    }
}

fn report(failure: Failure) -> ExitCode {
    eprintln!("error: {failure}");
    ExitCode::from(failure.code())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    fn parse(args: &[&str]) -> Result<Cli, String> {
        Cli::parse_args(
            std::iter::once("autoscaler")
                .chain(args.iter().copied())
                .map(Into::into),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn etcd_flags_go_before_or_after_the_subcommand() {
        for args in [
            &["--etcd", "http://10.0.0.1:2379", "--prefix", "/p", "status"][..],
            &["status", "--etcd", "http://10.0.0.1:2379", "--prefix", "/p"][..],
        ] {
            let Command::Status(status) = parse(args).unwrap().command else {
                panic!("not status")
            };
            assert_eq!(status.etcd.endpoints, ["http://10.0.0.1:2379"], "{args:?}");
            assert_eq!(status.etcd.prefix.prefix(), "/p", "{args:?}");
        }
        let Command::Run(config) = parse(&["--etcd", "http://10.0.0.2:2379", "run"])
            .unwrap()
            .command
        else {
            panic!("not run")
        };
        assert_eq!(config.etcd.endpoints, ["http://10.0.0.2:2379"]);
        let Command::Rollout(r) = parse(&["--prefix", "/q", "rollout", "restart", "app"])
            .unwrap()
            .command
        else {
            panic!("not rollout")
        };
        let autoscaler::cli::rollout::RolloutAction::Restart(r) = r.action else {
            panic!("not restart")
        };
        assert_eq!(r.etcd.prefix.prefix(), "/q");
    }

    #[test]
    fn rollout_and_completions_parse() {
        let Command::Rollout(r) = parse(&["rollout", "restart", "app", "--max-surge", "2"])
            .unwrap()
            .command
        else {
            panic!("not rollout")
        };
        let autoscaler::cli::rollout::RolloutAction::Restart(r) = r.action else {
            panic!("not restart")
        };
        assert_eq!((r.max_surge, r.max_unavailable, r.no_wait), (2, 0, false));
        let err = parse(&["rollout", "restart", "app", "--max-surge", "many"])
            .err()
            .unwrap();
        assert!(err.contains("--max-surge"), "{err}");
        assert!(matches!(
            parse(&["completions", "bash"]).unwrap().command,
            Command::Completions { .. }
        ));
        let mut script = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "autoscaler",
            &mut script,
        );
        let script = String::from_utf8(script).unwrap();
        assert!(script.contains("rollout") && script.contains("--max-surge"));
    }

    #[test]
    fn run_keeps_its_flags() {
        let cli = parse(&[
            "run",
            "--etcd",
            "http://127.0.0.1:1",
            "--driver",
            "process",
            "--log-dir",
            "/tmp/x",
            "--stop-on-exit",
            "--interval",
            "500ms",
        ])
        .unwrap();
        let Command::Run(config) = cli.command else {
            panic!("not run")
        };
        assert!(config.stop_on_exit);
        assert_eq!(config.etcd.endpoints, ["http://127.0.0.1:1"]);
    }

    #[test]
    fn policy_set_fills_the_defaults() {
        let cli = parse(&[
            "policy", "set", "app", "--min", "1", "--max", "4", "--metric", "inflight", "--target",
            "8", "--prefix", "/t",
        ])
        .unwrap();
        let Command::Policy(command) = cli.command else {
            panic!("not policy")
        };
        assert_eq!(command.etcd.prefix.prefix(), "/t");
        let autoscaler::cli::policy::PolicyAction::Set(set) = command.action else {
            panic!("not set")
        };
        let policy = set.policy().unwrap();
        assert_eq!(
            serde_json::to_value(&policy).unwrap(),
            serde_json::json!({
                "service": "app", "min": 1, "max": 4, "metric": "inflight", "target": 8.0,
                "tolerance": 0.1, "scale_up_stabilization_secs": 0,
                "scale_down_stabilization_secs": 30, "max_scale_up_step": null,
                "max_scale_down_step": null, "step_period_secs": 15, "warmup_secs": 0,
            })
        );
    }

    #[test]
    fn policy_set_takes_every_flag() {
        let cli = parse(&[
            "policy",
            "set",
            "api",
            "--min",
            "0",
            "--max",
            "10",
            "--metric",
            "p95-latency",
            "--target",
            "250",
            "--tolerance",
            "0.2",
            "--scale-up-window",
            "5s",
            "--scale-down-window",
            "2m",
            "--max-up-step",
            "2",
            "--max-down-step",
            "1",
            "--step-period",
            "10s",
            "--warmup",
            "3",
        ])
        .unwrap();
        let Command::Policy(command) = cli.command else {
            panic!("not policy")
        };
        let autoscaler::cli::policy::PolicyAction::Set(set) = command.action else {
            panic!("not set")
        };
        let p = set.policy().unwrap();
        assert_eq!((p.min, p.max, p.target, p.tolerance), (0, 10, 250.0, 0.2));
        assert_eq!(
            (
                p.scale_up_stabilization_secs,
                p.scale_down_stabilization_secs
            ),
            (5, 120)
        );
        assert_eq!(
            (p.max_scale_up_step, p.max_scale_down_step),
            (Some(2), Some(1))
        );
        assert_eq!((p.step_period_secs, p.warmup_secs), (10, 3));
    }

    fn set_error(args: &[&str]) -> String {
        let mut all = vec!["policy", "set", "app", "--metric", "rps", "--target", "100"];
        all.extend_from_slice(args);
        let cli = parse(&all).unwrap();
        let Command::Policy(command) = cli.command else {
            panic!("not policy")
        };
        let autoscaler::cli::policy::PolicyAction::Set(set) = command.action else {
            panic!("not set")
        };
        let failure = set.policy().unwrap_err();
        assert_eq!(failure.code(), 2, "{failure}");
        failure.to_string()
    }

    #[test]
    fn invalid_policies_are_usage_errors_that_say_what_is_wrong() {
        assert_eq!(
            set_error(&["--min", "5", "--max", "3"]),
            "invalid policy: policy.min: min 5 is above max 3"
        );
        assert_eq!(
            set_error(&["--min", "0", "--max", "0"]),
            "invalid policy: policy.max: must be at least 1"
        );
        assert!(
            set_error(&["--min", "1", "--max", "2", "--tolerance", "1.5"])
                .contains("policy.tolerance: 1.5 must be in [0, 1)")
        );
        assert!(
            set_error(&["--min", "1", "--max", "2", "--max-up-step", "0"])
                .contains("0 would forbid scaling")
        );
    }

    #[test]
    fn bad_arguments_are_refused_at_parse_time() {
        let base = [
            "policy", "set", "app", "--min", "1", "--max", "2", "--target", "1",
        ];
        let with = |extra: &[&str]| {
            let mut all = base.to_vec();
            all.extend_from_slice(extra);
            parse(&all).err().unwrap()
        };
        assert!(
            with(&["--metric", "memory"])
                .contains("unknown metric `memory`; use inflight, rps, p95-latency or cpu")
        );
        assert!(
            with(&["--metric", "cpu", "--warmup", "500ms"])
                .contains("not a whole number of seconds")
        );
        assert!(with(&["--metric", "cpu", "--min", "-1"]).contains("--min"));
        let err = parse(&[
            "policy", "set", "app", "--max", "2", "--metric", "cpu", "--target", "1",
        ])
        .err()
        .unwrap();
        assert!(err.contains("--min <MIN>"), "{err}");
        let err = parse(&["scale", "a b", "3"]).err().unwrap();
        assert!(err.contains("use letters, digits"), "{err}");
        let err = parse(&["scale", "app", "many"]).err().unwrap();
        assert!(err.contains("invalid digit"), "{err}");
        let err = parse(&["events", "app", "--limit", "0"]).err().unwrap();
        assert!(err.contains("0 is not in 1..=10000"), "{err}");
        let err = parse(&["status", "--output", "yaml"]).err().unwrap();
        assert!(err.contains("possible values: table, json"), "{err}");
    }

    #[test]
    fn read_commands_parse() {
        assert!(matches!(
            parse(&["status", "app", "-o", "json"]).unwrap().command,
            Command::Status(StatusArgs {
                service: Some(_),
                ..
            })
        ));
        let Command::Events(events) = parse(&["events", "app", "-n", "5", "--follow"])
            .unwrap()
            .command
        else {
            panic!("not events")
        };
        assert_eq!((events.limit, events.follow), (5, true));
        let Command::Scale(scale) = parse(&["scale", "app", "3", "--etcd", "http://127.0.0.1:9"])
            .unwrap()
            .command
        else {
            panic!("not scale")
        };
        assert_eq!((scale.service.as_str(), scale.replicas), ("app", Some(3)));
        let Command::Scale(unpin) = parse(&["scale", "app", "--unpin"]).unwrap().command else {
            panic!("not scale")
        };
        assert!(unpin.unpin && unpin.replicas.is_none());
        let err = parse(&["scale", "app"]).err().unwrap();
        assert!(err.contains("<REPLICAS>"), "{err}");
        let err = parse(&["scale", "app", "3", "--unpin"]).err().unwrap();
        assert!(err.contains("cannot be used with"), "{err}");
        assert_eq!(scale.etcd.endpoints, ["http://127.0.0.1:9"]);
        // Out of range before any etcd call.
        let err = parse(&["scale", "app", "1001"]).err().unwrap();
        assert!(err.contains("1001 is not in 0..=1000"), "{err}");
        // The TLS flags are global: accepted after the subcommand.
        let Command::Status(status) = parse(&["status", "--etcd-ca", "/ca.pem"]).unwrap().command
        else {
            panic!("not status")
        };
        assert_eq!(
            status.etcd.etcd_ca.as_deref(),
            Some(std::path::Path::new("/ca.pem"))
        );
    }
}
