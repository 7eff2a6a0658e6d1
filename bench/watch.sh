#!/usr/bin/env bash
# Watch change-to-notification latency of one roster server (release build).
# Server pinned to CPU 0, the load generator (bench/src/bin/watch_latency.rs, a
# current-thread runtime) to CPU 1. One service with 10 instances; 1,000 then
# 10,000 watch streams on it, a fresh server per run; CHANGES changes (maintenance
# on/off) 100 ms apart.
# Writes bench/out/watch.txt (one RESULT line per run plus the server's memory),
# bench/out/watch-N.txt (one line per change) and prints Markdown rows for RESULTS.md.
# Usage: bench/watch.sh [changes, default 50]
#   PERF=1 bench/watch.sh   also profiles the server for 4 s of the 10,000-watcher
#                           run: bench/out/watch-perf.data and watch-perf.txt
#   PORT=N                  listen port (default 18671)
#   WATCHERS="1000 10000"   the watcher counts, one run each (default both)
#   PER_CONNECTION=N        streams share HTTP/2 connections, N to one (default 0:
#                           one HTTP/1.1 connection per stream)
#   INTERVAL_MS=N           time between changes (default 100; a change must be
#                           delivered to every watcher before the next)
#   CARGO_TARGET_DIR, ROSTER_BIN as for cargo and bench/common.sh
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-50}
port=${PORT:-18671}
# 10,000 streams take 10,000 descriptors in each process.
ulimit -n 20000
target=${CARGO_TARGET_DIR:-target}
roster=${ROSTER_BIN:-$target/release/roster}
if [ -n "${ROSTER_BIN:-}" ]; then cargo build --release -q -p roster-bench --bin watch_latency
else cargo build --release -q -p roster-cli -p roster-bench; fi
mkdir -p bench/out
# No DNS listener: it is not measured, and its port may be taken.
serve_flags=()
if "$roster" serve --help | grep -q -- --no-dns; then serve_flags+=(--no-dns); fi
if "$roster" serve --help | grep -q -- --no-grpc; then serve_flags+=(--no-grpc); fi
# 10,000 streams and the writer: above the default connection limit (10,000).
if "$roster" serve --help | grep -q -- --max-connections; then serve_flags+=(--max-connections 30000); fi
out=bench/out/watch.txt
: > "$out"

server= gen= perf=
stop() {
  for p in $perf $gen $server; do kill "$p" 2>/dev/null || true; done
  for p in $perf $gen $server; do wait "$p" 2>/dev/null || true; done
  perf= gen= server=
}
trap stop EXIT
trap 'exit 130' INT TERM

run() {
  local watchers=$1 log=bench/out/watch-$1.log
  if curl -s -o /dev/null http://127.0.0.1:$port/; then
    echo "port $port is in use; set PORT" >&2; exit 1
  fi
  # Room for every stream, whatever --max-watchers defaults to.
  taskset -c 0 "$roster" serve --http-addr 127.0.0.1:$port --log warn "${serve_flags[@]}" \
    --max-watchers $((watchers + 1000)) &
  server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/ready >/dev/null && break; sleep 0.1; done
  if ! kill -0 "$server" 2>/dev/null || ! curl -sf http://127.0.0.1:$port/ready >/dev/null; then
    echo "server did not start" >&2; exit 1
  fi
  timeout 900 taskset -c 1 "$target/release/watch_latency" --url http://127.0.0.1:$port \
    --watchers "$watchers" --changes "$changes" --server-pid "$server" \
    --per-connection "${PER_CONNECTION:-0}" --interval-ms "${INTERVAL_MS:-100}" \
    --detail bench/out/watch-$watchers.txt > "$log" &
  gen=$!
  if [ "${PERF:-0}" = 1 ] && [ "$watchers" -ge 10000 ]; then
    until grep -q '^CHANGES' "$log"; do
      kill -0 "$gen" 2>/dev/null || break
      sleep 0.05
    done
    perf record -q -g -p "$server" -o bench/out/watch-perf.data -- sleep 4 2>/dev/null &
    perf=$!
    wait "$perf" || true
    perf=
  fi
  wait "$gen" || { echo "watch_latency failed (see $log)" >&2; gen=; exit 1; }
  gen=
  local rss
  rss=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  echo "$(grep '^RESULT' "$log") server_rss_kib=$rss" | tee -a "$out"
  kill "$server"; wait "$server" || true
  server=
}

for w in ${WATCHERS:-1000 10000}; do run "$w"; done

if [ -f bench/out/watch-perf.data ] && [ "${PERF:-0}" = 1 ]; then
  perf report -i bench/out/watch-perf.data --no-children --sort symbol --stdio 2>/dev/null \
    | grep -v '^$' | head -60 > bench/out/watch-perf.txt || true
fi

echo
echo "| watchers | per connection | changes | p50 | p90 | p99 | max | missed deliveries | saw the final change | server RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|"
awk '
  function ms(us) { return sprintf("%.1f ms", us / 1000) }
  function th(n) { n = sprintf("%d", n); while (n ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", n); return n }
  /^RESULT/ {
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    conn = v["per_connection"] > 0 ? v["per_connection"] " (HTTP/2)" : "1 (HTTP/1.1)"
    printf "| %s | %s | %d | %s | %s | %s | %s | %s of %s | %s of %s | %.0f MB |\n",
      th(v["watchers"]), conn, v["changes"], ms(v["p50_us"]), ms(v["p90_us"]), ms(v["p99_us"]),
      ms(v["max_us"]), th(v["missing"]), th(v["watchers"] * v["changes"]), th(v["final_seen"]), th(v["watchers"]),
      v["server_rss_kib"] / 1024
  }' "$out"
