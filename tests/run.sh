#!/usr/bin/env bash
# Runs roster's whole test suite: unit, property, HTTP and end-to-end tests.
# It installs whatever outside tools the tests need first, so a test never skips
# because a tool is missing. Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "tests/run.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

# Outside tools, installed with apt-get when missing (root, as in CI, or sudo):
# dig for tests/tests/it/dns_e2e.rs (dig_queries_the_real_server), curl for the
# chart tests (they run the chart's `helm test` scripts against the binary).
need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return
  echo "tests/run.sh: installing $1 ($2)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
  if ! command -v apt-get >/dev/null; then
    echo "tests/run.sh: $1 is missing and apt-get is not available; install $2 and rerun" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q "$2"; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q "$2"
  fi
  command -v "$1" >/dev/null || { echo "tests/run.sh: $1 is still missing after installing $2" >&2; exit 1; }
}
need dig bind9-dnsutils
need curl curl
need openssl openssl

# The watch tests hold 1,000 streams open (2,000 descriptors in one process).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
  echo "tests/run.sh: the open-files limit is $(ulimit -n); the watch tests need 4096 (raise the hard limit)" >&2
  exit 1
fi

cargo test --workspace --locked "$@"
# The chart tests run the binary that cargo test just built.
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
ROSTER_BIN="$target_dir/debug/roster" bash tests/helm/run.sh
# The Consul compatibility tests (py-consul against the same binary).
ROSTER_BIN="$target_dir/debug/roster" bash tests/consul_compat/run.sh
# A three-process cluster under SIGKILL and SIGSTOP (Python 3 standard library).
ROSTER_BIN="$target_dir/debug/roster" bash tests/cluster_fault.sh
# The same over peer TLS (certificates made with openssl), another CA refused.
ROSTER_BIN="$target_dir/debug/roster" bash tests/cluster_peer_tls.sh
# Three datacenters (one a 3-node cluster) in network namespaces on a
# simulated WAN: cross-DC reads, failover and back, a DC cut off, a node killed.
ROSTER_BIN="$target_dir/debug/roster" bash tests/federation.sh
ROSTER_BIN="$target_dir/debug/roster" bash tests/ui/run.sh
# gRPC's own xDS client (grpcio) calling backends through xds:///NAME.
ROSTER_BIN="$target_dir/debug/roster" bash tests/xds/run.sh
ROSTER_BIN="$target_dir/debug/roster" bash tests/prometheus/run.sh
