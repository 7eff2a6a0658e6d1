"""Transactions on services through py-consul's `txn.put`: applied whole, or
rolled back whole with Consul's 409 and `Errors`."""

from __future__ import annotations

import pytest
from consul.exceptions import ClientError


def service_op(verb, sid, name=None, port=None, modify_index=None):
    svc = {"ID": sid}
    if name is not None:
        svc.update({"Service": name, "Address": "10.9.0.1", "Port": port, "Tags": ["txn"]})
    if modify_index is not None:
        svc["ModifyIndex"] = modify_index
    return {"Service": {"Verb": verb, "Node": "registrar", "Service": svc}}


def test_a_transaction_of_sets_registers_every_service(c):
    result = c.txn.put([service_op("set", "web-1", "web", 80), service_op("set", "db-1", "db", 5432)])
    assert result["Errors"] is None
    assert [r["Service"]["ID"] for r in result["Results"]] == ["web-1", "db-1"]
    services = c.agent.services()
    assert set(services) == {"web-1", "db-1"}
    assert services["db-1"]["Port"] == 5432
    assert services["web-1"]["Tags"] == ["txn"]
    _, nodes = c.catalog.service("web")
    assert [n["ServiceID"] for n in nodes] == ["web-1"]


def test_a_failed_cas_rolls_back_the_whole_transaction(c):
    first = c.txn.put([service_op("set", "web-1", "web", 80)])
    index = first["Results"][0]["Service"]["ModifyIndex"]
    stale = service_op("cas", "web-1", "web", 8080, modify_index=index + 50)
    with pytest.raises(ClientError) as failed:
        c.txn.put([service_op("set", "web-2", "web", 81), stale])
    assert str(failed.value).startswith("409")
    assert '"OpIndex":1' in str(failed.value).replace(" ", "")
    assert set(c.agent.services()) == {"web-1"}
    # At the right index it applies; then delete removes it.
    fresh = service_op("cas", "web-1", "web", 8080, modify_index=index)
    assert c.txn.put([fresh])["Results"][0]["Service"]["Port"] == 8080
    c.txn.put([service_op("delete", "web-1")])
    assert c.agent.services() == {}


def test_kv_operations_are_refused_by_name(c):
    with pytest.raises(ClientError) as failed:
        c.txn.put([service_op("set", "web-1", "web", 80), {"KV": {"Verb": "set", "Key": "k", "Value": "dg=="}}])
    assert "KV operations are not supported" in str(failed.value)
    assert c.agent.services() == {}
