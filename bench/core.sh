#!/usr/bin/env bash
# Heartbeat and read throughput of one roster server (release build).
# Server pinned to CPU 0, wrk to CPU 1, 10,000 instances in 100 services.
# Writes bench/out/core.txt and prints a Markdown table row set for RESULTS.md.
# Usage: bench/core.sh [duration, default 10s]
set -euo pipefail
cd "$(dirname "$0")/.."
dur=${1:-10s}
. bench/common.sh
need wrk wrk
port=18650
taskset -c 0 "$bin" serve --http-addr 127.0.0.1:$port --no-dns --no-grpc --log warn &
pid=$!
for _ in $(seq 50); do curl -sf http://127.0.0.1:$port/ready >/dev/null && break; sleep 0.1; done
python3 - "$port" <<'PY'
import http.client, json, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
for i in range(10000):
    body = json.dumps({"address": f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", "port": 8080, "ttl": "60s", "tags": ["v1"]})
    c.request("PUT", f"/v1/services/svc{i % 100}/instances/i{i}", body)
    r = c.getresponse(); r.read()
    assert r.status in (200, 201), r.status
PY
out=bench/out/core.txt
: > "$out"
for run in heartbeat read; do
  line=$(ROSTER_BENCH_INSTANCES=10000 taskset -c 1 wrk -t1 -c64 -d"$dur" -s bench/$run.lua http://127.0.0.1:$port | grep '^RESULT')
  echo "$run $line" | tee -a "$out"
done
rss=$(awk '/VmRSS/ {print $2}' /proc/$pid/status)
echo "rss_kib=$rss" | tee -a "$out"
