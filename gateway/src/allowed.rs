//! `--allowed-backends`: the networks an instance's address must be in for
//! the gateway to send it traffic, so that whoever can write to the registry
//! cannot point the gateway anywhere else (a cloud metadata address, an
//! internal admin port).
//!
//! Applied to the instances' snapshot before the routing table is built: a
//! refused instance is not in any pool, so it gets no request and the admin
//! API and dashboard do not list it. A host name is refused too when the flag
//! is set, because the address it resolves to could change after the check
//! (DNS rebinding); register an IP address instead, or leave the flag unset.
//! Each refusal is logged once per change of the instance's key or address,
//! not once per table rebuild.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use registry::Instance;
use tracing::{info, warn};

/// The allowed networks; empty means every address is allowed.
#[derive(Debug, Clone, Default)]
pub struct AllowedBackends {
    nets: Vec<IpNet>,
    /// Keys refused by the last [`filter`](Self::filter), with the address
    /// that was refused, so a warning is logged once per change.
    refused: HashMap<String, String>,
}

/// Parse one CIDR for clap (`10.0.0.0/8`, `fd00::/8`; a bare IP is one host).
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net);
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "`{s}` is not a network; use CIDR notation such as 10.0.0.0/8, 127.0.0.0/8 or fd00::/8"
    ))
}

impl AllowedBackends {
    pub fn new(nets: Vec<IpNet>) -> Self {
        AllowedBackends {
            nets,
            refused: HashMap::new(),
        }
    }

    /// Why `addr` is refused, or `None` if it is allowed.
    pub fn refusal(&self, addr: &str) -> Option<String> {
        if self.nets.is_empty() {
            return None;
        }
        let Ok(socket) = addr.parse::<SocketAddr>() else {
            return Some(
                "is a host name, and --allowed-backends only admits IP addresses (a name could resolve elsewhere later); \
                 register the instance with an IP address, or drop --allowed-backends"
                    .to_owned(),
            );
        };
        let ip = socket.ip().to_canonical();
        if self.nets.iter().any(|net| net.contains(&ip)) {
            return None;
        }
        Some(format!(
            "is outside --allowed-backends {}; fix the registration or widen the flag",
            self.describe()
        ))
    }

    fn describe(&self) -> String {
        self.nets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The instances allowed to get traffic (borrowed as they are when the
    /// flag is not set). Logs a warning for each newly refused key or address.
    pub fn filter<'a>(
        &mut self,
        instances: &'a BTreeMap<String, Instance>,
    ) -> Cow<'a, BTreeMap<String, Instance>> {
        if self.nets.is_empty() {
            return Cow::Borrowed(instances);
        }
        let mut refused = HashMap::new();
        let mut allowed = BTreeMap::new();
        for (key, instance) in instances {
            match self.refusal(&instance.addr) {
                None => {
                    allowed.insert(key.clone(), instance.clone());
                }
                Some(reason) => {
                    if self.refused.get(key) != Some(&instance.addr) {
                        warn!(key = %key, addr = %instance.addr, "instance refused: its address {} {reason}", instance.addr);
                    }
                    refused.insert(key.clone(), instance.addr.clone());
                }
            }
        }
        for (key, addr) in &self.refused {
            if !refused.contains_key(key) && allowed.contains_key(key) {
                info!(key = %key, addr = %addr, "instance no longer refused: its address is now allowed");
            }
        }
        self.refused = refused;
        Cow::Owned(allowed)
    }

    /// How many instances the last [`filter`](Self::filter) refused.
    pub fn refused_count(&self) -> usize {
        self.refused.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(cidrs: &[&str]) -> AllowedBackends {
        AllowedBackends::new(cidrs.iter().map(|c| parse_cidr(c).unwrap()).collect())
    }

    #[test]
    fn cidrs_parse_or_say_how_to_write_them() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        let err = parse_cidr("10.0.0.0/33").unwrap_err();
        assert!(err.contains("CIDR notation such as 10.0.0.0/8"), "{err}");
        assert!(parse_cidr("intranet").is_err());
    }

    #[test]
    fn addresses_are_checked_against_every_network() {
        let a = allowed(&["10.0.0.0/8", "fd00::/8"]);
        assert_eq!(a.refusal("10.1.2.3:80"), None);
        assert_eq!(a.refusal("[fd00::1]:80"), None);
        // An IPv4-mapped IPv6 address is its IPv4 address.
        assert_eq!(a.refusal("[::ffff:10.0.0.1]:80"), None);
        let outside = a.refusal("127.0.0.1:80").unwrap();
        assert!(
            outside.contains("outside --allowed-backends 10.0.0.0/8,fd00::/8"),
            "{outside}"
        );
        let name = a.refusal("app.internal:80").unwrap();
        assert!(
            name.contains("host name") && name.contains("IP address"),
            "{name}"
        );
        // No flag: everything, names included.
        assert_eq!(AllowedBackends::default().refusal("app.internal:80"), None);
    }

    #[test]
    fn filter_drops_refused_instances_and_remembers_them() {
        let mut a = allowed(&["10.0.0.0/8"]);
        let mut instances = BTreeMap::new();
        let mut inside = Instance::new("app", "10.0.0.1:80");
        inside.id = "in".into();
        let mut outside = Instance::new("app", "127.0.0.1:80");
        outside.id = "out".into();
        instances.insert("/shoal/instances/app/in".to_owned(), inside);
        instances.insert("/shoal/instances/app/out".to_owned(), outside);
        let kept = a.filter(&instances);
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["/shoal/instances/app/in"]);
        assert_eq!(a.refused_count(), 1);
        assert!(matches!(
            AllowedBackends::default().filter(&instances),
            Cow::Borrowed(_)
        ));
    }
}
