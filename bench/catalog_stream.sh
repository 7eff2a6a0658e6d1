#!/usr/bin/env bash
# One catalog stream (GET /v1/catalog/watch) following every service of a
# catalog of SERVICES services (one instance each): change-to-delta latency and
# bytes per change (bench/src/bin/catalog_stream.rs, a current-thread runtime).
# Server pinned to CPU 0, the load generator to CPU 1; a fresh server per run.
# Writes bench/out/catalog-stream.txt (one RESULT line per run plus the
# server's memory) and prints Markdown rows for RESULTS.md.
# Usage: bench/catalog_stream.sh [changes, default 200]
#   SERVICES="1000 10000"   catalog sizes, one run each (default both)
#   INTERVAL_MS=20          time between changes
#   PORT=N                  listen port (default 18672)
#   CARGO_TARGET_DIR, ROSTER_BIN as for cargo and bench/common.sh
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-200}
port=${PORT:-18672}
target=${CARGO_TARGET_DIR:-target}
roster=${ROSTER_BIN:-$target/release/roster}
if [ -n "${ROSTER_BIN:-}" ]; then cargo build --release -q -p roster-bench --bin catalog_stream
else cargo build --release -q -p roster-cli -p roster-bench --bin roster --bin catalog_stream; fi
mkdir -p bench/out
out=bench/out/catalog-stream.txt
: > "$out"

server=
stop() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi; server=; }
trap stop EXIT
trap 'exit 130' INT TERM

run() {
  local services=$1 log
  log=$(mktemp)
  if curl -s -o /dev/null "http://127.0.0.1:$port/"; then
    echo "port $port is in use; set PORT" >&2; exit 1
  fi
  taskset -c 0 "$roster" serve --http-addr "127.0.0.1:$port" --log warn --no-dns --no-grpc &
  server=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/ready" >/dev/null && break; sleep 0.1; done
  curl -sf "http://127.0.0.1:$port/ready" >/dev/null || { echo "server did not start" >&2; exit 1; }
  if ! timeout 600 taskset -c 1 "$target/release/catalog_stream" --url "http://127.0.0.1:$port" \
      --services "$services" --changes "$changes" --interval-ms "${INTERVAL_MS:-20}" > "$log"; then
    echo "catalog_stream failed" >&2; cat "$log" >&2; exit 1
  fi
  echo "$(grep '^RESULT' "$log") server_rss_kib=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")" | tee -a "$out"
  rm -f "$log"
  stop
}

for s in ${SERVICES:-1000 10000}; do run "$s"; done

echo
echo "| services followed | changes | p50 | p90 | p99 | max | missed | snapshot bytes | bytes per change (mean / max) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
awk '/^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    printf "| %s | %s | %s ms | %s ms | %s ms | %s ms | %s | %s | %s / %s |\n",
      v["services"], v["changes"], v["p50_ms"], v["p90_ms"], v["p99_ms"], v["max_ms"],
      v["missed"], v["snapshot_bytes"], v["delta_bytes_mean"], v["delta_bytes_max"]
  }' "$out"
