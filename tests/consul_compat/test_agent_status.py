"""The agent, status and datacenter endpoints: what a Consul client reads before anything else."""

from __future__ import annotations

import re

import consul
import pytest

from conftest import raw


def test_agent_self_reports_dc1_and_a_node_name(c):
    me = c.agent.self()
    assert me["Config"]["Datacenter"] == "dc1"
    assert isinstance(me["Config"]["NodeName"], str) and me["Config"]["NodeName"]


def test_status_leader_and_peers(c):
    leader = c.status.leader()
    # Consul answers the leader's Raft address as a JSON string "host:port".
    assert isinstance(leader, str)
    assert re.fullmatch(r"[^\s:]+:\d+", leader), leader
    peers = c.status.peers()
    assert isinstance(peers, list)
    assert leader in peers


def test_catalog_datacenters_is_dc1(c):
    assert c.catalog.datacenters() == ["dc1"]


def test_catalog_nodes_is_the_one_node_of_agent_self(c):
    c.agent.service.register("web", service_id="web-1", port=8080)
    index, nodes = c.catalog.nodes()
    assert int(index) >= 1
    assert len(nodes) == 1, nodes
    node = nodes[0]
    assert node["Node"] == c.agent.self()["Config"]["NodeName"]
    assert node["Datacenter"] == "dc1"
    assert isinstance(node["Address"], str) and node["Address"]
    # The services' entries name that same node.
    _, entries = c.catalog.service("web")
    assert [(e["Node"], e["Address"], e["Datacenter"]) for e in entries] == [
        (node["Node"], node["Address"], "dc1")
    ]
    _, health = c.health.service("web")
    assert [(e["Node"]["Node"], e["Node"]["Datacenter"]) for e in health] == [(node["Node"], "dc1")]


def test_explicit_dc1_is_accepted(c):
    c.agent.service.register("web", service_id="web-1", port=8080)
    _, services = c.catalog.services(dc="dc1")
    assert "web" in services
    _, entries = c.health.service("web", dc="dc1")
    assert [e["Service"]["ID"] for e in entries] == ["web-1"]


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.catalog.services(dc="dc2"),
        lambda c: c.catalog.service("web", dc="dc2"),
        lambda c: c.catalog.nodes(dc="dc2"),
        lambda c: c.health.service("web", dc="dc2"),
        lambda c: c.health.checks("web", dc="dc2"),
        lambda c: c.health.state("any", dc="dc2"),
    ],
    ids=["catalog.services", "catalog.service", "catalog.nodes", "health.service", "health.checks", "health.state"],
)
def test_other_datacenter_is_refused(c, call):
    c.agent.service.register("web", service_id="web-1", port=8080)
    # Consul: 500 "No path to datacenter" for a datacenter it does not know;
    # py-consul raises ConsulException("500 <body>").
    with pytest.raises(consul.ConsulException) as err:
        call(c)
    assert str(err.value).startswith("500 "), str(err.value)
    assert "No path to datacenter" in str(err.value)


def test_other_datacenter_raw_status_and_body(c, roster):
    resp = raw(roster, "GET", "/v1/health/service/web", params={"dc": "dc2"})
    assert resp.status_code == 500
    assert "No path to datacenter" in resp.text
