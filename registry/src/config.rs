//! Command-line plumbing every Shoal binary shares: how to reach etcd, which key
//! prefix to use, how to log, and the runtime its `--workers` asks for.
//!
//! Binaries embed [`EtcdArgs`] and [`LogArgs`] with `#[command(flatten)]`, so
//! `--etcd`, `--prefix` and `--log-format` mean the same everywhere.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use etcd_client::{Client, ConnectOptions};

use crate::etcd_tls::{EtcdConfigError, EtcdSecurity};
use crate::keys::{DEFAULT_PREFIX, Keys};
use crate::registration::{DEFAULT_TTL, MIN_TTL};

/// The tokio runtime of a Shoal binary with `workers` worker threads
/// (`None`: one per core). One worker gets a current-thread runtime: no
/// work-stealing machinery, no wake-ups between threads on the hot path,
/// for a process that is one core's worth of a machine it shares.
pub fn runtime(workers: Option<u16>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    if let Some(n) = workers.filter(|&n| n > 1) {
        builder.worker_threads(n.into());
    }
    builder.enable_all().build()
}

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

    /// PEM file of the CA that signed etcd's server certificate; required
    /// with `https://` endpoints (the system's trust roots are not used).
    #[arg(long, global = true, env = "SHOAL_ETCD_CA", value_name = "FILE")]
    pub etcd_ca: Option<PathBuf>,

    /// PEM client certificate, for an etcd started with `--client-cert-auth`
    /// (needs `--etcd-key`).
    #[arg(long, global = true, env = "SHOAL_ETCD_CERT", value_name = "FILE")]
    pub etcd_cert: Option<PathBuf>,

    /// PEM private key of `--etcd-cert`.
    #[arg(long, global = true, env = "SHOAL_ETCD_KEY", value_name = "FILE")]
    pub etcd_key: Option<PathBuf>,
}

/// Why no etcd client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The flags cannot work together, or a TLS file cannot be read.
    #[error("{0}")]
    Config(#[from] EtcdConfigError),
    /// The client refused the settings, or (with `--etcd-user`) the first
    /// authentication failed. `message` is etcd's message and root cause,
    /// with the flags to check when it is about TLS or credentials.
    #[error("{message}")]
    Etcd {
        message: String,
        source: etcd_client::Error,
    },
}

impl Default for EtcdArgs {
    /// The flags' defaults (a CLI fills in the parsed values).
    fn default() -> Self {
        EtcdArgs {
            endpoints: vec!["http://127.0.0.1:2379".to_owned()],
            prefix: Keys::default(),
            etcd_user: None,
            etcd_password: None,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
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
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
        }
    }

    /// Build a client. Without `--etcd-user` the connection is lazy: this
    /// succeeds while etcd is down, and calls fail (and are retried by their
    /// owners) until it is up. With it, etcd-client authenticates at once, so
    /// a wrong password (or an etcd that is not there) is an error here.
    /// With several endpoints, members that do not answer are kept out of
    /// its balance ([`crate::etcd_members`]).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let options = self
            .security()
            .apply(&self.endpoints, self.connect_options())?;
        let client = Client::connect(&self.endpoints, Some(options.clone()))
            .await
            .map_err(|source| {
                let text = crate::cli::etcd::describe(&source);
                let message = match crate::cli::etcd::security_hint(self, &text) {
                    Some(hint) => format!("{text}. {hint}"),
                    None => text,
                };
                ConnectError::Etcd { message, source }
            })?;
        crate::etcd_members::guard(&client, &self.endpoints, &options);
        Ok(client)
    }

    /// Whether the endpoints are `https://` and no client certificate is given.
    pub fn tls_without_client_cert(&self) -> bool {
        self.etcd_cert.is_none() && self.endpoints.iter().any(|e| e.starts_with("https://"))
    }

    /// The TLS files.
    pub fn security(&self) -> EtcdSecurity {
        EtcdSecurity {
            ca: self.etcd_ca.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
        }
    }

    /// The environment that gives a child process (an app server the
    /// autoscaler starts) the same etcd credentials and TLS files: `SHOAL_ETCD_USER`,
    /// `SHOAL_ETCD_PASSWORD`, `SHOAL_ETCD_CA`, `SHOAL_ETCD_CERT`, `SHOAL_ETCD_KEY`,
    /// each only when set. Endpoints and prefix are not included (drivers pass
    /// those as flags).
    pub fn credentials_env(&self) -> Vec<(String, String)> {
        let mut env = Vec::new();
        let mut push = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                env.push((name.to_owned(), value));
            }
        };
        push("SHOAL_ETCD_USER", self.etcd_user.clone());
        push("SHOAL_ETCD_PASSWORD", self.etcd_password.clone());
        // Absolute, so that a child started in another directory (or a
        // container that mounts the file at the same path) finds it.
        let path = |p: &Option<PathBuf>| {
            p.as_ref().map(|p| {
                std::path::absolute(p)
                    .unwrap_or_else(|_| p.clone())
                    .to_string_lossy()
                    .into_owned()
            })
        };
        push("SHOAL_ETCD_CA", path(&self.etcd_ca));
        push("SHOAL_ETCD_CERT", path(&self.etcd_cert));
        push("SHOAL_ETCD_KEY", path(&self.etcd_key));
        env
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

/// The log filter without `RUST_LOG`: `info`, except rustls's warnings
/// about what a TLS peer sent (`rustls::msgs::handshake`), which come once
/// per connection and are the peer's to fix (an IP address as SNI, which
/// wrk and OpenSSL's s_client send, would otherwise write a line for every
/// connection any client makes to the gateway's TLS listener).
pub const DEFAULT_LOG_FILTER: &str = "info,rustls::msgs::handshake=error";

impl LogArgs {
    /// Install the global subscriber; the filter comes from `RUST_LOG`
    /// (default [`DEFAULT_LOG_FILTER`]). Colours only on a terminal, so log
    /// files (an instance's log, quoted in crash events) stay plain text.
    pub fn init(&self) {
        use std::io::IsTerminal;
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
        let builder = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal());
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
