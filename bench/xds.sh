#!/usr/bin/env bash
# xDS push latency of one roster server (release build): the time from just
# before a change's PUT to each subscribed ADS stream reading the endpoints
# response that carries it. Server pinned to CPU 0, the load generator
# (bench/src/bin/xds_latency.rs, one thread) to CPU 1. One service with 10
# instances; 1,000 then 10,000 state-of-the-world streams subscribed to its
# endpoints (100 per HTTP/2 connection), a fresh server per run; CHANGES changes
# (maintenance on/off) 100 ms apart. The HTTP watch figures of bench/watch.sh are
# the same measurement for SSE streams.
# Writes bench/out/xds.txt (one RESULT line per run plus the server's memory).
# Usage: bench/xds.sh [changes, default 200]
#   (200, not 50: at 1,000 streams one change that lands on a stall of the
#   machine is 2 % of 50 changes' deliveries and decides the p99 by itself;
#   of 200 changes' it is 0.5 %, and the p99 is then the push's own.)
#   PORT=N (HTTP, default 18681; gRPC on N+1)   STREAMS="1000 10000"
#   CLIENT=raw|h2|tonic   the generator's client: raw (default) speaks HTTP/2
#                     itself, one task per connection; h2 is one task per stream
#                     on the h2 crate; tonic decodes every response whole. At
#                     1,000 streams the h2 client spent more CPU per change than
#                     the server and set the figure itself.
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-200}
port=${PORT:-18681}
grpc=$((port + 1))
ulimit -n 20000
target=${CARGO_TARGET_DIR:-target}
roster=${ROSTER_BIN:-$target/release/roster}
if [ -n "${ROSTER_BIN:-}" ]; then cargo build --release -q -p roster-bench --bin xds_latency
else cargo build --release -q -p roster-cli -p roster-bench --bin roster --bin xds_latency; fi
mkdir -p bench/out
out=bench/out/xds.txt
: > "$out"
server=
stop() { [ -n "$server" ] && { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }; server=; }
trap stop EXIT
trap 'exit 130' INT TERM
for streams in ${STREAMS:-1000 10000}; do
  taskset -c 0 "$roster" serve --http-addr 127.0.0.1:$port --grpc-addr 127.0.0.1:$grpc --no-dns --log warn \
    --max-xds-streams 20000 &
  server=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$port/ready >/dev/null && break; sleep 0.1; done
  timeout 900 taskset -c 1 "$target/release/xds_latency" --url http://127.0.0.1:$port --grpc 127.0.0.1:$grpc \
    --streams "$streams" --changes "$changes" --server-pid "$server" --client "${CLIENT:-raw}" | tee -a "$out"
  echo "MEMORY streams=$streams rss_kb=$(awk '/VmRSS/ {print $2}' /proc/$server/status)" | tee -a "$out"
  stop
done
