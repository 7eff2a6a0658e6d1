#!/usr/bin/env bash
# Runs one of the pytest suites under tests/ against a roster binary: checks
# ROSTER_BIN (without it the run fails, it never skips) and Python 3.11+ with
# venv, creates a venv in ${CARGO_TARGET_DIR:-target}/VENV (reused while the
# suite's requirements.txt is unchanged), installs the pinned packages, then
# runs pytest with the suite's pytest.ini.
# Usage: tests/pytest_suite.sh SUITE VENV [extra pytest args]
#   SUITE: the directory under tests/ (consul_compat, xds); VENV: the venv's name.
set -euo pipefail
cd "$(dirname "$0")/.."
suite=$1 venv_name=$2
shift 2
me="tests/$suite/run.sh"

if [ -z "${ROSTER_BIN:-}" ]; then
  echo "$me: ROSTER_BIN must name the roster binary to test (e.g. ROSTER_BIN=target/debug/roster)" >&2
  exit 1
fi
if [ ! -f "$ROSTER_BIN" ] || [ ! -x "$ROSTER_BIN" ]; then
  echo "$me: ROSTER_BIN=$ROSTER_BIN is not an executable file (run cargo build -p roster-cli)" >&2
  exit 1
fi
case "$ROSTER_BIN" in /*) ;; *) ROSTER_BIN="$PWD/$ROSTER_BIN" ;; esac
export ROSTER_BIN

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "$me: $python is required (3.11 or newer)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "$me: Python 3.11 or newer is required, $python is $("$python" --version 2>&1)" >&2; exit 1; }
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || { echo "$me: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2; exit 1; }

venv=${CARGO_TARGET_DIR:-target}/$venv_name
req=tests/$suite/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "$me: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -c "tests/$suite/pytest.ini" "tests/$suite" "$@"
