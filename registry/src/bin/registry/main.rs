//! `registry`: look at Shoal's service registry and join programs to it.
//!
//! - `main.rs`: the command line and the mapping from outcomes to exit codes.
//! - [`list`], [`watch`], [`run`], [`route`], [`certs`]: one file per subcommand.
//! - [`child`] and [`readiness`]: the wrapped program and how `run` decides it is up.
//! - `etcd`, `exit`, `out`: reaching etcd with a helpful error, exit codes,
//!   writing stdout; shared with `autoscaler`, in [`registry::cli`].

mod certs;
mod child;
mod list;
mod readiness;
mod route;
mod run;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry::cli::{etcd, exit, out, service_name};
use registry::{EtcdArgs, LogArgs};

const LONG_ABOUT: &str = "\
Look at Shoal's service registry in etcd, and make any program a registered instance.

  registry list [SERVICE]        the instances registered now
  registry watch [SERVICE]       every change, as it happens
  registry run --service NAME --port-env PORT -- CMD ARGS...
                                 run CMD and keep it registered while it serves
  registry route set NAME JSON | get [NAME] | delete NAME
                                 the gateways' routes
  registry certs put NAME --cert CHAIN.pem --key KEY.pem | list | delete NAME
                                 TLS certificates for gateways with --tls-registry-certs

Logs go to stderr, command output to stdout.

Exit codes:
  0  success (for `run`: the wrapped program's own exit code; 128+N if signal N killed it)
  1  runtime failure (e.g. the wrapped program never became ready)
  2  usage error, or etcd could not be reached";

#[derive(Debug, Parser)]
#[command(
    name = "registry",
    version,
    about = "Look at Shoal's service registry and join programs to it (exit codes: 0 ok, 1 runtime failure, 2 usage or etcd unreachable)",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(flatten)]
    etcd: EtcdArgs,

    #[command(flatten)]
    log: LogArgs,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List registered instances.
    List(list::ListArgs),
    /// Print every change to the registered instances until stopped.
    Watch(watch::WatchArgs),
    /// Run a program and keep it registered while it serves; drain it on
    /// SIGTERM/SIGINT or when its retire key appears.
    Run(Box<run::RunArgs>),
    /// Set, show or delete the gateways' routes (host and path prefix →
    /// service and policy).
    Route(route::RouteArgs),
    /// Put, list or delete the TLS certificates that gateways with
    /// --tls-registry-certs serve.
    Certs(certs::CertsArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let outcome = match cli.command {
        Command::List(args) => list::run(args, cli.etcd).await,
        Command::Watch(args) => watch::run(args, cli.etcd).await,
        Command::Run(args) => run::run(*args, cli.etcd).await,
        Command::Route(args) => route::run(args, cli.etcd).await,
        Command::Certs(args) => certs::run(args, cli.etcd).await,
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {failure}");
            ExitCode::from(failure.code())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
