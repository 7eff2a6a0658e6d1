"""Driver of tests/federation.sh (Python 3 standard library only).

`run` builds the simulated WAN, starts the datacenters and checks them;
`teardown` kills what `run` started and removes the namespaces (the shell
script's trap calls it, whatever happened).

Topology: a namespace holding a bridge (the WAN), one namespace per
datacenter joined to it by a veth pair with netem (delay, loss) on both
ends, and the root namespace joined without netem so this driver reaches
every node directly:

    root 10.99.0.254 ---+
    dc1  10.99.0.1  ~~~~+ br0 (namespace WAN)
    dc2  10.99.0.2  ~~~~+
    dc3  10.99.0.31-33 ~+   (three Raft nodes on one veth)
"""

import json
import os
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

WORK = os.environ.get("FED_WORK", "/tmp/roster-federation")
BIN = os.environ.get("FED_BIN", "target/debug/roster")
DELAY = os.environ.get("FED_DELAY", "10ms")
LOSS = os.environ.get("FED_LOSS", "1%")
TOKEN = "federation-acceptance-token"
T0 = time.monotonic()

DCS = {
    "dc1": ["10.99.0.1"],
    "dc2": ["10.99.0.2"],
    "dc3": ["10.99.0.31", "10.99.0.32", "10.99.0.33"],
}
PORT = 8500
DNS_PORT = 8600
WAN = "10.99.0.100"
PROXY = False  # set in run(): netem missing, delay by proxies instead
FAILOVER = "web=dc2,dc3"  # dc1's --failover


def say(msg):
    print(f"[federation {time.monotonic() - T0:5.1f}s] {msg}", flush=True)


def fail(msg):
    say(f"FAIL: {msg}")
    sys.exit(1)


def tag():
    path = os.path.join(WORK, "tag")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(f"rf{os.getpid() % 10000}")
    with open(path) as f:
        return f.read().strip()


def ns(name):
    return f"{tag()}-{name}"


def sh(*args, check=True):
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        fail(f"{' '.join(args)}: {r.stderr.strip()}")
    return r


def in_ns(name, *args, check=True):
    return sh("ip", "netns", "exec", ns(name), *args, check=check)


# ---------------------------------------------------------------- network

def build_network():
    t = tag()
    sh("ip", "netns", "add", ns("wan"))
    in_ns("wan", "ip", "link", "set", "lo", "up")
    in_ns("wan", "ip", "link", "add", "br0", "type", "bridge")
    in_ns("wan", "ip", "link", "set", "br0", "up")
    for dc, addrs in DCS.items():
        a, b = f"{t}{dc}a", f"{t}{dc}b"
        sh("ip", "netns", "add", ns(dc))
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", ns(dc))
        sh("ip", "link", "set", b, "netns", ns("wan"))
        in_ns(dc, "ip", "link", "set", a, "name", "eth0")
        for addr in addrs:
            in_ns(dc, "ip", "addr", "add", f"{addr}/24", "dev", "eth0")
        in_ns(dc, "ip", "link", "set", "eth0", "up")
        in_ns(dc, "ip", "link", "set", "lo", "up")
        in_ns("wan", "ip", "link", "set", b, "master", "br0")
        in_ns("wan", "ip", "link", "set", b, "up")
        # Both directions of the link are delayed and lossy: dc1 -> dc2 crosses
        # two such links, so its RTT is four delays.
        if not PROXY:
            netem = ["netem", "delay", DELAY, "loss", LOSS]
            in_ns(dc, "tc", "qdisc", "add", "dev", "eth0", "root", *netem)
            in_ns("wan", "tc", "qdisc", "add", "dev", b, "root", *netem)
    # The WAN's own address: where the delaying proxies listen.
    in_ns("wan", "ip", "addr", "add", f"{WAN}/24", "dev", "br0")
    host, peer = f"{t}h", f"{t}hb"
    sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
    sh("ip", "link", "set", peer, "netns", ns("wan"))
    in_ns("wan", "ip", "link", "set", peer, "master", "br0")
    in_ns("wan", "ip", "link", "set", peer, "up")
    sh("ip", "addr", "add", "10.99.0.254/24", "dev", host)
    sh("ip", "link", "set", host, "up")


def netem_works():
    """Whether this kernel has the netem qdisc (some VM kernels lack it)."""
    probe = f"{tag()}p"
    sh("ip", "link", "add", probe, "type", "veth", "peer", "name", probe + "x")
    try:
        return sh("tc", "qdisc", "add", "dev", probe, "root", "netem", "delay", "1ms",
                  check=False).returncode == 0
    finally:
        sh("ip", "link", "del", probe, check=False)


def parse_ms(text):
    text = text.strip()
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def proxy_main(spec):
    """A delaying TCP proxy (run inside the WAN namespace): each
    `PORT=HOST:PORT` listens on the WAN address and forwards there. Every
    chunk waits two link delays (as netem on both link ends would make it),
    in order; a chunk is "lost" with the loss probability and then waits an
    extra 200 ms, the cost of a TCP retransmission."""
    import asyncio
    import random

    delay = 2 * parse_ms(DELAY)
    loss = float(LOSS.rstrip("%")) / 100

    async def pump(reader, writer):
        queue = asyncio.Queue()

        async def send():
            while True:
                due, data = await queue.get()
                wait = due - asyncio.get_running_loop().time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if data is None:
                    break
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.create_task(send())
        last = 0.0
        try:
            while True:
                data = await reader.read(65536)
                now = asyncio.get_running_loop().time()
                extra = 0.2 if loss and random.random() < loss else 0.0
                last = max(last, now + delay + extra)
                await queue.put((last, data or None))
                if not data:
                    break
        except (ConnectionError, OSError):
            await queue.put((last, None))
        try:
            await sender
        except (ConnectionError, OSError):
            pass

    async def handle(target, reader, writer):
        host, port = target.rsplit(":", 1)
        try:
            r2, w2 = await asyncio.wait_for(asyncio.open_connection(host, int(port)), 5)
        except (OSError, asyncio.TimeoutError):
            writer.close()
            return
        await asyncio.gather(pump(reader, w2), pump(r2, writer), return_exceptions=True)

    async def main():
        servers = []
        for item in spec.split(","):
            port, target = item.split("=", 1)
            servers.append(await asyncio.start_server(
                lambda r, w, t=target: handle(t, r, w), WAN, int(port)))
        await asyncio.gather(*(s.serve_forever() for s in servers))

    asyncio.run(main())


def link(dc, up):
    in_ns("wan", "ip", "link", "set", f"{tag()}{dc}b", "up" if up else "down")


def teardown():
    pids = os.path.join(WORK, "pids")
    if os.path.isdir(pids):
        for f in os.listdir(pids):
            try:
                with open(os.path.join(pids, f)) as fh:
                    os.kill(int(fh.read()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
    if not os.path.exists(os.path.join(WORK, "tag")):
        return
    for name in ["dc1", "dc2", "dc3", "wan"]:
        sh("ip", "netns", "del", ns(name), check=False)
    sh("ip", "link", "del", f"{tag()}h", check=False)


# ---------------------------------------------------------------- processes

def proxy_port(addr):
    """The WAN proxy port standing for node `addr`."""
    return 18000 + int(addr.rsplit(".", 1)[1])


def federate_for(me):
    parts = []
    for dc, addrs in DCS.items():
        if dc != me:
            via = [f"{WAN}:{proxy_port(a)}" if PROXY else f"{a}:{PORT}" for a in addrs]
            parts.append(dc + "=" + ",".join(via))
    return ";".join(parts)


def start_proxies():
    spec = ",".join(f"{proxy_port(a)}={a}:{PORT}" for addrs in DCS.values() for a in addrs)
    log = open(os.path.join(WORK, "proxy.log"), "ab")
    p = subprocess.Popen(["ip", "netns", "exec", ns("wan"), sys.executable, __file__, "proxy", spec],
                         stdout=log, stderr=log)
    with open(os.path.join(WORK, "pids", "proxy"), "w") as f:
        f.write(str(p.pid))


def start(dc, addr, name, extra=()):
    os.makedirs(os.path.join(WORK, "pids"), exist_ok=True)
    log = open(os.path.join(WORK, f"{name}.log"), "ab")
    args = [
        "ip", "netns", "exec", ns(dc), BIN, "serve",
        "--http-addr", f"{addr}:{PORT}", "--dns-addr", f"{addr}:{DNS_PORT}",
        "--no-grpc", "--datacenter", dc, "--node-name", name,
        "--federate", federate_for(dc), "--federation-token", TOKEN,
        "--federation-timeout", "1s", "--federation-probe-interval", "500ms",
        *extra,
    ]
    p = subprocess.Popen(args, stdout=log, stderr=log)
    with open(os.path.join(WORK, "pids", name), "w") as f:
        f.write(str(p.pid))
    return p


def start_all():
    procs = {}
    if PROXY:
        start_proxies()
    procs["dc1"] = start("dc1", "10.99.0.1", "dc1-a", ["--failover", FAILOVER])
    procs["dc2"] = start("dc2", "10.99.0.2", "dc2-a")
    join = ",".join(f"{a}:{PORT}" for a in DCS["dc3"])
    for i, addr in enumerate(DCS["dc3"], 1):
        procs[f"dc3-{i}"] = start("dc3", addr, f"dc3-{i}", [
            "--data-dir", os.path.join(WORK, f"dc3-{i}"), "--bootstrap-expect", "3",
            "--join", join, "--cluster-token", "federation-cluster-token",
            "--raft-heartbeat", "100ms", "--lease-grace", "1s",
        ])
    return procs


# ---------------------------------------------------------------- HTTP, DNS

def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    t = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            status, headers = r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        raw, status, headers = e.read(), e.code, dict(e.headers)
    except (urllib.error.URLError, OSError) as e:
        return 0, {}, str(e), time.monotonic() - t
    took = time.monotonic() - t
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        body = raw.decode(errors="replace")
    headers = {k.lower(): v for k, v in headers.items()}
    return status, headers, body, took


def url(addr, path):
    return f"http://{addr}:{PORT}{path}"


def dns_a(server, name, timeout=2.0):
    """(rcode, [IPv4 strings]) of an A query over UDP."""
    qid = os.getpid() & 0xFFFF
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\x00" + struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (server, DNS_PORT))
        data, _ = s.recvfrom(4096)
    except OSError:
        return -1, []
    finally:
        s.close()
    rcode = data[3] & 0x0F
    ancount = struct.unpack(">H", data[6:8])[0]
    pos = len(q)
    ips = []
    for _ in range(ancount):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos] != 0:
                pos += data[pos] + 1
            pos += 1
        rtype, _, _, rdlen = struct.unpack(">HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1 and rdlen == 4:
            ips.append(socket.inet_ntoa(data[pos:pos + 4]))
        pos += rdlen
    return rcode, sorted(ips)


def until(secs, what, check):
    end = time.monotonic() + secs
    last = None
    while time.monotonic() < end:
        ok, last = check()
        if ok:
            return last
        time.sleep(0.1)
    fail(f"{what}: not within {secs}s (last: {last})")


# ---------------------------------------------------------------- scenario

D1, D2, D3 = "10.99.0.1", "10.99.0.2", "10.99.0.31"


def register(addr, service, iid, ip):
    s, _, b, _ = http("PUT", url(addr, f"/v1/services/{service}/instances/{iid}"),
                      {"address": ip, "port": 8080})
    if s not in (200, 201):
        fail(f"register {iid} at {addr}: {s} {b}")


def maintenance(addr, iid, on):
    s, _, b, _ = http("PUT", url(addr, f"/v1/services/web/instances/{iid}/maintenance"),
                      {"enabled": on, "reason": "test" if on else None})
    if s != 200:
        fail(f"maintenance {iid}={on}: {s} {b}")


def datacenter_row(name):
    _, _, rows, _ = http("GET", url(D1, "/v1/datacenters"))
    return next((r for r in rows or [] if r["name"] == name), {})


def web_answer():
    s, h, b, _ = http("GET", url(D1, "/v1/services/web"))
    ids = sorted(i["id"] for i in (b or {}).get("instances", [])) if s == 200 else []
    return h.get("x-roster-datacenter"), ids


def run():
    global PROXY
    os.makedirs(os.path.join(WORK, "pids"), exist_ok=True)
    PROXY = not netem_works()
    if PROXY:
        say("NOTE: this kernel has no netem qdisc (tc: 'Specified qdisc kind is unknown'): "
            f"namespaces, veth links and link cuts are real, but the WAN delay ({DELAY} per link end, "
            f"so {2 * parse_ms(DELAY) * 1000:.0f} ms each way) and loss ({LOSS} of chunks, as a 200 ms "
            "retransmission) come from a delaying TCP proxy in the WAN namespace")
    else:
        say(f"building the WAN (netem delay {DELAY} loss {LOSS} on every link end)")
    build_network()
    procs = start_all()
    for name, addr in [("dc1", D1), ("dc2", D2)] + [(f"dc3-{i}", a) for i, a in enumerate(DCS["dc3"], 1)]:
        until(30, f"{name} ready", lambda a=addr: (http("GET", url(a, "/ready"), timeout=2)[0] == 200, None))
    say("all five nodes ready (dc3 has a leader)")
    for dc in ["dc2", "dc3"]:
        until(15, f"dc1 sees {dc} up", lambda dc=dc: (datacenter_row(dc).get("state") == "up", datacenter_row(dc)))
    rows = http("GET", url(D1, "/v1/datacenters"))[2]
    say("dc1's datacenters: " + ", ".join(
        f"{r['name']} {r['state']}" + (f" rtt={r['rtt_ms']}ms" if r.get("rtt_ms") else " (local)") for r in rows))
    _, _, names, _ = http("GET", url(D1, "/v1/catalog/datacenters"))
    if names[0] != "dc1" or sorted(names) != ["dc1", "dc2", "dc3"]:
        fail(f"Consul datacenters: {names}")

    register(D1, "web", "web-1", "10.1.0.1")
    register(D2, "web", "web-2", "10.2.0.1")
    register(D3, "web", "web-3", "10.3.0.1")
    register(D3, "api", "api-3", "10.3.0.9")

    # Cross-datacenter reads through every face.
    s, h, b, _ = http("GET", url(D1, "/v1/services/web?dc=dc2"))
    if s != 200 or h.get("x-roster-datacenter") != "dc2" or b["instances"][0]["id"] != "web-2":
        fail(f"?dc=dc2: {s} {h} {b}")
    s, h, rows, _ = http("GET", url(D1, "/v1/health/service/api?dc=dc3&passing"))
    if s != 200 or rows[0]["Service"]["ID"] != "api-3":
        fail(f"Consul ?dc=dc3: {s} {rows}")
    index = int(h["x-consul-index"])
    holder = {}
    import threading

    def blocked():
        holder["r"] = http("GET", url(D1, f"/v1/health/service/api?dc=dc3&passing&index={index}&wait=10s"), timeout=20)
    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.5)
    register(D3, "api", "api-4", "10.3.0.10")
    t.join(15)
    s, _, rows, took = holder.get("r", (0, {}, None, 0))
    if s != 200 or len(rows) != 2:
        fail(f"blocking query through ?dc=dc3: {s} {rows}")
    say(f"blocking query through ?dc=dc3 woke on the remote change ({took:.2f}s)")
    ips = until(10, "DNS api.service.dc3.roster", lambda: (
        lambda r: (r[0] == 0 and r[1] == ["10.3.0.10", "10.3.0.9"], r))(dns_a(D1, "api.service.dc3.roster")))
    say(f"DNS api.service.dc3.roster via dc1: {ips[1]}")

    # Added latency of a cross-datacenter read.
    local, remote = [], []
    for _ in range(15):
        local.append(http("GET", url(D1, "/v1/services/web"))[3])
        remote.append(http("GET", url(D1, "/v1/services/web?dc=dc2"))[3])
    say(f"read latency from this host, median of 15: local {statistics.median(local)*1000:.1f} ms, "
        f"?dc=dc2 {statistics.median(remote)*1000:.1f} ms (dc1<->dc2 RTT {datacenter_row('dc2').get('rtt_ms')} ms)")

    # Failover and back.
    maintenance(D1, "web-1", True)
    until(10, "failover to dc2", lambda: (web_answer() == ("dc2", ["web-2"]), web_answer()))
    until(10, "DNS failover", lambda: (lambda r: (r[1] == ["10.2.0.1"], r))(dns_a(D1, "web.service.roster")))
    s, h, rows, _ = http("GET", url(D1, "/v1/health/service/web?passing"))
    if h.get("x-roster-datacenter") != "dc2" or rows[0]["Service"]["Datacenter"] != "dc2":
        fail(f"Consul failover: {h} {rows}")
    say("web-1 in maintenance: native, DNS and Consul answers come from dc2")
    maintenance(D1, "web-1", False)
    until(10, "back to dc1", lambda: (web_answer() == (None, ["web-1"]), web_answer()))
    until(10, "DNS back", lambda: (lambda r: (r[1] == ["10.1.0.1"], r))(dns_a(D1, "web.service.roster")))
    say("web-1 back: answers are local again")

    # dc2 cut off: failover skips it; restored: it is used again.
    maintenance(D1, "web-1", True)
    link("dc2", False)
    t_cut = time.monotonic()
    until(15, "dc2 circuit open", lambda: (datacenter_row("dc2").get("circuit") == "open", datacenter_row("dc2")))
    say(f"dc2 cut off: circuit open after {time.monotonic() - t_cut:.1f}s")
    until(15, "failover to dc3 while dc2 is cut off", lambda: (web_answer()[0] == "dc3", web_answer()))
    s, _, b, took = http("GET", url(D1, "/v1/services/web?dc=dc2"))
    if s != 503:
        fail(f"?dc=dc2 while cut off: {s} {b}")
    times = [http("GET", url(D1, "/v1/services/web"))[3] for _ in range(10)]
    say(f"while cut off: ?dc=dc2 fails fast ({s} in {took*1000:.0f} ms); failed-over reads median {statistics.median(times)*1000:.1f} ms")
    s, _, health, _ = http("GET", url(D1, "/health"))
    if s != 200 or health["status"] != "ok" or "dc2" not in health["federation"]["down"]:
        fail(f"/health while dc2 is cut off: {s} {health}")
    link("dc2", True)
    until(20, "dc2 back up", lambda: (datacenter_row("dc2").get("state") == "up", datacenter_row("dc2")))
    until(20, "failover back to dc2", lambda: (web_answer()[0] == "dc2", web_answer()))
    say("dc2 restored: up again, failover answers from dc2 again")
    maintenance(D1, "web-1", False)

    # A dc3 node killed: reads of dc3 go to the others.
    victim = "dc3-1"
    procs[victim].send_signal(signal.SIGKILL)
    procs[victim].wait()
    os.remove(os.path.join(WORK, "pids", victim))
    ok = 0
    for _ in range(20):
        s, h, b, _ = http("GET", url(D1, "/v1/services/api?dc=dc3"))
        ok += s == 200 and h.get("x-roster-datacenter") == "dc3"
    if ok < 19:
        fail(f"reads of dc3 after killing {victim}: {ok}/20 succeeded")
    until(10, "dc1 sees the killed server unhealthy", lambda: (
        any(not srv["healthy"] for srv in datacenter_row("dc3").get("servers", [])), datacenter_row("dc3")))
    if datacenter_row("dc3").get("state") != "up":
        fail("dc3 should stay up with two of three servers")
    say(f"{victim} killed: {ok}/20 reads of dc3 succeeded, dc3 still up, the dead server marked unhealthy")
    metrics = http("GET", url(D1, "/metrics"))[2]
    for line in metrics.splitlines():
        if line.startswith("roster_federation_") and not line.startswith("#"):
            say("  " + line)
    say("PASS")


def percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def timed(path, n):
    out = []
    for _ in range(n):
        s, _, _, took = http("GET", url(D1, path))
        if s != 200:
            fail(f"bench GET {path}: {s}")
        out.append(took * 1000)
    return out


def wrk(path, secs=5):
    """Requests per second of wrk (1 thread, 16 connections) on dc1, or None."""
    import shutil
    if not shutil.which("wrk"):
        return None
    r = sh("wrk", "-t1", "-c16", f"-d{secs}s", url(D1, path), check=False)
    for line in r.stdout.splitlines():
        if line.startswith("Requests/sec:"):
            return float(line.split()[1])
    return None


def bench():
    """bench/federation.sh: added latency of a ?dc= read over the simulated
    WAN, and the cost of failover answers, from this host to dc1."""
    global PROXY, FAILOVER
    os.makedirs(os.path.join(WORK, "pids"), exist_ok=True)
    PROXY = not netem_works()
    FAILOVER = "web=dc2,dc3;*=dc2"
    build_network()
    start_all()
    for addr in [D1, D2]:
        until(30, f"{addr} ready", lambda a=addr: (http("GET", url(a, "/ready"), timeout=2)[0] == 200, None))
    until(15, "dc2 up", lambda: (datacenter_row("dc2").get("rtt_ms") is not None, datacenter_row("dc2")))
    register(D1, "web", "web-1", "10.1.0.1")
    register(D2, "web", "web-2", "10.2.0.1")
    time.sleep(2)  # a few probes for the RTT average
    rtt = datacenter_row("dc2").get("rtt_ms")
    n = 200
    local = timed("/v1/services/web", n)
    remote = timed("/v1/services/web?dc=dc2", n)
    maintenance(D1, "web-1", True)
    until(10, "failover", lambda: (web_answer()[0] == "dc2", web_answer()))
    failover = timed("/v1/services/web", n)
    # Cold failover: the first question about a service whose local
    # instances just went down (its poller starts on that question).
    cold = []
    for i in range(10):
        svc = f"cold{i}"
        register(D1, svc, f"{svc}-1", "10.1.0.9")
        register(D2, svc, f"{svc}-2", "10.2.0.9")
        s, _, b, _ = http("PUT", url(D1, f"/v1/services/{svc}/instances/{svc}-1/maintenance"),
                          {"enabled": True, "reason": "bench"})
        s, h, b, took = http("GET", url(D1, f"/v1/services/{svc}"))
        if h.get("x-roster-datacenter") != "dc2":
            fail(f"cold failover of {svc}: {s} {h} {b}")
        cold.append(took * 1000)
    rates = []
    for round_ in range(2):
        maintenance(D1, "web-1", False)
        time.sleep(0.2)
        loc = wrk("/v1/services/web")
        maintenance(D1, "web-1", True)
        until(10, "failover", lambda: (web_answer()[0] == "dc2", web_answer()))
        fo = wrk("/v1/services/web")
        rates.append((loc, fo))

    def row(name, xs):
        return f"| {name} | {statistics.median(xs):.2f} | {percentile(xs, 0.9):.2f} | {percentile(xs, 0.99):.2f} |"
    print(f"WAN: {'delaying TCP proxy (no netem in this kernel)' if PROXY else 'netem'}, "
          f"{DELAY} per link end; dc1<->dc2 probe RTT (EWMA) {rtt} ms; {n} sequential GETs each from the host to dc1")
    print("| read | p50 ms | p90 ms | p99 ms |\n|---|---|---|---|")
    print(row("local answer (`/v1/services/web`)", local))
    print(row("`?dc=dc2` (forwarded over the WAN)", remote))
    print(row("failover answer (from the poller's cache)", failover))
    print(f"added latency of ?dc=dc2 at p50: {statistics.median(remote) - statistics.median(local):.2f} ms")
    print(f"first failover answer of a service (its poller starts on that question; 10 services): "
          f"p50 {statistics.median(cold):.2f} ms, max {max(cold):.2f} ms")
    for i, (loc, fo) in enumerate(rates, 1):
        if loc and fo:
            print(f"wrk round {i}: local {loc:,.0f} req/s, failover {fo:,.0f} req/s, failover/local {fo / loc:.2f}")


if __name__ == "__main__":
    os.makedirs(WORK, exist_ok=True)
    if sys.argv[1:] == ["teardown"]:
        teardown()
    elif sys.argv[1:2] == ["proxy"]:
        proxy_main(sys.argv[2])
    elif sys.argv[1:] == ["bench"]:
        bench()
    else:
        run()
