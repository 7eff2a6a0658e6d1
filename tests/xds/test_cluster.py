"""gRPC clients of a 3-node roster cluster (three processes on loopback).

A client whose bootstrap names a follower balances over what the follower
serves, keeps calling without a single failure while the leader is SIGKILLed
and another is elected, and then follows changes written through the
surviving nodes. Every node serves xDS from its own copy of the catalog
(docs/xds.md, "Clusters"), so a follower's stream does not depend on the
leader: the follower stays up, its stream to the client never breaks, and a
failed call during the failover would be a bug.

A client whose bootstrap names the leader first and a follower second shows
what grpcio's xDS fallback (gRFC A71) does when the leader is killed."""

from __future__ import annotations

import time

from conftest import CHANGE_BOUND, WINDOW, Cluster, warm

ECHO = "xds:///echo"
# A change written through one node reaches a client of another node once
# the Raft log carries it there (a heartbeat of 100 ms, expected well under a
# second): the bound adds that to the single-node CHANGE_BOUND, generously.
REPLICATED_CHANGE_BOUND = CHANGE_BOUND + 3.0
# Calls go on this long after the new leader is known, while it settles.
AFTER_ELECTION = 1.0
# Bound on gRPC asking the bootstrap's second server for a new target when the
# first is down (it does so at once: its channel to the first has failed).
FALLBACK_BOUND = 10.0


def test_calls_through_a_follower_survive_a_leader_failover(cluster: Cluster, start_client, backends) -> None:
    leader = cluster.wait_leader()
    follower, other = [n for n in cluster.nodes if n is not leader]
    for name in "abc":
        leader.register("echo", f"echo-{name}", backends(name))

    client = start_client(follower, node_id="xds-cluster-follower")
    warm(client, ECHO, {"a", "b", "c"})
    hits = client.spread(ECHO, 300)
    for name in "abc":
        assert 85 <= hits.get(name, 0) <= 115, f"round robin over 3 equal backends through a follower: {hits}"
    # The client's one xDS stream is on the follower.
    streams = {n.http_port: n.metric("roster_xds_streams", kind="sotw") for n in cluster.nodes}
    assert streams == {leader.http_port: 0, follower.http_port: 1, other.http_port: 0}, streams

    # SIGKILL the leader while the client calls, one call after another, until
    # a new leader is known and a little after.
    responses = follower.metric("roster_xds_responses_total")
    with client.calling(ECHO) as run:
        time.sleep(0.5)
        assert cluster.wait_leader() is leader, "the leadership moved before the kill"
        t_kill = time.monotonic()
        cluster.kill(leader)
        cluster.wait_leader([follower, other])
        t_elected = time.monotonic()
        time.sleep(AFTER_ELECTION)
    out = run.result
    assert out["start"] < t_kill and out["end"] > t_elected, f"the calls did not span the failover: {out}"
    assert not out["errors"], (
        f"calls through the follower failed during the failover (leader killed at {t_kill:.2f}, "
        f"new leader known at {t_elected:.2f}): {out}\n{client.log()}\n{cluster.logs()}"
    )
    assert out["hits"].keys() == {"a", "b", "c"}, out
    # The stream never broke (a new one would have been sent every resource
    # again) and the failover changed nothing a client sees.
    assert follower.metric("roster_xds_streams", kind="sotw") == 1, "the client's stream left the follower"
    assert follower.metric("roster_xds_responses_total") == responses, (
        f"the follower sent xDS responses during the failover ({responses} before):\n{client.log()}"
    )

    # Changes written through the survivor that is not the client's node
    # (it forwards them to the leader, possibly the client's node) reach the
    # client over its unbroken stream.
    t0 = time.monotonic()
    cluster.write(other, "DELETE", "/v1/services/echo/instances/echo-c")
    r = client.until(ECHO, "c", present=False, deadline=REPLICATED_CHANGE_BOUND + 10)
    assert r["met"], f"c still got calls after its deregistration: {r}\n{cluster.logs()}"
    assert r["at"] - t0 <= REPLICATED_CHANGE_BOUND, f"c stopped getting calls only {r['at'] - t0:.2f}s later: {r}"
    assert not r["errors"], r
    assert client.spread(ECHO, 3 * WINDOW).keys() == {"a", "b"}

    d = backends("d")
    t0 = time.monotonic()
    cluster.write(other, "PUT", "/v1/services/echo/instances/echo-d", {"address": "127.0.0.1", "port": d.port})
    r = client.until(ECHO, "d", present=True, deadline=REPLICATED_CHANGE_BOUND + 10)
    assert r["met"], f"d got no call after its registration: {r}\n{cluster.logs()}"
    assert r["at"] - t0 <= REPLICATED_CHANGE_BOUND, f"d got calls only {r['at'] - t0:.2f}s later: {r}"
    assert not r["errors"], r
    hits = client.spread(ECHO, 300)
    assert hits.keys() == {"a", "b", "d"}, hits


def test_second_server_of_the_bootstrap_serves_what_the_client_had_not_cached(
    cluster: Cluster, start_client, backends
) -> None:
    """A bootstrap naming the leader, then a follower; the leader is killed.

    grpcio 1.85 falls back to the next server (gRFC A71, on without any
    setting) only for resources it has not cached, and keeps one xDS client
    per channel target: a target it already had stays with the dead first
    server and keeps calling the endpoints it last got (no failure, but no
    update either, until that server is back), while a target first used
    after the kill is served by the follower at once."""
    leader = cluster.wait_leader()
    follower, other = [n for n in cluster.nodes if n is not leader]
    for name in "abc":
        leader.register("echo", f"echo-{name}", backends(name))
    client = start_client([leader, follower], node_id="xds-cluster-fallback")
    warm(client, ECHO, {"a", "b", "c"})
    streams = {n.http_port: n.metric("roster_xds_streams", kind="sotw") for n in cluster.nodes}
    assert streams == {leader.http_port: 1, follower.http_port: 0, other.http_port: 0}, streams

    with client.calling(ECHO) as run:
        time.sleep(0.5)
        assert cluster.wait_leader() is leader, "the leadership moved before the kill"
        cluster.kill(leader)
        cluster.wait_leader([follower, other])
        time.sleep(AFTER_ELECTION)
    out = run.result
    assert not out["errors"], f"calls from the client's cache failed: {out}\n{client.log()}"
    assert out["hits"].keys() == {"a", "b", "c"}, out

    # A change after the kill, on the follower too.
    cluster.write(other, "DELETE", "/v1/services/echo/instances/echo-c")
    deadline = time.monotonic() + REPLICATED_CHANGE_BOUND
    while "echo-c" in {i["id"] for i in follower.api("GET", "/v1/services/echo")["instances"]}:
        assert time.monotonic() < deadline, f"the follower still lists echo-c:\n{cluster.logs()}"
        time.sleep(0.05)

    # A target new to the client: its xDS client finds the first server down
    # and nothing cached, and asks the follower.
    e = backends("e")
    cluster.write(other, "PUT", "/v1/services/echo2/instances/echo2-e", {"address": "127.0.0.1", "port": e.port})
    r = client.until("xds:///echo2", "e", present=True, deadline=FALLBACK_BOUND)
    assert r["met"], f"a new target was not served by the second server: {r}\n{client.log()}"
    assert follower.metric("roster_xds_streams", kind="sotw") == 1, "no stream on the fallback server"

    # The target the client had: still its last endpoints, c included.
    hits = client.spread(ECHO, 90)
    assert "c" in hits, (
        f"grpcio now moves a target with everything cached to the fallback server ({hits}): "
        "update this test and the Clusters paragraph of docs/xds.md"
    )
