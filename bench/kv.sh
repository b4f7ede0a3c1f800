#!/usr/bin/env bash
# Benchmark the distributed key-value store through the gateway: PUT and GET
# ops/s and p99 with R = 1 and R = 2 at 1, 2 and 4 instances (and R = 2 at 2
# instances direct to each key's primary, no gateway), next to etcd's
# own put and get and Redis's SET and GET (memory only, appendfsync
# everysec, one replica with WAIT 1) on the same machine in the same run;
# one table. See bench/README.md.
#
#   bench/kv.sh                  # 5 s per measurement, about 2 minutes
#   SECS=2 bench/kv.sh           # a quick look
#
# Settings (environment): SECS (5), CLIENTS (32), KEYS (1000), VALUE_BYTES (100),
# ROWS (only the rows whose `store/instances` label contains one of these
# comma-separated parts, e.g. ROWS="shoal R=2/2,direct,etcd,WAIT").
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd redis-server
cargo build --release --workspace --bins
exec_release_bin kv_bench
