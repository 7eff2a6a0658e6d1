#!/usr/bin/env bash
# End-to-end tests of roster's xDS control plane with a real gRPC client: grpcio
# (C core) resolving xds:///NAME against a real `roster serve`, calling real
# Python gRPC backends registered in it. A venv in
# ${CARGO_TARGET_DIR:-target}/xds-venv; see tests/pytest_suite.sh.
# Usage: ROSTER_BIN=target/debug/roster tests/xds/run.sh [extra pytest args]
set -euo pipefail
exec "$(dirname "$0")/../pytest_suite.sh" xds xds-venv "$@"
