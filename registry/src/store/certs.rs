//! TLS certificates at `certs/{name}` ([`CertPem`]): put (create or
//! replace), delete, read one, list. A pair is checked before it is written
//! (PEM, key against certificate, the size readers accept), so what the
//! store writes every reader can serve; a bad entry written around the
//! store is skipped by listings with a warning naming its key.

use super::{Store, StoreError, Written};
use crate::keys::validate_segment;
use crate::model::{MAX_VALUE_BYTES, ValidationError};
use crate::tls_cert::{CertPem, NamedCert};

impl Store {
    /// Create or replace the certificate `name`, once `pem` checks out.
    pub async fn put_cert(&self, name: &str, pem: &CertPem) -> Result<Written, StoreError> {
        validate_segment("certificate name", name)?;
        pem.parse()?;
        let value = pem.to_json();
        if value.len() > MAX_VALUE_BYTES {
            return Err(ValidationError::new(
                "cert",
                format!(
                    "{} bytes as stored; at most {MAX_VALUE_BYTES} are allowed: leave the root CA out of the chain",
                    value.len()
                ),
            )
            .into());
        }
        self.put("write the certificate", self.keys.cert(name), value)
            .await
    }

    /// Delete the certificate `name`; whether there was one.
    pub async fn delete_cert(&self, name: &str) -> Result<bool, StoreError> {
        validate_segment("certificate name", name)?;
        self.delete("delete the certificate", self.keys.cert(name))
            .await
    }

    /// The certificate `name`, if there is one; one that does not check out
    /// is an error naming the key.
    pub async fn cert(&self, name: &str) -> Result<Option<NamedCert>, StoreError> {
        validate_segment("certificate name", name)?;
        Ok(self
            .get::<NamedCert>(&self.keys.cert(name))
            .await?
            .map(|stored| stored.value))
    }

    /// Every certificate that checks out, in name order.
    pub async fn certs(&self) -> Result<Vec<NamedCert>, StoreError> {
        Ok(self
            .list(&self.keys.certs())
            .await?
            .into_iter()
            .map(|(_, cert)| cert)
            .collect())
    }
}
