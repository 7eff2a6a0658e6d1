#!/usr/bin/env bash
# CPU per write on each node: utime + stime from /proc/PID/stat around one
# wrk run of new registrations (bench/register.lua, 64 connections), for a
# lone durable node or a fresh 3-node cluster written through its leader or a
# follower. Servers on CPU 0, wrk on CPU 1, as bench/cluster.sh.
# On a 2-core machine the three nodes share one core, so the cluster's
# throughput there is bounded by the sum of its nodes' CPU per write; on
# three machines it is bounded by the busiest node's (the leader's). Both are
# printed, with the lone node's for comparison.
# Usage: bench/cluster_cpu.sh BIN LABEL single|leader|follower [duration, default 8s]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 label=$2 target=$3 dur=${4:-8s}
helper="$PWD/tests/cluster_fault/helper.py"
work=$(mktemp -d)
common=(--no-dns --no-grpc --log warn --max-instances 1000000 --max-instances-per-service 100000)
pids=()
trap 'kill -9 ${pids[*]} 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
if [ "$target" = single ]; then
  read -r p1 < <(python3 "$helper" ports 1)
  ports=("$p1")
  taskset -c 0 "$bin" serve --http-addr "127.0.0.1:$p1" "${common[@]}" --data-dir "$work/d0" > "$work/log0" 2>&1 &
  pids+=($!)
  for _ in $(seq 300); do curl -sf "http://127.0.0.1:$p1/ready" >/dev/null && break; sleep 0.1; done
  li=0 ti=0
else
  read -r p1 p2 p3 < <(python3 "$helper" ports 3)
  ports=("$p1" "$p2" "$p3")
  join="127.0.0.1:$p1,127.0.0.1:$p2,127.0.0.1:$p3"
  for i in 0 1 2; do
    taskset -c 0 "$bin" serve --http-addr "127.0.0.1:${ports[$i]}" "${common[@]}" --data-dir "$work/d$i" \
      --bootstrap-expect 3 --join "$join" --cluster-token bench-cluster-token-0123 > "$work/log$i" 2>&1 &
    pids+=($!)
  done
  for _ in $(seq 300); do python3 "$helper" leader "$p1" "$p2" "$p3" >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
  l=$(python3 "$helper" leader "$p1" "$p2" "$p3")
  li=0; for i in 0 1 2; do [ "${ports[$i]}" = "$l" ] && li=$i; done
  ti=$li; [ "$target" = follower ] && ti=$(( (li + 1) % 3 ))
fi
declare -a before
for i in "${!pids[@]}"; do before[$i]=$(cpu "${pids[$i]}"); done
line=$(taskset -c 1 wrk -t1 -c64 -d"$dur" -s bench/register.lua "http://127.0.0.1:${ports[$ti]}" | grep '^RESULT')
tck=$(getconf CLK_TCK)
rps=$(sed -n 's/.*rps=\([0-9.]*\).*/\1/p' <<< "$line")
writes=$(echo "$rps * ${dur%s}" | bc -l)
out="CPU label=$label target=$target rps=$rps"
total=0 busiest=0
for i in "${!pids[@]}"; do
  d=$(( $(cpu "${pids[$i]}") - ${before[$i]} ))
  us=$(echo "$d / $tck * 1000000 / $writes" | bc -l)
  role=other; [ "$i" = "$li" ] && role=leader; [ "$i" = "$ti" ] && [ "$ti" != "$li" ] && role=client_follower
  [ "$target" = single ] && role=node
  out+=" ${role}_us=$(printf %.0f "$us")"
  total=$(echo "$total + $us" | bc -l)
  busiest=$(echo "if ($us > $busiest) $us else $busiest" | bc -l)
done
echo "$out total_us=$(printf %.0f "$total") busiest_us=$(printf %.0f "$busiest")"
