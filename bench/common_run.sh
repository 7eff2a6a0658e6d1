# Sourced by bench/run.sh: starting and stopping each system, the load generators
# and the results file. Every server is started on CPU 0, every load generator on
# CPU 1, all on loopback. Several servers may be up at once (idle but for the one
# under load), so that rounds can alternate between them; their pids are in $pids.

# need COMMAND PACKAGE: install a Debian package when COMMAND is missing.
need() {
  command -v "$1" >/dev/null && return
  apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q "$2" >/dev/null; }
}

work=$(mktemp -d)
declare -A pids=()
perf_pid=
run_cleanup() {
  [ -n "$perf_pid" ] && kill "$perf_pid" 2>/dev/null
  stop_all
  rm -rf "$work"
}

roster_port=18700 rnacos_port=18710 etcd_port=18720 static_port=18730 axum_port=18740
roster_url=http://127.0.0.1:$roster_port
rnacos_url=http://127.0.0.1:$rnacos_port
etcd_ep=127.0.0.1:$etcd_port etcd_url=http://127.0.0.1:$etcd_port
static_url=http://127.0.0.1:$static_port/list.json axum_url=http://127.0.0.1:$axum_port/list.json
roster_flags=(--http-addr "127.0.0.1:$roster_port" --no-dns --no-grpc --log warn
  --max-instances 1000000 --max-instances-per-service 100000)
# Instances live 10-15 min without heartbeats, longer than any run (as roster's
# and etcd's TTLs of 600 s), so preloaded instances stay listed.
rnacos_env=(RNACOS_HTTP_PORT=$rnacos_port RNACOS_GRPC_PORT=$((rnacos_port + 1))
  RNACOS_HTTP_CONSOLE_PORT=$((rnacos_port + 2)) RNACOS_SDK_HOST=127.0.0.1 RNACOS_CONSOLE_HOST=127.0.0.1
  RNACOS_NAMING_HEALTH_TIMEOUT_SECOND=600 RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND=900 RUST_LOG=warn)
etcd_flags=(--name bench --listen-client-urls "$etcd_url" --advertise-client-urls "$etcd_url"
  --listen-peer-urls "http://127.0.0.1:$((etcd_port + 1))"
  --initial-advertise-peer-urls "http://127.0.0.1:$((etcd_port + 1))"
  --initial-cluster "bench=http://127.0.0.1:$((etcd_port + 1))" --logger zap --log-level error)

# The r-nacos binary: $RNACOS_BIN, the cache, /work/bench-peers, PATH, else built
# into the cache with `cargo install` (about 11 minutes on 2 cores, niced).
find_rnacos() {
  local cache=${BENCH_PEERS:-bench/out/peers} c
  for c in "${RNACOS_BIN:-}" "$cache/rnacos/bin/rnacos" /work/bench-peers/rnacos/bin/rnacos "$(command -v rnacos || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then echo "$c"; return 0; fi
  done
  echo "building r-nacos into $cache (cargo install rnacos, about 11 minutes)" >&2
  CARGO_TARGET_DIR=$cache/rnacos-target timeout 3600 nice -n 10 \
    cargo install rnacos --root "$cache/rnacos" >&2 || return 1
  echo "$cache/rnacos/bin/rnacos"
}

# wait_http URL: until URL answers 2xx (30 s at most).
wait_http() {
  for _ in $(seq 600); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "no answer from $1" >&2; return 1
}
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
check_port() { port_free "$1" || { echo "port $1 is in use" >&2; exit 1; }; }

start_roster() {
  check_port $roster_port
  taskset -c 0 "$bin" serve "${roster_flags[@]}" "$@" > "$out/roster.log" 2>&1 &
  pids[roster]=$!
  wait_http "$roster_url/ready"
}
start_rnacos() {
  check_port $rnacos_port
  rm -rf "$work/rnacos"; mkdir -p "$work/rnacos"
  env "${rnacos_env[@]}" RNACOS_DATA_DIR="$work/rnacos" taskset -c 0 "$rnacos" > "$out/rnacos.log" 2>&1 &
  pids[r-nacos]=$!
  wait_http "$rnacos_url/health"
}
# start_etcd [DATA_DIR]: a fresh data dir unless one is given.
start_etcd() {
  check_port $etcd_port
  local dir=${1:-$work/etcd}
  [ -n "${1:-}" ] || rm -rf "$dir"
  rm -f "$work/etcd-leases"
  taskset -c 0 etcd "${etcd_flags[@]}" --data-dir "$dir" > "$out/etcd.log" 2>&1 &
  pids[etcd]=$!
  wait_http "$etcd_url/health"
}
start_nginx() {
  check_port $static_port
  mkdir -p "$work/nginx/www"
  cp "$1" "$work/nginx/www/list.json"
  # nginx's worker runs as an unprivileged user; mktemp's dir is 0700.
  chmod 755 "$work" "$work/nginx" "$work/nginx/www"; chmod 644 "$work/nginx/www/list.json"
  cat > "$work/nginx/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 100000000;
  types { application/json json; }
  server { listen 127.0.0.1:$static_port; root $work/nginx/www; }
}
CONF
  taskset -c 0 nginx -c "$work/nginx/nginx.conf" &
  pids[nginx]=$!
  wait_http "$static_url"
}
start_axum() {
  check_port $axum_port
  taskset -c 0 "$gen/peer_axum" --addr "127.0.0.1:$axum_port" --file "$1" &
  pids[axum]=$!
  wait_http "$axum_url"
}
# start_system NAME: roster, r-nacos or etcd with its defaults.
start_system() {
  case $1 in roster) start_roster ;; r-nacos) start_rnacos ;; etcd) start_etcd ;; esac
}
# stop_server NAME: SIGTERM (nginx: SIGQUIT), 5 s, then SIGKILL (r-nacos's actix
# may wait up to 30 s for connections to close).
stop_server() {
  local p=${pids[$1]:-}
  unset "pids[$1]"
  [ -n "$p" ] || return 0
  if [ "$1" = nginx ]; then kill -QUIT "$p" 2>/dev/null || true; else kill "$p" 2>/dev/null || true; fi
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
stop_all() {
  local k
  for k in "${!pids[@]}"; do stop_server "$k"; done
}

durability() {
  case $1 in roster) echo "$d_roster" ;; r-nacos) echo "$d_rnacos" ;; etcd) echo "$d_etcd" ;; esac
}
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
# kv KEY LINE: the value of KEY=value in LINE.
kv() { echo "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

# record SCENARIO PARAM SYSTEM DURABILITY METRIC VALUE: one row of results.csv
# (in round $round).
round=1
record() { echo "$1,$2,$3,$4,$round,$5,$6" >> "$csv"; }
# record_line SCENARIO PARAM SYSTEM DURABILITY "RESULT k=v ...": a row per pair.
record_line() {
  local pair
  for pair in $5; do
    [ "$pair" = RESULT ] && continue
    record "$1" "$2" "$3" "$4" "${pair%%=*}" "${pair#*=}"
  done
  echo "  $3 $1 $2 (round $round): $5"
}

# Profile the server (roster only) for part of the measured run.
# perf_start NAME SYSTEM: in round 1, when SYSTEM is roster.
perf_start() {
  [ "$perf_on" = 1 ] && [ "$2" = roster ] && [ "$round" = 1 ] && [ -n "${pids[roster]:-}" ] || return 0
  (sleep 1; exec perf record -q -F 999 -g -p "${pids[roster]}" -o "$out/perf-$1.data" -- sleep $((dur / 2 + 1))) >/dev/null 2>&1 &
  perf_pid=$!
}
perf_finish() {
  [ -n "$perf_pid" ] || return 0
  wait "$perf_pid" 2>/dev/null || true
  perf_pid=
  perf_report "$out/perf-$1.data" "$out/perf-$1.txt"
}
# perf_report DATA TEXT: the top 40 symbols, flat (self time), of a profile.
perf_report() {
  [ -f "$1" ] || return 0
  perf report -i "$1" --no-children -g none --sort dso,symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9.]+%' | sed 's/ *$//; s/  */ /g' | head -40 > "$2" || true
}
# wrk_scenario SCENARIO PARAM SYSTEM DURABILITY SCRIPT URL: warm-up, then the
# measured closed-loop run (64 connections, one wrk thread on CPU 1).
wrk_scenario() {
  local line
  if [ "$warm" -gt 0 ]; then
    ROSTER_BENCH_PREFIX=w ROSTER_BENCH_PORT=8081 timeout $((warm + 30)) \
      taskset -c 1 wrk -t1 -c$conns -d"${warm}s" -s "$5" "$6" > /dev/null || true
  fi
  perf_start "$1-$2" "$3"
  line=$(timeout $((dur + 30)) taskset -c 1 wrk -t1 -c$conns -d"${dur}s" -s "$5" "$6" | grep '^RESULT' || true)
  perf_finish "$1-$2"
  [ -n "$line" ] || { echo "  $3 $1 $2: no result" >&2; return 0; }
  record_line "$1" "$2" "$3" "$4" "$line"
}
# etcd_scenario SCENARIO PARAM DURABILITY MODE [ARGS]: the same with etcd_load.
etcd_scenario() {
  local scen=$1 param=$2 d=$3 line
  shift 3
  line=$(timeout $((warm + dur + 120)) taskset -c 1 "$gen/etcd_load" "$@" --endpoint "$etcd_ep" \
    --concurrency $conns --connections $conns --warmup "$warm" --duration "$dur" | grep '^RESULT' || true)
  [ -n "$line" ] || { echo "  etcd $scen $param: no result" >&2; return 0; }
  record_line "$scen" "$param" etcd "$d" "$line"
}
# preload SYSTEM FIRST COUNT [ARGS]: instances FIRST.. of svc{i % 100} (or ARGS'
# --service), 32 requests in flight, from CPU 1.
preload() {
  local sys=$1 first=$2 count=$3
  shift 3
  [ "$count" -gt 0 ] || return 0
  case $sys in
    roster | roster-durable) taskset -c 1 "$gen/preload" --kind roster --url "$roster_url" --first "$first" --count "$count" "$@" ;;
    r-nacos) taskset -c 1 "$gen/preload" --kind rnacos --url "$rnacos_url" --first "$first" --count "$count" "$@" ;;
    etcd)
      local leases=()
      [ $# -gt 0 ] || leases=(--leases "$work/etcd-leases")
      taskset -c 1 "$gen/etcd_load" preload --endpoint "$etcd_ep" --connections 8 --first "$first" \
        --count "$count" "${leases[@]}" "$@" ;;
  esac > /dev/null
}
# startup_scenario PARAM SYSTEM DURABILITY STARTUP_ARGS...: start-up time to ready.
startup_scenario() {
  local param=$1 sys=$2 d=$3 line
  shift 3
  line=$(timeout 900 taskset -c 1 "$gen/startup" "$@" 2>&1 | tee -a "$out/startup.log" | grep '^RESULT' || true)
  [ -n "$line" ] || { echo "  $sys startup $param: no result" >&2; return 0; }
  record_line startup "$param" "$sys" "$d" "$line"
}

versions() {
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "commit: $(git describe --always --dirty 2>/dev/null || echo unknown)"
  echo "machine: $(nproc) vCPUs ($(lscpu | sed -n 's/^Model name: *//p' | head -1)), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r)"
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "roster: $("$bin" --version 2>&1 | awk '{print $2}' | head -1) (release build, symbols kept)"
  [ -n "$rnacos" ] && echo "r-nacos: $("$rnacos" -V 2>&1 | awk '{print $2}' | head -1)"
  echo "etcd: $(etcd --version 2>/dev/null | awk '/etcd Version/ {print $3}')"
  echo "nginx: $(nginx -v 2>&1 | sed 's|.*nginx/||' | head -1)"
  echo "axum: $(awk '/^name = "axum"$/ {getline; print $3}' Cargo.lock | tr -d '"' | head -1) (bench peer_axum)"
  echo "Knot DNS: $(knotd --version 2>&1 | awk '{print $NF}' | head -1)"
  echo "wrk: $(wrk -v 2>&1 | awk '{print $2}' | head -1)"
  echo "dnsperf: $(dnsperf -h 2>&1 | awk '/Version/ {print $2}' | head -1)"
  echo "etcd-client: $(awk '/^name = "etcd-client"$/ {getline; print $3}' Cargo.lock | tr -d '"' | head -1)"
}
