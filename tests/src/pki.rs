//! Certificates for a test's TLS etcd, generated in the test with `rcgen`
//! (no `openssl` CLI needed): a CA, a server certificate for `127.0.0.1` and
//! `localhost`, a client certificate, and a second, untrusted CA with a
//! client certificate of its own — for the "wrong CA" cases. More server
//! certificates from the same CA ([`Pki::server_cert`]), for the gateway's
//! `--tls-listen`: ECDSA P-256 keys (rcgen's default), DNS names and expiry
//! of the test's choosing.
//!
//! Every file is PEM, in a temp dir that lives as long as the [`Pki`].

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tempfile::TempDir;

/// A certificate and its key, as files.
#[derive(Debug, Clone)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The test's certificates.
pub struct Pki {
    dir: TempDir,
    /// The CA etcd trusts and that signed its server certificate.
    pub ca: PathBuf,
    pub server: CertFiles,
    /// Signed by [`ca`](Self::ca); its CN (`shoal-client`) is no etcd user.
    pub client: CertFiles,
    /// A CA nobody trusts.
    pub other_ca: PathBuf,
    /// Signed by [`other_ca`](Self::other_ca).
    pub other_client: CertFiles,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn generate() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir for certificates");
        let (ca, ca_issuer) = new_ca(dir.path(), "ca", "shoal test CA");
        let server = leaf(
            dir.path(),
            "server",
            "shoal-etcd",
            &["127.0.0.1", "localhost"],
            &ca_issuer,
        );
        let client = leaf(dir.path(), "client", "shoal-client", &[], &ca_issuer);
        let (other_ca, other_issuer) = new_ca(dir.path(), "other-ca", "untrusted CA");
        let other_client = leaf(
            dir.path(),
            "other-client",
            "shoal-client",
            &[],
            &other_issuer,
        );
        Pki {
            dir,
            ca,
            server,
            client,
            other_ca,
            other_client,
            issuer: ca_issuer,
        }
    }

    /// A server certificate from [`ca`](Self::ca) for DNS `names`, as
    /// `{file}.pem` and `{file}-key.pem`, valid until `not_after` (y, m, d;
    /// rcgen's default, the year 4096, when `None`).
    pub fn server_cert(
        &self,
        file: &str,
        names: &[&str],
        not_after: Option<(i32, u8, u8)>,
    ) -> CertFiles {
        leaf_until(self.dir(), file, names[0], names, &self.issuer, not_after)
    }

    /// A server certificate like [`server_cert`](Self::server_cert)'s that
    /// expires `days` days from today (for the expiry warning and metric).
    pub fn server_cert_expiring_in(&self, file: &str, names: &[&str], days: i64) -> CertFiles {
        use chrono::Datelike;
        let day = chrono::Utc::now() + chrono::Duration::days(days);
        let not_after = (day.year(), day.month() as u8, day.day() as u8);
        self.server_cert(file, names, Some(not_after))
    }

    /// The directory holding every file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}

fn new_ca(dir: &Path, name: &str, cn: &str) -> (PathBuf, CertifiedIssuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let issuer = CertifiedIssuer::self_signed(params, key).expect("self-signed CA");
    let path = write(dir, &format!("{name}.pem"), &issuer.pem());
    (path, issuer)
}

fn leaf(
    dir: &Path,
    name: &str,
    cn: &str,
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
) -> CertFiles {
    leaf_until(dir, name, cn, names, issuer, None)
}

fn leaf_until(
    dir: &Path,
    name: &str,
    cn: &str,
    names: &[&str],
    issuer: &CertifiedIssuer<'static, KeyPair>,
    not_after: Option<(i32, u8, u8)>,
) -> CertFiles {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(names).expect("leaf params");
    if let Some((y, m, d)) = not_after {
        params.not_after = rcgen::date_time_ymd(y, m, d);
    }
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, issuer).expect("signed leaf");
    CertFiles {
        cert: write(dir, &format!("{name}.pem"), &cert.pem()),
        key: write(dir, &format!("{name}-key.pem"), &key.serialize_pem()),
    }
}
