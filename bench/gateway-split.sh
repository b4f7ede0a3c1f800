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
# For Shoal it also reads the gateway's view of the two instances from its
# admin API at each sample: bench-a's share of the requests in flight
# (10th–90th percentile) and how far apart their peak-EWMA latencies are
# (larger over smaller, median and 90th percentile), the two factors of
# least-request's cost.
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

# sample OUT [ADMIN_PORT]: "seconds a_total b_total" every 100 ms until
# killed; with Shoal's admin port, also "a_in_flight b_in_flight
# a_peak_ewma_ms b_peak_ewma_ms" as the gateway sees the two instances.
# One python3 process for the whole run, so that a sample costs three HTTP
# requests and not three process starts on the busy load core. It runs on
# the load cores, beside wrk, and replaces the calling subshell (exec) so
# that killing $! stops it.
sample() {
  exec taskset -c "$LOAD_CORES" python3 - "$1" "${APP_PORTS[0]}" "${APP_PORTS[1]}" "${2:-}" <<'PY'
import json, sys, time, urllib.request
out, port_a, port_b, admin = sys.argv[1:]
get = lambda port, path: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5))
with open(out, "a") as f:
    while True:
        started = time.time()
        row = [started, get(port_a, "/load")["requests_total"], get(port_b, "/load")["requests_total"]]
        if admin:
            by_id = {i["id"]: i for i in get(admin, "/api/v1/services/app")["instances"]}
            pair = [by_id["bench-a"], by_id["bench-b"]]
            row += [i["in_flight"] for i in pair] + [i["peak_ewma_ms"] for i in pair]
        print(*row, file=f, flush=True)
        time.sleep(max(0.0, 0.1 - (time.time() - started)))
PY
}

# summarise SAMPLES: "share_a swing_p10 swing_p90 in_flight ewma" (shares
# in %); for Shoal, in_flight is the 10th-90th percentile of bench-a's share
# of the requests in flight and ewma the median and 90th percentile of the
# larger peak-EWMA over the smaller, else both are "-".
summarise() {
  python3 - "$1" <<'PY'
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
pick = lambda xs, q: sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]
total_a = rows[-1][1] - rows[0][1]; total_b = rows[-1][2] - rows[0][2]
shares = []
for r0, r1 in zip(rows, rows[1:]):
    n = (r1[1] - r0[1]) + (r1[2] - r0[2])
    if n > 0: shares.append(100 * (r1[1] - r0[1]) / n)
out = [f"{100 * total_a / (total_a + total_b):.1f}", f"{pick(shares, 0.1):.1f}", f"{pick(shares, 0.9):.1f}"]
gateway = [r[3:] for r in rows if len(r) == 7]
in_flight = [100 * a / (a + b) for a, b, _, _ in gateway if a + b > 0]
ratios = [max(x, y) / min(x, y) for _, _, x, y in gateway if min(x, y) > 0]
out.append(f"{pick(in_flight, 0.1):.0f}-{pick(in_flight, 0.9):.0f}" if in_flight else "-")
out.append(f"{pick(ratios, 0.5):.2f}/{pick(ratios, 0.9):.2f}" if ratios else "-")
print(*out)
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

declare -A SHARE=() SWING=() CONNS=() RPS=() IN_FLIGHT=() EWMA=()
measured=()
for proxy in $PROXIES; do for policy in $POLICIES; do measured+=("$proxy/$policy"); done; done
for round in $(seq 1 "$ROUNDS"); do
  round_order "$round"
  for key in "${order[@]}"; do
    samples=$TMP/samples-${key//\//-}-$round.txt
    : >"$samples"
    admin=""
    if [[ $key == shoal/* ]]; then admin=${ADMIN[$key]}; fi
    sample "$samples" $admin &
    sampler=$!
    taskset -c "$LOAD_CORES" wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:${PORT[$key]}/" >"$TMP/wrk.txt"
    conns=$(backend_connections "${PID[$key]}")
    kill "$sampler"; wait "$sampler" 2>/dev/null || true
    read -r rps _ <<<"$(parse_wrk "$TMP/wrk.txt")"
    read -r share p10 p90 in_flight ewma <<<"$(summarise "$samples")"
    RPS[$key]+="$rps "; SHARE[$key]+="$share "; SWING[$key]+="$p10-$p90 "; CONNS[$key]+="$conns "
    IN_FLIGHT[$key]+="$in_flight "; EWMA[$key]+="$ewma "
    printf 'round %d/%d  %-22s %8.0f req/s  bench-a %5.1f%% (100 ms windows %s%%, in flight %s%%, EWMA ratio %s)  backend connections %d\n' \
      "$round" "$ROUNDS" "$key" "$rps" "$share" "$p10-$p90" "$in_flight" "$ewma" "$conns" >&2
  done
done

echo
echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores: $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s, $ROUNDS round(s); Shoal's gateway: ${GATEWAY_BIN#"$ROOT"/}"
echo
echo "| proxy | policy | req/s (rounds) | bench-a share % (rounds) | 100 ms share p10-p90 % (rounds) | in-flight share p10-p90 % (rounds) | peak-EWMA ratio p50/p90 (rounds) | backend connections (rounds) |"
echo "|---|---|---|---|---|---|---|---|"
for key in "${measured[@]}"; do
  printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' "${key%/*}" "${key#*/}" \
    "$(printf '%.0f ' ${RPS[$key]})" "${SHARE[$key]}" "${SWING[$key]}" "${IN_FLIGHT[$key]}" "${EWMA[$key]}" "${CONNS[$key]}"
done
