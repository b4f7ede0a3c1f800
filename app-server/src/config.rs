//! Command-line flags (each with a `SHOAL_*` env var) and their parsers.
//!
//! Every parser says what is wrong with a value and what a good one looks
//! like, so that a bad flag stops the binary with a message an operator can
//! act on instead of an error from deep inside the registry.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use registry::config::{parse_duration, parse_lease_ttl};
use registry::keys::validate_segment;
use registry::model::validate_addr;
use registry::{EtcdArgs, LogArgs};

use crate::crash::CrashWindow;
use crate::kv::{Durability, KvConfig};

/// Shoal's reference service: hello, CPU-bound work and a key-value API,
/// registered in etcd for as long as it runs.
#[derive(Debug, Clone, Parser)]
#[command(name = "app-server", version, about)]
pub struct Config {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Service name this instance registers under.
    #[arg(long, env = "SHOAL_SERVICE", default_value = "app", value_parser = parse_service)]
    pub service: String,

    /// Address to bind (IP:port; port 0 picks a free port).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "127.0.0.1:0", value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// host:port that gateways should use to reach this instance
    /// [default: the bound address; 127.0.0.1:PORT when bound to 0.0.0.0].
    #[arg(long, env = "SHOAL_ADVERTISE", value_parser = parse_advertise)]
    pub advertise: Option<String>,

    /// Instance id, unique within the service [default: a fresh uuid v4].
    // Not a clap default: clap computes `default_value_t` once per process, so
    // every in-process parse would share one id. See [`Config::instance_id`].
    #[arg(long, env = "SHOAL_INSTANCE_ID", value_parser = parse_id)]
    pub id: Option<String>,

    /// Lease TTL of the registration (at least 2s).
    #[arg(long, env = "SHOAL_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,

    /// Longest wait for in-flight requests when draining, and for the
    /// key-value store's hand-off to the other instances (counted from the
    /// draining mark); past either the instance exits with code 1. With no
    /// other instance left to take its entries (every instance stopping at
    /// once), the hand-off gives up a second after the draining mark, also
    /// with code 1.
    #[arg(long, env = "SHOAL_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,

    /// How long to keep accepting requests after marking itself draining, so
    /// that gateways see the change before the listener closes.
    #[arg(long, env = "SHOAL_DRAIN_GRACE", default_value = "1s", value_parser = parse_duration)]
    pub drain_grace: Duration,

    /// Crash (exit code 70, no deregistration) after a random time in
    /// MIN..MAX seconds, e.g. `1..3`; for testing recovery.
    #[arg(long, env = "SHOAL_CRASH_AFTER", value_name = "MIN..MAX")]
    pub crash_after: Option<CrashWindow>,

    /// Version written into the registry entry.
    #[arg(
        long,
        env = "SHOAL_VERSION",
        default_value = env!("CARGO_PKG_VERSION"),
        value_parser = parse_version
    )]
    pub version_label: String,

    /// Label written into the registry entry, as key=value; repeatable.
    #[arg(
        long = "label",
        env = "SHOAL_LABELS",
        value_name = "KEY=VALUE",
        value_delimiter = ',',
        value_parser = parse_label
    )]
    pub labels: Vec<(String, String)>,

    /// Relative share of traffic for weighted balancing (1..=1000).
    #[arg(
        long,
        env = "SHOAL_WEIGHT",
        default_value_t = 1,
        value_parser = clap::value_parser!(u32).range(1..=1000)
    )]
    pub weight: u32,

    /// Zone (failure domain) written into the registry entry.
    #[arg(long, env = "SHOAL_ZONE", value_parser = parse_zone)]
    pub zone: Option<String>,

    /// Copies of every key-value entry (R), capped by the number of ready
    /// instances of the service.
    #[arg(
        long,
        env = "SHOAL_KV_REPLICAS",
        default_value_t = 2,
        value_parser = clap::value_parser!(u32).range(1..=9)
    )]
    pub kv_replicas: u32,

    /// Owners that must store a key-value write before it is acknowledged
    /// (W, at most --kv-replicas) [default: a majority of --kv-replicas].
    #[arg(
        long,
        env = "SHOAL_KV_WRITE_QUORUM",
        value_parser = clap::value_parser!(u32).range(1..=9)
    )]
    pub kv_write_quorum: Option<u32>,

    /// Keep this instance's key-value entries in this directory (created if
    /// missing; one instance per directory), so that an instance restarted
    /// with it comes back with them. Without it they live in memory only.
    #[arg(long, env = "SHOAL_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<std::path::PathBuf>,

    /// When a key-value write is acknowledged: `none`, once W owners hold
    /// it in memory (with --data-dir each has written it to the OS, which
    /// survives the process being killed, and flushes to the disk every
    /// second); `fsync`, once W owners have flushed it to the disk (group
    /// commit: concurrent writes share one fsync), which survives the
    /// machine losing power. `fsync` needs --data-dir.
    #[arg(long, env = "SHOAL_DURABILITY", value_enum, default_value_t = Durability::None)]
    pub durability: Durability,

    /// Runtime worker threads. One by default: an instance is one core's
    /// worth, and the autoscaler adds instances as load grows (several
    /// instances with a thread per core each would all contend for every
    /// core). The CPU-bound `/work` runs on its own blocking threads either
    /// way. More workers let a lone instance use more cores.
    #[arg(
        long,
        env = "SHOAL_WORKERS",
        default_value_t = 1,
        value_parser = clap::value_parser!(u16).range(1..=512)
    )]
    pub workers: u16,

    /// Do not serve: probe the /readyz of the app-server listening on
    /// --listen (on loopback when bound to 0.0.0.0) and exit 0 if it answers
    /// 2xx, 1 otherwise; for container healthchecks.
    #[arg(long)]
    pub healthcheck: bool,
}

impl Config {
    /// The key-value replication settings, or why they do not fit together.
    pub fn kv_config(&self) -> Result<KvConfig, String> {
        let mut config = KvConfig::majority(self.kv_replicas as usize);
        if let Some(w) = self.kv_write_quorum {
            if w > self.kv_replicas {
                return Err(format!(
                    "--kv-write-quorum {w} is more than --kv-replicas {}: a write cannot be stored on more owners than a key has; lower the quorum or raise the replicas",
                    self.kv_replicas
                ));
            }
            config.write_quorum = w as usize;
        }
        if self.durability == Durability::Fsync && self.data_dir.is_none() {
            return Err(
                "--durability fsync needs --data-dir: without a data directory there is nothing to flush; give each instance its own --data-dir (SHOAL_DATA_DIR) or use --durability none".into(),
            );
        }
        config.durability = self.durability;
        Ok(config)
    }

    /// `--id`, or a fresh uuid v4 when none was given. Call it once and keep
    /// the result: without `--id`, every call returns a new id.
    pub fn instance_id(&self) -> String {
        self.id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

fn parse_service(s: &str) -> Result<String, String> {
    validate_segment("service", s).map_err(|e| e.problem)?;
    Ok(s.to_owned())
}

fn parse_id(s: &str) -> Result<String, String> {
    validate_segment("id", s).map_err(|e| e.problem)?;
    Ok(s.to_owned())
}

fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("`{s}` is not IP:port; use e.g. 127.0.0.1:8080, 0.0.0.0:8080 or [::1]:8080")
    })
}

fn parse_advertise(s: &str) -> Result<String, String> {
    validate_addr("advertise", s).map_err(|e| e.problem)?;
    Ok(s.to_owned())
}

/// Printable text of at most `max` bytes, as the registry requires.
fn parse_text(what: &str, s: &str, max: usize) -> Result<String, String> {
    if s.len() > max {
        return Err(format!(
            "{what} is {} bytes; at most {max} are allowed",
            s.len()
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(format!("{what} contains control characters"));
    }
    Ok(s.to_owned())
}

fn parse_version(s: &str) -> Result<String, String> {
    parse_text("version", s, 128)
}

fn parse_zone(s: &str) -> Result<String, String> {
    parse_text("zone", s, 64)
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let Some((key, value)) = s.split_once('=') else {
        return Err(format!(
            "`{s}` is not key=value; use e.g. --label tier=gold (or SHOAL_LABELS=tier=gold,team=a)"
        ));
    };
    let key = key.trim();
    if key.is_empty() {
        return Err(format!(
            "`{s}` has an empty key; use e.g. --label tier=gold"
        ));
    }
    let key = parse_text("label key", key, 128)?;
    let value = parse_text(&format!("label `{key}`"), value.trim(), 1024)?;
    Ok((key, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from(std::iter::once("app-server").chain(args.iter().copied()))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.service, "app");
        assert_eq!(c.listen, "127.0.0.1:0".parse::<SocketAddr>().unwrap());
        assert_eq!(c.advertise, None);
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.drain_grace, Duration::from_secs(1));
        assert!(c.crash_after.is_none());
        assert_eq!(c.version_label, env!("CARGO_PKG_VERSION"));
        assert!(c.labels.is_empty());
        assert_eq!(c.weight, 1);
        assert_eq!(c.zone, None);
        assert_eq!(c.workers, 1);
        assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);
    }

    #[test]
    fn ids_default_to_a_fresh_uuid() {
        let config = parse(&[]).unwrap();
        let (a, b) = (config.instance_id(), parse(&[]).unwrap().instance_id());
        assert_ne!(a, b);
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 4);
        assert_eq!(parse(&["--id", "web-1"]).unwrap().instance_id(), "web-1");
        let err = parse(&["--id", "a/b"]).unwrap_err();
        assert!(err.contains("contains '/'"), "{err}");
    }

    #[test]
    fn every_flag_is_read() {
        let c = parse(&[
            "--service",
            "web",
            "--listen",
            "0.0.0.0:8080",
            "--advertise",
            "app-1:8080",
            "--lease-ttl",
            "2s",
            "--drain-timeout",
            "500ms",
            "--drain-grace",
            "0",
            "--crash-after",
            "0.5..1.5",
            "--version-label",
            "v2",
            "--label",
            "tier=gold",
            "--label",
            "team=a,env=dev",
            "--weight",
            "7",
            "--zone",
            "eu-1a",
            "--workers",
            "4",
        ])
        .unwrap();
        assert_eq!(c.service, "web");
        assert_eq!(c.listen.port(), 8080);
        assert_eq!(c.advertise.as_deref(), Some("app-1:8080"));
        assert_eq!(c.lease_ttl, Duration::from_secs(2));
        assert_eq!(c.drain_timeout, Duration::from_millis(500));
        assert_eq!(c.drain_grace, Duration::ZERO);
        let w = c.crash_after.unwrap();
        assert_eq!(
            (w.min(), w.max()),
            (Duration::from_millis(500), Duration::from_millis(1500))
        );
        assert_eq!(c.version_label, "v2");
        let labels: Vec<(&str, &str)> = c
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(labels, [("tier", "gold"), ("team", "a"), ("env", "dev")]);
        assert_eq!(c.weight, 7);
        assert_eq!(c.zone.as_deref(), Some("eu-1a"));
        assert_eq!(c.workers, 4);
    }

    #[test]
    fn fsync_durability_needs_a_data_directory() {
        assert_eq!(
            parse(&[]).unwrap().kv_config().unwrap().durability,
            Durability::None
        );
        let err = parse(&["--durability", "fsync"])
            .unwrap()
            .kv_config()
            .unwrap_err();
        assert!(err.contains("needs --data-dir"), "{err}");
        let config = parse(&["--durability", "fsync", "--data-dir", "/tmp/x"])
            .unwrap()
            .kv_config()
            .unwrap();
        assert_eq!(config.durability, Durability::Fsync);
    }

    #[test]
    fn bad_flags_say_what_is_wrong_and_how_to_fix_it() {
        let cases: &[(&[&str], &str)] = &[
            (&["--lease-ttl", "1s"], "below the 2s minimum"),
            (&["--lease-ttl", "soon"], "use e.g. 5s"),
            (&["--crash-after", "3..1"], "MIN must not exceed MAX"),
            (&["--crash-after", "x"], "use MIN..MAX"),
            (&["--crash-after", "1..y"], "`y` is not a number of seconds"),
            (&["--service", "my app"], "contains ' '"),
            (&["--service", ""], "is empty"),
            (&["--listen", "localhost"], "use e.g. 127.0.0.1:8080"),
            (&["--advertise", "0.0.0.0:80"], "unspecified address"),
            (&["--advertise", "app-1"], "has no port"),
            (&["--label", "tier"], "is not key=value"),
            (&["--label", "=gold"], "empty key"),
            (&["--weight", "0"], "1..=1000"),
            (&["--weight", "1001"], "1..=1000"),
            (&["--drain-timeout=-1s"], "out of range"),
            (&["--durability", "always"], "possible values: none, fsync"),
            (&["--workers", "0"], "1..=512"),
        ];
        for (args, expected) in cases {
            let err = parse(args).expect_err(&format!("{args:?} should be refused"));
            assert!(err.contains(expected), "{args:?}: {err}");
        }
    }
}
