#!/usr/bin/env bash
# A 3-node Raft cluster: registrations per second through the leader and through
# a follower (forwarded), against one durable node (--data-dir, no cluster), in
# alternating rounds so every ratio compares runs minutes apart; then failover
# time under a steady write load (SIGKILL the leader, N rounds).
# Every server runs on CPU 0, wrk and the writer on CPU 1 (a 2-core machine).
# Writes bench/out/cluster.txt and prints a markdown table.
# Usage: bench/cluster.sh [wrk duration, default 10s] [failover rounds, default 5]
# ROSTER_BIN=path skips the build. ROSTER_BIN_BEFORE=path runs every
# throughput round with that build too (before/after side by side, alternated).
# THROUGHPUT_ROUNDS (default 3) rounds of single/leader/follower.
# With etcd installed (Debian etcd-server; ETCD=0 skips it), each round runs
# etcd the same way: one durable member, then a 3-member cluster written
# through its leader and through a follower (bench/etcd_put.lua, a new key per
# request through etcd's JSON gateway).
# RAFT_HEARTBEATS="250ms 100ms" sets the heartbeat periods the failover rounds
# run with (default: 100ms, the default of roster serve). Throughput runs use
# the default heartbeat. ROSTER_LOG sets the servers' --log level (default
# warn); KEEP_LOGS=DIR copies their logs there at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10s}
rounds=${2:-5}
heartbeats=${RAFT_HEARTBEATS-100ms}
tp_rounds=${THROUGHPUT_ROUNDS:-3}
before=${ROSTER_BIN_BEFORE:-}
conns=64

need() { # need COMMAND PACKAGE
  command -v "$1" >/dev/null && return
  apt-get install -y -q "$2" >/dev/null || { apt-get update -q && apt-get install -y -q "$2"; }
}
need wrk wrk; need curl curl; need bc bc; need taskset util-linux

bin=${ROSTER_BIN:-${CARGO_TARGET_DIR:-target}/release/roster}
[ -n "${ROSTER_BIN:-}" ] || cargo build --release -q -p roster-cli --bin roster
helper="$PWD/tests/cluster_fault/helper.py"
mkdir -p bench/out
out=bench/out/cluster.txt
: > "$out"

work=$(mktemp -d "${TMPDIR:-/tmp}/roster-bench-cluster.XXXXXX")
mkdir -p "$work/pids"
writer_pid=
cleanup() {
  trap - EXIT INT TERM
  set +e
  {
    [ -n "$writer_pid" ] && kill "$writer_pid"
    for f in "$work"/pids/*; do [ -e "$f" ] && kill -9 "$(cat "$f")"; done || true
    wait
  } 2>/dev/null
  if [ -n "${KEEP_LOGS:-}" ]; then
    mkdir -p "$KEEP_LOGS" && cp "$work"/log* "$KEEP_LOGS"/ 2>/dev/null
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now_ms() { date +%s%3N; }
log() { echo "$*" | tee -a "$out"; }
fail() { echo "bench/cluster.sh: $*" >&2; exit 1; }

declare -a port pid
read -r port[0] port[1] port[2] port[3] < <(python3 "$helper" ports 4)
join="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"
common=(--no-dns --no-grpc --log "${ROSTER_LOG:-warn}" --max-instances 1000000 --max-instances-per-service 100000)

run_bin=$bin
start() { # start N [ARGS...]: node N (0 = the lone node) on CPU 0, build $run_bin
  local n=$1; shift
  taskset -c 0 "$run_bin" serve --http-addr "127.0.0.1:${port[$n]}" "${common[@]}" --data-dir "$work/data$n" "$@" \
    >> "$work/log$n" 2>&1 &
  pid[$n]=$!
  echo "${pid[$n]}" > "$work/pids/$n"
}
start_node() { # start_node N [HEARTBEAT]: a cluster node (default heartbeat without one)
  local hb=()
  [ -n "${2:-}" ] && hb=(--raft-heartbeat "$2")
  start "$1" --bootstrap-expect 3 --join "$join" "${hb[@]}" --cluster-token bench-cluster-token-0123
}
stop() { # stop N: SIGKILL node N if it runs
  local p=${pid[$1]:-}
  if [ -n "$p" ]; then { kill -9 "$p"; wait "$p"; } 2>/dev/null || true; fi
  pid[$1]=
  rm -f "$work/pids/$1"
}
ready() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${port[$1]}/ready")" = 200 ]; }
wait_for() { # wait_for SECONDS WHAT COMMAND...
  local secs=$1 what=$2; shift 2
  local end=$(( $(now_ms) + secs * 1000 ))
  until "$@"; do [ "$(now_ms)" -lt "$end" ] || fail "$what: not within ${secs}s"; sleep 0.1; done
}
all_ready() { local n; for n in 1 2 3; do ready "$n" || return 1; done; }
leader_among() { # sets $leader to the node the listed nodes agree leads
  local l n
  l=$(python3 "$helper" leader $(for n in "$@"; do echo "${port[$n]}"; done)) || return 1
  for n in "$@"; do [ "${port[$n]}" = "$l" ] && { leader=$n; return 0; }; done
  return 1
}
index() { python3 "$helper" index "${port[$1]}"; }
caught_up() { [ "$(index "$1")" -ge "$2" ]; }
fresh_cluster() { # fresh_cluster [HEARTBEAT]: three new nodes, empty data dirs
  local n
  for n in 1 2 3; do stop "$n"; rm -rf "$work/data$n"; done
  for n in 1 2 3; do start_node "$n" "${1:-}"; done
  wait_for 30 "cluster ready" all_ready
  wait_for 15 "a leader" leader_among 1 2 3
}
wrk_run() { # wrk_run LABEL NODE BUILD ROUND
  local line
  line=$(taskset -c 1 wrk -t1 -c$conns -d"$dur" -s bench/register.lua "http://127.0.0.1:${port[$2]}" | grep '^RESULT') \
    || fail "wrk against $1 printed no RESULT"
  log "register build=$3 round=$4 target=$1 connections=$conns $line"
}
field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<< "$1"; }

use_etcd=0
if [ "${ETCD:-1}" != 0 ] && command -v etcd >/dev/null; then use_etcd=1; fi
declare -a eport epeer
if [ $use_etcd = 1 ]; then
  read -r eport[0] eport[1] eport[2] eport[3] epeer[0] epeer[1] epeer[2] epeer[3] < <(python3 "$helper" ports 8)
fi
etcd_start() { # etcd_start N: member N (0 = a lone member) on CPU 0, new data dir
  local n=$1 cluster
  if [ "$n" = 0 ]; then cluster="e0=http://127.0.0.1:${epeer[0]}"
  else cluster="e1=http://127.0.0.1:${epeer[1]},e2=http://127.0.0.1:${epeer[2]},e3=http://127.0.0.1:${epeer[3]}"; fi
  rm -rf "$work/etcd$n"
  taskset -c 0 etcd --name "e$n" --data-dir "$work/etcd$n" --log-level error \
    --listen-client-urls "http://127.0.0.1:${eport[$n]}" --advertise-client-urls "http://127.0.0.1:${eport[$n]}" \
    --listen-peer-urls "http://127.0.0.1:${epeer[$n]}" --initial-advertise-peer-urls "http://127.0.0.1:${epeer[$n]}" \
    --initial-cluster "$cluster" --initial-cluster-state new >> "$work/etcd-log$n" 2>&1 &
  epid[$n]=$!
  echo "${epid[$n]}" > "$work/pids/etcd$n"
}
etcd_stop() { local p=${epid[$1]:-}; if [ -n "$p" ]; then { kill -9 "$p"; wait "$p"; } 2>/dev/null || true; fi; epid[$1]=; rm -f "$work/pids/etcd$1"; }
etcd_status() { curl -s -m 2 -X POST "http://127.0.0.1:${eport[$1]}/v3/maintenance/status" -d '{}'; }
etcd_ready() { etcd_status "$1" | grep -q '"leader"'; }
etcd_is_leader() { local s; s=$(etcd_status "$1"); [ -n "$s" ] && [ "$(sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p' <<< "$s")" = "$(sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p' <<< "$s")" ]; }
etcd_run() { # etcd_run LABEL MEMBER ROUND
  local line
  line=$(taskset -c 1 wrk -t1 -c$conns -d"$dur" -s bench/etcd_put.lua "http://127.0.0.1:${eport[$2]}" | grep '^RESULT') \
    || fail "wrk against etcd $1 printed no RESULT"
  log "register build=etcd round=$3 target=$1 connections=$conns $line"
}
etcd_round() { # etcd_round ROUND
  local n l f
  etcd_start 0; wait_for 30 "lone etcd ready" etcd_ready 0
  etcd_run single-durable 0 "$1"; etcd_stop 0
  for target in cluster-leader cluster-follower; do
    for n in 1 2 3; do etcd_start "$n"; done
    for n in 1 2 3; do wait_for 30 "etcd member $n ready" etcd_ready "$n"; done
    l=; for n in 1 2 3; do etcd_is_leader "$n" && l=$n; done
    [ -n "$l" ] || fail "no etcd leader"
    f=1; [ "$l" = 1 ] && f=2
    if [ $target = cluster-leader ]; then etcd_run $target "$l" "$1"; else etcd_run $target "$f" "$1"; fi
    for n in 1 2 3; do etcd_stop "$n"; done
  done
}

log "# bench/cluster.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs; every server on CPU 0 (taskset -c 0), wrk and the writer on CPU 1"
log "# roster $("$bin" --version 2>/dev/null | head -n1); wrk -t1 -c$conns -d$dur -s bench/register.lua (new instance per request, ttl 60s)"

# Throughput, in rounds: one durable node, then a fresh 3-node cluster per
# target (leader, follower); with ROSTER_BIN_BEFORE, the other build's round
# right after each round of this one.
builds=(after); [ -n "$before" ] && builds=(after before)
log "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg); builds: after=$bin${before:+ before=$before}$([ $use_etcd = 1 ] && echo "; etcd $(etcd --version | head -n1 | sed 's/.*: //') with its defaults (fsync per batch)")"
for r in $(seq "$tp_rounds"); do
  for b in "${builds[@]}"; do
    run_bin=$bin; [ "$b" = before ] && run_bin=$before
    rm -rf "$work/data0"
    start 0
    wait_for 30 "lone node ready" ready 0
    wrk_run single-durable 0 "$b" "$r"
    stop 0
    fresh_cluster
    wrk_run cluster-leader "$leader" "$b" "$r"
    fresh_cluster
    follower=1; [ "$leader" = 1 ] && follower=2
    wrk_run cluster-follower "$follower" "$b" "$r"
    for n in 1 2 3; do stop "$n"; done
  done
  if [ $use_etcd = 1 ]; then etcd_round "$r"; fi
done
run_bin=$bin
tp_builds=("${builds[@]}"); if [ $use_etcd = 1 ]; then tp_builds+=(etcd); fi

# Failover under a steady write load: 3 writer threads, round-robin over the
# nodes with failover to the next one (tests/cluster_fault/helper.py writer).
for b in "${builds[@]}"; do
run_bin=$bin; [ "$b" = before ] && run_bin=$before
for hb in $heartbeats; do
  fresh_cluster "$hb"
  hist="$work/history-$b-$hb"; : > "$hist"; rm -f "$work/stop"
  taskset -c 1 python3 "$helper" writer "$hist" "$work/stop" "${port[1]}" "${port[2]}" "${port[3]}" &
  writer_pid=$!
  has_acks() { [ "$(grep -c '^ack' "$hist" || true)" -ge 50 ]; }
  wait_for 30 "the writer's first writes" has_acks
  for r in $(seq "$rounds"); do
    wait_for 30 "all nodes agreeing on a leader" leader_among 1 2 3
    killed=$leader
    survivors=(); for n in 1 2 3; do [ "$n" != "$killed" ] && survivors+=("${port[$n]}"); done
    sleep 1 # steady load before the kill
    kill -9 "${pid[$killed]}" # the clock is read once the signal is sent
    t_kill=$(now_ms)
    stop "$killed"
    elected=$(taskset -c 1 python3 "$helper" wait-leader "$t_kill" 30 "${survivors[@]}") || fail "no new leader within 30 s"
    acked() { [ "$(python3 "$helper" first-ack "$hist" "$t_kill")" -ge 0 ]; }
    wait_for 30 "a write acknowledged after the kill" acked
    write_ms=$(python3 "$helper" first-ack "$hist" "$t_kill")
    log "failover build=$b heartbeat=$hb round=$r killed_port=${port[$killed]} new_leader_ms=$elected first_write_ms=$write_ms"
    start_node "$killed" "$hb"
    wait_for 30 "restarted node ready" ready "$killed"
    wait_for 30 "a leader after the restart" leader_among 1 2 3
    target=$(index "$leader")
    wait_for 60 "restarted node catching up" caught_up "$killed" "$target"
  done
  touch "$work/stop"
  { wait "$writer_pid"; } 2>/dev/null || true
  writer_pid=
  # Every node holds every acknowledged write, and no leased instance (heart-
  # beated throughout) expired, even briefly, across the failovers.
  sleep 2
  verdict=$(python3 "$helper" check "$hist" "${port[1]}" "${port[2]}" "${port[3]}" 2>&1 | tr '\n' ' ') || true
  log "check build=$b heartbeat=$hb $verdict"
  log "writes build=$b heartbeat=$hb acknowledged=$(grep -c '^ack' "$hist" || true) retried_attempts=$(grep -c '^amb' "$hist" || true) failed=$(grep -cE '^(bad|giveup)' "$hist" || true)"
done
for n in 1 2 3; do stop "$n"; done
done
run_bin=$bin

# The markdown table.
stats() { # stats BUILD HB KEY: min / median / max of KEY over the failover rounds
  grep "^failover build=$1 heartbeat=$2 " "$out" | sed -n "s/.* $3=\([0-9]*\).*/\1/p" | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "%d / %d / %d", a[1], (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}
# Per build and target: the median over rounds of registrations/s, p50, p99,
# and of the ratio to the single durable node of the same build and round.
median() { sort -n | awk '{a[NR]=$1} END {if (NR) printf "%s", (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
{
echo
if [ "$tp_rounds" -gt 0 ]; then
echo "| build | writes, 64 connections, ${dur}, median of $tp_rounds rounds | registrations/s | p50 | p99 | errors | ÷ single durable (median of per-round ratios) |"
echo "|---|---|---:|---:|---:|---:|---:|"
for b in "${tp_builds[@]}"; do
  for t in single-durable cluster-leader cluster-follower; do
    lines=$(grep "^register build=$b round=[0-9]* target=$t " "$out")
    rps=$(while read -r l; do field "$l" rps; done <<< "$lines" | median)
    p50=$(while read -r l; do field "$l" p50_us; done <<< "$lines" | median)
    p99=$(while read -r l; do field "$l" p99_us; done <<< "$lines" | median)
    errs=$(while read -r l; do field "$l" errors; done <<< "$lines" | awk '{s+=$1} END {print s+0}')
    ratio=$(for r in $(seq "$tp_rounds"); do
      one=$(grep "^register build=$b round=$r target=$t " "$out"); base=$(grep "^register build=$b round=$r target=single-durable " "$out")
      echo "$(field "$one" rps) / $(field "$base" rps)" | bc -l; done | median)
    printf '| %s | %s | %s | %.1f ms | %.1f ms | %s | %.2f |\n' "$b" "$t" "$rps" "$(echo "$p50 / 1000" | bc -l)" \
      "$(echo "$p99 / 1000" | bc -l)" "$errs" "$ratio"
  done
done
fi
echo
echo "| build | failover, SIGKILL the leader ($rounds rounds) | new leader in /v1/operator/raft, ms (min / median / max) | first acknowledged write, ms (min / median / max) |"
echo "|---|---|---:|---:|"
for b in "${builds[@]}"; do
  for hb in $heartbeats; do
    echo "| $b | --raft-heartbeat $hb | $(stats "$b" "$hb" new_leader_ms) | $(stats "$b" "$hb" first_write_ms) |"
  done
done
echo
grep '^check ' "$out" | sed 's/^/    /' || true
echo
echo "Servers all on CPU 0 (taskset -c 0), wrk and the writer on CPU 1; the etcd rows' ratios are to one"
echo "lone etcd member; raw lines in $out."
} | tee -a "$out"
