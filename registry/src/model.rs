//! The values stored in the registry, with serde and validation.
//!
//! Every type here is what one etcd value holds (see `docs/architecture.md` for
//! the key layout). [`RegistryValue::decode`] is the one way a consumer turns
//! bytes read from etcd into a value: it parses the JSON, validates every field,
//! and checks that the value agrees with the key it was found under, so a bad
//! entry is rejected with a message that names the key and says what to fix.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::keys::{Key, Keys, validate_segment};

/// Largest registry value any consumer accepts. etcd's own default request
/// limit is 1.5 MiB; nothing Shoal writes comes close to this.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;

/// What is wrong with a value, field by field, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `instance.addr`.
    pub field: String,
    /// What is wrong and, where it helps, an example of a good value.
    pub problem: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Why a registry entry could not be used. Always names the key.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{key}: value is {len} bytes, more than the {MAX_VALUE_BYTES}-byte limit")]
    TooLarge { key: String, len: usize },
    #[error("{key}: not valid JSON for this entry: {source}")]
    Json {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{key}: {source}")]
    Invalid {
        key: String,
        #[source]
        source: ValidationError,
    },
    #[error("{key}: not a key this consumer reads ({reason})")]
    UnexpectedKey { key: String, reason: String },
}

/// A value that lives under one kind of registry key.
pub trait RegistryValue: Sized + Clone + Send + Sync + fmt::Debug + 'static {
    /// Parse, validate and check `value` against the key it was read from.
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError>;
}

/// Parse JSON with the size limit and field validation shared by every value type.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    key: &str,
    value: &[u8],
    validate: impl FnOnce(&T) -> Result<(), ValidationError>,
) -> Result<T, DecodeError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(DecodeError::TooLarge {
            key: key.to_owned(),
            len: value.len(),
        });
    }
    let parsed: T = serde_json::from_slice(value).map_err(|source| DecodeError::Json {
        key: key.to_owned(),
        source,
    })?;
    validate(&parsed).map_err(|source| DecodeError::Invalid {
        key: key.to_owned(),
        source,
    })?;
    Ok(parsed)
}

pub(crate) fn key_mismatch(key: &str, what: &str, in_key: &str, in_value: &str) -> DecodeError {
    DecodeError::Invalid {
        key: key.to_owned(),
        source: ValidationError::new(
            what,
            format!("value says `{in_value}` but the key says `{in_key}`; they must agree"),
        ),
    }
}

/// Lifecycle state of an instance. Gateways send new requests only to `Ready`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InstanceState {
    /// Registered, not yet serving.
    Starting,
    /// Serving; eligible for new requests.
    Ready,
    /// Finishing in-flight requests before it leaves; no new requests.
    Draining,
}

impl fmt::Display for InstanceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            InstanceState::Starting => "starting",
            InstanceState::Ready => "ready",
            InstanceState::Draining => "draining",
        })
    }
}

fn default_weight() -> u32 {
    1
}

/// One running instance of a service, as it registers itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique id; a uuid v4 for instances Shoal starts.
    pub id: String,
    pub service: String,
    /// `host:port` reachable from gateways.
    pub addr: String,
    pub state: InstanceState,
    #[serde(default)]
    pub version: String,
    /// Relative share for weighted balancing, 1..=1000.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub zone: String,
    pub started_at: DateTime<Utc>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl Instance {
    /// A new `starting` instance with a fresh uuid v4 id and no version label.
    pub fn new(service: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            service: service.into(),
            addr: addr.into(),
            state: InstanceState::Starting,
            version: String::new(),
            weight: 1,
            zone: String::new(),
            started_at: Utc::now(),
            labels: BTreeMap::new(),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("instance.id", &self.id)?;
        validate_segment("instance.service", &self.service)?;
        validate_addr("instance.addr", &self.addr)?;
        if !(1..=1000).contains(&self.weight) {
            return Err(ValidationError::new(
                "instance.weight",
                format!("{} is out of range; use 1..=1000 (default 1)", self.weight),
            ));
        }
        validate_text("instance.version", &self.version, 128)?;
        validate_text("instance.zone", &self.zone, 64)?;
        if self.labels.len() > 64 {
            return Err(ValidationError::new(
                "instance.labels",
                format!("{} labels; at most 64 are allowed", self.labels.len()),
            ));
        }
        for (k, v) in &self.labels {
            validate_text("instance.labels key", k, 128)?;
            validate_text(&format!("instance.labels.{k}"), v, 1024)?;
        }
        Ok(())
    }

    /// The JSON stored in etcd.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("Instance always serializes")
    }
}

impl RegistryValue for Instance {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Instance { service, id }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}/{{id}}", keys.instances()),
            });
        };
        let instance: Instance = decode_json(key, value, Instance::validate)?;
        if instance.service != service {
            return Err(key_mismatch(
                key,
                "instance.service",
                &service,
                &instance.service,
            ));
        }
        if instance.id != id {
            return Err(key_mismatch(key, "instance.id", &id, &instance.id));
        }
        Ok(instance)
    }
}

/// The address to announce for a listener: the configured one, else the bound
/// address with an unspecified IP (`0.0.0.0`, `::`) replaced by loopback —
/// which only this machine can reach, so callers bound to every interface
/// should say so or require a configured address.
pub fn advertise_addr(configured: Option<&str>, bound: SocketAddr) -> String {
    if let Some(addr) = configured {
        return addr.to_owned();
    }
    if !bound.ip().is_unspecified() {
        return bound.to_string();
    }
    let loopback = match bound.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(loopback, bound.port()).to_string()
}

/// `host:port` where host is an IP address or a DNS name and port is non-zero.
pub fn validate_addr(field: &str, addr: &str) -> Result<(), ValidationError> {
    let bad = |why: &str| {
        ValidationError::new(
            field,
            format!("`{addr}` {why}; use host:port, e.g. 10.0.0.5:8080 or app-1:8080"),
        )
    };
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        if sock.port() == 0 {
            return Err(bad("has port 0"));
        }
        if sock.ip().is_unspecified() {
            return Err(bad("is an unspecified address nobody can connect to"));
        }
        return Ok(());
    }
    let Some((host, port)) = addr.rsplit_once(':') else {
        return Err(bad("has no port"));
    };
    match port.parse::<u16>() {
        Ok(0) => return Err(bad("has port 0")),
        Ok(_) => {}
        Err(_) => return Err(bad("has no valid port")),
    }
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !host_ok {
        return Err(bad("has no valid host name"));
    }
    Ok(())
}

/// `text` as [`validate_text`] accepts it: each control character (a
/// newline, a tab, an escape) becomes a space and text beyond `max` bytes is
/// cut at a character boundary and marked with `…`. For free text a program
/// quotes into the registry, such as an instance's last log lines.
pub fn plain_text(text: &str, max: usize) -> String {
    const MARK: char = '…';
    let plain: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if plain.len() <= max {
        return plain;
    }
    let mut end = max.saturating_sub(MARK.len_utf8());
    while !plain.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{MARK}", &plain[..end])
}

fn validate_text(field: &str, text: &str, max: usize) -> Result<(), ValidationError> {
    if text.len() > max {
        return Err(ValidationError::new(
            field,
            format!("{} bytes; at most {max} are allowed", text.len()),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ValidationError::new(field, "contains control characters"));
    }
    Ok(())
}

/// How a gateway picks an instance for a request.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BalancePolicy {
    RoundRobin,
    #[default]
    LeastRequest,
    ConsistentHash,
    Sticky,
}

impl fmt::Display for BalancePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BalancePolicy::RoundRobin => "round-robin",
            BalancePolicy::LeastRequest => "least-request",
            BalancePolicy::ConsistentHash => "consistent-hash",
            BalancePolicy::Sticky => "sticky",
        })
    }
}

impl std::str::FromStr for BalancePolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).map_err(|_| {
            format!(
                "unknown policy `{s}`; use round-robin, least-request, consistent-hash or sticky"
            )
        })
    }
}

/// Where the consistent-hash policy takes its key from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "from", content = "name")]
pub enum HashKey {
    /// The n-th path segment after the route prefix (0-based).
    PathSegment(usize),
    Header(String),
    Query(String),
    Cookie(String),
}

/// A route's rate limit: a token bucket per key (client, header value, or
/// the whole route), kept in each gateway's memory.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Requests per second a key may make: the bucket's refill rate.
    #[cfg_attr(feature = "openapi", schema(minimum = 0.001, maximum = 1000000))]
    pub per_second: f64,
    /// Requests a key may make at once after a quiet spell: the bucket's
    /// size [default: `per_second` rounded up, at least 1].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000000))]
    pub burst: Option<u32>,
    /// What a bucket is kept per [default: the client's address].
    #[serde(default)]
    pub by: RateKey,
    /// `per_second` (and `burst`) are for all gateways together: each
    /// allows its share, divided by the live gateways in the registry.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
}

impl RateLimit {
    /// Largest `per_second` and `burst`.
    pub const MAX: f64 = 1_000_000.0;

    /// The bucket's size: `burst`, or `per_second` rounded up (at least 1).
    pub fn bucket(&self) -> f64 {
        match self.burst {
            Some(burst) => f64::from(burst),
            None => self.per_second.ceil().max(1.0),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        if !(self.per_second.is_finite()
            && self.per_second >= 0.001
            && self.per_second <= Self::MAX)
        {
            return Err(ValidationError::new(
                "route.rate_limit.per_second",
                format!(
                    "{} is not a rate; give requests per second between 0.001 and 1000000, e.g. 100",
                    self.per_second
                ),
            ));
        }
        if let Some(burst) = self.burst
            && !(1..=Self::MAX as u32).contains(&burst)
        {
            return Err(ValidationError::new(
                "route.rate_limit.burst",
                format!("{burst} is not a bucket size; give 1 to 1000000, or omit it"),
            ));
        }
        if let RateKey::Header(name) = &self.by
            && http_header_name(name).is_none()
        {
            return Err(ValidationError::new(
                "route.rate_limit.by.name",
                format!("`{name}` is not a header name; use e.g. x-api-key"),
            ));
        }
        Ok(())
    }
}

/// `name` as a lower-case HTTP header name, if it is one (RFC 9110 token
/// characters, 1–256 bytes).
fn http_header_name(name: &str) -> Option<String> {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    (!name.is_empty() && name.len() <= 256 && name.chars().all(token))
        .then(|| name.to_ascii_lowercase())
}

/// What a rate limit keeps a bucket per.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "from", content = "name")]
pub enum RateKey {
    /// The client's address (the connection's peer; the first address in
    /// `X-Forwarded-For` when the peer is a `--trusted-proxies` proxy).
    #[default]
    ClientIp,
    /// A request header's value (e.g. an API key); requests without it
    /// share one bucket.
    Header(String),
    /// One bucket for the whole route.
    Route,
}

/// A gateway route: host and longest path prefix map to a service and policy.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    /// Exact `Host` to match (without port); absent matches every host.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(pattern = r"^[^/ :]+$"))]
    pub host: Option<String>,
    /// Path prefix, starting with `/`; the longest matching prefix wins.
    #[serde(default = "default_prefix")]
    #[cfg_attr(
        feature = "openapi",
        schema(max_length = 1024, pattern = r"^/[^\u0000-\u001f\u007f-\u009f]*$")
    )]
    pub path_prefix: String,
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
        )
    )]
    pub service: String,
    #[serde(default)]
    pub policy: BalancePolicy,
    /// Required by `consistent-hash`.
    #[serde(default)]
    pub hash_key: Option<HashKey>,
    /// Remove `path_prefix` from the path before forwarding.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Per-request response timeout in milliseconds.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub timeout_ms: Option<u64>,
    /// Per-attempt timeout in milliseconds: an idempotent request whose
    /// instance sends no response headers within it is tried once more on
    /// another instance (a frozen or stalled instance costs this much, not
    /// the whole response timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub try_timeout_ms: Option<u64>,
    /// Extra attempts on another instance after a failure.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 10))]
    pub retries: Option<u32>,
    /// Answer plain-HTTP requests with a 308 to the same URL over HTTPS
    /// (the gateway's `--tls-listen` port, 443 without one); requests that
    /// came over TLS are proxied as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub https_redirect: bool,
    /// Requests beyond this rate get 429 with `Retry-After`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// How the gateway talks to the route's instances: `http1` (the
    /// default) or `h2c` (HTTP/2 over plain TCP with prior knowledge, one
    /// multiplexed connection per instance: for gRPC servers).
    #[serde(default, skip_serializing_if = "UpstreamProtocol::is_default")]
    pub upstream_protocol: UpstreamProtocol,
    /// Every request on this route may be processed twice (e.g. gRPC
    /// methods that are idempotent): a POST is then retried as a GET is,
    /// once, after a reset before response headers (an instance killed
    /// with the request on it), a draining 503 or a per-try timeout.
    /// Without it only requests no instance processed are retried.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idempotent: bool,
}

/// The protocol a gateway speaks to a route's instances.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive connections.
    #[default]
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (no upgrade, no TLS):
    /// what gRPC servers speak. Trailers and streaming bodies pass through
    /// both ways.
    H2c,
}

impl UpstreamProtocol {
    pub fn is_default(&self) -> bool {
        *self == UpstreamProtocol::Http1
    }
}

impl fmt::Display for UpstreamProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UpstreamProtocol::Http1 => "http1",
            UpstreamProtocol::H2c => "h2c",
        })
    }
}

fn default_prefix() -> String {
    "/".to_owned()
}

impl Route {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("route.service", &self.service)?;
        if !self.path_prefix.starts_with('/') {
            return Err(ValidationError::new(
                "route.path_prefix",
                format!("`{}` must start with `/`, e.g. /api", self.path_prefix),
            ));
        }
        validate_text("route.path_prefix", &self.path_prefix, 1024)?;
        if let Some(host) = &self.host
            && (host.is_empty() || host.contains(['/', ' ', ':']))
        {
            return Err(ValidationError::new(
                "route.host",
                format!("`{host}` is not a host name; use e.g. api.example.com (no port)"),
            ));
        }
        if self.policy == BalancePolicy::ConsistentHash && self.hash_key.is_none() {
            return Err(ValidationError::new(
                "route.hash_key",
                r#"policy consistent-hash needs a hash_key, e.g. {"from":"header","name":"x-user"}"#,
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err(ValidationError::new(
                "route.timeout_ms",
                "0 would fail every request; omit it for the default",
            ));
        }
        if self.try_timeout_ms == Some(0) {
            return Err(ValidationError::new(
                "route.try_timeout_ms",
                "0 would fail every attempt; omit it to give each attempt the whole timeout",
            ));
        }
        if self.retries.is_some_and(|r| r > 10) {
            return Err(ValidationError::new("route.retries", "at most 10"));
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate()?;
        }
        Ok(())
    }
}

/// A route together with its name (the last segment of its key).
#[derive(Debug, Clone, PartialEq)]
pub struct NamedRoute {
    pub name: String,
    pub route: Route,
}

impl RegistryValue for NamedRoute {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Route { name }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{name}}", keys.routes()),
            });
        };
        let route = decode_json(key, value, Route::validate)?;
        Ok(NamedRoute { name, route })
    }
}

/// The load signal a scaling policy tracks.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScalingMetric {
    /// In-flight requests per ready instance.
    Inflight,
    /// Requests per second per ready instance.
    Rps,
    /// 95th percentile latency in milliseconds.
    P95Latency,
    /// Process CPU utilisation per instance, in cores (1.0 = one core busy).
    Cpu,
}

fn default_tolerance() -> f64 {
    0.1
}
fn default_scale_down_window() -> u64 {
    30
}
fn default_step_period() -> u64 {
    15
}

/// Target-tracking policy for one service, stored at `policies/{service}`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingPolicy {
    #[cfg_attr(
        feature = "openapi",
        schema(
            pattern = r"^([A-Za-z0-9_-][A-Za-z0-9._-]{0,127}|\.[A-Za-z0-9_-][A-Za-z0-9._-]{0,126}|\.\.[A-Za-z0-9._-]{1,126})$"
        )
    )]
    pub service: String,
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub min: u32,
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 1000))]
    pub max: u32,
    pub metric: ScalingMetric,
    #[cfg_attr(feature = "openapi", schema(exclusive_minimum = 0))]
    pub target: f64,
    /// Ratio band around 1.0 inside which no change is made (default 0.1).
    #[serde(default = "default_tolerance")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, exclusive_maximum = 1))]
    pub tolerance: f64,
    #[serde(default)]
    pub scale_up_stabilization_secs: u64,
    #[serde(default = "default_scale_down_window")]
    pub scale_down_stabilization_secs: u64,
    /// At most this many instances added per `step_period_secs` (absent: no limit).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_scale_up_step: Option<u32>,
    /// At most this many instances removed per `step_period_secs` (absent: no limit).
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub max_scale_down_step: Option<u32>,
    #[serde(default = "default_step_period")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub step_period_secs: u64,
    /// Seconds after start during which an instance's metrics are ignored.
    #[serde(default)]
    pub warmup_secs: u64,
    /// A replica count an operator pinned (`autoscaler scale SERVICE N`): it
    /// replaces the metric's answer until unpinned; `min` and `max` are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0, maximum = 1000))]
    pub pinned: Option<u32>,
}

impl ScalingPolicy {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("policy.service", &self.service)?;
        if self.max == 0 {
            return Err(ValidationError::new("policy.max", "must be at least 1"));
        }
        if self.min > self.max {
            return Err(ValidationError::new(
                "policy.min",
                format!("min {} is above max {}", self.min, self.max),
            ));
        }
        if self.max > 1000 {
            return Err(ValidationError::new("policy.max", "at most 1000"));
        }
        if self.pinned.is_some_and(|n| n > 1000) {
            return Err(ValidationError::new("policy.pinned", "at most 1000"));
        }
        if !(self.target.is_finite() && self.target > 0.0) {
            return Err(ValidationError::new(
                "policy.target",
                format!("{} must be a positive number", self.target),
            ));
        }
        if !(0.0..1.0).contains(&self.tolerance) {
            return Err(ValidationError::new(
                "policy.tolerance",
                format!("{} must be in [0, 1), e.g. 0.1 for 10%", self.tolerance),
            ));
        }
        if self.step_period_secs == 0 {
            return Err(ValidationError::new(
                "policy.step_period_secs",
                "must be at least 1",
            ));
        }
        for (field, step) in [
            ("policy.max_scale_up_step", self.max_scale_up_step),
            ("policy.max_scale_down_step", self.max_scale_down_step),
        ] {
            if step == Some(0) {
                return Err(ValidationError::new(
                    field,
                    "0 would forbid scaling; omit it for no limit",
                ));
            }
        }
        Ok(())
    }
}

impl RegistryValue for ScalingPolicy {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Policy { service }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}", keys.policies()),
            });
        };
        let policy: ScalingPolicy = decode_json(key, value, ScalingPolicy::validate)?;
        if policy.service != service {
            return Err(key_mismatch(
                key,
                "policy.service",
                &service,
                &policy.service,
            ));
        }
        Ok(policy)
    }
}

/// A rolling restart of one service, stored at `rollouts/{service}` by
/// whoever asks for it (`autoscaler rollout restart`, the admin API, SIGUSR2
/// to a controller) and deleted by the leading controller when it is done.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    pub service: String,
    pub requested_at: DateTime<Utc>,
    /// Who asked (`cli`, `api`, `signal`), for the event log.
    #[serde(default)]
    pub requested_by: String,
    /// New instances started beyond the desired count at a time (default 1).
    #[serde(default = "default_max_surge")]
    pub max_surge: u32,
    /// Old instances retired before their replacement is ready, at a time (default 0).
    #[serde(default)]
    pub max_unavailable: u32,
    /// The instances to replace, filled in by the controller when it begins;
    /// absent until then. Progress is how many of them are gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replacing: Option<Vec<String>>,
}

fn default_max_surge() -> u32 {
    1
}

impl Rollout {
    /// A new request with the defaults (surge 1, unavailable 0).
    pub fn request(service: impl Into<String>, requested_by: impl Into<String>) -> Self {
        Rollout {
            service: service.into(),
            requested_at: Utc::now(),
            requested_by: requested_by.into(),
            max_surge: default_max_surge(),
            max_unavailable: 0,
            replacing: None,
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("rollout.service", &self.service)?;
        validate_text("rollout.requested_by", &self.requested_by, 64)?;
        if self.max_surge == 0 && self.max_unavailable == 0 {
            return Err(ValidationError::new(
                "rollout.max_surge",
                "max_surge and max_unavailable are both 0, so no step could be taken; allow at least one",
            ));
        }
        for (field, n) in [
            ("rollout.max_surge", self.max_surge),
            ("rollout.max_unavailable", self.max_unavailable),
        ] {
            if n > 1000 {
                return Err(ValidationError::new(field, "at most 1000"));
            }
        }
        if let Some(ids) = &self.replacing {
            if ids.len() > 1000 {
                return Err(ValidationError::new(
                    "rollout.replacing",
                    "at most 1000 ids",
                ));
            }
            for id in ids {
                validate_segment("rollout.replacing", id)?;
            }
        }
        Ok(())
    }
}

impl RegistryValue for Rollout {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Rollout { service }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}", keys.rollouts()),
            });
        };
        let rollout: Rollout = decode_json(key, value, Rollout::validate)?;
        if rollout.service != service {
            return Err(key_mismatch(
                key,
                "rollout.service",
                &service,
                &rollout.service,
            ));
        }
        Ok(rollout)
    }
}

/// One autoscaler decision or action, kept as bounded history under `events/{service}/`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScalingEvent {
    pub service: String,
    pub at: DateTime<Utc>,
    /// `decision`, `start`, `retire`, `replace`, `rollout`, ...
    pub kind: String,
    pub current: u32,
    pub desired: u32,
    /// Human-readable why, e.g. "3 → 5: in-flight 9.1 per instance over target 4".
    pub reason: String,
    /// The rule that bounded the raw recommendation, if any (`max`, `step`, ...).
    #[serde(default)]
    pub bounded_by: Option<String>,
    /// The inputs the decision was computed from.
    #[serde(default)]
    pub inputs: BTreeMap<String, f64>,
    /// The instance an action concerns.
    #[serde(default)]
    pub instance: Option<String>,
}

impl ScalingEvent {
    /// The longest reason, in bytes.
    pub const MAX_REASON: usize = 4096;

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("event.service", &self.service)?;
        validate_text("event.kind", &self.kind, 64)?;
        validate_text("event.reason", &self.reason, ScalingEvent::MAX_REASON)?;
        Ok(())
    }
}

impl RegistryValue for ScalingEvent {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Event { service, .. }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}/{{seq}}", keys.events()),
            });
        };
        let event: ScalingEvent = decode_json(key, value, ScalingEvent::validate)?;
        if event.service != service {
            return Err(key_mismatch(key, "event.service", &service, &event.service));
        }
        Ok(event)
    }
}

/// A gateway's own registration under `gateways/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayInfo {
    pub id: String,
    /// Where its admin API (`/api/v1/...`) answers.
    pub admin_addr: String,
    pub started_at: DateTime<Utc>,
}

impl GatewayInfo {
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_segment("gateway.id", &self.id)?;
        validate_addr("gateway.admin_addr", &self.admin_addr)
    }
}

impl RegistryValue for GatewayInfo {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Gateway { id }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{id}}", keys.gateways()),
            });
        };
        let info: GatewayInfo = decode_json(key, value, GatewayInfo::validate)?;
        if info.id != id {
            return Err(key_mismatch(key, "gateway.id", &id, &info.id));
        }
        Ok(info)
    }
}

/// A request that an instance drain and leave, at `retire/{service}/{id}`,
/// written by the autoscaler (scale-down, rolling restart) or an operator.
/// The instance leaves whatever the value says; the reason is for its logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetireRequest {
    /// Why, in words (at most 1024 bytes, no control characters).
    pub reason: String,
    /// Who asked (`api`, `cli`; absent for the autoscaler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl RetireRequest {
    pub fn new(reason: impl Into<String>, by: Option<&str>) -> Self {
        RetireRequest {
            reason: reason.into(),
            by: by.map(str::to_owned),
        }
    }

    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_text("retire.reason", &self.reason, 1024)?;
        if let Some(by) = &self.by {
            validate_text("retire.by", by, 64)?;
        }
        Ok(())
    }
}

impl RegistryValue for RetireRequest {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Retire { .. }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{service}}/{{id}}", keys.retires()),
            });
        };
        decode_json(key, value, RetireRequest::validate)
    }
}

/// Raw bytes, for consumers that only care that a key exists (e.g. retire keys).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawValue(pub Vec<u8>);

impl RegistryValue for RawValue {
    fn decode(_keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        if value.len() > MAX_VALUE_BYTES {
            return Err(DecodeError::TooLarge {
                key: key.to_owned(),
                len: value.len(),
            });
        }
        Ok(RawValue(value.to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new("/shoal").unwrap()
    }

    #[test]
    fn plain_text_is_what_validation_accepts() {
        assert_eq!(plain_text("a\tb\nc\u{1b}", 64), "a b c ");
        let long = "é".repeat(20);
        let cut = plain_text(&long, 9);
        assert_eq!(cut, "ééé…", "cut at a character boundary within 9 bytes");
        assert!(validate_text("t", &cut, 9).is_ok());
        let noisy = "x\u{7}".repeat(3000);
        assert!(validate_text("t", &plain_text(&noisy, 4096), 4096).is_ok());
    }

    #[test]
    fn a_long_decimal_survives_a_decode_encode_decode_round_trip() {
        // Found by the registry_value fuzz target: a float parser that is off
        // by one unit in the last place reads its own encoding differently.
        let keys = keys();
        let key = keys.policy("app");
        let value = br#"{"service":"app","min":10,"max":10,"metric":"inflight","target":3.5333333333333433333333333333333}"#;
        let decoded = ScalingPolicy::decode(&keys, &key, value).unwrap();
        let again =
            ScalingPolicy::decode(&keys, &key, &serde_json::to_vec(&decoded).unwrap()).unwrap();
        assert_eq!(again, decoded);
    }

    fn instance() -> Instance {
        let mut i = Instance::new("app", "127.0.0.1:8081");
        i.id = "abc".into();
        i
    }

    #[test]
    fn instance_round_trips_through_its_key() {
        let i = instance();
        let got =
            Instance::decode(&keys(), "/shoal/instances/app/abc", i.to_json().as_bytes()).unwrap();
        assert_eq!(got, i);
    }

    #[test]
    fn instance_decode_names_the_key_and_the_problem() {
        let k = keys();
        let err = Instance::decode(&k, "/shoal/instances/app/abc", b"{not json").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/shoal/instances/app/abc: not valid JSON"),
            "{err}"
        );

        let mut bad = instance();
        bad.addr = "nowhere".into();
        let err =
            Instance::decode(&k, "/shoal/instances/app/abc", bad.to_json().as_bytes()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "/shoal/instances/app/abc: instance.addr: `nowhere` has no port; use host:port, e.g. 10.0.0.5:8080 or app-1:8080"
        );

        let err = Instance::decode(
            &k,
            "/shoal/instances/web/abc",
            instance().to_json().as_bytes(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("value says `app` but the key says `web`"),
            "{err}"
        );

        let json = instance().to_json().replace("\"starting\"", "\"sleeping\"");
        let err = Instance::decode(&k, "/shoal/instances/app/abc", json.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("unknown variant `sleeping`"),
            "{err}"
        );
    }

    #[test]
    fn oversized_values_are_refused_before_parsing() {
        let big = vec![b' '; MAX_VALUE_BYTES + 1];
        let err = Instance::decode(&keys(), "/shoal/instances/app/abc", &big).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
    }

    #[test]
    fn advertised_addresses() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert_eq!(advertise_addr(None, any), "127.0.0.1:8080");
        assert_eq!(
            advertise_addr(None, "[::]:8080".parse().unwrap()),
            "[::1]:8080"
        );
        assert_eq!(
            advertise_addr(None, "10.0.0.5:9000".parse().unwrap()),
            "10.0.0.5:9000"
        );
        assert_eq!(advertise_addr(Some("app-1:80"), any), "app-1:80");
    }

    #[test]
    fn addresses() {
        for good in [
            "127.0.0.1:80",
            "[::1]:8080",
            "app-1:8080",
            "app.svc.local:1",
        ] {
            validate_addr("a", good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "host",
            "host:",
            "host:0",
            "host:99999",
            "0.0.0.0:80",
            ":80",
            "a b:80",
            "a..b:80",
        ] {
            assert!(validate_addr("a", bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn instance_fields_are_bounded() {
        let mut i = instance();
        i.weight = 0;
        assert_eq!(i.validate().unwrap_err().field, "instance.weight");
        let mut i = instance();
        i.version = "v\n1".into();
        assert_eq!(i.validate().unwrap_err().field, "instance.version");
        let mut i = instance();
        i.id = "a/b".into();
        assert_eq!(i.validate().unwrap_err().field, "instance.id");
    }

    #[test]
    fn routes() {
        let k = keys();
        let r: NamedRoute = NamedRoute::decode(
            &k,
            "/shoal/routes/api",
            br#"{"service":"app","path_prefix":"/api"}"#,
        )
        .unwrap();
        assert_eq!(r.name, "api");
        assert_eq!(r.route.policy, BalancePolicy::LeastRequest);
        let err = NamedRoute::decode(
            &k,
            "/shoal/routes/api",
            br#"{"service":"app","path_prefix":"api"}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("route.path_prefix: `api` must start with `/`"),
            "{err}"
        );
        let err = NamedRoute::decode(
            &k,
            "/shoal/routes/h",
            br#"{"service":"app","policy":"consistent-hash"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("route.hash_key"), "{err}");
        let r = NamedRoute::decode(
            &k,
            "/shoal/routes/h",
            br#"{"service":"app","policy":"consistent-hash","hash_key":{"from":"path-segment","name":1}}"#,
        )
        .unwrap();
        assert_eq!(r.route.hash_key, Some(HashKey::PathSegment(1)));
    }

    #[test]
    fn rate_limits() {
        let k = keys();
        let decode = |json: &str| NamedRoute::decode(&k, "/shoal/routes/api", json.as_bytes());
        let r = decode(r#"{"service":"app","rate_limit":{"per_second":2.5}}"#).unwrap();
        let limit = r.route.rate_limit.unwrap();
        assert_eq!(limit.by, RateKey::ClientIp);
        assert_eq!(limit.bucket(), 3.0, "burst defaults to the rate rounded up");
        assert!(!limit.shared);
        let r = decode(
            r#"{"service":"app","rate_limit":{"per_second":0.5,"burst":10,"by":{"from":"header","name":"X-Api-Key"},"shared":true}}"#,
        )
        .unwrap();
        let limit = r.route.rate_limit.unwrap();
        assert_eq!(limit.by, RateKey::Header("X-Api-Key".into()));
        assert_eq!(limit.bucket(), 10.0);
        assert!(limit.shared);
        assert_eq!(
            decode(r#"{"service":"app","rate_limit":{"per_second":0.1,"by":{"from":"route"}}}"#)
                .unwrap()
                .route
                .rate_limit
                .unwrap()
                .bucket(),
            1.0
        );
        for (json, expected) in [
            (
                r#"{"per_second":0}"#,
                "route.rate_limit.per_second: 0 is not a rate",
            ),
            (r#"{"per_second":2000000}"#, "between 0.001 and 1000000"),
            (
                r#"{"per_second":1,"burst":0}"#,
                "route.rate_limit.burst: 0 is not a bucket size",
            ),
            (
                r#"{"per_second":1,"by":{"from":"header","name":"x key"}}"#,
                "route.rate_limit.by.name: `x key` is not a header name",
            ),
            (
                r#"{"per_second":1,"by":{"from":"cookie","name":"x"}}"#,
                "unknown variant `cookie`",
            ),
            (
                r#"{"per_second":1,"per_minute":3}"#,
                "unknown field `per_minute`",
            ),
        ] {
            let err = decode(&format!(r#"{{"service":"app","rate_limit":{json}}}"#)).unwrap_err();
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
        // Left out, it is not written back (a route's JSON stays as it was).
        let plain = decode(r#"{"service":"app"}"#).unwrap().route;
        assert!(
            !serde_json::to_string(&plain)
                .unwrap()
                .contains("rate_limit")
        );
    }

    #[test]
    fn upstream_protocols() {
        let k = keys();
        let decode = |json: &str| NamedRoute::decode(&k, "/shoal/routes/api", json.as_bytes());
        let plain = decode(r#"{"service":"app"}"#).unwrap().route;
        assert_eq!(plain.upstream_protocol, UpstreamProtocol::Http1);
        // The default is not written back: existing routes' JSON (and so
        // their versions) stay as they were.
        let json = serde_json::to_string(&plain).unwrap();
        assert!(!json.contains("upstream_protocol"), "{json}");
        let grpc = decode(r#"{"service":"app","upstream_protocol":"h2c"}"#)
            .unwrap()
            .route;
        assert_eq!(grpc.upstream_protocol, UpstreamProtocol::H2c);
        let json = serde_json::to_string(&grpc).unwrap();
        assert!(json.contains(r#""upstream_protocol":"h2c""#), "{json}");
        assert!(!grpc.idempotent, "off by default");
        assert!(!json.contains("idempotent"), "{json}");
        let err = decode(r#"{"service":"app","upstream_protocol":"h2"}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("unknown variant `h2`, expected `http1` or `h2c`"),
            "{err}"
        );
    }

    #[test]
    fn policies() {
        let k = keys();
        let p = ScalingPolicy::decode(
            &k,
            "/shoal/policies/app",
            br#"{"service":"app","min":0,"max":5,"metric":"inflight","target":4}"#,
        )
        .unwrap();
        assert_eq!(p.tolerance, 0.1);
        assert_eq!(p.scale_down_stabilization_secs, 30);
        assert_eq!(p.scale_up_stabilization_secs, 0);
        let err = ScalingPolicy::decode(
            &k,
            "/shoal/policies/app",
            br#"{"service":"app","min":6,"max":5,"metric":"inflight","target":4}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("min 6 is above max 5"), "{err}");
        let err = ScalingPolicy::decode(
            &k,
            "/shoal/policies/app",
            br#"{"service":"app","min":1,"max":5,"metric":"qps","target":4}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown variant `qps`"), "{err}");
    }

    #[test]
    fn policy_names_parse() {
        assert_eq!(
            "sticky".parse::<BalancePolicy>().unwrap(),
            BalancePolicy::Sticky
        );
        assert!(
            "random"
                .parse::<BalancePolicy>()
                .unwrap_err()
                .contains("round-robin")
        );
    }
}
