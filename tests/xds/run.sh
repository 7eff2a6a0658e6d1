#!/usr/bin/env bash
# End-to-end tests of roster's xDS control plane with a real gRPC client: grpcio
# (C core) resolving xds:///NAME against a real `roster serve`, calling real
# Python gRPC backends registered in it.
#
# Creates a Python venv in ${CARGO_TARGET_DIR:-target}/xds-venv (reused while
# requirements.txt is unchanged), installs the pinned packages, then runs pytest.
# ROSTER_BIN must name the roster binary to test (tests/run.sh sets it to the one
# cargo test has just built); without it the run fails, it never skips.
# Usage: ROSTER_BIN=target/debug/roster tests/xds/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${ROSTER_BIN:-}" ]; then
  echo "tests/xds/run.sh: ROSTER_BIN must name the roster binary to test (e.g. ROSTER_BIN=target/debug/roster)" >&2
  exit 1
fi
if [ ! -f "$ROSTER_BIN" ] || [ ! -x "$ROSTER_BIN" ]; then
  echo "tests/xds/run.sh: ROSTER_BIN=$ROSTER_BIN is not an executable file (run cargo build -p roster-registry)" >&2
  exit 1
fi
case "$ROSTER_BIN" in /*) ;; *) ROSTER_BIN="$PWD/$ROSTER_BIN" ;; esac
export ROSTER_BIN

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "tests/xds/run.sh: $python is required (3.11 or newer)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tests/xds/run.sh: Python 3.11 or newer is required, $python is $("$python" --version 2>&1)" >&2; exit 1; }
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || { echo "tests/xds/run.sh: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2; exit 1; }

venv=${CARGO_TARGET_DIR:-target}/xds-venv
req=tests/xds/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tests/xds/run.sh: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -c tests/xds/pytest.ini tests/xds "$@"
