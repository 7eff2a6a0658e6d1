#!/usr/bin/env bash
# Heartbeats in a 3-node cluster: through the leader and through a follower
# (forwarded to the leader), with the CPU each node spends per heartbeat.
# N instances with a 1 h TTL (svc<i % 100>/i<i>, bench/heartbeat.lua's names)
# are registered through the leader in batches of 1,000; then wrk heartbeats
# random ones, first at the leader, then at a follower. Every server on
# CPU 0, wrk on CPU 1 (as bench/cluster.sh). ROSTER_BIN_BEFORE=path runs the
# same rounds with that build too, alternated.
# Writes bench/out/cluster_heartbeat.txt.
# Usage: bench/cluster_heartbeat.sh [wrk duration, default 5s] [instances, default 10000] [rounds, default 2]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5s}
n=${2:-10000}
rounds=${3:-2}
. bench/common.sh
need wrk wrk
helper="$PWD/tests/cluster_fault/helper.py"
mkdir -p bench/out
out=bench/out/cluster_heartbeat.txt
builds=("after=$bin")
[ -n "${ROSTER_BIN_BEFORE:-}" ] && builds=("before=$ROSTER_BIN_BEFORE" "${builds[@]}")

declare -a port pid
read -r port[1] port[2] port[3] < <(python3 "$helper" ports 3)
join="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"
stop_all() {
  local k
  for k in 1 2 3; do
    if [ -n "${pid[$k]:-}" ]; then { kill -9 "${pid[$k]}"; wait "${pid[$k]}"; } 2>/dev/null || true; fi
    pid[$k]=
  done
}
trap stop_all EXIT
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat"; }
ready() { [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "http://127.0.0.1:$1/ready")" = 200 ]; }

cat >"$work/load.py" <<'PY'
import http.client, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
item = ('{"op":"register","service":"svc%d","id":"i%d","instance":{"address":"10.%d.%d.%d",'
        '"port":8080,"ttl":"1h"}}')
for start in range(0, n, 1000):
    ops = [item % (i % 100, i, i >> 16 & 255, i >> 8 & 255, i & 255) for i in range(start, min(n, start + 1000))]
    conn.request("POST", "/v1/batch", body='{"ops":[' + ",".join(ops) + "]}",
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"batch refused: {r.status} {body[:400].decode(errors='replace')}")
PY

{
  echo "# bench/cluster_heartbeat.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) $(nproc) CPUs; servers on CPU 0, wrk -t1 -c64 on CPU 1, $dur per run, $n instances"
  echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg); builds: ${builds[*]}"
} | tee "$out"
for r in $(seq "$rounds"); do
  for b in "${builds[@]}"; do
    name=${b%%=*} exe=${b#*=}
    stop_all
    for k in 1 2 3; do
      rm -rf "$work/data$k"
      taskset -c 0 "$exe" serve --http-addr "127.0.0.1:${port[$k]}" --no-dns --no-grpc --log warn \
        --data-dir "$work/data$k" --bootstrap-expect 3 --join "$join" \
        --cluster-token bench-cluster-token-0123 >>"$work/log$k" 2>&1 &
      pid[$k]=$!
    done
    for _ in $(seq 300); do ready "${port[1]}" && ready "${port[2]}" && ready "${port[3]}" && break; sleep 0.1; done
    lp=$(python3 "$helper" leader "${port[1]}" "${port[2]}" "${port[3]}")
    for k in 1 2 3; do if [ "${port[$k]}" = "$lp" ]; then leader=$k; fi; done
    follower=$(( leader % 3 + 1 ))
    python3 "$work/load.py" "$lp" "$n"
    sleep 1
    for target in leader follower; do
      t=$leader; [ $target = follower ] && t=$follower
      before=(); for k in 1 2 3; do before[$k]=$(cpu "${pid[$k]}"); done
      line=$(ROSTER_BENCH_INSTANCES=$n taskset -c 1 wrk -t1 -c64 -d"$dur" -s bench/heartbeat.lua "http://127.0.0.1:${port[$t]}" | grep '^RESULT')
      rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$line")
      reqs=$(sed -E 's/.*requests=([0-9]+).*/\1/' <<<"$line")
      per() { python3 -c "import sys; print(round((float(sys.argv[2]) - float(sys.argv[1])) * 1e6 / max(1, int(sys.argv[3]))))" "$1" "$2" "$reqs"; }
      l_us=$(per "${before[$leader]}" "$(cpu "${pid[$leader]}")")
      f_us=$(per "${before[$follower]}" "$(cpu "${pid[$follower]}")")
      o=$(( 6 - leader - follower ))
      o_us=$(per "${before[$o]}" "$(cpu "${pid[$o]}")")
      echo "heartbeat build=$name round=$r target=$target leader_cpu_us=$l_us follower_cpu_us=$f_us other_cpu_us=$o_us $line" | tee -a "$out"
    done
  done
done
stop_all
