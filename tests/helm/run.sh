#!/usr/bin/env bash
# Tests of the Helm chart (helm/roster) and of the container's command line:
# lint, render, Kubernetes schema validation, yamllint, values schema, and the
# real roster binary started with the rendered StatefulSet's args.
#
# Creates a Python venv in target/helm-venv (reused while requirements.txt is
# unchanged), installs the pinned tools from PyPI, then runs pytest.
# Usage: tests/helm/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/../.."

python=${PYTHON:-python3}
command -v "$python" >/dev/null || { echo "tests/helm/run.sh: $python is required (3.11 or newer)" >&2; exit 1; }
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "tests/helm/run.sh: Python 3.11 or newer is required, $python is $("$python" --version 2>&1)" >&2; exit 1; }

"$python" -c 'import venv, ensurepip' 2>/dev/null \
  || { echo "tests/helm/run.sh: $python has no venv/ensurepip module (Debian: apt-get install python3-venv)" >&2; exit 1; }

venv=target/helm-venv
req=tests/helm/requirements.txt
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "tests/helm/run.sh: creating $venv" >&2
  rm -rf "$venv"
  "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
  echo "$want" > "$stamp"
fi

# The binary test needs target/debug/roster; conftest.py builds it with cargo
# when cargo is on PATH (a no-op when it is up to date).
# No __pycache__ or .pytest_cache in the source tree.
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -c tests/helm/pytest.ini tests/helm "$@"
