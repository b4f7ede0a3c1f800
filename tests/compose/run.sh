#!/usr/bin/env bash
# The compose check: compose.yaml on this machine's Docker engine, end to end.
#
# Builds the images offline (docker/build-images.sh shoal etcd), brings the
# stack up with tests/compose/offline.yaml (which changes only where images
# come from) under a unique project name, registry prefix, network and host
# ports, so that it never touches another stack on the same engine; then:
#
#   1 up          etcd, gateway and autoscaler healthy; the autoscaler has
#                 created the two app servers; both ready behind the gateway
#   2 traffic     requests through the gateway: all 200, spread over both
#   3 scale-out   16 clients of CPU-bound /work: the autoscaler adds
#                 containers (Docker API) that turn ready behind the gateway
#   4 scale-in    `autoscaler scale app 2` (docker compose exec): the extra
#                 ones drain and are removed
#   5 kill        `docker kill` of an app server: replaced by a new, ready one
#   6 disconnect  `docker network disconnect` of an app server: the gateway
#                 drops it, the autoscaler replaces it and removes it
#   7 adopt       the autoscaler is killed (SIGKILL) and started again: it adopts
#                 the running app servers (none started or stopped) and
#                 scales them (to 3)
#   8 down        `docker compose down`: no container of the project, none
#                 labelled shoal.managed=true with our prefix, no network
#
# Steps 5 and 6 run under steady background traffic; every request of the
# check must answer 200. Exits non-zero on any failure, after printing the
# logs and tearing everything down; the last line is a one-line summary.
# Without a Docker engine or compose it skips (exit 0), except under CI=true,
# where that is a failure.
#
# Usage: tests/compose/run.sh [--no-build]   (--no-build: use the release
# binaries already built; the images are still imported)
# Env: CARGO_TARGET_DIR (as build-images.sh), CI.
set -euo pipefail
cd "$(dirname "$0")/../.."

started=$(date +%s)
build_flag=()
for arg in "$@"; do
  case $arg in
    --no-build) build_flag=(--no-build) ;;
    *) echo "run.sh: unknown argument '$arg'" >&2; exit 2 ;;
  esac
done

unavailable() {
  if [ "${CI:-}" = true ]; then
    echo "compose check: FAILED — $* (CI=true: the check must run; install Docker and compose)" >&2
    exit 1
  fi
  echo "compose check: skipped — $*"
  exit 0
}
command -v docker >/dev/null 2>&1 || unavailable "docker is not installed"
docker info >/dev/null 2>&1 || unavailable "no Docker engine reachable (is dockerd running?)"
if docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  unavailable "neither \`docker compose\` nor \`docker-compose\` is installed"
fi
for tool in curl jq python3; do
  command -v "$tool" >/dev/null 2>&1 || { echo "compose check: FAILED — $tool is missing" >&2; exit 1; }
done

run_id=$(date +%s)-$$
project=shoal-check-$run_id
export SHOAL_PREFIX=/shoal-check-$run_id
export SHOAL_NETWORK=shoal-check-$run_id
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export SHOAL_GATEWAY_PORT=$(free_port)
export SHOAL_ADMIN_PORT=$(free_port)
export SHOAL_ADMIN_TOKEN=compose-check-token-$run_id # 16 characters at least
gateway=http://127.0.0.1:$SHOAL_GATEWAY_PORT
admin=http://127.0.0.1:$SHOAL_ADMIN_PORT

dc() { "${compose[@]}" -p "$project" -f compose.yaml -f tests/compose/offline.yaml "$@"; }
log() { printf '[%4ds] %s\n' $(($(date +%s) - started)) "$*"; }

steps=0
failed_requests=0
total_requests=0
ok=0
codes=$(mktemp)
cut=$(mktemp)
teardown() {
  local code=$?
  trap - EXIT INT TERM
  load_stop
  if [ $ok = 0 ]; then
    echo "---- compose ps" >&2
    dc ps >&2 2>&1 || true
    echo "---- compose logs (last 60 lines per service)" >&2
    dc logs --no-color --tail 60 >&2 2>&1 || true
    for c in $(docker ps -aq --filter label=shoal.managed=true --filter "label=shoal.prefix=$SHOAL_PREFIX"); do
      echo "---- app server $(docker inspect --format '{{.Name}} {{.State.Status}} exit={{.State.ExitCode}}' "$c")" >&2
      docker logs --tail 20 "$c" >&2 2>&1 || true
    done
    dc down --remove-orphans --timeout 20 >/dev/null 2>&1 || true
    local left
    left=$(docker ps -aq --filter label=shoal.managed=true --filter "label=shoal.prefix=$SHOAL_PREFIX")
    [ -n "$left" ] && docker rm -f $left >/dev/null 2>&1
    docker network rm "$SHOAL_NETWORK" >/dev/null 2>&1 || true
    echo "compose check: FAILED at step $((steps + 1)) — $failed_requests failed requests, $(($(date +%s) - started)) s" >&2
    [ "$code" = 0 ] && code=1
  fi
  rm -f "$codes" "$cut"
  exit "$code"
}
trap teardown EXIT
trap 'exit 130' INT TERM

fail() { echo "FAIL: $*" >&2; exit 1; }

# wait_until SECONDS WHAT COMMAND...: poll COMMAND every 0.25 s.
wait_until() {
  local limit=$1 what=$2 deadline
  shift 2
  deadline=$(($(date +%s) + limit))
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$what: not within ${limit}s"
    sleep 0.25
  done
}

now_ms() { date +%s%3N; }
managed() { docker ps -q --filter label=shoal.managed=true --filter "label=shoal.prefix=$SHOAL_PREFIX" "$@" | sort; }
managed_count() { managed | grep -c . || true; }
label_id() { docker inspect --format '{{index .Config.Labels "shoal.id"}}' "$1"; }
service_json() { curl -fsS --max-time 3 "$admin/api/v1/services/app"; }
# Ids of the instances the gateway would route to (ready, not ejected).
routable_ids() { service_json | jq -r '.instances[] | select(.state == "ready") | .id' | sort; }
# The cluster is at N: N running managed containers, and exactly those N
# instances routable in the gateway.
at_size() {
  local n=$1 ids
  [ "$(managed_count)" = "$n" ] || return 1
  ids=$(for c in $(managed); do label_id "$c"; done | sort)
  [ "$(routable_ids)" = "$ids" ]
}
is_routable() { routable_ids | grep -qx "$1"; }
not_routable() { ! routable_ids | grep -qx "$1"; }
is_healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$1" 2>/dev/null)" = healthy ]; }
scale() { dc exec -T autoscaler autoscaler scale app "$1" >/dev/null; }

# request N PARALLEL [PATH]: N GETs of PATH (default /) through the
# gateway; appends their status codes to $codes.
request() {
  seq "$1" | xargs -P "$2" -I{} curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' "$gateway${3:-/}" >>"$codes" || true
}
count_requests() {
  total_requests=$(grep -c . "$codes" || true)
  failed_requests=$(grep -vc '^200$' "$codes" || true)
}
# load_start [FILE] [CLIENTS] [PATH] [PAUSE]: background traffic while
# something happens: CLIENTS (default 1) sequential clients GETting PATH
# (default /) with PAUSE seconds (default 0.05) between requests; status
# codes go to FILE (default $codes). load_stop ends it.
load_pids=()
load_start() {
  local out=${1:-$codes} clients=${2:-1} path=${3:-/} pause=${4:-0.05} i
  for i in $(seq "$clients"); do
    (
      c=
      trap 'kill $c 2>/dev/null; exit 0' TERM
      while :; do
        curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' "$gateway$path" >>"$out" &
        c=$!
        wait $c || true
        sleep "$pause"
      done
    ) &
    load_pids+=($!)
  done
}
load_stop() {
  [ ${#load_pids[@]} -gt 0 ] || return 0
  kill "${load_pids[@]}" 2>/dev/null || true
  wait "${load_pids[@]}" 2>/dev/null || true
  load_pids=()
}
step_done() {
  count_requests
  [ "$failed_requests" = 0 ] || fail "$failed_requests of $total_requests requests did not answer 200: $(sort "$codes" | uniq -c | tr '\n' ' ')"
  steps=$((steps + 1))
  log "step $steps ok: $*"
}

log "building the images offline (docker/build-images.sh shoal etcd)"
docker/build-images.sh "${build_flag[@]}" shoal etcd | sed 's/^/  /'
log "project $project, prefix $SHOAL_PREFIX, gateway $gateway, admin $admin, ${compose[*]}"

# 1 up
t0=$(now_ms)
dc up -d --no-build 2>&1 | sed 's/^/  /'
wait_until 90 "two app servers ready behind the gateway" at_size 2
step_done "up: 2 app servers created by the autoscaler, ready behind the gateway ($(( ($(now_ms) - t0) / 1000 )) s)"

# 2 traffic
request 200 8 "/work?iterations=300000"
# Least-request concentrates sequential traffic on the fastest instance, but
# requests that overlap spread over both (the admin API counts each one's).
served=$(service_json | jq '[.instances[] | select(.requests_total > 0)] | length')
[ "$served" -ge 2 ] || fail "requests went to $served instance(s), not both"
step_done "traffic: 200 requests, all 200, over $served instances"

# 2b the key-value store through the route the `routes` one-shot wrote
kv_put=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT --data-binary 'compose' "$gateway/kv/compose-check")
kv_get=$(curl -s --max-time 10 "$gateway/kv/compose-check")
[ "$kv_put" = 201 ] && [ "$kv_get" = compose ] || fail "PUT /kv/compose-check answered $kv_put, then GET answered \`$kv_get\`; see: docker compose logs routes"
step_done "kv: PUT then GET /kv/compose-check through the gateway's kv route"

# 3 scale-out under load: 16 clients keep CPU-bound /work requests (about
# 40 ms each) in flight, 8 per instance; the autoscaler reads the gateway's
# stats over the compose network and, against a target of 4, adds containers.
before=$(managed)
t0=$(now_ms)
load_start "$codes" 16 "/work?iterations=30000000" 0
wait_until 60 "the autoscaler to add app servers under load" sh -c "[ \$(docker ps -q --filter label=shoal.managed=true --filter label=shoal.prefix=$SHOAL_PREFIX | wc -l) -ge 4 ]"
load_stop
out_s=$(( ($(now_ms) - t0) / 1000 ))
grown=$(managed_count)
new=$(comm -13 <(echo "$before") <(managed) | grep -c . || true)
[ "$new" -ge 2 ] || fail "scale-out created $new containers"
wait_until 60 "the new app servers to be ready" at_size "$grown"
step_done "scale-out: load (16 clients) → 2 → $grown containers created through the Docker API in $out_s s, all ready"

# 4 scale-in, by hand (and under light traffic: draining loses nothing):
# `autoscaler scale app 2` pins the service at 2, which keeps the next steps'
# counts steady.
load_start
t0=$(now_ms)
scale 2
wait_until 60 "back to two app servers" at_size 2
load_stop
step_done "scale-in: autoscaler scale app 2: $grown → 2, drained and removed in $(( ($(now_ms) - t0) / 1000 )) s"

# 5 kill
load_start
victim=$(managed | head -n1)
victim_id=$(label_id "$victim")
before=$(managed)
t0=$(now_ms)
docker kill "$victim" >/dev/null
replacement=
deadline=$(($(date +%s) + 60))
while [ -z "$replacement" ]; do
  replacement=$(comm -13 <(echo "$before") <(managed) | head -n1)
  [ -n "$replacement" ] || { [ "$(date +%s)" -lt "$deadline" ] || fail "no replacement container within 60 s"; sleep 0.1; }
done
replacement_id=$(label_id "$replacement")
wait_until 60 "the replacement to be ready" is_routable "$replacement_id"
kill_ms=$(($(now_ms) - t0))
wait_until 30 "the killed container to be removed and the gateway at two" at_size 2
not_routable "$victim_id" || fail "the killed instance is still routable"
wait_until 30 "the replacement's Docker healthcheck" is_healthy "$replacement"
load_stop
kill_s=$(awk -v ms="$kill_ms" 'BEGIN { printf "%.1f", ms / 1000 }')
step_done "kill: docker kill → ready replacement in $kill_s s (Docker health: healthy)"

# 6 disconnect. A request already sent to the instance when it is cut off
# gets no answer (no reset either) and is not retried: it waits for the
# gateway's response timeout. Those few are counted apart ("cut off"); any
# other failure fails the check.
load_start "$cut"
victim=$(managed | head -n1)
victim_id=$(label_id "$victim")
t0=$(now_ms)
docker network disconnect "$SHOAL_NETWORK" "$victim"
wait_until 30 "the gateway to stop routing to the cut-off app server" not_routable "$victim_id"
eject_s=$(awk -v ms="$(($(now_ms) - t0))" 'BEGIN { printf "%.1f", ms / 1000 }')
wait_until 90 "the cut-off app server to be stopped and removed" \
  sh -c "[ -z \"\$(docker ps -aq --filter id=$victim)\" ]"
wait_until 60 "two app servers again" at_size 2
load_stop
cut_off=$(grep -Evc '^200$' "$cut" || true)
grep -Ev '^(200|000|504)$' "$cut" >/dev/null && fail "requests failed during the partition: $(sort "$cut" | uniq -c | tr '\n' ' ')"
[ "$cut_off" -le 4 ] || fail "$cut_off requests cut off by the partition (more than were in flight to it): $(sort "$cut" | uniq -c | tr '\n' ' ')"
grep '^200$' "$cut" >>"$codes" || true
request 100 4
step_done "disconnect: out of the gateway in $eject_s s, replaced and removed in $(( ($(now_ms) - t0) / 1000 )) s ($cut_off requests in flight to it cut off)"

# 7 adopt: a controller that dies without stopping anything (SIGKILL) and
# comes back adopts the containers by label.
before=$(managed)
autoscaler=$(dc ps -q autoscaler)
since=$(date -u +%Y-%m-%dT%H:%M:%SZ)
docker kill "$autoscaler" >/dev/null
docker start "$autoscaler" >/dev/null
wait_until 30 "the restarted autoscaler to lead" sh -c "docker logs --since $since $autoscaler 2>&1 | grep -q 'leading:'"
sleep 3 # a few ticks of the new leader: it must neither start nor stop anything
[ "$(managed)" = "$before" ] || fail "the restarted autoscaler changed the app servers instead of adopting them"
scale 3
wait_until 60 "three app servers after adoption" at_size 3
[ -z "$(comm -23 <(echo "$before") <(managed))" ] || fail "adopted app servers were replaced"
step_done "adopt: the restarted autoscaler kept the 2 app servers and scaled them to 3"

# 8 down
t0=$(now_ms)
dc down --timeout 45 2>&1 | sed 's/^/  /'
left=$(docker ps -aq --filter "label=com.docker.compose.project=$project")
[ -z "$left" ] || fail "containers of the project left: $left"
left=$(docker ps -aq --filter label=shoal.managed=true --filter "label=shoal.prefix=$SHOAL_PREFIX")
[ -z "$left" ] || fail "app-server containers left: $left (fallback: docker rm -f \$(docker ps -aq --filter label=shoal.managed=true))"
! docker network inspect "$SHOAL_NETWORK" >/dev/null 2>&1 || fail "network $SHOAL_NETWORK left"
step_done "down: nothing left (no container, no network) in $(( ($(now_ms) - t0) / 1000 )) s"

ok=1
echo "compose check: ok — $steps steps, $failed_requests failed of $total_requests requests (+$cut_off cut off by the partition), docker kill → ready replacement $kill_s s, $(($(date +%s) - started)) s"
