#!/usr/bin/env bash
# Benchmark the autoscaler's reaction on this machine and print one table:
# for a load step (2 → 8 clients of ~50 ms requests through the gateway), the
# time until the 2nd and 3rd instances serve; the time back to 1 instance
# after the load drops; a rolling restart; and the requests failed in each.
# Everything (etcd, gateway, autoscaler, app servers) runs on 127.0.0.1 and is
# started and stopped by the benchmark. See bench/README.md.
#
#   bench/autoscale.sh                  # 3 rounds, about 2 minutes
#   ROUNDS=1 bench/autoscale.sh         # a quick look
#
# Settings (environment): ROUNDS (3), SCALE_DOWN_WINDOW (s, 10).
# Exit status: 0 when no request failed, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd
cargo build --release --workspace --bins
exec_release_bin autoscale_bench
