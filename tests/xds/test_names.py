"""Which names resolve to what: tag filters, instances without an IP address,
a target that is not registered, and one registered after the client asked."""

from __future__ import annotations

import time

from conftest import warm

# gRPC's does-not-exist timer for a resource it has never received is 15 s
# (roster's answer without the resource is not enough for gRPC: it could be a
# reply to an older request). The bound leaves room for a loaded machine.
DOES_NOT_EXIST_BOUND = 25.0


def test_tag_filter_reaches_only_tagged_instances(roster, client, backends) -> None:
    for name, tags in (("a", ["v2", "eu"]), ("b", ["v2"]), ("c", ["v1"])):
        roster.register("tagged", f"tagged-{name}", backends(name), tags=tags)
    warm(client, "xds:///v2.tagged", {"a", "b"})
    assert client.spread("xds:///v2.tagged", 100).keys() == {"a", "b"}
    warm(client, "xds:///v1.tagged", {"c"})
    assert client.spread("xds:///v1.tagged", 50).keys() == {"c"}
    warm(client, "xds:///tagged", {"a", "b", "c"})
    assert client.spread("xds:///tagged", 90).keys() == {"a", "b", "c"}
    # A tag nobody carries: the service exists, no endpoint matches.
    out = client.calls("xds:///v9.tagged", 3, timeout=5)
    assert not out["hits"], f"v9.tagged has no instance, yet calls were answered: {out}"
    assert all(e.startswith("UNAVAILABLE") for e in out["errors"]), out


def test_instance_with_a_host_name_is_not_served(roster, client, backends) -> None:
    by_ip, by_name = backends("by-ip"), backends("by-name")
    roster.register("named", "named-ip", by_ip)
    roster.register("named", "named-host", by_name, address="localhost")
    warm(client, "xds:///named", {"by-ip"})
    hits = client.spread("xds:///named", 100)
    assert hits == {"by-ip": 100}, hits
    assert by_name.calls == 0, f"the instance registered by host name got {by_name.calls} calls"
    assert by_ip.calls >= 100


def test_unregistered_target_fails_with_does_not_exist(roster, client) -> None:
    start = time.monotonic()
    client.send(op="calls", target="xds:///nope", n=1, timeout=DOES_NOT_EXIST_BOUND + 5, wait_for_ready=False)
    # roster answers the listener request at once, without the resource.
    deadline = start + 10
    while roster.metric("roster_xds_responses_total", kind="lds") < 1:
        assert time.monotonic() < deadline, f"roster sent no LDS response in 10s:\n{roster.log()}"
        time.sleep(0.05)
    out = client.receive(DOES_NOT_EXIST_BOUND + 30)
    took = time.monotonic() - start
    assert not out["hits"], out
    [(error, count)] = out["errors"].items()
    assert error.startswith("UNAVAILABLE:"), error
    assert "LDS resource nope: does not exist" in error, error
    assert took <= DOES_NOT_EXIST_BOUND, f"the call failed only after {took:.1f}s: {error}"


def test_client_waiting_for_a_service_gets_it_when_registered(roster, client, backends) -> None:
    late = backends("late")
    start = time.monotonic()
    # Well under gRPC's 15 s does-not-exist timer: the call can only succeed if
    # roster pushes the listener when the service appears.
    client.send(op="calls", target="xds:///late", n=1, timeout=10, wait_for_ready=True)
    deadline = start + 5
    while roster.metric("roster_xds_responses_total", kind="lds") < 1:
        assert time.monotonic() < deadline, f"roster sent no LDS response in 5s:\n{roster.log()}"
        time.sleep(0.05)
    roster.register("late", "late-1", late)
    out = client.receive()
    assert out["hits"] == {"late": 1}, f"{out}\n{client.log()}"
    assert late.calls == 1

