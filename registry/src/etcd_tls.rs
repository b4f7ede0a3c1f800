//! How a binary talks to a secured etcd: the TLS files (`--etcd-ca`,
//! `--etcd-cert`, `--etcd-key`) and the user and password, checked against
//! the endpoints before any connection is made.
//!
//! The rules, each refused with an error that names the flag to change:
//! - TLS files need `https://` endpoints, and `https://` endpoints need
//!   `--etcd-ca` (the system's trust roots are not used: an etcd cluster's
//!   certificates are signed by its own CA, and trusting every public CA for
//!   it would only widen who can impersonate it);
//! - `--etcd-cert` and `--etcd-key` come together;
//! - every file must be readable PEM; its path is in the error.
//!
//! TLS is rustls (etcd-client's `tls` feature, ring as the crypto provider).

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

/// The security settings of one etcd connection, as given on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdSecurity {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// A configuration that cannot work; the message says what to change.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct EtcdConfigError(pub String);

impl EtcdSecurity {
    /// Whether any TLS file is given.
    pub fn any(&self) -> bool {
        self.ca.is_some() || self.cert.is_some() || self.key.is_some()
    }

    /// Check the files against `endpoints`, read them, and add TLS to
    /// `options` when the endpoints are `https://`.
    pub fn apply(
        &self,
        endpoints: &[String],
        options: ConnectOptions,
    ) -> Result<ConnectOptions, EtcdConfigError> {
        let https = endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        if https > 0 && https < endpoints.len() {
            return Err(EtcdConfigError(format!(
                "--etcd mixes http:// and https:// endpoints ({}); use https:// for all of them or none",
                endpoints.join(",")
            )));
        }
        match (&self.cert, &self.key) {
            (Some(cert), None) => {
                return Err(EtcdConfigError(format!(
                    "--etcd-cert {} is given without --etcd-key; pass the client certificate's private key too",
                    cert.display()
                )));
            }
            (None, Some(key)) => {
                return Err(EtcdConfigError(format!(
                    "--etcd-key {} is given without --etcd-cert; pass the client certificate too",
                    key.display()
                )));
            }
            _ => {}
        }
        if https == 0 {
            if self.any() {
                return Err(EtcdConfigError(format!(
                    "--etcd-ca/--etcd-cert/--etcd-key are set but --etcd {} is plain http://; use https:// endpoints to talk TLS, or drop the TLS flags",
                    endpoints.join(",")
                )));
            }
            return Ok(options);
        }
        let Some(ca) = &self.ca else {
            return Err(EtcdConfigError(format!(
                "--etcd {} is https:// but no --etcd-ca is given; pass --etcd-ca FILE (the PEM certificate of the CA that signed etcd's server certificate; the system's trust roots are not used)",
                endpoints.join(",")
            )));
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read_pem(
            "--etcd-ca",
            ca,
            "CERTIFICATE",
        )?));
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            tls = tls.identity(Identity::from_pem(
                read_pem("--etcd-cert", cert, "CERTIFICATE")?,
                read_pem("--etcd-key", key, "PRIVATE KEY")?,
            ));
        }
        Ok(options.with_tls(tls))
    }
}

/// Read a PEM file and check that it holds a `kind` block (`PRIVATE KEY` also
/// matches `RSA PRIVATE KEY` and `EC PRIVATE KEY`).
fn read_pem(flag: &str, path: &Path, kind: &str) -> Result<Vec<u8>, EtcdConfigError> {
    let bytes = std::fs::read(path).map_err(|e| {
        EtcdConfigError(format!(
            "{flag} {}: cannot read the file: {e}; check the path and that this user may read it",
            path.display()
        ))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let holds_kind = text.lines().any(|line| {
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with(kind))
    });
    if !holds_kind {
        return Err(EtcdConfigError(format!(
            "{flag} {}: no PEM `{kind}` block in the file; give a PEM file (-----BEGIN {kind}-----)",
            path.display()
        )));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eps(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn pem_file(dir: &Path, name: &str, label: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(
            &path,
            format!("-----BEGIN {label}-----\nAAAA\n-----END {label}-----\n"),
        )
        .unwrap();
        path
    }

    fn err(security: &EtcdSecurity, endpoints: &[&str]) -> String {
        security
            .apply(&eps(endpoints), ConnectOptions::new())
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn plain_http_without_tls_files_is_untouched() {
        let plain = EtcdSecurity::default();
        assert!(
            plain
                .apply(&eps(&["http://a:1"]), ConnectOptions::new())
                .is_ok()
        );
    }

    #[test]
    fn mismatches_are_refused_with_the_flag_to_change() {
        let dir = tempfile::tempdir().unwrap();
        let ca = pem_file(dir.path(), "ca.pem", "CERTIFICATE");
        let with_ca = EtcdSecurity {
            ca: Some(ca.clone()),
            ..Default::default()
        };
        let e = err(&with_ca, &["http://a:1"]);
        assert!(
            e.contains("plain http://") && e.contains("use https://"),
            "{e}"
        );
        let e = err(&EtcdSecurity::default(), &["https://a:1"]);
        assert!(e.contains("no --etcd-ca is given"), "{e}");
        let e = err(&with_ca, &["https://a:1", "http://b:2"]);
        assert!(e.contains("mixes http:// and https://"), "{e}");
        let cert_only = EtcdSecurity {
            ca: Some(ca.clone()),
            cert: Some(dir.path().join("c.pem")),
            key: None,
        };
        let e = err(&cert_only, &["https://a:1"]);
        assert!(e.contains("without --etcd-key"), "{e}");
        let key_only = EtcdSecurity {
            ca: Some(ca),
            cert: None,
            key: Some(dir.path().join("k.pem")),
        };
        let e = err(&key_only, &["https://a:1"]);
        assert!(e.contains("without --etcd-cert"), "{e}");
    }

    #[test]
    fn files_are_read_and_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let e = err(
            &EtcdSecurity {
                ca: Some(missing.clone()),
                ..Default::default()
            },
            &["https://a:1"],
        );
        assert!(
            e.contains("--etcd-ca") && e.contains(&missing.display().to_string()),
            "{e}"
        );
        assert!(e.contains("cannot read the file"), "{e}");

        let ca = pem_file(dir.path(), "ca.pem", "CERTIFICATE");
        let not_a_key = pem_file(dir.path(), "key.pem", "CERTIFICATE");
        let e = err(
            &EtcdSecurity {
                ca: Some(ca.clone()),
                cert: Some(ca.clone()),
                key: Some(not_a_key),
            },
            &["https://a:1"],
        );
        assert!(
            e.contains("--etcd-key") && e.contains("no PEM `PRIVATE KEY` block"),
            "{e}"
        );

        let key = pem_file(dir.path(), "k.pem", "EC PRIVATE KEY");
        let ok = EtcdSecurity {
            ca: Some(ca.clone()),
            cert: Some(ca),
            key: Some(key),
        };
        assert!(
            ok.apply(&eps(&["https://a:1"]), ConnectOptions::new())
                .is_ok()
        );
    }
}
