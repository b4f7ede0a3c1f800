# Shared by the gateway benchmarks: reading wrk's output, and a wrk run
# that stops after a fixed number of requests.

# wrk_errors FILE: non-2xx/3xx responses plus socket errors (connect, read,
# write, timeout) in wrk's output.
wrk_errors() {
  awk '
    /Non-2xx or 3xx responses:/ { n += $NF }
    /Socket errors:/ { for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) { sub(",", "", $i); n += $i } }
    END { print n + 0 }' "$1"
}

# wrk_requests FILE: the requests wrk completed (its "N requests in" line).
wrk_requests() {
  awk '/ requests in / { print $1 }' "$1"
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
  errors=$(wrk_errors "$file")
  if [ -z "$rps" ] || [ -z "$p50" ] || [ -z "$p99" ]; then
    echo "error: could not read wrk's output ($file):" >&2
    cat "$file" >&2
    return 1
  fi
  echo "$rps $(to_ms "$p50") $(to_ms "$p99") $errors"
}

# policy_request_args POLICY STICKY_ID: what a request to POLICY's measured
# route (`scale_registry routes`) carries, as wrk arguments one a line: the
# hash key header for consistent-hash, the cookie pinning STICKY_ID for
# sticky, nothing for the others.
policy_request_args() {
  case $1 in
    consistent-hash) printf '%s\n' -H "x-user: user-42" ;;
    sticky) printf '%s\n' -H "Cookie: shoal-sticky-app=$2" ;;
  esac
}

# wrk_count URL REQUESTS CONNECTIONS OUT [WRK_ARG...]: wrk (one thread, on
# LOAD_CORES, with WRK_ARGs such as -H 'x-user: 42') until REQUESTS
# responses have come back (a few more may complete while it stops: read
# the count with wrk_requests); at most 10 minutes.
#
# wrk has no request count: its Lua script stops the thread and leaves a
# marker, and the Ctrl-C that follows ends wrk's timed wait early, with its
# summary (sent from here: a signal sent from inside could reach the load
# thread instead of the waiting one).
wrk_count() {
  local url=$1 requests=$2 connections=$3 out=$4 script=$TMP/stop-after.lua marker=$TMP/wrk-done pid
  shift 4
  [ -f "$script" ] || cat >"$script" <<'LUA'
local limit, marker, done = 0, nil, 0
function init(args) limit, marker = tonumber(args[1]), args[2] end
function response(status, headers, body)
  done = done + 1
  if done == limit then
    wrk.thread:stop()
    io.open(marker, "w"):close()
  end
end
LUA
  rm -f "$marker"
  taskset -c "$LOAD_CORES" wrk -t1 -c"$connections" -d600s "$@" -s "$script" "$url" -- "$requests" "$marker" >"$out" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && [ ! -e "$marker" ]; do sleep 0.01; done
  sleep 0.05
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
}
