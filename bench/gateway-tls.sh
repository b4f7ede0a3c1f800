#!/usr/bin/env bash
# Shoal's gateway against nginx and HAProxy (Debian's, OpenSSL) terminating
# TLS with the same certificate, in front of the same two app servers, and
# print the TLS table (issue 22): keep-alive HTTPS req/s and p99, new TLS
# connections per second with one request each (full handshakes, and
# resumed ones as wrk makes them), and memory per idle TLS connection;
# ratios to nginx and HAProxy from the same run. bench/gateway.sh runs it
# after its plain-HTTP tables (TLS=0 there skips it); alone:
#
#   bench/gateway-tls.sh                                  # about 5 minutes
#   DURATION=3 ROUNDS=1 IDLE_CONNECTIONS=1000 bench/gateway-tls.sh   # a quick look
#   GATEWAY_BIN=target/quick/release/gateway NO_BUILD=1 bench/gateway-tls.sh
#
# A separate script rather than more of gateway.sh: its idle-memory part
# needs fresh proxies (as gateway-scale.sh's does), its certificate and
# its tools (openssl) are its own, and it runs in a few minutes on
# its own. Setup, pinning and proxies are gateway.sh's (bench/lib/*.sh):
# etcd and two app servers on LOAD_CORES, each proxy on PROXY_CORE with one
# worker (nginx as a single process, NGINX_MASTER=off), round-robin.
#
# Certificate: one ECDSA P-256 key and certificate (SAN localhost and
# 127.0.0.1) made per run with openssl, signed by a P-256 CA made with it;
# the proxies serve the leaf alone, the clients trust the CA. Every proxy
# offers TLS 1.2 and 1.3 and keeps its defaults otherwise; clients speak
# HTTP/1.1 (ALPN http/1.1 or none).
#
# Rows, per proxy, each the median of ROUNDS rounds (proxies alternate
# within a round, reversed every other round):
# - keep-alive: wrk -t1 -cCONNECTIONS -dDURATION --latency https://localhost:PORT/
# - full handshakes: tls_connects (bench/src/bin/tls_connects.rs), TLS_CLIENTS
#   clients each making connection after connection for DURATION seconds: TCP
#   connect, a full handshake (rustls, resumption off, certificate checked),
#   one GET with Connection: close, the whole response. p99 from connect to
#   the end of the response.
# - resumed: wrk -t1 -cTLS_CLIENTS -dDURATION -H 'Connection: close': wrk
#   opens a new connection for each request and resumes the session of the
#   connection before it (PSK with X25519; seen in nginx's
#   $ssl_session_reused: all but the first of each connection's), which
#   every proxy here allows by default. (h2load --h1 does the same, but its
#   timed mode -D did not end with Connection: close.)
# - cpu us: the proxy process's CPU time (utime + stime) over the run,
#   divided by the requests or connections: its cost, fair also when the
#   load core is what limits the rate (a full handshake costs the client more
#   than the server: it verifies two signatures, the server makes one).
# - idle memory: each proxy started afresh alone, IDLE_CONNECTIONS TLS
#   connections from idle_conns (one full handshake and one GET each, then
#   idle), the proxy's VmRSS before and after, per connection.
#
# Settings (environment): DURATION (s per run, 5), ROUNDS (3), WARMUP (s per
# proxy and kind before the first round, 2), CONNECTIONS (wrk's, 64),
# TLS_CLIENTS (handshaking clients, 32), IDLE_CONNECTIONS (10000; 0 skips),
# PROXIES ("shoal nginx haproxy"), PROXY_CORE (0), LOAD_CORES (1),
# GATEWAY_BIN / PGO / NO_BUILD (which gateway, as in gateway.sh), KEEP_TMP=1
# keeps certificates, configs and logs.
#
# Exit status: 0 when every proxy was measured; 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-3}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-64}
TLS_CLIENTS=${TLS_CLIENTS:-32}
IDLE_CONNECTIONS=${IDLE_CONNECTIONS:-10000}
PROXIES=${PROXIES:-"shoal nginx haproxy"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
POLICIES=round-robin
NGINX_MASTER=off
for setting in DURATION ROUNDS WARMUP CONNECTIONS TLS_CLIENTS IDLE_CONNECTIONS; do
  [[ ${!setting} =~ ^[0-9]+$ ]] || { echo "error: $setting must be a whole number, not \`${!setting}\`" >&2; exit 1; }
done
for setting in DURATION ROUNDS CONNECTIONS TLS_CLIENTS; do
  [ "${!setting}" -ge 1 ] || { echo "error: $setting must be at least 1" >&2; exit 1; }
done

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
check_settings
if [[ " $PROXIES " == *" before "* ]]; then
  echo "error: gateway-tls.sh measures shoal, nginx and haproxy; leave \`before\` out of PROXIES" >&2
  exit 1
fi
SHOAL_PACKAGE[taskset]=util-linux
SHOAL_PACKAGE[nginx]=nginx-light
tools=(protoc etcd curl taskset wrk openssl)
for proxy in $PROXIES; do [ "$proxy" = shoal ] || tools+=("$proxy"); done
need_tools "${tools[@]}"

check_cores
setup_tmp shoal-tls
CLK_TCK=$(getconf CLK_TCK)
raise_open_files "$IDLE_CONNECTIONS"
PROXY_MAX_CONNECTIONS=$((IDLE_CONNECTIONS + 500))

build_release
if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release -p shoal-bench --bin idle_conns --bin tls_connects
fi
for binary in idle_conns tls_connects; do
  [ -x "$BIN/$binary" ] || { echo "error: no $binary at $BIN/$binary (cargo build --release -p shoal-bench --bin $binary)" >&2; exit 1; }
done
pick_gateway

# --- the certificate ------------------------------------------------------------

# One P-256 CA and a P-256 leaf for localhost and 127.0.0.1 signed by it;
# TLS_PEM is the leaf and its key in one file, for HAProxy's `crt`.
make_certificate() {
  local dir=$TMP/tls
  mkdir -p "$dir"
  {
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/ca-key.pem"
    openssl req -x509 -new -key "$dir/ca-key.pem" -subj "/CN=shoal bench CA" -days 30 -out "$dir/ca.pem"
    openssl ecparam -name prime256v1 -genkey -noout -out "$dir/key.pem"
    openssl req -new -key "$dir/key.pem" -subj "/CN=localhost" -out "$dir/cert.csr"
    printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" "basicConstraints=CA:FALSE" \
      "keyUsage=digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/ext.cnf"
    openssl x509 -req -in "$dir/cert.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca-key.pem" \
      -CAcreateserial -days 30 -extfile "$dir/ext.cnf" -out "$dir/cert.pem"
  } >"$dir/openssl.log" 2>&1 || { echo "error: openssl could not make the certificate:" >&2; cat "$dir/openssl.log" >&2; exit 1; }
  cat "$dir/cert.pem" "$dir/key.pem" >"$dir/cert+key.pem"
  CA=$dir/ca.pem
  TLS_CERT=$dir/cert.pem
  TLS_KEY=$dir/key.pem
  TLS_PEM=$dir/cert+key.pem
}
make_certificate

# check_tls KEY: the proxy answers 200 over TLS with the certificate (curl
# checks it against the CA); otherwise FAILED[KEY] says why.
check_tls() {
  local url=https://127.0.0.1:${TLS_PORT[$1]}/
  [ -z "${FAILED[$1]:-}" ] || return 0
  for _ in $(seq 1 50); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 --cacert "$CA" "$url" || true)" = 200 ] && return 0
    sleep 0.1
  done
  FAILED[$1]="did not answer 200 at $url (curl --cacert $CA $url)"
}

start_backends
assign_ports
for proxy in $PROXIES; do start_proxy "$proxy"; done
for proxy in $PROXIES; do
  check_proxy "$proxy/round-robin"
  check_tls "$proxy/round-robin"
done
measured=()
for proxy in $PROXIES; do
  key=$proxy/round-robin
  if [ -n "${FAILED[$key]:-}" ]; then echo "FAILED: $key: ${FAILED[$key]}" >&2; else measured+=("$key"); fi
done
[ ${#measured[@]} -gt 0 ] || { echo "error: no proxy answered over TLS; nothing to measure" >&2; report_failed; }

# --- measure ----------------------------------------------------------------------

# By name: wrk sends the URL's host as SNI, and an IP address there is
# illegal (RFC 6066); rustls then logs a warning for every connection.
# localhost must resolve to 127.0.0.1, where the proxies listen.
tls_url() { echo "https://localhost:${TLS_PORT[$1]}/"; }

run_keepalive() { # KEY SECONDS OUT
  taskset -c "$LOAD_CORES" wrk -t1 -c"$CONNECTIONS" -d"$2"s --latency "$(tls_url "$1")" >"$3" 2>&1 || true
}
run_full() { # KEY SECONDS OUT
  URL=$(tls_url "$1") CA=$CA CONNECTIONS=$TLS_CLIENTS SECONDS=$2 taskset -c "$LOAD_CORES" "$BIN/tls_connects" \
    >"$3" 2>"$3.err" || { echo "error: tls_connects against $1 failed:" >&2; cat "$3.err" >&2; return 1; }
}
run_resumed() { # KEY SECONDS OUT
  taskset -c "$LOAD_CORES" wrk -t1 -c"$TLS_CLIENTS" -d"$2"s --latency -H 'Connection: close' "$(tls_url "$1")" >"$3" 2>&1 || true
}

# field FILE NAME: the value after NAME on tls_connects's output line.
field() {
  awk -v name="$2" '{ for (i = 1; i < NF; i++) if ($i == name) { print $(i + 1); exit } }' "$1"
}

# last VALUES...: the last one.
last() { echo "${@: -1}"; }

# us_per TICKS COUNT: CPU microseconds per request or connection.
us_per() { awk -v t="$1" -v hz="$CLK_TCK" -v n="$2" 'BEGIN { printf "%.2f", (n > 0 ? t / hz * 1e6 / n : 0) }'; }
# cpu_pct TICKS SECONDS: the process's CPU time as a share of one core.
cpu_pct() { awk -v t="$1" -v hz="$CLK_TCK" -v s="$2" 'BEGIN { printf "%.0f", (s > 0 ? 100 * t / hz / s : 0) }'; }

declare -A KA_RPS=() KA_P99=() KA_US=() KA_ERR=() KA_CPU=() FULL_RATE=() FULL_P99=() FULL_US=() FULL_ERR=() FULL_CPU=()
declare -A RES_RATE=() RES_P99=() RES_US=() RES_ERR=() RES_CPU=() NEGOTIATED=()
echo "warm-up: ${WARMUP}s per proxy and kind" >&2
if [ "$WARMUP" -gt 0 ]; then
  for key in "${measured[@]}"; do
    run_keepalive "$key" "$WARMUP" "$TMP/warmup.txt"
    run_full "$key" "$WARMUP" "$TMP/warmup.txt" || true
  done
fi

uptime_before=$(uptime)
for round in $(seq 1 "$ROUNDS"); do
  round_order "$round"
  for key in "${order[@]}"; do
    pid=${PID[$key]}
    base=$TMP/${key//\//-}-$round

    before=$(cpu_ticks_of "$pid")
    started=$(date +%s.%N)
    run_keepalive "$key" "$DURATION" "$base-keepalive.txt"
    ticks=$(($(cpu_ticks_of "$pid") - before))
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    read -r rps _ p99 errors < <(parse_wrk "$base-keepalive.txt") || { echo "error: no wrk result for $key" >&2; exit 1; }
    KA_RPS[$key]+="$rps "
    KA_P99[$key]+="$p99 "
    KA_US[$key]+="$(us_per "$ticks" "$(wrk_requests "$base-keepalive.txt")") "
    KA_CPU[$key]+="$(cpu_pct "$ticks" "$seconds") "
    KA_ERR[$key]=$((${KA_ERR[$key]:-0} + errors))

    before=$(cpu_ticks_of "$pid")
    started=$(date +%s.%N)
    run_full "$key" "$DURATION" "$base-full.txt" || exit 1
    ticks=$(($(cpu_ticks_of "$pid") - before))
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    FULL_RATE[$key]+="$(field "$base-full.txt" per_sec) "
    FULL_P99[$key]+="$(field "$base-full.txt" p99_ms) "
    FULL_US[$key]+="$(us_per "$ticks" "$(field "$base-full.txt" connections)") "
    FULL_CPU[$key]+="$(cpu_pct "$ticks" "$seconds") "
    FULL_ERR[$key]=$((${FULL_ERR[$key]:-0} + $(field "$base-full.txt" errors)))
    NEGOTIATED[$key]="$(field "$base-full.txt" version) $(field "$base-full.txt" cipher) $(field "$base-full.txt" kx)"

    before=$(cpu_ticks_of "$pid")
    started=$(date +%s.%N)
    run_resumed "$key" "$DURATION" "$base-resumed.txt"
    ticks=$(($(cpu_ticks_of "$pid") - before))
    seconds=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')
    read -r res_rate _ res_p99 errors < <(parse_wrk "$base-resumed.txt") || { echo "error: no wrk result for $key" >&2; exit 1; }
    RES_RATE[$key]+="$res_rate "
    RES_P99[$key]+="$res_p99 "
    RES_US[$key]+="$(us_per "$ticks" "$(wrk_requests "$base-resumed.txt")") "
    RES_CPU[$key]+="$(cpu_pct "$ticks" "$seconds") "
    RES_ERR[$key]=$((${RES_ERR[$key]:-0} + errors))

    printf 'round %d/%d  %-8s keep-alive %6.0f req/s p99 %6.2f ms | full %5.0f/s p99 %6.2f ms | resumed %5.0f/s | cpu us: %s %s %s\n' \
      "$round" "$ROUNDS" "${key%/*}" "$rps" "$p99" "$(field "$base-full.txt" per_sec)" "$(field "$base-full.txt" p99_ms)" \
      "$res_rate" "$(last ${KA_US[$key]})" "$(last ${FULL_US[$key]})" "$(last ${RES_US[$key]})" >&2
  done
done
uptime_after=$(uptime)

# --- idle TLS connections -----------------------------------------------------------

declare -A IDLE_OPEN=() IDLE_BEFORE=() IDLE_AFTER=()
if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
  stop_proxies
  for key in "${measured[@]}"; do
    proxy=${key%/*}
    start_proxy "$proxy"
    if ! wait_for "$proxy" "http://127.0.0.1:${PORT[$key]}/" "${LOG[$key]}" "${PID[$key]}"; then
      FAILED[$key/idle]="did not answer 200 when started again"
      stop_proxies
      continue
    fi
    IDLE_BEFORE[$proxy]=$(rss_kb "${PID[$key]}")
    URL=$(tls_url "$key") CA=$CA CONNECTIONS=$IDLE_CONNECTIONS HOLD_SECS=300 taskset -c "$LOAD_CORES" "$BIN/idle_conns" \
      >"$TMP/idle-$proxy.out" 2>"$TMP/idle-$proxy.log" &
    idle_pid=$!
    pids+=("$idle_pid")
    while kill -0 "$idle_pid" 2>/dev/null && ! grep -qs '^open ' "$TMP/idle-$proxy.out"; do sleep 0.1; done
    if grep -q '^open ' "$TMP/idle-$proxy.out"; then
      # Let the proxy settle what the last handshakes left (buffers freed;
      # Shoal parks a quiet HTTP/1 connection 0.5-0.75 s after its request).
      sleep 2
      IDLE_AFTER[$proxy]=$(rss_kb "${PID[$key]}")
      IDLE_OPEN[$proxy]=$(awk '/^open / { print $2 }' "$TMP/idle-$proxy.out")
      echo "idle $proxy: $(cat "$TMP/idle-$proxy.out"); rss ${IDLE_BEFORE[$proxy]} -> ${IDLE_AFTER[$proxy]} KiB" >&2
    else
      FAILED[$key/idle]="idle_conns failed: $(tail -n 3 "$TMP/idle-$proxy.log")"
    fi
    kill -TERM "$idle_pid" 2>/dev/null || true
    wait "$idle_pid" 2>/dev/null || true
    stop_proxies
  done
fi

# --- report ---------------------------------------------------------------------------

med() { printf "%.${2:-0}f" "$(median $1)"; }
# ratio A B: A / B as "1.23x", or "-".
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2fx", a / b; else print "-" }'; }
row() { printf '| %-7s | %8s | %6s | %11s | %6s | %9s | %7s | %6s | %6s | %7s | %6s | %7s | %6s |\n' "$@"; }
echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "load before: ${uptime_before#*load average: }; after: ${uptime_after#*load average: }"
echo "Shoal's gateway: ${GATEWAY_BIN#"$ROOT"/}; nginx $(nginx -v 2>&1 | sed 's|.*/||'), HAProxy $(haproxy -v 2>&1 | awk 'NR == 1 { print $3 }'), $(openssl version | awk '{ print $1, $2 }')"
echo "proxy on core $PROXY_CORE (one worker), clients and 2 app servers on core(s) $LOAD_CORES; median of $ROUNDS round(s) of ${DURATION}s; ECDSA P-256 certificate"
echo "keep-alive: wrk -t1 -c$CONNECTIONS; full: tls_connects, $TLS_CLIENTS clients, no resumption; resumed: wrk -t1 -c$TLS_CLIENTS -H 'Connection: close'"
echo
row proxy "ka req/s" "p99 ms" "p99 rounds" "us/req" "full hs/s" "p99 ms" "us/hs" "cpu %" "resumed" "p99 ms" "us/conn" errors
row '' '' '' '' '' '' '' '' '' '' '' '' '' | tr ' ' '-'
for key in "${measured[@]}"; do
  row "${key%/*}" "$(med "${KA_RPS[$key]}")" "$(med "${KA_P99[$key]}" 2)" "$(spread ${KA_P99[$key]})" "$(med "${KA_US[$key]}" 2)" \
    "$(med "${FULL_RATE[$key]}")" "$(med "${FULL_P99[$key]}" 2)" "$(med "${FULL_US[$key]}" 2)" "$(med "${FULL_CPU[$key]}")" \
    "$(med "${RES_RATE[$key]}")" "$(med "${RES_P99[$key]}" 2)" "$(med "${RES_US[$key]}" 2)" "$((KA_ERR[$key] + FULL_ERR[$key] + RES_ERR[$key]))"
done
echo
echo "cpu %: the proxy's CPU time during the full-handshake runs, as a share of its core (near 100: the proxy limited the rate)."
echo "keep-alive proxy cpu %: $(for key in "${measured[@]}"; do printf '%s %s%%  ' "${key%/*}" "$(med "${KA_CPU[$key]}")"; done)"
echo "resumed proxy cpu %: $(for key in "${measured[@]}"; do printf '%s %s%%  ' "${key%/*}" "$(med "${RES_CPU[$key]}")"; done)"
for key in "${measured[@]}"; do
  echo "negotiated with ${key%/*} (tls_connects): ${NEGOTIATED[$key]}"
done

if [[ " $PROXIES " == *" shoal "* ]] && [ -z "${FAILED[shoal/round-robin]:-}" ]; then
  echo
  echo "Shoal / other, medians of this run (higher is better for rates; lower for p99, cpu and memory)"
  echo
  printf '| %-7s | %8s | %7s | %6s | %9s | %7s | %6s | %9s | %7s | %8s |\n' against "ka req/s" "ka p99" "us/req" "full hs/s" "hs p99" "us/hs" "resumed/s" "us/conn" "KB/conn"
  printf '| %-7s | %8s | %7s | %6s | %9s | %7s | %6s | %9s | %7s | %8s |\n' '' '' '' '' '' '' '' '' '' '' | tr ' ' '-'
  s=shoal/round-robin
  for key in "${measured[@]}"; do
    [ "$key" != "$s" ] || continue
    o=${key%/*}
    mem=-
    if [ -n "${IDLE_AFTER[shoal]:-}" ] && [ -n "${IDLE_AFTER[$o]:-}" ]; then
      mem=$(ratio "$(((IDLE_AFTER[shoal] - IDLE_BEFORE[shoal]) * 1000 / IDLE_OPEN[shoal]))" \
        "$(((IDLE_AFTER[$o] - IDLE_BEFORE[$o]) * 1000 / IDLE_OPEN[$o]))")
    fi
    printf '| %-7s | %8s | %7s | %6s | %9s | %7s | %6s | %9s | %7s | %8s |\n' "$o" \
      "$(ratio "$(median ${KA_RPS[$s]})" "$(median ${KA_RPS[$key]})")" "$(ratio "$(median ${KA_P99[$s]})" "$(median ${KA_P99[$key]})")" \
      "$(ratio "$(median ${KA_US[$s]})" "$(median ${KA_US[$key]})")" "$(ratio "$(median ${FULL_RATE[$s]})" "$(median ${FULL_RATE[$key]})")" \
      "$(ratio "$(median ${FULL_P99[$s]})" "$(median ${FULL_P99[$key]})")" "$(ratio "$(median ${FULL_US[$s]})" "$(median ${FULL_US[$key]})")" \
      "$(ratio "$(median ${RES_RATE[$s]})" "$(median ${RES_RATE[$key]})")" "$(ratio "$(median ${RES_US[$s]})" "$(median ${RES_US[$key]})")" "$mem"
  done
fi

if [ "$IDLE_CONNECTIONS" -gt 0 ]; then
  mb() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
  echo
  echo "$IDLE_CONNECTIONS idle TLS connections (a full handshake and one GET each), proxy RSS before and after"
  echo
  printf '| %-7s | %6s | %13s | %12s | %8s |\n' proxy open "RSS before MB" "RSS after MB" "KB/conn"
  printf '| %-7s | %6s | %13s | %12s | %8s |\n' '' '' '' '' '' | tr ' ' '-'
  for key in "${measured[@]}"; do
    proxy=${key%/*}
    if [ -z "${IDLE_AFTER[$proxy]:-}" ]; then
      printf '| %-7s | %6s | %13s | %12s | %8s |\n' "$proxy" FAILED - - -
      continue
    fi
    printf '| %-7s | %6s | %13s | %12s | %8s |\n' "$proxy" "${IDLE_OPEN[$proxy]}" "$(mb "${IDLE_BEFORE[$proxy]}")" \
      "$(mb "${IDLE_AFTER[$proxy]}")" \
      "$(awk -v a="${IDLE_AFTER[$proxy]}" -v b="${IDLE_BEFORE[$proxy]}" -v n="${IDLE_OPEN[$proxy]}" 'BEGIN { printf "%.2f", (a - b) * 1.024 / n }')"
  done
fi

report_failed
