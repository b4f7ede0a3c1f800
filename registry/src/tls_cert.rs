//! TLS certificates in the registry (`{prefix}/certs/{name}`), and the one
//! check of a PEM certificate chain and private key that every user of one
//! makes: the `registry certs put` CLI before it writes, every reader
//! ([`NamedCert`]'s decode, so the gateway's watcher skips a bad entry with
//! a warning naming its key), and the gateway's `--tls-cert`/`--tls-key`
//! files.
//!
//! - [`CertPem`]: the stored value, JSON `{"chain_pem": "...", "key_pem":
//!   "..."}`. JSON like every other registry value (one decoder with the
//!   size limit, one way to read it with `etcdctl`), with the PEM text as
//!   strings rather than DER bytes: PEM is what certificate tools and ACME
//!   clients write and what operators can check by eye, and a JSON string
//!   holds it with only newlines escaped (DER would need base64 around
//!   bytes that are base64 already in PEM).
//! - [`check_pair`]: parse the PEM chain (the server's own certificate
//!   first) and key, check that the key is the certificate's, and read the
//!   certificate's SAN DNS names and `notAfter` (x509-parser). The result,
//!   [`ParsedCert`], carries rustls's [`CertifiedKey`], ready for a
//!   handshake. rustls with its `ring` provider, the one etcd-client's TLS
//!   already compiles in.
//! - [`NamedCert`]: a checked entry with its name, what readers get.
//!
//! The private key is never printed: [`CertPem`]'s and [`ParsedCert`]'s
//! `Debug` leave it out.

use std::fmt;
use std::sync::{Arc, LazyLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use rustls::{Error as RustlsError, InconsistentKeys};
use serde::{Deserialize, Serialize};

use crate::keys::{Key, Keys};
use crate::model::{DecodeError, RegistryValue, ValidationError, decode_json};

/// The crypto provider keys are loaded with: rustls's `ring`, as the gateway's listener uses.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(rustls::crypto::ring::default_provider);

/// A certificate chain and its private key as stored at `certs/{name}`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertPem {
    /// PEM certificates, the server's own first, then its intermediates.
    pub chain_pem: String,
    /// The PEM private key of the first certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl fmt::Debug for CertPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertPem")
            .field("chain_pem", &self.chain_pem)
            .finish_non_exhaustive()
    }
}

impl CertPem {
    /// Check the pair (see [`check_pair`]); errors name the field.
    pub fn parse(&self) -> Result<ParsedCert, ValidationError> {
        check_pair(self.chain_pem.as_bytes(), self.key_pem.as_bytes()).map_err(|e| {
            let field = if e.is_about_key() {
                "cert.key_pem"
            } else {
                "cert.chain_pem"
            };
            ValidationError::new(field, e.problem("it"))
        })
    }

    /// The JSON stored in etcd.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("CertPem always serializes")
    }
}

/// A checked certificate chain and key, ready to serve.
#[derive(Clone)]
pub struct ParsedCert {
    /// The chain and the signing key, for rustls.
    pub key: Arc<CertifiedKey>,
    /// The first certificate's SAN DNS names, lower case, without a
    /// trailing dot (wildcards as written: `*.example.com`).
    pub dns_names: Vec<String>,
    /// The first certificate's `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl fmt::Debug for ParsedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ParsedCert")
            .field("dns_names", &self.dns_names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// What is wrong with a certificate chain or key. [`PairError::problem`]
/// says it in words, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairError {
    /// No `BEGIN CERTIFICATE` block.
    NoCert,
    /// A certificate that is not PEM, not X.509, or whose public key cannot be read.
    BadCert(String),
    /// No private key block.
    NoKey,
    /// A key that is not PEM or not a key rustls can sign with.
    BadKey(String),
    /// The key is not the first certificate's.
    Mismatch,
}

/// How a certificate chain is given, said after each problem with one.
pub const CHAIN_FORMAT: &str = "give the certificate chain in PEM (-----BEGIN CERTIFICATE-----), the server's own certificate first";
/// How a private key is given, said after each problem with one.
pub const KEY_FORMAT: &str = "give the private key in PEM (PKCS#8 `BEGIN PRIVATE KEY`, PKCS#1 `BEGIN RSA PRIVATE KEY` or SEC1 `BEGIN EC PRIVATE KEY`)";

impl PairError {
    /// Whether the key (rather than the chain) is what must change.
    pub fn is_about_key(&self) -> bool {
        matches!(
            self,
            PairError::NoKey | PairError::BadKey(_) | PairError::Mismatch
        )
    }

    /// What is wrong and how to give it, `place` being where it was
    /// looked for ("the file", "it").
    pub fn problem(&self, place: &str) -> String {
        match self {
            PairError::NoCert => format!("no certificate in {place}; {CHAIN_FORMAT}"),
            PairError::BadCert(why) => format!("{why}; {CHAIN_FORMAT}"),
            PairError::NoKey => format!("no private key in {place}; {KEY_FORMAT}"),
            PairError::BadKey(why) => format!("{why}; {KEY_FORMAT}"),
            PairError::Mismatch => {
                "does not match the certificate; give the key the certificate was issued for"
                    .to_owned()
            }
        }
    }
}

/// Parse `chain_pem` and `key_pem` and check that they belong together.
pub fn check_pair(chain_pem: &[u8], key_pem: &[u8]) -> Result<ParsedCert, PairError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PairError::BadCert(format!("not valid PEM ({e})")))?;
    if chain.is_empty() {
        return Err(PairError::NoCert);
    }
    let (dns_names, not_after) = describe(&chain[0]).map_err(PairError::BadCert)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => PairError::NoKey,
        e => PairError::BadKey(format!("not valid PEM ({e})")),
    })?;
    let signing = PROVIDER
        .key_provider
        .load_private_key(key)
        .map_err(|e| PairError::BadKey(format!("unusable key ({e})")))?;
    let key = CertifiedKey::new(chain, signing);
    match key.keys_match() {
        // A key whose public half the provider cannot tell: nothing to compare.
        Ok(()) | Err(RustlsError::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(RustlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
            return Err(PairError::Mismatch);
        }
        Err(e) => {
            return Err(PairError::BadCert(format!(
                "cannot read its public key ({e})"
            )));
        }
    }
    Ok(ParsedCert {
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

/// A certificate entry as read from `certs/{name}`: checked, with its name.
#[derive(Debug, Clone)]
pub struct NamedCert {
    pub name: String,
    pub cert: ParsedCert,
}

impl RegistryValue for NamedCert {
    fn decode(keys: &Keys, key: &str, value: &[u8]) -> Result<Self, DecodeError> {
        let Ok(Key::Cert { name }) = keys.parse(key) else {
            return Err(DecodeError::UnexpectedKey {
                key: key.to_owned(),
                reason: format!("expected {}{{name}}", keys.certs()),
            });
        };
        let stored: CertPem = decode_json(key, value, |_| Ok(()))?;
        let cert = stored.parse().map_err(|e| DecodeError::Invalid {
            key: key.to_owned(),
            source: ValidationError::new(
                e.field,
                format!(
                    "{}; write the pair again with `registry certs put {name} --cert CHAIN.pem --key KEY.pem`, which checks it first",
                    e.problem
                ),
            ),
        })?;
        Ok(NamedCert { name, cert })
    }
}

/// A certificate pair for tests (here and the store's conformance suite,
/// which the `tests` crate also runs): a self-signed ECDSA P-256
/// certificate for `a.test` and `*.b.test`, valid until 3026 (`openssl req
/// -x509`), its key, and a key of another kind that matches nothing.
#[cfg(any(test, feature = "conformance"))]
pub mod fixture {
    pub const CHAIN_PEM: &str = "-----BEGIN CERTIFICATE-----\n\
        MIIBlzCCATygAwIBAgIUerMqHZGH7jhhbGsZeTQ3Qx5+GA4wCgYIKoZIzj0EAwIw\n\
        ETEPMA0GA1UEAwwGYS50ZXN0MCAXDTI2MTIwNDE2MjkxOFoYDzMwMjYwNDA2MTYy\n\
        OTE4WjARMQ8wDQYDVQQDDAZhLnRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC\n\
        AARYKH4Y9wcbv0w8k6rCtS9XPK+RtYzWaU84pJaDrAkitMLUZrEHI4ps9vhfEWVQ\n\
        JNdXvijwJdESuFpivRv8eVFNo3AwbjAdBgNVHQ4EFgQUmdPGhqn++TVG+0ImMxPb\n\
        pCNPqJ0wHwYDVR0jBBgwFoAUmdPGhqn++TVG+0ImMxPbpCNPqJ0wDwYDVR0TAQH/\n\
        BAUwAwEB/zAbBgNVHREEFDASggZhLnRlc3SCCCouYi50ZXN0MAoGCCqGSM49BAMC\n\
        A0kAMEYCIQCJl2+C6jw9TG3lQO0WJ/sAhCWxxlH5nRaEXUsiRhn23QIhAPOq22CV\n\
        SEFlSn0O+Tcblz0czoyteqR+qkrtL7/9fYIe\n\
        -----END CERTIFICATE-----\n";
    pub const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgNOkXGe0Ycky2kZbM\n\
        XcM6SmSemf4KqWLJ5T/hI3UM2cOhRANCAARYKH4Y9wcbv0w8k6rCtS9XPK+RtYzW\n\
        aU84pJaDrAkitMLUZrEHI4ps9vhfEWVQJNdXvijwJdESuFpivRv8eVFN\n\
        -----END PRIVATE KEY-----\n";
    /// RFC 8410 §10.3's Ed25519 example key.
    pub const OTHER_KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
        -----END PRIVATE KEY-----\n";
    /// [`CHAIN_PEM`]'s `notAfter`: 3026-04-06T16:29:18Z.
    pub const NOT_AFTER: i64 = 33_332_401_758;

    /// The pair as stored.
    pub fn pem() -> super::CertPem {
        super::CertPem {
            chain_pem: CHAIN_PEM.to_owned(),
            key_pem: KEY_PEM.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixture::{CHAIN_PEM, KEY_PEM, NOT_AFTER, OTHER_KEY_PEM};
    use super::*;

    const KEY: &str = KEY_PEM;

    fn keys() -> Keys {
        Keys::default()
    }

    #[test]
    fn a_good_pair_gives_its_names_and_expiry() {
        let parsed = check_pair(CHAIN_PEM.as_bytes(), KEY_PEM.as_bytes()).unwrap();
        assert_eq!(parsed.dns_names, ["a.test", "*.b.test"]);
        assert_eq!(parsed.not_after, NOT_AFTER);
        assert_eq!(parsed.key.cert.len(), 1);
        let named =
            NamedCert::decode(&keys(), "/shoal/certs/a", &fixture::pem().to_json()).unwrap();
        assert_eq!(
            (named.name.as_str(), named.cert.not_after),
            ("a", NOT_AFTER)
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let err = check_pair(CHAIN_PEM.as_bytes(), OTHER_KEY_PEM.as_bytes()).unwrap_err();
        assert_eq!(err, PairError::Mismatch);
        assert!(err.is_about_key());
        let crossed = CertPem {
            chain_pem: CHAIN_PEM.into(),
            key_pem: OTHER_KEY_PEM.into(),
        };
        let err = crossed.parse().unwrap_err();
        assert_eq!(err.field, "cert.key_pem");
        assert!(
            err.problem.contains("does not match the certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_or_garbled_part_says_which_and_how_to_give_it() {
        let err = check_pair(b"not pem at all\n", KEY.as_bytes()).unwrap_err();
        assert_eq!(err, PairError::NoCert);
        assert!(!err.is_about_key());
        let said = err.problem("the file");
        assert!(
            said.starts_with("no certificate in the file;") && said.contains("BEGIN CERTIFICATE"),
            "{said}"
        );

        // A certificate block whose contents are not X.509.
        let garbled = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let err = check_pair(garbled.as_bytes(), KEY.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, PairError::BadCert(why) if why.contains("not valid X.509")),
            "{err:?}"
        );

        // A key given as the chain: no certificate in it; a chain as the key.
        let err = check_pair(KEY.as_bytes(), KEY.as_bytes()).unwrap_err();
        assert_eq!(err, PairError::NoCert);
        let err = check_pair(CHAIN_PEM.as_bytes(), CHAIN_PEM.as_bytes()).unwrap_err();
        assert_eq!(err, PairError::NoKey);
        assert!(err.problem("it").contains("BEGIN PRIVATE KEY"));
        let garbled_key = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        let err = check_pair(CHAIN_PEM.as_bytes(), garbled_key.as_bytes()).unwrap_err();
        assert!(
            matches!(&err, PairError::BadKey(why) if why.contains("unusable key")),
            "{err:?}"
        );
    }

    #[test]
    fn the_stored_json_is_checked_and_names_the_field() {
        let no_cert = CertPem {
            chain_pem: "nothing".into(),
            key_pem: KEY.into(),
        };
        let err = no_cert.parse().unwrap_err();
        assert_eq!(err.field, "cert.chain_pem");
        assert!(err.problem.contains("no certificate in it"), "{err}");

        // Decoding adds the key and the command that fixes it.
        let err = NamedCert::decode(&keys(), "/shoal/certs/api", &no_cert.to_json()).unwrap_err();
        let said = err.to_string();
        assert!(
            said.starts_with("/shoal/certs/api: cert.chain_pem: no certificate in it")
                && said.contains("registry certs put api --cert"),
            "{said}"
        );

        // Not the JSON shape: an unknown field, a missing one.
        let err = NamedCert::decode(&keys(), "/shoal/certs/api", br#"{"chain_pem":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing field `key_pem`"), "{err}");
        let err = NamedCert::decode(
            &keys(),
            "/shoal/certs/api",
            br#"{"chain_pem":"x","key_pem":"y","cert":"z"}"#,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("unknown field `cert`"), "{err}");

        // Under another key.
        let err = NamedCert::decode(&keys(), "/shoal/routes/api", &no_cert.to_json())
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected /shoal/certs/{name}"), "{err}");
    }

    #[test]
    fn the_key_is_never_in_debug_output() {
        let pem = CertPem {
            chain_pem: "chain".into(),
            key_pem: KEY.into(),
        };
        let shown = format!("{pem:?}");
        let key_line = KEY.lines().nth(1).unwrap();
        assert!(
            shown.contains("chain") && !shown.contains(key_line) && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }
}
