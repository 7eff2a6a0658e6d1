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
#                           one HTTP/1.1 connection per stream); the generator
#                           reads each connection's streams in one task, cutting
#                           the frames itself (watch_latency's default --client
#                           raw; WATCH_CLIENT=h2 reads them through the h2 crate)
#   INTERVAL_MS=N           time between changes (default 100; a change must be
#                           delivered to every watcher before the next)
#   ETCD=0                  skips etcd; otherwise, when `etcd` is installed (Debian
#                           etcd-server), each count runs against one etcd member
#                           too, after roster's runs (bench/src/bin/etcd_load.rs,
#                           etcd's gRPC Watch: one stream per watcher, the same
#                           sharing of connections as roster's streams; each
#                           change is a put of one key of the ten)
#   FLOOR=0                 skips the floor; otherwise, with PER_CONNECTION set,
#                           each count also runs against peer_h2_sse (bench/src/
#                           bin/peer_h2_sse.rs): a bare server on the h2 crate that
#                           sends the same SSE frame (the JSON of roster's own
#                           event in the run before) to every stream from its
#                           connection's task, with nothing above HTTP/2: what a
#                           change to N streams costs on this machine at least
#   CARGO_TARGET_DIR, ROSTER_BIN as for cargo and bench/common.sh
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-50}
port=${PORT:-18671}
# 10,000 streams take 10,000 descriptors in each process.
ulimit -n 20000
target=${CARGO_TARGET_DIR:-target}
roster=${ROSTER_BIN:-$target/release/roster}
use_etcd=0
if [ "${ETCD:-1}" != 0 ] && command -v etcd >/dev/null; then
  use_etcd=1
  # etcd-client's build script needs protoc.
  command -v protoc >/dev/null || apt-get install -y -q protobuf-compiler >/dev/null
fi
bench_flags=(--bin watch_latency)
use_floor=0
if [ "${FLOOR:-1}" != 0 ] && [ "${PER_CONNECTION:-0}" != 0 ]; then
  use_floor=1
  bench_flags+=(--bin peer_h2_sse)
fi
if [ $use_etcd = 1 ]; then bench_flags+=(--features etcd --bin etcd_load); fi
if [ -n "${ROSTER_BIN:-}" ]; then cargo build --release -q -p roster-bench "${bench_flags[@]}"
else cargo build --release -q -p roster-cli --bin roster && cargo build --release -q -p roster-bench "${bench_flags[@]}"; fi
mkdir -p bench/out
# No DNS listener: it is not measured, and its port may be taken.
serve_flags=()
if "$roster" serve --help | grep -q -- --no-dns; then serve_flags+=(--no-dns); fi
if "$roster" serve --help | grep -q -- --no-grpc; then serve_flags+=(--no-grpc); fi
# 10,000 streams and the writer: above the default connection limit (10,000).
if "$roster" serve --help | grep -q -- --max-connections; then serve_flags+=(--max-connections 30000); fi
out=bench/out/watch.txt
client_flags=()
if [ -n "${WATCH_CLIENT:-}" ] && [ "${PER_CONNECTION:-0}" != 0 ]; then
  client_flags=(--client "$WATCH_CLIENT")
fi
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
    ${client_flags[@]+"${client_flags[@]}"} --detail bench/out/watch-$watchers.txt > "$log" &
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
  # What the floor sends: this service's event as roster writes it.
  if [ $use_floor = 1 ]; then
    curl -sN --max-time 1 "http://127.0.0.1:$port/v1/watch?service=bench" 2>/dev/null \
      | sed -n 's/^data: //p' | head -1 > bench/out/watch-event.json || true
  fi
  finish watch_latency "$log" server=roster
}

# The same count against peer_h2_sse, sending roster's event of the run before.
run_floor() {
  local watchers=$1 log=bench/out/watch-floor-$1.log
  [ -s bench/out/watch-event.json ] || { echo "no event captured for the floor" >&2; exit 1; }
  taskset -c 0 "$target/release/peer_h2_sse" --addr 127.0.0.1:$port --file bench/out/watch-event.json &
  server=$!
  for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  timeout 900 taskset -c 1 "$target/release/watch_latency" --url http://127.0.0.1:$port \
    --watchers "$watchers" --changes "$changes" --server-pid "$server" --skip-setup \
    --per-connection "$PER_CONNECTION" --interval-ms "${INTERVAL_MS:-100}" \
    ${client_flags[@]+"${client_flags[@]}"} > "$log" &
  gen=$!
  finish watch_latency "$log" server=floor
}

# finish GENERATOR LOG TAGS: waits for the load generator (unless that was done),
# writes its RESULT line with TAGS and the server's memory, and stops the server.
finish() {
  if [ -n "$gen" ]; then wait "$gen" || { echo "$1 failed (see $2)" >&2; gen=; exit 1; }; fi
  gen=
  local rss
  rss=$(awk '/VmRSS/ {print $2}' /proc/$server/status)
  echo "$(grep '^RESULT' "$2") $3 server_rss_kib=$rss" | tee -a "$out"
  kill "$server"; wait "$server" || true
  server=
}

# The same count against one etcd member (its defaults, data on this disk).
run_etcd() {
  local watchers=$1 per=${PER_CONNECTION:-0} log=bench/out/watch-etcd-$1.log conns data url
  conns=$watchers
  if [ "$per" -gt 0 ]; then conns=$(((watchers + per - 1) / per)); fi
  data=$(mktemp -d "${TMPDIR:-/tmp}/roster-bench-etcd.XXXXXX")
  url=http://127.0.0.1:$((port + 2))
  taskset -c 0 etcd --name watch --data-dir "$data" --listen-client-urls "$url" \
    --advertise-client-urls "$url" --listen-peer-urls "http://127.0.0.1:$((port + 3))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((port + 3))" \
    --initial-cluster "watch=http://127.0.0.1:$((port + 3))" --log-level error > "$log.server" 2>&1 &
  server=$!
  for _ in $(seq 100); do curl -sf "$url/health" >/dev/null && break; sleep 0.1; done
  curl -sf "$url/health" >/dev/null || { echo "etcd did not start (see $log.server)" >&2; exit 1; }
  timeout 900 taskset -c 1 "$target/release/etcd_load" watch --endpoint "127.0.0.1:$((port + 2))" \
    --watchers "$watchers" --connections "$conns" --changes "$changes" \
    --interval-ms "${INTERVAL_MS:-100}" --server-pid "$server" > "$log" &
  gen=$!
  finish etcd_load "$log" "per_connection=$per server=etcd"
  rm -rf "$data"
}

for w in ${WATCHERS:-1000 10000}; do
  run "$w"
  if [ $use_floor = 1 ]; then run_floor "$w"; fi
done
if [ $use_etcd = 1 ]; then
  for w in ${WATCHERS:-1000 10000}; do run_etcd "$w"; done
fi

if [ -f bench/out/watch-perf.data ] && [ "${PERF:-0}" = 1 ]; then
  perf report -i bench/out/watch-perf.data --no-children --sort symbol --stdio 2>/dev/null \
    | grep -v '^$' | head -60 > bench/out/watch-perf.txt || true
fi

echo
echo "| server | watchers | per connection | changes | p50 | p90 | p99 | max | missed deliveries | saw the final change | server RSS |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
awk '
  function ms(us) { return sprintf("%.1f ms", us / 1000) }
  function th(n) { n = sprintf("%d", n); while (n ~ /[0-9][0-9][0-9][0-9]/) sub(/[0-9][0-9][0-9]($|,)/, ",&", n); return n }
  /^RESULT/ {
    delete v
    for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    conn = v["per_connection"] > 0 ? v["per_connection"] " (HTTP/2)" : "1 (HTTP/1.1)"
    if (v["server"] == "etcd") conn = (v["per_connection"] > 0 ? v["per_connection"] : 1) " (gRPC)"
    final = v["server"] == "etcd" ? "-" : th(v["final_seen"]) " of " th(v["watchers"])
    printf "| %s | %s | %s | %d | %s | %s | %s | %s | %s of %s | %s | %.0f MB |\n",
      v["server"], th(v["watchers"]), conn, v["changes"], ms(v["p50_us"]), ms(v["p90_us"]), ms(v["p99_us"]),
      ms(v["max_us"]), th(v["missing"]), th(v["watchers"] * v["changes"]), final,
      v["server_rss_kib"] / 1024
  }' "$out"
