//! `autoscaler`: parse flags, set up logging, run the subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use registry::LogArgs;

use autoscaler::run::RunConfig;

/// Shoal's autoscaler.
#[derive(Debug, Parser)]
#[command(name = "autoscaler", version)]
struct Cli {
    #[command(flatten)]
    log: LogArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controller: elect a leader, scale every service with a policy.
    Run(RunConfig),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.log.init();
    let result = match cli.command {
        Command::Run(config) => autoscaler::run::run(config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "autoscaler failed");
            ExitCode::FAILURE
        }
    }
}
