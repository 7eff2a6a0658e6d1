#!/usr/bin/env bash
# Registrations per second in memory vs with --data-dir (fsync per group commit),
# and start-up time with 100,000 stored instances. Server on CPU 0, load on CPU 1.
# Writes bench/out/persistence.txt. Usage: bench/persistence.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10s}
. bench/common.sh
need wrk wrk; need bc bc
out=bench/out/persistence.txt
: > "$out"
port=18660
wait_ready() { for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && return 0; sleep 0.05; done; return 1; }
start() { taskset -c 0 "$bin" serve --http-addr 127.0.0.1:$port --no-dns --no-grpc --log warn --max-instances 1000000 --max-instances-per-service 100000 "$@" & pid=$!; wait_ready; }
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }

for mode in memory disk; do
  for conc in 1 64; do
    args=(); [ $mode = disk ] && { rm -rf "$work/reg"; args=(--data-dir "$work/reg"); }
    start "${args[@]}"
    line=$(taskset -c 1 wrk -t1 -c$conc -d"$dur" -s bench/register.lua http://127.0.0.1:$port | grep '^RESULT')
    echo "register mode=$mode connections=$conc $line" | tee -a "$out"
    stop
  done
done

# Start-up with 100,000 stored instances: restore a generated snapshot into a
# durable registry, stop it, then time restarts until /ready answers.
python3 - "$work/snap.json" <<'PY'
import json, sys
inst = [{"service": f"svc{i % 100}", "id": f"s{i}", "address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}",
         "port": 8080, "tags": ["v1"], "meta": {"zone": "a"}, "weights": {"passing": 1, "warning": 1},
         "ttl_ms": 60000, "deregister_critical_after_ms": 60000, "lease": "passing", "maintenance": None,
         "create_index": 2, "modify_index": 2} for i in range(100000)]
json.dump({"format": "roster-snapshot", "version": 1, "index": 2, "names_index": 2, "instances": inst}, open(sys.argv[1], "w"))
PY
start --data-dir "$work/big"
"$bin" --registry http://127.0.0.1:$port snapshot restore "$work/snap.json" >/dev/null
stop
size=$(du -k "$work/big/catalog.redb" | cut -f1)
for run in 1 2 3; do
  t0=$(date +%s.%N)
  start --data-dir "$work/big"
  t1=$(date +%s.%N)
  n=$(curl -s http://127.0.0.1:$port/health | python3 -c 'import json,sys; print(json.load(sys.stdin)["instances"])')
  rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
  echo "startup run=$run instances=$n seconds=$(echo "$t1 - $t0" | bc) store_kib=$size rss_kib=$rss" | tee -a "$out"
  stop
done
