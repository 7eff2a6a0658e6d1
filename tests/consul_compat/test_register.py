"""Registration and deregistration through /v1/agent/service/*, read back through
/v1/agent/services, /v1/agent/checks, /v1/catalog/services and /v1/catalog/service."""

from __future__ import annotations

from consul import Check

from conftest import ids, index_of, raw, service_checks


def test_register_returns_true_and_agent_services_has_every_field(c):
    assert c.agent.service.register(
        "web",
        service_id="web-1",
        address="10.0.0.7",
        port=8080,
        tags=["v2", "eu"],
        meta={"zone": "eu-1", "version": "2.3"},
        weights={"Passing": 10, "Warning": 1},
    ) is True
    services = c.agent.services()
    assert set(services) == {"web-1"}
    svc = services["web-1"]
    assert svc["ID"] == "web-1"
    assert svc["Service"] == "web"
    assert svc["Address"] == "10.0.0.7"
    assert svc["Port"] == 8080
    assert sorted(svc["Tags"]) == ["eu", "v2"]
    assert svc["Meta"] == {"zone": "eu-1", "version": "2.3"}
    assert svc["Weights"] == {"Passing": 10, "Warning": 1}
    assert svc["EnableTagOverride"] is False
    assert svc["Datacenter"] == "dc1"


def test_register_defaults_id_to_name_and_weights_to_one(c):
    assert c.agent.service.register("db", port=5432) is True
    services = c.agent.services()
    assert set(services) == {"db"}
    svc = services["db"]
    assert svc["ID"] == "db"
    assert svc["Service"] == "db"
    assert svc["Port"] == 5432
    assert svc["Tags"] == []
    assert svc["Weights"] == {"Passing": 1, "Warning": 1}
    # No Address given: Consul would leave it empty and let clients use the
    # node's address (the agent runs on the service's host). roster is one
    # registry for many hosts, so it records the caller's address instead (a
    # documented difference, see docs/consul.md, "How roster maps Consul's model").
    assert svc["Address"] == "127.0.0.1"
    _, entries = c.catalog.service("db")
    assert [e["ServiceAddress"] for e in entries] == ["127.0.0.1"]
    _, health = c.health.service("db")
    assert [e["Service"]["Address"] for e in health] == ["127.0.0.1"]


def test_agent_checks_of_a_ttl_check(c):
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v2"], check=Check.ttl("30s"))
    checks = c.agent.checks()
    assert set(checks) == {"service:web-1"}
    ch = checks["service:web-1"]
    assert ch["CheckID"] == "service:web-1"
    assert ch["Name"] == "Service 'web' check"
    assert ch["ServiceID"] == "web-1"
    assert ch["ServiceName"] == "web"
    assert ch["ServiceTags"] == ["v2"]
    assert ch["Type"] == "ttl"
    # A check starts critical unless told otherwise, and a TTL check stays so
    # until its first report.
    assert ch["Status"] == "critical"
    assert ch["Node"] == c.agent.self()["Config"]["NodeName"]


def test_several_checks_get_numbered_ids(c, flip_server):
    c.agent.service.register(
        "web",
        service_id="web-1",
        port=8080,
        check=Check.ttl("30s"),
        extra_checks=[Check.http(flip_server.url, "1s"), Check.ttl("30s")],
    )
    checks = c.agent.checks()
    assert set(checks) == {"service:web-1:1", "service:web-1:2", "service:web-1:3"}
    assert checks["service:web-1:1"]["Type"] == "ttl"
    assert checks["service:web-1:2"]["Type"] == "http"
    assert checks["service:web-1:3"]["Type"] == "ttl"
    assert {ch["ServiceID"] for ch in checks.values()} == {"web-1"}


def test_check_with_explicit_id_and_name(c):
    c.agent.service.register(
        "web",
        service_id="web-1",
        port=8080,
        check={"CheckID": "queue-depth", "Name": "Queue depth", "TTL": "30s", "Notes": "jobs waiting"},
    )
    checks = c.agent.checks()
    assert set(checks) == {"queue-depth"}
    assert checks["queue-depth"]["Name"] == "Queue depth"
    assert checks["queue-depth"]["ServiceID"] == "web-1"
    assert checks["queue-depth"]["Notes"] == "jobs waiting"


def test_check_initial_status_passing(c):
    # Consul: "Status" sets a check's initial status.
    c.agent.service.register("web", service_id="web-1", port=8080, check={"TTL": "30s", "Status": "passing"})
    assert c.agent.checks()["service:web-1"]["Status"] == "passing"
    _, entries = c.health.service("web", passing=True)
    assert ids(entries) == {"web-1"}


def test_register_accepts_deregister_critical_after_and_tcp_grpc_checks(c, closed_port):
    assert c.agent.service.register(
        "web",
        service_id="web-1",
        port=8080,
        check=Check.tcp("127.0.0.1", closed_port, "10s", timeout="1s", deregister="90m"),
        extra_checks=[Check.grpc(f"127.0.0.1:{closed_port}/web.Health", "10s", deregister="90m")],
    ) is True
    checks = c.agent.checks()
    assert set(checks) == {"service:web-1:1", "service:web-1:2"}
    assert checks["service:web-1:1"]["Type"] == "tcp"
    assert checks["service:web-1:2"]["Type"] == "grpc"


def test_reregister_replaces_the_service(c):
    c.agent.service.register("web", service_id="web-1", address="10.0.0.7", port=8080, tags=["v1"])
    c.agent.service.register("web", service_id="web-1", address="10.0.0.8", port=9090, tags=["v2"])
    svc = c.agent.services()["web-1"]
    assert (svc["Address"], svc["Port"], svc["Tags"]) == ("10.0.0.8", 9090, ["v2"])
    _, entries = c.catalog.service("web")
    assert [(e["ServiceID"], e["ServiceAddress"], e["ServicePort"], e["ServiceTags"]) for e in entries] == [
        ("web-1", "10.0.0.8", 9090, ["v2"])
    ]


def test_catalog_services_lists_names_with_their_tags(c):
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v1", "eu"])
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2", "eu"])
    c.agent.service.register("db", service_id="db-1", port=5432)
    index, services = c.catalog.services()
    assert int(index) >= 1
    # A real Consul also lists its own "consul" service; roster may or may not.
    ours = {name: sorted(tags) for name, tags in services.items() if name != "consul"}
    assert ours == {"web": ["eu", "v1", "v2"], "db": []}


def test_catalog_service_fields_and_tag_filter(c):
    c.agent.service.register(
        "web", service_id="web-1", address="10.0.0.7", port=8080, tags=["v1", "eu"], meta={"zone": "eu-1"}
    )
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2"], check=Check.ttl("30s"))
    _, entries = c.catalog.service("web")
    by_id = {e["ServiceID"]: e for e in entries}
    assert set(by_id) == {"web-1", "web-2"}, "the catalog lists critical instances too"
    one = by_id["web-1"]
    assert one["ServiceName"] == "web"
    assert one["ServiceAddress"] == "10.0.0.7"
    assert one["ServicePort"] == 8080
    assert sorted(one["ServiceTags"]) == ["eu", "v1"]
    assert one["ServiceMeta"] == {"zone": "eu-1"}
    assert one["Datacenter"] == "dc1"
    two = by_id["web-2"]
    assert two["ServicePort"] == 8081
    assert two["ServiceTags"] == ["v2"]

    _, tagged = c.catalog.service("web", tag="v2")
    assert [e["ServiceID"] for e in tagged] == ["web-2"]
    _, none = c.catalog.service("web", tag="nope")
    assert none == []
    # No address given: the caller's (a documented difference from Consul).
    assert two["ServiceAddress"] == "127.0.0.1"


def test_catalog_service_of_unknown_service_is_empty(c):
    index, entries = c.catalog.service("nothing-here")
    assert entries == []
    assert int(index) >= 1


def test_deregister_removes_service_and_checks_everywhere(c, roster):
    c.agent.service.register("web", service_id="web-1", port=8080, tags=["v1"], check=Check.ttl("30s"))
    c.agent.service.register("web", service_id="web-2", port=8081, tags=["v2"], check=Check.ttl("30s"))
    c.agent.check.ttl_pass("service:web-1")
    c.agent.check.ttl_pass("service:web-2")
    before = index_of(roster, "/v1/health/service/web")

    assert c.agent.service.deregister("web-1") is True

    assert set(c.agent.services()) == {"web-2"}
    assert set(c.agent.checks()) == {"service:web-2"}
    _, entries = c.health.service("web")
    assert ids(entries) == {"web-2"}
    _, checks = c.health.checks("web")
    assert {ch["CheckID"] for ch in checks if ch.get("ServiceID")} == {"service:web-2"}
    _, services = c.catalog.services()
    assert sorted(services["web"]) == ["v2"], "web-1's tag went with it"
    assert index_of(roster, "/v1/health/service/web") > before

    assert c.agent.service.deregister("web-2") is True
    assert c.agent.services() == {}
    assert c.agent.checks() == {}
    _, entries = c.health.service("web")
    assert entries == []
    _, services = c.catalog.services()
    assert "web" not in services


def test_raw_register_with_consul_field_names(c, roster):
    # The body as Consul's documentation writes it (PascalCase), not py-consul's lowercase.
    body = {
        "ID": "api-1",
        "Name": "api",
        "Tags": ["primary"],
        "Address": "10.0.0.9",
        "Port": 7000,
        "Meta": {"team": "core"},
        "Check": {"TTL": "30s", "Notes": "report every 10s"},
    }
    resp = raw(roster, "PUT", "/v1/agent/service/register", json=body)
    assert resp.status_code == 200, resp.text
    svc = c.agent.services()["api-1"]
    assert (svc["Service"], svc["Address"], svc["Port"], svc["Tags"], svc["Meta"]) == (
        "api",
        "10.0.0.9",
        7000,
        ["primary"],
        {"team": "core"},
    )
    checks = service_checks(list(c.agent.checks().values()), "api-1")
    assert set(checks) == {"service:api-1"}
    assert checks["service:api-1"]["Notes"] == "report every 10s"


def test_unknown_ids_answer_404(c, roster):
    # Consul answers writes to an unknown service or check id with 404 (py-consul
    # then returns False instead of raising).
    c.agent.service.register("web", service_id="web-1", port=8080, check=Check.ttl("30s"))
    assert c.agent.check.ttl_pass("service:nope") is False
    assert c.agent.service.deregister("nope") is False
    for path in ("/v1/agent/check/fail/service:nope", "/v1/agent/service/deregister/nope",
                 "/v1/agent/service/maintenance/nope?enable=true"):
        resp = raw(roster, "PUT", path)
        assert resp.status_code == 404, f"PUT {path}: {resp.status_code} {resp.text}"
    # Nothing else changed.
    assert set(c.agent.services()) == {"web-1"}
    assert c.agent.checks()["service:web-1"]["Status"] == "critical"
