"""A real `roster serve`, real gRPC backends and a real gRPC xDS client per test.

Each test gets:
- a fresh registry (in memory, no DNS) with its HTTP API and its gRPC (xDS)
  server on free ports of 127.0.0.1;
- Python gRPC backends (`grpc.server` with a generic handler, bytes in and
  out) that answer `/echo.Echo/Who` with their own name, started in this
  process, registered in roster through its native HTTP API;
- a gRPC client in its own process (xds_client.py) whose GRPC_XDS_BOOTSTRAP
  names that registry. grpcio reads the bootstrap when it creates its xDS
  client and keeps those per process, so a process per test is what gives each
  test its own registry, node id and token; this process never opens an xDS
  channel itself.

Tests that need several registries take `cluster` instead: three roster
processes forming one Raft cluster, whose nodes a bootstrap may name.

After every test, roster must still be running and no gRPC client may have
rejected (NACKed) anything it sent, per roster's own metric
`roster_xds_nacks_total`.

ROSTER_BIN names the binary under test. It is required: without it the run
stops with a usage error; nothing is ever skipped.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import queue
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

HERE = Path(__file__).resolve().parent
HOST = "127.0.0.1"
# Generous bounds for a noisy 2-core machine, only ever used as upper limits on
# waiting for something, never as the expected duration of anything.
STARTUP_TIMEOUT = 30.0
REPLY_TIMEOUT = 60.0
# How long after roster's HTTP API has accepted a change a gRPC client may keep
# sending calls the old way (roster pushes at once; gRPC applies at once; this
# is the margin for a loaded machine).
CHANGE_BOUND = 2.0
# Calls in a row that must all miss a backend before it counts as gone.
WINDOW = 30


def pytest_configure(config: pytest.Config) -> None:
    binary = os.environ.get("ROSTER_BIN")
    if not binary:
        raise pytest.UsageError(
            "tests/xds: ROSTER_BIN must name the roster binary under test (tests/xds/run.sh sets it)"
        )
    path = Path(binary)
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise pytest.UsageError(f"tests/xds: ROSTER_BIN={binary} is not an executable file")


def pytest_sessionfinish(session, exitstatus):
    """No test may skip, silently or not: a skip fails the run."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        reporter.write_line("tests/xds: tests were skipped; every test must run", red=True)
        session.exitstatus = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --- roster ------------------------------------------------------------------


class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed."""

    def __init__(self, workdir: Path) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roster xds test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "roster")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca = workdir / "ca.pem"
        self.cert = workdir / "server.pem"
        self.key = workdir / "server-key.pem"
        self.ca.write_bytes(ca.public_bytes(pem))
        self.cert.write_bytes(cert.public_bytes(pem))
        self.key.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )


class Roster:
    """A running `roster serve` with its HTTP API on http_port and xDS on grpc_port."""

    def __init__(self, binary: str, workdir: Path, extra_args: tuple[str, ...] = (),
                 tls: Tls | None = None, token: str | None = None) -> None:
        self.binary = binary
        self.workdir = workdir
        self.extra_args = extra_args
        self.tls = tls
        self.token = token  # sent on every API call of the test, when ACLs are on
        self.proc: subprocess.Popen | None = None
        self.http_port = 0
        self.grpc_port = 0
        self.log_path = workdir / "roster.log"
        self.expect_nacks = False
        self._ssl = ssl.create_default_context(cafile=str(tls.ca)) if tls else None

    @property
    def base(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.http_port}"

    def log(self) -> str:
        return tail(self.log_path)

    def start(self, keep_ports: bool = False) -> None:
        """Starts roster on free ports, or (keep_ports) on the ports it had, as a
        restarted registry would be found by its clients."""
        # Ports are free when chosen but could be taken before roster binds
        # them: a few attempts with fresh ones rule that out.
        for _ in range(3):
            if not keep_ports:
                self.http_port, self.grpc_port = free_port(), free_port()
            self.spawn()
            if self.wait_started(time.monotonic() + STARTUP_TIMEOUT):
                return
            self.stop()
        raise AssertionError(f"roster did not become ready on {self.base}; its log:\n{self.log()}")

    def spawn(self) -> None:
        """Starts the process on http_port and grpc_port, without waiting for it."""
        args = [
            self.binary, "serve", "--http-addr", f"{HOST}:{self.http_port}",
            "--grpc-addr", f"{HOST}:{self.grpc_port}", "--no-dns", *self.extra_args,
        ]
        if self.tls:
            args += ["--tls-cert", str(self.tls.cert), "--tls-key", str(self.tls.key)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROSTER_")}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                cwd=self.workdir, env=env,
            )

    def wait_started(self, deadline: float) -> bool:
        """Waits until the process is ready (/ready) and its gRPC port listens;
        false when it exited or the monotonic deadline passed first."""
        while time.monotonic() < deadline and self.alive():
            if self._ready() and self._grpc_listening():
                return True
            time.sleep(0.05)
        return False

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.base}/ready", timeout=2, context=self._ssl) as resp:
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _grpc_listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.grpc_port), timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        """Ends roster with SIGKILL (a crash, as far as its clients can tell)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- the HTTP API --

    def api(self, method: str, path: str, body: Any = None, expect: tuple[int, ...] = (200, 201, 204)) -> Any:
        """One call of the native API; fails the test on a status not in expect."""
        status, text = self.request(method, path, body)
        assert status in expect, f"{method} {path} {body!r}: {status} {text}"
        return json.loads(text) if text.strip() else None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, str]:
        """One call of the native API: (status, body text)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
                status, text = resp.status, resp.read().decode()
        except urllib.error.HTTPError as e:
            status, text = e.code, e.read().decode(errors="replace")
        return status, text

    def register(self, service: str, instance_id: str, backend: Backend, **fields: Any) -> dict:
        body = {"address": HOST, "port": backend.port, **fields}
        return self.api("PUT", f"/v1/services/{service}/instances/{instance_id}", body)

    def deregister(self, service: str, instance_id: str) -> None:
        self.api("DELETE", f"/v1/services/{service}/instances/{instance_id}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        req = urllib.request.Request(self.base + "/metrics")
        with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:
            text = resp.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            series, _, value = line.rpartition(" ")
            if series != name and not series.startswith(name + "{"):
                continue
            if all(f'{k}="{v}"' in series for k, v in labels.items()):
                total += float(value)
        return total


def _check_roster_after(server: Roster) -> None:
    """What every test asserts at its end, about the registry it used."""
    assert server.alive(), f"roster exited during the test; its log:\n{server.log()}"
    if not server.expect_nacks:
        nacks = server.metric("roster_xds_nacks_total")
        assert nacks == 0, f"a gRPC client rejected {nacks} xDS responses; roster's log:\n{server.log()}"


@pytest.fixture
def start_roster(tmp_path: Path) -> Iterator[Callable[..., Roster]]:
    """`start_roster(extra_args=(), tls=None, token=None)` starts a registry;
    every one started is checked and stopped after the test."""
    started: list[Roster] = []

    def start(extra_args: tuple[str, ...] = (), tls: Tls | None = None, token: str | None = None) -> Roster:
        workdir = tmp_path / f"roster-{len(started)}"
        workdir.mkdir()
        server = Roster(os.environ["ROSTER_BIN"], workdir, extra_args, tls, token)
        started.append(server)
        server.start()
        return server

    yield start
    try:
        for server in started:
            _check_roster_after(server)
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def roster(start_roster: Callable[..., Roster]) -> Roster:
    return start_roster()


# --- a 3-node cluster -----------------------------------------------------------

CLUSTER_TOKEN = "xds-cluster-test-token"
# Raft heartbeat of the test clusters: elections take well under a second.
RAFT_HEARTBEAT = "100ms"
# Bound on a new leader being known to the nodes left after one is killed.
ELECTION_BOUND = 20.0


def raft_status(node: Roster) -> dict | None:
    """GET /v1/operator/raft of a node, or None when it does not answer 200."""
    try:
        with urllib.request.urlopen(f"{node.base}/v1/operator/raft", timeout=2) as resp:
            return json.loads(resp.read()) if resp.status == 200 else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


class Cluster:
    """`size` roster processes on 127.0.0.1 forming one Raft cluster
    (--bootstrap-expect, --join, --cluster-token), each with its own data
    directory, HTTP port and gRPC (xDS) port."""

    def __init__(self, binary: str, workdir: Path, size: int = 3) -> None:
        self.nodes: list[Roster] = []
        self.killed: list[Roster] = []  # ended on purpose by the test
        self._binary, self._workdir, self._size = binary, workdir, size

    def start(self) -> None:
        # All ports must be known before any node starts (--join names them
        # all); a port taken meanwhile makes a node exit: start again on fresh
        # ports and data directories.
        for attempt in range(3):
            self.stop()
            ports = [(free_port(), free_port()) for _ in range(self._size)]
            join = ",".join(f"{HOST}:{http}" for http, _ in ports)
            self.nodes = []
            for i, (http, grpc_port) in enumerate(ports, start=1):
                workdir = self._workdir / f"node{i}-try{attempt}"
                workdir.mkdir(parents=True)
                node = Roster(self._binary, workdir, (
                    "--data-dir", str(workdir / "data"), "--bootstrap-expect", str(self._size),
                    "--join", join, "--cluster-token", CLUSTER_TOKEN, "--raft-heartbeat", RAFT_HEARTBEAT,
                ))
                node.http_port, node.grpc_port = http, grpc_port
                self.nodes.append(node)
            for node in self.nodes:
                node.spawn()
            deadline = time.monotonic() + STARTUP_TIMEOUT
            if all(node.wait_started(deadline) for node in self.nodes):
                return
        raise AssertionError(f"the cluster did not form; its logs:\n{self.logs()}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def kill(self, node: Roster) -> None:
        """SIGKILLs a node (a crash); the checks after the test leave it out."""
        node.stop()
        self.killed.append(node)

    def running(self) -> list[Roster]:
        return [n for n in self.nodes if n not in self.killed]

    def leader(self, among: list[Roster] | None = None) -> Roster | None:
        """The node that every node of `among` (default: all running) names as
        leader, when they agree on one of themselves; else None."""
        among = among if among is not None else self.running()
        named = set()
        for node in among:
            st = raft_status(node)
            if st is None:
                return None
            leaders = [m["addr"] for m in st.get("members", []) if m.get("leader")]
            if len(leaders) != 1:
                return None
            named.add(leaders[0])
        if len(named) != 1:
            return None
        addr = named.pop()
        return next((n for n in among if f"{HOST}:{n.http_port}" == addr), None)

    def wait_leader(self, among: list[Roster] | None = None, bound: float = ELECTION_BOUND) -> Roster:
        deadline = time.monotonic() + bound
        while True:
            leader = self.leader(among)
            if leader is not None:
                return leader
            assert time.monotonic() < deadline, f"no leader agreed on within {bound}s; logs:\n{self.logs()}"
            time.sleep(0.05)

    def write(self, node: Roster, method: str, path: str, body: Any = None, bound: float = ELECTION_BOUND) -> Any:
        """A write through `node`, sent again while it answers 503 (no leader
        known yet: the documented answer, with Retry-After); every write is
        idempotent."""
        deadline = time.monotonic() + bound
        while True:
            status, text = node.request(method, path, body)
            if status != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status in (200, 201, 204), f"{method} {path} {body!r} on :{node.http_port}: {status} {text}"
        return json.loads(text) if text.strip() else None

    def logs(self) -> str:
        return "\n".join(f"---- node :{n.http_port} (gRPC :{n.grpc_port}) ----\n{tail(n.log_path, 2500)}"
                         for n in self.nodes)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A running 3-node cluster; after the test every node it did not kill must
    still run and have had no NACK, and every node is stopped."""
    c = Cluster(os.environ["ROSTER_BIN"], tmp_path / "cluster")
    try:
        c.start()
        yield c
        for node in c.running():
            _check_roster_after(node)
    finally:
        c.stop()


# --- backends ----------------------------------------------------------------


class Backend:
    """A gRPC server on a free port of 127.0.0.1 answering `/echo.Echo/Who` with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.calls = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        handler = grpc.method_handlers_generic_handler(
            "echo.Echo", {"Who": grpc.unary_unary_rpc_method_handler(self._who)}
        )
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{HOST}:0")
        assert self.port, f"backend {name} could not bind a port"
        self.server.start()

    def _who(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
        return self.name.encode()

    def stop(self) -> None:
        self.server.stop(grace=None).wait(10)


@pytest.fixture
def backends() -> Iterator[Callable[[str], Backend]]:
    """`backends("a")` starts a backend named a; all are stopped after the test."""
    started: list[Backend] = []

    def start(name: str) -> Backend:
        b = Backend(name)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


# --- the gRPC client ---------------------------------------------------------


def bootstrap(roster: Roster | list[Roster], node_id: str, token_file: Path | None = None) -> dict:
    """gRPC's xDS bootstrap naming `roster` (TLS with its CA when it has one,
    and a bearer token read from token_file when given). A list of registries
    becomes a list of xds_servers: gRPC uses the first, and the next ones for
    what it has not cached while the first is unreachable (gRFC A71)."""
    servers = []
    for r in roster if isinstance(roster, list) else [roster]:
        server: dict[str, Any] = {
            "server_uri": f"{HOST}:{r.grpc_port}",
            "channel_creds": [
                {"type": "tls", "config": {"ca_certificate_file": str(r.tls.ca)}}
                if r.tls
                else {"type": "insecure"}
            ],
            "server_features": ["xds_v3"],
        }
        if token_file is not None:
            # gRFC A97: a JWT read from a file, sent as `authorization: Bearer`.
            server["call_creds"] = [{"type": "jwt_token_file", "config": {"jwt_token_file": str(token_file)}}]
        servers.append(server)
    return {"xds_servers": servers, "node": {"id": node_id}}


class XdsClient:
    """A gRPC client process (xds_client.py) with its own xDS bootstrap."""

    def __init__(self, workdir: Path, config: dict, extra_env: dict[str, str] | None = None) -> None:
        self.bootstrap_path = workdir / "bootstrap.json"
        self.bootstrap_path.write_text(json.dumps(config, indent=2))
        self.log_path = workdir / "client.log"
        env = {
            k: v for k, v in os.environ.items()
            if not k.startswith("GRPC_") and k.lower() not in ("http_proxy", "https_proxy", "grpc_proxy", "all_proxy")
        }
        env["GRPC_XDS_BOOTSTRAP"] = str(self.bootstrap_path)
        if os.environ.get("ROSTER_XDS_TRACE"):
            env["GRPC_TRACE"] = "xds_client,xds_resolver"
            env["GRPC_VERBOSITY"] = "debug"
        else:
            env["GRPC_VERBOSITY"] = "error"
        env.update(extra_env or {})
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "xds_client.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=workdir, env=env, text=True, bufsize=1,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self._receive(STARTUP_TIMEOUT)  # {"ready": true} once grpc is imported

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def log(self) -> str:
        return tail(self.log_path)

    def send(self, **cmd: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def _receive(self, timeout: float) -> dict:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the gRPC client did not answer within {timeout}s; its log:\n{self.log()}") from None
        if line is None:
            raise AssertionError(f"the gRPC client exited ({self.proc.wait()}); its log:\n{self.log()}")
        out = json.loads(line)
        assert "exception" not in out, f"the gRPC client failed: {out['exception']}\n{self.log()}"
        return out

    def receive(self, timeout: float = REPLY_TIMEOUT) -> dict:
        return self._receive(timeout)

    def calls(self, target: str, n: int, timeout: float = 5.0, wait_for_ready: bool = False) -> dict:
        """n calls; {"hits": {backend: count}, "errors": {"CODE: details": count}, "elapsed": s}."""
        self.send(op="calls", target=target, n=n, timeout=timeout, wait_for_ready=wait_for_ready)
        return self.receive()

    def spread(self, target: str, n: int) -> dict[str, int]:
        """n calls that must all succeed; calls per backend."""
        out = self.calls(target, n)
        assert not out["errors"], f"calls to {target} failed: {out['errors']}\n{self.log()}"
        return out["hits"]

    def until(self, target: str, name: str, present: bool, deadline: float, window: int = WINDOW) -> dict:
        self.send(op="until", target=target, name=name, present=present, window=window, deadline=deadline)
        return self.receive(deadline + REPLY_TIMEOUT)

    def calling(self, target: str, bound: float = 60.0) -> Calling:
        """Calls target one call after another in the client process while the
        `with` block runs (at most `bound` seconds); the result is then in
        `.result`, as from calls() plus "start" and "end" (monotonic times)."""
        return Calling(self, target, bound)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self._log.close()


class Calling:
    """See XdsClient.calling. The client process stops when a file appears."""

    def __init__(self, client: XdsClient, target: str, bound: float) -> None:
        self.client, self.target, self.bound = client, target, bound
        self.stop_path = client.bootstrap_path.parent / f"stop-{time.monotonic_ns()}"
        self.result: dict = {}

    def __enter__(self) -> Calling:
        self.client.send(op="run", target=self.target, stop=str(self.stop_path), deadline=self.bound)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop_path.touch()
        if exc_type is None:
            self.result = self.client.receive(self.bound + REPLY_TIMEOUT)
            assert self.result["stopped"], f"calls went on for {self.bound}s without being stopped: {self.result}"


@pytest.fixture
def start_client(tmp_path: Path) -> Iterator[Callable[..., XdsClient]]:
    """`start_client(roster, node_id="...", token_file=None, extra_env=None)`
    starts a gRPC client process bootstrapped to roster (or to a list of
    registries, in order); all are ended after the test."""
    started: list[XdsClient] = []

    def start(roster: Roster | list[Roster], node_id: str = "xds-test", token_file: Path | None = None,
              extra_env: dict[str, str] | None = None) -> XdsClient:
        workdir = tmp_path / f"client-{len(started)}"
        workdir.mkdir()
        c = XdsClient(workdir, bootstrap(roster, node_id, token_file), extra_env)
        started.append(c)
        return c

    yield start
    for c in started:
        c.close()


@pytest.fixture
def client(roster: Roster, start_client: Callable[..., XdsClient]) -> XdsClient:
    return start_client(roster)


class Echo:
    """Three backends a, b, c registered as service `echo` (ids echo-a, ...)."""

    def __init__(self, roster: Roster, client: XdsClient, backends: dict[str, Backend]) -> None:
        self.roster = roster
        self.client = client
        self.backends = backends


@pytest.fixture
def echo(roster: Roster, client: XdsClient, backends: Callable[[str], Backend]) -> Echo:
    started = {name: backends(name) for name in "abc"}
    for name, b in started.items():
        roster.register("echo", f"echo-{name}", b)
    return Echo(roster, client, started)


def warm(client: XdsClient, target: str, names: set[str], deadline: float = 10.0) -> None:
    """Waits until calls to target have reached every backend in names: the
    client has the endpoints and a connection to each, so what follows measures
    the balancing, not connection set-up."""
    for name in sorted(names):
        r = client.until(target, name, present=True, deadline=deadline)
        assert r["met"], f"{target}: no call reached {name} within {deadline}s: {r}\n{client.log()}"


def share(hits: dict[str, int], name: str) -> float:
    return hits.get(name, 0) / sum(hits.values())
