"""xDS with ACLs on: the token comes from gRPC's own bootstrap.

grpcio sends a bearer token on its xDS stream through the bootstrap's
`call_creds` of type `jwt_token_file` (gRFC A97; grpcio 1.85 reads it when
GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS is true). The token must be a JWT
(gRPC reads its `exp` claim to know when to read the file again) and gRPC only
sends call credentials over a secure channel, so roster serves TLS here
(--tls-cert/--tls-key also cover its gRPC port) and the token secret in roster's
token file is that JWT string: roster compares secrets, it does not verify JWTs.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

from conftest import Tls, warm

ADMIN = "admin-secret-for-the-xds-tests"
CALL_CREDS = {"GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS": "true"}


def jwt(subject: str) -> str:
    """An unsigned JWT with an expiry an hour ahead (what gRPC requires of the file)."""
    def part(obj: dict) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part({'sub': subject, 'exp': int(time.time()) + 3600})}.c2ln"


def test_xds_stream_needs_a_token_sent_from_the_bootstrap(tmp_path: Path, start_roster, start_client, backends) -> None:
    reader = jwt("xds-reader")
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        "[[tokens]]\n"
        'name = "ops"\n'
        f'secret = "{ADMIN}"\n'
        'policies = ["admin"]\n'
        "\n[[tokens]]\n"
        'name = "xds-reader"\n'
        f'secret = "{reader}"\n'
        'policies = ["read"]\n'
    )
    tls_dir = tmp_path / "tls"
    tls_dir.mkdir()
    roster = start_roster(extra_args=("--acl", "--acl-tokens", str(tokens)), tls=Tls(tls_dir), token=ADMIN)
    for name in "abc":
        roster.register("echo", f"echo-{name}", backends(name))

    good = tmp_path / "reader.jwt"
    good.write_text(reader)
    ok = start_client(roster, node_id="with-token", token_file=good, extra_env=CALL_CREDS)
    warm(ok, "xds:///echo", {"a", "b", "c"})
    assert ok.spread("xds:///echo", 90).keys() == {"a", "b", "c"}

    refused_before = roster.metric("roster_xds_streams_refused_total", result="unauthenticated")
    anonymous = start_client(roster, node_id="no-token", extra_env=CALL_CREDS)
    out = anonymous.calls("xds:///echo", 2, timeout=10)
    assert not out["hits"], f"a client without a token reached backends: {out}"
    [error] = out["errors"]
    assert error.startswith("UNAVAILABLE") and "UNAUTHENTICATED: a token is required" in error, error

    stranger = tmp_path / "stranger.jwt"
    stranger.write_text(jwt("stranger"))
    unknown = start_client(roster, node_id="unknown-token", token_file=stranger, extra_env=CALL_CREDS)
    out = unknown.calls("xds:///echo", 2, timeout=10)
    assert not out["hits"], f"a client with an unknown token reached backends: {out}"
    [error] = out["errors"]
    assert error.startswith("UNAVAILABLE") and "UNAUTHENTICATED: unknown token" in error, error

    assert roster.metric("roster_xds_streams_refused_total", result="unauthenticated") >= refused_before + 2
