# Shared by the gateway benchmarks: build the release binaries, then start
# etcd and the two app servers (`bench-a`, `bench-b`) on LOAD_CORES.
# Needs bench/lib/common.sh (TMP, pids, free_port, wait_for).

# build_release: the release gateway and app-server (unless NO_BUILD=1,
# which takes them as they are); sets BIN.
build_release() {
  BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
  [ "${NO_BUILD:-0}" = 1 ] && return
  echo "building release binaries…" >&2
  cargo build --release -p gateway -p app-server --quiet
}

# start_backends: etcd and two app servers; sets ETCD_URL and APP_PORTS.
start_backends() {
  local name port
  export RUST_LOG=${RUST_LOG:-warn}
  free_port ETCD_PORT
  free_port ETCD_PEER_PORT
  ETCD_URL=http://127.0.0.1:$ETCD_PORT
  taskset -c "$LOAD_CORES" etcd --name bench --data-dir "$TMP/etcd" \
    --listen-client-urls "$ETCD_URL" --advertise-client-urls "$ETCD_URL" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "bench=http://127.0.0.1:$ETCD_PEER_PORT" \
    >"$TMP/etcd.log" 2>&1 &
  pids+=($!)
  wait_for etcd "$ETCD_URL/health" "$TMP/etcd.log" "$!"

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
