//! The gateway's flags; each has a `SHOAL_*` env var and a default that works
//! on one machine with no arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use registry::config::{parse_duration, parse_lease_ttl};
use registry::model::BalancePolicy;
use registry::{EtcdArgs, LogArgs};

/// Shoal's gateway: a reverse proxy that balances requests over the instances
/// registered in etcd, with an admin listener for stats and metrics.
#[derive(Debug, Clone, Parser)]
#[command(name = "gateway", version)]
pub struct Config {
    #[command(flatten)]
    pub etcd: EtcdArgs,

    #[command(flatten)]
    pub log: LogArgs,

    /// Where clients connect (HTTP/1.1 and h2c).
    #[arg(long, env = "SHOAL_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,

    /// A TLS listener (HTTP/1.1 and HTTP/2 by ALPN; TLS 1.2 and 1.3), with
    /// the certificates of --tls-cert/--tls-key and, with
    /// --tls-registry-certs, the registry's. It serves the same routes
    /// as --listen; requests from it carry `X-Forwarded-Proto: https`.
    #[arg(long, env = "SHOAL_TLS_LISTEN")]
    pub tls_listen: Option<SocketAddr>,

    /// A PEM certificate chain for --tls-listen (the server's certificate
    /// first), given with its --tls-key. Repeat the pair for several
    /// certificates: each handshake gets the one whose DNS names (SAN,
    /// `*.example.com` wildcards too) match the client's SNI, else the
    /// first. The files are read again on SIGHUP.
    #[arg(long, env = "SHOAL_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Vec<std::path::PathBuf>,

    /// The PEM private key of the --tls-cert given in the same position.
    #[arg(long, env = "SHOAL_TLS_KEY", value_name = "PATH")]
    pub tls_key: Vec<std::path::PathBuf>,

    /// Also serve the TLS certificates stored in the registry
    /// (`{prefix}/certs/NAME`, written with `registry certs put`) on
    /// --tls-listen, after the --tls-cert files (which win for a host both
    /// name, and whose first is the default), followed live. With it,
    /// --tls-listen needs no file. Off by default: it makes etcd hold the
    /// private keys, so the etcd user needs read access to `certs/`, and
    /// etcd should have auth and TLS on (docs/architecture.md, *TLS*).
    #[arg(long, env = "SHOAL_TLS_REGISTRY_CERTS")]
    pub tls_registry_certs: bool,

    /// Open both listeners with SO_REUSEPORT, so that a new gateway can start
    /// on the same addresses while the old one still serves: start the new
    /// one (it opens --listen once it has read the registry, or after
    /// --hold-timeout), wait for its `listening` line, then SIGTERM the old
    /// one; no connection is refused. Off by default, because then a second
    /// gateway started on the same port by mistake fails instead of
    /// silently sharing the traffic.
    #[arg(long, env = "SHOAL_REUSE_PORT")]
    pub reuse_port: bool,

    /// Admin listener: /healthz, /metrics, /api/v1/..., /dashboard. A
    /// non-loopback address needs --admin-token.
    #[arg(long, env = "SHOAL_ADMIN_LISTEN", default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,

    /// Bearer token the admin API's writes require (`Authorization: Bearer
    /// TOKEN`); reads stay open. Required when --admin-listen is not loopback.
    #[arg(long, env = "SHOAL_ADMIN_TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub admin_token: Option<String>,

    /// Admin address announced in the registry for the autoscaler (default: the
    /// bound admin address, with an unspecified IP replaced by loopback).
    #[arg(long, env = "SHOAL_ADMIN_ADVERTISE")]
    pub admin_advertise: Option<String>,

    /// Runtime worker threads (default: one per core).
    #[arg(long, env = "SHOAL_WORKERS", value_parser = clap::value_parser!(u16).range(1..=512))]
    pub workers: Option<u16>,

    /// Service that gets requests no route matches.
    #[arg(long, env = "SHOAL_DEFAULT_SERVICE", default_value = "app", value_parser = parse_service)]
    pub default_service: String,

    /// Balancing policy for the default route.
    #[arg(long, env = "SHOAL_DEFAULT_POLICY", default_value = "least-request")]
    pub default_policy: BalancePolicy,

    /// How long a request waits for a ready instance when its service has none
    /// (this is how scale from zero works), before a 503.
    #[arg(long, env = "SHOAL_HOLD_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub hold_timeout: Duration,

    /// An instance that leaves the registry while `ready` (lease lost, etcd
    /// wiped; not a clean drain) stays routable, shown as `unconfirmed`, for
    /// this long or until it registers again or fails one request (0 turns
    /// it off). Default: twice the default lease TTL.
    #[arg(long, env = "SHOAL_UNCONFIRMED_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub unconfirmed_grace: Duration,

    /// A new instance's share of traffic ramps from 10% to 100% over this window (0 turns it off).
    #[arg(long, env = "SHOAL_SLOW_START", default_value = "10s", value_parser = parse_duration)]
    pub slow_start: Duration,

    /// Timeout for connecting to an instance.
    #[arg(long, env = "SHOAL_CONNECT_TIMEOUT", default_value = "1s", value_parser = parse_duration)]
    pub connect_timeout: Duration,

    /// Timeout for an instance's response headers, unless the route sets `timeout_ms`.
    #[arg(long, env = "SHOAL_RESPONSE_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub response_timeout: Duration,

    /// Per-attempt timeout for an instance's response headers, unless the
    /// route sets `try_timeout_ms`: past it, an idempotent request is tried
    /// once more on another instance (a frozen instance then costs this,
    /// not the whole response timeout). Unset: each attempt gets the whole
    /// response timeout. Set it above the slowest idempotent request's normal
    /// time, or such requests run twice.
    #[arg(long, env = "SHOAL_TRY_TIMEOUT", value_parser = parse_try_timeout)]
    pub try_timeout: Option<Duration>,

    /// Hedged requests: an idempotent request without a body whose attempt
    /// has had no response headers for the service's recent p99 (within the
    /// two bounds below) is also sent to another instance; the first
    /// response wins. Within the retry budget, and at most 2% of the
    /// service's requests over 10 s plus one (hedges duplicate work on an
    /// instance that is merely slow: uncapped, they raised in-flight per
    /// instance from 4 to 4.5 under a steady CPU-bound load and made the
    /// autoscaler scale out). `--hedge false` turns them off.
    #[arg(long, env = "SHOAL_HEDGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub hedge: bool,

    /// The shortest wait before a hedge, whatever the p99.
    #[arg(long, env = "SHOAL_HEDGE_MIN_DELAY", default_value = "10ms", value_parser = parse_duration)]
    pub hedge_min_delay: Duration,

    /// The longest wait before a hedge, and the wait before the service has
    /// a p99 (its first second, or under 10 responses a second).
    #[arg(long, env = "SHOAL_HEDGE_MAX_DELAY", default_value = "1s", value_parser = parse_duration)]
    pub hedge_max_delay: Duration,

    /// How long an idle keep-alive client connection is kept.
    #[arg(long, env = "SHOAL_IDLE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub idle_timeout: Duration,

    /// How long an idle keep-alive connection to an instance is kept (closed
    /// within a second after, traffic or not). Below common servers' own
    /// keep-alive timeouts (Node.js: 5 s), so the gateway is not the one
    /// whose request meets a connection the instance just closed.
    #[arg(long, env = "SHOAL_UPSTREAM_IDLE_TIMEOUT", default_value = "4s", value_parser = parse_duration)]
    pub upstream_idle_timeout: Duration,

    /// A client must send its complete request headers within this time (slowloris).
    #[arg(long, env = "SHOAL_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_read_timeout: Duration,

    /// Largest request header section accepted, in bytes.
    #[arg(long, env = "SHOAL_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    pub max_header_bytes: usize,

    /// Largest request body accepted, in bytes (413 above).
    #[arg(long, env = "SHOAL_MAX_BODY_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: u64,

    /// Requests in flight per instance before new ones queue (0: no limit).
    #[arg(long, env = "SHOAL_MAX_INFLIGHT_PER_INSTANCE", default_value_t = 0)]
    pub max_inflight_per_instance: u32,

    /// Requests allowed to queue per instance once it is at its limit (503 with Retry-After past it).
    #[arg(long, env = "SHOAL_QUEUE_PER_INSTANCE", default_value_t = 128)]
    pub queue_per_instance: u32,

    /// Extra attempts on another instance when a request fails (routes may override).
    #[arg(long, env = "SHOAL_RETRIES", default_value_t = 2)]
    pub retries: u32,

    /// Consecutive failures that eject an instance.
    #[arg(long, env = "SHOAL_EJECT_AFTER", default_value_t = 5)]
    pub eject_after: u32,

    /// First ejection period; it doubles while the instance keeps failing, up to 30 s.
    #[arg(long, env = "SHOAL_EJECT_BASE", default_value = "1s", value_parser = parse_duration)]
    pub eject_base: Duration,

    /// Active health checks of every instance's /healthz at this interval (0: off).
    #[arg(long, env = "SHOAL_HEALTH_CHECK_INTERVAL", default_value = "0s", value_parser = parse_duration)]
    pub health_check_interval: Duration,

    /// Networks (CIDR, comma-separated) an instance's address must be in to
    /// get traffic; instances outside, and host names, are left out of the
    /// routing table with a warning. Unset: every address is allowed.
    #[arg(
        long,
        env = "SHOAL_ALLOWED_BACKENDS",
        value_delimiter = ',',
        value_name = "CIDR,...",
        value_parser = crate::allowed::parse_cidr
    )]
    pub allowed_backends: Vec<ipnet::IpNet>,

    /// Networks (CIDR, comma-separated) of the proxies in front of the
    /// gateway whose forwarded headers are believed. A request from a peer
    /// in the list keeps its X-Forwarded-For (the peer is appended),
    /// Forwarded (our element appended), X-Forwarded-Proto and
    /// X-Forwarded-Host, and the client's address is the right-most
    /// X-Forwarded-For entry outside the list. From any other peer those
    /// headers are dropped and set from the connection. Unset: no peer is
    /// trusted.
    #[arg(
        long,
        env = "SHOAL_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_name = "CIDR,...",
        value_parser = crate::allowed::parse_cidr
    )]
    pub trusted_proxies: Vec<ipnet::IpNet>,

    /// Access log: one JSON line per proxied request, `-` (or `stdout`) for
    /// stdout, else a file path, opened for appending and reopened on SIGHUP
    /// (logrotate). Off by default. Written by a thread of its own through a
    /// bounded buffer: when the disk cannot keep up, lines are dropped and
    /// counted (`shoal_gateway_access_log_dropped_total`), never waited for.
    #[arg(long, env = "SHOAL_ACCESS_LOG", value_name = "PATH|-", value_parser = crate::access_log::Target::parse)]
    pub access_log: Option<crate::access_log::Target>,

    /// Set `x-request-id` (a client's valid one kept, else a new one; also
    /// returned to the client) and W3C `traceparent` (a client's valid one
    /// continued with the gateway's own parent-id, else a new sampled trace)
    /// on the requests instances get. Off by default: it costs about 10% more
    /// instructions per request (docs/architecture.md); off, a client's
    /// headers pass through untouched.
    #[arg(
        long,
        env = "SHOAL_TRACE_HEADERS",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set
    )]
    pub trace_headers: bool,

    /// This gateway's id in the registry (default: a fresh uuid).
    #[arg(long, env = "SHOAL_GATEWAY_ID", value_parser = parse_service)]
    pub id: Option<String>,

    /// Lease TTL of the gateway's own registration.
    #[arg(long, env = "SHOAL_LEASE_TTL", default_value = "5s", value_parser = parse_lease_ttl)]
    pub lease_ttl: Duration,

    /// Do not serve: probe the admin /healthz of the gateway listening on
    /// --admin-listen (on loopback when bound to 0.0.0.0) and exit 0 if it
    /// answers 2xx, 1 otherwise; for container healthchecks.
    #[arg(long)]
    pub healthcheck: bool,
}

fn parse_try_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => {
            Err("0 would fail every attempt; leave --try-timeout unset to give each attempt the whole --response-timeout".into())
        }
        d => Ok(d),
    }
}

fn parse_token(s: &str) -> Result<String, String> {
    if s.len() < 16 {
        return Err("a token shorter than 16 characters is too easy to guess; use e.g. `openssl rand -hex 32`".into());
    }
    if s.chars().any(|c| !c.is_ascii_graphic()) {
        return Err("use printable ASCII without spaces (it travels in an HTTP header)".into());
    }
    Ok(s.to_owned())
}

impl Config {
    /// Refuse an admin listener reachable beyond this machine without a token:
    /// its API can retire instances and change policies.
    pub fn check_admin_exposure(&self) -> Result<(), String> {
        if self.admin_token.is_none() && !self.admin_listen.ip().is_loopback() {
            return Err(format!(
                "--admin-listen {} is reachable beyond this machine, and the admin API can change routes, \
                 policies and instances; set --admin-token (env SHOAL_ADMIN_TOKEN) or listen on a loopback \
                 address such as 127.0.0.1:9090",
                self.admin_listen
            ));
        }
        Ok(())
    }

    /// Refuse hedge bounds the wrong way round.
    pub fn check_hedge_delays(&self) -> Result<(), String> {
        if self.hedge_min_delay > self.hedge_max_delay {
            return Err(format!(
                "--hedge-min-delay {:?} is above --hedge-max-delay {:?}; the hedge delay is the \
                 service's p99 clamped between them",
                self.hedge_min_delay, self.hedge_max_delay
            ));
        }
        Ok(())
    }
}

impl Config {
    /// The certificate pairs for --tls-listen (none is fine with
    /// --tls-registry-certs), or `None` without it; an error for a flag
    /// given without its partner.
    pub fn tls_pairs(&self) -> Result<Option<Vec<crate::tls::CertPair>>, String> {
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(format!(
                "{} --tls-cert and {} --tls-key given; give them in pairs, each certificate followed by its key \
                 (--tls-cert a.pem --tls-key a-key.pem --tls-cert b.pem --tls-key b-key.pem)",
                self.tls_cert.len(),
                self.tls_key.len()
            ));
        }
        if self.tls_registry_certs && self.tls_listen.is_none() {
            return Err(
                "--tls-registry-certs given without --tls-listen; add --tls-listen 0.0.0.0:8443 (or drop it)"
                    .into(),
            );
        }
        match (self.tls_listen, self.tls_cert.is_empty()) {
            (None, true) => Ok(None),
            (Some(_), true) if self.tls_registry_certs => Ok(Some(Vec::new())),
            (None, false) => Err(
                "--tls-cert/--tls-key given without --tls-listen; add --tls-listen 0.0.0.0:8443 (or drop the certificates)"
                    .into(),
            ),
            (Some(addr), true) => Err(format!(
                "--tls-listen {addr} needs a certificate; add --tls-cert cert.pem --tls-key key.pem (PEM files), \
                 or --tls-registry-certs to serve those written with `registry certs put`"
            )),
            (Some(_), false) => Ok(Some(
                self.tls_cert
                    .iter()
                    .zip(&self.tls_key)
                    .map(|(cert, key)| crate::tls::CertPair {
                        cert: cert.clone(),
                        key: key.clone(),
                    })
                    .collect(),
            )),
        }
    }
}

fn parse_service(s: &str) -> Result<String, String> {
    registry::keys::validate_segment("name", s).map_err(|e| e.problem)?;
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_work_with_no_arguments() {
        let c = Config::try_parse_from(["gateway"]).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(c.admin_listen, "127.0.0.1:9090".parse().unwrap());
        assert_eq!(c.default_service, "app");
        assert_eq!(c.default_policy, BalancePolicy::LeastRequest);
        assert_eq!(c.hold_timeout, Duration::from_secs(10));
        assert_eq!(c.slow_start, Duration::from_secs(10));
        assert!(c.hedge, "hedging is on by default");
        assert_eq!(c.access_log, None, "no access log by default");
        assert!(!c.trace_headers, "no tracing headers by default");
        c.check_hedge_delays().unwrap();
    }

    #[test]
    fn bad_values_say_what_to_do() {
        let err = Config::try_parse_from(["gateway", "--default-policy", "random"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("use round-robin, least-request, consistent-hash or sticky"),
            "{err}"
        );
        let err = Config::try_parse_from(["gateway", "--default-service", "a b"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("use letters, digits"), "{err}");
        let err = Config::try_parse_from(["gateway", "--workers", "0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("0"), "{err}");
        let err = Config::try_parse_from(["gateway", "--admin-token", "short"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("shorter than 16"), "{err}");
    }

    #[test]
    fn an_exposed_admin_listener_needs_a_token() {
        let c = Config::try_parse_from(["gateway", "--admin-listen", "0.0.0.0:9090"]).unwrap();
        let err = c.check_admin_exposure().unwrap_err();
        assert!(err.contains("set --admin-token"), "{err}");
        let c = Config::try_parse_from([
            "gateway",
            "--admin-listen",
            "0.0.0.0:9090",
            "--admin-token",
            "0123456789abcdef",
        ])
        .unwrap();
        c.check_admin_exposure().unwrap();
        for loopback in ["127.0.0.1:0", "[::1]:9090"] {
            let c = Config::try_parse_from(["gateway", "--admin-listen", loopback]).unwrap();
            c.check_admin_exposure().unwrap();
        }
    }

    #[test]
    fn trusted_proxies() {
        let c = Config::try_parse_from(["gateway"]).unwrap();
        assert!(c.trusted_proxies.is_empty(), "nobody is trusted by default");
        let c = Config::try_parse_from([
            "gateway",
            "--trusted-proxies",
            "10.0.0.0/8, 192.0.2.7,fd00::/8",
        ])
        .unwrap();
        let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
        assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8"]);
        let err =
            Config::try_parse_from(["gateway", "--trusted-proxies", "10.0.0.0/8,10.0.0.0/33"])
                .unwrap_err()
                .to_string();
        assert!(
            err.contains("--trusted-proxies") && err.contains("`10.0.0.0/33` is not a network"),
            "{err}"
        );
    }

    #[test]
    fn access_log_and_trace_flags() {
        use crate::access_log::Target;
        let c = Config::try_parse_from(["gateway", "--access-log", "-"]).unwrap();
        assert_eq!(c.access_log, Some(Target::Stdout));
        let c = Config::try_parse_from([
            "gateway",
            "--access-log",
            "/var/log/shoal/access.log",
            "--trace-headers",
        ])
        .unwrap();
        assert_eq!(
            c.access_log,
            Some(Target::File("/var/log/shoal/access.log".into()))
        );
        assert!(c.trace_headers);
        let c = Config::try_parse_from(["gateway", "--trace-headers", "false"]).unwrap();
        assert!(!c.trace_headers);
        let err = Config::try_parse_from(["gateway", "--access-log", ""])
            .unwrap_err()
            .to_string();
        assert!(err.contains("--access-log"), "{err}");
    }

    #[test]
    fn tls_flags_come_in_pairs_with_a_listener() {
        let c = Config::try_parse_from(["gateway"]).unwrap();
        assert_eq!(c.tls_pairs(), Ok(None), "no TLS by default");
        let c = Config::try_parse_from([
            "gateway",
            "--tls-listen",
            "127.0.0.1:8443",
            "--tls-cert",
            "a.pem",
            "--tls-key",
            "a-key.pem",
            "--tls-cert",
            "b.pem",
            "--tls-key",
            "b-key.pem",
        ])
        .unwrap();
        let pairs = c.tls_pairs().unwrap().unwrap();
        assert_eq!(
            pairs,
            [
                crate::tls::CertPair {
                    cert: "a.pem".into(),
                    key: "a-key.pem".into()
                },
                crate::tls::CertPair {
                    cert: "b.pem".into(),
                    key: "b-key.pem".into()
                }
            ]
        );
        let c = Config::try_parse_from(["gateway", "--tls-listen", "127.0.0.1:8443"]).unwrap();
        let err = c.tls_pairs().unwrap_err();
        assert!(
            err.contains("--tls-listen 127.0.0.1:8443 needs a certificate"),
            "{err}"
        );
        let c = Config::try_parse_from(["gateway", "--tls-cert", "a.pem", "--tls-key", "k.pem"])
            .unwrap();
        let err = c.tls_pairs().unwrap_err();
        assert!(err.contains("without --tls-listen"), "{err}");
        let c = Config::try_parse_from([
            "gateway",
            "--tls-listen",
            "127.0.0.1:8443",
            "--tls-cert",
            "a.pem",
        ])
        .unwrap();
        let err = c.tls_pairs().unwrap_err();
        assert!(
            err.contains("1 --tls-cert and 0 --tls-key given; give them in pairs"),
            "{err}"
        );
    }

    #[test]
    fn registry_certificates_let_the_tls_listener_go_without_files() {
        let c = Config::try_parse_from(["gateway", "--tls-listen", "127.0.0.1:8443"]).unwrap();
        assert!(!c.tls_registry_certs, "off by default");
        let err = c.tls_pairs().unwrap_err();
        assert!(err.contains("or --tls-registry-certs"), "{err}");
        let c = Config::try_parse_from([
            "gateway",
            "--tls-listen",
            "127.0.0.1:8443",
            "--tls-registry-certs",
        ])
        .unwrap();
        assert_eq!(c.tls_pairs(), Ok(Some(Vec::new())));
        let c = Config::try_parse_from(["gateway", "--tls-registry-certs"]).unwrap();
        let err = c.tls_pairs().unwrap_err();
        assert!(
            err.contains("--tls-registry-certs given without --tls-listen"),
            "{err}"
        );
    }

    #[test]
    fn hedge_flags() {
        let c =
            Config::try_parse_from(["gateway", "--hedge", "false", "--hedge-max-delay", "200ms"])
                .unwrap();
        assert!(!c.hedge);
        assert_eq!(c.hedge_max_delay, Duration::from_millis(200));
        let c = Config::try_parse_from(["gateway", "--hedge-min-delay", "2s"]).unwrap();
        let err = c.check_hedge_delays().unwrap_err();
        assert!(
            err.contains("--hedge-min-delay 2s is above --hedge-max-delay 1s"),
            "{err}"
        );
    }
}
