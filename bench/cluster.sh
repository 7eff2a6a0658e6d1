#!/usr/bin/env bash
# A 3-node Raft cluster: registrations per second through the leader and through
# a follower (forwarded), against one durable node (--data-dir, no cluster);
# then failover time under a steady write load (SIGKILL the leader, 5 rounds).
# Every server runs on CPU 0, wrk and the writer on CPU 1 (a 2-core machine).
# Writes bench/out/cluster.txt and prints a markdown table.
# Usage: bench/cluster.sh [wrk duration, default 10s] [failover rounds, default 5]
# ROSTER_BIN=path skips the build; RAFT_HEARTBEATS="250ms 100ms" sets the
# heartbeat periods the failover rounds run with.
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10s}
rounds=${2:-5}
heartbeats=${RAFT_HEARTBEATS:-250ms 100ms}
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
common=(--no-dns --no-grpc --log warn --max-instances 1000000 --max-instances-per-service 100000)

start() { # start N [ARGS...]: node N (0 = the lone node) on CPU 0
  local n=$1; shift
  taskset -c 0 "$bin" serve --http-addr "127.0.0.1:${port[$n]}" "${common[@]}" --data-dir "$work/data$n" "$@" \
    >> "$work/log$n" 2>&1 &
  pid[$n]=$!
  echo "${pid[$n]}" > "$work/pids/$n"
}
start_node() { # start_node N HEARTBEAT: a cluster node
  start "$1" --bootstrap-expect 3 --join "$join" --raft-heartbeat "$2" --cluster-token bench-cluster-token-0123
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
fresh_cluster() { # fresh_cluster HEARTBEAT: three new nodes, empty data dirs
  local n
  for n in 1 2 3; do stop "$n"; rm -rf "$work/data$n"; done
  for n in 1 2 3; do start_node "$n" "$1"; done
  wait_for 30 "cluster ready" all_ready
  wait_for 15 "a leader" leader_among 1 2 3
}
wrk_run() { # wrk_run LABEL NODE
  local line
  line=$(taskset -c 1 wrk -t1 -c$conns -d"$dur" -s bench/register.lua "http://127.0.0.1:${port[$2]}" | grep '^RESULT') \
    || fail "wrk against $1 printed no RESULT"
  log "register target=$1 connections=$conns $line"
}
field() { sed -n "s/.*$2=\([0-9.]*\).*/\1/p" <<< "$1"; }

log "# bench/cluster.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs; every server on CPU 0 (taskset -c 0), wrk and the writer on CPU 1"
log "# roster $("$bin" --version 2>/dev/null | head -n1); wrk -t1 -c$conns -d$dur -s bench/register.lua (new instance per request, ttl 60s)"

# Throughput: one durable node, then a fresh 3-node cluster per target.
start 0
wait_for 30 "lone node ready" ready 0
wrk_run single-durable 0
stop 0
fresh_cluster 250ms
wrk_run cluster-leader "$leader"
fresh_cluster 250ms
follower=1; [ "$leader" = 1 ] && follower=2
wrk_run cluster-follower "$follower"
for n in 1 2 3; do stop "$n"; done

# Failover under a steady write load: 3 writer threads, round-robin over the
# nodes with failover to the next one (tests/cluster_fault/helper.py writer).
for hb in $heartbeats; do
  fresh_cluster "$hb"
  hist="$work/history-$hb"; : > "$hist"; rm -f "$work/stop"
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
    log "failover heartbeat=$hb round=$r killed_port=${port[$killed]} new_leader_ms=$elected first_write_ms=$write_ms"
    start_node "$killed" "$hb"
    wait_for 30 "restarted node ready" ready "$killed"
    wait_for 30 "a leader after the restart" leader_among 1 2 3
    target=$(index "$leader")
    wait_for 60 "restarted node catching up" caught_up "$killed" "$target"
  done
  touch "$work/stop"
  { wait "$writer_pid"; } 2>/dev/null || true
  writer_pid=
  log "writes heartbeat=$hb acknowledged=$(grep -c '^ack' "$hist" || true) retried_attempts=$(grep -c '^amb' "$hist" || true) failed=$(grep -cE '^(bad|giveup)' "$hist" || true)"
done
for n in 1 2 3; do stop "$n"; done

# The markdown table.
stats() { # stats HB KEY: min / median / max of KEY over the failover rounds
  grep "^failover heartbeat=$1 " "$out" | sed -n "s/.* $2=\([0-9]*\).*/\1/p" | sort -n |
    awk '{a[NR]=$1} END {if (NR) printf "%d / %d / %d", a[1], (NR % 2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2), a[NR]}'
}
single=$(grep '^register target=single-durable' "$out")
srps=$(field "$single" rps)
{
echo
echo "| writes, 64 connections, ${dur} | registrations/s | p50 | p99 | errors | vs single durable node |"
echo "|---|---:|---:|---:|---:|---:|"
for t in single-durable cluster-leader cluster-follower; do
  l=$(grep "^register target=$t " "$out")
  rps=$(field "$l" rps)
  printf '| %s | %s | %.1f ms | %.1f ms | %s | %s |\n' "$t" "$rps" "$(echo "$(field "$l" p50_us) / 1000" | bc -l)" \
    "$(echo "$(field "$l" p99_us) / 1000" | bc -l)" "$(field "$l" errors)" "$(printf '%.2f' "$(echo "$rps / $srps" | bc -l)")"
done
echo
echo "| failover, SIGKILL the leader ($rounds rounds) | new leader in /v1/operator/raft, ms (min / median / max) | first acknowledged write, ms (min / median / max) |"
echo "|---|---:|---:|"
for hb in $heartbeats; do
  echo "| --raft-heartbeat $hb | $(stats "$hb" new_leader_ms) | $(stats "$hb" first_write_ms) |"
done
echo
echo "Servers all on CPU 0 (taskset -c 0), wrk and the writer on CPU 1; raw lines in $out."
} | tee -a "$out"
