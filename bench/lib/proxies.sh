# Shared by the gateway benchmarks: start Shoal's gateway, nginx and HAProxy
# pinned to PROXY_CORE with one worker each, doing the same job in front of
# the app servers (see bench/README.md, "Same work for everyone"), and check
# that they answer.
#
# Needs bench/lib/common.sh and bench/lib/backends.sh (BIN, ETCD_URL,
# APP_PORTS). Every proxy listens on its own port per policy: PORT[proxy/policy]
# (see assign_ports); LOG, PID and ADMIN are filled in by the start functions,
# FAILED[proxy/policy] says why one cannot be measured. stop_proxies fills
# STOP_STATUS.
#
# Settings: PROXY_WRAPPER (array, empty by default) is put before each
# proxy's command, e.g. (valgrind --tool=callgrind); NGINX_MASTER=off runs
# nginx as a single process (no master), which a wrapper needs to see the
# worker. PROXY_MAX_CONNECTIONS (default 4096) is nginx's
# worker_connections and HAProxy's maxconn. UPSTREAM_SERVERS (default 2)
# is how many `server` lines nginx's and HAProxy's upstreams list, their
# addresses taken in turn from the two app servers (bench/gateway-scale.sh
# measures them with 10,000, as it does the gateway with 10,000 registered
# instances). GATEWAY_BIN (default $BIN/gateway) runs another build of the
# gateway. The proxy `before` is Shoal's gateway again, from BEFORE_BIN (a
# copy of an earlier build): with PROXIES="shoal before", one run measures
# a change against what it changes, round by round.
#
# TLS: with TLS_CERT and TLS_KEY set (a PEM certificate chain and its key;
# TLS_PEM, the two in one file, for HAProxy), every proxy also terminates
# TLS 1.2 and 1.3 with them on TLS_PORT[proxy/policy] (assign_ports picks
# it), in front of the same upstreams: the gateway's --tls-listen, nginx's
# `listen ... ssl`, HAProxy's `bind ... ssl crt`, each with its own defaults
# otherwise (session resumption included). Without TLS_CERT nothing changes.

declare -A PORT=() TLS_PORT=() LOG=() PID=() ADMIN=() FAILED=() STOP_STATUS=()
PROXY_WRAPPER=(${PROXY_WRAPPER[@]+"${PROXY_WRAPPER[@]}"})
NGINX_MASTER=${NGINX_MASTER:-on}
PROXY_MAX_CONNECTIONS=${PROXY_MAX_CONNECTIONS:-4096}
UPSTREAM_SERVERS=${UPSTREAM_SERVERS:-2}

# upstream_servers FORMAT: FORMAT printed once for each of UPSTREAM_SERVERS
# servers, with the server's number and its address (the app servers in
# turn) as its two arguments.
upstream_servers() {
  local i
  for ((i = 0; i < UPSTREAM_SERVERS; i++)); do
    # shellcheck disable=SC2059 # the format is the caller's
    printf "$1" "$i" "127.0.0.1:${APP_PORTS[i % 2]}"
  done
}

# assign_ports: a free port for every proxy of PROXIES and policy of POLICIES.
assign_ports() {
  local proxy policy
  for proxy in $PROXIES; do
    for policy in $POLICIES; do
      free_port "PORT[$proxy/$policy]"
      [ -z "${TLS_CERT:-}" ] || free_port "TLS_PORT[$proxy/$policy]"
    done
  done
}

# start_shoal [POLICY...]: one gateway per policy (default: POLICIES).
start_shoal() {
  start_gateway shoal "${GATEWAY_BIN:-$BIN/gateway}" GATEWAY_BIN "$@"
}

# start_before [POLICY...]: the same, from BEFORE_BIN, as the proxy `before`.
start_before() {
  start_gateway before "${BEFORE_BIN:-}" BEFORE_BIN "$@"
}

# start_gateway NAME BINARY SETTING [POLICY...]: one gateway per policy
# (default: POLICIES) from BINARY, measured as the proxy NAME; SETTING is
# the variable that names BINARY, for the message when it is missing.
start_gateway() {
  local name=$1 gateway=$2 setting=$3 policy admin_port id tls
  shift 3
  local policies=${*:-$POLICIES}
  if [ ! -x "$gateway" ]; then
    for policy in $policies; do
      FAILED[$name/$policy]="no gateway binary at \`$gateway\` (build it, or point $setting at one)"
    done
    return
  fi
  for policy in $policies; do
    LOG[$name/$policy]=$TMP/$name-$policy.log
    free_port admin_port
    ADMIN[$name/$policy]=$admin_port
    id=bench-$policy
    [ "$name" = shoal ] || id=bench-$name-$policy
    tls=()
    if [ -n "${TLS_CERT:-}" ]; then
      tls=(--tls-listen "127.0.0.1:${TLS_PORT[$name/$policy]}" --tls-cert "$TLS_CERT" --tls-key "$TLS_KEY")
    fi
    # Slow start off: nginx and HAProxy have none, and every instance is
    # "new" to a gateway that just started.
    taskset -c "$PROXY_CORE" ${PROXY_WRAPPER[@]+"${PROXY_WRAPPER[@]}"} "$gateway" --etcd "$ETCD_URL" \
      --listen "127.0.0.1:${PORT[$name/$policy]}" --admin-listen "127.0.0.1:$admin_port" \
      --workers 1 --default-service app --default-policy "$policy" --slow-start 0s \
      --id "$id" ${tls[@]+"${tls[@]}"} >"${LOG[$name/$policy]}" 2>&1 &
    pids+=($!)
    PID[$name/$policy]=$!
  done
}

# upstream_overhead KEY: for a gateway (shoal or before), its client
# requests, its attempts sent to instances, and its hedges so far, from its
# /metrics: `requests R attempts A (+X.XX%) hedges H`. Empty for other proxies.
upstream_overhead() {
  local port=${ADMIN[$1]:-}
  [ -n "$port" ] || return 0
  curl -sf "http://127.0.0.1:$port/metrics" | awk '
    /^shoal_gateway_requests_total\{/ { requests += $NF }
    /^shoal_gateway_upstream_requests_total\{/ { attempts += $NF }
    /^shoal_gateway_hedges_total\{/ { hedges += $NF }
    END { if (requests > 0) printf "requests %d attempts %d (%+.2f%%) hedges %d\n",
      requests, attempts, (attempts - requests) * 100 / requests, hedges }'
}

# start_nginx [NAME]: one nginx serving every policy of POLICIES on its own
# port, as the proxy NAME (default nginx: its PORT, PID and LOG are under
# NAME/policy, its files in $TMP/NAME). round-robin is nginx's default
# (weighted round-robin), least-request `least_conn`, consistent-hash
# `hash $http_x_user consistent` (Ketama, on the header the gateway
# benchmarks hash).
start_nginx() {
  local name=${1:-nginx} policy upstream balance
  local dir=$TMP/$name
  local conf=$dir/nginx.conf
  mkdir -p "$dir"
  {
    cat <<CONF
worker_processes 1;
master_process $NGINX_MASTER;
daemon off;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections $PROXY_MAX_CONNECTIONS; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  fastcgi_temp_path $dir/fastcgi;
  uwsgi_temp_path $dir/uwsgi;
  scgi_temp_path $dir/scgi;
  # Keep client connections open as long as wrk does (the default closes
  # them every 1000 requests; the gateway and HAProxy do not).
  keepalive_requests 1000000;
CONF
    for policy in $POLICIES; do
      upstream=${policy//-/_}
      case $policy in
        least-request) balance="least_conn;" ;;
        consistent-hash) balance="hash \$http_x_user consistent;" ;;
        *) balance= ;;
      esac
      cat <<CONF
  upstream $upstream {
    $balance
$(upstream_servers '    server %.0s%s;\n')
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:${PORT[$name/$policy]};
$(nginx_tls "$name/$policy")
    location / {
      proxy_pass http://$upstream;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
CONF
    done
    echo "}"
  } >"$conf"
  for policy in $POLICIES; do LOG[$name/$policy]=$dir/error.log; done
  taskset -c "$PROXY_CORE" ${PROXY_WRAPPER[@]+"${PROXY_WRAPPER[@]}"} nginx -p "$dir" \
    -e "$dir/error.log" -c "$conf" >"$dir/stdout.log" 2>&1 &
  pids+=($!)
  for policy in $POLICIES; do PID[$name/$policy]=$!; done
}

# nginx_tls KEY: the TLS listener of nginx's server for KEY (name/policy),
# when TLS_CERT is set.
nginx_tls() {
  [ -n "${TLS_CERT:-}" ] || return 0
  cat <<CONF
    listen 127.0.0.1:${TLS_PORT[$1]} ssl;
    ssl_certificate $TLS_CERT;
    ssl_certificate_key $TLS_KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
CONF
}

# start_haproxy [NAME]: one HAProxy serving every policy of POLICIES on
# its own port, as the proxy NAME (default haproxy: its PORT, PID and LOG
# are under NAME/policy, its files in $TMP/NAME). round-robin is `balance
# roundrobin`, least-request `leastconn`, consistent-hash `balance
# hdr(x-user)` with `hash-type consistent`.
start_haproxy() {
  local name=${1:-haproxy} policy balance
  local dir=$TMP/$name
  local conf=$dir/haproxy.cfg
  mkdir -p "$dir"
  {
    cat <<CONF
global
  nbthread 1
  maxconn $PROXY_MAX_CONNECTIONS
  # Start even when the open-file limit is below 2 x maxconn (it refuses by
  # default): gateway-scale.sh's 10,000 idle connections need only one each.
  no strict-limits
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  option forwardfor
  http-reuse always
CONF
    for policy in $POLICIES; do
      case $policy in
        least-request) balance="balance leastconn" ;;
        consistent-hash) balance=$'balance hdr(x-user)\n  hash-type consistent' ;;
        *) balance="balance roundrobin" ;;
      esac
      cat <<CONF
frontend ${policy}_in
  bind 127.0.0.1:${PORT[$name/$policy]}
$(haproxy_tls "$name/$policy")
  default_backend ${policy}_app
backend ${policy}_app
  $balance
$(upstream_servers '  server s%d %s\n')
CONF
    done
  } >"$conf"
  haproxy -c -q -f "$conf" || { echo "error: HAProxy rejects $conf" >&2; exit 1; }
  for policy in $POLICIES; do LOG[$name/$policy]=$dir/haproxy.log; done
  taskset -c "$PROXY_CORE" ${PROXY_WRAPPER[@]+"${PROXY_WRAPPER[@]}"} haproxy -db -f "$conf" \
    >"$dir/haproxy.log" 2>&1 &
  pids+=($!)
  for policy in $POLICIES; do PID[$name/$policy]=$!; done
}

# haproxy_tls KEY: the TLS bind of HAProxy's frontend for KEY (name/policy),
# when TLS_CERT is set; X-Forwarded-Proto as the gateway and nginx send it.
haproxy_tls() {
  [ -n "${TLS_CERT:-}" ] || return 0
  cat <<CONF
  bind 127.0.0.1:${TLS_PORT[$1]} ssl crt $TLS_PEM ssl-min-ver TLSv1.2
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
CONF
}

# check_settings [POLICY...]: every proxy in PROXIES is known (`before`
# only with BEFORE_BIN), every policy in POLICIES is one of POLICY... (by
# default round-robin and least-request, the ones every proxy serves alike),
# and PGO (which gateway build pick_gateway measures) is 0 or 1; exits with
# a message otherwise, before anything is built or started.
check_settings() {
  local proxy policy allowed=${*:-round-robin least-request}
  for proxy in $PROXIES; do
    case $proxy in
      shoal | nginx | haproxy) ;;
      before)
        [ -n "${BEFORE_BIN:-}" ] || { echo "error: PROXIES has before but BEFORE_BIN is not set; point it at an earlier gateway binary" >&2; exit 1; }
        ;;
      *) echo "error: unknown proxy $proxy in PROXIES; use shoal, before, nginx, haproxy" >&2; exit 1 ;;
    esac
  done
  for policy in $POLICIES; do
    case " $allowed " in
      *" $policy "*) ;;
      *) echo "error: POLICIES may hold ${allowed// /, }, not $policy" >&2; exit 1 ;;
    esac
  done
  case ${PGO:-1} in
    0 | 1) ;;
    *) echo "error: PGO=$PGO is not allowed; use 1 (the profile-guided gateway, the default) or 0 (the plain release build)" >&2; exit 1 ;;
  esac
}

# start_proxy PROXY: start one of shoal, before, nginx, haproxy.
start_proxy() {
  case $1 in
    shoal) start_shoal ;;
    before) start_before ;;
    nginx) start_nginx ;;
    haproxy) start_haproxy ;;
    *) echo "error: unknown proxy $1 in PROXIES; use shoal, before, nginx, haproxy" >&2; exit 1 ;;
  esac
}

# check_proxy KEY [SECONDS]: the proxy answers 200 (within SECONDS, default
# 10) and, for round-robin, reaches both app servers in 20 requests;
# otherwise FAILED[KEY] says why.
check_proxy() {
  local key=$1 seconds=${2:-10} proxy=${1%/*} policy=${1#*/} url seen
  [ -n "${FAILED[$key]:-}" ] && return
  url=http://127.0.0.1:${PORT[$key]}/
  if ! wait_for "$proxy ($policy)" "$url" "${LOG[$key]}" "${PID[$key]}" "$seconds"; then
    FAILED[$key]="did not answer 200 at $url"
    return
  fi
  # Round-robin must alternate. Least-request may rightly keep sending
  # one-at-a-time requests to the instance it has measured as fast (P2C
  # over peak-EWMA); the per-instance split under load is printed by gateway.sh.
  [ "$policy" = round-robin ] || return 0
  seen=$(for _ in $(seq 1 20); do curl -s --max-time 5 "$url" || true; echo; done |
    { grep -o 'instance bench-[ab]' || true; } | sort -u | wc -l)
  if [ "$seen" -ne 2 ]; then
    echo "error: $proxy ($policy) answered, but not from both app servers in 20 requests" >&2
    FAILED[$key]="did not reach both app servers"
  fi
}

# stop_proxies: stop every proxy started so far with SIGTERM and wait for it
# (etcd and app servers stay); STOP_STATUS[proxy/policy] is its exit status.
stop_proxies() {
  local key pid
  local -A status_of=()
  STOP_STATUS=()
  for key in "${!PID[@]}"; do
    pid=${PID[$key]}
    if [ -z "${status_of[$pid]:-}" ]; then # nginx and HAProxy serve every policy
      kill -TERM "$pid" 2>/dev/null || true
      status_of[$pid]=0
      wait "$pid" 2>/dev/null || status_of[$pid]=$?
    fi
    STOP_STATUS[$key]=${status_of[$pid]}
  done
  forget_pids "${!status_of[@]}"
  PID=()
}

# report_failed: after the table, every FAILED entry with the end of its
# proxy's log, and exit 1 when there is one.
report_failed() {
  local key
  [ ${#FAILED[@]} -gt 0 ] || return 0
  echo
  for key in "${!FAILED[@]}"; do
    echo "FAILED: $key: ${FAILED[$key]}" >&2
    if [ -n "${LOG[$key]:-}" ] && [ -s "${LOG[$key]}" ]; then
      echo "--- last lines of ${LOG[$key]}:" >&2
      tail -n 10 "${LOG[$key]}" >&2
    fi
  done
  exit 1
}
