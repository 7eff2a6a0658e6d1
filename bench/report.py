#!/usr/bin/env python3
"""Turns bench/run.sh's results.csv into Markdown tables and JSON.

Usage: report.py OUT_DIR MODE [RESULTS.md]

Writes OUT_DIR/results.json and OUT_DIR/table.md; with RESULTS.md, also copies the
raw data to bench/results/peers-MODE.{csv,json} (kept in git, unlike bench/out) and
replaces the text between the run.sh markers in RESULTS.md with the table (the
section "Side by side with peers" is created at the top when it is missing).
"""

import csv
import json
import os
import sys
from collections import defaultdict

BEGIN = "<!-- bench/run.sh: begin generated tables -->"
END = "<!-- bench/run.sh: end generated tables -->"
SECTION = "## Side by side with peers (`bench/run.sh`)"


def load(out):
    """Per (scenario, param, system): the metrics of its best round (most requests
    or queries per second; round 1 where there is no rate), and every round's rate."""
    rows = list(csv.DictReader(open(os.path.join(out, "results.csv"))))
    by_round = defaultdict(lambda: defaultdict(dict))  # key -> round -> {metric: value}
    durability = {}
    for r in rows:
        key = (r["scenario"], r["param"], r["system"])
        try:
            by_round[key][r["round"]][r["metric"]] = float(r["value"])
        except ValueError:
            continue
        durability[key] = r["durability"]
    data, rates = {}, {}
    for key, rounds in by_round.items():
        rate = lambda m: m.get("rps", m.get("qps", -1))
        best = max(rounds.values(), key=rate)
        if rate(best) < 0:
            best = rounds.get("1", best)
        # Values that are not per round (response size) are kept from any round.
        merged = {k: v for m in rounds.values() for k, v in m.items()}
        merged.update(best)
        data[key] = merged
        rates[key] = [rate(m) for _, m in sorted(rounds.items()) if rate(m) >= 0]
    return rows, data, durability, rates


def th(n):
    return f"{n:,.0f}"


def ms(us):
    if us is None:
        return "–"
    return f"{us / 1000:.2f} ms" if us < 10000 else f"{us / 1000:.0f} ms"


def ratio(a, b):
    return a / b if a and b else None


def fmt_ratio(x):
    return "–" if x is None else f"{x:.2f}×"


def params(data, scenario):
    ps = {p for (s, p, _) in data if s == scenario}
    # "empty" (start-up) first, then the numbers in order.
    return sorted(ps, key=lambda p: (p.isdigit(), int(p) if p.isdigit() else 0, p))


def throughput(data, durability, rates):
    names = {"register": "register a new instance", "heartbeat": "heartbeat, N live instances",
             "list": "list one service of N instances"}
    order = ["roster", "roster-durable", "r-nacos", "etcd", "axum", "nginx"]
    out = ["| scenario | N | system | durability | req/s | all rounds | p50 | p99 | p99.9 | errors | roster ÷ system |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for scenario in ["register", "heartbeat", "list"]:
        for p in params(data, scenario):
            base = data.get((scenario, p, "roster"), {}).get("rps")
            for system in order:
                m = data.get((scenario, p, system))
                if not m or "rps" not in m:
                    continue
                n = "" if scenario == "register" else th(int(p))
                if scenario == "list" and "bytes" in m:
                    n += f" ({th(m['bytes'])} B)"
                r = "" if system == "roster" else fmt_ratio(ratio(base, m["rps"]))
                out.append(f"| {names[scenario]} | {n} | {system} | {durability[(scenario, p, system)]} | "
                           f"{th(m['rps'])} | {' / '.join(th(x) for x in rates[(scenario, p, system)])} | "
                           f"{ms(m.get('p50_us'))} | {ms(m.get('p99_us'))} | "
                           f"{ms(m.get('p999_us'))} | {th(m.get('errors', 0))} | {r} |")
    # etcd's list is protobuf: its size is not measured; roster's JSON size applies to nginx and axum.
    return out


def dns(data):
    out = ["| query | roster q/s | Knot q/s | roster ÷ Knot | avg latency roster | avg latency Knot |",
           "|---|---|---|---|---|---|"]
    for p in params(data, "dns"):
        r, k = data.get(("dns", p, "roster"), {}), data.get(("dns", p, "knot"), {})
        label = {"a": "`web.service.roster A` (10 A)", "srv": "`_web._tcp.service.roster SRV` (10 SRV + 10 A)"}.get(p, p)
        out.append(f"| {label} | {th(r.get('qps', 0))} | {th(k.get('qps', 0))} | "
                   f"{fmt_ratio(ratio(r.get('qps'), k.get('qps')))} | {ms(r.get('avg_latency_us'))} | "
                   f"{ms(k.get('avg_latency_us'))} |")
    return out


def watch(data):
    out = ["| watchers | system | p50 | p99 | max | missed deliveries |", "|---|---|---|---|---|---|"]
    for p in params(data, "watch"):
        for system in ["roster", "etcd"]:
            m = data.get(("watch", p, system))
            if m:
                out.append(f"| {th(int(p))} | {system} | {ms(m.get('p50_us'))} | {ms(m.get('p99_us'))} | "
                           f"{ms(m.get('max_us'))} | {th(m.get('missing', 0))} of {th(int(p) * 50)} |")
    return out


def memory(data):
    systems = [s for s in ["roster", "r-nacos", "etcd"] if ("memory", "0", s) in data]
    if not systems:
        return []
    out = ["| instances | " + " | ".join(f"{s} RSS | {s} bytes/instance" for s in systems) + " |",
           "|---|" + "---|---|" * len(systems)]
    for p in params(data, "memory"):
        cells = []
        for s in systems:
            rss = data.get(("memory", p, s), {}).get("rss_kib")
            idle = data.get(("memory", "0", s), {}).get("rss_kib")
            cells.append("–" if rss is None else f"{rss / 1024:.1f} MiB")
            n = int(p)
            cells.append("–" if rss is None or idle is None or n == 0 else f"{(rss - idle) * 1024 / n:,.0f}")
        out.append(f"| {th(int(p))} | " + " | ".join(cells) + " |")
    return out


def startup(data, durability):
    out = ["| stored instances | system | durability | min | median | max |", "|---|---|---|---|---|---|"]
    for p in params(data, "startup"):
        for system in ["roster", "roster-durable", "r-nacos", "etcd"]:
            m = data.get(("startup", p, system))
            if m:
                label = "0 (empty)" if p == "empty" else th(int(p))
                out.append(f"| {label} | {system} | {durability[('startup', p, system)]} | {m['min_ms']:.1f} ms | "
                           f"{m['median_ms']:.1f} ms | {m['max_ms']:.1f} ms |")
    return out


def targets(data):
    rows = ["| target | measured | met |", "|---|---|---|"]

    def add(name, value, ok):
        if value is not None:
            rows.append(f"| {name} | {value} | {'yes' if ok else '**no**'} |")

    g = lambda s, p, sy, m: data.get((s, p, sy), {}).get(m)
    for p in params(data, "list"):
        x = ratio(g("list", p, "roster", "rps"), g("list", p, "axum", "rps"))
        add(f"list ({p} instances) ≥ 0.9× bare axum", fmt_ratio(x), x is not None and x >= 0.9)
    for s in ["register", "heartbeat"]:
        for p in params(data, s):
            # Issue 22: register >= 2x r-nacos, heartbeat >= 3x r-nacos.
            nacos = 2 if s == "register" else 3
            for peer, want in [("r-nacos", nacos), ("etcd", 2)]:
                x = ratio(g(s, p, "roster", "rps"), g(s, p, peer, "rps"))
                n = "" if s == "register" else f" ({th(int(p))} instances)"
                add(f"{s}{n} ≥ {want}× {peer}", fmt_ratio(x), x is not None and x >= want)
    for p in params(data, "dns"):
        x = ratio(g("dns", p, "roster", "qps"), g("dns", p, "knot", "qps"))
        # Issue 21: A and SRV >= 1.0x Knot.
        add(f"DNS {p.upper()} ≥ 1.0× Knot", fmt_ratio(x), x is not None and x >= 1.0)
    p99 = g("watch", "1000", "roster", "p99_us")
    add("watch p99 ≤ 5 ms at 1,000 watchers", ms(p99), p99 is not None and p99 <= 5000)
    idle = g("memory", "0", "roster", "rss_kib")
    sizes = [p for p in params(data, "memory") if p != "0"]
    if idle is not None and sizes:
        n = sizes[-1]
        per = (g("memory", n, "roster", "rss_kib") - idle) * 1024 / int(n)
        add(f"≤ 1 KiB RSS per instance ({th(int(n))} instances)", f"{per:,.0f} B", per <= 1024)
    if idle is not None:
        add("idle RSS ≤ 15 MB", f"{idle / 1024:.1f} MiB", idle * 1024 <= 15e6)
    ready = g("startup", "empty", "roster", "median_ms")
    add("ready ≤ 50 ms, empty (median)", f"{ready:.1f} ms" if ready else None, ready is not None and ready <= 50)
    return rows


def render(out, mode, data, durability, rates):
    versions = open(os.path.join(out, "versions.txt")).read().strip().splitlines()
    meta = dict(line.split(": ", 1) for line in versions if ": " in line)
    perf = sorted(f for f in os.listdir(out) if f.startswith("perf-") and f.endswith(".txt"))
    def section(title, rows):
        # A table without data rows (the scenario did not run) is left out.
        return [f"### {title}", "", *rows, ""] if len(rows) > 2 else []

    parts = [
        f"Run: `bench/run.sh{' --quick' if mode == 'quick' else ''}`, {meta.get('date', '?')}, "
        f"commit {meta.get('commit', '?')}. Machine: {meta.get('machine', '?')}; "
        f"load average at the end {meta.get('load average at the end', '?')}.",
        "",
        "Versions: " + "; ".join(f"{k} {v}" for k, v in meta.items()
                                 if k not in ("date", "commit", "machine", "load average at the end")) + ".",
        "",
        "Server on CPU 0, load generator on CPU 1 (`taskset`), loopback. HTTP: wrk, 1 thread, "
        "64 connections, closed loop, warm-up then a fixed duration; etcd: `etcd_load` (etcd-client, "
        "gRPC), 64 workers on 64 connections, same warm-up and duration. roster ÷ system is the ratio "
        "of requests per second within this run. With several rounds (systems alternating), each "
        "system's best round is shown (the machine is shared: the best round is the least disturbed); "
        "every round is in the CSV.",
        "",
        *section("Throughput and latency", throughput(data, durability, rates)),
        *section("DNS (dnsperf, 8 clients, 200 queries in flight)", dns(data)),
        *section("Change-to-watcher latency (50 changes, 100 ms apart)", watch(data)),
        *section("Resident memory (VmRSS after loading N instances)", memory(data)),
        *section("Start-up time to ready", startup(data, durability)),
        *section("Targets", targets(data)),
    ]
    if perf:
        parts += ["Profiles of roster (`perf record -F 999` on round 1 of roster, which therefore runs "
                  "slower than its other rounds; flat, top symbols): "
                  + ", ".join(f"`bench/results/peers-{mode}-{f}`" for f in perf) + ".", ""]
    return "\n".join(parts)


def main():
    out, mode = sys.argv[1], sys.argv[2]
    rows, data, durability, rates = load(out)
    json.dump({"mode": mode, "results": rows}, open(os.path.join(out, "results.json"), "w"), indent=1)
    table = render(out, mode, data, durability, rates)
    open(os.path.join(out, "table.md"), "w").write(table)
    print(table)
    if len(sys.argv) > 3:
        results_md = sys.argv[3]
        keep = os.path.join(os.path.dirname(results_md), "results")
        os.makedirs(keep, exist_ok=True)
        for ext in ("csv", "json"):
            src = open(os.path.join(out, f"results.{ext}")).read()
            open(os.path.join(keep, f"peers-{mode}.{ext}"), "w").write(src)
        open(os.path.join(keep, f"peers-{mode}-versions.txt"), "w").write(
            open(os.path.join(out, "versions.txt")).read())
        # The flat profiles (top symbols) go along; the perf.data files stay in bench/out.
        for f in os.listdir(out):
            if f.startswith("perf-") and f.endswith(".txt"):
                open(os.path.join(keep, f"peers-{mode}-{f}"), "w").write(open(os.path.join(out, f)).read())
        text = open(results_md).read()
        block = f"{BEGIN}\n{table}\n{END}"
        if BEGIN in text and END in text:
            text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END):]
        else:
            first = text.index("\n## ") + 1
            text = text[:first] + f"{SECTION}\n\n{block}\n\n" + text[first:]
        open(results_md, "w").write(text)


if __name__ == "__main__":
    main()
