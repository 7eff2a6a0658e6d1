#!/usr/bin/env python3
"""Helpers of tests/cluster_fault.sh and bench/cluster.sh (standard library only).

  helper.py ports N                  N free loopback ports
  helper.py raft PORT                "STATE LEADER_PORT TERM APPLIED" of a node, or "down"
  helper.py leader PORT..            the leader's port all the nodes report; fails if they differ
  helper.py wait-leader T_MS SECS PORT..  polls every 20 ms until the nodes agree on a
                                     leader among them; prints ms since T_MS
  helper.py index PORT               the node's catalog index, or -1
  helper.py peer PORT MEMBER_PORT    how node PORT sees the member: "reachable LAG",
                                     "unreachable LAG", or "unknown"
  helper.py writer HIST STOP PORT..  writes until the file STOP exists (see below)
  helper.py first-ack HIST T_MS      ms from T_MS to the first ack of a write sent after it
  helper.py check HIST PORT..        final consistency check of every node

The writer (three threads) registers instances i-1, i-2, ... (ten services
s0..s9), each on the next node round-robin; when a node fails (connection
refused, timeout, 5xx) it tries the next one. Every fourth write a thread
deregisters an older instance it registered.
HIST gets one line per acknowledged write:
    ack OP ID PORT STATUS T_START_MS T_END_MS CLEAN
and one per attempt that may or may not have been applied (timeout, 503, reset):
    amb OP ID PORT WHY T_START_MS T_END_MS
Three more threads each register a leased instance lease/l-N (ttl LEASE_TTL)
and heartbeat it every 0.5 s through the nodes in turn until STOP; the check
wants them passing on every node and never modified (no expiry, even briefly,
across the failovers: a new leader re-arms every lease).
CLEAN=1 means the first attempt that reached a node was acknowledged: no copy
of that request can still be in flight somewhere. Only clean registrations
are ever deregistered, so a late copy of an abandoned request cannot bring a
deregistered instance back and make the check fail falsely.
"""
import http.client
import json
import os
import socket
import sys
import threading
import time

TIMEOUT = 1.5  # per attempt (a write takes ~15 ms); a paused node never answers
WRITERS = 3  # concurrent writer threads
LEASES = 3  # leased instances heartbeated throughout
LEASE_TTL = "5s"


def now_ms():
    return int(time.time() * 1000)


def get_json(port, path, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        body = r.read()
        if r.status != 200:
            return None
        return json.loads(body)
    except (OSError, http.client.HTTPException, ValueError):
        return None
    finally:
        c.close()


def cmd_ports(n):
    socks = []
    for _ in range(int(n)):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    print(" ".join(str(s.getsockname()[1]) for s in socks))
    for s in socks:
        s.close()


def cmd_raft(port):
    st = get_json(port, "/v1/operator/raft")
    if st is None:
        print("down")
        return
    leader = "-"
    for m in st.get("members", []):
        if m.get("leader"):
            leader = m["addr"].rsplit(":", 1)[-1]
    print(st.get("state"), leader, st.get("term"), st.get("applied"))


def cmd_peer(port, member_port):
    """How node `port` (the leader) sees the member on `member_port`:
    "reachable LAG", "unreachable LAG", or "unknown" without a leader's view."""
    st = get_json(port, "/v1/operator/raft", timeout=2.0)
    if st is None or st.get("replication_view") is None:
        print("unknown")
        return
    for m in st.get("members", []):
        if m["addr"].rsplit(":", 1)[-1] == str(member_port):
            state = {True: "reachable", False: "unreachable"}.get(m.get("reachable"), "unknown")
            print(state, m.get("lag"))
            return
    print("unknown")


def cmd_leader(ports):
    seen = set()
    for port in ports:
        st = get_json(port, "/v1/operator/raft")
        if st is None:
            return 1
        leaders = [m["addr"].rsplit(":", 1)[-1] for m in st.get("members", []) if m.get("leader")]
        if len(leaders) != 1:
            return 1
        seen.add(leaders[0])
    if len(seen) != 1:
        return 1
    print(seen.pop())
    return 0


def leader_of(ports):
    seen = set()
    for port in ports:
        st = get_json(port, "/v1/operator/raft", timeout=1.0)
        if st is None:
            return None
        leaders = [m["addr"].rsplit(":", 1)[-1] for m in st.get("members", []) if m.get("leader")]
        if len(leaders) != 1:
            return None
        seen.add(int(leaders[0]))
    return seen.pop() if len(seen) == 1 else None


def cmd_wait_leader(t, secs, ports):
    end = time.time() + float(secs)
    while time.time() < end:
        if leader_of(ports) in ports:
            print(now_ms() - int(t))
            return 0
        time.sleep(0.02)
    return 1


def cmd_index(port):
    st = get_json(port, "/v1/services")
    print(-1 if st is None else st.get("index", -1))


class History:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.lock = threading.Lock()
        self.next = 0

    def write(self, line):
        with self.lock:
            self.f.write(line)

    def take(self):
        with self.lock:
            self.next += 1
            return self.next


class Writer:
    def __init__(self, hist, stop, ports):
        self.hist = hist
        self.stop = stop
        self.ports = [int(p) for p in ports]
        self.conns = {}

    def conn(self, port):
        c = self.conns.get(port)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
            self.conns[port] = c
        return c

    def drop(self, port):
        c = self.conns.pop(port, None)
        if c is not None:
            c.close()

    def once(self, port, method, path, body):
        """(status, None) or (None, why, sent): sent=False when the request
        surely reached no server."""
        c = self.conn(port)
        try:
            c.request(method, path, body=body,
                      headers={"Content-Type": "application/json"} if body else {})
            r = c.getresponse()
            r.read()
            if r.getheader("Connection", "").lower() == "close":
                self.drop(port)
            return r.status, None, True
        except ConnectionRefusedError:
            self.drop(port)
            return None, "refused", False
        except socket.timeout:
            self.drop(port)
            return None, "timeout", True
        except (OSError, http.client.HTTPException) as e:
            self.drop(port)
            return None, type(e).__name__, True

    def attempt(self, op, svc, iid, start, ttl=None):
        """Retries over the nodes until acknowledged; returns (status, clean)."""
        reg = {"address": "10.0.0.1", "port": 80}
        if ttl:
            reg["ttl"] = ttl
        method, body, path = {
            "reg": ("PUT", json.dumps(reg), ""),
            "del": ("DELETE", None, ""),
            "hb": ("PUT", None, "/heartbeat"),
        }[op]
        path = f"/v1/services/{svc}/instances/{iid}{path}"
        clean = True
        deadline = time.time() + 60
        k = start
        while time.time() < deadline:
            for _ in range(len(self.ports)):
                port = self.ports[k % len(self.ports)]
                k += 1
                t0 = now_ms()
                status, why, sent = self.once(port, method, path, body)
                t1 = now_ms()
                if status is not None and op == "hb" and 200 <= status < 300:
                    return status, clean  # heartbeats are not recorded
                if status is not None and (200 <= status < 300 or
                                           (op == "del" and status == 404)):
                    self.hist.write(f"ack {op} {svc}/{iid} {port} {status} {t0} {t1} {int(clean)}\n")
                    return status, clean
                if status is not None and 400 <= status < 500:
                    self.hist.write(f"bad {op} {svc}/{iid} {port} {status} {t0} {t1}\n")
                    return status, False
                if sent:
                    clean = False
                    if op != "hb":
                        self.hist.write(f"amb {op} {svc}/{iid} {port} {why or status} {t0} {t1}\n")
            time.sleep(0.05)
        self.hist.write(f"giveup {op} {svc}/{iid} - - {now_ms()} {now_ms()}\n")
        return None, False

    def run(self):
        clean = []  # cleanly registered, not yet deleted
        while not os.path.exists(self.stop):
            k = self.hist.take()
            svc = f"s{k % 10}"
            status, ok = self.attempt("reg", svc, f"i-{k}", k)
            if status is None:
                return 1
            if ok and 200 <= status < 300:
                clean.append((svc, f"i-{k}"))
            if k % 4 == 0 and len(clean) > 8:
                svc, iid = clean.pop(len(clean) // 2)
                if self.attempt("del", svc, iid, k + 1)[0] is None:
                    return 1
        return 0


    def leased(self, j):
        iid = f"l-{j}"
        if self.attempt("reg", "lease", iid, j, ttl=LEASE_TTL)[0] is None:
            return 1
        k = j
        while not os.path.exists(self.stop):
            k += 1
            status, _ = self.attempt("hb", "lease", iid, k)
            if status is None or status >= 300:
                return 1
            time.sleep(0.5)
        return 0


def read_hist(hist):
    rows = []
    with open(hist) as f:
        for line in f:
            p = line.split()
            if len(p) >= 7:
                rows.append(p)
    return rows


def cmd_first_ack(hist, t):
    t = int(t)
    ends = [int(r[6]) for r in read_hist(hist) if r[0] == "ack" and int(r[5]) >= t]
    print(min(ends) - t if ends else -1)


def cmd_check(hist, ports):
    rows = read_hist(hist)
    bad = [r for r in rows if r[0] in ("bad", "giveup")]
    acked_reg = {r[2] for r in rows if r[0] == "ack" and r[1] == "reg"}
    del_tried = {r[2] for r in rows if r[1] == "del"}
    acked_del = {r[2] for r in rows if r[0] == "ack" and r[1] == "del"}
    # A clean first-attempt delete answered 404: the registration was lost.
    lost = [r[2] for r in rows if r[0] == "ack" and r[1] == "del" and r[4] == "404" and r[7] == "1"]
    attempted = {r[2] for r in rows}
    must = acked_reg - del_tried
    leases = {r[2] for r in rows if r[0] == "ack" and r[2].startswith("lease/")}
    if len(leases) != LEASES:
        errors_early = [f"only {len(leases)} of {LEASES} leased instances were registered"]
    else:
        errors_early = []
    errors = errors_early
    if bad:
        errors.append(f"{len(bad)} writes failed for good, first: {' '.join(bad[0])}")
    if lost:
        errors.append(f"deregistering acknowledged instances found them gone: {lost[:5]}")
    views = {}
    for port in ports:
        st = get_json(port, "/v1/services", timeout=5)
        if st is None:
            errors.append(f"node :{port} does not answer GET /v1/services")
            continue
        have = set()
        for s in st["services"]:
            lst = get_json(port, f"/v1/services/{s['name']}?all=true", timeout=5)
            if lst is None:
                errors.append(f"node :{port} does not list {s['name']}")
                continue
            have |= {f"{s['name']}/{i['id']}" for i in lst["instances"]}
            for i in lst["instances"]:
                if s["name"] == "lease" and (i["health"] != "passing" or i["modify_index"] != i["create_index"]):
                    errors.append(f"node :{port}: leased instance {i['id']} is {i['health']}, modified at "
                                  f"{i['modify_index']} (created at {i['create_index']}): its lease expired")
        views[port] = (st["index"], have)
        missing = must - have
        resurrected = acked_del & have
        phantom = have - attempted
        if missing:
            errors.append(f"node :{port} lost {len(missing)} acknowledged registrations, e.g. {sorted(missing)[:5]}")
        if resurrected:
            errors.append(f"node :{port} still has {len(resurrected)} acknowledged deletions, e.g. {sorted(resurrected)[:5]}")
        if phantom:
            errors.append(f"node :{port} has {len(phantom)} instances never written, e.g. {sorted(phantom)[:5]}")
    if len(views) == len(ports):
        idx = {p: v[0] for p, v in views.items()}
        if len(set(idx.values())) != 1:
            errors.append(f"catalog indexes differ: {idx}")
        sets = [v[1] for v in views.values()]
        if any(s != sets[0] for s in sets):
            diff = set.union(*sets) - set.intersection(*sets)
            errors.append(f"instance sets differ between nodes in {len(diff)} ids, e.g. {sorted(diff)[:5]}")
    amb = sum(1 for r in rows if r[0] == "amb")
    first = next(iter(views.values()), (None, set()))
    print(f"acked_registrations={len(acked_reg)} acked_deletions={len(acked_del)} "
          f"ambiguous_attempts={amb} instances={len(first[1])} index={first[0]}")
    for e in errors:
        print("FAIL: " + e, file=sys.stderr)
    return 1 if errors else 0


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "ports":
        cmd_ports(*args)
    elif cmd == "raft":
        cmd_raft(int(args[0]))
    elif cmd == "peer":
        cmd_peer(int(args[0]), int(args[1]))
    elif cmd == "index":
        cmd_index(int(args[0]))
    elif cmd == "wait-leader":
        return cmd_wait_leader(args[0], args[1], [int(p) for p in args[2:]])
    elif cmd == "leader":
        return cmd_leader([int(p) for p in args])
    elif cmd == "writer":
        hist = History(args[0])
        results = []
        threads = [threading.Thread(target=lambda: results.append(Writer(hist, args[1], args[2:]).run()))
                   for _ in range(WRITERS)]
        threads += [threading.Thread(target=lambda j=j: results.append(Writer(hist, args[1], args[2:]).leased(j)))
                    for j in range(1, LEASES + 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return max(results, default=1)
    elif cmd == "first-ack":
        cmd_first_ack(*args)
    elif cmd == "check":
        return cmd_check(args[0], [int(p) for p in args[1:]])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
