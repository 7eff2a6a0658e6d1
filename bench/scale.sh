#!/usr/bin/env bash
# One node at 10,000 / 100,000 / 1,000,000 instances, in memory and with
# --data-dir: load time (POST /v1/batch, 1,000 registrations a request), RSS
# and bytes per instance, heartbeat and query rates (wrk), start-up from disk
# until /ready answers, and a snapshot save and restore at the largest size.
# The server runs with its default limits (no --max-instances flags), so a
# default that a deployment of that size would hit shows up here.
# Server on CPU 0, load on CPU 1. Writes bench/results/scale.txt.
# Usage: bench/scale.sh [sizes, default "10000 100000 1000000"] [wrk duration, default 10s]
# ROSTER_SCALE_MODES="memory disk" picks the modes; ROSTER_SCALE_ARGS adds server flags.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=${1:-10000 100000 1000000}
dur=${2:-10s}
modes=${ROSTER_SCALE_MODES:-memory disk}
. bench/common.sh
need wrk wrk
mkdir -p bench/results
out=bench/results/scale.txt
port=18680
url=http://127.0.0.1:$port
read -r -a extra <<<"${ROSTER_SCALE_ARGS:-}"

now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$1" "$2"; }
rss() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
# CPU seconds the server has used (user + system): on a shared machine the
# wall-clock time to /ready depends on the neighbours, this does less.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$pid/stat"; }
wait_ready() { for _ in $(seq 6000); do curl -sf "$url/ready" >/dev/null && return 0; kill -0 "$pid" 2>/dev/null || return 1; sleep 0.02; done; return 1; }
start() { taskset -c "${cores:-0}" "$bin" serve --http-addr 127.0.0.1:$port --no-dns --no-grpc --log warn "${extra[@]}" "$@" & pid=$!; wait_ready; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
wrk_run() { taskset -c 1 wrk -t1 -c16 -d"$dur" "$@" | grep '^RESULT' || echo "RESULT failed"; }
count() { curl -s "$url/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"])'; }

# The loader: instance i is `i<i>` of service `svc<i % 100>` (the names
# bench/heartbeat.lua heartbeats), TTL 1 h so nothing expires during a run,
# plus the 10 instances of service `probe` that the query run reads: the
# same answer at every size. Prints the load time; exits non-zero, with the
# server's answer, on the first refused batch.
cat >"$work/load.py" <<'PY'
import http.client, json, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port)
def post(ops):
    conn.request("POST", "/v1/batch", body='{"ops":[' + ",".join(ops) + "]}",
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"batch refused: {r.status} {body[:400].decode(errors='replace')}")
item = ('{"op":"register","service":"svc%d","id":"i%d","instance":{"address":"10.%d.%d.%d",'
        '"port":8080,"ttl":"1h","tags":["v1"],"meta":{"zone":"z%d"}}}')
t0 = time.monotonic()
post(['{"op":"register","service":"probe","id":"probe%d","instance":{"address":"10.255.0.%d","port":80,"ttl":"1h"}}' % (k, k) for k in range(10)])
for start in range(0, n, 1000):
    post([item % (i % 100, i, i >> 16 & 255, i >> 8 & 255, i & 255, i % 3) for i in range(start, min(n, start + 1000))])
print(f"{time.monotonic() - t0:.3f}")
PY

{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $(git rev-parse --short HEAD) $(nproc) cores (shared), $(uname -r); server on CPU 0, wrk -t1 -c16 on CPU 1, $dur per wrk run"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
biggest=${sizes##* }
for mode in $modes; do
  for n in $sizes; do
    args=(); [ "$mode" = disk ] && { rm -rf "$work/d$n"; args=(--data-dir "$work/d$n"); }
    start "${args[@]}"
    rss0=$(rss)
    if ! load_s=$(python3 "$work/load.py" "$port" "$n" 2>"$work/load.err"); then
      echo "scale mode=$mode instances=$n LOAD FAILED at $(count) instances: $(cat "$work/load.err")" | tee -a "$out"
      stop; continue
    fi
    rss1=$(rss)
    per=$(( (rss1 - rss0) * 1024 / n ))
    echo "scale mode=$mode instances=$(count) load_s=$load_s load_per_s=$(python3 -c "print(round($n / $load_s))") rss_empty_kib=$rss0 rss_kib=$rss1 bytes_per_instance=$per" | tee -a "$out"
    echo "heartbeat mode=$mode instances=$n $(ROSTER_BENCH_INSTANCES=$n wrk_run -s bench/heartbeat.lua "$url")" | tee -a "$out"
    echo "query mode=$mode instances=$n $(wrk_run -s bench/get.lua "$url/v1/services/probe")" | tee -a "$out"
    if [ "$n" = "$biggest" ] && [ "$mode" = memory ]; then
      t0=$(now)
      if "$bin" --registry "$url" snapshot save "$work/snap.json" >/dev/null 2>"$work/snap.err"; then
        echo "snapshot save instances=$n seconds=$(secs "$t0" "$(now)") bytes=$(stat -c %s "$work/snap.json") rss_kib_after=$(rss)" | tee -a "$out"
        stop; start
        t0=$(now)
        if "$bin" --registry "$url" snapshot restore "$work/snap.json" >/dev/null 2>"$work/snap.err"; then
          echo "snapshot restore instances=$(count) seconds=$(secs "$t0" "$(now)") rss_kib=$(rss)" | tee -a "$out"
        else
          echo "snapshot restore instances=$n FAILED: $(head -c 400 "$work/snap.err")" | tee -a "$out"
        fi
      else
        echo "snapshot save instances=$n FAILED: $(head -c 400 "$work/snap.err")" | tee -a "$out"
      fi
      rm -f "$work/snap.json"
    fi
    stop
    if [ "$mode" = disk ]; then
      size=$(du -k "$work/d$n/catalog.redb" | cut -f1)
      # Start-up on one core (as every other server run here) and on both
      # (a restore fills its tables on two threads), alternated.
      for run in 1 2 3; do
        for cpus in 0 0-1; do
          t0=$(now)
          cores=$cpus start "${args[@]}"
          t1=$(now)
          echo "ready mode=disk instances=$(count) run=$run cpus=$cpus seconds=$(secs "$t0" "$t1") cpu_s=$(cpu) store_kib=$size rss_kib=$(rss)" | tee -a "$out"
          stop
        done
      done
      rm -rf "$work/d$n"
    fi
  done
done
