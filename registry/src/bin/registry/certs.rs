//! `registry certs put|list|delete`: the TLS certificates at
//! `{prefix}/certs/{name}` that gateways started with
//! `--tls-registry-certs` serve (they pick a change up within
//! milliseconds). `put` reads the two PEM files and checks them — PEM, the
//! key against the certificate — before anything is written (a bad pair:
//! exit 2, nothing written). `list` shows names, DNS names and `notAfter`,
//! never a key.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use chrono::DateTime;
use clap::{Args, Subcommand};
use registry::EtcdArgs;
use registry::keys::validate_segment;
use registry::store::Written;
use registry::tls_cert::{CertPem, PairError, check_pair};

use crate::exit::{Failure, OK, Outcome};
use crate::{etcd, out};

#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    pub action: CertsAction,
}

#[derive(Debug, Subcommand)]
pub enum CertsAction {
    /// Create or replace a certificate from a PEM chain and its key.
    Put(PutArgs),
    /// List the certificates: name, DNS names, notAfter (never the key).
    List,
    /// Delete a certificate; gateways stop serving it.
    Delete(DeleteArgs),
}

#[derive(Debug, Args)]
pub struct PutArgs {
    /// The certificate's name (the last segment of its key).
    #[arg(value_parser = cert_name)]
    pub name: String,
    /// The PEM certificate chain, the server's own certificate first.
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// The PEM private key of that certificate.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(value_parser = cert_name)]
    pub name: String,
}

fn cert_name(s: &str) -> Result<String, String> {
    validate_segment("certificate name", s)
        .map(|()| s.to_owned())
        .map_err(|e| e.to_string())
}

fn read(flag: &str, path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path).map_err(|e| {
        Failure::Usage(anyhow!(
            "cannot read {flag} {}: {e}; check the path (a PEM file)",
            path.display()
        ))
    })
}

/// The two files as the value to store, once they check out; each problem
/// names the file.
pub fn read_pair(cert: &Path, key: &Path) -> Result<(CertPem, Vec<String>, i64), Failure> {
    let pem = CertPem {
        chain_pem: read("--cert", cert)?,
        key_pem: read("--key", key)?,
    };
    let parsed = check_pair(pem.chain_pem.as_bytes(), pem.key_pem.as_bytes()).map_err(|e| {
        Failure::Usage(match e {
            PairError::Mismatch => anyhow!(
                "--key {} does not match the certificate in --cert {}; give the key the certificate was issued for",
                key.display(),
                cert.display()
            ),
            e if e.is_about_key() => {
                anyhow!("--key {}: {}", key.display(), e.problem("the file"))
            }
            e => anyhow!("--cert {}: {}", cert.display(), e.problem("the file")),
        })
    })?;
    Ok((pem, parsed.dns_names, parsed.not_after))
}

fn date(not_after: i64) -> String {
    DateTime::from_timestamp(not_after, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| not_after.to_string())
}

pub async fn run(args: CertsArgs, etcd_args: EtcdArgs) -> Outcome {
    let keys = &etcd_args.prefix;
    let lines = match args.action {
        CertsAction::Put(put) => {
            // Checked before etcd is reached: a bad file writes nothing.
            let (pem, dns_names, not_after) = read_pair(&put.cert, &put.key)?;
            let store = etcd::store(&etcd_args).await?;
            let written = store
                .put_cert(&put.name, &pem)
                .await
                .map_err(|e| etcd::store_failure(&etcd_args, e))?;
            let verb = match written {
                Written::Created => "created",
                Written::Replaced => "replaced",
            };
            vec![format!(
                "{verb} the certificate {} ({}; DNS names {}; notAfter {})",
                put.name,
                keys.cert(&put.name),
                dns_names.join(","),
                date(not_after)
            )]
        }
        CertsAction::List => {
            let store = etcd::store(&etcd_args).await?;
            let certs = store
                .certs()
                .await
                .map_err(|e| etcd::store_failure(&etcd_args, e))?;
            if certs.is_empty() {
                eprintln!(
                    "no certificates under {}; add one with registry certs put NAME --cert CHAIN.pem --key KEY.pem",
                    keys.certs()
                );
            }
            let rows: Vec<[String; 3]> = certs
                .iter()
                .map(|c| {
                    [
                        c.name.clone(),
                        c.cert.dns_names.join(","),
                        date(c.cert.not_after),
                    ]
                })
                .collect();
            out::table(["NAME", "DNS NAMES", "NOT AFTER"], &rows)
        }
        CertsAction::Delete(delete) => {
            let store = etcd::store(&etcd_args).await?;
            let deleted = store
                .delete_cert(&delete.name)
                .await
                .map_err(|e| etcd::store_failure(&etcd_args, e))?;
            vec![if deleted {
                format!("deleted the certificate {}", delete.name)
            } else {
                format!("there was no certificate {}; nothing deleted", delete.name)
            }]
        }
    };
    out::finish(lines)?;
    Ok(OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let signed = rcgen::generate_simple_self_signed(vec!["shop.test".to_owned()]).unwrap();
        let cert = write("cert.pem", &signed.cert.pem());
        let key = write("key.pem", &signed.signing_key.serialize_pem());
        let other_key = rcgen::KeyPair::generate().unwrap();
        let other = write("other-key.pem", &other_key.serialize_pem());
        let (pem, names, _) = read_pair(&cert, &key).unwrap();
        assert_eq!(pem.chain_pem, signed.cert.pem());
        assert_eq!(names, ["shop.test"]);

        let failure = |cert: &Path, key: &Path| {
            let err = read_pair(cert, key).unwrap_err();
            assert_eq!(err.code(), crate::exit::USAGE);
            err.to_string()
        };
        let err = failure(&cert, &other);
        assert!(
            err.contains(&format!(
                "--key {} does not match the certificate",
                other.display()
            )),
            "{err}"
        );
        let err = failure(&key, &key);
        assert!(
            err.starts_with(&format!(
                "--cert {}: no certificate in the file",
                key.display()
            )),
            "{err}"
        );
        let err = failure(&cert, &cert);
        assert!(err.contains("no private key in the file"), "{err}");
        let err = failure(&dir.path().join("missing.pem"), &key);
        assert!(err.starts_with("cannot read --cert"), "{err}");
    }

    #[test]
    fn dates_are_utc() {
        assert_eq!(date(33_332_401_758), "3026-04-06T16:29:18Z");
    }
}
