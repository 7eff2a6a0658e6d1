#!/usr/bin/env bash
# Fault test of a 3-node roster cluster with real processes: a writer registers
# and deregisters instances through every node while the script SIGKILLs the
# leader, restarts it, and pauses (SIGSTOP) the next leader; the leader's
# list-peers view must read the killed and the paused node unreachable and the
# restarted one reachable and caught up. At the end every
# node must hold every acknowledged registration, none of the acknowledged
# deletions, and the same catalog; three leased (ttl) instances heartbeated
# throughout must never have expired. Takes about 20 s.
# Usage: ROSTER_BIN=target/debug/roster bash tests/cluster_fault.sh
# KEEP_WORK=1 keeps the data dirs, logs and write history (printed path);
# CLUSTER_FAULT_TIMEOUT (seconds, default 240) bounds the whole run.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${ROSTER_BIN:-target/debug/roster}
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "cluster_fault: no roster binary at $bin (cargo build first, or set ROSTER_BIN)" >&2; exit 1; }
command -v curl >/dev/null || { echo "cluster_fault: curl is required" >&2; exit 1; }
command -v python3 >/dev/null || { echo "cluster_fault: python3 is required" >&2; exit 1; }
helper="$PWD/tests/cluster_fault/helper.py"
limit=${CLUSTER_FAULT_TIMEOUT:-240} # seconds before the watchdog stops everything

work=$(mktemp -d "${TMPDIR:-/tmp}/roster-cluster-fault.XXXXXX")
mkdir -p "$work/pids"
hist="$work/history"
: > "$hist"
writer_pid=
guard_pid=
failed=0

now_ms() { date +%s%3N; }
t_begin=$(now_ms)
say() { printf '[cluster_fault %5.1fs] %s\n' "$(( $(now_ms) - t_begin ))e-3" "$*"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  { # (quietly: no "Killed" job notices)
    [ -n "$writer_pid" ] && kill "$writer_pid"
    for f in "$work"/pids/*; do
      [ -e "$f" ] || continue
      p=$(cat "$f")
      kill -CONT "$p"
      kill -9 "$p"
    done
    [ -n "$guard_pid" ] && kill "$guard_pid"
    wait
  } 2>/dev/null
  if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ]; then
    for n in 1 2 3; do
      [ -f "$work/log$n" ] || continue
      echo "---- last lines of node $n (port ${port[$n]}) log ----" >&2
      tail -n 25 "$work/log$n" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
    echo "---- last lines of the write history ----" >&2
    tail -n 10 "$hist" >&2
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "cluster_fault: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

fail() { failed=1; echo "cluster_fault: FAIL: $*" >&2; exit 1; }

# Watchdog: kills the servers and this script when it runs too long, and the
# servers if this script dies without its trap (SIGKILL).
main_pid=$$
(
  end=$(( $(date +%s) + limit ))
  while kill -0 "$main_pid" 2>/dev/null && [ "$(date +%s)" -lt "$end" ]; do sleep 1; done
  if kill -0 "$main_pid" 2>/dev/null; then
    echo "cluster_fault: FAIL: still running after ${limit}s, stopping" >&2
    kill -TERM "$main_pid" 2>/dev/null
    sleep 5
  fi
  for f in "$work"/pids/*; do [ -e "$f" ] && { kill -CONT "$(cat "$f")"; kill -9 "$(cat "$f")"; } 2>/dev/null; done
) &
guard_pid=$!

declare -a port pid
read -r port[1] port[2] port[3] < <(python3 "$helper" ports 3)
join="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"

start_node() { # start_node N: starts (or restarts) node N on its port and data dir
  local n=$1
  ROSTER_LOG=info,openraft=warn "$bin" serve --http-addr "127.0.0.1:${port[$n]}" --no-dns --no-grpc \
    --data-dir "$work/data$n" --bootstrap-expect 3 --join "$join" \
    --cluster-token "cluster-fault-test-token" --raft-heartbeat 100ms --lease-grace 1s \
    >> "$work/log$n" 2>&1 &
  pid[$n]=$!
  echo "${pid[$n]}" > "$work/pids/$n"
}
node_of_port() { local n; for n in 1 2 3; do [ "${port[$n]}" = "$1" ] && echo "$n"; done; }
ready() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:${port[$1]}/ready")" = 200 ]; }
raft() { python3 "$helper" raft "${port[$1]}"; }           # "STATE LEADER_PORT TERM APPLIED" or "down"
index() { python3 "$helper" index "${port[$1]}"; }
peer() { python3 "$helper" peer "${port[$1]}" "${port[$2]}"; }  # how leader $1 sees node $2: "reachable LAG", "unreachable LAG"
seen_as() { # seen_as LEADER NODE STATE [MAX_LAG]: the leader's list-peers view of the node
  local s l
  read -r s l <<< "$(peer "$1" "$2")"
  echo "$s, lag $l" > "$work/last-peer-view"
  [ "$s" = "$3" ] && { [ -z "${4:-}" ] || { [ "$l" != None ] && [ "$l" -le "$4" ]; }; }
}
wait_seen() { # wait_seen SECS WHAT LEADER NODE STATE [MAX_LAG]
  local secs=$1 what=$2; shift 2
  local end=$(( $(now_ms) + secs * 1000 ))
  until seen_as "$@"; do
    [ "$(now_ms)" -lt "$end" ] || fail "$what: not within ${secs}s (last seen: $(cat "$work/last-peer-view"))"
    sleep 0.1
  done
}
alive() { kill -0 "${pid[$1]}" 2>/dev/null || fail "node $1 (port ${port[$1]}) exited; see its log"; }

# wait_for SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_for() {
  local secs=$1 what=$2; shift 2
  local end=$(( $(now_ms) + secs * 1000 ))
  until "$@"; do
    [ "$(now_ms)" -lt "$end" ] || fail "$what: not within ${secs}s"
    sleep 0.2
  done
}

leader_among() { # leader_among N...: sets $leader (a node number) when the nodes agree on one of them
  local l n
  l=$(python3 "$helper" leader $(for n in "$@"; do echo "${port[$n]}"; done)) || return 1
  for n in "$@"; do [ "${port[$n]}" = "$l" ] && { leader=$n; return 0; }; done
  return 1
}
acks() { grep -c '^ack' "$hist" || true; }
acks_since() { awk -v t="$1" '$1 == "ack" && $6 >= t' "$hist" | wc -l; }
writer_alive() { kill -0 "$writer_pid" 2>/dev/null || fail "the writer stopped: $(grep -E '^(bad|giveup)' "$hist" | head -n 3)"; }
caught_up() { # caught_up N TARGET: node N's catalog index reached TARGET
  local i; i=$(index "$1"); [ "$i" -ge "$2" ]
}

# 1. The cluster forms.
for n in 1 2 3; do start_node "$n"; done
say "nodes on ports ${port[1]} ${port[2]} ${port[3]}, data in $work"
all_ready() { local n; for n in 1 2 3; do alive "$n"; ready "$n" || return 1; done; }
wait_for 30 "all three nodes ready" all_ready
wait_for 15 "the nodes agree on a leader" leader_among 1 2 3
say "step 1: cluster formed, leader is node $leader (port ${port[$leader]})"

# 2. Writes through every node (and heartbeats of 3 leased instances).
python3 "$helper" writer "$hist" "$work/stop" "${port[1]}" "${port[2]}" "${port[3]}" &
writer_pid=$!
enough_acks() { writer_alive; [ "$(acks)" -ge "$1" ]; }
wait_for 30 "the writer's first 100 acknowledged writes" enough_acks 100
# The leased instances (ttl 5s, heartbeated) must be older than their ttl
# before the first failover: a new leader that did not re-arm leases would
# expire them.
leases_old() {
  writer_alive
  [ "$(awk -v t=$(( $(now_ms) - 6000 )) '$1 == "ack" && $3 ~ /^lease\// && $7 <= t' "$hist" | wc -l)" -ge 3 ]
}
wait_for 30 "3 leased instances registered over 6 s ago" leases_old
say "step 2: writer running, $(acks) writes acknowledged"

# 3. SIGKILL the leader mid-stream.
killed=$leader
survivors=()
for n in 1 2 3; do [ "$n" != "$killed" ] && survivors+=("$n"); done
# The clock is read after the signal is sent: a write the leader answered just
# before it died must not count as one taken after the kill.
kill -9 "${pid[$killed]}"
t_kill=$(now_ms)
{ wait "${pid[$killed]}"; } 2>/dev/null || true
rm -f "$work/pids/$killed"
say "step 3: killed leader node $killed"
new_leader() { leader_among "${survivors[@]}"; }
wait_for 20 "a new leader among the survivors" new_leader
t_elected=$(now_ms)
acked_after_kill() { writer_alive; [ "$(acks_since "$t_kill")" -ge 1 ]; }
wait_for 20 "a write acknowledged after the leader was killed" acked_after_kill
failover_ms=$(python3 "$helper" first-ack "$hist" "$t_kill")
say "step 3: node $leader leads now (seen after $(( t_elected - t_kill )) ms); first write acknowledged ${failover_ms} ms after the kill"
# The new leader lists the dead node as unreachable at once: it never had an
# answer from it while leading.
wait_seen 2 "the new leader listing killed node $killed as unreachable" "$leader" "$killed" unreachable
[ "$failover_ms" -ge 0 ] && [ "$failover_ms" -lt 20000 ] || fail "failover took ${failover_ms} ms"

# 4a. Restart the killed node; it catches up.
start_node "$killed"
wait_for 30 "restarted node $killed ready" ready "$killed"
target=$(index "$leader")
wait_for 30 "restarted node $killed catching up to index $target" caught_up "$killed" "$target"
wait_for 15 "all three nodes agree on the leader again" leader_among 1 2 3
# The writer keeps the leader busy: up to two entries in flight is caught up.
wait_seen 15 "the leader listing node $killed reachable and caught up" "$leader" "$killed" reachable 2
say "step 4: node $killed restarted and caught up (index >= $target), leader is node $leader"

# 4b. Pause the leader (a partition of one) for at least 5 s.
paused=$leader
others=()
for n in 1 2 3; do [ "$n" != "$paused" ] && others+=("$n"); done
acks_before_pause=$(acks)
kill -STOP "${pid[$paused]}"
t_stop=$(now_ms)
say "step 4: paused (SIGSTOP) leader node $paused"
other_leader() { leader_among "${others[@]}"; }
wait_for 20 "a new leader among the two nodes still running" other_leader
t_elected2=$(now_ms)
acked_after_stop() { writer_alive; [ "$(acks_since "$t_stop")" -ge 1 ]; }
wait_for 20 "a write acknowledged while node $paused is paused" acked_after_stop
wait_seen 5 "the new leader listing paused node $paused as unreachable" "$leader" "$paused" unreachable
pause_failover_ms=$(python3 "$helper" first-ack "$hist" "$t_stop")
while [ $(( $(now_ms) - t_stop )) -lt 5000 ]; do sleep 0.2; done
during_pause=$(( $(acks) - acks_before_pause ))
kill -CONT "${pid[$paused]}"
t_cont=$(now_ms)
say "step 4: resumed node $paused after $(( t_cont - t_stop )) ms; node $leader was elected after $(( t_elected2 - t_stop )) ms; $during_pause writes acknowledged meanwhile (first after $pause_failover_ms ms)"
rejoined() {
  local s l
  alive "$paused"
  read -r s l _ _ <<< "$(raft "$paused")"
  [ "$s" = Follower ] && leader_among 1 2 3 && [ "$leader" != "$paused" ]
}
wait_for 20 "paused node $paused rejoining as a follower" rejoined
target=$(index "$leader")
wait_for 30 "node $paused catching up to index $target" caught_up "$paused" "$target"
say "step 4: node $paused is a follower again and caught up; leader is node $leader"
acked_after_cont() { writer_alive; [ "$(acks_since "$t_cont")" -ge 20 ]; }
wait_for 30 "writes continuing after the resume" acked_after_cont

# 5. Stop the writer; every node converges on the acknowledged history.
touch "$work/stop"
writer_done() { ! kill -0 "$writer_pid" 2>/dev/null; }
wait_for 80 "the writer finishing its last write" writer_done
wait "$writer_pid" || fail "the writer failed: $(grep -E '^(bad|giveup)' "$hist" | head -n 3)"
writer_pid=
same_index() {
  local a b c
  a=$(index 1); b=$(index 2); c=$(index 3)
  [ "$a" -ge 0 ] && [ "$a" = "$b" ] && [ "$b" = "$c" ]
}
wait_for 30 "all nodes at the same catalog index" same_index
# With the writer stopped, the leader lists every node reachable and not behind.
wait_for 15 "all three nodes agree on the leader" leader_among 1 2 3
for n in 1 2 3; do
  [ "$n" = "$leader" ] || wait_seen 10 "the leader listing node $n reachable with lag 0" "$leader" "$n" reachable 0
done
summary=$(python3 "$helper" check "$hist" "${port[1]}" "${port[2]}" "${port[3]}") || { failed=1; echo "$summary" >&2; fail "final check (above)"; }
say "step 5: every node holds every acknowledged write and no acknowledged deletion"

# 6. Summary.
echo "cluster_fault: OK kill_failover_ms=$failover_ms kill_election_seen_ms=$(( t_elected - t_kill )) pause_failover_ms=$pause_failover_ms pause_election_seen_ms=$(( t_elected2 - t_stop )) writes_during_pause=$during_pause $summary elapsed_s=$(( ($(now_ms) - t_begin) / 1000 ))"
