#!/usr/bin/env bash
# Where a request's CPU goes, user space or the kernel, and how many system
# calls it costs the server: one app server's key-value GET (direct, one
# key, R = 1) beside Redis's GET of a value of the same size, and Shoal's
# gateway proxying `GET /` to two app servers beside nginx and HAProxy
# doing the same (bench/lib/proxies.sh). It tells which part of a gap is
# the program's own work and which the loopback TCP stack's, which every
# server pays alike (issue 23's "level with Redis", issue 24's "per-request
# cost").
#
# Each server runs alone on PROXY_CORE, its load (h2load --h1, or
# redis-benchmark, or wrk; CONNECTIONS connections) on LOAD_CORES, with etcd
# and the two app servers behind the proxies. Per server: REQUESTS requests
# timed (user and system CPU from /proc/PID/stat, per request), then, when
# `perf` can count tracepoints here, REQUESTS more under `perf stat` for the
# system calls per request: reads (read, readv, recvfrom, recvmsg), writes
# (write, writev, sendto, sendmsg), epoll_wait and all of them (counting
# adds kernel time, so the CPU columns come from the first pass).
#
# The loads differ (h2load and redis-benchmark are different clients), so
# compare a server's own columns, not req/s across loads.
#
#   bench/cpu-split.sh                  # about 2 minutes
#   REQUESTS=500000 bench/cpu-split.sh  # steadier
#
# Settings (environment): REQUESTS (200000), CONNECTIONS (32), PROXY_CORE
# (0), LOAD_CORES (1), NO_BUILD=1 (the release binaries as they are),
# KEEP_TMP=1 (keep logs and load outputs).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REQUESTS=${REQUESTS:-200000}
CONNECTIONS=${CONNECTIONS:-32}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
for setting in REQUESTS CONNECTIONS; do
  [[ ${!setting} =~ ^[0-9]+$ ]] || { echo "error: $setting must be a whole number, not \`${!setting}\`" >&2; exit 1; }
done
[ "$REQUESTS" -ge 10000 ] || { echo "error: REQUESTS=$REQUESTS is too few to time; use at least 10000" >&2; exit 1; }
PROXIES="shoal nginx haproxy"
POLICIES=round-robin
# One nginx process: its CPU time is then one /proc entry.
NGINX_MASTER=off

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
SHOAL_PACKAGE[taskset]=util-linux
SHOAL_PACKAGE[h2load]=nghttp2-client
SHOAL_PACKAGE[redis-benchmark]=redis-tools
SHOAL_PACKAGE[redis-cli]=redis-tools
need_tools protoc etcd curl taskset wrk nginx haproxy h2load redis-server redis-cli redis-benchmark
check_cores
setup_tmp shoal-cpu-split
CLK_TCK=$(getconf CLK_TCK)

COUNT_SYSCALLS=0
if command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
  COUNT_SYSCALLS=1
else
  echo "note: perf cannot count tracepoints here (install linux-perf, run as root); no system call columns" >&2
fi

build_release
start_backends
export RUST_LOG=${RUST_LOG:-warn}

declare -A ROW=()
servers=()

# measure NAME PID REQUESTS_OF LOAD...: run LOAD (a command or function on
# LOAD_CORES, making REQUESTS requests to the server PID) twice: timed,
# then with perf counting the server's system calls. REQUESTS_OF FILE
# prints how many requests LOAD's output FILE says it made.
measure() {
  local name=$1 pid=$2 requests_of=$3 u0 s0 u1 s1 done_requests counts=(- - - -)
  shift 3
  read -r u0 s0 < <(user_sys_ticks "$pid")
  "$@" >"$TMP/load-$name.txt" 2>&1
  read -r u1 s1 < <(user_sys_ticks "$pid")
  done_requests=$("$requests_of" "$TMP/load-$name.txt")
  [ "${done_requests:-0}" -gt 0 ] || { echo "error: the load on $name completed no request; see $TMP/load-$name.txt" >&2; exit 1; }
  if [ "$COUNT_SYSCALLS" = 1 ]; then
    local events=raw_syscalls:sys_enter call
    for call in read readv recvfrom recvmsg write writev sendto sendmsg epoll_wait epoll_pwait; do
      events+=",syscalls:sys_enter_$call"
    done
    local perf_pid counted
    perf stat -x, -e "$events" -p "$pid" -o "$TMP/perf-$name.txt" &
    perf_pid=$!
    sleep 0.5 # attached
    "$@" >"$TMP/load-$name-counted.txt" 2>&1
    kill -INT "$perf_pid"
    wait "$perf_pid" || true
    counted=$("$requests_of" "$TMP/load-$name-counted.txt")
    read -r -a counts < <(awk -F, -v n="${counted:-0}" '
      /^[0-9]/ { c[$3] = $1 }
      END {
        if (n == 0) { print "- - - -"; exit }
        r = c["syscalls:sys_enter_read"] + c["syscalls:sys_enter_readv"] + c["syscalls:sys_enter_recvfrom"] + c["syscalls:sys_enter_recvmsg"]
        w = c["syscalls:sys_enter_write"] + c["syscalls:sys_enter_writev"] + c["syscalls:sys_enter_sendto"] + c["syscalls:sys_enter_sendmsg"]
        e = c["syscalls:sys_enter_epoll_wait"] + c["syscalls:sys_enter_epoll_pwait"]
        printf "%.2f %.2f %.2f %.2f\n", r / n, w / n, e / n, c["raw_syscalls:sys_enter"] / n }' "$TMP/perf-$name.txt")
  fi
  ROW[$name]=$(awk -v n="$done_requests" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$CLK_TCK" \
    -v r="${counts[0]}" -v w="${counts[1]}" -v e="${counts[2]}" -v a="${counts[3]}" 'BEGIN {
      us = u / hz * 1e6 / n; ss = s / hz * 1e6 / n
      printf "%8d | %11.2f | %13.2f | %9.0f%% | %9s | %10s | %10s | %7s |", n, us, ss, (us + ss > 0 ? 100 * us / (us + ss) : 0), r, w, e, a }')
  servers+=("$name")
  printf '%-8s %s\n' "$name" "${ROW[$name]}" >&2
}

wrk_load() { wrk_count "$1" "$REQUESTS" "$CONNECTIONS" /dev/stdout; }
h2load_requests() { awk '/^requests:/ { print $8 }' "$1"; }
redis_requests() { tr '\r' '\n' <"$1" | grep -q 'requests per second' && echo "$REQUESTS"; }

# --- the key-value GET: an app server and Redis -----------------------------

head -c 100 /dev/zero | tr '\0' v >"$TMP/value"
free_port kv_port
taskset -c "$PROXY_CORE" "$BIN/app-server" --etcd "$ETCD_URL" --service kv-split --id kv-split \
  --kv-replicas 1 --listen "127.0.0.1:$kv_port" >"$TMP/kv.out" 2>"$TMP/kv.log" &
kv_pid=$!
pids+=("$kv_pid")
wait_for "app server kv-split" "http://127.0.0.1:$kv_port/" "$TMP/kv.log" "$kv_pid"
kv_url=http://127.0.0.1:$kv_port/kv/split-key
for _ in $(seq 1 100); do
  curl -sf -X PUT --data-binary @"$TMP/value" "$kv_url" >/dev/null && break
  sleep 0.2
done
curl -sf "$kv_url" >/dev/null || { echo "error: the app server never took the key; see $TMP/kv.log" >&2; exit 1; }
h2load --h1 -n 20000 -c "$CONNECTIONS" "$kv_url" >/dev/null # warm-up
measure "shoal kv" "$kv_pid" h2load_requests taskset -c "$LOAD_CORES" h2load --h1 -n "$REQUESTS" -c "$CONNECTIONS" -t 1 "$kv_url"
kill -TERM "$kv_pid" 2>/dev/null || true
wait "$kv_pid" 2>/dev/null || true
forget_pids "$kv_pid"

free_port redis_port
taskset -c "$PROXY_CORE" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' \
  --appendonly no >"$TMP/redis.log" 2>&1 &
redis_pid=$!
pids+=("$redis_pid")
for _ in $(seq 1 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
# redis-benchmark's GET reads the key `key:__rand_int__` (no -r: that very name).
redis-cli -p "$redis_port" set 'key:__rand_int__' "$(cat "$TMP/value")" >/dev/null
redis-benchmark -p "$redis_port" -n 20000 -c "$CONNECTIONS" -t get -q >/dev/null # warm-up
measure redis "$redis_pid" redis_requests taskset -c "$LOAD_CORES" redis-benchmark -p "$redis_port" -n "$REQUESTS" -c "$CONNECTIONS" -t get -q

# --- proxying GET /: the gateway, nginx, HAProxy ----------------------------

assign_ports
for proxy in $PROXIES; do start_proxy "$proxy"; done
for proxy in $PROXIES; do
  key=$proxy/$POLICIES
  check_proxy "$key"
  [ -z "${FAILED[$key]:-}" ] || { echo "error: $key: ${FAILED[$key]}" >&2; exit 1; }
  url="http://127.0.0.1:${PORT[$key]}/"
  wrk_count "$url" 5000 "$CONNECTIONS" "$TMP/warmup.txt"
  # wrk_count runs wrk on LOAD_CORES itself.
  measure "$proxy" "${PID[$key]}" wrk_requests wrk_load "$url"
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "each server alone on core $PROXY_CORE, its load on core(s) $LOAD_CORES, $CONNECTIONS connections; shoal kv: GET of one 100-byte key from an app server (R = 1), h2load --h1; redis: GET of a 100-byte value, redis-benchmark; shoal, nginx, haproxy: GET / proxied to two app servers, round-robin, wrk"
[ "$COUNT_SYSCALLS" = 1 ] && echo "system calls counted over another $REQUESTS requests under perf stat"
echo
echo "| server   | requests | user µs/req | system µs/req | user share | reads/req | writes/req | epoll/req | all/req |"
echo "|----------|----------|-------------|---------------|------------|-----------|------------|-----------|---------|"
for name in "${servers[@]}"; do printf '| %-8s | %s\n' "$name" "${ROW[$name]}"; done
