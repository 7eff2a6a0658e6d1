"""Health: TTL reports, HTTP and TCP checks run by roster, /v1/health/service with
?passing and ?tag, /v1/health/checks, /v1/health/state, and maintenance."""

from __future__ import annotations

from consul import Check

from conftest import ids, raw, service_checks, wait_for


def entry_of(c, service: str, service_id: str, **kwargs) -> dict:
    _, entries = c.health.service(service, **kwargs)
    hits = [e for e in entries if e["Service"]["ID"] == service_id]
    assert len(hits) == 1, f"{service_id} in {entries!r}"
    return hits[0]


def status_of(c, check_id: str) -> tuple[str, str]:
    ch = c.agent.checks()[check_id]
    return ch["Status"], ch["Output"]


def test_health_service_entry_fields(c):
    c.agent.service.register(
        "web", service_id="web-1", address="10.0.0.7", port=8080, tags=["v2"], meta={"zone": "eu-1"},
        check=Check.ttl("30s"),
    )
    c.agent.check.ttl_pass("service:web-1", notes="ready")
    e = entry_of(c, "web", "web-1")
    assert e["Service"]["ID"] == "web-1"
    assert e["Service"]["Service"] == "web"
    assert e["Service"]["Address"] == "10.0.0.7"
    assert e["Service"]["Port"] == 8080
    assert e["Service"]["Tags"] == ["v2"]
    assert e["Service"]["Meta"] == {"zone": "eu-1"}
    assert e["Service"]["Weights"] == {"Passing": 1, "Warning": 1}
    assert e["Node"]["Datacenter"] == "dc1"
    checks = service_checks(e, "web-1")
    assert set(checks) == {"service:web-1"}
    ch = checks["service:web-1"]
    assert (ch["Status"], ch["Output"], ch["ServiceName"], ch["Name"]) == (
        "passing", "ready", "web", "Service 'web' check",
    )
    assert ch["Node"] == e["Node"]["Node"]


def test_ttl_check_pass_warn_fail(c):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:web-2")

    # Registered: critical until the first report, so not passing.
    assert status_of(c, "service:web-1")[0] == "critical"
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-2"}
    _, every = c.health.service("web")
    assert ids(every) == {"web-1", "web-2"}, "without ?passing every instance is listed"

    assert c.agent.check.ttl_pass("service:web-1", notes="all good") is True
    assert status_of(c, "service:web-1") == ("passing", "all good")
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1", "web-2"}
    ch = service_checks(entry_of(c, "web", "web-1"), "web-1")["service:web-1"]
    assert (ch["Status"], ch["Output"]) == ("passing", "all good")

    assert c.agent.check.ttl_warn("service:web-1", notes="slow disk") is True
    assert status_of(c, "service:web-1") == ("warning", "slow disk")
    # ?passing means every check passing: a warning instance is left out.
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-2"}
    _, every = c.health.service("web")
    assert ids(every) == {"web-1", "web-2"}

    assert c.agent.check.ttl_fail("service:web-1", notes="disk full") is True
    assert status_of(c, "service:web-1") == ("critical", "disk full")
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-2"}
    ch = service_checks(entry_of(c, "web", "web-1"), "web-1")["service:web-1"]
    assert (ch["Status"], ch["Output"]) == ("critical", "disk full")

    # A report without a note clears the output.
    assert c.agent.check.ttl_pass("service:web-1") is True
    assert status_of(c, "service:web-1") == ("passing", "")
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1", "web-2"}


def test_check_update_sets_status_and_output(c, roster):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    resp = raw(roster, "PUT", "/v1/agent/check/update/service:web-1",
               json={"Status": "warning", "Output": "disk 91% full"})
    assert resp.status_code == 200, resp.text
    assert status_of(c, "service:web-1") == ("warning", "disk 91% full")
    _, passing = c.health.service("web", passing=True)
    assert passing == []
    resp = raw(roster, "PUT", "/v1/agent/check/update/service:web-1", json={"Status": "passing", "Output": "ok"})
    assert resp.status_code == 200, resp.text
    assert status_of(c, "service:web-1") == ("passing", "ok")
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1"}


def test_ttl_check_expires_to_critical(c):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("1s"))
    c.agent.check.ttl_pass("service:web-1", notes="alive")
    # No further report: within a generous bound the check turns critical.
    wait_for("the TTL check to expire", lambda: status_of(c, "service:web-1")[0] == "critical")
    _, passing = c.health.service("web", passing=True)
    assert passing == []
    # And a report brings it back.
    c.agent.check.ttl_pass("service:web-1")
    assert status_of(c, "service:web-1")[0] == "passing"


def test_one_failing_check_of_several_takes_the_instance_out(c):
    c.agent.service.register(
        "web", service_id="web-1", port=8080, check=Check.ttl("30s"), extra_checks=[Check.ttl("30s")]
    )
    c.agent.check.ttl_pass("service:web-1:1")
    c.agent.check.ttl_pass("service:web-1:2")
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1"}
    c.agent.check.ttl_fail("service:web-1:2", notes="queue stuck")
    _, passing = c.health.service("web", passing=True)
    assert passing == []
    _, checks = c.health.checks("web")
    got = {ch["CheckID"]: (ch["Status"], ch["Output"]) for ch in checks if ch.get("ServiceID") == "web-1"}
    assert got == {"service:web-1:1": ("passing", ""), "service:web-1:2": ("critical", "queue stuck")}


def test_health_service_tag_filter(c):
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v1", "eu"])
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2", "eu"])
    c.agent.service.register("web", service_id="web-3", port=8082, tags=["v2", "us"])
    _, entries = c.health.service("web", tag="v2")
    assert ids(entries) == {"web-2", "web-3"}
    _, entries = c.health.service("web", tag="eu")
    assert ids(entries) == {"web-1", "web-2"}
    # Several ?tag= parameters: instances carrying all of them.
    _, entries = c.health.service("web", tag=["v2", "eu"])
    assert ids(entries) == {"web-2"}
    _, entries = c.health.service("web", tag="nope")
    assert entries == []


def test_health_service_passing_and_tag_together(c):
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v2"], check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2"], check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-3", port=8082, tags=["v1"], check=Check.ttl("30s"))
    for i in (1, 3):
        c.agent.check.ttl_pass(f"service:web-{i}")
    _, entries = c.health.service("web", passing=True, tag="v2")
    assert ids(entries) == {"web-1"}
    e = entries[0]
    assert (e["Service"]["Port"], e["Service"]["Tags"]) == (8080, ["v2"])


def test_health_service_of_unknown_service_is_empty(c):
    index, entries = c.health.service("nothing-here")
    assert entries == []
    assert int(index) >= 1


def test_health_checks_and_state(c):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, check=Check.ttl("30s"))
    c.agent.service.register("db", service_id="db-1", port=5432, check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:web-1", notes="fine")
    c.agent.check.ttl_warn("service:web-2", notes="slow")
    c.agent.check.ttl_fail("service:db-1", notes="down")

    _, checks = c.health.checks("web")
    got = {ch["CheckID"]: (ch["ServiceName"], ch["Status"], ch["Output"]) for ch in checks}
    assert got == {"service:web-1": ("web", "passing", "fine"), "service:web-2": ("web", "warning", "slow")}

    def service_check_ids(state: str) -> set[str]:
        _, found = c.health.state(state)
        return {ch["CheckID"] for ch in found if ch.get("ServiceID")}

    assert service_check_ids("passing") == {"service:web-1"}
    assert service_check_ids("warning") == {"service:web-2"}
    assert service_check_ids("critical") == {"service:db-1"}
    assert service_check_ids("any") == {"service:web-1", "service:web-2", "service:db-1"}
    _, critical = c.health.state("critical")
    [db] = [ch for ch in critical if ch.get("ServiceID") == "db-1"]
    assert (db["Status"], db["Output"], db["ServiceName"]) == ("critical", "down", "db")


def test_http_check_follows_the_target(c, flip_server):
    flip_server.set(200, b"web-1 is fine")
    c.agent.service.register("web", service_id="web-1", address="127.0.0.1", port=flip_server.port,
                             check=Check.http(flip_server.url, "1s"))
    ch = c.agent.checks()["service:web-1"]
    assert ch["Type"] == "http"

    def passing_ids() -> set[str]:
        _, entries = c.health.service("web", passing=True)
        return ids(entries)

    def check_is(status: str, text: str) -> bool:
        got, output = status_of(c, "service:web-1")
        return got == status and text in output

    # Outputs carry the status line only: response bodies stay out of what
    # every reader sees unless the server runs with --check-output-body.
    wait_for("the HTTP check to pass", lambda: check_is("passing", "200"))
    assert passing_ids() == {"web-1"}
    assert "web-1 is fine" not in status_of(c, "service:web-1")[1]

    flip_server.set(500, b"database unreachable")
    wait_for("the HTTP check to fail", lambda: check_is("critical", "500"))
    assert passing_ids() == set()
    assert "database unreachable" not in status_of(c, "service:web-1")[1]
    _, critical = c.health.state("critical")
    assert "service:web-1" in {ch["CheckID"] for ch in critical}
    e = entry_of(c, "web", "web-1")
    assert service_checks(e, "web-1")["service:web-1"]["Status"] == "critical"

    flip_server.set(200, b"recovered")
    wait_for("the HTTP check to pass again", lambda: check_is("passing", "200"))
    assert passing_ids() == {"web-1"}


def test_check_timeout_longer_than_interval_is_accepted(c, flip_server):
    # Consul puts no bound between a check's Timeout and its Interval.
    assert c.agent.service.register("web", service_id="web-1", port=flip_server.port,
                                    check=Check.http(flip_server.url, "1s", timeout="5s")) is True
    assert c.agent.service.register("db", service_id="db-1", port=flip_server.port,
                                    check=Check.tcp("127.0.0.1", flip_server.port, "1s")) is True
    assert set(c.agent.checks()) == {"service:web-1", "service:db-1"}


def test_http_check_429_is_warning(c, flip_server):
    flip_server.set(429, b"slow down")
    c.agent.service.register("web", service_id="web-1", port=flip_server.port,
                             check=Check.http(flip_server.url, "1s"))
    wait_for("the HTTP check to warn", lambda: status_of(c, "service:web-1")[0] == "warning")
    _, passing = c.health.service("web", passing=True)
    assert passing == []


def test_tcp_check_passes_on_an_open_port_and_fails_on_a_closed_one(c, flip_server, closed_port):
    c.agent.service.register("web", service_id="web-1", port=flip_server.port,
                             check=Check.tcp("127.0.0.1", flip_server.port, "1s"))
    c.agent.service.register("web", service_id="web-2", port=closed_port,
                             check=Check.tcp("127.0.0.1", closed_port, "1s"))
    wait_for("the open port's check to pass", lambda: status_of(c, "service:web-1")[0] == "passing")
    wait_for("the closed port's check to have a result",
             lambda: status_of(c, "service:web-2")[1] != "")
    assert status_of(c, "service:web-2")[0] == "critical"
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1"}


def test_maintenance_takes_the_instance_out_and_back(c, roster):
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:web-1")
    c.agent.check.ttl_pass("service:web-2")

    resp = raw(roster, "PUT", "/v1/agent/service/maintenance/web-1", params={"enable": "true", "reason": "kernel upgrade"})
    assert resp.status_code == 200, resp.text
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-2"}
    # Consul registers a critical check on the service, the reason in its Notes.
    checks = service_checks(entry_of(c, "web", "web-1"), "web-1")
    maint = [ch for cid, ch in checks.items() if cid != "service:web-1"]
    assert len(maint) == 1, checks
    assert maint[0]["CheckID"] == "_service_maintenance:web-1"
    assert maint[0]["Status"] == "critical"
    assert maint[0]["Notes"] == "kernel upgrade"
    assert checks["service:web-1"]["Status"] == "passing", "the service's own check is untouched"
    agent_checks = service_checks(list(c.agent.checks().values()), "web-1")
    assert maint[0]["CheckID"] in agent_checks
    # Still registered: maintenance is not removal.
    assert set(c.agent.services()) == {"web-1", "web-2"}

    resp = raw(roster, "PUT", "/v1/agent/service/maintenance/web-1", params={"enable": "false"})
    assert resp.status_code == 200, resp.text
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1", "web-2"}
    assert set(service_checks(entry_of(c, "web", "web-1"), "web-1")) == {"service:web-1"}
    assert set(service_checks(list(c.agent.checks().values()), "web-1")) == {"service:web-1"}


def test_maintenance_through_py_consul(c):
    # py-consul sends enable=True / enable=False (Python's bools as text); Consul
    # parses enable with Go's strconv.ParseBool, which takes both spellings.
    c.agent.service.register("web", service_id="web-1", port=8080)
    assert c.agent.service.maintenance("web-1", True, reason="kernel upgrade") is True
    _, passing = c.health.service("web", passing=True)
    assert passing == []
    assert c.agent.service.maintenance("web-1", False) is True
    _, passing = c.health.service("web", passing=True)
    assert ids(passing) == {"web-1"}
