#!/usr/bin/env bash
# Browser tests of the web console (issue 13): Selenium drives a real headless
# Chromium (Debian's chromium and chromium-driver, installed here with apt-get
# when missing; no browser is downloaded) against a real `roster serve`.
#
# Creates a Python venv in ${CARGO_TARGET_DIR:-target}/ui-venv (reused while
# requirements.txt is unchanged), installs the pinned packages, then runs pytest.
# Screenshots of the pages go to ${CARGO_TARGET_DIR:-target}/ui-screenshots/.
# ROSTER_BIN must name the roster binary to test (tests/run.sh sets it to the one
# cargo test has just built); without it the run fails, it never skips.
# Usage: ROSTER_BIN=target/debug/roster tests/ui/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."

if [ -z "${ROSTER_BIN:-}" ]; then
  echo "tests/ui/run.sh: ROSTER_BIN must name the roster binary to test (e.g. ROSTER_BIN=target/debug/roster)" >&2
  exit 1
fi
if [ ! -f "$ROSTER_BIN" ] || [ ! -x "$ROSTER_BIN" ]; then
  echo "tests/ui/run.sh: ROSTER_BIN=$ROSTER_BIN is not an executable file (run cargo build -p roster-cli)" >&2
  exit 1
fi
case "$ROSTER_BIN" in /*) ;; *) ROSTER_BIN="$PWD/$ROSTER_BIN" ;; esac
export ROSTER_BIN

# The browser and its WebDriver, from Debian (root, as in CI, or sudo).
need() { # need COMMAND DEBIAN-PACKAGE
  command -v "$1" >/dev/null && return
  echo "tests/ui/run.sh: installing $1 ($2)" >&2
  sudo=""
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null; then sudo="sudo"; fi
  if ! command -v apt-get >/dev/null; then
    echo "tests/ui/run.sh: $1 is missing and apt-get is not available; install $2 and rerun" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! $sudo apt-get install -y -q "$2"; then
    $sudo apt-get update -q
    $sudo apt-get install -y -q "$2"
  fi
  command -v "$1" >/dev/null || { echo "tests/ui/run.sh: $1 is still missing after installing $2" >&2; exit 1; }
}
need chromium chromium
need chromedriver chromium-driver
CHROMIUM_BIN=$(command -v chromium)
CHROMEDRIVER_BIN=$(command -v chromedriver)
export CHROMIUM_BIN CHROMEDRIVER_BIN

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "tests/ui/run.sh: $python is required (3.11 or newer)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tests/ui/run.sh: Python 3.11 or newer is required, $python is $("$python" --version 2>&1)" >&2; exit 1; }
"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || { echo "tests/ui/run.sh: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2; exit 1; }

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$PWD/$target_dir" ;; esac
venv=$target_dir/ui-venv
req=tests/ui/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tests/ui/run.sh: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

export UI_SCREENSHOTS="$target_dir/ui-screenshots"
mkdir -p "$UI_SCREENSHOTS"
# Selenium must not look for or fetch a driver of its own.
export SE_OFFLINE=true
# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -c tests/ui/pytest.ini tests/ui "$@"
