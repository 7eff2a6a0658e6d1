"""Catalog changes reach gRPC clients as they happen: maintenance, a critical
check, an expired lease, a new instance, a deregistration, the last instance
leaving and coming back.

Each wait is bounded: "gone" means the last WINDOW calls all reached other
backends, and the first of those calls must come within CHANGE_BOUND seconds of
the HTTP API accepting the change."""

from __future__ import annotations

import threading
import time

from conftest import CHANGE_BOUND, WINDOW, Echo, warm

ECHO = "xds:///echo"


def assert_gone(echo: Echo, name: str, since: float, what: str) -> None:
    r = echo.client.until(ECHO, name, present=False, deadline=CHANGE_BOUND + 10)
    assert r["met"], f"{what}: {name} still got calls 10s after the bound: {r}\n{echo.roster.log()}"
    took = r["at"] - since
    assert took <= CHANGE_BOUND, f"{what}: {name} stopped getting calls only {took:.2f}s later: {r}"
    after = echo.client.spread(ECHO, 60)
    assert name not in after, f"{what}: {name} got calls again: {after}"


def assert_back(echo: Echo, name: str, since: float, what: str) -> None:
    r = echo.client.until(ECHO, name, present=True, deadline=CHANGE_BOUND + 10)
    assert r["met"], f"{what}: {name} got no call 10s after the bound: {r}\n{echo.roster.log()}"
    took = r["at"] - since
    assert took <= CHANGE_BOUND, f"{what}: {name} got calls only {took:.2f}s later: {r}"


def test_maintenance_takes_an_instance_out_and_back(echo: Echo) -> None:
    warm(echo.client, ECHO, {"a", "b", "c"})
    t0 = time.monotonic()
    echo.roster.api("PUT", "/v1/services/echo/instances/echo-a/maintenance", {"enabled": True, "reason": "test"})
    assert_gone(echo, "a", t0, "maintenance on")

    t0 = time.monotonic()
    echo.roster.api("PUT", "/v1/services/echo/instances/echo-a/maintenance", {"enabled": False})
    assert_back(echo, "a", t0, "maintenance off")


def test_critical_check_takes_an_instance_out_and_back(echo: Echo, backends) -> None:
    d = backends("d")
    echo.roster.register("echo", "echo-d", d, checks=[{"id": "ready", "ttl": "10m", "initial_status": "passing"}])
    warm(echo.client, ECHO, {"a", "b", "c", "d"})
    t0 = time.monotonic()
    echo.roster.api("PUT", "/v1/services/echo/instances/echo-d/checks/ready/fail", {"output": "test"})
    assert_gone(echo, "d", t0, "check critical")

    t0 = time.monotonic()
    echo.roster.api("PUT", "/v1/services/echo/instances/echo-d/checks/ready/pass")
    assert_back(echo, "d", t0, "check passing again")


def test_expired_lease_takes_an_instance_out(echo: Echo, backends) -> None:
    ttl = 2.0
    d = backends("d")
    echo.roster.register("echo", "echo-d", d, ttl=f"{ttl:g}s")
    # Heartbeat while the client finds d, then stop: the lease runs out `ttl`
    # after the last heartbeat.
    stop = threading.Event()
    last = [time.monotonic()]

    def heartbeat() -> None:
        while not stop.wait(0.3):
            echo.roster.api("PUT", "/v1/services/echo/instances/echo-d/heartbeat")
            last[0] = time.monotonic()

    beat = threading.Thread(target=heartbeat, daemon=True)
    beat.start()
    try:
        warm(echo.client, ECHO, {"a", "b", "c", "d"})
    finally:
        stop.set()
        beat.join(timeout=30)
    r = echo.client.until(ECHO, "d", present=False, deadline=ttl + CHANGE_BOUND + 10)
    assert r["met"], f"d still got calls long after its lease ran out: {r}\n{echo.roster.log()}"
    took = r["at"] - last[0]
    assert took <= ttl + CHANGE_BOUND, f"d stopped getting calls {took:.2f}s after its last heartbeat (ttl {ttl}s): {r}"


def test_new_instance_gets_its_share(echo: Echo, backends) -> None:
    warm(echo.client, ECHO, {"a", "b", "c"})
    t0 = time.monotonic()
    echo.roster.register("echo", "echo-d", backends("d"))
    assert_back(echo, "d", t0, "new registration")
    hits = echo.client.spread(ECHO, 400)
    for name in "abcd":
        assert 80 <= hits.get(name, 0) <= 120, f"round robin over 4 equal backends: {hits}"


def test_deregistered_instance_stops_getting_calls(echo: Echo) -> None:
    warm(echo.client, ECHO, {"a", "b", "c"})
    t0 = time.monotonic()
    echo.roster.deregister("echo", "echo-c")
    assert_gone(echo, "c", t0, "deregistration")
    assert echo.client.spread(ECHO, 3 * WINDOW).keys() == {"a", "b"}


def test_last_instance_leaving_and_coming_back(roster, client, backends) -> None:
    solo = backends("solo")
    roster.register("lonely", "lonely-1", solo)
    warm(client, "xds:///lonely", {"solo"})

    # The service is gone from the catalog, so its listener is gone: calls
    # fail with gRPC's does-not-exist, at once (no 15 s resource timer: the
    # client had the listener and roster's response no longer carries it).
    t0 = time.monotonic()
    roster.deregister("lonely", "lonely-1")
    deadline = t0 + CHANGE_BOUND + 10
    while True:
        out = client.calls("xds:///lonely", 5, timeout=2)
        gone = [e for e in out["errors"] if e.startswith("UNAVAILABLE") and "does not exist" in e]
        if gone:
            break
        assert time.monotonic() < deadline, f"calls still work after the last instance left: {out}"
    took = time.monotonic() - t0
    assert took <= CHANGE_BOUND + 0.5, f"the listener went away only {took:.2f}s later: {out}"
    assert "lonely" in gone[0], gone

    t0 = time.monotonic()
    roster.register("lonely", "lonely-2", solo)
    r = client.until("xds:///lonely", "solo", present=True, deadline=CHANGE_BOUND + 10)
    assert r["met"], f"the service came back but calls do not reach it: {r}\n{client.log()}"
    assert r["at"] - t0 <= CHANGE_BOUND, f"calls resumed only {r['at'] - t0:.2f}s later: {r}"


def test_maintenance_under_unequal_weights(roster, client, backends) -> None:
    # Unequal weights make each endpoint its own locality; one that drains
    # must leave the others at their weights (1:3), not take calls or shares.
    for name, weight in (("a", 1), ("b", 3), ("c", 3)):
        roster.register("uneven", f"uneven-{name}", backends(name), weights={"passing": weight})
    warm(client, "xds:///uneven", {"a", "b", "c"})
    t0 = time.monotonic()
    roster.api("PUT", "/v1/services/uneven/instances/uneven-b/maintenance", {"enabled": True})
    r = client.until("xds:///uneven", "b", present=False, deadline=CHANGE_BOUND + 10)
    assert r["met"] and r["at"] - t0 <= CHANGE_BOUND, f"b in maintenance still got calls: {r}"
    hits = client.spread("xds:///uneven", 400)
    assert "b" not in hits, hits
    assert 0.65 <= hits.get("c", 0) / 400 <= 0.85, f"a:c should be 1:3 with b draining: {hits}"
