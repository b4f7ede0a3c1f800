#!/usr/bin/env bash
# The distributed key-value store's checker: etcd, a gateway, the autoscaler
# and app servers (R = 2) on 127.0.0.1; concurrent clients write unique values
# and read them back while the service is scaled 2 → 5 → 2 and one instance
# is killed with -9; then every key is read and compared with its last
# acknowledged write. Prints a report ending with
# `ops N, acknowledged N, failed N, lost N`. See bench/README.md.
#
#   bench/kv-check.sh                       # 10 s phases, about a minute
#   PHASE_SECS=3 CLIENTS=4 bench/kv-check.sh
#
# Settings (environment): CLIENTS (8), KEYS per client (50), PHASE_SECS (10),
# REPLICAS (2). Exit status: 0 when nothing was lost, 1 otherwise, 2 when the
# check could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd
cargo build --release --workspace --bins
exec_release_bin kv_check
