#!/usr/bin/env bash
# Acceptance test of federation with real processes on a simulated WAN:
# three datacenters in their own network namespaces (dc1 and dc2 one node
# each, dc3 a 3-node Raft cluster), joined by veth links to a bridge with
# `tc netem` delay and loss on every link. Covers cross-datacenter reads
# (native, Consul, blocking query, DNS), failover when every local instance
# is critical and back, a datacenter cut off (link down) and restored, and a
# remote node killed. Needs root (ip netns, tc); installs iproute2 when
# missing. Takes about a minute; stops by itself.
# Usage: ROSTER_BIN=target/debug/roster bash tests/federation.sh
# FEDERATION_DELAY (default 10ms per link direction), FEDERATION_LOSS (1%),
# FEDERATION_TIMEOUT (seconds, default 150) bound the run; KEEP_WORK=1 keeps logs.
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${ROSTER_BIN:-target/debug/roster}
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "federation: no roster binary at $bin (cargo build -p roster-cli first, or set ROSTER_BIN)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "federation: python3 is required" >&2; exit 1; }
[ "$(id -u)" -eq 0 ] || { echo "federation: FAIL: network namespaces need root" >&2; exit 1; }
if ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  echo "federation: installing iproute2" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q iproute2 || { apt-get update -q && apt-get install -y -q iproute2; }
fi
# No silent skip: a machine without namespaces fails here, saying why.
probe_ns="fedprobe$$"
ip netns add "$probe_ns" || { echo "federation: FAIL: 'ip netns add' does not work here" >&2; exit 1; }
ip netns del "$probe_ns"
# netem may be a module; without it the driver says so and delays by proxy.
modprobe sch_netem 2>/dev/null || true

work=$(mktemp -d "${TMPDIR:-/tmp}/roster-federation.XXXXXX")
export FED_WORK="$work" FED_BIN="$bin"
export FED_DELAY=${FEDERATION_DELAY:-10ms} FED_LOSS=${FEDERATION_LOSS:-1%}
limit=${FEDERATION_TIMEOUT:-150}
driver_pid=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  [ -n "$driver_pid" ] && kill "$driver_pid" 2>/dev/null
  python3 tests/federation/driver.py teardown 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    for f in "$work"/*.log; do
      [ -f "$f" ] || continue
      echo "---- last lines of $(basename "$f") ----" >&2
      tail -n 15 "$f" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "federation: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

python3 tests/federation/driver.py run &
driver_pid=$!
# Watchdog: the driver gets `limit` seconds.
# (sleep's output goes nowhere: an orphaned sleep must not hold a pipe open.)
( sleep "$limit" >/dev/null 2>&1; kill -TERM "$driver_pid" 2>/dev/null && echo "federation: FAIL: still running after ${limit}s" >&2 ) &
guard=$!
set +e
wait "$driver_pid"
rc=$?
set -e
driver_pid=
kill "$guard" 2>/dev/null || true
exit "$rc"
