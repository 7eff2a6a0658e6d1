# Sourced by the bench scripts: installs missing tools, builds (or takes) the
# release binary, and gives each run a work dir and a server pid that are cleaned
# up on exit. Sets: bin, work, pid (the caller sets pid when it starts a server).

# need COMMAND PACKAGE: install a Debian package when COMMAND is missing.
need() {
  command -v "$1" >/dev/null && return
  apt-get install -y -q "$2" >/dev/null || { apt-get update -q && apt-get install -y -q "$2"; }
}

# The binary under test: $ROSTER_BIN, or a fresh release build.
bin=${ROSTER_BIN:-${CARGO_TARGET_DIR:-target}/release/roster}
[ -n "${ROSTER_BIN:-}" ] || cargo build --release -q -p roster-cli
mkdir -p bench/out

work=$(mktemp -d)
pid=
bench_cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap bench_cleanup EXIT
