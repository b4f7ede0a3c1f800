//! The operator subcommands of `autoscaler`, one file each: [`policy`]
//! (`set`/`get`/`delete`), [`scale`] (pin a replica count), [`status`],
//! [`events`] and [`rollout`] (rolling restarts). This file holds what they share: argument parsers, the
//! `--output` choice and reading a prefix with malformed entries skipped.
//!
//! Every command returns an [`Outcome`]; etcd access goes through
//! [`registry::cli::etcd`], so an unreachable etcd is exit code 2 with advice.

pub mod events;
pub mod policy;
pub mod rollout;
pub mod scale;
pub mod status;

use clap::ValueEnum;
use etcd_client::{Client, GetOptions};
use registry::cli::etcd;
use registry::cli::exit::Failure;
use registry::config::parse_duration;
use registry::{EtcdArgs, RegistryValue};
use tracing::warn;

pub use registry::cli::exit::Outcome;
pub use registry::cli::service_name;

/// How a read command prints what it found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns (or one line per event).
    Table,
    /// JSON, for scripts.
    Json,
}

/// A duration in whole seconds (`30s`, `2m`, `0`), as policies store them.
pub fn whole_seconds(s: &str) -> Result<u64, String> {
    let duration = parse_duration(s)?;
    if duration.subsec_nanos() != 0 {
        return Err(format!(
            "`{s}` is not a whole number of seconds; policies count in seconds, e.g. 30s"
        ));
    }
    Ok(duration.as_secs())
}

/// Every entry under `prefix` that decodes as `T`, in key order, with its key.
/// Entries that do not decode are skipped with a warning naming the key.
pub async fn read_all<T: RegistryValue>(
    client: &mut Client,
    args: &EtcdArgs,
    prefix: &str,
    options: Option<GetOptions>,
) -> Result<Vec<(String, T)>, Failure> {
    let options = options.unwrap_or_default().with_prefix();
    let response = etcd::bounded(args, client.get(prefix, Some(options))).await?;
    let kvs = response.kvs().iter().map(|kv| (kv.key(), kv.value()));
    Ok(decode_kvs(&args.prefix, kvs))
}

fn decode_kvs<'a, T: RegistryValue>(
    keys: &registry::Keys,
    kvs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> Vec<(String, T)> {
    kvs.filter_map(|(key, value)| {
        let key = String::from_utf8_lossy(key).into_owned();
        match T::decode(keys, &key, value) {
            Ok(value) => Some((key, value)),
            Err(e) => {
                warn!(key = %key, error = %e, "skipping malformed registry entry");
                None
            }
        }
    })
    .collect()
}

/// `serde_json::to_string_pretty`, as a runtime failure if it cannot encode.
pub fn pretty_json(value: &impl serde::Serialize) -> Result<String, Failure> {
    serde_json::to_string_pretty(value)
        .map_err(|e| Failure::Runtime(anyhow::anyhow!("cannot encode as JSON: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_seconds_accepts_units_and_refuses_fractions() {
        assert_eq!(whole_seconds("0s").unwrap(), 0);
        assert_eq!(whole_seconds("30s").unwrap(), 30);
        assert_eq!(whole_seconds("2m").unwrap(), 120);
        assert_eq!(whole_seconds("15").unwrap(), 15);
        assert!(
            whole_seconds("1500ms")
                .unwrap_err()
                .contains("not a whole number of seconds")
        );
        assert!(
            whole_seconds("soon")
                .unwrap_err()
                .contains("not a duration")
        );
    }

    #[test]
    fn malformed_entries_are_skipped() {
        let keys = registry::Keys::default();
        let good = registry::Instance::new("app", "127.0.0.1:8081");
        let kvs = [
            (keys.instance("app", &good.id), good.to_json()),
            (keys.instance("app", "bad"), "{not json".to_owned()),
        ];
        let got: Vec<(String, registry::Instance)> =
            decode_kvs(&keys, kvs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())));
        assert_eq!(got, [(kvs[0].0.clone(), good)]);
    }
}
