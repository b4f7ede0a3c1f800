//! The etcd key layout, built and parsed in one place.
//!
//! ```text
//! {prefix}/instances/{service}/{instance-id}   Instance JSON, on the instance's lease
//! {prefix}/retire/{service}/{instance-id}      reason JSON; the instance drains when it appears
//! {prefix}/gateways/{gateway-id}               GatewayInfo JSON, on the gateway's lease
//! {prefix}/routes/{route-name}                 Route JSON
//! {prefix}/policies/{service}                  ScalingPolicy JSON
//! {prefix}/rollouts/{service}                  Rollout JSON, until the rolling restart ends
//! {prefix}/autoscaler/leader                   etcd election name
//! {prefix}/events/{service}/{seq:020}          ScalingEvent JSON, bounded history
//! {prefix}/services/{service}                  Service JSON (how to run it), persistent
//! {prefix}/service-history/{service}/{seq:020} earlier Service specs, for rollback
//! {prefix}/certs/{name}                        CertPem JSON (TLS chain + key), persistent
//! ```
//!
//! Prefix directories end with `/` so that a prefix watch on `instances/app/`
//! never matches `instances/app2/...`.

use crate::model::ValidationError;

/// Default key prefix (flag `--prefix`, env `SHOAL_PREFIX`).
pub const DEFAULT_PREFIX: &str = "/shoal";

/// Key builder and parser for one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// A parsed registry key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Instance { service: String, id: String },
    Retire { service: String, id: String },
    Gateway { id: String },
    Route { name: String },
    Policy { service: String },
    Rollout { service: String },
    Event { service: String, seq: u64 },
    Service { service: String },
    ServiceHistory { service: String, seq: u64 },
    Cert { name: String },
    Leader,
}

/// Why a key is not part of the layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("`{0}` is outside the prefix `{1}`")]
    OutsidePrefix(String, String),
    #[error("`{0}` does not match the key layout (see docs/architecture.md)")]
    Unknown(String),
    #[error("`{key}`: {source}")]
    BadSegment {
        key: String,
        #[source]
        source: ValidationError,
    },
}

/// A key segment (service, id, route name): 1..=128 bytes of `[A-Za-z0-9._-]`.
pub fn validate_segment(field: &str, segment: &str) -> Result<(), ValidationError> {
    if segment.is_empty() {
        return Err(ValidationError::new(field, "is empty"));
    }
    if segment.len() > 128 {
        return Err(ValidationError::new(
            field,
            format!("{} bytes; at most 128 are allowed", segment.len()),
        ));
    }
    if segment == "." || segment == ".." {
        return Err(ValidationError::new(
            field,
            format!("`{segment}` is reserved"),
        ));
    }
    if let Some(c) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(ValidationError::new(
            field,
            format!("`{segment}` contains {c:?}; use letters, digits, `.`, `_` and `-`"),
        ));
    }
    Ok(())
}

impl Default for Keys {
    fn default() -> Self {
        Keys {
            prefix: DEFAULT_PREFIX.to_owned(),
        }
    }
}

impl Keys {
    /// `prefix` must start with `/`; a trailing `/` is dropped.
    pub fn new(prefix: &str) -> Result<Self, ValidationError> {
        let trimmed = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') || trimmed.is_empty() {
            return Err(ValidationError::new(
                "prefix",
                format!("`{prefix}` must start with `/` and name a directory, e.g. /shoal"),
            ));
        }
        for part in trimmed[1..].split('/') {
            validate_segment("prefix", part)?;
        }
        Ok(Keys {
            prefix: trimmed.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Everything Shoal stores, as a directory (`/shoal/`).
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    pub fn instances(&self) -> String {
        format!("{}/instances/", self.prefix)
    }

    pub fn service_instances(&self, service: &str) -> String {
        format!("{}/instances/{service}/", self.prefix)
    }

    pub fn instance(&self, service: &str, id: &str) -> String {
        format!("{}/instances/{service}/{id}", self.prefix)
    }

    pub fn retires(&self) -> String {
        format!("{}/retire/", self.prefix)
    }

    pub fn retire(&self, service: &str, id: &str) -> String {
        format!("{}/retire/{service}/{id}", self.prefix)
    }

    pub fn gateways(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }

    pub fn gateway(&self, id: &str) -> String {
        format!("{}/gateways/{id}", self.prefix)
    }

    pub fn routes(&self) -> String {
        format!("{}/routes/", self.prefix)
    }

    pub fn route(&self, name: &str) -> String {
        format!("{}/routes/{name}", self.prefix)
    }

    pub fn policies(&self) -> String {
        format!("{}/policies/", self.prefix)
    }

    pub fn policy(&self, service: &str) -> String {
        format!("{}/policies/{service}", self.prefix)
    }

    pub fn rollouts(&self) -> String {
        format!("{}/rollouts/", self.prefix)
    }

    pub fn rollout(&self, service: &str) -> String {
        format!("{}/rollouts/{service}", self.prefix)
    }

    /// The election name; etcd appends `/{lease-id}` for each candidate.
    pub fn leader(&self) -> String {
        format!("{}/autoscaler/leader", self.prefix)
    }

    pub fn events(&self) -> String {
        format!("{}/events/", self.prefix)
    }

    pub fn service_events(&self, service: &str) -> String {
        format!("{}/events/{service}/", self.prefix)
    }

    /// Zero-padded so that etcd's lexical order is the sequence order.
    pub fn event(&self, service: &str, seq: u64) -> String {
        format!("{}/events/{service}/{seq:020}", self.prefix)
    }

    pub fn services(&self) -> String {
        format!("{}/services/", self.prefix)
    }

    pub fn service(&self, service: &str) -> String {
        format!("{}/services/{service}", self.prefix)
    }

    pub fn service_history(&self, service: &str) -> String {
        format!("{}/service-history/{service}/", self.prefix)
    }

    /// Zero-padded so that etcd's lexical order is the sequence order.
    pub fn service_history_entry(&self, service: &str, seq: u64) -> String {
        format!("{}/service-history/{service}/{seq:020}", self.prefix)
    }

    pub fn certs(&self) -> String {
        format!("{}/certs/", self.prefix)
    }

    pub fn cert(&self, name: &str) -> String {
        format!("{}/certs/{name}", self.prefix)
    }

    /// Parse any key of the layout; segments are validated.
    pub fn parse(&self, key: &str) -> Result<Key, KeyError> {
        let rest = key
            .strip_prefix(&self.prefix)
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| KeyError::OutsidePrefix(key.to_owned(), self.prefix.clone()))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let seg = |field: &str, s: &str| -> Result<String, KeyError> {
            validate_segment(field, s).map_err(|source| KeyError::BadSegment {
                key: key.to_owned(),
                source,
            })?;
            Ok(s.to_owned())
        };
        let seq = |s: &str| -> Result<u64, KeyError> {
            s.parse().map_err(|_| KeyError::BadSegment {
                key: key.to_owned(),
                source: ValidationError::new("sequence number", format!("`{s}` is not a number")),
            })
        };
        match parts.as_slice() {
            ["instances", service, id] => Ok(Key::Instance {
                service: seg("service", service)?,
                id: seg("instance id", id)?,
            }),
            ["retire", service, id] => Ok(Key::Retire {
                service: seg("service", service)?,
                id: seg("instance id", id)?,
            }),
            ["gateways", id] => Ok(Key::Gateway {
                id: seg("gateway id", id)?,
            }),
            ["routes", name] => Ok(Key::Route {
                name: seg("route name", name)?,
            }),
            ["policies", service] => Ok(Key::Policy {
                service: seg("service", service)?,
            }),
            ["rollouts", service] => Ok(Key::Rollout {
                service: seg("service", service)?,
            }),
            ["events", service, n] => Ok(Key::Event {
                service: seg("service", service)?,
                seq: seq(n)?,
            }),
            ["services", service] => Ok(Key::Service {
                service: seg("service", service)?,
            }),
            ["service-history", service, n] => Ok(Key::ServiceHistory {
                service: seg("service", service)?,
                seq: seq(n)?,
            }),
            ["certs", name] => Ok(Key::Cert {
                name: seg("certificate name", name)?,
            }),
            ["autoscaler", "leader", ..] => Ok(Key::Leader),
            _ => Err(KeyError::Unknown(key.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses_every_kind_of_key() {
        let k = Keys::new("/shoal").unwrap();
        let cases = [
            (
                k.instance("app", "i-1"),
                Key::Instance {
                    service: "app".into(),
                    id: "i-1".into(),
                },
            ),
            (
                k.retire("app", "i-1"),
                Key::Retire {
                    service: "app".into(),
                    id: "i-1".into(),
                },
            ),
            (k.gateway("g1"), Key::Gateway { id: "g1".into() }),
            (k.route("api"), Key::Route { name: "api".into() }),
            (
                k.policy("app"),
                Key::Policy {
                    service: "app".into(),
                },
            ),
            (
                k.rollout("app"),
                Key::Rollout {
                    service: "app".into(),
                },
            ),
            (
                k.service("app"),
                Key::Service {
                    service: "app".into(),
                },
            ),
            (
                k.service_history_entry("app", 7),
                Key::ServiceHistory {
                    service: "app".into(),
                    seq: 7,
                },
            ),
            (
                k.event("app", 42),
                Key::Event {
                    service: "app".into(),
                    seq: 42,
                },
            ),
            (
                k.cert("shop"),
                Key::Cert {
                    name: "shop".into(),
                },
            ),
            (format!("{}/694d7e", k.leader()), Key::Leader),
        ];
        for (key, want) in cases {
            assert_eq!(k.parse(&key).unwrap(), want, "{key}");
        }
        assert_eq!(k.event("app", 42), "/shoal/events/app/00000000000000000042");
    }

    #[test]
    fn prefix_is_normalised_and_checked() {
        assert_eq!(Keys::new("/a/b/").unwrap().instances(), "/a/b/instances/");
        for bad in ["", "/", "shoal", "/a//b", "/a b"] {
            assert!(Keys::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn keys_outside_the_layout_are_refused() {
        let k = Keys::default();
        assert!(matches!(
            k.parse("/other/instances/a/b"),
            Err(KeyError::OutsidePrefix(..))
        ));
        assert!(matches!(
            k.parse("/shoalx/instances/a/b"),
            Err(KeyError::OutsidePrefix(..))
        ));
        assert!(matches!(
            k.parse("/shoal/instances/a"),
            Err(KeyError::Unknown(_))
        ));
        assert!(matches!(
            k.parse("/shoal/instances/a/b/c"),
            Err(KeyError::Unknown(_))
        ));
        assert!(matches!(
            k.parse("/shoal/instances/a/"),
            Err(KeyError::BadSegment { .. })
        ));
        assert!(matches!(
            k.parse("/shoal/events/a/x"),
            Err(KeyError::BadSegment { .. })
        ));
        let err = k.parse("/shoal/instances/a b/c").unwrap_err();
        assert!(err.to_string().contains("use letters, digits"), "{err}");
    }

    #[test]
    fn service_prefixes_do_not_overlap() {
        let k = Keys::default();
        assert!(
            !k.instance("app2", "x")
                .starts_with(&k.service_instances("app"))
        );
    }
}
