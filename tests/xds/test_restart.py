"""The registry restarting under a gRPC client."""

from __future__ import annotations

import time
from pathlib import Path

from conftest import CHANGE_BOUND, warm

ECHO = "xds:///echo"
# gRPC reconnects its xDS stream with backoff (1 s, then x1.6 with jitter).
RECONNECT_BOUND = 20.0


def test_client_keeps_endpoints_while_roster_is_down_and_follows_it_after(
    tmp_path: Path, start_roster, start_client, backends
) -> None:
    roster = start_roster(extra_args=("--data-dir", str(tmp_path / "data")))
    for name in "abc":
        roster.register("echo", f"echo-{name}", backends(name))
    client = start_client(roster)
    warm(client, ECHO, {"a", "b", "c"})

    roster.stop()  # SIGKILL
    # The client keeps what it was last sent: calls still reach every backend.
    assert client.spread(ECHO, 90).keys() == {"a", "b", "c"}

    roster.start(keep_ports=True)  # same ports, same data directory
    deadline = time.monotonic() + RECONNECT_BOUND
    while roster.metric("roster_xds_streams", kind="sotw") < 1:
        assert time.monotonic() < deadline, f"the gRPC client did not reconnect in {RECONNECT_BOUND}s:\n{client.log()}"
        time.sleep(0.1)
    assert client.spread(ECHO, 90).keys() == {"a", "b", "c"}

    # Changes after the restart reach the client.
    t0 = time.monotonic()
    roster.deregister("echo", "echo-c")
    r = client.until(ECHO, "c", present=False, deadline=CHANGE_BOUND + 10)
    assert r["met"], f"c still got calls after the restart and its deregistration: {r}\n{roster.log()}"
    assert r["at"] - t0 <= CHANGE_BOUND, f"c stopped getting calls only {r['at'] - t0:.2f}s later: {r}"
