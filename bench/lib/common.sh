# Shared by the gateway benchmarks: cores, ports, the temporary directory
# and the processes to stop on exit, waiting for a URL, a process's CPU time
# and memory.
# Source it from the repository root after `set -euo pipefail`.

# nginx and haproxy live in sbin, which is not on every user's PATH.
export PATH="$PATH:/usr/sbin:/sbin"

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

# check_cores: PROXY_CORE is one existing core, LOAD_CORES existing cores
# without it; sets load_cores (the expanded list).
check_cores() {
  local cores core
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
}

# setup_tmp NAME: TMP, a fresh temporary directory, and `pids`, the processes
# stopped on exit (also on Ctrl-C); KEEP_TMP=1 keeps the directory.
setup_tmp() {
  TMP=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
  pids=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}

# forget_pids PID...: stopped already, so not stopped again on exit (the ids
# may be reused by then).
forget_pids() {
  local pid gone kept=()
  for pid in "${pids[@]}"; do
    for gone in "$@"; do [ "$pid" != "$gone" ] || continue 2; done
    kept+=("$pid")
  done
  pids=("${kept[@]}")
}

cleanup() {
  local status=$?
  trap - INT TERM EXIT
  # CONT too: a process held with SIGSTOP handles its TERM only once resumed.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null && kill -CONT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ "${KEEP_TMP:-0}" = 1 ]; then echo "configs and logs kept in $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$status"
}

used_ports=" "
# Ports are picked below the kernel's ephemeral range: a port in it can be
# taken by an outgoing connection (wrk, the proxies' upstream connections)
# between the check below and the bind ("Address already in use").
ephemeral_low=32768
read -r ephemeral_low _ </proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || true
[ "$ephemeral_low" -gt 12000 ] 2>/dev/null || ephemeral_low=32768
# free_port VAR: set VAR to a loopback port nothing listens on and this
# script has not handed out yet (not `$(free_port)`: a subshell would forget).
free_port() {
  local candidate # not `port`: VAR may be the caller's `port`
  while :; do
    candidate=$((10000 + RANDOM % (ephemeral_low - 10000)))
    case "$used_ports" in *" $candidate "*) continue ;; esac
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
      used_ports+="$candidate "
      printf -v "$1" '%s' "$candidate"
      return
    fi
  done
}

# wait_for NAME URL LOG [PID] [SECONDS]: until URL answers 200 (default 10 s),
# else fail with LOG's tail; gives up at once when process PID has exited.
wait_for() {
  local name=$1 url=$2 log=$3 pid=${4:-} seconds=${5:-10}
  local why="within $seconds s"
  for _ in $(seq 1 $((seconds * 10))); do
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

# callgrind_dump PID LABEL PREFIX: have the program running under callgrind
# as PID write what it counted since `callgrind_control -z` (the dump
# labelled LABEL), and print the dump's path: the newest PREFIX.PID.out.*
# (PREFIX as given to `--callgrind-out-file=PREFIX.%p.out`), once it holds
# its totals (up to 5 s).
callgrind_dump() {
  local pid=$1 label=$2 prefix=$3 dump=""
  callgrind_control -d "$label" "$pid" >/dev/null 2>&1
  for _ in $(seq 1 50); do
    dump=$(ls -t "$prefix.$pid".out.* 2>/dev/null | head -n 1)
    if [ -n "$dump" ] && grep -qE '^(summary|totals):' "$dump"; then
      echo "$dump"
      return 0
    fi
    sleep 0.1
  done
  echo "error: no complete callgrind dump at $prefix.$pid.out.*" >&2
  return 1
}

# callgrind_instructions DUMP: the instructions a callgrind dump counted.
callgrind_instructions() {
  awk '/^(summary|totals):/ { print $2; exit }' "$1"
}

# spread VALUES...: "min-max" with two decimals (a median's rounds, to show
# how far apart they were).
spread() {
  printf '%s\n' "$@" | sort -g | awk 'NR == 1 { lo = $1 } { hi = $1 } END { printf "%.2f-%.2f", lo, hi }'
}

# paired_ratio A_VALUES B_VALUES: two figures' rounds compared round by
# round (`paired`, bench/src/paired.rs: A/B in each round, the median of
# those ratios and an interval for it that assumes no distribution), as
# "1.02x (0.95-1.10)", with "higher" or "lower" when the interval leaves
# out 1; "-" when `paired` cannot tell (fewer than 2 rounds, a zero).
paired_ratio() {
  local line
  line=$("$BIN/paired" "$1" "$2") || { echo "-"; return; }
  awk -v line="$line" 'BEGIN { n = split(line, f, " "); for (i = 1; i < n; i += 2) v[f[i]] = f[i + 1]
    printf "%.2fx (%.2f-%.2f)%s", v["median"], v["low"], v["high"],
      (v["verdict"] == "not-told-apart" ? "" : " " v["verdict"]) }'
}

# round_order ROUND: set `order` to the keys of `measured`, reversed on even
# rounds, so that no proxy always runs first or last.
round_order() {
  local i
  order=("${measured[@]}")
  if [ $(($1 % 2)) -eq 0 ]; then
    order=()
    for ((i = ${#measured[@]} - 1; i >= 0; i--)); do order+=("${measured[$i]}"); done
  fi
}

# median VALUES...: the middle value (mean of the two middle ones for an even count).
median() {
  printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END {
    if (NR % 2) printf "%.3f", v[(NR + 1) / 2]; else printf "%.3f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# user_sys_ticks PID: "USER SYSTEM", the clock ticks PID (all its threads)
# has spent so far in user space and in the kernel; "0 0" when it is gone.
user_sys_ticks() {
  # Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
  sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12, $13 }' | grep . || echo "0 0"
}

# cpu_ticks_of PID: user + system clock ticks of PID and its children so far.
cpu_ticks_of() {
  local total=0 pid user system
  for pid in "$1" $(pgrep -P "$1" || true); do
    read -r user system < <(user_sys_ticks "$pid")
    total=$((total + user + system))
  done
  echo "$total"
}

# rss_kb PID: the resident memory of PID (VmRSS), in KiB.
rss_kb() {
  awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# raise_open_files CONNECTIONS: raise this shell's open-file limit to its
# hard limit, since every idle connection is a file descriptor, in the
# client and in the proxy; exit with the fix when that is still too few for
# CONNECTIONS (IDLE_CONNECTIONS) and some to spare.
raise_open_files() {
  ulimit -n "$(ulimit -Hn)"
  if [ "$1" -gt 0 ] && [ "$(ulimit -n)" -lt $(($1 + 500)) ]; then
    echo "error: IDLE_CONNECTIONS=$1 needs more open files than this shell may have ($(ulimit -n)); lower it or raise the hard limit" >&2
    exit 1
  fi
}
