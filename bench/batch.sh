#!/usr/bin/env bash
# Batch registration throughput (POST /v1/batch, 100 new instances per request)
# in memory and with --data-dir, next to one registration per request in the
# same run. Server pinned to CPU 0, wrk to CPU 1. Instances/s = requests/s × 100.
# Writes bench/results/batch.txt. Usage: bench/batch.sh [duration, default 5s] [connections, default 16]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-5s}
conc=${2:-16}
. bench/common.sh
need wrk wrk
mkdir -p bench/results
out=bench/results/batch.txt
port=18670
wait_ready() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return 0; sleep 0.05; done; return 1; }
# Room for every instance a run registers: a 5 s run at 200,000/s is a million.
start() { taskset -c 0 "$bin" serve --http-addr 127.0.0.1:$port --no-dns --no-grpc --log warn --max-instances 4000000 --max-instances-per-service 100000 "$@" & pid=$!; wait_ready; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
run() { taskset -c 1 wrk -t1 -c"$conc" -d"$1" -s "$2" http://127.0.0.1:$port | grep '^RESULT'; }

{
  echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(nproc) cores, $(uname -r); server on CPU 0, wrk -t1 -c$conc on CPU 1; $dur per run"
  echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out"
for mode in memory disk; do
  args=(); [ $mode = disk ] && { rm -rf "$work/reg"; args=(--data-dir "$work/reg"); }
  start "${args[@]}"
  ROSTER_BENCH_PREFIX=w run 2s bench/batch.lua >/dev/null
  line=$(ROSTER_BENCH_PREFIX=b run "$dur" bench/batch.lua)
  rps=$(sed -E 's/.*rps=([0-9]+).*/\1/' <<<"$line")
  echo "batch100 mode=$mode instances_per_s=$((rps * 100)) $line rss_kib=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)" | tee -a "$out"
  line=$(ROSTER_BENCH_PREFIX=s run "$dur" bench/register.lua)
  echo "single mode=$mode $line" | tee -a "$out"
  stop
done
