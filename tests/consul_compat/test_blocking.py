"""Blocking queries (?index=&wait=) and X-Consul-Index."""

from __future__ import annotations

import threading
import time

from consul import Check

from conftest import ids, index_of, raw

# Upper bound on how long a watcher thread may take to see a change. The queries
# wait 30s; this never measures how fast anything is.
JOIN_TIMEOUT = 90.0


def watch_until_change(client, service: str, index: str, out: dict, **kwargs) -> None:
    """What a Consul client does: block on the index, and block again while it is
    unchanged (Consul may return early; a return alone is no promise of a change)."""
    deadline = time.monotonic() + 60
    try:
        while True:
            new_index, entries = client.health.service(service, index=index, wait="30s", **kwargs)
            out.setdefault("rounds", 0)
            out["rounds"] += 1
            if int(new_index) != int(index) or time.monotonic() > deadline:
                out["result"] = (new_index, entries)
                return
    except BaseException as e:  # noqa: BLE001 (reported by the test)
        out["error"] = e


def run_watcher(client_factory, service: str, index: str, **kwargs) -> tuple[threading.Thread, dict]:
    out: dict = {}
    t = threading.Thread(
        target=watch_until_change, args=(client_factory(), service, index, out), kwargs=kwargs, daemon=True
    )
    t.start()
    return t, out


def finish(t: threading.Thread, out: dict) -> tuple[int, list]:
    t.join(JOIN_TIMEOUT)
    assert not t.is_alive(), "the blocking query did not return after the change"
    assert "error" not in out, repr(out.get("error"))
    new_index, entries = out["result"]
    return int(new_index), entries


def test_blocking_health_query_returns_after_a_registration(c, client_factory):
    c.agent.service.register("web", service_id="web-1", port=8080)
    index, entries = c.health.service("web")
    assert ids(entries) == {"web-1"}

    t, out = run_watcher(client_factory, "web", index)
    c.agent.service.register("web", service_id="web-2", port=8081)
    new_index, entries = finish(t, out)

    assert new_index > int(index)
    assert ids(entries) == {"web-1", "web-2"}


def test_blocking_passing_query_returns_when_a_check_fails(c, client_factory):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:web-1")
    c.agent.check.ttl_pass("service:web-2")
    index, entries = c.health.service("web", passing=True)
    assert ids(entries) == {"web-1", "web-2"}

    t, out = run_watcher(client_factory, "web", index, passing=True)
    c.agent.check.ttl_fail("service:web-2", notes="gone")
    new_index, entries = finish(t, out)

    assert new_index > int(index)
    assert ids(entries) == {"web-1"}


def test_blocking_query_returns_after_deregistration(c, client_factory):
    c.agent.service.register("web", service_id="web-1", port=8080)
    index, _ = c.health.service("web")

    t, out = run_watcher(client_factory, "web", index)
    c.agent.service.deregister("web-1")
    new_index, entries = finish(t, out)

    assert new_index > int(index)
    assert entries == []


def test_blocking_query_without_change_returns_the_same_index(c):
    c.agent.service.register("web", service_id="web-1", port=8080)
    index, _ = c.health.service("web")
    # Nothing changes: after the (short) wait the answer carries the same index.
    new_index, entries = c.health.service("web", index=index, wait="1s")
    assert int(new_index) == int(index)
    assert ids(entries) == {"web-1"}


def test_blocking_catalog_services_returns_after_a_new_service(c, client_factory):
    c.agent.service.register("web", service_id="web-1", port=8080)
    index, _ = c.catalog.services()
    out: dict = {}

    def watch() -> None:
        try:
            client = client_factory()
            idx = index
            deadline = time.monotonic() + 60
            while int(idx) == int(index) and time.monotonic() < deadline:
                idx, services = client.catalog.services(index=idx, wait="30s")
            out["result"] = (idx, services)
        except BaseException as e:  # noqa: BLE001
            out["error"] = e

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    c.agent.service.register("db", service_id="db-1", port=5432, tags=["primary"])
    new_index, services = finish(t, out)
    assert new_index > int(index)
    assert services["db"] == ["primary"]


def test_index_is_at_least_one_and_never_goes_backwards(c, roster):
    paths = [
        "/v1/catalog/services",
        "/v1/catalog/nodes",
        "/v1/catalog/service/web",
        "/v1/health/service/web",
        "/v1/health/checks/web",
        "/v1/health/state/any",
    ]
    seen: dict[str, list[int]] = {p: [] for p in paths}

    def sample() -> None:
        for p in paths:
            seen[p].append(index_of(roster, p))

    sample()  # the empty registry
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    sample()
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2"], check=Check.ttl("30s"))
    sample()
    c.agent.check.ttl_pass("service:web-1", notes="one")
    sample()
    c.agent.check.ttl_warn("service:web-2", notes="two")
    sample()
    assert raw(roster, "PUT", "/v1/agent/service/maintenance/web-1", params={"enable": "true", "reason": "patching"}).status_code == 200
    sample()
    assert raw(roster, "PUT", "/v1/agent/service/maintenance/web-1", params={"enable": "false"}).status_code == 200
    sample()
    c.agent.service.deregister("web-1")
    sample()
    c.agent.service.deregister("web-2")
    sample()

    for p, values in seen.items():
        assert all(v >= 1 for v in values), f"{p}: an index below 1 in {values}"
        assert values == sorted(values), f"{p}: the index went backwards: {values}"
    # Writes move the indexes of what they touch.
    h = seen["/v1/health/service/web"]
    assert h[1] < h[2] < h[3] < h[4], f"registrations and check reports bump the service's index: {h}"
    assert h[-1] > h[-2], f"deregistering the last instance bumps the service's index: {h}"
    s = seen["/v1/catalog/services"]
    assert s[0] < s[1] and s[-1] > s[0], f"the services list's index moves with registrations: {s}"


def test_agent_writes_answer_200(roster):
    # Consul answers the agent's write endpoints with 200 (py-consul reads 200 as success).
    r = raw(roster, "PUT", "/v1/agent/service/register", json={"Name": "web", "ID": "web-1", "Port": 8080,
                                                               "Check": {"TTL": "30s"}})
    assert r.status_code == 200, r.text
    for path in ("/v1/agent/check/pass/service:web-1", "/v1/agent/check/warn/service:web-1",
                 "/v1/agent/check/fail/service:web-1",
                 "/v1/agent/service/maintenance/web-1?enable=true&reason=x",
                 "/v1/agent/service/maintenance/web-1?enable=false",
                 "/v1/agent/service/deregister/web-1"):
        r = raw(roster, "PUT", path)
        assert r.status_code == 200, f"PUT {path}: {r.status_code} {r.text}"
