//! TLS termination: the certificates of `--tls-cert`/`--tls-key` and, with
//! `--tls-registry-certs`, those of the registry (`{prefix}/certs/`, kept
//! current by [`registry_certs`](crate::registry_certs)), chosen by SNI,
//! and the rustls server configuration of the `--tls-listen` listener (the
//! listener itself is [`server`](crate::server)'s, with a TLS handshake in
//! front of the same connection code).
//!
//! - Loading ([`CertSet::load`]): each pair's files are read and checked by
//!   [`registry::tls_cert::check_pair`] (the check `registry certs put`
//!   and the registry's readers make too): PEM chain and key, the key
//!   against the certificate, SAN DNS names and `notAfter`. Each failure is
//!   an error naming the file and the fix.
//! - Choosing ([`Certs`], rustls's [`ResolvesServerCert`]): the client's SNI
//!   name (case-insensitive) against the certificates' DNS names, exact
//!   names first, then a wildcard (`*.example.com` covers one label:
//!   `a.example.com`, not `example.com` nor `a.b.example.com`); the first
//!   certificate when nothing matches or the client sent no SNI. The order:
//!   the file pairs as given, then the registry's in name order; so two
//!   certificates naming the same host resolve to a file pair before a
//!   registry one, and the default is the first file pair, or the first
//!   registry certificate when no file is given. No certificate at all (no
//!   files, none in the registry yet): handshakes fail.
//! - Reloading: SIGHUP ([`Certs::reload`]) reads every pair again and swaps
//!   the files' part in only if all of them load; a registry change
//!   ([`Certs::set_registry`]) swaps the registry's part. Either way the
//!   whole set is replaced at once ([`ArcSwap`]): handshakes from then on
//!   get the new certificates, open connections keep their session. A
//!   failed reload keeps the old set and says why.
//! - Expiry: a warning for a certificate that expires within
//!   [`EXPIRY_WARNING`] (or has expired) at load and reload, and for a
//!   registry certificate when it appears or changes; [`Certs::expiry`]
//!   feeds the `shoal_gateway_tls_cert_expiry_seconds` metric (name: the
//!   file's path, or `registry:{name}`).
//! - Protocol ([`server_config`]): TLS 1.2 and 1.3 only, ALPN `h2` then
//!   `http/1.1`, rustls's `ring` provider (the one etcd-client's TLS already
//!   compiles in).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use registry::tls_cert::{PairError, ParsedCert, check_pair};
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

/// A certificate expiring within this long gets a warning at load and reload.
pub const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One `--tls-cert` and the `--tls-key` given with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Why a certificate pair cannot be used; each says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    // `cause`, not `source`: the message already says it, and a source
    // would print it twice in the start-up error's chain.
    #[error("cannot read {flag} {}: {cause}; check the path and that the gateway may read the file", path.display())]
    Read {
        flag: &'static str,
        path: PathBuf,
        cause: std::io::Error,
    },
    /// `problem` says how to give the chain ([`registry::tls_cert::CHAIN_FORMAT`]).
    #[error("--tls-cert {}: {problem}", path.display())]
    BadCert { path: PathBuf, problem: String },
    /// `problem` says how to give the key ([`registry::tls_cert::KEY_FORMAT`]).
    #[error("--tls-key {}: {problem}", path.display())]
    BadKey { path: PathBuf, problem: String },
    #[error("key {} does not match certificate {}; give each --tls-cert with the --tls-key it was issued for, in the same order", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf },
}

/// Where a certificate came from: what to do when it expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A `--tls-cert`/`--tls-key` pair.
    File,
    /// `{prefix}/certs/{name}`.
    Registry,
}

/// A checked certificate (its chain and key, SAN DNS names, `notAfter`),
/// where it came from and what it is called.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// What logs and the metric call it: the certificate file's path, or
    /// `registry:{name}`.
    pub name: String,
    pub origin: Origin,
    pub parsed: ParsedCert,
}

/// Every pair, loaded, and the SNI lookup over them.
#[derive(Debug)]
pub struct CertSet {
    /// In flag order; the first is the default.
    certs: Vec<LoadedCert>,
    /// Exact DNS name → index.
    exact: HashMap<String, usize>,
    /// `example.com` for a `*.example.com` name → index.
    wildcard: HashMap<String, usize>,
}

impl CertSet {
    /// Read and check every pair; the first problem is the error.
    pub fn load(pairs: &[CertPair]) -> Result<CertSet, TlsError> {
        let mut certs = Vec::with_capacity(pairs.len());
        for pair in pairs {
            certs.push(load_pair(pair)?);
        }
        Ok(CertSet::new(certs))
    }

    /// The set of `certs`, in order of precedence.
    pub fn new(certs: Vec<LoadedCert>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.parsed.dns_names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_owned()).or_insert(i),
                    None => exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        CertSet {
            certs,
            exact,
            wildcard,
        }
    }

    /// The certificate for SNI name `sni` (see the module doc).
    pub fn pick(&self, sni: Option<&str>) -> Option<&LoadedCert> {
        let found = sni.and_then(|sni| {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            self.exact.get(&sni).copied().or_else(|| {
                let (_, parent) = sni.split_once('.')?;
                self.wildcard.get(parent).copied()
            })
        });
        self.certs.get(found.unwrap_or(0))
    }

    pub fn certs(&self) -> &[LoadedCert] {
        &self.certs
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|cause| TlsError::Read {
        flag,
        path: path.to_owned(),
        cause,
    })
}

fn load_pair(pair: &CertPair) -> Result<LoadedCert, TlsError> {
    let cert_pem = read("--tls-cert", &pair.cert)?;
    let key_pem = read("--tls-key", &pair.key)?;
    let parsed = check_pair(&cert_pem, &key_pem).map_err(|e| match e {
        PairError::Mismatch => TlsError::Mismatch {
            key: pair.key.clone(),
            cert: pair.cert.clone(),
        },
        e if e.is_about_key() => TlsError::BadKey {
            path: pair.key.clone(),
            problem: e.problem("the file"),
        },
        e => TlsError::BadCert {
            path: pair.cert.clone(),
            problem: e.problem("the file"),
        },
    })?;
    Ok(LoadedCert {
        name: pair.cert.display().to_string(),
        origin: Origin::File,
        parsed,
    })
}

/// The certificates in use: what rustls asks for a certificate on each
/// handshake, what SIGHUP reloads, what the registry follower updates and
/// what the metric reads. Share it in an `Arc`.
pub struct Certs {
    pairs: Vec<CertPair>,
    provider: Arc<CryptoProvider>,
    /// Each source's part, kept to build `current` again when the other
    /// changes; the lock orders a reload and a registry change (never
    /// taken on a handshake).
    parts: Mutex<Parts>,
    current: ArcSwap<CertSet>,
}

/// The files' certificates and the registry's, in their order.
#[derive(Default)]
struct Parts {
    files: Vec<LoadedCert>,
    registry: Vec<LoadedCert>,
}

impl Parts {
    fn set(&self) -> CertSet {
        CertSet::new(self.files.iter().chain(&self.registry).cloned().collect())
    }
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Load every pair (an error if one cannot be used; there may be none
    /// when the registry's certificates are served) and warn about any
    /// that expires soon.
    pub fn load(pairs: Vec<CertPair>) -> Result<Arc<Certs>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let set = CertSet::load(&pairs)?;
        warn_expiring(&set.certs, unix_now());
        let parts = Parts {
            files: set.certs,
            registry: Vec::new(),
        };
        Ok(Arc::new(Certs {
            pairs,
            provider,
            current: ArcSwap::from_pointee(parts.set()),
            parts: Mutex::new(parts),
        }))
    }

    /// Read every pair again and use them if all of them load; otherwise
    /// keep the current ones and return why. Blocking file reads: call it
    /// off the request workers.
    pub fn reload(&self) -> Result<(), TlsError> {
        let files = CertSet::load(&self.pairs)?.certs;
        warn_expiring(&files, unix_now());
        info!(
            certificates = files.len(),
            "TLS certificates reloaded; new handshakes use them"
        );
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        parts.files = files;
        self.current.store(Arc::new(parts.set()));
        Ok(())
    }

    /// Serve `certs` (the registry's, in name order) after the files' from
    /// the next handshake on, and warn about those that are new or changed
    /// (another chain under the name) and expire soon. The same names and
    /// chains as now (the registry's watcher publishes its snapshot again
    /// on progress notifications and reconnections) change nothing: `false`.
    pub fn set_registry(&self, certs: Vec<LoadedCert>) -> bool {
        let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
        let same = |a: &LoadedCert, b: &LoadedCert| {
            a.name == b.name && a.parsed.key.cert == b.parsed.key.cert
        };
        let changed: Vec<LoadedCert> = certs
            .iter()
            .filter(|cert| !parts.registry.iter().any(|old| same(old, cert)))
            .cloned()
            .collect();
        if changed.is_empty() && certs.len() == parts.registry.len() {
            return false;
        }
        warn_expiring(&changed, unix_now());
        parts.registry = certs;
        self.current.store(Arc::new(parts.set()));
        true
    }

    /// Each certificate's name and seconds until its `notAfter` (negative once expired).
    pub fn expiry(&self) -> Vec<(String, i64)> {
        let now = unix_now();
        self.current
            .load()
            .certs
            .iter()
            .map(|c| (c.name.clone(), c.parsed.not_after - now))
            .collect()
    }

    /// The set in use now.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.load_full()
    }
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .load()
            .pick(hello.server_name())
            .map(|cert| cert.parsed.key.clone())
    }
}

/// The TLS listener's rustls configuration: TLS 1.2 and 1.3, ALPN h2 and
/// http/1.1, certificates from `certs`.
pub fn server_config(certs: Arc<Certs>) -> Arc<ServerConfig> {
    let provider = certs.provider.clone();
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}

fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Warn about each certificate that expires within [`EXPIRY_WARNING`] of `now`.
fn warn_expiring(certs: &[LoadedCert], now: i64) {
    for (cert, left) in expiring(certs, now) {
        let renew = match cert.origin {
            Origin::File => "renew it and send the gateway SIGHUP",
            Origin::Registry => {
                "renew it and write it again with `registry certs put NAME --cert CHAIN.pem --key KEY.pem`"
            }
        };
        if left <= 0 {
            warn!(certificate = %cert.name, expired_seconds_ago = -left, "TLS certificate has expired; clients will refuse it: {renew}");
        } else {
            warn!(certificate = %cert.name, expires_in_hours = left / 3600, "TLS certificate expires within 14 days; {renew}");
        }
    }
}

/// The certificates expiring within [`EXPIRY_WARNING`] of `now`, and the seconds they have left.
fn expiring(certs: &[LoadedCert], now: i64) -> Vec<(&LoadedCert, i64)> {
    let warn_within = EXPIRY_WARNING.as_secs() as i64;
    certs
        .iter()
        .map(|cert| (cert, cert.parsed.not_after - now))
        .filter(|(_, left)| *left < warn_within)
        .collect()
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;

    use super::*;

    fn loaded(name: &str, dns_names: &[&str], not_after: i64) -> LoadedCert {
        let provider = rustls::crypto::ring::default_provider();
        // Any key will do for the lookup tests: RFC 8410 §10.3's Ed25519 example.
        let key = PrivateKeyDer::from_pem_slice(ED25519_PEM.as_bytes()).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        LoadedCert {
            name: name.into(),
            origin: Origin::File,
            parsed: ParsedCert {
                key: Arc::new(CertifiedKey::new(vec![], signing)),
                dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
                not_after,
            },
        }
    }

    const ED25519_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";

    fn picked(set: &CertSet, sni: Option<&str>) -> String {
        set.pick(sni).unwrap().name.clone()
    }

    #[test]
    fn sni_picks_exact_then_wildcard_then_the_first() {
        let set = CertSet::new(vec![
            loaded("default", &["default.test"], 0),
            loaded("wild", &["*.example.com"], 0),
            loaded("api", &["api.example.com", "other.test"], 0),
        ]);
        assert_eq!(picked(&set, Some("api.example.com")), "api");
        assert_eq!(picked(&set, Some("API.Example.COM.")), "api");
        assert_eq!(picked(&set, Some("www.example.com")), "wild");
        assert_eq!(picked(&set, Some("other.test")), "api");
        // A wildcard covers one label only.
        assert_eq!(picked(&set, Some("example.com")), "default");
        assert_eq!(picked(&set, Some("a.b.example.com")), "default");
        assert_eq!(picked(&set, Some("unknown.test")), "default");
        assert_eq!(picked(&set, None), "default");
    }

    #[test]
    fn the_first_certificate_naming_a_host_wins() {
        let set = CertSet::new(vec![
            loaded("one", &["a.test"], 0),
            loaded("two", &["a.test", "b.test"], 0),
        ]);
        assert_eq!(picked(&set, Some("a.test")), "one");
        assert_eq!(picked(&set, Some("b.test")), "two");
    }

    fn from_registry(name: &str, dns_names: &[&str]) -> LoadedCert {
        LoadedCert {
            origin: Origin::Registry,
            ..loaded(&format!("registry:{name}"), dns_names, 0)
        }
    }

    #[test]
    fn file_pairs_come_before_the_registry_and_the_first_file_is_the_default() {
        let parts = Parts {
            files: vec![
                loaded("file-a", &["a.test"], 0),
                loaded("file-shared", &["shared.test"], 0),
            ],
            registry: vec![
                from_registry("r1", &["shared.test", "r.test"]),
                from_registry("r2", &["*.wild.test"]),
            ],
        };
        let set = parts.set();
        assert_eq!(picked(&set, Some("shared.test")), "file-shared");
        assert_eq!(picked(&set, Some("r.test")), "registry:r1");
        assert_eq!(picked(&set, Some("x.wild.test")), "registry:r2");
        assert_eq!(picked(&set, Some("unknown.test")), "file-a");
        assert_eq!(picked(&set, None), "file-a");
    }

    #[test]
    fn without_files_the_first_registry_certificate_is_the_default() {
        let certs = Certs::load(Vec::new()).unwrap();
        assert!(
            certs.current().pick(Some("a.test")).is_none(),
            "nothing to serve yet"
        );
        certs.set_registry(vec![
            from_registry("a", &["a.test"]),
            from_registry("b", &["b.test"]),
        ]);
        let set = certs.current();
        assert_eq!(picked(&set, Some("b.test")), "registry:b");
        assert_eq!(picked(&set, Some("other.test")), "registry:a");
        let names: Vec<String> = certs.expiry().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["registry:a", "registry:b"]);
        // Deleted from the registry: gone from the set.
        certs.set_registry(vec![from_registry("b", &["b.test"])]);
        assert_eq!(picked(&certs.current(), Some("a.test")), "registry:b");
    }

    #[test]
    fn certificates_expiring_within_14_days_are_named() {
        let day = 24 * 3600;
        let set = CertSet::new(vec![
            loaded("fine", &[], 1000 + 30 * day),
            loaded("soon", &[], 1000 + 13 * day),
            loaded("gone", &[], 1000 - day),
        ]);
        let names: Vec<(&str, i64)> = expiring(set.certs(), 1000)
            .into_iter()
            .map(|(c, left)| (c.name.as_str(), left))
            .collect();
        assert_eq!(names, [("soon", 13 * day), ("gone", -day)]);
    }

    #[test]
    fn unreadable_and_empty_files_say_which_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let missing = CertPair {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope-key.pem"),
        };
        let err = CertSet::load(&[missing]).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot read --tls-cert ") && err.contains("nope.pem"),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let pair = CertPair {
            cert: empty.clone(),
            key: empty,
        };
        let err = CertSet::load(&[pair]).unwrap_err().to_string();
        assert!(
            err.contains("no certificate in the file") && err.contains("BEGIN CERTIFICATE"),
            "{err}"
        );
    }
}
