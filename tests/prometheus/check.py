#!/usr/bin/env python3
"""Helpers of tests/prometheus/run.sh (standard library only).

  check.py ports N                         N free loopback ports
  check.py targets PROM_PORT WANT_FILE     whether Prometheus' /api/v1/targets shows
                                           what WANT_FILE (JSON) expects; exit 0 if so,
                                           else 1 with the first mismatch on stdout

WANT_FILE is an object keyed by instance id (the instance_id label the relabel
rules copy from __meta_roster_instance_id):
  {"web-1": {"labels": {...}, "discovered": {...}, "health": "up"}, "web-3": null}
A value of null means the target must be absent; "labels" are checked on the
target's labels after relabeling, "discovered" on its discovered labels (the
__meta_roster_* ones), "health" on Prometheus' scrape health.
"""
import json
import socket
import sys
import urllib.request


def ports(n):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def targets(prom_port, want_file):
    with open(want_file) as f:
        want = json.load(f)
    url = f"http://127.0.0.1:{prom_port}/api/v1/targets?state=active"
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            body = json.load(resp)
    except Exception as e:  # not up yet
        print(f"Prometheus API not answering: {e}")
        return 1
    active = body.get("data", {}).get("activeTargets", [])
    by_id = {}
    for t in active:
        iid = t.get("labels", {}).get("instance_id")
        if iid is not None:
            by_id[iid] = t
    for iid, exp in want.items():
        got = by_id.get(iid)
        if exp is None:
            if got is not None:
                print(f"{iid}: still a target ({got.get('scrapeUrl')})")
                return 1
            continue
        if got is None:
            print(f"{iid}: not a target yet (targets: {sorted(by_id)})")
            return 1
        for where, key in (("labels", "labels"), ("discovered", "discoveredLabels")):
            for k, v in exp.get(where, {}).items():
                if got.get(key, {}).get(k) != v:
                    print(f"{iid}: {key}[{k}] is {got.get(key, {}).get(k)!r}, want {v!r}")
                    return 1
        if "health" in exp and got.get("health") != exp["health"]:
            print(f"{iid}: health {got.get('health')!r} (lastError {got.get('lastError')!r}), want {exp['health']!r}")
            return 1
    return 0


def main():
    cmd = sys.argv[1]
    if cmd == "ports":
        ports(int(sys.argv[2]))
        return 0
    if cmd == "targets":
        return targets(sys.argv[2], sys.argv[3])
    print(f"unknown command {cmd}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
