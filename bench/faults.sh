#!/usr/bin/env bash
# The fault suite: each fault on a fresh platform (etcd, a gateway, the
# autoscaler keeping 3 app servers) under steady load through the gateway
# (GET / and key-value writes and reads on /kv/): etcd restarted, stopped or
# frozen for 30 s, an instance frozen, the gateway restarted, the autoscaler
# leader killed, an instance cut off from etcd in a network namespace, etcd
# wiped. Prints a table: fault | requests | failed (GET / KV writes) |
# KV keys lost | time to recover | notes. See bench/README.md.
#
#   bench/faults.sh                          # every fault, about 4-5 minutes
#   FAULTS=etcd-restart,cut-off bench/faults.sh
#
# Settings (environment): FAULTS (all; comma-separated subset of
# etcd-restart, etcd-stopped, etcd-frozen, instance-frozen, gateway-restart,
# leader-killed, cut-off, etcd-wiped), INSTANCES (3), GET_CLIENTS (4),
# KV_CLIENTS (4), KEYS per client (25), STEADY_SECS (3), OUTAGE_SECS (30),
# FREEZE_SECS (10), LEASE_TTL_SECS (3), RECOVER_TIMEOUT_SECS (40).
# The cut-off fault needs root (ip netns, iptables).
# Exit status: 0 when no acknowledged write was lost, 1 otherwise, 2 when a
# fault could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd ip iptables
cargo build --release --workspace --bins
exec_release_bin faults
