"""A real `roster serve` and a real headless Chromium for the web console tests.

Every test gets a fresh registry (in memory, no DNS) on a free port of
127.0.0.1, and a fresh browser session driven through Debian's chromedriver.
Selenium is given the driver's and the browser's paths, so it never looks for
or downloads either (Selenium Manager stays idle).

ROSTER_BIN names the binary under test. It is required: without it the run
stops with a usage error; nothing is ever skipped. CHROMIUM_BIN and
CHROMEDRIVER_BIN default to the system's `chromium` and `chromedriver`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

HOST = "127.0.0.1"
# Generous bounds for a noisy 2-core machine: only ever upper limits on waiting
# for a condition, never the expected duration of anything.
STARTUP_TIMEOUT = 30.0
WAIT_TIMEOUT = 20.0

READER = "reader-secret-0123456789"
DEPLOYER = "web-deployer-secret-0123456789"
ADMIN = "ops-admin-secret-0123456789"
TOKENS_TOML = f"""
[[tokens]]
name = "dashboards"
secret = "{READER}"
policies = ["read"]

[[tokens]]
name = "web-deployer"
secret = "{DEPLOYER}"
policies = ["write:web*"]

[[tokens]]
name = "ops"
secret = "{ADMIN}"
policies = ["admin"]
"""


def pytest_configure(config: pytest.Config) -> None:
    binary = os.environ.get("ROSTER_BIN")
    if not binary:
        raise pytest.UsageError(
            "tests/ui: ROSTER_BIN must name the roster binary under test (tests/ui/run.sh and tests/run.sh set it)"
        )
    path = Path(binary)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"tests/ui: ROSTER_BIN={binary} is not an executable file")
    for var, name in (("CHROMIUM_BIN", "chromium"), ("CHROMEDRIVER_BIN", "chromedriver")):
        found = os.environ.get(var) or shutil.which(name)
        if not found:
            raise pytest.UsageError(f"tests/ui: {name} is not installed (tests/ui/run.sh installs it with apt-get)")
        os.environ[var] = found


def pytest_sessionfinish(session, exitstatus):
    """No test may skip, silently or not: a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("tests/ui: tests were skipped; every test must run", red=True)
        session.exitstatus = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Roster:
    """A running `roster serve` on 127.0.0.1:port, with helpers for its API."""

    def __init__(self, binary: str, workdir: Path, extra: list[str]) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log_path = workdir / "roster.log"
        self.token: str | None = None  # sent by api() unless told otherwise

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ui(self) -> str:
        return f"{self.base}/ui/"

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
                    [self.binary, "serve", "--http-addr", f"{HOST}:{self.port}", "--no-dns", "--no-grpc", *self.extra],
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

    def api(self, method: str, path: str, body: Any = None, token: str | None = "default") -> tuple[int, Any]:
        """One call to the HTTP API: (status, parsed JSON body or None)."""
        token = self.token if token == "default" else token
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        return status, (json.loads(raw) if raw.strip() else None)

    def register(self, service: str, instance: str, **spec: Any) -> dict:
        spec.setdefault("address", "10.0.0.1")
        spec.setdefault("port", 8080)
        status, body = self.api("PUT", f"/v1/services/{service}/instances/{instance}", spec)
        assert status in (200, 201), f"register {service}/{instance}: {status} {body}"
        return body


def _server(tmp_path: Path, extra: list[str]) -> Iterator[Roster]:
    server = Roster(os.environ["ROSTER_BIN"], tmp_path, extra)
    server.start()
    try:
        yield server
    finally:
        alive = server.proc is not None and server.proc.poll() is None
        server.stop()
        assert alive, f"roster exited during the test; its log:\n{server.log()}"


@pytest.fixture
def roster(tmp_path: Path) -> Iterator[Roster]:
    """A registry with ACLs off."""
    yield from _server(tmp_path, [])


@pytest.fixture
def acl_roster(tmp_path: Path) -> Iterator[Roster]:
    """A registry with ACLs on and three tokens: read, write:web*, admin."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(TOKENS_TOML)
    for server in _server(tmp_path, ["--acl", "--acl-tokens", str(tokens)]):
        server.token = ADMIN
        yield server


CLUSTER_TOKEN = "ui-test-cluster-token-0123456789"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[list[Roster]]:
    """Three `roster serve` processes forming one Raft cluster (ACLs off)."""
    ports = [free_port() for _ in range(3)]
    join = ",".join(f"{HOST}:{p}" for p in ports)
    nodes = []
    for i, port in enumerate(ports):
        workdir = tmp_path / f"node-{i}"
        workdir.mkdir()
        extra = ["--data-dir", str(workdir / "data"), "--bootstrap-expect", "3", "--join", join,
                 "--cluster-token", CLUSTER_TOKEN, "--raft-heartbeat", "100ms"]
        node = Roster(os.environ["ROSTER_BIN"], workdir, extra)
        node.port = port
        with open(node.log_path, "wb") as log:
            node.proc = subprocess.Popen(
                [node.binary, "serve", "--http-addr", f"{HOST}:{port}", "--no-dns", "--no-grpc", *extra],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
            )
        nodes.append(node)
    try:
        for node in nodes:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                try:
                    with urllib.request.urlopen(f"{node.base}/ready", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                assert time.monotonic() < deadline and node.proc.poll() is None, (
                    f"node on {node.base} did not become ready; its log:\n{node.log()}"
                )
                time.sleep(0.05)
        yield nodes
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = os.environ["CHROMIUM_BIN"]
    for arg in (
        "--headless=new",
        "--no-sandbox",  # Chromium's sandbox does not run as root
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
        "--lang=en-US",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    service = Service(executable_path=os.environ["CHROMEDRIVER_BIN"])
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def shots() -> Callable[[webdriver.Chrome, str], Path]:
    """Saves a screenshot of the page as NAME.png in the screenshot folder."""
    folder = Path(os.environ.get("UI_SCREENSHOTS") or Path(os.environ.get("CARGO_TARGET_DIR", "target")) / "ui-screenshots")
    folder.mkdir(parents=True, exist_ok=True)

    def save(driver: webdriver.Chrome, name: str) -> Path:
        path = folder / f"{name}.png"
        assert driver.save_screenshot(str(path)), f"no screenshot saved at {path}"
        return path

    return save


def wait_until(driver: webdriver.Chrome, what: str, probe: Callable[[webdriver.Chrome], Any], timeout: float = WAIT_TIMEOUT) -> Any:
    """Polls probe(driver) until it returns something truthy; fails with `what` after timeout."""
    try:
        # Live updates redraw parts of the page: an element found a moment ago may
        # be gone, which is a reason to look again, not a failure.
        ignored = (NoSuchElementException, StaleElementReferenceException)
        return WebDriverWait(driver, timeout, poll_frequency=0.1, ignored_exceptions=ignored).until(probe)
    except Exception as e:  # TimeoutException, with the page's text to tell why
        body = driver.find_element("tag name", "body").text[-3000:]
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; the page shows:\n{body}") from e
