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

# policy_keys POLICY KEYS [ID...]: KEYS request headers, one a line, that
# spread POLICY's requests over KEYS clients: for consistent-hash `x-user:
# user-42`, `user-43`, ... (their hashes scatter them over the ring); for
# sticky the cookies pinning the IDs, in an order shuffled with a fixed
# seed (wrapping): in id order, a request would find the state of the
# instance next to the last one's, which the CPU's prefetcher fetches
# ahead, and no client sends its cookie in that order. Nothing for the
# other policies.
policy_keys() {
  local policy=$1 keys=$2 k
  shift 2
  case $policy in
    consistent-hash) for ((k = 0; k < keys; k++)); do echo "x-user: user-$((42 + k))"; done ;;
    sticky)
      printf '%s\n' "$@" | awk -v keys="$keys" '
        { id[NR] = $0 }
        END {
          srand(1)
          for (i = NR; i > 1; i--) { j = int(rand() * i) + 1; t = id[i]; id[i] = id[j]; id[j] = t }
          for (k = 0; k < keys; k++) print "Cookie: shoal-sticky-app=" id[k % NR + 1]
        }'
      ;;
  esac
}

# The Lua that sends each request with the next header of a file (`Name:
# value` a line, as `policy_keys` prints), cycling: `load_headers FILE`
# formats the lines into requests at start-up, so a request costs wrk a
# table lookup.
HEADERS_LUA='
local requests, next = {}, 0
function load_headers(file)
  for line in io.lines(file) do
    local name, value = line:match("^([^:]+):%s*(.*)$")
    requests[#requests + 1] = wrk.format(nil, nil, { [name] = value })
  end
  assert(#requests > 0, "no headers in " .. file)
end
function request()
  next = next % #requests + 1
  return requests[next]
end
'

# cycle_headers_script: the path of a wrk Lua script (written once into
# $TMP) whose requests carry the headers of the file named by its argument
# in turn (HEADERS_LUA).
cycle_headers_script() {
  local script=$TMP/cycle-headers.lua
  [ -f "$script" ] || printf '%s\nfunction init(args) load_headers(args[1]) end\n' "$HEADERS_LUA" >"$script"
  echo "$script"
}

# wrk_count URL REQUESTS CONNECTIONS OUT [HEADERS]: wrk (one thread, on
# LOAD_CORES) until REQUESTS responses have come back (a few more may
# complete while it stops: read the count with wrk_requests); at most 10
# minutes. With HEADERS, a file as `policy_keys` writes, the requests carry
# its headers in turn (HEADERS_LUA).
#
# wrk has no request count: its Lua script stops the thread and leaves a
# marker, and the Ctrl-C that follows ends wrk's timed wait early, with its
# summary (sent from here: a signal sent from inside could reach the load
# thread instead of the waiting one).
wrk_count() {
  local url=$1 requests=$2 connections=$3 out=$4 headers=${5:-} script=$TMP/stop-after.lua marker=$TMP/wrk-done pid
  [ -z "$headers" ] || script=$TMP/stop-after-headers.lua
  [ -f "$script" ] || {
    [ -z "$headers" ] || printf '%s\n' "$HEADERS_LUA"
    cat <<'LUA'
local limit, marker, done = 0, nil, 0
function init(args)
  limit, marker = tonumber(args[1]), args[2]
  if args[3] then load_headers(args[3]) end
end
function response(status, headers, body)
  done = done + 1
  if done == limit then
    wrk.thread:stop()
    io.open(marker, "w"):close()
  end
end
LUA
  } >"$script"
  rm -f "$marker"
  taskset -c "$LOAD_CORES" wrk -t1 -c"$connections" -d600s -s "$script" "$url" -- "$requests" "$marker" ${headers:+"$headers"} >"$out" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null && [ ! -e "$marker" ]; do sleep 0.01; done
  sleep 0.05
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
}
