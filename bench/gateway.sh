#!/usr/bin/env bash
# Benchmark Shoal's gateway against nginx and HAProxy, in front of the same
# two app-server instances, and print one table: req/s, p50, p99 and the
# ratio to nginx, for round-robin and least-request.
#
# Everything runs on 127.0.0.1 and is started (and stopped) by this script:
# etcd, two app servers, and each proxy in turn. Each proxy is pinned to
# PROXY_CORE with one worker; the app servers and wrk share LOAD_CORES, so
# the proxy's core should be the bottleneck (the table shows whether it
# was). Proxies alternate round by round, and each figure is the median over
# ROUNDS runs. A second table compares latency at the same offered load:
# FIXED_RATE requests per second, open loop, from Shoal's fixed_rate
# generator. A third table puts Shoal against each other
# proxy round by round (each round's ratio, their median and a confidence
# interval for it), to say whether a difference is larger than the rounds'
# spread. See bench/README.md.
#
#   bench/gateway.sh                        # 10 s runs, 3 rounds (about 4 minutes, and 7 for TLS)
#   DURATION=5 ROUNDS=1 TLS=0 bench/gateway.sh   # a quick look
#   FIXED_RATE=0 bench/gateway.sh           # wrk only, no fixed-rate table
#
# Settings (environment): DURATION (s per run, default 10), ROUNDS (3),
# WARMUP (s per proxy and policy before the first round, 3), CONNECTIONS (64),
# PROXIES ("shoal nginx haproxy"), POLICIES ("round-robin least-request"),
# PROXY_CORE (0), LOAD_CORES (1; a taskset list such as 1-3 on bigger
# machines), FIXED_RATE (10000 req/s; 0 skips that table), KEEP_TMP=1 keeps
# configs and logs. The gateway measured is the one the images ship, the
# profile-guided build (scripts/pgo-gateway, about 12 minutes more; with
# NO_BUILD=1 the one it last built); PGO=0 measures the plain release build,
# GATEWAY_BIN=<path> any other. TLS (1) then runs bench/gateway-tls.sh with
# the same gateway, DURATION, ROUNDS, cores and proxies, for the TLS table
# (a few minutes more); TLS=0 skips it. The proxy `before` is the gateway from
# BEFORE_BIN, e.g. a copy of the build before a change:
# PROXIES="shoal before nginx" BEFORE_BIN=/tmp/gateway-old PGO=0 bench/gateway.sh
# puts the change against it round by round in the third table.
#
# Exit status: 0 when every proxy was measured; 1 when one did not answer
# (its rows say FAILED and its log is printed) or something else went wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXIES=${PROXIES:-"shoal nginx haproxy"}
POLICIES=${POLICIES:-"round-robin least-request"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
FIXED_RATE=${FIXED_RATE:-10000}
TLS=${TLS:-1}
case $TLS in
  0 | 1) ;;
  *) echo "error: TLS=$TLS is not allowed; use 1 (also the TLS table, bench/gateway-tls.sh; the default) or 0" >&2; exit 1 ;;
esac
case $FIXED_RATE in
  '' | *[!0-9]*) echo "error: FIXED_RATE=$FIXED_RATE is not allowed; use a whole number of requests per second (0 skips the fixed-rate table)" >&2; exit 1 ;;
esac

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
check_settings
SHOAL_PACKAGE[taskset]=util-linux
need_tools protoc etcd curl taskset wrk nginx haproxy

check_cores
setup_tmp shoal-bench

# --- helpers -------------------------------------------------------------

# cpu_ticks "CORE...": "busy total" jiffies of these cores since boot.
cpu_ticks() {
  awk -v cores=" $1 " '
    $1 ~ /^cpu[0-9]+$/ && index(cores, " " substr($1, 4) " ") {
      for (i = 2; i <= 9; i++) total += $i
      busy += $2 + $3 + $4 + $7 + $8 + $9
    }
    END { print busy + 0, total + 0 }' /proc/stat
}

# busy_pct BEFORE AFTER: percentage of busy time between two cpu_ticks readings.
busy_pct() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ");
    d = y[2] - x[2]; printf "%.1f", (d > 0 ? 100 * (y[1] - x[1]) / d : 0) }'
}

# --- build, backends, proxies -----------------------------------------------

build_release
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p shoal-bench --bin fixed_rate --bin paired
fi
pick_gateway
start_backends
# Every proxy is started once per policy and left running (idle ones cost
# nothing); each listens on its own port: PORT[proxy/policy].
assign_ports
for proxy in $PROXIES; do start_proxy "$proxy"; done

# Before measuring: every proxy must answer 200 and reach both app servers.
for proxy in $PROXIES; do
  for policy in $POLICIES; do check_proxy "$proxy/$policy"; done
done
for key in "${!FAILED[@]}"; do
  echo "FAILED: $key: ${FAILED[$key]}" >&2
done

# Other work on these cores would be counted against the proxies.
idle_before=$(cpu_ticks "$PROXY_CORE")
load_idle_before=$(cpu_ticks "$load_cores")
sleep 1
idle_busy=$(busy_pct "$idle_before" "$(cpu_ticks "$PROXY_CORE")")
load_idle_busy=$(busy_pct "$load_idle_before" "$(cpu_ticks "$load_cores")")
if awk -v a="$idle_busy" -v b="$load_idle_busy" 'BEGIN { exit !(a > 10 || b > 10) }'; then
  echo "warning: before any load, the proxy core is ${idle_busy}% busy and the load cores ${load_idle_busy}%:" \
    "something else is running, and the figures will be skewed (run on a quiet machine)" >&2
fi

# --- measure ----------------------------------------------------------------

run_wrk() { # run_wrk KEY SECONDS OUT
  taskset -c "$LOAD_CORES" wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "http://127.0.0.1:${PORT[$1]}/" >"$3" 2>&1
}

declare -A RPS=() P50=() P99=() ERRORS=() PROXY_CPU=() LOAD_CPU=() COST=()
measured=()
for policy in $POLICIES; do
  for proxy in $PROXIES; do
    [ -n "${FAILED[$proxy/$policy]:-}" ] || measured+=("$proxy/$policy")
  done
done
if [ ${#measured[@]} -eq 0 ]; then
  echo "error: no proxy answered; nothing to measure" >&2
  exit 1
fi

# wrk refuses a zero duration: WARMUP=0 skips the warm-up.
if (( WARMUP > 0 )); then
  echo "warm-up: ${WARMUP}s per proxy and policy" >&2
  for key in "${measured[@]}"; do run_wrk "$key" "$WARMUP" "$TMP/warmup.txt"; done
else
  echo "warm-up: none (WARMUP=0)" >&2
fi

for round in $(seq 1 "$ROUNDS"); do
  round_order "$round"
  for key in "${order[@]}"; do
    out=$TMP/wrk-${key//\//-}-$round.txt
    proxy_before=$(cpu_ticks "$PROXY_CORE")
    load_before=$(cpu_ticks "$load_cores")
    run_wrk "$key" "$DURATION" "$out"
    proxy_cpu=$(busy_pct "$proxy_before" "$(cpu_ticks "$PROXY_CORE")")
    load_cpu=$(busy_pct "$load_before" "$(cpu_ticks "$load_cores")")
    PROXY_CPU[$key]+="$proxy_cpu "
    LOAD_CPU[$key]+="$load_cpu "
    result=$(parse_wrk "$out")
    read -r rps p50 p99 errors <<<"$result"
    RPS[$key]+="$rps "
    P50[$key]+="$p50 "
    P99[$key]+="$p99 "
    ERRORS[$key]=$((${ERRORS[$key]:-0} + errors))
    # The proxy core's busy time per request: what the proxy costs, even
    # when the load core is what limits req/s.
    cost=$(awk -v c="$proxy_cpu" -v r="$rps" 'BEGIN { printf "%.2f", (r > 0 ? c / 100 * 1e6 / r : 0) }')
    COST[$key]+="$cost "
    printf 'round %d/%d  %-22s %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %d  cpu: proxy %s%% (%s us/req) load %s%%\n' \
      "$round" "$ROUNDS" "$key" "$rps" "$p50" "$p99" "$errors" "$proxy_cpu" "$cost" "$load_cpu" >&2
  done
done

# --- the same offered load for everyone ---------------------------------------

# run_fixed KEY OUT: FIXED_RATE req/s for DURATION seconds (after 1 s not
# counted), open loop; latency from when each request was due.
run_fixed() {
  URL="http://127.0.0.1:${PORT[$1]}/" RATE=$FIXED_RATE SECONDS=$DURATION WARMUP_SECS=1 \
    CONNECTIONS=$CONNECTIONS taskset -c "$LOAD_CORES" "$BIN/fixed_rate" >"$2" 2>"$2.err"
}

# fixed_field FILE NAME: the value after NAME on fixed_rate's output line.
fixed_field() {
  awk -v name="$2" '{ for (i = 1; i < NF; i++) if ($i == name) { print $(i + 1); exit } }' "$1"
}

declare -A F_RPS=() F_P50=() F_P99=() F_P999=() F_ERRORS=() F_CPU=()
if [ "$FIXED_RATE" != 0 ]; then
  if [ ! -x "$BIN/fixed_rate" ]; then
    echo "error: no fixed_rate binary at $BIN/fixed_rate (cargo build --release -p shoal-bench --bin fixed_rate, or FIXED_RATE=0)" >&2
    exit 1
  fi
  for round in $(seq 1 "$ROUNDS"); do
    round_order "$round"
    for key in "${order[@]}"; do
      out=$TMP/fixed-${key//\//-}-$round.txt
      proxy_before=$(cpu_ticks "$PROXY_CORE")
      if ! run_fixed "$key" "$out"; then
        echo "error: fixed_rate against $key failed:" >&2
        cat "$out.err" >&2
        exit 1
      fi
      proxy_cpu=$(busy_pct "$proxy_before" "$(cpu_ticks "$PROXY_CORE")")
      F_RPS[$key]+="$(fixed_field "$out" achieved) "
      F_P50[$key]+="$(fixed_field "$out" p50_ms) "
      F_P99[$key]+="$(fixed_field "$out" p99_ms) "
      F_P999[$key]+="$(fixed_field "$out" p999_ms) "
      F_ERRORS[$key]=$((${F_ERRORS[$key]:-0} + $(fixed_field "$out" errors)))
      F_CPU[$key]+="$proxy_cpu "
      printf 'fixed %d/%d  %-22s %s  cpu: proxy %s%%\n' "$round" "$ROUNDS" "$key" "$(cat "$out")" "$proxy_cpu" >&2
    done
  done
fi

# How the gateway split the load, from its own /metrics.
for key in "${measured[@]}"; do
  [ -n "${ADMIN[$key]:-}" ] || continue
  split=$(curl -s --max-time 2 "http://127.0.0.1:${ADMIN[$key]}/metrics" |
    awk '/^shoal_gateway_upstream_requests_total\{service="app",/ {
      match($0, /instance="[^"]*"/); id = substr($0, RSTART + 10, RLENGTH - 11); n[id] += $NF }
      END { for (id in n) printf "%s %d, ", id, n[id] }' || true)
  echo "$key: requests per instance: ${split%, }" >&2
done

# --- report -------------------------------------------------------------------

row() { printf '| %-7s | %-13s | %8s | %7s | %7s | %11s | %8s | %6s | %9s | %11s | %8s |\n' "$@"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS round(s); proxy on core $PROXY_CORE, wrk and 2 app servers on core(s) $LOAD_CORES"
echo "Shoal's gateway: ${GATEWAY_BIN#"$ROOT"/}"
if [[ " $PROXIES " == *" before "* ]]; then echo "before: $BEFORE_BIN"; fi
echo
row proxy policy "req/s" "p50 ms" "p99 ms" "p99 rounds" "vs nginx" errors "proxy cpu" "cpu us/req" "load cpu"
echo "|---------|---------------|----------|---------|---------|-------------|----------|--------|-----------|-------------|----------|"
for policy in $POLICIES; do
  nginx_rps=
  if [ -n "${RPS[nginx/$policy]:-}" ]; then nginx_rps=$(median ${RPS[nginx/$policy]}); fi
  for proxy in $PROXIES; do
    key=$proxy/$policy
    if [ -n "${FAILED[$key]:-}" ]; then
      row "$proxy" "$policy" FAILED - - - - - - - -
      continue
    fi
    rps=$(median ${RPS[$key]})
    ratio=-
    if [ -n "$nginx_rps" ]; then
      ratio=$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN { printf "%.2fx", a / b }')
    fi
    row "$proxy" "$policy" "$(printf '%.0f' "$rps")" \
      "$(printf '%.2f' "$(median ${P50[$key]})")" "$(printf '%.2f' "$(median ${P99[$key]})")" \
      "$(spread ${P99[$key]})" "$ratio" "${ERRORS[$key]}" "$(printf '%.0f%%' "$(median ${PROXY_CPU[$key]})")" \
      "$(printf '%.2f' "$(median ${COST[$key]})")" "$(printf '%.0f%%' "$(median ${LOAD_CPU[$key]})")"
  done
done

if [ "$FIXED_RATE" != 0 ]; then
  frow() { printf '| %-7s | %-13s | %8s | %7s | %7s | %11s | %9s | %6s | %9s |\n' "$@"; }
  echo
  echo "At a fixed rate: $FIXED_RATE req/s, open loop (fixed_rate, $CONNECTIONS connections, ${DURATION}s after 1 s of warm-up), latency from when each request was due; median of $ROUNDS round(s)"
  echo
  frow proxy policy "req/s" "p50 ms" "p99 ms" "p99 rounds" "p99.9 ms" errors "proxy cpu"
  echo "|---------|---------------|----------|---------|---------|-------------|-----------|--------|-----------|"
  for policy in $POLICIES; do
    for proxy in $PROXIES; do
      key=$proxy/$policy
      if [ -n "${FAILED[$key]:-}" ]; then
        frow "$proxy" "$policy" FAILED - - - - - -
        continue
      fi
      frow "$proxy" "$policy" "$(printf '%.0f' "$(median ${F_RPS[$key]})")" \
        "$(printf '%.2f' "$(median ${F_P50[$key]})")" "$(printf '%.2f' "$(median ${F_P99[$key]})")" \
        "$(spread ${F_P99[$key]})" "$(printf '%.2f' "$(median ${F_P999[$key]})")" "${F_ERRORS[$key]}" \
        "$(printf '%.0f%%' "$(median ${F_CPU[$key]})")"
    done
  done
fi

# Shoal against each other proxy, round by round: the ratio of the two
# figures in each round (taken seconds apart), its median, and an interval
# for that median that assumes no distribution (bench/src/paired.rs).
if [[ " $PROXIES " == *" shoal "* ]] && [ "$ROUNDS" -ge 2 ] && [ -x "$BIN/paired" ]; then
  confidence=$("$BIN/paired" --coverage "$ROUNDS")
  prow() { printf '| %-13s | %-7s | %-26s | %-26s | %-26s |\n' "$@"; }
  echo
  echo "Shoal against each, round by round: Shoal's figure / the other's in each round; median of the $ROUNDS rounds and its ${confidence}% interval (sign test); \"higher\"/\"lower\" when the interval leaves out 1"
  echo
  prow policy against "req/s" "p99 (wrk)" "p99 (fixed rate)"
  echo "|---------------|---------|----------------------------|----------------------------|----------------------------|"
  for policy in $POLICIES; do
    [ -z "${FAILED[shoal/$policy]:-}" ] || continue
    for other in $PROXIES; do
      [ "$other" != shoal ] && [ -z "${FAILED[$other/$policy]:-}" ] || continue
      fixed=-
      if [ "$FIXED_RATE" != 0 ]; then fixed=$(paired_ratio "${F_P99[shoal/$policy]}" "${F_P99[$other/$policy]}"); fi
      prow "$policy" "$other" "$(paired_ratio "${RPS[shoal/$policy]}" "${RPS[$other/$policy]}")" \
        "$(paired_ratio "${P99[shoal/$policy]}" "${P99[$other/$policy]}")" "$fixed"
    done
  done
fi

# The TLS table (bench/gateway-tls.sh), once this run's processes are
# stopped: it starts its own, with a certificate.
tls_status=0
if [ "$TLS" = 1 ]; then
  stop_proxies
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  pids=()
  tls_proxies=
  for proxy in $PROXIES; do [ "$proxy" = before ] || tls_proxies+="$proxy "; done
  echo
  GATEWAY_BIN=$GATEWAY_BIN DURATION=$DURATION ROUNDS=$ROUNDS PROXIES=$tls_proxies PROXY_CORE=$PROXY_CORE \
    LOAD_CORES=$LOAD_CORES bench/gateway-tls.sh || tls_status=$?
fi

report_failed
exit "$tls_status"
