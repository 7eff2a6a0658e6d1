"""The rendered StatefulSet's command line, run for real.

Takes the container's args and the probes from the rendered StatefulSet, starts
<repo>/target/debug/roster with exactly those args, and checks that the probe
paths answer 200 on the probe port, that the DNS port answers, over UDP and
TCP, and that the gRPC port serves xDS. Substitutions, all needed to run
outside a pod:

- ``--data-dir=/var/lib/roster`` becomes a fresh temporary directory: the pod
  mounts its claim there, this machine has no such writable directory.
- the ports of ``--http-addr``, ``--dns-addr`` and ``--grpc-addr`` become free
  ports of this machine (the address, 0.0.0.0, stays as rendered): 8500, 8600
  and 8502 may be taken by another registry or test (roster's own default for
  gRPC is 8502 too). The probes are then sent to the substituted HTTP
  port, after checking that they name the port the args listen on.
- with ACLs on, ``--acl-tokens=/etc/roster/acl/tokens.toml`` becomes a
  temporary file holding the ``tokens.toml`` of the rendered Secret (its admin
  token is random on every rendering), after checking that the pod mounts that
  Secret key at that path.

With ACLs on, calls without a token get 401 (reads get 200 when
acl.anonymousPolicies is ["read"]), the register call uses the rendered
Secret's admin-token, and the probes and /metrics still need no token.
The `helm test` pod's register and deregister scripts are also run, with the
local curl, against the binary. Over gRPC, an ADS stream asks for the
registered instance's endpoints (with the admin token when ACLs are on, after
checking that a stream without one is refused unless anonymous reads are
allowed); where no token is needed, a real gRPC client then calls a backend
through ``xds:///NAME`` with a bootstrap naming the gRPC port, as the install
notes say. With roster.grpc.enabled=false the args hold ``--no-grpc`` and
roster starts no gRPC listener (its info log names the one it starts).

Everything else (the flags, their order, the domain, TTL, log filter, limits) is
passed unchanged, so a flag the binary does not accept fails the test.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import grpc
import pytest

from conftest import find, manifests, render, secret_data
from xds_probe import fetch_endpoints, fields, xds_client_round_trip


def free_port() -> int:
    """A port free for TCP and UDP on every interface (roster binds both on DNS)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("0.0.0.0", 0))
            port = tcp.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                    udp.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port")


def free_ports(n: int) -> list[int]:
    """``n`` different free ports."""
    ports: list[int] = []
    while len(ports) < n:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def http(method: str, url: str, body: dict | None = None, token: str | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"content-type": "application/json"}
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def flag(args: list[str], name: str) -> str:
    (value,) = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return value


@pytest.mark.parametrize(
    "values",
    [
        {},
        # Non-default ports and DNS and gRPC settings, to show they reach the binary.
        {"containerPorts": {"http": 9500, "dns": 9600, "grpc": 9502},
         "roster": {"dns": {"domain": "registry.internal", "ttl": 7}, "log": "warn", "leaseGrace": "1m",
                    "grpc": {"maxStreams": 100}}},
        # ACLs off: no token anywhere.
        {"acl": {"enabled": False}},
        # Calls without a token may read: the rendered file's [anonymous] table.
        {"acl": {"anonymousPolicies": ["read"]}},
        # No gRPC: --no-grpc, and no gRPC port anywhere.
        {"roster": {"grpc": {"enabled": False}}},
    ],
    ids=["defaults", "custom-ports-and-dns", "acl-disabled", "acl-anonymous-read", "grpc-disabled"],
)
def test_rendered_statefulset_runs_the_real_binary(chart, roster_binary, values, tmp_path):
    objs = manifests(render(chart, values))
    sts = find(objs, "StatefulSet")
    pod_spec = sts["spec"]["template"]["spec"]
    (container,) = pod_spec["containers"]
    assert container["command"][1:] == ["serve"]
    args = list(container["args"])
    acl = values.get("acl", {}).get("enabled", True)
    anonymous = values.get("acl", {}).get("anonymousPolicies", [])
    grpc_on = values.get("roster", {}).get("grpc", {}).get("enabled", True)

    # Probes: paths and ports as rendered, the port resolved through its name.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    probes = {}
    for kind in ("livenessProbe", "readinessProbe"):
        get = container[kind]["httpGet"]
        port = ports[get["port"]] if isinstance(get["port"], str) else get["port"]
        probes[kind] = (get["path"], port)
    assert {path for path, _ in probes.values()} == {"/health", "/ready"}

    http_addr, dns_addr = flag(args, "http-addr"), flag(args, "dns-addr")
    data_dir = flag(args, "data-dir")
    http_host, http_port = http_addr.rsplit(":", 1)
    dns_host, dns_port = dns_addr.rsplit(":", 1)
    assert http_host == dns_host == "0.0.0.0", "the pod must listen on every interface"
    assert {port for _, port in probes.values()} == {int(http_port)}, "probes must hit the HTTP listener"
    assert ports["dns-udp"] == ports["dns-tcp"] == int(dns_port)
    if grpc_on:
        grpc_addr = flag(args, "grpc-addr")
        grpc_host, grpc_port = grpc_addr.rsplit(":", 1)
        assert grpc_host == "0.0.0.0", "the pod must listen on every interface"
        assert ports["grpc"] == int(grpc_port)
        assert "--no-grpc" not in args
    else:
        assert "--no-grpc" in args
        assert not any(a.startswith(("--grpc-addr", "--max-xds-streams")) for a in args), args
        assert "grpc" not in ports
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["data"] == data_dir

    # ACLs: the token file the args name is the rendered Secret's tokens.toml,
    # mounted where the args look for it.
    admin_token = None
    if acl:
        assert "--acl=true" in args
        tokens_path = flag(args, "acl-tokens")
        mount_dir, file_name = tokens_path.rsplit("/", 1)
        (volume,) = [v for v in pod_spec["volumes"] if v["name"] == "acl"]
        assert mounts["acl"] == mount_dir
        assert volume["secret"]["items"] == [{"key": "tokens.toml", "path": file_name}]
        data = secret_data(find(objs, "Secret", volume["secret"]["secretName"]))
        admin_token = data["admin-token"]
        tokens_file = tmp_path / "tokens.toml"
        tokens_file.write_text(data["tokens.toml"])
        tokens_file.chmod(0o440)
    else:
        assert not any(a.startswith("--acl") for a in args), args
        assert [o for _, o in objs if o["kind"] == "Secret"] == []

    # The substitutions (see the module docstring).
    local_http, local_dns, local_grpc = free_ports(3)
    data = tmp_path / "data"
    data.mkdir()
    substitute = {
        f"--http-addr={http_addr}": f"--http-addr={http_host}:{local_http}",
        f"--dns-addr={dns_addr}": f"--dns-addr={dns_host}:{local_dns}",
        f"--data-dir={data_dir}": f"--data-dir={data}",
    }
    if grpc_on:
        substitute[f"--grpc-addr={grpc_addr}"] = f"--grpc-addr={grpc_host}:{local_grpc}"
    if acl:
        substitute[f"--acl-tokens={tokens_path}"] = f"--acl-tokens={tokens_file}"
    run_args = [substitute.get(a, a) for a in args]
    assert sum(a != b for a, b in zip(args, run_args)) == len(substitute) == 3 + grpc_on + acl

    # Nothing from this machine's environment (ROSTER_ACL, ROSTER_ACL_TOKENS, ...)
    # may change what the args say.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROSTER_")}
    log = (tmp_path / "roster.log").open("w+")
    proc = subprocess.Popen([str(roster_binary), "serve", *run_args], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{local_http}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, f"roster exited with {proc.returncode}: {Path(log.name).read_text()}"
            try:
                if http("GET", base + probes["readinessProbe"][0])[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "roster did not become ready in 30s"
            time.sleep(0.1)

        # Probes (and Prometheus' /metrics) answer without a token, ACLs or not.
        for kind, (path, _) in probes.items():
            status, body = http("GET", base + path)
            assert status == 200, f"{kind} {path}: {status} {body!r}"
        assert http("GET", base + "/metrics")[0] == 200

        if acl and anonymous == ["read"]:
            # The binary took the rendered [anonymous] table: reads need no
            # token (natively and on the Consul paths), writes still do.
            assert "[anonymous]" in tokens_file.read_text()
            assert http("GET", base + "/v1/services")[0] == 200
            assert http("GET", base + "/v1/catalog/services")[0] == 200
            assert http("GET", base + "/v1/services", token="x" * 40)[0] == 403
            assert http("PUT", base + "/v1/services/helm-test/instances/helm-test-1",
                        {"address": "10.11.12.13", "port": 8080, "ttl": "60s"})[0] == 401
            assert http("GET", base + "/v1/services", token=admin_token)[0] == 200
        elif acl:
            assert not anonymous
            assert http("GET", base + "/v1/services")[0] == 401
            assert http("GET", base + "/v1/catalog/services")[0] == 401
            assert http("GET", base + "/v1/services", token="x" * 40)[0] == 403
            assert http("PUT", base + "/v1/services/helm-test/instances/helm-test-1",
                        {"address": "10.11.12.13", "port": 8080, "ttl": "60s"})[0] == 401
            assert http("GET", base + "/v1/services", token=admin_token)[0] == 200
        else:
            assert http("GET", base + "/v1/services")[0] == 200

        # The DNS port answers: the zone apex over UDP and TCP...
        domain = flag(args, "dns-domain").rstrip(".") + "."
        ttl = int(flag(args, "dns-ttl"))
        query = dns.message.make_query(domain, dns.rdatatype.SOA)
        for send in (dns.query.udp, dns.query.tcp):
            answer = send(query, "127.0.0.1", port=local_dns, timeout=5)
            assert answer.rcode() == dns.rcode.NOERROR, (send.__name__, answer)
            assert answer.answer and answer.answer[0].rdtype == dns.rdatatype.SOA, (send.__name__, answer)

        # ...and an instance registered over HTTP resolves, as `helm test` does.
        status, body = http("PUT", base + "/v1/services/helm-test/instances/helm-test-1",
                            {"address": "10.11.12.13", "port": 8080, "ttl": "60s"}, token=admin_token)
        assert status == 201, body
        answer = dns.query.udp(dns.message.make_query(f"helm-test.service.{domain}", dns.rdatatype.A),
                               "127.0.0.1", port=local_dns, timeout=5)
        assert answer.rcode() == dns.rcode.NOERROR
        (rrset,) = answer.answer
        assert [r.address for r in rrset] == ["10.11.12.13"]
        assert rrset.ttl == ttl

        # The data dir is where the catalog went.
        assert (data / "catalog.redb").is_file()

        # roster logs (at info) the gRPC listener it starts: none with --no-grpc,
        # whose own default would otherwise be 127.0.0.1:8502.
        if flag(args, "log") == "info":
            assert ("roster gRPC (xDS) listening" in Path(log.name).read_text()) == grpc_on
        if grpc_on:
            check_grpc(f"127.0.0.1:{local_grpc}", base, admin_token, acl and anonymous != ["read"], tmp_path)

        run_helm_test_scripts(objs, base, admin_token, tmp_path)
    finally:
        proc.terminate()
        try:
            code = proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        log.close()
    assert code == 0, f"roster did not stop cleanly on SIGTERM ({code}): {Path(log.name).read_text()}"


def check_grpc(address: str, base: str, admin_token: str | None, token_needed: bool, tmp_path: Path) -> None:
    """The gRPC port serves xDS: the endpoints of the instance registered above
    over a raw ADS stream; without a token the stream is refused exactly when
    ACLs need one; and where none is needed, a gRPC client reaches a backend
    through xds:///NAME with a bootstrap naming the port (the install notes)."""
    if token_needed:
        with pytest.raises(grpc.RpcError) as err:
            fetch_endpoints(address, "helm-test", None)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
        with pytest.raises(grpc.RpcError) as err:
            fetch_endpoints(address, "helm-test", "x" * 40)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, err.value
    (assignment,) = fetch_endpoints(address, "helm-test", admin_token)
    assert dict(fields(assignment))[1] == b"helm-test"  # ClusterLoadAssignment.cluster_name
    assert b"10.11.12.13" in assignment
    if token_needed:
        return

    def register(port: int) -> None:
        status, body = http("PUT", base + "/v1/services/helm-grpc/instances/helm-grpc-1",
                            {"address": "127.0.0.1", "port": port, "ttl": "60s"}, token=admin_token)
        assert status == 201, body

    assert xds_client_round_trip(address, "helm-grpc", register, tmp_path) == "pong:ping"


def run_helm_test_scripts(objs: list, base: str, admin_token: str | None, tmp_path: Path) -> None:
    """Runs the `helm test` pod's register and deregister scripts (sh and the
    local curl, in place of the curl image) against the running registry, with
    the pod's environment: API pointing at it, ROSTER_TOKEN from the Secret."""
    spec = find(objs, "Pod")["spec"]
    register = spec["initContainers"][0]
    (deregister,) = spec["containers"]
    assert register["name"] == "register" and deregister["name"] == "deregister"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ROSTER_", "CURL_"))}
    env.update(HOME=str(tmp_path), POD_NAME="r1-roster-test", POD_IP="10.11.12.14")
    for entry in register["env"]:
        if entry["name"] == "ROSTER_TOKEN":
            assert entry["valueFrom"]["secretKeyRef"]["key"] == "admin-token"
            env["ROSTER_TOKEN"] = admin_token
        elif entry["name"] == "API":
            env["API"] = base  # the Service's address, here the local listener
    assert ("ROSTER_TOKEN" in env) == (admin_token is not None)

    def instances() -> dict[str, str]:
        status, body = http("GET", base + "/v1/services/helm-test", token=admin_token)
        assert status == 200, body
        return {i["id"]: i["address"] for i in json.loads(body)["instances"]}

    before = instances()
    assert "r1-roster-test" not in before
    for container, expected in ((register, {**before, "r1-roster-test": "10.11.12.14"}), (deregister, before)):
        assert container["command"][:2] == ["/bin/sh", "-ec"]
        result = subprocess.run(["/bin/sh", "-ec", container["command"][2]], env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{container['name']}: {result.stdout}{result.stderr}"
        assert instances() == expected, container["name"]


def test_rendered_registrar_command_line_is_accepted_by_the_binary(chart, roster_binary):
    """The sync-k8s Deployment's command and flags parse in the real binary.

    The registrar needs a Kubernetes API to run, so `--help` is appended: clap
    reads every flag before it and refuses an unknown one or a bad value, then
    prints the help instead of starting.
    """
    deploy = find(manifests(render(chart, {"syncCatalog": {"enabled": True}})), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["command"][1:] == ["sync-k8s"]
    args = list(container["args"])
    assert any(a.startswith("--registry=") for a in args)
    run = subprocess.run([str(roster_binary), "sync-k8s", *args, "--help"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    assert "Kubernetes Services" in run.stdout
    bad = subprocess.run([str(roster_binary), "sync-k8s", *args, "--naming=bogus", "--help"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0, "a bad value must be refused, so the check above means something"


@pytest.mark.parametrize("replicas", [3, 5])
def test_cluster_environment_is_known_to_the_binary(chart, roster_binary, replicas):
    """Every ROSTER_* variable the chart sets on a Raft cluster's pods is one
    `roster serve` reads: clap lists each flag's variable in --help as
    "[env: NAME=]". A variable the binary does not know would be ignored
    silently, and the pods would each start as a single-node registry."""
    sts = find(manifests(render(chart, {"replicas": replicas})), "StatefulSet")
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in container["env"] if e["name"].startswith("ROSTER_")]
    assert names == ["ROSTER_ADVERTISE_ADDR", "ROSTER_JOIN", "ROSTER_BOOTSTRAP_EXPECT", "ROSTER_CLUSTER_TOKEN"]
    run = subprocess.run([str(roster_binary), *container["command"][1:], "--help"],
                         capture_output=True, text=True, timeout=30)
    assert run.returncode == 0, run.stderr
    # "[env: NAME]" when the flag hides its value (a secret may).
    listed = set(re.findall(r"\[env: (ROSTER_[A-Z_]+)[=\]]", run.stdout))
    assert "ROSTER_DATA_DIR" in listed, "the help lists variables (so the check below means something)"
    unknown = [name for name in names if name not in listed]
    assert unknown == [], f"roster serve does not read {unknown}"
