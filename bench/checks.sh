#!/usr/bin/env bash
# CPU cost of active health checks: N instances, each with one check every
# second (N checks/s), against a local target; the registry pinned to CPU 0,
# the target to CPU 1. Reports the registry's CPU use (utime+stime from
# /proc) over a fixed window, and checks that steady results write nothing
# (the catalog index does not move). Usage: bench/checks.sh [N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
need nginx nginx-light
need curl curl

counts=("${@:-1000 4000}")
port=$((20000 + RANDOM % 10000))
target=$((port + 1))
url="http://127.0.0.1:$port"

# The HTTP target: nginx answering /health from memory, on CPU 1.
mkdir -p "$work/nginx"
cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  server { listen 127.0.0.1:$target; location /health { return 200 "ok"; } }
}
CONF
taskset -c 1 nginx -c "$work/nginx/nginx.conf"
nginx_stop() { nginx -c "$work/nginx/nginx.conf" -s stop 2>/dev/null || true; bench_cleanup; }
trap nginx_stop EXIT

ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
out=bench/out/checks.txt
: > "$out"
for n in ${counts[@]}; do
  for kind in http tcp; do
    taskset -c 0 "$bin" serve --http-addr "127.0.0.1:$port" --no-dns --no-grpc --log warn \
      --check-concurrency 256 --max-instances-per-service 100000 &
    pid=$!
    until curl -sf "$url/ready" >/dev/null; do sleep 0.1; done
    if [ "$kind" = http ]; then check="{\"http\":\"http://127.0.0.1:$target/health\",\"interval\":\"1s\",\"timeout\":\"1s\"}"
    else check="{\"tcp\":\"127.0.0.1:$target\",\"interval\":\"1s\",\"timeout\":\"1s\"}"; fi
    for i in $(seq 1 "$n"); do
      printf '{"address":"10.0.0.1","port":80,"checks":[%s]}' "$check" \
        | curl -sf -X PUT -d @- "$url/v1/services/load/instances/i$i" >/dev/null
    done
    # Let every check run once (first results are writes), then measure.
    sleep 5
    idx0=$(curl -sf "$url/health" | sed 's/.*"index":\([0-9]*\).*/\1/')
    c0=$(cpu "$pid"); sleep 20; c1=$(cpu "$pid")
    idx1=$(curl -sf "$url/health" | sed 's/.*"index":\([0-9]*\).*/\1/')
    runs=$(curl -sf "$url/metrics" | awk -v k="$kind" '$1 ~ "roster_check_runs_total\\{kind=\""k"\",result=\"passing\"\\}" {print $2}')
    pct=$(awk -v a="$c0" -v b="$c1" -v t="$ticks" 'BEGIN {printf "%.1f", (b-a)/t/20*100}')
    per=$(awk -v a="$c0" -v b="$c1" -v t="$ticks" -v n="$n" 'BEGIN {printf "%.1f", (b-a)/t/20/n*1e6}')
    line="$kind checks: $n/s, registry CPU $pct % of one core, $per µs CPU per check, index $idx0 -> $idx1, passing runs so far $runs"
    echo "$line" | tee -a "$out"
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
  done
done
