#!/usr/bin/env bash
# Federation benchmark: the added latency of a cross-datacenter read (?dc=)
# over a simulated WAN of 50 ms round trip (12.5 ms per link end, two links
# each way), and the cost of failover answers (served from the poller's copy)
# against local ones: sequential latency and wrk throughput. Same namespaces
# as tests/federation.sh (root; netem, or a delaying TCP proxy when the
# kernel has no netem). Usage: ROSTER_BIN=target/release/roster bash bench/federation.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${ROSTER_BIN:-target/release/roster}
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "bench/federation: no roster binary at $bin" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "bench/federation: needs root (ip netns)" >&2; exit 1; }
command -v wrk >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk || true; }
work=$(mktemp -d "${TMPDIR:-/tmp}/roster-fed-bench.XXXXXX")
export FED_WORK="$work" FED_BIN="$bin" FED_DELAY=${FEDERATION_DELAY:-12.5ms} FED_LOSS=${FEDERATION_LOSS:-0%}
cleanup() { python3 tests/federation/driver.py teardown 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
python3 tests/federation/driver.py bench
