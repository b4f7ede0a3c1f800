//! Shoal's benchmark programs, run by the scripts next to this crate
//! (`bench/*.sh`, which build the release binaries and run them), on the
//! test platform of `shoal-tests` (real etcd, real binaries on loopback).
//!
//! Library code, one module per program or shared part:
//! - [`cpu`]: processes' CPU time over a measurement (`kv_bench`'s CPU a
//!   operation).
//! - [`experiments`]: the source notes' experiments rerun on Shoal, one
//!   table with Shoal's figures next to the source's (`seed-experiments.sh`).
//! - [`faults`]: the fault suite (etcd restarted, unreachable or wiped, an
//!   instance frozen, the gateway restarted, the autoscaler leader killed, an
//!   instance cut off from etcd) under load, with a table of failed requests,
//!   lost writes and recovery times (`faults.sh`).
//! - [`kv_load`]: key-value clients that remember every acknowledged write
//!   and check them all at the end (the checker's and the fault suite's load).
//! - [`kv_history`]: key-value clients contending for a few hot keys, every
//!   operation recorded with its times for [`linearizability`], which checks
//!   each key's history (Wing–Gong–Lowe, as Porcupine).
//! - [`kv_check`]: the distributed key-value store's checker (scale 2 → 5 → 2,
//!   a kill -9, every acknowledged write accounted for, the hot keys'
//!   histories linearizable; `kv-check.sh`).
//! - [`paired`]: round-by-round ratios of two proxies' benchmark figures,
//!   with a distribution-free interval for their median (`gateway.sh`).
//! - [`redis`]: Redis servers (and a replica) beside the store in `kv.sh`.
//! - [`scale`]: thousands of fake instances and routes written into the
//!   registry, and the time until a gateway routes a change
//!   (`gateway-scale.sh`).
//! - [`settings`]: the binaries' environment settings.
//!
//! Binaries (`src/bin/`): `seed_experiments`, `faults`, `kv_check`,
//! `kv_bench` (`kv.sh`), `autoscale_bench` (`autoscale.sh`), `fixed_rate`
//! (an open-loop load at a fixed rate, `gateway.sh`'s second table),
//! `paired` (`gateway.sh`'s intervals) and `scale_registry`
//! (`gateway-scale.sh`).
//!
//! `tests/` runs the checker end to end as a test.

pub mod cpu;
pub mod experiments;
pub mod faults;
pub mod kv_check;
pub mod kv_history;
pub mod kv_load;
pub mod linearizability;
pub mod paired;
pub mod redis;
pub mod scale;
pub mod settings;
