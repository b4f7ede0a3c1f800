#!/usr/bin/env bash
# How each proxy spreads saturating load over the two app servers: a lead
# for the least-request p99 gap in bench/gateway.sh (bench/README.md).
#
# Same setup as bench/gateway.sh (bench/lib/*.sh). Per proxy and policy,
# ROUNDS times in alternating order, wrk runs for DURATION seconds while
# both app servers' request counters (`GET /load`) are read every 100 ms.
# The table gives req/s, bench-a's share of the requests over the whole run,
# how far that share swings from one 100 ms window to the next (10th–90th
# percentile of the windows' shares), and the proxy's open connections to
# the app servers at the end of the run (`ss`, this proxy's processes only).
# The sampler runs on LOAD_CORES, beside wrk and the app servers, so req/s
# is lower than in bench/gateway.sh: compare proxies within this table.
#
#   NO_BUILD=1 bench/gateway-split.sh     # about 4 minutes
#
# Settings (environment): DURATION (10), ROUNDS (2), CONNECTIONS (64),
# PROXIES ("shoal nginx haproxy"), POLICIES ("round-robin least-request"),
# PROXY_CORE (0), LOAD_CORES (1), PGO, GATEWAY_BIN and NO_BUILD as in
# bench/gateway.sh, KEEP_TMP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-2}
CONNECTIONS=${CONNECTIONS:-64}
PROXIES=${PROXIES:-"shoal nginx haproxy"}
POLICIES=${POLICIES:-"round-robin least-request"}
PROXY_CORE=${PROXY_CORE:-0}
LOAD_CORES=${LOAD_CORES:-1}
for setting in DURATION ROUNDS CONNECTIONS; do
  [[ ${!setting} =~ ^[1-9][0-9]*$ ]] || { echo "error: $setting must be a whole number above 0, not \`${!setting}\`" >&2; exit 1; }
done

source scripts/lib.sh
source bench/lib/common.sh
source bench/lib/backends.sh
source bench/lib/proxies.sh
source bench/lib/wrk.sh
check_settings
SHOAL_PACKAGE[taskset]=util-linux
SHOAL_PACKAGE[ss]=iproute2
need_tools protoc etcd curl taskset wrk nginx haproxy ss python3

check_cores
setup_tmp shoal-split
build_release
pick_gateway
start_backends
assign_ports
for proxy in $PROXIES; do start_proxy "$proxy"; done
for proxy in $PROXIES; do
  for policy in $POLICIES; do check_proxy "$proxy/$policy"; done
done
for key in "${!FAILED[@]}"; do echo "FAILED: $key: ${FAILED[$key]}" >&2; exit 1; done

# sample OUT: "seconds a_total b_total" every 100 ms until killed.
sample() {
  while :; do
    echo "$(date +%s.%N) $(curl -fsS "http://127.0.0.1:${APP_PORTS[0]}/load") $(curl -fsS "http://127.0.0.1:${APP_PORTS[1]}/load")" |
      python3 -c 'import json,sys; t,rest=sys.stdin.read().split(" ",1); d=json.JSONDecoder(); a,i=d.raw_decode(rest); b,_=d.raw_decode(rest[i:].strip()); print(t, a["requests_total"], b["requests_total"])' >>"$1"
    sleep 0.1
  done
}

# summarise SAMPLES: "share_a swing_p10 swing_p90" (shares in %).
summarise() {
  python3 - "$1" <<'PY'
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
total_a = rows[-1][1] - rows[0][1]; total_b = rows[-1][2] - rows[0][2]
shares = []
for (t0, a0, b0), (t1, a1, b1) in zip(rows, rows[1:]):
    n = (a1 - a0) + (b1 - b0)
    if n > 0: shares.append(100 * (a1 - a0) / n)
shares.sort()
pick = lambda q: shares[min(len(shares) - 1, int(q * len(shares)))]
print(f"{100 * total_a / (total_a + total_b):.1f} {pick(0.1):.1f} {pick(0.9):.1f}")
PY
}

# backend_connections PID: established connections to the app servers held
# by PID or its children (nginx's worker).
backend_connections() {
  local pids pattern
  pids=$(
    echo "$1"
    pgrep -P "$1" || true
  )
  pattern=$(echo "$pids" | sed 's/.*/pid=&,/' | paste -sd'|')
  ss -Htnp state established "( dport = :${APP_PORTS[0]} or dport = :${APP_PORTS[1]} )" |
    grep -cE "$pattern" || true
}

declare -A SHARE=() SWING=() CONNS=() RPS=()
measured=()
for proxy in $PROXIES; do for policy in $POLICIES; do measured+=("$proxy/$policy"); done; done
for round in $(seq 1 "$ROUNDS"); do
  round_order "$round"
  for key in "${order[@]}"; do
    samples=$TMP/samples-${key//\//-}-$round.txt
    : >"$samples"
    sample "$samples" &
    sampler=$!
    # On the load cores, as wrk: its curl and python3 inherit the affinity.
    taskset -cp "$LOAD_CORES" "$sampler" >/dev/null
    taskset -c "$LOAD_CORES" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$key]}/" >"$TMP/wrk.txt"
    conns=$(backend_connections "${PID[$key]}")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    read -r rps _ <<<"$(parse_wrk "$TMP/wrk.txt")"
    read -r share p10 p90 <<<"$(summarise "$samples")"
    RPS[$key]+="$rps "; SHARE[$key]+="$share "; SWING[$key]+="$p10-$p90 "; CONNS[$key]+="$conns "
    printf 'round %d/%d  %-22s %8.0f req/s  bench-a %5.1f%% (100 ms windows %s%%)  backend connections %d\n' \
      "$round" "$ROUNDS" "$key" "$rps" "$share" "$p10-$p90" "$conns" >&2
  done
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s); Shoal's gateway: ${GATEWAY_BIN#"$ROOT"/}"
echo
echo "| proxy | policy | req/s (rounds) | bench-a share % (rounds) | 100 ms share p10-p90 % (rounds) | backend connections (rounds) |"
echo "|---|---|---|---|---|---|"
for key in "${measured[@]}"; do
  printf '| %s | %s | %s | %s | %s | %s |\n' "${key%/*}" "${key#*/}" \
    "$(printf '%.0f ' ${RPS[$key]})" "${SHARE[$key]}" "${SWING[$key]}" "${CONNS[$key]}"
done
