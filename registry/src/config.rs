//! Command-line plumbing every Shoal binary shares: how to reach etcd, which key
//! prefix to use, and how to log.
//!
//! Binaries embed [`EtcdArgs`] and [`LogArgs`] with `#[command(flatten)]`, so
//! `--etcd`, `--prefix` and `--log-format` mean the same everywhere.

use std::time::Duration;

use clap::{Args, ValueEnum};
use etcd_client::{Client, ConnectOptions};

use crate::keys::{DEFAULT_PREFIX, Keys};
use crate::registration::{DEFAULT_TTL, MIN_TTL};

/// Upper bound for any single etcd call Shoal makes outside a stream, so that a
/// hung connection is noticed instead of awaited forever.
pub const ETCD_CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Where etcd is and which part of its keyspace is Shoal's. The flags are
/// `global`, so a CLI with subcommands accepts them before or after the subcommand.
#[derive(Debug, Clone, Args)]
pub struct EtcdArgs {
    /// etcd endpoints, comma-separated.
    #[arg(
        long = "etcd",
        global = true,
        env = "SHOAL_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ',',
        value_parser = parse_endpoint
    )]
    pub endpoints: Vec<String>,

    /// Key prefix under which everything Shoal stores lives.
    #[arg(long, global = true, env = "SHOAL_PREFIX", default_value = DEFAULT_PREFIX, value_parser = parse_prefix)]
    pub prefix: Keys,

    /// etcd user name, when etcd has authentication enabled.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ETCD_USER",
        requires = "etcd_password"
    )]
    pub etcd_user: Option<String>,

    /// etcd password for `--etcd-user`.
    #[arg(
        long,
        global = true,
        env = "SHOAL_ETCD_PASSWORD",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl Default for EtcdArgs {
    /// The flags' defaults (a CLI fills in the parsed values).
    fn default() -> Self {
        EtcdArgs {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: Keys::default(),
            etcd_user: None,
            etcd_password: None,
        }
    }
}

fn parse_endpoint(s: &str) -> Result<String, String> {
    let s = s.trim();
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| format!("`{s}` needs a scheme; use e.g. http://127.0.0.1:2379"))?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains('/') {
        return Err(format!(
            "`{s}` is not host:port; use e.g. http://127.0.0.1:2379"
        ));
    }
    Ok(s.to_owned())
}

fn parse_prefix(s: &str) -> Result<Keys, String> {
    Keys::new(s).map_err(|e| e.problem)
}

impl EtcdArgs {
    /// Arguments for one endpoint and the default prefix (tests, tools).
    pub fn for_endpoint(endpoint: impl Into<String>) -> Self {
        EtcdArgs {
            endpoints: vec![endpoint.into()],
            prefix: Keys::default(),
            etcd_user: None,
            etcd_password: None,
        }
    }

    /// Build a client. The connection is lazy: this succeeds while etcd is
    /// down, and calls fail (and are retried by their owners) until it is up.
    pub async fn connect(&self) -> Result<Client, etcd_client::Error> {
        Client::connect(&self.endpoints, Some(self.connect_options())).await
    }

    fn connect_options(&self) -> ConnectOptions {
        // etcd's default gRPC keep-alive policy answers pings more frequent than
        // every 5 s with GOAWAY, so the HTTP/2 pings stay at 10 s; dead peers on
        // loopback are noticed at once by the reset anyway.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
            .with_keep_alive_while_idle(false);
        if let (Some(user), Some(password)) = (&self.etcd_user, &self.etcd_password) {
            options = options.with_user(user, password);
        }
        options
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, global = true, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl LogArgs {
    /// Install the global subscriber; the filter comes from `RUST_LOG` (default `info`).
    pub fn init(&self) {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr);
        match self.log_format {
            LogFormat::Text => builder.init(),
            LogFormat::Json => builder.json().init(),
        }
    }
}

/// Parse a lease TTL: a duration no shorter than [`MIN_TTL`].
pub fn parse_lease_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl < MIN_TTL {
        return Err(format!(
            "{ttl:?} is below the {MIN_TTL:?} minimum (shorter leases expire on ordinary pauses); use e.g. {DEFAULT_TTL:?}"
        ));
    }
    Ok(ttl)
}

/// Parse a duration given as seconds (`5`, `0.5`) or with a unit (`250ms`, `5s`, `2m`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; use e.g. 5s, 250ms or 2m"))?;
    if !value.is_finite() || value < 0.0 || value * scale > 86_400.0 * 365.0 {
        return Err(format!("`{s}` is out of range; use e.g. 5s, 250ms or 2m"));
    }
    Ok(Duration::from_secs_f64(value * scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        etcd: EtcdArgs,
    }

    #[test]
    fn endpoints_and_prefix_are_checked_at_parse_time() {
        let cli = Cli::try_parse_from(["x", "--etcd", "http://a:1,http://b:2", "--prefix", "/t/"])
            .unwrap();
        assert_eq!(cli.etcd.endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(cli.etcd.prefix.prefix(), "/t");
        let err = Cli::try_parse_from(["x", "--etcd", "127.0.0.1:2379"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("needs a scheme"), "{err}");
        let err = Cli::try_parse_from(["x", "--prefix", "shoal"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("must start with `/`"), "{err}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("-1s").is_err());
        assert_eq!(parse_lease_ttl("2s").unwrap(), Duration::from_secs(2));
        assert!(
            parse_lease_ttl("1500ms")
                .unwrap_err()
                .contains("below the 2s minimum")
        );
    }
}
