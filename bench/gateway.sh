#!/usr/bin/env bash
# Benchmark Shoal's gateway against nginx and HAProxy, in front of the same
# two app-server instances, and print one table: req/s, p50, p99 and the
# ratio to nginx, for round-robin and least-request.
#
# Everything runs on 127.0.0.1 and is started (and stopped) by this script:
# etcd, two app servers, and each proxy in turn. Each proxy is pinned to
# PROXY_CORE with one worker; the app servers and wrk share LOAD_CORES, so
# the proxy's core should be the bottleneck (the table shows whether it was). Proxies alternate round by round, and each
# figure is the median over ROUNDS runs. See bench/README.md.
#
#   bench/gateway.sh                        # 10 s runs, 3 rounds (about 4 minutes)
#   DURATION=5 ROUNDS=1 bench/gateway.sh    # a quick look
#
# Settings (environment): DURATION (s per run, default 10), ROUNDS (3),
# WARMUP (s per proxy and policy before the first round, 3), CONNECTIONS (64),
# PROXIES ("shoal nginx haproxy"), POLICIES ("round-robin least-request"),
# PROXY_CORE (0), LOAD_CORES (1; a taskset list such as 1-3 on bigger
# machines), KEEP_TMP=1 keeps configs and logs.
#
# Exit status: 0 when every proxy was measured; 1 when one did not answer
# (its rows say FAILED and its log is printed) or something else went wrong.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# nginx and haproxy live in sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-3}
CONNECTIONS=${CONNECTIONS:-64}
PROXIES=${PROXIES:-"shoal nginx haproxy"}
POLICIES=${POLICIES:-"round-robin least-request"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}

for policy in $POLICIES; do
  case $policy in
    round-robin | least-request) ;;
    *) echo "error: POLICIES may hold round-robin and least-request, not $policy" >&2; exit 1 ;;
  esac
done

source scripts/lib.sh
SHOAL_PACKAGE[taskset]=util-linux
need_tools protoc etcd curl taskset wrk nginx haproxy

# expand_cores LIST: the core numbers of a taskset list such as `1-3,5`.
expand_cores() {
  local part parts out=()
  IFS=, read -ra parts <<<"$1"
  for part in "${parts[@]}"; do
    if [[ $part =~ ^([0-9]+)-([0-9]+)$ ]]; then
      mapfile -t -O "${#out[@]}" out < <(seq "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}")
    elif [[ $part =~ ^[0-9]+$ ]]; then
      out+=("$part")
    else
      echo "error: \`$1\` is not a core list; use e.g. 1 or 1-3,5" >&2
      return 1
    fi
  done
  echo "${out[*]}"
}

cores=$(nproc)
[[ $PROXY_CORE =~ ^[0-9]+$ ]] || { echo "error: PROXY_CORE must be one core number, not \`$PROXY_CORE\`" >&2; exit 1; }
load_cores=$(expand_cores "$LOAD_CORES")
for core in $PROXY_CORE $load_cores; do
  if [ "$core" -ge "$cores" ]; then
    echo "error: this machine has $cores core(s) (0..$((cores - 1))); PROXY_CORE=$PROXY_CORE LOAD_CORES=$LOAD_CORES asks for core $core" >&2
    exit 1
  fi
  if [ "$core" = "$PROXY_CORE" ] && [[ " $load_cores " == *" $core "* ]]; then
    echo "error: PROXY_CORE=$PROXY_CORE is also in LOAD_CORES=$LOAD_CORES; the proxy needs a core of its own" >&2
    exit 1
  fi
done

TMP=$(mktemp -d "${TMPDIR:-/tmp}/shoal-bench.XXXXXX")
pids=()
cleanup() {
  local status=$?
  trap - INT TERM EXIT
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "configs and logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- helpers -------------------------------------------------------------

used_ports=" "
# free_port VAR: set VAR to a loopback port nothing listens on and this
# script has not handed out yet (not `$(free_port)`: a subshell would forget).
free_port() {
  local candidate # not `port`: VAR may be the caller's `port`
  while :; do
    candidate=$((20000 + RANDOM % 40000))
    case "$used_ports" in *" $candidate "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      used_ports+="$candidate "
      printf -v "$1" '%s' "$candidate"
      return
    fi
  done
}

# wait_for NAME URL LOG [PID]: until URL answers 200 (10 s), else fail with
# LOG's tail; gives up at once when process PID has exited.
wait_for() {
  local name=$1 url=$2 log=$3 pid=${4:-} why="within 10 s"
  for _ in $(seq 1 100); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ] && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      why="(it exited)"
      break
    fi
    sleep 0.1
  done
  echo "error: $name did not answer 200 at $url $why; its log ($log):" >&2
  tail -n 20 "$log" >&2 || true
  return 1
}

# to_ms VALUE: wrk latency (`812.00us`, `1.23ms`, `2.01s`, `1.5m`) in ms.
to_ms() {
  awk -v v="$1" 'BEGIN {
    if (match(v, /us$/)) printf "%.3f", substr(v, 1, length(v) - 2) / 1000;
    else if (match(v, /ms$/)) printf "%.3f", substr(v, 1, length(v) - 2);
    else if (match(v, /m$/)) printf "%.3f", substr(v, 1, length(v) - 1) * 60000;
    else if (match(v, /s$/)) printf "%.3f", substr(v, 1, length(v) - 1) * 1000;
    else { print "unparsable latency: " v > "/dev/stderr"; exit 1 }
  }'
}

# parse_wrk FILE: "req_per_s p50_ms p99_ms errors" from wrk --latency output.
parse_wrk() {
  local file=$1 rps p50 p99 errors
  rps=$(awk '/^Requests\/sec:/ { print $2 }' "$file")
  p50=$(awk '$1 == "50%" { print $2 }' "$file")
  p99=$(awk '$1 == "99%" { print $2 }' "$file")
  # Non-2xx/3xx responses plus socket errors (connect, read, write, timeout).
  errors=$(awk '
    /Non-2xx or 3xx responses:/ { n += $NF }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { sub(",", "", $i); n += $i } }
    END { print n + 0 }' "$file")
  if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then
    echo "error: could not read wrk's output ($file):" >&2
    cat "$file" >&2
    return 1
  fi
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $errors"
}

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

# median VALUES...: the middle value (mean of the two middle ones for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# --- build and backends ----------------------------------------------------

echo "building release binaries…" >&2
cargo build --release -p gateway -p app-server --quiet
BIN=$ROOT/target/release

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

# --- proxies ---------------------------------------------------------------
# Every proxy is started once per policy and left running (idle ones cost
# nothing); each listens on its own port: PORT[proxy/policy].

declare -A PORT=() LOG=() PID=() ADMIN=() FAILED=()
for proxy in $PROXIES; do
  for policy in $POLICIES; do free_port "PORT[$proxy/$policy]"; done
done

start_shoal() {
  local policy admin_port
  if [ ! -x "$BIN/gateway" ]; then
    for policy in $POLICIES; do
      FAILED[shoal/$policy]="no gateway binary at $BIN/gateway (does the gateway crate have its main.rs yet?)"
    done
    return
  fi
  for policy in $POLICIES; do
    LOG[shoal/$policy]=$TMP/shoal-$policy.log
    free_port admin_port
    ADMIN[shoal/$policy]=$admin_port
    # Slow start off: nginx and HAProxy have none, and every instance is
    # "new" to a gateway that just started.
    taskset -c "$PROXY_CORE" "$BIN/gateway" --etcd "$ETCD_URL" \
      --listen "127.0.0.1:${PORT[shoal/$policy]}" --admin-listen "127.0.0.1:$admin_port" \
      --workers 1 --default-service app --default-policy "$policy" --slow-start 0s \
      --id "bench-$policy" >"${LOG[shoal/$policy]}" 2>&1 &
    pids+=($!)
    PID[shoal/$policy]=$!
  done
}

start_nginx() {
  local conf=$TMP/nginx.conf policy upstream least_conn
  mkdir -p "$TMP/nginx"
  {
    cat <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $TMP/nginx/body;
  proxy_temp_path $TMP/nginx/proxy;
  fastcgi_temp_path $TMP/nginx/fastcgi;
  uwsgi_temp_path $TMP/nginx/uwsgi;
  scgi_temp_path $TMP/nginx/scgi;
  # Keep client connections open as long as wrk does (the default closes
  # them every 1000 requests; the gateway and HAProxy do not).
  keepalive_requests 1000000;
EOF
    for policy in $POLICIES; do
      upstream=${policy//-/_}
      least_conn=
      if [ "$policy" = least-request ]; then least_conn="least_conn;"; fi
      cat <<EOF
  upstream $upstream {
    $least_conn
    server 127.0.0.1:${APP_PORTS[0]};
    server 127.0.0.1:${APP_PORTS[1]};
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${PORT[nginx/$policy]};
    location / {
      proxy_pass http://$upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
EOF
    done
    echo "}"
  } >"$conf"
  for policy in $POLICIES; do LOG[nginx/$policy]=$TMP/nginx/error.log; done
  taskset -c "$PROXY_CORE" nginx -p "$TMP/nginx" -e "$TMP/nginx/error.log" -c "$conf" \
    >"$TMP/nginx/stdout.log" 2>&1 &
  pids+=($!)
  for policy in $POLICIES; do PID[nginx/$policy]=$!; done
}

start_haproxy() {
  local conf=$TMP/haproxy.cfg policy balance
  {
    cat <<EOF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
EOF
    for policy in $POLICIES; do
      balance=roundrobin
      if [ "$policy" = least-request ]; then balance=leastconn; fi
      cat <<EOF
frontend ${policy}_in
  bind 127.0.0.1:${PORT[haproxy/$policy]}
  default_backend ${policy}_app
backend ${policy}_app
  balance $balance
  server a 127.0.0.1:${APP_PORTS[0]}
  server b 127.0.0.1:${APP_PORTS[1]}
EOF
    done
  } >"$conf"
  haproxy -c -q -f "$conf" || { echo "error: HAProxy rejects $conf" >&2; exit 1; }
  for policy in $POLICIES; do LOG[haproxy/$policy]=$TMP/haproxy.log; done
  taskset -c "$PROXY_CORE" haproxy -db -f "$conf" >"$TMP/haproxy.log" 2>&1 &
  pids+=($!)
  for policy in $POLICIES; do PID[haproxy/$policy]=$!; done
}

for proxy in $PROXIES; do
  case $proxy in
    shoal) start_shoal ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
    *) echo "error: unknown proxy $proxy in PROXIES; use shoal, nginx, haproxy" >&2; exit 1 ;;
  esac
done

# Before measuring: every proxy must answer 200 and reach both app servers.
for proxy in $PROXIES; do
  for policy in $POLICIES; do
    key=$proxy/$policy
    [ -n "${FAILED[$key]:-}" ] && continue
    url=http://127.0.0.1:${PORT[$key]}/
    if ! wait_for "$proxy ($policy)" "$url" "${LOG[$key]}" "${PID[$key]}"; then
      FAILED[$key]="did not answer 200 at $url"
      continue
    fi
    # Round-robin must alternate. Least-request may rightly keep sending
    # one-at-a-time requests to the instance it has measured as fast (P2C
    # over peak-EWMA); the per-instance split under load is printed below.
    [ "$policy" = round-robin ] || continue
    seen=$(for _ in $(seq 1 20); do curl -s --max-time 2 "$url" || true; echo; done |
      { grep -o 'instance bench-[ab]' || true; } | sort -u | wc -l)
    if [ "$seen" -ne 2 ]; then
      echo "error: $proxy ($policy) answered, but not from both app servers in 20 requests" >&2
      FAILED[$key]="did not reach both app servers"
    fi
  done
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

echo "warm-up: ${WARMUP}s per proxy and policy" >&2
for key in "${measured[@]}"; do run_wrk "$key" "$WARMUP" "$TMP/warmup.txt"; done

for round in $(seq 1 "$ROUNDS"); do
  # Alternate the order too, so no proxy always runs first or last.
  order=("${measured[@]}")
  if [ $((round % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#measured[@]} - 1; i >= 0; i--)); do order+=("${measured[$i]}"); done
  fi
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

row() { printf '| %-7s | %-13s | %8s | %7s | %7s | %8s | %6s | %9s | %11s | %8s |\n' "$@"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, median of $ROUNDS round(s); proxy on core $PROXY_CORE, wrk and 2 app servers on core(s) $LOAD_CORES"
echo
row proxy policy "req/s" "p50 ms" "p99 ms" "vs nginx" errors "proxy cpu" "cpu us/req" "load cpu"
echo "|---------|---------------|----------|---------|---------|----------|--------|-----------|-------------|----------|"
for policy in $POLICIES; do
  nginx_rps=
  if [ -n "${RPS[nginx/$policy]:-}" ]; then nginx_rps=$(median ${RPS[nginx/$policy]}); fi
  for proxy in $PROXIES; do
    key=$proxy/$policy
    if [ -n "${FAILED[$key]:-}" ]; then
      row "$proxy" "$policy" FAILED - - - - - - -
      continue
    fi
    rps=$(median ${RPS[$key]})
    ratio=-
    if [ -n "$nginx_rps" ]; then
      ratio=$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN { printf "%.2fx", a / b }')
    fi
    row "$proxy" "$policy" "$(printf '%.0f' "$rps")" \
      "$(printf '%.2f' "$(median ${P50[$key]})")" "$(printf '%.2f' "$(median ${P99[$key]})")" \
      "$ratio" "${ERRORS[$key]}" "$(printf '%.0f%%' "$(median ${PROXY_CPU[$key]})")" \
      "$(printf '%.2f' "$(median ${COST[$key]})")" "$(printf '%.0f%%' "$(median ${LOAD_CPU[$key]})")"
  done
done

if [ ${#FAILED[@]} -gt 0 ]; then
  echo
  for key in "${!FAILED[@]}"; do
    echo "FAILED: $key: ${FAILED[$key]}" >&2
    if [ -n "${LOG[$key]:-}" ] && [ -s "${LOG[$key]}" ]; then
      echo "--- last lines of ${LOG[$key]}:" >&2
      tail -n 10 "${LOG[$key]}" >&2
    fi
  done
  exit 1
fi
