#!/usr/bin/env bash
# roster side by side with its peers, every scenario in one run: r-nacos, etcd
# (gRPC, via bench/src/bin/etcd_load.rs), nginx serving the same JSON from a file,
# a bare axum handler serving it from memory (peer_axum) and Knot DNS (dns.sh).
# Server under test on CPU 0, load generator on CPU 1, loopback only, the same
# concurrency (64 connections) and duration for every system.
#
# Writes bench/out/run/results.csv (scenario,param,system,durability,round,metric,value),
# bench/out/run/results.json, bench/out/run/table.md, the logs and perf profiles next
# to them. A full run (or --report) also puts the table in bench/RESULTS.md between
# the run.sh markers and copies the raw data and flat profiles to bench/results/
# (kept in git; bench/out is not).
#
# Usage: bench/run.sh [--quick | --full | --smoke] [--report | --no-report] [--only LIST]
#   --full     (default) 10 s per scenario, two rounds alternating the systems,
#              10k and 100k instances, 1k and 10k watchers, roster profiled with
#              perf in round 1; about 16 minutes
#   --quick    3 s per scenario, 10k instances, 1k watchers; under 5 minutes
#   --smoke    builds the load generators, checks that the scripts parse, runs
#              roster alone for 1 s per HTTP scenario; writes nothing to RESULTS.md
#   --only     comma-separated subset of: register,heartbeat,list,dns,watch,memory,startup
# Environment: CARGO_TARGET_DIR (default target), ROSTER_BIN (skip the roster build),
#   RNACOS_BIN (an rnacos binary, or "skip" to leave r-nacos out; default: the cache
#   $BENCH_PEERS/rnacos/bin (BENCH_PEERS defaults to bench/out/peers), then
#   /work/bench-peers/rnacos/bin, then PATH, else `cargo install rnacos` into the
#   cache, about 11 minutes on 2 cores), PERF=0|1 (profile roster; default 1 in --full),
#   ETCD=0 (leave etcd out of the register, heartbeat, list and watch scenarios: no
#   etcd install and no etcd load generator to build; the startup scenario needs it).
# Needs root for apt-get (wrk, nginx, etcd-server, knot, dnsperf, protobuf-compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

mode=full report= only=all
while [ $# -gt 0 ]; do
  case $1 in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --smoke | --dry-run) mode=smoke ;;
    --no-report) report=0 ;;
    --report) report=1 ;;
    --only) only=$2; shift ;;
    *) sed -n '2,28p' "$0"; exit 2 ;;
  esac
  shift
done
case $mode in
  full) dur=10 warm=2 hb_sizes="10000 100000" mem_sizes="0 10000 100000" watchers="1000 10000"
        startup_runs=7 stored=100000 dns_secs=10 dns_rounds=2 perf_default=1 rounds=2 ;;
  quick) dur=3 warm=1 hb_sizes="10000" mem_sizes="0 10000" watchers="1000"
         startup_runs=3 stored=10000 dns_secs=3 dns_rounds=1 perf_default=0 rounds=1 ;;
  smoke) dur=1 warm=0 hb_sizes="1000" mem_sizes="" watchers="" startup_runs=1 stored=0
         dns_secs=1 dns_rounds=1 perf_default=0 report=0 rounds=1 ;;
esac
perf_on=${PERF:-$perf_default}
# RESULTS.md is for full runs unless asked.
[ -n "$report" ] || { [ $mode = full ] && report=1 || report=0; }
conns=64
want() { [ "$only" = all ] || [[ ",$only," == *",$1,"* ]]; }

# 10,000 watch connections on each side, and etcd inherits this limit.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
. bench/common_run.sh
trap run_cleanup EXIT
trap 'exit 130' INT TERM

# --- Tools and builds ------------------------------------------------------------
need wrk wrk; need curl curl; need taskset util-linux; need python3 python3
etcd_on=${ETCD:-1}
[ $mode = smoke ] || { need nginx nginx-light; need dnsperf dnsperf; need knotd knot; need dig bind9-dnsutils; }
[ $mode = smoke ] || [ "$etcd_on" = 0 ] || need etcd etcd-server
if [ "$etcd_on" = 0 ] && want startup; then
  echo "ETCD=0 needs --only without startup" >&2; exit 2
fi
[ "$perf_on" = 1 ] && need perf linux-perf
etcd_feature=()
if [ "$etcd_on" = 1 ] && need protoc protobuf-compiler; then etcd_feature=(--features etcd); fi
target=${CARGO_TARGET_DIR:-target}
# Symbols kept (not stripped) so perf can name roster's functions; the code is the
# same as the shipped release build's.
export CARGO_PROFILE_RELEASE_STRIP=none
if [ -z "${ROSTER_BIN:-}" ]; then
  cargo build --release -q -p roster-cli --bin roster
  ROSTER_BIN=$target/release/roster
fi
cargo build --release -q -p roster-bench --bins "${etcd_feature[@]}"
bin=$ROSTER_BIN gen=$target/release
export ROSTER_BIN
for s in bench/*.sh; do bash -n "$s"; done
echo "harness built; roster: $("$bin" --version)"

rnacos=
if [ $mode != smoke ] && [ "${RNACOS_BIN:-}" != skip ]; then
  rnacos=$(find_rnacos) || { echo "r-nacos unavailable: its rows are skipped" >&2; rnacos=; }
fi

out=bench/out/run
mkdir -p "$out"
[ $mode = smoke ] && out=$work/out && mkdir -p "$out"
csv=$out/results.csv
echo "scenario,param,system,durability,round,metric,value" > "$csv"
rm -f "$out"/perf-*.txt

# Durability of each system as run here (the table notes it).
d_roster="in memory (default)" d_roster_disk="--data-dir: fsync per group commit"
d_rnacos="ephemeral instances: in memory" d_etcd="raft WAL fsync per batch (default)"
d_static="n/a (static)"

systems=(roster)
if [ $mode != smoke ]; then
  [ -n "$rnacos" ] && systems+=(r-nacos)
  [ "$etcd_on" = 1 ] && systems+=(etcd)
fi

# --- Scenario 1: register N distinct instances (a fresh server per round) ---------
if want register; then
  echo "== register"
  for round in $(seq "$rounds"); do
    for sys in "${systems[@]}"; do
      start_system "$sys"
      case $sys in
        roster) wrk_scenario register new roster "$d_roster" bench/register.lua "$roster_url" ;;
        r-nacos) wrk_scenario register new r-nacos "$d_rnacos" bench/rnacos_register.lua "$rnacos_url" ;;
        etcd) etcd_scenario register new "$d_etcd" register ;;
      esac
      stop_server "$sys"
    done
    if [ $mode != smoke ]; then
      rm -rf "$work/reg-disk"
      start_roster --data-dir "$work/reg-disk"
      wrk_scenario register new roster-durable "$d_roster_disk" bench/register.lua "$roster_url"
      stop_server roster
    fi
  done
  round=1
fi

# --- Scenarios 2 and 6: heartbeat with N live instances; RSS with 0 and N ----------
# All systems up at once (the idle ones cost next to nothing), loaded to the same
# N, measured in turn, round after round.
if want heartbeat || want memory; then
  echo "== heartbeat and memory"
  sizes=$(echo $hb_sizes $mem_sizes | tr ' ' '\n' | sort -nu | tr '\n' ' ')
  for sys in "${systems[@]}"; do start_system "$sys"; done
  loaded=0
  for n in $sizes; do
    for sys in "${systems[@]}"; do
      [ "$n" -gt "$loaded" ] && preload "$sys" "$loaded" $((n - loaded))
      if want memory && [[ " $mem_sizes " == *" $n "* ]]; then
        sleep 1; record memory "$n" "$sys" "$(durability "$sys")" rss_kib "$(rss_kib "${pids[$sys]}")"
      fi
    done
    loaded=$n
    if want heartbeat && [[ " $hb_sizes " == *" $n "* ]]; then
      for round in $(seq "$rounds"); do
        for sys in "${systems[@]}"; do
          case $sys in
            roster) ROSTER_BENCH_INSTANCES=$n wrk_scenario heartbeat "$n" roster "$d_roster" bench/heartbeat.lua "$roster_url" ;;
            r-nacos) ROSTER_BENCH_INSTANCES=$n wrk_scenario heartbeat "$n" r-nacos "$d_rnacos" bench/rnacos_beat.lua "$rnacos_url" ;;
            etcd) etcd_scenario heartbeat "$n" "$d_etcd" heartbeat --leases "$work/etcd-leases" ;;
          esac
        done
      done
      round=1
    fi
  done
  stop_all
fi

# --- Scenario 3: list a service with 10 and 100 instances -------------------------
# roster's answer, saved, is what nginx (from a file) and axum (from memory) serve.
if want list; then
  echo "== list"
  for sys in "${systems[@]}"; do
    start_system "$sys"
    for n in 10 100; do preload "$sys" 0 "$n" --service "l$n" --prefix "l$n-"; done
  done
  for n in 10 100; do
    curl -sf "$roster_url/v1/services/l$n" -o "$out/list-$n.json"
    [ -n "$rnacos" ] && [ $mode != smoke ] && curl -sf "$rnacos_url/nacos/v1/ns/instance/list?serviceName=l$n" -o "$out/list-$n-rnacos.json"
    if [ $mode != smoke ]; then
      start_nginx "$out/list-$n.json"; start_axum "$out/list-$n.json"
    fi
    for round in $(seq "$rounds"); do
      for sys in "${systems[@]}" axum nginx; do
        case $sys in
          roster) wrk_scenario list "$n" roster "$d_roster" bench/get.lua "$roster_url/v1/services/l$n" ;;
          r-nacos) wrk_scenario list "$n" r-nacos "$d_rnacos" bench/get.lua "$rnacos_url/nacos/v1/ns/instance/list?serviceName=l$n" ;;
          etcd) etcd_scenario list "$n" "$d_etcd" list --service "l$n" --expect "$n" ;;
          axum) [ $mode = smoke ] || wrk_scenario list "$n" axum "$d_static" bench/get.lua "$axum_url" ;;
          nginx) [ $mode = smoke ] || wrk_scenario list "$n" nginx "$d_static" bench/get.lua "$static_url" ;;
        esac
      done
    done
    round=1
    record list "$n" roster "$d_roster" bytes "$(stat -c %s "$out/list-$n.json")"
    [ -f "$out/list-$n-rnacos.json" ] && record list "$n" r-nacos "$d_rnacos" bytes "$(stat -c %s "$out/list-$n-rnacos.json")"
    stop_server nginx; stop_server axum
  done
  stop_all
fi

# --- Scenario 4: DNS A and SRV queries, roster vs Knot (bench/dns.sh) ---------------
if want dns && [ $mode != smoke ]; then
  echo "== dns"
  PERF_DATA=$([ "$perf_on" = 1 ] && echo "$root/$out/perf-dns.data" || true) ROUNDS=$dns_rounds \
    MIXES="a srv" timeout $((dns_secs * dns_rounds * 4 + 120)) bench/dns.sh "$dns_secs" > "$out/dns.log" 2>&1 \
    || { echo "dns.sh failed, see $out/dns.log" >&2; }
  # Lines "WHO mix=M qps=Q avg_latency_ms=L lost=N", one per round.
  awk '($1 == "roster" || $1 == "knot") && $2 ~ /^mix=/ { n[$1 $2]++; print n[$1 $2], $0 }' bench/out/dns.txt |
    while read -r round who mix qps lat lost; do
      d=$([ "$who" = knot ] && echo "$d_static" || echo "$d_roster")
      record dns "${mix#mix=}" "$who" "$d" qps "${qps#qps=}"
      record dns "${mix#mix=}" "$who" "$d" avg_latency_us "$(awk -v v="${lat#avg_latency_ms=}" 'BEGIN {printf "%d", v * 1000}')"
      record dns "${mix#mix=}" "$who" "$d" lost "${lost#lost=}"
    done
  [ -f "$out/perf-dns.data" ] && perf_report "$out/perf-dns.data" "$out/perf-dns.txt"
fi

# --- Scenario 5: change-to-watcher latency (bench/watch.sh for roster) --------------
if want watch && [ -n "$watchers" ]; then
  echo "== watch"
  # watch.sh runs roster's counts, then etcd's (one member, one connection
  # per watcher on both sides), and tags each RESULT line with its server.
  ETCD=$etcd_on WATCHERS="$watchers" PORT=18771 timeout 1800 bench/watch.sh 50 > "$out/watch.log" 2>&1 \
    || echo "watch.sh failed, see $out/watch.log" >&2
  grep '^RESULT' bench/out/watch.txt | while read -r line; do
    w=$(kv watchers "$line")
    case $(kv server "$line") in
      etcd) sys=etcd d=$d_etcd ;;
      *) sys=roster d=$d_roster ;;
    esac
    for m in p50_us p99_us max_us missing; do record watch "$w" "$sys" "$d" "$m" "$(kv $m "$line")"; done
  done
fi

# --- Scenario 7: start-up time to ready (empty, and with N stored instances) --------
if want startup && [ $mode != smoke ]; then
  echo "== startup"
  r=(--runs "$startup_runs" --url)
  startup_scenario empty roster "$d_roster" "${r[@]}" "$roster_url/ready" -- taskset -c 0 "$bin" serve "${roster_flags[@]}"
  mkdir -p "$work/roster-stored"
  start_roster --data-dir "$work/roster-stored"; preload roster 0 "$stored"; stop_server roster
  startup_scenario "$stored" roster-durable "$d_roster_disk" "${r[@]}" "$roster_url/ready" -- \
    taskset -c 0 "$bin" serve "${roster_flags[@]}" --data-dir "$work/roster-stored"
  start_etcd "$work/etcd-empty"; stop_server etcd
  startup_scenario empty etcd "$d_etcd" "${r[@]}" "$etcd_url/health" -- taskset -c 0 etcd "${etcd_flags[@]}" --data-dir "$work/etcd-empty"
  start_etcd "$work/etcd-stored"; preload etcd 0 "$stored"; stop_server etcd
  startup_scenario "$stored" etcd "$d_etcd" "${r[@]}" "$etcd_url/health" -- taskset -c 0 etcd "${etcd_flags[@]}" --data-dir "$work/etcd-stored"
  if [ -n "$rnacos" ]; then
    mkdir -p "$work/rnacos-empty"
    startup_scenario empty r-nacos "$d_rnacos" "${r[@]}" "$rnacos_url/health" -- \
      env "${rnacos_env[@]}" RNACOS_DATA_DIR="$work/rnacos-empty" taskset -c 0 "$rnacos"
  fi
fi

# --- Report ----------------------------------------------------------------------
versions > "$out/versions.txt"
if [ $mode = smoke ]; then
  n=$(grep -c ',rps,' "$csv" || true)
  echo "smoke: $n throughput results"; cat "$csv"
  [ "$n" -ge 3 ] && ! grep -q ',errors,[1-9]' "$csv" || { echo "smoke failed" >&2; exit 1; }
  exit 0
fi
python3 bench/report.py "$out" "$mode" $([ $report = 1 ] && echo bench/RESULTS.md)
echo "raw data: $out/results.csv, $out/results.json; table: $out/table.md"
