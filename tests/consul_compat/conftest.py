"""A real `roster serve` per test, and helpers shared by the Consul compatibility tests.

Every test gets a fresh registry (in memory, no data dir, no DNS) on a free port
of 127.0.0.1, and a `consul.Consul` client pointed at it: tests never see each
other's registrations, indexes or check schedules. Starting the debug binary
takes a fraction of a second, so this costs little.

ROSTER_BIN names the binary under test. It is required: without it the run
stops with a usage error; nothing is ever skipped.
"""

from __future__ import annotations

import http.server
import os
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import consul
import pytest
import requests

HOST = "127.0.0.1"
# Generous bounds for a noisy 2-core machine: only ever used as upper limits on
# polling a condition, never as the expected duration of anything.
STARTUP_TIMEOUT = 30.0
POLL_TIMEOUT = 20.0


def pytest_configure(config: pytest.Config) -> None:
    binary = os.environ.get("ROSTER_BIN")
    if not binary:
        raise pytest.UsageError(
            "tests/consul_compat: ROSTER_BIN must name the roster binary under test "
            "(tests/consul_compat/run.sh and tests/run.sh set it)"
        )
    path = Path(binary)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"tests/consul_compat: ROSTER_BIN={binary} is not an executable file")


def pytest_sessionfinish(session, exitstatus):
    """No test may skip, silently or not: a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("tests/consul_compat: tests were skipped; every test must run", red=True)
        session.exitstatus = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Roster:
    """A running `roster serve` on 127.0.0.1:port."""

    def __init__(self, binary: str, workdir: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = extra_args
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = workdir / "roster.log"

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self) -> None:
        # The port is free when chosen but could be taken before roster binds it:
        # a few attempts with fresh ports rule that out.
        for _ in range(3):
            self.port = free_port()
            with open(self.log_path, "wb") as log:
                self.proc = subprocess.Popen(
                    [self.binary, "serve", "--http-addr", f"{HOST}:{self.port}", "--no-dns", "--no-grpc", *self.extra_args],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.workdir,
                )
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    with urllib.request.urlopen(f"{self.base}/ready", timeout=2) as resp:
                        if resp.status == 200:
                            return
                except (urllib.error.URLError, OSError):
                    pass
                time.sleep(0.05)
            self.stop()
        raise AssertionError(f"roster did not become ready on {self.base}; its log:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None


@pytest.fixture
def roster(tmp_path: Path) -> Iterator[Roster]:
    server = Roster(os.environ["ROSTER_BIN"], tmp_path)
    server.start()
    try:
        yield server
    finally:
        alive = server.proc is not None and server.proc.poll() is None
        server.stop()
        assert alive, f"roster exited during the test; its log:\n{server.log()}"


@pytest.fixture
def acl_roster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], Roster]]:
    """Starts a registry with ACLs on: `acl_roster(tokens_toml)` writes the token
    file and runs `roster serve --acl --acl-tokens FILE`. Neither roster nor
    py-consul may take a token from this machine's environment (py-consul reads
    CONSUL_HTTP_TOKEN over its token= argument)."""
    monkeypatch.delenv("CONSUL_HTTP_TOKEN", raising=False)
    for name in ("ROSTER_ACL", "ROSTER_ACL_TOKENS", "ROSTER_ACL_TOKENS_FILE"):
        monkeypatch.delenv(name, raising=False)
    started: list[Roster] = []

    def start(tokens_toml: str) -> Roster:
        workdir = tmp_path / f"acl-{len(started)}"
        workdir.mkdir()
        tokens = workdir / "tokens.toml"
        tokens.write_text(tokens_toml)
        server = Roster(os.environ["ROSTER_BIN"], workdir, ("--acl", "--acl-tokens", str(tokens)))
        server.start()
        started.append(server)
        return server

    yield start
    dead = [s.log() for s in started if s.proc is None or s.proc.poll() is not None]
    for server in started:
        server.stop()
    assert not dead, f"roster exited during the test; its log:\n{dead[0]}"


@pytest.fixture
def c(roster: Roster) -> consul.Consul:
    """A py-consul client of the fresh registry."""
    return consul.Consul(host=HOST, port=roster.port)


@pytest.fixture
def client_factory(roster: Roster) -> Callable[[], consul.Consul]:
    """More clients (one per thread: a requests session is not thread-safe)."""
    return lambda: consul.Consul(host=HOST, port=roster.port)


# --- helpers -----------------------------------------------------------------


def wait_for(what: str, probe: Callable[[], Any], timeout: float = POLL_TIMEOUT, every: float = 0.1) -> Any:
    """Polls probe() until it returns something truthy and returns that; fails after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(every)


def raw(roster: Roster, method: str, path: str, **kwargs) -> requests.Response:
    """A plain HTTP request, for what py-consul has no call for or hides (headers, status)."""
    return requests.request(method, roster.base + path, timeout=30, **kwargs)


def index_of(roster: Roster, path: str, **params) -> int:
    resp = raw(roster, "GET", path, params=params)
    assert resp.status_code == 200, f"GET {path}: {resp.status_code} {resp.text}"
    assert "X-Consul-Index" in resp.headers, f"GET {path}: no X-Consul-Index header: {dict(resp.headers)}"
    return int(resp.headers["X-Consul-Index"])


def service_checks(entry_or_checks: Any, service_id: str) -> dict[str, dict]:
    """The checks of one service instance, by CheckID (node-level checks left out)."""
    checks = entry_or_checks["Checks"] if isinstance(entry_or_checks, dict) else entry_or_checks
    return {ch["CheckID"]: ch for ch in checks if ch.get("ServiceID") == service_id}


def ids(entries: list[dict]) -> set[str]:
    """Service IDs of /v1/health/service entries."""
    return {e["Service"]["ID"] for e in entries}


class FlipServer:
    """A local HTTP server whose /health answers a status that the test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b"all good"
        self.requests = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                owner.requests += 1
                status, body = owner.status, owner.body
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/health"

    def set(self, status: int, body: bytes) -> None:
        self.body = body
        self.status = status

    def __enter__(self) -> FlipServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def flip_server() -> Iterator[FlipServer]:
    with FlipServer() as s:
        yield s


@pytest.fixture
def closed_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, never listening)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    yield port
    s.close()

