#!/usr/bin/env bash
# The gateway's cost with thousands of instances and routes (issue 24): for
# each policy (round-robin, least-request, consistent-hash on a header,
# sticky), req/s and p99 relative to 2 instances and 10 routes, gateway RSS,
# CPU per request, and the time from a registry put until the gateway routes
# it; nginx and HAProxy measured the same way with 10,000 upstream servers
# against 2, in the same rounds; then the memory of 10,000 idle keep-alive
# client connections to Shoal, nginx and HAProxy.
#
# Setup (bench/lib/*.sh): etcd and two release app servers on LOAD_CORES.
# Each configuration (instances x routes) is a registry prefix of its own,
# `/scale-i{I}-r{R}`, filled by `scale_registry` (bench/src/scale/): I fake
# `ready` instances on one lease pointing in turn at the two app servers,
# written in batches, and R routes: one measured route per policy
# (`/round-robin/`, ...) behind R - 4 filler routes that a linear scan
# passes first. One gateway per configuration follows its prefix (pinned to
# PROXY_CORE, --workers 1, --slow-start 0s); all of them run at once. Ratios
# are to the base configuration (the fewest instances, the fewest routes)
# on the same policy, run back to back with it: each round runs, for every
# policy and every other configuration, the base and that configuration one
# after the other (which goes first alternates), and a ratio is the median
# of the rounds' ratios, with the interval for it (bench/src/paired.rs). Configurations: every count of
# INSTANCE_COUNTS with the first of ROUTE_COUNTS, and the fewest instances
# with every further route count.
#
# Load: wrk -t1 -cCONNECTIONS -dDURATION --latency on LOAD_CORES, WARMUP
# seconds unmeasured per configuration and policy, then ROUNDS rounds
# (medians; the base's over all its runs). Consistent-hash and sticky
# requests stand for KEYS clients (10,000): each carries the next of KEYS
# `x-user` headers (user-42, user-43, ...) or cookies pinning the fake
# instances in a shuffled order (`policy_keys`), so that at 10,000
# instances a request finds its instance's state cold; KEYS=1 sends one
# key, as before 2026-12-08. cpu us/req: the gateway's utime + stime
# (/proc/PID/stat) over the run / requests. RSS: VmRSS once the table is
# loaded (idle) and after every round (loaded). put->routed: median of
# SAMPLES puts of a new instance until the gateway's admin API
# (/api/v1/services, read from the routing table) counts it, taken before
# the load with the gateway idle.
#
# nginx and HAProxy at scale (SCALE_PEERS): each with the fewest and with
# the most of INSTANCE_COUNTS `server` lines in its upstreams (addresses in
# turn from the two app servers, as the fake instances have), one process
# each on PROXY_CORE, measured in the same rounds and pairs as the
# gateways (the most against the fewest, back to back) on round-robin,
# least-request and consistent-hash (nginx's default, `least_conn` and
# `hash $http_x_user consistent`; HAProxy's roundrobin, leastconn and
# `hdr(x-user)` with `hash-type consistent`). Sticky is left out: nginx's
# open-source build has no sticky cookie. What their selection costs with
# that many servers, beside what the gateway's does.
#
# Idle connections: IDLE_CONNECTIONS keep-alive connections to each proxy of
# IDLE_PROXIES (one GET each, then idle; `idle_conns`), the proxy's VmRSS
# before and after, per connection: 2 s after the last one opened, and
# again IDLE_SETTLE seconds after it (10), when each proxy has closed what
# it closes of the burst's connections to the app servers (Shoal: idle past
# --upstream-idle-timeout, 4 s; HAProxy: pool-purge-delay, 5 s; nginx keeps
# `keepalive 64`). Shoal is a fresh gateway on the first
# configuration; nginx and HAProxy are configured as in bench/gateway.sh
# (one worker, round-robin to the two app servers).
#
#   bench/gateway-scale.sh                                 # about 14 minutes
#   DURATION=2 ROUNDS=1 IDLE_CONNECTIONS=1000 bench/gateway-scale.sh   # a quick look
#   GATEWAY_BIN=/tmp/gateway-before bench/gateway-scale.sh # another build
#
# Settings (environment): CONNECTIONS (32), DURATION (3), ROUNDS (6),
# WARMUP (1), INSTANCE_COUNTS ("2 100 1000 10000"), ROUTE_COUNTS
# ("10 10000"), SCALE_POLICIES ("round-robin least-request consistent-hash
# sticky"), SCALE_PEERS ("nginx haproxy"; empty skips), SAMPLES (5), KEYS
# (10000), IDLE_CONNECTIONS (10000; 0 skips), IDLE_PROXIES ("shoal nginx
# haproxy"), IDLE_SETTLE (10), PROXY_CORE (0), LOAD_CORES (1), GATEWAY_BIN (the
# gateway binary; default the fresh release build), NO_BUILD=1 (the
# binaries as they are), KEEP_TMP=1 (keeps logs and wrk outputs).
#
# Exit status: 0 when every configuration and proxy was measured; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

CONNECTIONS=${CONNECTIONS:-32}
DURATION=${DURATION:-3}
ROUNDS=${ROUNDS:-6}
WARMUP=${WARMUP:-1}
INSTANCE_COUNTS=${INSTANCE_COUNTS:-"2 100 1000 10000"}
ROUTE_COUNTS=${ROUTE_COUNTS:-"10 10000"}
SCALE_POLICIES=${SCALE_POLICIES:-"round-robin least-request consistent-hash sticky"}
SCALE_PEERS=${SCALE_PEERS-"nginx haproxy"}
SAMPLES=${SAMPLES:-5}
KEYS=${KEYS:-10000}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
IDLE_PROXIES=${IDLE_PROXIES:-"shoal nginx haproxy"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
# bench/lib/proxies.sh: the idle test's nginx and HAProxy (one process each).
PROXIES=$IDLE_PROXIES
POLICIES=round-robin
NGINX_MASTER=off

for setting in CONNECTIONS DURATION ROUNDS WARMUP SAMPLES KEYS IDLE_CONNECTIONS; do
  [[ ${!setting} =~ ^[0-9]+$ ]] || { echo "error: $setting must be a whole number, not \`${!setting}\`" >&2; exit 1; }
done
for setting in CONNECTIONS DURATION ROUNDS SAMPLES KEYS; do
  [ "${!setting}" -ge 1 ] || { echo "error: $setting must be at least 1" >&2; exit 1; }
done
for count in $INSTANCE_COUNTS; do
  [[ $count =~ ^[0-9]+$ ]] && [ "$count" -ge 2 ] ||
    { echo "error: INSTANCE_COUNTS holds \`$count\`; use whole numbers of at least 2, e.g. \"2 100 1000\"" >&2; exit 1; }
done
for count in $ROUTE_COUNTS; do
  [[ $count =~ ^[0-9]+$ ]] && [ "$count" -ge 4 ] ||
    { echo "error: ROUTE_COUNTS holds \`$count\`; use whole numbers of at least 4 (the measured routes), e.g. \"10 10000\"" >&2; exit 1; }
done
for policy in $SCALE_POLICIES; do
  case $policy in
    round-robin | least-request | consistent-hash | sticky) ;;
    *) echo "error: SCALE_POLICIES may hold round-robin, least-request, consistent-hash and sticky, not $policy" >&2; exit 1 ;;
  esac
done
for peer in $SCALE_PEERS; do
  case $peer in
    nginx | haproxy) ;;
    *) echo "error: SCALE_PEERS may hold nginx and haproxy, not $peer" >&2; exit 1 ;;
  esac
done
[ -n "$INSTANCE_COUNTS" ] && [ -n "$ROUTE_COUNTS" ] && [ -n "$SCALE_POLICIES" ] ||
  { echo "error: INSTANCE_COUNTS, ROUTE_COUNTS and SCALE_POLICIES must each name at least one" >&2; exit 1; }

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
check_settings
SHOAL_PACKAGE[taskset]=util-linux
tools=(protoc etcd curl taskset wrk)
for proxy in $IDLE_PROXIES $SCALE_PEERS; do [ "$proxy" = shoal ] || tools+=("$proxy"); done
need_tools "${tools[@]}"

check_cores
setup_tmp shoal-scale
CLK_TCK=$(getconf CLK_TCK)
raise_open_files "$IDLE_CONNECTIONS"

build_release
if [ "${NO_BUILD:-0}" != 1 ]; then cargo build --release -p shoal-bench --bin scale_registry --bin idle_conns --bin paired; fi
GATEWAY_BIN=${GATEWAY_BIN:-$BIN/gateway}
start_backends

# ready_instances KEY: the ready instances of `app` the gateway of KEY shows.
ready_instances() {
  curl -s --max-time 5 "http://127.0.0.1:${ADMIN[$1]}/api/v1/services" |
    grep -o '"ready_instances":[0-9]*' | head -n 1 | cut -d: -f2
}

# --- configurations ------------------------------------------------------------

read -ra instance_counts <<<"$INSTANCE_COUNTS"
read -ra route_counts <<<"$ROUTE_COUNTS"
fewest=$(printf '%s\n' "${instance_counts[@]}" | sort -n | head -n 1)
most=$(printf '%s\n' "${instance_counts[@]}" | sort -n | tail -n 1)
configs=()
for count in "${instance_counts[@]}"; do configs+=("i$count-r${route_counts[0]}"); done
for routes in "${route_counts[@]:1}"; do configs+=("i$fewest-r$routes"); done
base=i$fewest-r${route_counts[0]}
# A gateway's configuration is i{I}-r{R}; nginx's and HAProxy's are
# {proxy}-i{I} (I upstream servers, one route per policy).
is_peer() { [[ $1 =~ ^(nginx|haproxy)- ]]; }
instances_of() { local c=${1##*i}; echo "${c%-r*}"; }
routes_of() { if is_peer "$1"; then echo -; else echo "${1#*-r}"; fi; }
# base_of CONFIG: the configuration CONFIG's runs are paired with.
base_of() { if is_peer "$1"; then echo "${1%-i*}-i$fewest"; else echo "$base"; fi; }

declare -A RSS_IDLE=() RSS_LOADED=() PROPAGATION=()
for config in "${configs[@]}"; do
  prefix=/scale-$config
  echo "registry $prefix: $(instances_of "$config") instances, $(routes_of "$config") routes" >&2
  scale_registry instances "$prefix" COUNT="$(instances_of "$config")" 2>>"$TMP/scale_registry.log"
  scale_registry routes "$prefix" ROUTES="$(routes_of "$config")" 2>>"$TMP/scale_registry.log"
done

# url_of RUN, pid_of RUN: where RUN (configuration/policy) sends its
# requests, and the proxy process that serves them. A gateway serves every
# policy on one port, under a route each; nginx and HAProxy on a port each.
url_of() {
  if is_peer "${1%/*}"; then
    echo "http://127.0.0.1:${PORT[$1]}/"
  else
    echo "http://127.0.0.1:${PORT[${1%/*}/round-robin]}/${1#*/}/"
  fi
}
pid_of() { if is_peer "${1%/*}"; then echo "${PID[$1]}"; else echo "${PID[${1%/*}/round-robin]}"; fi; }

# run_wrk RUN SECONDS OUT: wrk through RUN's proxy on RUN's policy; on
# consistent-hash and sticky each request carries the next of KEYS keys
# (`policy_keys`, written once per run into $TMP/keys-CONFIG-POLICY).
run_wrk() {
  local config=${1%/*} policy=${1#*/} headers script=()
  case $policy in
    consistent-hash | sticky)
      headers=$TMP/keys-$config-$policy
      [ -f "$headers" ] || policy_keys "$policy" "$KEYS" $(fake_ids "$(instances_of "$config")") >"$headers"
      script=(-s "$(cycle_headers_script)")
      ;;
  esac
  taskset -c "$LOAD_CORES" wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency ${script[@]+"${script[@]}"} \
    "$(url_of "$1")" ${headers:+-- "$headers"} >"$3" 2>&1 || true
}

# stop_gateway KEY: SIGTERM, and SIGKILL when it has not exited within 20 s
# (a gateway busy rebuilding a large table was seen not to); the others run on.
stop_gateway() {
  local pid=${PID[$1]} waited=0
  kill -TERM "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null && [ "$waited" -lt 200 ]; do sleep 0.1; waited=$((waited + 1)); done
  if kill -0 "$pid" 2>/dev/null; then
    echo "gateway $1 did not stop within 20 s of SIGTERM; killed" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  unset "PID[$1]"
  forget_pids "$pid"
}

# Every configuration has a gateway of its own, started as the proxy named
# after the configuration (bench/lib/proxies.sh: its PORT, PID, LOG and
# ADMIN are under $config/round-robin, its default route's policy; every
# measured request takes one of the routes). All of them run for the whole
# measurement, and each round runs every configuration and policy once, in
# alternating order: the ratios compare runs side by side in time, so a
# VM that slows down over minutes moves all of them alike. An idle gateway
# is nearly free (one with 10,000 instances, and one with 10,000 routes,
# each used 10 ms of CPU in 20 s idle). Before the watch stopped waking
# its readers on every progress notification, an idle gateway with 10,000
# routes rebuilt its table once a second and kept half of PROXY_CORE busy,
# which is why the configurations were once measured one after another.
declare -A RPS=() P99=() US=() ERRORS=()
live=()
for config in "${configs[@]}"; do
  key=$config/round-robin
  free_port "PORT[$key]"
  SHOAL_PREFIX=/scale-$config start_gateway "$config" "$GATEWAY_BIN" GATEWAY_BIN round-robin
  [ -z "${FAILED[$key]:-}" ] || continue
  want=$(instances_of "$config")
  started=$SECONDS
  until [ "$(ready_instances "$key" || true)" = "$want" ]; do
    if ! kill -0 "${PID[$key]}" 2>/dev/null || [ $((SECONDS - started)) -ge 120 ]; then
      FAILED[$key]="its table did not reach $want ready instances within 120 s"
      break
    fi
    sleep 0.2
  done
  for policy in $SCALE_POLICIES; do
    [ -z "${FAILED[$key]:-}" ] || break
    if ! wait_for "gateway $config ($policy)" "http://127.0.0.1:${PORT[$key]}/$policy/" "${LOG[$key]}" "${PID[$key]}"; then
      FAILED[$key]="did not answer 200 at /$policy/"
    fi
  done
  if [ -n "${FAILED[$key]:-}" ]; then
    echo "FAILED: gateway $config: ${FAILED[$key]}" >&2
    stop_gateway "$key"
    continue
  fi
  echo "gateway $config: $want instances routable after $((SECONDS - started)) s" >&2
  live+=("$config")
done

measured=()
for config in "${live[@]}"; do
  key=$config/round-robin
  RSS_IDLE[$config]=$(rss_kb "${PID[$key]}")
  if line=$(scale_registry propagation "/scale-$config" ADMIN="http://127.0.0.1:${ADMIN[$key]}" SAMPLES="$SAMPLES" 2>>"$TMP/scale_registry.log"); then
    PROPAGATION[$config]=$(awk '{ print $3 }' <<<"$line")
    echo "put->routed $config: $line" >&2
  else
    # The load is still measured; the row says FAILED in this column.
    PROPAGATION[$config]=FAILED
    FAILED[$key/put-routed]="$(tail -n 1 "$TMP/scale_registry.log")"
  fi
  for policy in $SCALE_POLICIES; do measured+=("$config/$policy"); done
done

# nginx and HAProxy, each with the fewest and the most upstream servers.
peer_policies=()
for policy in $SCALE_POLICIES; do [ "$policy" = sticky ] || peer_policies+=("$policy"); done
peer_configs=()
if [ "$most" != "$fewest" ] && [ ${#peer_policies[@]} -gt 0 ]; then
  for peer in $SCALE_PEERS; do
    for count in "$fewest" "$most"; do
      config=$peer-i$count
      for policy in "${peer_policies[@]}"; do free_port "PORT[$config/$policy]"; done
      # HAProxy keeps idle connections per server, as many as a share of
      # its connection limit allows: with its default (4096) and 10,000
      # servers, 4 requests in 5 opened a new connection to the app server.
      # Room for one idle connection per server (nginx shares its idle
      # connections among the servers of an upstream; it is given the same).
      PROXY_MAX_CONNECTIONS=$((4096 + 3 * count)) UPSTREAM_SERVERS=$count POLICIES="${peer_policies[*]}" \
        "start_$peer" "$config"
      for policy in "${peer_policies[@]}"; do
        key=$config/$policy
        wait_for "$peer with $count servers ($policy)" "$(url_of "$key")" "${LOG[$key]}" "${PID[$key]}" 30 ||
          FAILED[$key]="did not answer 200 at $(url_of "$key")"
      done
      RSS_IDLE[$config]=$(rss_kb "${PID[$config/${peer_policies[0]}]}")
      PROPAGATION[$config]=-
      for policy in "${peer_policies[@]}"; do
        [ -n "${FAILED[$config/$policy]:-}" ] || measured+=("$config/$policy")
      done
      peer_configs+=("$config")
    done
  done
fi

# measure RUN ROUND [BESIDE]: one wrk run through RUN's gateway on RUN's
# policy, its figures appended to RUN's, or with BESIDE, to the base's
# figures taken beside the run BESIDE.
measure() {
  local run=$1 round=$2 beside=${3:-} config=${1%/*} pid before after rps p99 errors requests us rss out
  pid=$(pid_of "$run")
  out=$TMP/wrk-${run//\//-}-$round-$((++RUN_COUNT)).txt
  before=$(cpu_ticks_of "$pid")
  run_wrk "$run" "$DURATION" "$out"
  after=$(cpu_ticks_of "$pid")
  read -r rps _ p99 errors < <(parse_wrk "$out") || { echo "error: no wrk result for $run" >&2; exit 1; }
  requests=$(wrk_requests "$out")
  us=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", n ? t / hz * 1e6 / n : 0 }')
  RPS[$run]+="$rps "
  P99[$run]+="$p99 "
  US[$run]+="$us "
  ERRORS[$run]=$((${ERRORS[$run]:-0} + errors))
  if [ -n "$beside" ]; then
    BASE_RPS[$beside]+="$rps "
    BASE_P99[$beside]+="$p99 "
    BASE_US[$beside]+="$us "
  fi
  rss=$(rss_kb "$pid")
  [ "$rss" -le "${RSS_LOADED[$config]:-0}" ] || RSS_LOADED[$config]=$rss
  printf 'round %d/%d  %-30s %8.0f req/s  p99 %7.2f ms  %6.2f cpu us/req  rss %6.1f MB\n' \
    "$round" "$ROUNDS" "$run" "$rps" "$p99" "$us" "$(awk -v k="$rss" 'BEGIN { print k / 1024 }')" >&2
}

# Each round runs, for every policy and every configuration but the base,
# the base and that configuration back to back (which goes first
# alternates): a few seconds apart, where the runs of one round are minutes
# apart. BASE_*[RUN] are the base's figures taken beside RUN, round by
# round, as RUN's own are; the base's own row is the median of all its runs.
if [ "$WARMUP" -gt 0 ]; then
  for run in "${measured[@]}"; do run_wrk "$run" "$WARMUP" "$TMP/warmup.txt"; done
fi
declare -A BASE_RPS=() BASE_P99=() BASE_US=()
RUN_COUNT=0
pairs=()
for run in "${measured[@]}"; do
  base_run=$(base_of "${run%/*}")/${run#*/}
  # A run is paired with its base's run, when that was measured.
  [ "$run" != "$base_run" ] && [[ " ${measured[*]} " == *" $base_run "* ]] && pairs+=("$run")
done
for round in $(seq 1 "$ROUNDS"); do
  for i in "${!pairs[@]}"; do
    run=${pairs[$i]}
    base_run=$(base_of "${run%/*}")/${run#*/}
    if [ $(((round + i) % 2)) -eq 0 ]; then
      measure "$run" "$round"
      measure "$base_run" "$round" "$run"
    else
      measure "$base_run" "$round" "$run"
      measure "$run" "$round"
    fi
  done
done
for config in "${live[@]}"; do stop_gateway "$config/round-robin"; done
stop_proxies # nginx and HAProxy (the gateways' keys are gone from PID)

# --- idle connections ---------------------------------------------------------

IDLE_SETTLE=${IDLE_SETTLE:-10}
declare -A IDLE_OPEN=() IDLE_BEFORE=() IDLE_AFTER=() IDLE_SETTLED=()
if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
  PROXY_MAX_CONNECTIONS=$((IDLE_CONNECTIONS + 500))
  for proxy in $IDLE_PROXIES; do
    free_port "PORT[$proxy/round-robin]"
    url=http://127.0.0.1:${PORT[$proxy/round-robin]}/
    case $proxy in
      shoal)
        SHOAL_PREFIX=/scale-$base start_gateway shoal "$GATEWAY_BIN" GATEWAY_BIN round-robin
        url+=round-robin/
        ;;
      *) start_proxy "$proxy" ;;
    esac
    key=$proxy/round-robin
    if ! wait_for "$proxy" "$url" "${LOG[$key]}" "${PID[$key]}"; then
      FAILED[$key]="did not answer 200 at $url"
      stop_proxies
      continue
    fi
    IDLE_BEFORE[$proxy]=$(rss_kb "${PID[$key]}")
    URL=$url CONNECTIONS=$IDLE_CONNECTIONS HOLD_SECS=120 taskset -c "$LOAD_CORES" "$BIN/idle_conns" \
      >"$TMP/idle-$proxy.out" 2>"$TMP/idle-$proxy.log" &
    idle_pid=$!
    pids+=("$idle_pid")
    while kill -0 "$idle_pid" 2>/dev/null && ! grep -q '^open ' "$TMP/idle-$proxy.out"; do sleep 0.1; done
    if grep -q '^open ' "$TMP/idle-$proxy.out"; then
      # Let the proxy settle what the last requests left (buffers freed;
      # Shoal parks a quiet HTTP/1 connection 0.1-0.15 s after its request).
      sleep 2
      IDLE_AFTER[$proxy]=$(rss_kb "${PID[$key]}")
      sleep $((IDLE_SETTLE > 2 ? IDLE_SETTLE - 2 : 0))
      IDLE_SETTLED[$proxy]=$(rss_kb "${PID[$key]}")
      IDLE_OPEN[$proxy]=$(awk '/^open / { print $2 }' "$TMP/idle-$proxy.out")
      echo "idle $proxy: $(cat "$TMP/idle-$proxy.out"); rss ${IDLE_BEFORE[$proxy]} -> ${IDLE_AFTER[$proxy]} (2 s) -> ${IDLE_SETTLED[$proxy]} (${IDLE_SETTLE} s) KiB" >&2
    else
      FAILED[$key]="idle_conns failed: $(tail -n 3 "$TMP/idle-$proxy.log")"
    fi
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    stop_proxies
  done
fi

# --- report -------------------------------------------------------------------

mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
row() { printf '| %-7s | %-15s | %9s | %6s | %7s | %-23s | %7s | %-23s | %10s | %-23s | %16s | %11s | %6s |\n' "$@"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo); load: $(uptime | sed 's/.*load average: //')"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s x $ROUNDS round(s) (median); gateway on core $PROXY_CORE (--workers 1), wrk, etcd and 2 app servers on core(s) $LOAD_CORES"
echo "consistent-hash and sticky: $KEYS key(s), a request the next one's (x-user header; sticky cookie)"
echo "gateway: $GATEWAY_BIN"
echo "ratios: to the $(instances_of "$base")-instance, $(routes_of "$base")-route gateway on the same policy (nginx and HAProxy: to themselves with $fewest upstream servers), run beside it in each round; put->routed: median of $SAMPLES (ms)"
echo
row proxy policy instances routes req/s "x base" "p99 ms" "x base" "cpu us/req" "x base" "RSS MB idle/load" "put->routed" errors
row '' '' '' '' '' '' '' '' '' '' '' '' '' | tr ' ' '-'
# x_base FIGURES BASE_FIGURES: a run's figures against the base's taken
# beside them (paired_ratio, bench/lib/common.sh); 1.00x for the base itself.
x_base() {
  if [ -z "$2" ]; then
    echo "1.00x"
  elif [ "$ROUNDS" -lt 2 ]; then # one ratio: no interval
    awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
  else
    paired_ratio "$1" "$2"
  fi
}
for policy in $SCALE_POLICIES; do
  for config in "${configs[@]}" "${peer_configs[@]}"; do
    key=$config/$policy
    proxy=shoal
    if is_peer "$config"; then
      proxy=${config%-i*}
      [ "$policy" != sticky ] || continue
    fi
    if [ -z "${RPS[$key]:-}" ]; then
      row "$proxy" "$policy" "$(instances_of "$config")" "$(routes_of "$config")" FAILED - - - - - - - -
      continue
    fi
    row "$proxy" "$policy" "$(instances_of "$config")" "$(routes_of "$config")" "$(printf '%.0f' "$(median ${RPS[$key]})")" \
      "$(x_base "${RPS[$key]}" "${BASE_RPS[$key]:-}")" "$(printf '%.2f' "$(median ${P99[$key]})")" "$(x_base "${P99[$key]}" "${BASE_P99[$key]:-}")" \
      "$(printf '%.2f' "$(median ${US[$key]})")" "$(x_base "${US[$key]}" "${BASE_US[$key]:-}")" \
      "$(mb "${RSS_IDLE[$config]}")/$(mb "${RSS_LOADED[$config]}")" "${PROPAGATION[$config]}" "${ERRORS[$key]}"
  done
done
echo
if [ "$ROUNDS" -ge 2 ]; then
  echo "x base: the median of the rounds' ratios to the base run beside it (the interval for that median, $("$BIN/paired" --coverage "$ROUNDS")% coverage; \"higher\"/\"lower\" when it leaves out 1; bench/src/paired.rs)"
else
  echo "x base: the ratio to the base run beside it (one round: no interval)"
fi

if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
  echo
  echo "$IDLE_CONNECTIONS idle keep-alive client connections (one GET each), proxy RSS before, 2 s and ${IDLE_SETTLE} s after the last opened"
  echo
  idle_row() { printf '| %-7s | %6s | %13s | %10s | %14s | %10s | %14s |\n' "$@"; }
  idle_row proxy open "RSS before MB" "at 2 s MB" "KB/conn at 2 s" "at ${IDLE_SETTLE} s MB" "KB/conn at ${IDLE_SETTLE} s"
  idle_row '' '' '' '' '' '' '' | tr ' ' '-'
  per_conn() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.2f", (a - b) * 1.024 / n }'; }
  for proxy in $IDLE_PROXIES; do
    if [ -z "${IDLE_AFTER[$proxy]:-}" ]; then
      idle_row "$proxy" FAILED - - - - -
      continue
    fi
    idle_row "$proxy" "${IDLE_OPEN[$proxy]}" "$(mb "${IDLE_BEFORE[$proxy]}")" \
      "$(mb "${IDLE_AFTER[$proxy]}")" "$(per_conn "${IDLE_AFTER[$proxy]}" "${IDLE_BEFORE[$proxy]}" "${IDLE_OPEN[$proxy]}")" \
      "$(mb "${IDLE_SETTLED[$proxy]}")" "$(per_conn "${IDLE_SETTLED[$proxy]}" "${IDLE_BEFORE[$proxy]}" "${IDLE_OPEN[$proxy]}")"
  done
fi

report_failed
