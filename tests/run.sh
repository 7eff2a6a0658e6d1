#!/usr/bin/env bash
# Runs roster's whole test suite: unit, property, HTTP and end-to-end tests.
# It installs whatever outside tools the tests need first, so a test never skips
# because a tool is missing. Usage: tests/run.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

# Outside tools: none are needed yet beyond the Rust toolchain. Tests that need
# dig, a Python venv or Helm install them here when they arrive.
command -v cargo >/dev/null || { echo "tests/run.sh: cargo is required (https://rustup.rs)" >&2; exit 1; }

cargo test --workspace --locked "$@"
