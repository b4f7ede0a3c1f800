//! The operator subcommands of `autoscaler`, one file each: [`apply`] (a
//! file of services, policies and routes), [`services`] (`get services`,
//! `describe service`), [`policy`] (`set`/`get`/`delete`), [`scale`] (pin a
//! replica count), [`status`], [`events`] and [`rollout`] (rolling
//! restarts, their status, undoing a spec change). This file holds what they share: argument parsers and the
//! `--output` choice.
//!
//! Every command returns an [`Outcome`]; registry access goes through the
//! typed store ([`registry::store`]), its errors through
//! [`registry::cli::etcd::store_failure`], so an unreachable etcd is exit
//! code 2 with advice.

pub mod apply;
pub mod events;
pub mod policy;
pub mod rollout;
pub mod scale;
pub mod services;
pub mod status;

use clap::ValueEnum;
use registry::cli::exit::Failure;
use registry::config::parse_duration;

pub use registry::cli::exit::Outcome;
pub use registry::cli::service_name;

/// How a read command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (or one line per event).
    Table,
    /// JSON, for scripts.
    Json,
}

/// A duration in whole seconds (`30s`, `2m`, `0`), as policies store them.
pub fn whole_seconds(s: &str) -> Result<u64, String> {
    let duration = parse_duration(s)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "`{s}` is not a whole number of seconds; policies count in seconds, e.g. 30s"
        ));
    }
    Ok(duration.as_secs())
}

/// `serde_json::to_string_pretty`, as a runtime failure if it cannot encode.
pub fn pretty_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot encode as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_accepts_units_and_refuses_fractions() {
        assert_eq!(whole_seconds("0s").unwrap(), 0);
        assert_eq!(whole_seconds("30s").unwrap(), 30);
        assert_eq!(whole_seconds("2m").unwrap(), 120);
        assert_eq!(whole_seconds("15").unwrap(), 15);
        assert!(
            whole_seconds("1500ms")
                .unwrap_err()
                .contains("not a whole number of seconds")
        );
        assert!(
            whole_seconds("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }
}
