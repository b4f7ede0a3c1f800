//! Fake instances and routes, written in batches.
//!
//! Instances: `fake-00000`, `fake-00001`, … of one service, `ready`, on one
//! lease, their addresses taken in turn from a few real app servers, so
//! requests balanced to any of them are really served. [`instances`] adds
//! the ones missing up to a count; it never removes one (a mass removal
//! would be kept routable by the gateway's unconfirmed-instance rule).
//!
//! Routes: [`MEASURED`] are the four routes the benchmark sends its load
//! through, one per policy, with path prefixes `/round-robin`, … and names
//! `zz-…`. The gateway tries host-specific routes first, then longer
//! prefixes, then names in order, so the fillers (`filler-00000`, …, prefix
//! `/{policy}/f00000`, longer and sharing the measured route's first
//! segment) all come before the measured ones: a linear scan pays for
//! every one of them on every request. [`routes`] replaces the fillers so
//! that the four measured routes and the fillers make `total`.

use std::time::Duration;

use registry::Keys;
use registry::model::Route;
use registry::store::MAX_TXN_OPS;
use registry::store::backend::{Backend, Op, Span, Txn};
use registry::store::etcd::EtcdBackend;
use registry::{Instance, InstanceState};

/// The measured routes: (name, path prefix, the route's policy fields as
/// JSON). Consistent-hash hashes the request header `x-user`.
pub const MEASURED: [(&str, &str, &str); 4] = [
    (
        "zz-round-robin",
        "/round-robin",
        r#""policy":"round-robin""#,
    ),
    (
        "zz-least-request",
        "/least-request",
        r#""policy":"least-request""#,
    ),
    (
        "zz-consistent-hash",
        "/consistent-hash",
        r#""policy":"consistent-hash","hash_key":{"from":"header","name":"x-user"}"#,
    ),
    ("zz-sticky", "/sticky", r#""policy":"sticky""#),
];

/// How long the fake instances' lease lives: longer than any run; the
/// benchmark's etcd goes with it.
const LEASE_TTL: Duration = Duration::from_secs(3600);

/// The id of the `n`-th fake instance.
pub fn fake_id(n: usize) -> String {
    format!("fake-{n:05}")
}

/// A `ready` instance of `service` at `addr` named `id`.
pub fn ready_instance(service: &str, id: &str, addr: &str) -> anyhow::Result<Instance> {
    let mut instance = Instance::new(service, addr);
    instance.id = id.to_owned();
    instance.state = InstanceState::Ready;
    instance.validate()?;
    Ok(instance)
}

/// Grant a lease for fake instances (see [`LEASE_TTL`]).
pub async fn grant_lease(client: &mut etcd_client::Client) -> anyhow::Result<i64> {
    let lease = client
        .lease_grant(LEASE_TTL.as_secs() as i64, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot grant a lease: {e}"))?;
    Ok(lease.id())
}

/// Write `ops` in transactions of at most [`MAX_TXN_OPS`].
async fn write_batched(backend: &EtcdBackend, ops: Vec<Op>) -> anyhow::Result<()> {
    for chunk in ops.chunks(MAX_TXN_OPS) {
        backend
            .txn(Txn::ops(chunk.to_vec()))
            .await
            .map_err(|e| anyhow::anyhow!("a batch of {} writes failed: {e}", chunk.len()))?;
    }
    Ok(())
}

/// Add fake instances of `service` (on one new lease) until there are
/// `count`; answers how many were written.
pub async fn instances(
    backend: &EtcdBackend,
    client: &mut etcd_client::Client,
    keys: &Keys,
    service: &str,
    count: usize,
    addrs: &[String],
) -> anyhow::Result<usize> {
    anyhow::ensure!(!addrs.is_empty(), "no app server address to point at");
    let existing = backend
        .range(registry::store::backend::Range {
            keys_only: true,
            ..registry::store::backend::Range::prefix(keys.service_instances(service))
        })
        .await
        .map_err(|e| anyhow::anyhow!("cannot list the instances of {service}: {e}"))?;
    let have: std::collections::HashSet<String> =
        existing.kvs.into_iter().map(|kv| kv.key).collect();
    let lease = grant_lease(client).await?;
    let mut ops = Vec::new();
    for n in 0..count {
        let key = keys.instance(service, &fake_id(n));
        if have.contains(&key) {
            continue;
        }
        let instance = ready_instance(service, &fake_id(n), &addrs[n % addrs.len()])?;
        ops.push(Op::Put {
            key,
            value: serde_json::to_vec(&instance)?,
            lease,
        });
    }
    let written = ops.len();
    write_batched(backend, ops).await?;
    Ok(written)
}

/// The measured routes and `total - 4` fillers, all to `service`; earlier
/// fillers are deleted first.
pub async fn routes(
    backend: &EtcdBackend,
    keys: &Keys,
    service: &str,
    total: usize,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        total >= MEASURED.len(),
        "ROUTES={total} is too few: the {} measured routes are among them",
        MEASURED.len()
    );
    backend
        .txn(Txn::ops(vec![Op::Delete(Span::Prefix(
            keys.route("filler-"),
        ))]))
        .await
        .map_err(|e| anyhow::anyhow!("cannot delete the filler routes: {e}"))?;
    let mut ops = Vec::new();
    for (name, prefix, policy) in MEASURED {
        ops.push(route_op(keys, name, prefix, service, policy)?);
    }
    for n in 0..total - MEASURED.len() {
        let (_, measured_prefix, _) = MEASURED[n % MEASURED.len()];
        let prefix = format!("{measured_prefix}/f{n:05}");
        let op = route_op(
            keys,
            &format!("filler-{n:05}"),
            &prefix,
            service,
            r#""policy":"round-robin""#,
        )?;
        ops.push(op);
    }
    write_batched(backend, ops).await
}

/// The put of one route, validated as the admin API would.
fn route_op(
    keys: &Keys,
    name: &str,
    prefix: &str,
    service: &str,
    policy: &str,
) -> anyhow::Result<Op> {
    let json = format!(
        r#"{{"path_prefix":"{prefix}","service":"{service}",{policy},"strip_prefix":true}}"#
    );
    let route: Route = serde_json::from_str(&json)?;
    route.validate()?;
    registry::keys::validate_segment("route name", name)?;
    Ok(Op::put(keys.route(name), serde_json::to_vec(&route)?))
}
