#!/usr/bin/env bash
# The source notes' experiments rerun on Shoal (issue 8): scaling, crash,
# rolling restart, stateful, dynamic, peer-to-peer. Each starts its own etcd,
# gateway, autoscaler (process driver) and app servers on 127.0.0.1 and the
# script prints one table, Shoal's figure next to the source's, ending with
# `N experiments, N met; crash: X% of requests failed`. See bench/README.md.
#
#   bench/seed-experiments.sh            # about 3–4 minutes
#   QUICK=1 bench/seed-experiments.sh    # about a minute, smoke run
#
# Settings (environment): PHASE_SECS (10; 3 with QUICK=1), CRASH_SECS (30;
# 10), CRASH_INSTANCES (4), CLIENTS (8; 4), SESSIONS (20; 10), INCREMENTS
# (5; 3). Exit status: 0 when every goal was met, 1 when one was not, 2 when
# an experiment could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd
cargo build --release --workspace --bins
exec_release_bin seed_experiments
