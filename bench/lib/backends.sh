# Shared by the gateway benchmarks (and `bench/kv-cost.sh`'s etcd): build
# the release binaries, then start etcd and the two app servers (`bench-a`,
# `bench-b`) on LOAD_CORES.
# Needs bench/lib/common.sh (TMP, pids, free_port, wait_for).

# build_release: the release gateway and app-server (unless NO_BUILD=1,
# which takes them as they are); sets BIN.
build_release() {
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
  [ "${NO_BUILD:-0}" = 1 ] && return
  echo "building release binaries…" >&2
  cargo build --release -p gateway -p app-server
}

# pick_gateway: sets GATEWAY_BIN, the gateway the benchmark measures, unless
# it is set: with PGO=1 (the default) the profile-guided build the images
# ship, made by scripts/pgo-gateway (about 12 minutes), or with NO_BUILD=1
# the one it last made; with PGO=0 the plain release build (check_settings
# has checked PGO). Call it after build_release (the training runs against
# the app servers in BIN).
pick_gateway() {
  if [ -n "${GATEWAY_BIN:-}" ]; then
    return
  elif [ "${PGO:-1}" = 0 ]; then
    GATEWAY_BIN=$BIN/gateway
  elif [ "${NO_BUILD:-0}" = 1 ]; then
    GATEWAY_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/pgo/use/release/gateway
  else
    echo "building the profile-guided gateway (scripts/pgo-gateway)…" >&2
    GATEWAY_BIN=$(NO_BUILD=1 scripts/pgo-gateway | tail -n 1)
  fi
}

# start_etcd [CORES]: a one-member etcd in $TMP/etcd (on the taskset core
# list CORES if given), stopped on exit; sets ETCD_URL.
start_etcd() {
  local pin=()
  [ -z "${1:-}" ] || pin=(taskset -c "$1")
  free_port ETCD_PORT
  free_port ETCD_PEER_PORT
  ETCD_URL=http://127.0.0.1:$ETCD_PORT
  "${pin[@]}" etcd --name bench --data-dir "$TMP/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    >"$TMP/etcd.log" 2>&1 &
  pids+=($!)
  wait_for etcd "$ETCD_URL/health" "$TMP/etcd.log" "$!"
}

# start_backends: etcd and two app servers; sets ETCD_URL and APP_PORTS.
start_backends() {
  local name port
  export RUST_LOG=${RUST_LOG:-warn}
  start_etcd "$LOAD_CORES"

  APP_PORTS=()
  for name in a b; do
    free_port port
    APP_PORTS+=("$port")
    taskset -c "$LOAD_CORES" "$BIN/app-server" --etcd "$ETCD_URL" --service app \
      --id "bench-$name" --listen "127.0.0.1:$port" >"$TMP/app-$name.out" 2>"$TMP/app-$name.log" &
    pids+=($!)
    wait_for "app server bench-$name" "http://127.0.0.1:$port/" "$TMP/app-$name.log" "$!"
  done
}

# fake_ids COUNT: the ids of the COUNT fake instances `scale_registry
# instances` writes (bench/src/scale/fill.rs names them fake-00000,
# fake-00001, ...), one a line.
fake_ids() {
  local n
  for ((n = 0; n < $1; n++)); do printf 'fake-%05d\n' "$n"; done
}

# scale_registry COMMAND PREFIX [VAR=VALUE...]: bench/src/bin/scale_registry
# on the registry prefix PREFIX of this run's etcd, its fake instances
# pointing in turn at the two app servers (after start_backends).
scale_registry() {
  local command=$1 prefix=$2
  shift 2
  env ETCD="$ETCD_URL" PREFIX="$prefix" ADDRS="127.0.0.1:${APP_PORTS[0]},127.0.0.1:${APP_PORTS[1]}" \
    "$@" "$BIN/scale_registry" "$command"
}
