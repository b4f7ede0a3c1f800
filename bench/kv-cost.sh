#!/usr/bin/env bash
# What one key-value request costs an app server, in instructions under
# valgrind's callgrind: a lone instance (R = 1, no data directory) is
# started under callgrind, one 100-byte key is written, the store is left
# to settle (11 s, as bench/kv.sh waits), and after a warm-up
# its instructions are counted over REQUESTS GETs of that key, then over
# REQUESTS PUTs of it (h2load over 4 keep-alive HTTP/1.1 connections, sent
# straight to the instance). Instructions hold up on a busy machine, where
# rates (bench/kv.sh) move by a fifth from run to run, so this is the way
# to see a change of a few percent in the instance's request path.
#
#   bench/kv-cost.sh                                    # about 2.5 minutes
#   BEFORE_BIN=/tmp/app-server-old bench/kv-cost.sh     # also an earlier build, beside it
#
# Settings (environment): REQUESTS (10000), BEFORE_BIN (an earlier
# app-server binary, measured as `before`), NO_BUILD=1 (use the release
# binaries already built), KEEP_TMP=1 keeps logs and callgrind profiles
# (`callgrind_annotate $TMP/callgrind-<build>-<op>.out`).
#
# Exit status: 0 when every build was measured; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REQUESTS=${REQUESTS:-10000}
[[ $REQUESTS =~ ^[0-9]+$ ]] && [ "$REQUESTS" -ge 1000 ] ||
  { echo "error: REQUESTS must be a whole number of at least 1000, not \`$REQUESTS\`" >&2; exit 1; }
if [ -n "${BEFORE_BIN:-}" ] && [ ! -x "$BEFORE_BIN" ]; then
  echo "error: BEFORE_BIN=$BEFORE_BIN is not an executable app-server binary" >&2
  exit 1
fi

# kv_bench's wait too: app_server::kv::membership::SETTLE and a second.
SETTLE_SECS=11

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
SHOAL_PACKAGE[callgrind_control]=valgrind
SHOAL_PACKAGE[h2load]=nghttp2-client
need_tools protoc etcd curl valgrind callgrind_control h2load
setup_tmp shoal-kv-cost

BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
if [ "${NO_BUILD:-0}" != 1 ]; then
  echo "building the release app-server…" >&2
  cargo build --release -p app-server
fi
builds=("shoal=$BIN/app-server")
[ -z "${BEFORE_BIN:-}" ] || builds+=("before=$BEFORE_BIN")

export RUST_LOG=${RUST_LOG:-warn}
start_etcd

head -c 100 /dev/zero | tr '\0' v >"$TMP/value"
declare -A IR
failed=0

# h2load_n METHOD URL N: N requests; fails unless every one succeeded.
h2load_n() {
  local method=$1 url=$2 n=$3 out
  local args=(--h1 -n "$n" -c 4 "$url")
  [ "$method" = GET ] || args+=(-d "$TMP/value" -H ':method: PUT')
  out=$(h2load "${args[@]}" 2>&1) || true
  grep -q "^requests: $n total, $n started, $n done, $n succeeded" <<<"$out" || {
    echo "error: h2load $method $url: $(grep -E '^requests:|status codes' <<<"$out" | tr '\n' ' ')" >&2
    return 1
  }
}

# measure NAME BINARY: instructions per GET and per PUT of one instance.
measure() {
  local name=$1 bin=$2 port pid op dump url
  free_port port
  url=http://127.0.0.1:$port/kv/bench-key
  valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind-$name.%p.out" \
    "$bin" --etcd "$ETCD_URL" --service kv-cost --id "kv-cost-$name" --kv-replicas 1 \
    --listen "127.0.0.1:$port" >"$TMP/app-$name.out" 2>"$TMP/app-$name.log" &
  pid=$!
  pids+=("$pid")
  wait_for "app server $name (under callgrind)" "http://127.0.0.1:$port/" "$TMP/app-$name.log" "$pid" 60
  # A lone instance takes writes once its view is confirmed (its join delay).
  local writable=0
  for _ in $(seq 1 300); do
    if curl -sf -X PUT --data-binary @"$TMP/value" "$url" >/dev/null; then writable=1; break; fi
    sleep 0.2
  done
  [ "$writable" = 1 ] || { echo "error: $name never took the first PUT; see $TMP/app-$name.log" >&2; return 1; }
  # Measure the settled store, as bench/kv.sh does: until its view has been
  # quiet for app_server::kv::membership::SETTLE (10 s), a read also ranks
  # the key in every recent view in case a newer copy is elsewhere.
  sleep "$SETTLE_SECS"
  for op in GET PUT; do
    h2load_n "$op" "$url" 2000 || return 1 # warm-up
    callgrind_control -z "$pid" >/dev/null 2>&1
    h2load_n "$op" "$url" "$REQUESTS" || return 1
    dump=$(callgrind_dump "$pid" "$name-$op" "$TMP/callgrind-$name") || return 1
    IR[$name/$op]=$(($(callgrind_instructions "$dump") / REQUESTS))
    mv "$dump" "$TMP/callgrind-$name-$op.out"
    printf 'callgrind  %-8s %-4s %7d requests  %8s instructions/request\n' "$name" "$op" "$REQUESTS" "${IR[$name/$op]}" >&2
  done
  kill -TERM "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pids "$pid"
}

for build in "${builds[@]}"; do
  measure "${build%%=*}" "${build#*=}" || failed=1
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "one app server (R = 1, no data directory) under callgrind; h2load --h1 -c 4, one 100-byte key, $REQUESTS requests after 2000 to warm up"
for build in "${builds[@]}"; do echo "${build%%=*}: ${build#*=}"; done
echo
echo "| build  | instructions/GET | instructions/PUT |"
echo "|--------|------------------|------------------|"
for build in "${builds[@]}"; do
  name=${build%%=*}
  printf '| %-6s | %16s | %16s |\n' "$name" "${IR[$name/GET]:-failed}" "${IR[$name/PUT]:-failed}"
done
if [ -n "${BEFORE_BIN:-}" ] && [ -n "${IR[shoal/GET]:-}" ] && [ -n "${IR[before/GET]:-}" ]; then
  for op in GET PUT; do
    awk -v a="${IR[shoal/$op]}" -v b="${IR[before/$op]}" -v op="$op" 'BEGIN { printf "shoal/before instructions/%s: %.3fx\n", op, a / b }'
  done
fi
exit "$failed"
