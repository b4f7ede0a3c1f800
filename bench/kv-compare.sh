#!/usr/bin/env bash
# Compare this checkout's key-value store with an earlier build, side by
# side: bench/kv.sh's Shoal rows, alternately with the binaries in
# BEFORE_BIN_DIR and with this checkout's release build, ROUNDS times, then
# one line per row with each round's after/before ratios and their median.
# The load generator is this checkout's kv_bench for both.
#
#   git worktree add /tmp/before <commit> && (cd /tmp/before && cargo build --release --bins)
#   BEFORE_BIN_DIR=/tmp/before/target/release bench/kv-compare.sh
#
# Settings (environment): BEFORE_BIN_DIR (required: app-server, gateway and
# registry of the earlier build), ROUNDS (3), ROWS (default
# "shoal R=2/2,shoal R=2/4,durability fsync,direct"; see bench/kv.sh), SECS (3),
# NO_BUILD=1 to use the release build as it is, CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
need_tools protoc etcd redis-server python3
: "${BEFORE_BIN_DIR:?set BEFORE_BIN_DIR to the directory of the earlier build (its app-server, gateway and registry)}"
if [[ -z ${NO_BUILD:-} ]]; then cargo build --release --workspace --bins; fi
target_dir=${CARGO_TARGET_DIR:-$PWD/target}
export ROWS=${ROWS:-shoal R=2/2,shoal R=2/4,durability fsync,direct} SECS=${SECS:-3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
for round in $(seq 1 "${ROUNDS:-3}"); do
  for build in before after; do
    dir=$BEFORE_BIN_DIR
    [[ $build == after ]] && dir=$target_dir/release
    echo "round $round: $build ($dir)" >&2
    SHOAL_BIN_DIR=$dir "$target_dir/release/kv_bench" | grep '^| shoal' | tee "$out/$build-$round"
  done
done
python3 - "$out" <<'PY'
import glob, os, statistics, sys
out = sys.argv[1]
def rows(build):
    by_round = {}
    for path in sorted(glob.glob(os.path.join(out, f"{build}-*"))):
        for line in open(path):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            key = f"{cells[0]} ×{cells[1]}"
            # PUT ops/s, PUT p99, PUT CPU "servers + client", GET ops/s, ...
            server_cpu = lambda cell: float(cell.split("+")[0])
            by_round.setdefault(key, []).append(
                [float(cells[2]), float(cells[3]), float(cells[5]), server_cpu(cells[4])])
    return by_round
before, after = rows("before"), rows("after")
print("| row | PUT ops/s after/before, by round | median | PUT p99 after/before | PUT servers' CPU/op after/before | GET ops/s after/before, by round | median |")
print("|---|---|---|---|---|---|---|")
for key, b in before.items():
    a = after.get(key, [])
    pairs = list(zip(a, b))
    put = [x[0] / y[0] for x, y in pairs]
    p99 = [x[1] / y[1] for x, y in pairs]
    get = [x[2] / y[2] for x, y in pairs]
    cpu = [x[3] / y[3] for x, y in pairs if y[3] > 0]
    fmt = lambda rs: " ".join(f"{r:.2f}" for r in rs)
    cpu_median = f"{statistics.median(cpu):.2f}x" if cpu else "-"
    print(f"| {key} | {fmt(put)} | {statistics.median(put):.2f}x | {statistics.median(p99):.2f}x "
          f"| {cpu_median} | {fmt(get)} | {statistics.median(get):.2f}x |")
PY
