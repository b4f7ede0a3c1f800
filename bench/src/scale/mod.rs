//! The registry side of `bench/gateway-scale.sh` (program `scale_registry`):
//! thousands of fake instances and routes written straight into etcd in
//! batches, and the time from one registry change until a gateway routes it.
//!
//! - [`fill`]: fake `ready` instances of one service on one lease, pointing
//!   at a few real app servers, and routes (four measured ones, one per
//!   policy, behind filler routes a linear scan passes first), each written
//!   in transactions of at most [`registry::store::MAX_TXN_OPS`] operations.
//! - [`propagation`]: one new instance put, then the gateway's admin API
//!   polled until its routing table counts it; the median of a few.

pub mod fill;
pub mod propagation;

use registry::Keys;
use registry::store::etcd::EtcdBackend;

/// The registry's raw backend on the etcd at `url`, for batched writes, and
/// the keys under `prefix` (each of the benchmark's gateways follows a
/// prefix of its own).
pub async fn connect(
    url: &str,
    prefix: &str,
) -> anyhow::Result<(EtcdBackend, etcd_client::Client, Keys)> {
    let keys = Keys::new(prefix)?;
    let client = etcd_client::Client::connect([url], None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach etcd at {url}: {e}"))?;
    Ok((EtcdBackend::new(client.clone()), client, keys))
}
