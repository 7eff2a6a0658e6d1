"""How gRPC's balancing follows what roster serves: round robin over healthy
endpoints, instance weights, localities from metadata, warning weights and the
policy named in metadata."""

from __future__ import annotations

import time

import pytest
from conftest import Echo, share, warm

ECHO = "xds:///echo"


def test_calls_spread_evenly_over_three_backends(echo: Echo) -> None:
    warm(echo.client, ECHO, {"a", "b", "c"})
    hits = echo.client.spread(ECHO, 300)
    assert set(hits) == {"a", "b", "c"}, hits
    for name in "abc":
        assert 85 <= hits[name] <= 115, f"round robin over 3 equal backends: {hits}"


def test_weights_one_to_three_give_one_to_three(roster, client, backends) -> None:
    light, heavy = backends("light"), backends("heavy")
    roster.register("weighted", "weighted-light", light, weights={"passing": 1})
    roster.register("weighted", "weighted-heavy", heavy, weights={"passing": 3})
    warm(client, "xds:///weighted", {"light", "heavy"})
    hits = client.spread("xds:///weighted", 400)
    assert 0.65 <= share(hits, "heavy") <= 0.85, f"weights 1:3: {hits}"


def test_localities_from_metadata_weigh_by_their_instances(roster, client, backends) -> None:
    # Two instances in zone z1, one in z2, equal weights: each locality weighs
    # what its instances do, so every instance gets a third (were the localities
    # weighted alike, c would get half).
    for name, zone in (("a", "z1"), ("b", "z1"), ("c", "z2")):
        roster.register("zoned", f"zoned-{name}", backends(name), meta={"region": "r1", "zone": zone})
    warm(client, "xds:///zoned", {"a", "b", "c"})
    hits = client.spread("xds:///zoned", 300)
    for name in "abc":
        assert 80 <= hits.get(name, 0) <= 120, f"2 instances in z1, 1 in z2, equal weights: {hits}"


def test_weights_inside_and_across_localities(roster, client, backends) -> None:
    # z1: a (1) and b (3); z2: c (2). gRPC honours this as 1:3:2.
    for name, zone, weight in (("a", "z1", 1), ("b", "z1", 3), ("c", "z2", 2)):
        roster.register("mixed", f"mixed-{name}", backends(name), meta={"zone": zone}, weights={"passing": weight})
    warm(client, "xds:///mixed", {"a", "b", "c"})
    hits = client.spread("xds:///mixed", 600)
    assert 0.10 <= share(hits, "a") <= 0.23, f"weights 1:3:2: {hits}"
    assert 0.42 <= share(hits, "b") <= 0.58, f"weights 1:3:2: {hits}"
    assert 0.26 <= share(hits, "c") <= 0.41, f"weights 1:3:2: {hits}"


def test_warning_instance_keeps_serving_at_its_warning_weight(roster, client, backends) -> None:
    busy, calm = backends("busy"), backends("calm")
    roster.register(
        "warned", "warned-busy", busy, weights={"passing": 3, "warning": 1},
        checks=[{"id": "load", "ttl": "10m", "initial_status": "passing"}],
    )
    roster.register("warned", "warned-calm", calm, weights={"passing": 1})
    warm(client, "xds:///warned", {"busy", "calm"})
    hits = client.spread("xds:///warned", 400)
    assert 0.65 <= share(hits, "busy") <= 0.85, f"passing weights 3:1: {hits}"

    roster.api("PUT", "/v1/services/warned/instances/warned-busy/checks/load/warn")
    # Warning is still healthy for xDS: busy keeps getting calls, now at its
    # warning weight (1:1). Bounded wait for the new weights to arrive.
    deadline = time.monotonic() + 10
    while True:
        hits = client.spread("xds:///warned", 200)
        assert hits.get("busy", 0) > 0, f"a warning instance must keep getting calls: {hits}"
        if 0.35 <= share(hits, "busy") <= 0.65:
            break
        assert time.monotonic() < deadline, f"weights 1:1 after warning not reached in 10s: {hits}"


def test_ring_hash_policy_from_metadata_serves_every_instance(roster, client, backends) -> None:
    # Without a hash policy in the route, gRPC's ring hash hashes each call at
    # random, so calls reach every instance. The cluster must be accepted (no
    # NACK: checked after every test).
    for name in "abc":
        roster.register("hashed", f"hashed-{name}", backends(name), meta={"lb_policy": "ring_hash"})
    warm(client, "xds:///hashed", {"a", "b", "c"})
    hits = client.spread("xds:///hashed", 300)
    for name in "abc":
        assert hits.get(name, 0) >= 45, f"ring hash, random per call: {hits}"


def test_least_request_policy_from_metadata_is_usable_by_grpc_core(roster, client, backends) -> None:
    # least_request is sent first with round robin after it; grpcio 1.85 has
    # no least_request and must fall back rather than reject the cluster.
    for name in "abc":
        roster.register("fewest", f"fewest-{name}", backends(name), meta={"lb_policy": "least_request"})
    out = client.calls("xds:///fewest", 30)
    assert not out["errors"], f"calls failed: {out['errors']}"
    assert roster.metric("roster_xds_nacks_total") == 0
