#!/usr/bin/env bash
# What one proxied request costs the proxy, for Shoal's gateway, nginx and
# HAProxy in front of the same two app servers: CPU time per request (from
# /proc/<pid>/stat) and, under callgrind, instructions per request. Both hold
# up on a busy machine, where req/s (bench/gateway.sh) does not.
#
# Same setup as bench/gateway.sh (bench/lib/*.sh): etcd, two release app
# servers, each proxy pinned to PROXY_CORE with one worker, wrk and the app
# servers on LOAD_CORES. Per proxy and policy, wrk sends REQUESTS requests
# over CONNECTIONS keep-alive connections, ROUNDS times (median); then, with
# IR_REQUESTS > 0, each proxy runs again under valgrind's callgrind, is
# warmed up, and its instructions are counted over IR_REQUESTS requests.
# After the timed rounds, each gateway's /metrics gives its attempts sent to
# instances per client request (`upstream` lines: the extra attempts are
# retries and hedges, see docs/architecture.md, "Hedged requests").
#
#   bench/gateway-cost.sh                          # about 3 minutes
#   IR_REQUESTS=0 bench/gateway-cost.sh            # CPU time only
#   PROXIES=shoal KEEP_TMP=1 bench/gateway-cost.sh # keeps the callgrind profiles
#   PROXIES="shoal before" BEFORE_BIN=/tmp/gateway-old bench/gateway-cost.sh
#                           # also prints the difference paired round by round
#   INSTANCES=10000 CACHE_SIM=1 PROXIES=shoal bench/gateway-cost.sh
#                           # the cost with 10,000 registered instances
#
# Settings (environment): REQUESTS (50000), CONNECTIONS (64), ROUNDS (3),
# IR_REQUESTS (5000; 0 skips callgrind), CACHE_SIM (1: callgrind also
# simulates the caches, and the table gets cache misses per request),
# LL_CACHE (with CACHE_SIM=1, the simulated last-level cache as
# SIZE,ASSOCIATIVITY,LINE in bytes, e.g. 1048576,16,64; default: this
# CPU's, which on a shared VM is a share of a cache the model gets whole,
# so 10,000 instances' state fits in it and misses nothing),
# PROXIES ("shoal nginx haproxy"; also `before`, see BEFORE_BIN), POLICIES
# ("round-robin least-request"; also consistent-hash and sticky: Shoal's
# gateways then follow `scale_registry routes`' measured routes, written
# into their registry prefix, and requests go to `/consistent-hash/` with
# the header `x-user: user-42` (nginx and HAProxy hash it too) and to
# `/sticky/` with a cookie that pins one instance, as in
# bench/gateway-scale.sh; nginx and HAProxy are not measured on sticky),
# KEYS (1: every request carries that one key; N: the requests carry N
# keys in turn, user-42, user-43, ... or cookies pinning the instances in
# a shuffled order, as in bench/gateway-scale.sh: the cost of many
# clients' keys, whose instances are cold),
# PROXY_CORE (0), LOAD_CORES (1),
# GATEWAY_BIN (a gateway binary other than the fresh build), BEFORE_BIN (an
# earlier gateway binary, measured as the proxy `before`:
# PROXIES="shoal before" compares a change with what it changes in one run),
# INSTANCES (0; N > 0: Shoal's gateways follow a registry prefix of their own,
# `/scale-cost`, holding N fake `ready` instances of `app` written by
# `scale_registry` as in bench/gateway-scale.sh, their addresses taken in
# turn from the two app servers; nginx and HAProxy are unchanged),
# ROUTES (0: every policy but consistent-hash and sticky on the default
# route; N >= 4: `scale_registry routes ROUTES=N` as in
# bench/gateway-scale.sh, each policy on its measured route behind N - 4
# filler routes; nginx and HAProxy are unchanged),
# NO_BUILD=1 (use the release binaries already built), KEEP_TMP=1 keeps
# configs, logs and callgrind profiles
# (`callgrind_annotate $TMP/callgrind-shoal-round-robin.out`).
#
# Exit status: 0 when every proxy was measured; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

REQUESTS=${REQUESTS:-50000}
CONNECTIONS=${CONNECTIONS:-64}
ROUNDS=${ROUNDS:-3}
IR_REQUESTS=${IR_REQUESTS:-5000}
CACHE_SIM=${CACHE_SIM:-0}
LL_CACHE=${LL_CACHE:-}
PROXIES=${PROXIES:-"shoal nginx haproxy"}
POLICIES=${POLICIES:-"round-robin least-request"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
# One nginx process: its CPU time is then one /proc entry, and callgrind sees the worker.
NGINX_MASTER=off

case $CACHE_SIM in
  0 | 1) ;;
  *) echo "error: CACHE_SIM=$CACHE_SIM is not allowed; use 1 (simulate the caches under callgrind) or 0" >&2; exit 1 ;;
esac
if [ -n "$LL_CACHE" ]; then
  [[ $LL_CACHE =~ ^[0-9]+,[0-9]+,[0-9]+$ ]] ||
    { echo "error: LL_CACHE=$LL_CACHE is not SIZE,ASSOCIATIVITY,LINE in bytes; e.g. LL_CACHE=1048576,16,64" >&2; exit 1; }
  [ "$CACHE_SIM" = 1 ] || { echo "error: LL_CACHE needs CACHE_SIM=1 (it sets the simulated cache)" >&2; exit 1; }
fi
INSTANCES=${INSTANCES:-0}
ROUTES=${ROUTES:-0}
KEYS=${KEYS:-1}
for setting in REQUESTS CONNECTIONS ROUNDS IR_REQUESTS INSTANCES ROUTES KEYS; do
  [[ ${!setting} =~ ^[0-9]+$ ]] || { echo "error: $setting must be a whole number, not \`${!setting}\`" >&2; exit 1; }
done
[ "$KEYS" -ge 1 ] || { echo "error: KEYS must be at least 1" >&2; exit 1; }
[ "$ROUTES" = 0 ] || [ "$ROUTES" -ge 4 ] ||
  { echo "error: ROUTES=$ROUTES: use 0 (the default route) or at least 4 (the measured routes and fillers, as in bench/gateway-scale.sh)" >&2; exit 1; }
[ "$REQUESTS" -ge 1000 ] || { echo "error: REQUESTS=$REQUESTS is too few to time; use at least 1000" >&2; exit 1; }

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
check_settings round-robin least-request consistent-hash sticky
SHOAL_PACKAGE[taskset]=util-linux
tools=(protoc etcd curl taskset wrk nginx haproxy)
if [ "$IR_REQUESTS" -gt 0 ]; then
  SHOAL_PACKAGE[callgrind_control]=valgrind
  tools+=(valgrind callgrind_control)
fi
need_tools "${tools[@]}"

check_cores
setup_tmp shoal-cost
CLK_TCK=$(getconf CLK_TCK)

# url_of KEY: where KEY's requests go: on a Shoal gateway, the policy's
# measured route when it has them (always for consistent-hash and sticky;
# the default route is round-robin); nginx and HAProxy hash the header on
# any path.
url_of() {
  local path=/
  case $1 in
    */consistent-hash | */sticky) [[ $1 == nginx/* || $1 == haproxy/* ]] || path=/${1#*/}/ ;;
    shoal/* | before/*) [ "$ROUTES" = 0 ] || path=/${1#*/}/ ;;
  esac
  echo "http://127.0.0.1:${PORT[$1]}$path"
}
# load KEY REQUESTS OUT: wrk_count for KEY; on consistent-hash and sticky
# each request carries the next of KEYS keys (`policy_keys`, written once
# into $TMP/keys-POLICY).
load() {
  local headers=$TMP/keys-${1#*/}
  [ -f "$headers" ] || policy_keys "${1#*/}" "$KEYS" "${STICKY_IDS[@]}" >"$headers"
  [ -s "$headers" ] || headers=
  wrk_count "$(url_of "$1")" "$2" "$CONNECTIONS" "$3" "$headers"
}

build_release
if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -p shoal-bench --bin paired; fi
start_backends
assign_ports
routed=$((ROUTES > 0))
for policy in $POLICIES; do
  case $policy in consistent-hash | sticky) routed=1 ;; esac
done
if [ "$INSTANCES" -gt 0 ] || [ "$routed" = 1 ]; then
  if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -p shoal-bench --bin scale_registry; fi
fi
# What sticky cookies pin, in turn: the app servers, or the fake instances.
STICKY_IDS=(bench-b bench-a)
if [ "$INSTANCES" -gt 0 ]; then
  echo "registering $INSTANCES fake instances of app under /scale-cost" >&2
  scale_registry instances /scale-cost COUNT="$INSTANCES" 2>"$TMP/scale_registry.log" ||
    { echo "error: scale_registry failed: $(tail -n 3 "$TMP/scale_registry.log")" >&2; exit 1; }
  # Read by every gateway started from here on (the app servers run already).
  export SHOAL_PREFIX=/scale-cost
  mapfile -t STICKY_IDS < <(fake_ids "$INSTANCES")
fi
if [ "$routed" = 1 ]; then
  # The default route has no hash key: the measured routes of
  # bench/gateway-scale.sh, behind ROUTES - 4 fillers.
  scale_registry routes "${SHOAL_PREFIX:-/shoal}" ROUTES=$((ROUTES > 0 ? ROUTES : 4)) 2>"$TMP/scale_routes.log" ||
    { echo "error: scale_registry routes failed: $(tail -n 3 "$TMP/scale_routes.log")" >&2; exit 1; }
fi

keys=()
for policy in $POLICIES; do
  for proxy in $PROXIES; do
    if [ "$policy" = sticky ] && [[ $proxy == nginx || $proxy == haproxy ]]; then
      echo "note: $proxy is not measured on sticky (nginx's open-source build has no sticky cookie)" >&2
      continue
    fi
    keys+=("$proxy/$policy")
  done
done

# --- CPU time per request ---------------------------------------------------

for proxy in $PROXIES; do start_proxy "$proxy"; done
for key in "${keys[@]}"; do check_proxy "$key"; done
declare -A US=() RPS=() ERRORS=() IR=() D1=() I1=() LL=()
measured=()
for key in "${keys[@]}"; do
  if [ -n "${FAILED[$key]:-}" ]; then
    echo "FAILED: $key: ${FAILED[$key]}" >&2
  else
    measured+=("$key")
  fi
done

echo "warm-up: 5000 requests per proxy and policy" >&2
for key in "${measured[@]}"; do load "$key" 5000 "$TMP/warmup.txt"; done

for round in $(seq 1 "$ROUNDS"); do
  round_order "$round"
  for key in "${order[@]}"; do
    out=$TMP/wrk-${key//\//-}-$round.txt
    before=$(cpu_ticks_of "${PID[$key]}")
    load "$key" "$REQUESTS" "$out"
    after=$(cpu_ticks_of "${PID[$key]}")
    done_requests=$(wrk_requests "$out")
    if [ -z "$done_requests" ] || [ "$done_requests" -eq 0 ]; then
      echo "error: wrk completed no request through $key; its output:" >&2
      cat "$out" >&2
      exit 1
    fi
    us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$done_requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    rps=$(awk '/^Requests\/sec:/ { print $2 }' "$out")
    US[$key]+="$us "
    RPS[$key]+="$rps "
    ERRORS[$key]=$((${ERRORS[$key]:-0} + $(wrk_errors "$out")))
    printf 'round %d/%d  %-22s %7d requests  %6.2f cpu us/req  %8.0f req/s\n' \
      "$round" "$ROUNDS" "$key" "$done_requests" "$us" "$rps" >&2
  done
done
# Extra attempts (retries, hedges) per client request, warm-up included.
for key in "${measured[@]}"; do
  overhead=$(upstream_overhead "$key")
  [ -z "$overhead" ] || printf 'upstream   %-22s %s\n' "$key" "$overhead" >&2
done
stop_proxies

# --- instructions per request (callgrind) -----------------------------------

if [ "$IR_REQUESTS" -gt 0 ]; then
  for proxy in $PROXIES; do
    proxy_keys=()
    for key in "${measured[@]}"; do [ "${key%/*}" = "$proxy" ] && proxy_keys+=("$key"); done
    [ ${#proxy_keys[@]} -gt 0 ] || continue
    PROXY_WRAPPER=(valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind-$proxy.%p.out")
    if [ "$CACHE_SIM" = 1 ]; then PROXY_WRAPPER+=(--cache-sim=yes ${LL_CACHE:+"--LL=$LL_CACHE"}); fi
    start_proxy "$proxy"
    PROXY_WRAPPER=()
    for key in "${proxy_keys[@]}"; do
      pid=${PID[$key]}
      check_proxy "$key" 120
      if [ -n "${FAILED[$key]:-}" ]; then
        echo "FAILED under callgrind: $key: ${FAILED[$key]}" >&2
        continue
      fi
      load "$key" 500 "$TMP/warmup.txt"
      callgrind_control -z "$pid" >/dev/null 2>&1
      out=$TMP/wrk-ir-${key//\//-}.txt
      load "$key" "$IR_REQUESTS" "$out"
      dump=$(callgrind_dump "$pid" "${key//\//-}" "$TMP/callgrind-$proxy")
      instructions=$(callgrind_instructions "$dump")
      done_requests=$(wrk_requests "$out")
      IR[$key]=$(awk -v i="$instructions" -v n="$done_requests" 'BEGIN { printf "%.0f", i / n }')
      if [ "$CACHE_SIM" = 1 ]; then
        # events: Ir Dr Dw I1mr D1mr D1mw ILmr DLmr DLmw; per request:
        # first-level data misses (reads + writes), instruction misses,
        # last-level misses (all three kinds).
        read -r D1[$key] I1[$key] LL[$key] < <(awk -v n="$done_requests" '
          /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
          /^(summary|totals):/ { for (i = 2; i <= NF; i++) v[i] = $i
            d1 = v[col["D1mr"]] + v[col["D1mw"]]; i1 = v[col["I1mr"]]
            ll = v[col["ILmr"]] + v[col["DLmr"]] + v[col["DLmw"]]
            printf "%.0f %.0f %.1f\n", d1 / n, i1 / n, ll / n; exit }' "$dump")
      fi
      if [ "${KEEP_TMP:-0}" = 1 ]; then
        cp "$dump" "$TMP/callgrind-${key//\//-}.out"
      fi
      printf 'callgrind  %-22s %7d requests  %8s instructions/req\n' "$key" "$done_requests" "${IR[$key]}" >&2
    done
    stop_proxies
  done
fi

# --- report -------------------------------------------------------------------

# row VALUE...: one table row. Every row is given all nine columns; the last
# three (cache misses) are printed only with CACHE_SIM=1.
row_format='| %-7s | %-15s | %11s | %17s | %14s | %6s |'
row_columns=6
if [ "$CACHE_SIM" = 1 ]; then
  row_format+=' %11s | %11s | %11s |'
  row_columns=9
fi
row() { printf "$row_format\n" "${@:1:$row_columns}"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "wrk -t1 -c$CONNECTIONS, $REQUESTS requests x $ROUNDS round(s) (median), callgrind over $IR_REQUESTS; proxy on core $PROXY_CORE, wrk and 2 app servers on core(s) $LOAD_CORES"
echo "Shoal's gateway: ${GATEWAY_BIN:-$BIN/gateway}"
if [ "$INSTANCES" -gt 0 ]; then echo "Shoal's service: $INSTANCES registered instances (fake entries) over the 2 app servers"; fi
if [ "$ROUTES" -gt 0 ]; then echo "Shoal's routes: $ROUTES (each policy's measured route behind $((ROUTES - 4)) fillers)"; fi
if [[ " $PROXIES " == *" before "* ]]; then echo "before: $BEFORE_BIN"; fi
echo "(req/s is wall-clock and only meaningful on a quiet machine)"
echo
if [ "$CACHE_SIM" = 1 ]; then
  echo "(cache misses per request are valgrind's simulation of this CPU's caches, under callgrind${LL_CACHE:+; last level: $LL_CACHE (size,assoc,line)})"
  echo
fi
row proxy policy "cpu us/req" "instructions/req" "req/s (noisy)" errors "D1 miss/req" "I1 miss/req" "LL miss/req"
row '' '' '' '' '' '' '' '' '' | tr ' ' '-' # the header's rule: |----|----|
for key in "${keys[@]}"; do
  if [ -n "${FAILED[$key]:-}" ] && [ -z "${US[$key]:-}" ]; then
    row "${key%/*}" "${key#*/}" FAILED - - - - - -
    continue
  fi
  row "${key%/*}" "${key#*/}" "$(printf '%.2f' "$(median ${US[$key]})")" "${IR[$key]:--}" \
    "$(printf '%.0f' "$(median ${RPS[$key]})")" "${ERRORS[$key]}" "${D1[$key]:--}" "${I1[$key]:--}" "${LL[$key]:--}"
done

# With `before` beside Shoal: CPU a request, compared round by round. Both
# ran in the same round, seconds apart, so the machine's drift over the run
# cancels out of each round's ratio, which it does not out of the two
# medians (bench/src/paired.rs: the median ratio with an interval that
# assumes no distribution).
if [[ " $PROXIES " == *" shoal "* && " $PROXIES " == *" before "* ]] && [ "$ROUNDS" -ge 2 ] && [ -x "$BIN/paired" ]; then
  echo
  for policy in $POLICIES; do
    [ -n "${US[shoal/$policy]:-}" ] && [ -n "${US[before/$policy]:-}" ] || continue
    printf 'shoal/before cpu us/req, %s, paired by round: %s (%s%% interval)\n' \
      "$policy" "$(paired_ratio "${US[shoal/$policy]}" "${US[before/$policy]}")" "$("$BIN/paired" --coverage "$ROUNDS")"
  done
fi

report_failed
