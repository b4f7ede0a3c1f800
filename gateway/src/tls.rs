//! TLS termination: the certificates of `--tls-cert`/`--tls-key`, chosen by
//! SNI, and the rustls server configuration of the `--tls-listen` listener
//! (the listener itself is [`server`](crate::server)'s, with a TLS
//! handshake in front of the same connection code).
//!
//! - Loading ([`CertSet::load`]): each pair's files are read, the PEM
//!   certificate chain and private key parsed, the key checked against the
//!   certificate, and the certificate's SAN DNS names and `notAfter` read
//!   (x509-parser). Each failure is an error naming the file and the fix.
//! - Choosing ([`Certs`], rustls's [`ResolvesServerCert`]): the client's SNI
//!   name (case-insensitive) against the certificates' DNS names, exact
//!   names first, then a wildcard (`*.example.com` covers one label:
//!   `a.example.com`, not `example.com` nor `a.b.example.com`); the first
//!   pair given when nothing matches or the client sent no SNI. Two
//!   certificates naming the same host: the one given first.
//! - Reloading ([`Certs::reload`], on SIGHUP): every pair is read again and
//!   swapped in whole ([`ArcSwap`]) only if all of them load; handshakes
//!   from then on get the new certificates, open connections keep their
//!   session. A failed reload keeps the old set and says why.
//! - Expiry: a warning at load and reload for a certificate that expires
//!   within [`EXPIRY_WARNING`] (or has expired); [`Certs::expiry`] feeds the
//!   `shoal_gateway_tls_cert_expiry_seconds` metric.
//! - Protocol ([`server_config`]): TLS 1.2 and 1.3 only, ALPN `h2` then
//!   `http/1.1`, rustls's `ring` provider (the one etcd-client's TLS already
//!   compiles in).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{InconsistentKeys, ServerConfig};
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
    #[error("--tls-cert {}: {problem}; give the certificate chain in PEM (-----BEGIN CERTIFICATE-----), the server's own certificate first", path.display())]
    BadCert { path: PathBuf, problem: String },
    #[error("--tls-key {}: {problem}; give the private key in PEM (PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)", path.display())]
    BadKey { path: PathBuf, problem: String },
    #[error("key {} does not match certificate {}; give each --tls-cert with the --tls-key it was issued for, in the same order", key.display(), cert.display())]
    Mismatch { key: PathBuf, cert: PathBuf },
}

/// A loaded certificate and what choosing it needs.
pub struct LoadedCert {
    /// What logs and the metric call it: the certificate file's path.
    pub name: String,
    pub key: Arc<CertifiedKey>,
    /// SAN DNS names, lower case (wildcards as written: `*.example.com`).
    pub dns_names: Vec<String>,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("name", &self.name)
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
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
    pub fn load(pairs: &[CertPair], provider: &CryptoProvider) -> Result<CertSet, TlsError> {
        let mut certs = Vec::with_capacity(pairs.len());
        for pair in pairs {
            certs.push(load_pair(pair, provider)?);
        }
        Ok(CertSet::new(certs))
    }

    fn new(certs: Vec<LoadedCert>) -> CertSet {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for (i, cert) in certs.iter().enumerate() {
            for name in &cert.dns_names {
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

fn load_pair(pair: &CertPair, provider: &CryptoProvider) -> Result<LoadedCert, TlsError> {
    let bad_cert = |problem: String| TlsError::BadCert {
        path: pair.cert.clone(),
        problem,
    };
    let bad_key = |problem: String| TlsError::BadKey {
        path: pair.key.clone(),
        problem,
    };
    let cert_pem = read("--tls-cert", &pair.cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_cert(format!("not valid PEM ({e})")))?;
    if chain.is_empty() {
        return Err(bad_cert("no certificate in the file".into()));
    }
    let (dns_names, not_after) = describe(&chain[0]).map_err(bad_cert)?;
    let key_pem = read("--tls-key", &pair.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => bad_key("no private key in the file".into()),
        e => bad_key(format!("not valid PEM ({e})")),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad_key(format!("unusable key ({e})")))?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(TlsError::Mismatch {
                key: pair.key.clone(),
                cert: pair.cert.clone(),
            });
        }
        Err(e) => return Err(bad_cert(format!("cannot read its public key ({e})"))),
    }
    Ok(LoadedCert {
        name: pair.cert.display().to_string(),
        key: Arc::new(key),
        dns_names,
        not_after,
    })
}

/// A certificate's SAN DNS names (lower case) and `notAfter`.
fn describe(cert: &CertificateDer<'_>) -> Result<(Vec<String>, i64), String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("the first certificate is not valid X.509 ({e})"))?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|e| format!("its subjectAltName extension is unreadable ({e})"))?;
    let dns_names = san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => {
                        Some(dns.trim_end_matches('.').to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((dns_names, parsed.validity().not_after.timestamp()))
}

/// The certificates in use: what rustls asks for a certificate on each
/// handshake, what SIGHUP reloads and what the metric reads. Share it in an
/// `Arc`.
pub struct Certs {
    pairs: Vec<CertPair>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertSet>,
}

impl fmt::Debug for Certs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certs")
            .field("pairs", &self.pairs)
            .finish_non_exhaustive()
    }
}

impl Certs {
    /// Load every pair (an error if one cannot be used) and warn about any
    /// that expires soon.
    pub fn load(pairs: Vec<CertPair>) -> Result<Arc<Certs>, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let set = CertSet::load(&pairs, &provider)?;
        warn_expiring(&set, unix_now());
        Ok(Arc::new(Certs {
            pairs,
            provider,
            current: ArcSwap::from_pointee(set),
        }))
    }

    /// Read every pair again and use the new set if all of them load;
    /// otherwise keep the current one and return why. Blocking file reads:
    /// call it off the request workers.
    pub fn reload(&self) -> Result<(), TlsError> {
        let set = CertSet::load(&self.pairs, &self.provider)?;
        warn_expiring(&set, unix_now());
        info!(
            certificates = set.certs.len(),
            "TLS certificates reloaded; new handshakes use them"
        );
        self.current.store(Arc::new(set));
        Ok(())
    }

    /// Each certificate's name and seconds until its `notAfter` (negative once expired).
    pub fn expiry(&self) -> Vec<(String, i64)> {
        let now = unix_now();
        self.current
            .load()
            .certs
            .iter()
            .map(|c| (c.name.clone(), c.not_after - now))
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
            .map(|cert| cert.key.clone())
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
fn warn_expiring(set: &CertSet, now: i64) {
    for (cert, left) in expiring(set, now) {
        if left <= 0 {
            warn!(certificate = %cert.name, expired_seconds_ago = -left, "TLS certificate has expired; clients will refuse it: renew it and send the gateway SIGHUP");
        } else {
            warn!(certificate = %cert.name, expires_in_hours = left / 3600, "TLS certificate expires within 14 days; renew it and send the gateway SIGHUP");
        }
    }
}

/// The certificates expiring within [`EXPIRY_WARNING`] of `now`, and the seconds they have left.
fn expiring(set: &CertSet, now: i64) -> Vec<(&LoadedCert, i64)> {
    let warn_within = EXPIRY_WARNING.as_secs() as i64;
    set.certs
        .iter()
        .map(|cert| (cert, cert.not_after - now))
        .filter(|(_, left)| *left < warn_within)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loaded(name: &str, dns_names: &[&str], not_after: i64) -> LoadedCert {
        let provider = rustls::crypto::ring::default_provider();
        // Any key will do for the lookup tests: RFC 8410 §10.3's Ed25519 example.
        let key = PrivateKeyDer::from_pem_slice(ED25519_PEM.as_bytes()).unwrap();
        let signing = provider.key_provider.load_private_key(key).unwrap();
        LoadedCert {
            name: name.into(),
            key: Arc::new(CertifiedKey::new(vec![], signing)),
            dns_names: dns_names.iter().map(|s| s.to_string()).collect(),
            not_after,
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

    #[test]
    fn certificates_expiring_within_14_days_are_named() {
        let day = 24 * 3600;
        let set = CertSet::new(vec![
            loaded("fine", &[], 1000 + 30 * day),
            loaded("soon", &[], 1000 + 13 * day),
            loaded("gone", &[], 1000 - day),
        ]);
        let names: Vec<(&str, i64)> = expiring(&set, 1000)
            .into_iter()
            .map(|(c, left)| (c.name.as_str(), left))
            .collect();
        assert_eq!(names, [("soon", 13 * day), ("gone", -day)]);
    }

    #[test]
    fn unreadable_and_empty_files_say_which_and_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let missing = CertPair {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope-key.pem"),
        };
        let err = CertSet::load(&[missing], &provider)
            .unwrap_err()
            .to_string();
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
        let err = CertSet::load(&[pair], &provider).unwrap_err().to_string();
        assert!(
            err.contains("no certificate in the file") && err.contains("BEGIN CERTIFICATE"),
            "{err}"
        );
    }
}
