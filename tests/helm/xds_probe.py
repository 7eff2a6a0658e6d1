"""Talks xDS to a running roster, for test_binary.py: one raw ADS exchange, and
a real gRPC client resolving ``xds:///NAME`` through an xDS bootstrap as the
chart's install notes tell users to.

No protobuf compiler or generated code: the request is encoded by hand (a few
length-delimited fields) and the response read with a minimal decoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc

ADS = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
EDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """The (field number, value) pairs of a protobuf message, in order."""
    out, i = [], 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while True:
            byte = buf[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(buf):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            out.append((number, varint()))
        elif wire == 2:
            length = varint()
            out.append((number, buf[i:i + length]))
            i += length
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            out.append((number, buf[i:i + size]))
            i += size
        else:
            raise ValueError(f"wire type {wire} in field {number}")
    return out


def eds_request(name: str, node: str = "roster-helm-test") -> bytes:
    """A DiscoveryRequest (node.id = 2.1, resource_names = 3, type_url = 4)
    for the endpoints of ``name``."""
    return _field(2, _field(1, node.encode())) + _field(3, name.encode()) + _field(4, EDS.encode())


def fetch_endpoints(address: str, name: str, token: str | None, timeout: float = 10) -> list[bytes]:
    """Opens an ADS stream to ``address``, asks for the endpoints of ``name``
    and returns the ClusterLoadAssignment messages of the first response.
    Raises grpc.RpcError when the stream is refused."""
    done = threading.Event()

    def requests():
        yield eds_request(name)
        done.wait(timeout)  # keep the stream open until the answer is read

    metadata = [("authorization", f"Bearer {token}")] if token else None
    with grpc.insecure_channel(address) as channel:
        call = channel.stream_stream(ADS, request_serializer=None, response_deserializer=None)
        responses = call(requests(), metadata=metadata, timeout=timeout)
        try:
            response = next(responses)
        finally:
            done.set()
            responses.cancel()
    parsed = fields(response)
    assert (4, EDS.encode()) in parsed, parsed  # DiscoveryResponse.type_url
    anys = [dict(fields(value)) for number, value in parsed if number == 2]  # resources
    assert all(a[1] == EDS.encode() for a in anys), anys
    return [a[2] for a in anys]


# Run in a process of its own: gRPC reads GRPC_XDS_BOOTSTRAP once per process.
_CLIENT = r"""
import sys
from concurrent import futures
import grpc

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
    "helm.Echo", {"Ping": grpc.unary_unary_rpc_method_handler(lambda req, ctx: b"pong:" + req)}),))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
target = sys.stdin.readline().strip()  # once the backend is registered
with grpc.insecure_channel(target) as channel:
    answer = channel.unary_unary("/helm.Echo/Ping")(b"ping", timeout=30, wait_for_ready=True)
print(answer.decode(), flush=True)
server.stop(0)
"""


def xds_client_round_trip(server_uri: str, name: str, register, tmp_path: Path) -> str:
    """Starts a gRPC backend and client in a separate process whose bootstrap
    names ``server_uri``; ``register(port)`` registers the backend as ``name``
    in roster; the client then calls it through ``xds:///NAME``. Returns what
    the backend answered ("pong:ping")."""
    bootstrap = tmp_path / "xds-bootstrap.json"
    bootstrap.write_text(json.dumps({
        "xds_servers": [{
            "server_uri": server_uri,
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": "roster-helm-test"},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRPC_")}
    env["GRPC_XDS_BOOTSTRAP"] = str(bootstrap)
    proc = subprocess.Popen([sys.executable, "-c", _CLIENT], env=env, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        line = proc.stdout.readline()
        if not line.strip().isdigit():
            proc.kill()
            raise AssertionError(f"the gRPC backend did not start: {line!r} {proc.communicate()[1]}")
        register(int(line))
        out, err = proc.communicate(f"xds:///{name}\n", timeout=60)
    except BaseException:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        raise
    assert proc.returncode == 0, f"xDS client failed ({proc.returncode}): {err}"
    return out.strip()
