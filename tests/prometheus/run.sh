#!/usr/bin/env bash
# A real Prometheus (Debian's, 2.42: http_sd_configs, no consul_sd_configs)
# discovers its targets from roster's GET /v1/prometheus/targets: roster on a
# free port registers itself, a tiny HTTP server that serves /metrics, and an
# instance on a port nobody listens on (critical, with a ttl check never
# reported). Prometheus must list all three with the labels its relabel rules
# copy from __meta_roster_* (job and service from the service, the tag and
# metadata rules), scrape the two reachable ones (health up) and fail the third
# (down); once one is deregistered it must drop it. Takes about 15 s.
#
# Installs prometheus with apt-get when promtool or prometheus is missing. The
# package's own service is never used (it may or may not have started): this
# runs its own Prometheus on a free port with its data in a temporary dir.
# Usage: ROSTER_BIN=target/debug/roster bash tests/prometheus/run.sh
# KEEP_WORK=1 keeps the configs and logs (printed path); PROM_TEST_TIMEOUT
# (seconds, default 90) bounds the run after the install.
set -euo pipefail
cd "$(dirname "$0")/../.."

me=tests/prometheus/run.sh
bin=${ROSTER_BIN:-}
[ -n "$bin" ] || { echo "$me: FAIL: ROSTER_BIN must name the roster binary to test (e.g. ROSTER_BIN=target/debug/roster)" >&2; exit 1; }
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "$me: FAIL: ROSTER_BIN=$bin is not an executable file (cargo build -p roster-cli)" >&2; exit 1; }
for tool in curl python3; do
  command -v "$tool" >/dev/null || { echo "$me: FAIL: $tool is required" >&2; exit 1; }
done

# As tests/run.sh installs its tools: apt-get, as root or with sudo.
need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return
  echo "$me: installing $1 ($2)" >&2
  local sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
  command -v apt-get >/dev/null || { echo "$me: FAIL: $1 is missing and apt-get is not available; install $2 and rerun" >&2; exit 1; }
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q "$2"; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q "$2"
  fi
  command -v "$1" >/dev/null || { echo "$me: FAIL: $1 is still missing after installing $2" >&2; exit 1; }
}
need prometheus prometheus
need promtool prometheus

helper="$PWD/tests/prometheus/check.py"
limit=${PROM_TEST_TIMEOUT:-90}
work=$(mktemp -d "${TMPDIR:-/tmp}/roster-prometheus.XXXXXX")
mkdir -p "$work/pids" "$work/www" "$work/tsdb"
failed=0
guard_pid=

now_ms() { date +%s%3N; }
t_begin=$(now_ms)
say() { printf '[prometheus %5.1fs] %s\n' "$(( $(now_ms) - t_begin ))e-3" "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  {
    for f in "$work"/pids/*; do [ -e "$f" ] && kill "$(cat "$f")"; done
    [ -n "$guard_pid" ] && kill "$guard_pid"
    wait
  } 2>/dev/null
  if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    for log in roster prometheus www; do
      [ -s "$work/$log.log" ] || continue
      echo "---- last lines of the $log log ----" >&2
      # The /metrics server logs every scrape: its last lines are enough.
      tail -n "$([ "$log" = www ] && echo 3 || echo 20)" "$work/$log.log" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
    echo "$me: FAIL (see above)" >&2
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "$me: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# fd 3 is the real stderr: a failure inside wait_for's redirected check still shows.
exec 3>&2
fail() { failed=1; echo "$me: FAIL: $*" >&3; exit 1; }

# Watchdog: stops this script when it runs too long, and the processes it
# started if it dies without its trap (SIGKILL).
main_pid=$$
(
  end=$(( $(date +%s) + limit ))
  while kill -0 "$main_pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
  if kill -0 "$main_pid" 2>/dev/null; then
    echo "$me: FAIL: still running after ${limit}s, stopping" >&2
    kill -TERM "$main_pid" 2>/dev/null
    sleep 5
  fi
  for f in "$work"/pids/*; do [ -e "$f" ] && kill -9 "$(cat "$f")" 2>/dev/null; done
) &
guard_pid=$!

start() { # start NAME COMMAND...: runs it in the background, logging to NAME.log
  local name=$1; shift
  "$@" > "$work/$name.log" 2>&1 &
  echo $! > "$work/pids/$name"
}
alive() { kill -0 "$(cat "$work/pids/$1")" 2>/dev/null || fail "$1 exited; see its log"; }
# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.25 s; its
# last output says why it is not there yet.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(now_ms) + secs * 1000 ))
  until "$@" > "$work/last-check" 2>&1; do
    [ "$(now_ms)" -lt "$end" ] || fail "$what: not within ${secs}s ($(tail -n 1 "$work/last-check"))"
    sleep 0.25
  done
}

read -r roster_port www_port dead_port prom_port < <(python3 "$helper" ports 4)
api="http://127.0.0.1:$roster_port"

# 1. roster, and a static /metrics to scrape.
start roster "$bin" serve --http-addr "127.0.0.1:$roster_port" --no-dns --no-grpc
printf '# TYPE roster_prometheus_test gauge\nroster_prometheus_test 1\n' > "$work/www/metrics"
start www python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$www_port"
roster_ready() { alive roster; curl -sf -o /dev/null -m 2 "$api/ready"; }
wait_for 20 "roster ready on port $roster_port" roster_ready
www_ready() { alive www; curl -sf -o /dev/null -m 2 "http://127.0.0.1:$www_port/metrics"; }
wait_for 10 "the /metrics server on port $www_port" www_ready

register() { # register SERVICE ID JSON
  local code
  code=$(curl -s -o "$work/register.out" -w '%{http_code}' -m 5 -X PUT \
    "$api/v1/services/$1/instances/$2" -d "$3")
  [ "$code" = 201 ] || fail "registering $1/$2: HTTP $code $(cat "$work/register.out")"
}
register roster roster-1 "{\"address\":\"127.0.0.1\",\"port\":$roster_port,\"tags\":[\"self\"]}"
register web web-1 "{\"address\":\"127.0.0.1\",\"port\":$www_port,\"tags\":[\"v2\",\"eu\"],\"meta\":{\"team-name\":\"shop\"}}"
register web web-2 "{\"address\":\"127.0.0.1\",\"port\":$dead_port,\"checks\":[{\"type\":\"ttl\",\"ttl\":\"1h\"}]}"
say "roster on $roster_port with 3 instances, /metrics on $www_port, nothing on $dead_port"

# 2. Prometheus, configured to discover through roster.
cat > "$work/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 800ms
scrape_configs:
  - job_name: roster-sd
    http_sd_configs:
      - url: $api/v1/prometheus/targets
        refresh_interval: 1s
    relabel_configs:
      - source_labels: [__meta_roster_service]
        target_label: job
      - source_labels: [__meta_roster_service]
        target_label: service
      - source_labels: [__meta_roster_instance_id]
        target_label: instance_id
      - source_labels: [__meta_roster_health]
        target_label: roster_health
      - source_labels: [__meta_roster_tags]
        regex: '.*,v2,.*'
        target_label: v2
        replacement: 'yes'
      - source_labels: [__meta_roster_metadata_team_name]
        target_label: team
EOF
promtool check config "$work/prometheus.yml" > "$work/promtool.out" 2>&1 \
  || fail "promtool check config: $(cat "$work/promtool.out")"
start prometheus prometheus --config.file="$work/prometheus.yml" \
  --storage.tsdb.path="$work/tsdb" --web.listen-address="127.0.0.1:$prom_port" \
  --log.level=warn
say "prometheus $(prometheus --version 2>&1 | head -n 1 | awk '{print $3}') on $prom_port"

cat > "$work/want-all.json" <<EOF
{
  "roster-1": {"health": "up",
    "labels": {"job": "roster", "service": "roster", "roster_health": "passing",
               "instance": "127.0.0.1:$roster_port"},
    "discovered": {"__meta_roster_tags": ",self,", "__meta_roster_datacenter": "dc1"}},
  "web-1": {"health": "up",
    "labels": {"job": "web", "service": "web", "v2": "yes", "team": "shop",
               "roster_health": "passing", "instance": "127.0.0.1:$www_port"},
    "discovered": {"__meta_roster_tags": ",v2,eu,",
                   "__meta_roster_metadata_team_name": "shop"}},
  "web-2": {"health": "down",
    "labels": {"job": "web", "roster_health": "critical",
               "instance": "127.0.0.1:$dead_port"},
    "discovered": {"__meta_roster_tags": ",,"}}
}
EOF
targets() { alive prometheus; alive roster; python3 "$helper" targets "$prom_port" "$1"; }
wait_for 30 "Prometheus scraping the three targets roster lists" targets "$work/want-all.json"
say "step 1: Prometheus has roster-1 and web-1 up, web-2 down, with their labels"

# 3. A deregistered instance leaves Prometheus' targets.
code=$(curl -s -o /dev/null -w '%{http_code}' -m 5 -X DELETE "$api/v1/services/web/instances/web-1")
[ "$code" = 204 ] || fail "deregistering web/web-1: HTTP $code"
cat > "$work/want-gone.json" <<EOF
{"web-1": null, "roster-1": {"health": "up"}, "web-2": {"health": "down"}}
EOF
wait_for 30 "Prometheus dropping deregistered web-1" targets "$work/want-gone.json"
say "step 2: web-1 deregistered and gone from Prometheus' targets"
echo "$me: ok"
