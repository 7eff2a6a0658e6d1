"""Spring Cloud Consul 4.3 against roster with ACLs on (issue 27).

Spring Cloud Consul 4.3 talks to Consul through com.ecwid.consul:consul-api
1.4.5. The `ConsulApi` class below sends byte for byte the requests that
library builds for the calls Spring makes (checked against both projects'
sources):

- registration (ConsulServiceRegistry.register):
  `PUT /v1/agent/service/register?token=T`, a Gson body without nulls, sent as
  `text/plain; charset=UTF-8` (Apache HttpClient's StringEntity);
- discovery (ConsulDiscoveryClient.getInstances):
  `GET /v1/health/service/NAME?passing=true|false&token=T` (consul-api always
  sends `passing`, `false` unless `query-passing` is set);
- the service list (ConsulDiscoveryClient.getServices) and the catalog watch
  (ConsulCatalogWatch, every second): `GET /v1/catalog/services?wait=2s&index=N&token=T`
  (no `index` on the first call);
- the TTL heartbeat (TtlScheduler): `PUT /v1/agent/check/pass/service:ID?token=T`;
  with heartbeat.reregister-service-on-failure, a 404 or 500 answer makes
  Spring register the service again;
- deregistration: `PUT /v1/agent/service/deregister/ID?token=T`;
- the health indicator (ConsulHealthIndicator), without any token:
  `GET /v1/status/leader` and `GET /v1/catalog/services`;
- the actuator's service-registry endpoint (ConsulServiceRegistry.setStatus and
  getStatus), also without any token: `PUT /v1/agent/service/maintenance/ID?enable=true`
  and `GET /v1/health/checks/NAME`.

consul-api puts the token in the query only, encoded with java.net.URLEncoder,
and never in a header. The last tests do the same through py-consul's token=
(sent as X-Consul-Token).
"""

from __future__ import annotations

import json
import threading
import time

import consul
import pytest
import requests
from consul import Check

from conftest import HOST, Roster, raw, service_checks, wait_for

ADMIN = "spring-admin-secret-0123456789"
WEB = "spring-web-writer-secret-42"
READER = "spring-reader-secret-0123456"
# A secret as `openssl rand -base64 24` makes them: consul-api sends it
# percent-encoded (%2B, %2F, %3D).
B64 = "k3+Vq/8xZ2R0cm9zdGVyLXNw=="

TOKENS = f"""
[[tokens]]
name = "ops"
secret = "{ADMIN}"
policies = ["admin"]

[[tokens]]
name = "web-writer"
secret = "{WEB}"
policies = ["write:web*"]

[[tokens]]
name = "dashboards"
secret = "{READER}"
policies = ["read"]

[[tokens]]
name = "web-writer-b64"
secret = "{B64}"
policies = ["write:web*"]
"""
ANONYMOUS_READ = TOKENS + '\n[anonymous]\npolicies = ["read"]\n'

# What Apache HttpClient 4.5 (consul-api's transport) sends on every request.
JAVA_HEADERS = {
    "User-Agent": "Apache-HttpClient/4.5.14 (Java/17.0.13)",
    "Accept-Encoding": "gzip,deflate",
    "Connection": "Keep-Alive",
}


def java_urlencode(value: str) -> str:
    """java.net.URLEncoder.encode(value, "UTF-8"), as consul-api encodes every
    query value: letters, digits and `.-*_` stay, a space becomes `+`, every
    other byte `%XX`."""
    out = []
    for byte in value.encode():
        ch = chr(byte)
        if ch.isascii() and (ch.isalnum() or ch in ".-*_"):
            out.append(ch)
        elif ch == " ":
            out.append("+")
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


class ConsulApi:
    """The requests consul-api 1.4.5 sends for Spring Cloud Consul's calls,
    with `spring.cloud.consul.discovery.acl-token` (or `spring.cloud.consul.token`)
    set to `token`."""

    def __init__(self, roster: Roster, token: str | None) -> None:
        self.base = roster.base
        self.token = token
        self.session = requests.Session()

    def _url(self, path: str, *params: str) -> str:
        # Utils.generateUrl: the request's parameters in order, the token last.
        parts = list(params)
        if self.token is not None:
            parts.append("token=" + java_urlencode(self.token))
        return self.base + path + ("?" + "&".join(parts) if parts else "")

    def _send(self, method: str, url: str, body: str | None = None) -> requests.Response:
        headers = dict(JAVA_HEADERS)
        data = None
        if method == "PUT":
            # StringEntity(content, UTF_8): a body even when empty.
            data = (body or "").encode()
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        # A prepared URL string: requests must not encode anything again.
        return self.session.request(method, url, data=data, headers=headers, timeout=60)

    # ConsulServiceRegistry
    def register(self, service: dict) -> requests.Response:
        return self._send("PUT", self._url("/v1/agent/service/register"), gson(service))

    def deregister(self, instance_id: str) -> requests.Response:
        return self._send("PUT", self._url(f"/v1/agent/service/deregister/{instance_id}"))

    # TtlScheduler.ConsulHeartbeatTask: agentCheckPass(checkId, null, aclToken)
    def heartbeat(self, instance_id: str) -> requests.Response:
        return self._send("PUT", self._url(f"/v1/agent/check/pass/service:{instance_id}"))

    # ConsulDiscoveryClient.getInstances: HealthServicesRequest, QueryParams.DEFAULT
    def instances(self, name: str, passing: bool) -> requests.Response:
        return self._send("GET", self._url(f"/v1/health/service/{name}", f"passing={str(passing).lower()}"))

    # ConsulCatalogWatch / ConsulDiscoveryClient.getServices: CatalogServicesRequest
    def catalog_services(self, wait: int | None = None, index: int | None = None) -> requests.Response:
        params = []
        if wait is not None:
            params.append(f"wait={wait}s")
        if index is not None:
            params.append(f"index={index}")
        return self._send("GET", self._url("/v1/catalog/services", *params))

    # ConsulServiceRegistry.setStatus / getStatus: consul-api's calls without a token.
    def set_status(self, instance_id: str, out_of_service: bool) -> requests.Response:
        return self._send("PUT", self.base + f"/v1/agent/service/maintenance/{instance_id}"
                          f"?enable={str(out_of_service).lower()}")

    def get_status_checks(self, name: str) -> requests.Response:
        return self._send("GET", self.base + f"/v1/health/checks/{name}")

    # ConsulHealthIndicator: no token on either call.
    def health_indicator(self) -> tuple[requests.Response, requests.Response]:
        return (
            self._send("GET", self.base + "/v1/status/leader"),
            self._send("GET", self.base + "/v1/catalog/services"),
        )


def gson(obj: dict) -> str:
    """new Gson().toJson(newService): compact, nulls left out, fields in declaration order."""
    return json.dumps({k: v for k, v in obj.items() if v is not None}, separators=(",", ":"))


def spring_service(name: str, instance_id: str, port: int, check: dict) -> dict:
    """ConsulAutoRegistration.registration with the defaults of Spring Cloud Consul
    4.3 and `prefer-ip-address: true`: no tags, metadata {"secure": "false"}."""
    return {
        "ID": instance_id,
        "Name": name,
        "Tags": [],
        "Address": HOST,
        "Meta": {"secure": "false"},
        "Port": port,
        "Check": {k: v for k, v in check.items() if v is not None},
    }


def http_check(url: str) -> dict:
    """createCheck without heartbeat: HTTP on the health-check path, every 10s,
    an empty Header map (Spring's default is an empty HashMap, which Gson writes)."""
    return {"Interval": "10s", "HTTP": url, "Header": {}}


TTL_CHECK = {"TTL": "30s"}  # createCheck with spring.cloud.consul.discovery.heartbeat.enabled=true


def consul_index(resp: requests.Response) -> int:
    """What consul-api's Response reads: Long.parseLong of X-Consul-Index, and the
    two other headers parsed as Boolean and Long."""
    assert resp.headers["X-Consul-KnownLeader"] in ("true", "false")
    int(resp.headers["X-Consul-LastContact"])
    return int(resp.headers["X-Consul-Index"])


def by_id(resp: requests.Response) -> dict[str, dict]:
    assert resp.status_code == 200, f"{resp.status_code} {resp.text}"
    return {e["Service"]["ID"]: e for e in resp.json()}


def actuator_url(flip_server) -> str:
    flip_server.set(200, b'{"status":"UP"}')
    return f"http://{HOST}:{flip_server.port}/actuator/health"


# --- registration, discovery, deregistration ---------------------------------


def test_spring_registers_discovers_and_deregisters_with_query_token(acl_roster, flip_server):
    roster = acl_roster(TOKENS)
    spring = ConsulApi(roster, WEB)
    service = spring_service("web", "web-8080", 8080, http_check(actuator_url(flip_server)))

    resp = spring.register(service)
    assert (resp.status_code, resp.text) == (200, "")

    # The first run of the HTTP check comes within a second or so of registering.
    entries = wait_for("the HTTP check to pass", lambda: by_id(spring.instances("web", passing=True)))
    assert set(entries) == {"web-8080"}
    assert flip_server.requests >= 1
    entry = entries["web-8080"]
    # The fields ConsulServiceInstance reads.
    svc = entry["Service"]
    assert (svc["ID"], svc["Service"], svc["Address"], svc["Port"]) == ("web-8080", "web", HOST, 8080)
    assert svc["Tags"] == []
    assert svc["Meta"] == {"secure": "false"}
    assert isinstance(entry["Node"]["Address"], str)
    checks = service_checks(entry, "web-8080")
    assert checks["service:web-8080"]["Status"] == "passing"
    assert checks["service:web-8080"]["Type"] == "http"

    # ConsulDiscoveryClient.getServices (the same token).
    resp = spring.catalog_services()
    assert resp.status_code == 200, resp.text
    assert resp.json()["web"] == []
    consul_index(resp)

    resp = spring.deregister("web-8080")
    assert (resp.status_code, resp.text) == (200, "")
    assert by_id(spring.instances("web", passing=False)) == {}
    assert "web" not in spring.catalog_services().json()


def test_spring_passing_false_lists_critical_instances_too(acl_roster, flip_server, closed_port):
    """Spring's default (query-passing: false) sends passing=false: Consul reads it
    with strconv.ParseBool, so every instance comes back with its checks, and the
    load balancer's own health filter decides."""
    roster = acl_roster(TOKENS)
    spring = ConsulApi(roster, WEB)
    up = spring_service("web", "web-8080", 8080, http_check(actuator_url(flip_server)))
    down = spring_service("web", "web-8081", 8081, http_check(f"http://{HOST}:{closed_port}/actuator/health"))
    assert spring.register(up).status_code == 200
    assert spring.register(down).status_code == 200

    def settled():
        entries = by_id(spring.instances("web", passing=False))
        status = {i: service_checks(e, i)[f"service:{i}"]["Status"] for i, e in entries.items()}
        return status if status == {"web-8080": "passing", "web-8081": "critical"} else None

    wait_for("both HTTP checks to run", settled)
    assert set(by_id(spring.instances("web", passing=True))) == {"web-8080"}


def test_spring_ttl_heartbeat_and_reregistration_after_404(acl_roster):
    roster = acl_roster(TOKENS)
    spring = ConsulApi(roster, WEB)
    service = spring_service("web-api", "web-api-9000", 9000, TTL_CHECK)
    assert spring.register(service).status_code == 200
    # A TTL check is critical until its first heartbeat.
    assert by_id(spring.instances("web-api", passing=True)) == {}

    resp = spring.heartbeat("web-api-9000")
    assert (resp.status_code, resp.text) == (200, "")
    entries = by_id(spring.instances("web-api", passing=True))
    assert set(entries) == {"web-api-9000"}
    (check,) = service_checks(entries["web-api-9000"], "web-api-9000").values()
    assert (check["CheckID"], check["Type"], check["Status"]) == ("service:web-api-9000", "ttl", "passing")

    # The instance disappears behind Spring's back (an operator deregisters it):
    # the next heartbeat gets 404, which ReregistrationPredicate.DEFAULT treats
    # as "register again" (heartbeat.reregister-service-on-failure).
    assert ConsulApi(roster, ADMIN).deregister("web-api-9000").status_code == 200
    resp = spring.heartbeat("web-api-9000")
    assert resp.status_code == 404, resp.text
    assert spring.register(service).status_code == 200
    assert spring.heartbeat("web-api-9000").status_code == 200
    assert set(by_id(spring.instances("web-api", passing=True))) == {"web-api-9000"}

    assert spring.deregister("web-api-9000").status_code == 200
    assert by_id(spring.instances("web-api", passing=False)) == {}


# --- the catalog watch ---------------------------------------------------------


def test_spring_catalog_watch_blocks_and_wakes_on_a_change(acl_roster):
    roster = acl_roster(TOKENS)
    spring = ConsulApi(roster, WEB)
    assert spring.register(spring_service("web", "web-8080", 8080, TTL_CHECK)).status_code == 200

    # First round: no index yet (catalogServicesIndex is null), so no wait.
    resp = spring.catalog_services(wait=2)
    assert resp.status_code == 200, resp.text
    index = consul_index(resp)
    assert "web" in resp.json()

    # Nothing changes: the query holds about the 2 s asked for, and returns the
    # same index (Spring then publishes a HeartbeatEvent with it).
    start = time.monotonic()
    resp = spring.catalog_services(wait=2, index=index)
    held = time.monotonic() - start
    assert resp.status_code == 200, resp.text
    assert consul_index(resp) == index
    assert 1.5 <= held < 15, held

    # A change while the watch waits wakes it. catalog-services-watch-timeout is
    # raised to 20 s here so that an early return cannot be the timeout.
    out: dict = {}

    def watch() -> None:
        begin = time.monotonic()
        try:
            out["resp"] = ConsulApi(roster, WEB).catalog_services(wait=20, index=index)
        except BaseException as e:  # noqa: BLE001 (reported below)
            out["error"] = e
        out["held"] = time.monotonic() - begin

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(0.3)
    assert spring.register(spring_service("web-admin", "web-admin-8090", 8090, TTL_CHECK)).status_code == 200
    t.join(60)
    assert not t.is_alive() and "error" not in out, out
    assert out["held"] < 12, out["held"]
    resp = out["resp"]
    assert resp.status_code == 200, resp.text
    assert consul_index(resp) > index
    assert set(resp.json()) >= {"web", "web-admin"}


# --- the health indicator, without a token --------------------------------------


def test_health_indicator_without_token_under_anonymous_read(acl_roster):
    roster = acl_roster(ANONYMOUS_READ)
    spring = ConsulApi(roster, WEB)
    assert spring.register(spring_service("web", "web-8080", 8080, TTL_CHECK)).status_code == 200

    leader, services = ConsulApi(roster, None).health_indicator()
    assert leader.status_code == 200, leader.text
    assert isinstance(leader.json(), str) and leader.json()
    assert services.status_code == 200, services.text
    assert services.json()["web"] == []

    # The anonymous policy reads, nothing more: Spring without a token cannot
    # register, heartbeat or deregister.
    anonymous = ConsulApi(roster, None)
    for resp in (
        anonymous.register(spring_service("web", "web-8081", 8081, TTL_CHECK)),
        anonymous.heartbeat("web-8080"),
        anonymous.deregister("web-8080"),
    ):
        assert (resp.status_code, resp.text) == (401, "ACL not found")
    assert set(by_id(spring.instances("web", passing=False))) == {"web-8080"}


def test_health_indicator_without_token_and_without_anonymous_policy(acl_roster):
    roster = acl_roster(TOKENS)
    leader, services = ConsulApi(roster, None).health_indicator()
    # /v1/status/* is open, as in Consul...
    assert leader.status_code == 200, leader.text
    assert isinstance(leader.json(), str) and leader.json()
    assert raw(roster, "GET", "/v1/status/peers").status_code == 200
    # ...the catalog is not: the indicator reports DOWN unless the anonymous
    # policy reads or spring.cloud.consul.health-indicator.include-services-query=false.
    assert (services.status_code, services.text) == (401, "ACL not found")
    # Every other read without a token, too.
    anonymous = ConsulApi(roster, None)
    assert anonymous.instances("web", passing=True).status_code == 401
    assert anonymous.catalog_services(wait=2).status_code == 401


def test_service_registry_endpoint_sends_no_token(acl_roster):
    """POST /actuator/service-registry {"status": "OUT_OF_SERVICE"} makes Spring put
    its instance in maintenance without a token; roster keeps maintenance for
    admin tokens, which the anonymous policy can never be, so it is refused (a
    Consul with ACLs refuses it too unless its anonymous token may write). Reading
    the status back (GET /actuator/service-registry) works under anonymous read
    and sees maintenance set by an operator, by the check's name."""
    roster = acl_roster(ANONYMOUS_READ)
    spring = ConsulApi(roster, WEB)
    assert spring.register(spring_service("web", "web-8080", 8080, TTL_CHECK)).status_code == 200
    anonymous = ConsulApi(roster, None)
    resp = anonymous.set_status("web-8080", out_of_service=True)
    assert (resp.status_code, resp.text) == (401, "ACL not found")

    resp = raw(roster, "PUT", "/v1/agent/service/maintenance/web-8080",
               params={"enable": "true", "reason": "drain", "token": ADMIN})
    assert resp.status_code == 200, resp.text
    resp = anonymous.get_status_checks("web")
    assert resp.status_code == 200, resp.text
    names = {ch["Name"] for ch in resp.json() if ch.get("ServiceID") == "web-8080"}
    assert "Service Maintenance Mode" in names, names  # what getStatus looks for


# --- a write-scoped token ----------------------------------------------------------


def test_write_scoped_token_writes_its_services_only(acl_roster):
    roster = acl_roster(TOKENS)
    web = ConsulApi(roster, WEB)
    ops = ConsulApi(roster, ADMIN)
    assert ops.register(spring_service("billing", "billing-7000", 7000, TTL_CHECK)).status_code == 200

    # Its own service (web* matches web and web-api): register, heartbeat, deregister.
    assert web.register(spring_service("web", "web-8080", 8080, TTL_CHECK)).status_code == 200
    assert web.heartbeat("web-8080").status_code == 200
    # A writer may read (discovery of other services works with the same token).
    assert set(by_id(web.instances("billing", passing=False))) == {"billing-7000"}

    # Another service: 403 with Consul's "Permission denied" text, and nothing changes.
    for resp in (
        web.register(spring_service("billing", "billing-7001", 7001, TTL_CHECK)),
        web.heartbeat("billing-7000"),
        web.deregister("billing-7000"),
    ):
        assert resp.status_code == 403, resp.text
        assert resp.text.startswith("Permission denied"), resp.text
        assert "billing" in resp.text
    assert set(by_id(ops.instances("billing", passing=False))) == {"billing-7000"}
    entries = by_id(ops.instances("billing", passing=False))
    status = service_checks(entries["billing-7000"], "billing-7000")["service:billing-7000"]["Status"]
    assert status == "critical", "the refused heartbeat changed nothing"

    # A read-only token reads but cannot register.
    reader = ConsulApi(roster, READER)
    assert reader.catalog_services().status_code == 200
    assert reader.register(spring_service("web", "web-8081", 8081, TTL_CHECK)).status_code == 403

    assert web.deregister("web-8080").status_code == 200
    assert by_id(ops.instances("web", passing=False)) == {}


def test_unknown_query_token_is_refused(acl_roster):
    roster = acl_roster(ANONYMOUS_READ)
    # A wrong token is refused even where the anonymous policy would allow the
    # call without one: the caller meant to be someone.
    resp = ConsulApi(roster, "not-a-configured-secret").catalog_services()
    assert resp.status_code == 403, resp.text
    assert resp.text.startswith("Permission denied"), resp.text


def test_query_token_is_decoded_as_consul_api_encodes_it(acl_roster):
    """consul-api sends the token through java.net.URLEncoder: a secret with `+`,
    `/` or `=` (base64) arrives as %2B, %2F, %3D and must match once decoded."""
    roster = acl_roster(TOKENS)
    spring = ConsulApi(roster, B64)
    assert "%2B" in spring._url("/") and "%2F" in spring._url("/") and "%3D" in spring._url("/")
    resp = spring.register(spring_service("web", "web-8080", 8080, TTL_CHECK))
    assert (resp.status_code, resp.text) == (200, "")
    assert spring.heartbeat("web-8080").status_code == 200
    assert set(by_id(spring.instances("web", passing=True))) == {"web-8080"}
    assert spring.deregister("web-8080").status_code == 200


def test_query_token_is_not_taken_on_native_paths(acl_roster):
    """?token= is for Consul's paths only: URLs end up in logs."""
    roster = acl_roster(TOKENS)
    resp = raw(roster, "GET", "/v1/services", params={"token": ADMIN})
    assert resp.status_code == 401, resp.text
    resp = raw(roster, "GET", "/v1/services", headers={"Authorization": f"Bearer {ADMIN}"})
    assert resp.status_code == 200, resp.text


# --- the same through py-consul's token= -------------------------------------------


def test_py_consul_token_argument(acl_roster, flip_server):
    roster = acl_roster(TOKENS)
    web = consul.Consul(host=HOST, port=roster.port, token=WEB)
    ops = consul.Consul(host=HOST, port=roster.port, token=ADMIN)
    nobody = consul.Consul(host=HOST, port=roster.port)

    assert web.agent.service.register(
        "web", service_id="web-8080", address=HOST, port=8080, meta={"secure": "false"},
        check=Check.http(actuator_url(flip_server), "10s"),
    ) is True
    assert web.agent.service.register("web-api", service_id="web-api-9000", port=9000, check=Check.ttl("30s")) is True
    assert web.agent.check.ttl_pass("service:web-api-9000") is True

    _, entries = wait_for("the HTTP check to pass", lambda: (lambda r: r if r[1] else None)(
        web.health.service("web", passing=True)))
    assert [e["Service"]["ID"] for e in entries] == ["web-8080"]
    _, entries = web.health.service("web-api", passing=True)
    assert [e["Service"]["ID"] for e in entries] == ["web-api-9000"]
    index, services = web.catalog.services()
    assert {"web", "web-api"} <= set(services)

    # The blocking form, with the token.
    start = time.monotonic()
    new_index, _ = web.catalog.services(index=index, wait="2s")
    assert new_index == index and time.monotonic() - start >= 1.5

    # Another service: ACLPermissionDenied (403).
    assert ops.agent.service.register("billing", service_id="billing-7000", port=7000, check=Check.ttl("30s"))
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.register("billing", service_id="billing-7001", port=7001)
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.check.ttl_pass("service:billing-7000")
    with pytest.raises(consul.ACLPermissionDenied):
        web.agent.service.deregister("billing-7000")
    # A per-call token= overrides the client's.
    assert web.agent.check.ttl_pass("service:billing-7000", token=ADMIN) is True

    # Without a token and without an anonymous policy: status yes, catalog no
    # (py-consul raises ACLDisabled on 401).
    assert isinstance(nobody.status.leader(), str)
    with pytest.raises(consul.ACLDisabled):
        nobody.catalog.services()
    with pytest.raises(consul.ACLDisabled):
        nobody.agent.service.register("web", service_id="web-8081", port=8081)

    assert web.agent.service.deregister("web-8080") is True
    assert web.agent.service.deregister("web-api-9000") is True
    _, entries = ops.health.service("web")
    assert entries == []


def test_py_consul_without_token_under_anonymous_read(acl_roster):
    roster = acl_roster(ANONYMOUS_READ)
    web = consul.Consul(host=HOST, port=roster.port, token=WEB)
    nobody = consul.Consul(host=HOST, port=roster.port)
    assert web.agent.service.register("web", service_id="web-8080", port=8080) is True

    assert isinstance(nobody.status.leader(), str)
    _, services = nobody.catalog.services()
    assert "web" in services
    _, entries = nobody.health.service("web")
    assert [e["Service"]["ID"] for e in entries] == ["web-8080"]
    with pytest.raises(consul.ACLDisabled):
        nobody.agent.service.register("web", service_id="web-8081", port=8081)
    with pytest.raises(consul.ACLDisabled):
        nobody.agent.service.deregister("web-8080")
