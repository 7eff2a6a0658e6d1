#!/usr/bin/env bash
# Compatibility tests of roster's Consul API (issue 8): the py-consul client from
# PyPI against a real `roster serve` on a free port. A venv in
# ${CARGO_TARGET_DIR:-target}/consul-venv; see tests/pytest_suite.sh.
# Usage: ROSTER_BIN=target/debug/roster tests/consul_compat/run.sh [extra pytest args]
set -euo pipefail
exec "$(dirname "$0")/../pytest_suite.sh" consul_compat consul-venv "$@"
