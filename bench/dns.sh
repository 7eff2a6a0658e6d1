#!/usr/bin/env bash
# DNS queries per second: roster vs Knot DNS serving a static zone with the same
# records, side by side in one run (alternating, two rounds each). Server on CPU 0,
# dnsperf on CPU 1. Writes bench/out/dns.txt and prints the Markdown rows.
# Usage: bench/dns.sh [seconds per run, default 10]
#   MIXES="mixed a srv"  query sets, each its own runs (default mixed): mixed is one
#                        third each of A, SRV and NXDOMAIN; a only A; srv only SRV
#   ROUNDS=N             rounds of roster-then-Knot per query set (default 2)
#   PERF_DATA=FILE       perf record roster for half of its first run into FILE
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-10}
. bench/common.sh
need dnsperf dnsperf; need knotd knot; need curl curl
out=bench/out/dns.txt
: > "$out"
http=18680 dns=18653 n=10

# The same data for both: n instances of web (tag v2 on even ones).
{
  echo '$ORIGIN roster.'
  echo '$TTL 0'
  echo '@ SOA ns.roster. hostmaster.roster. 1 3600 600 86400 5'
  echo '@ NS ns.roster.'
  for i in $(seq 0 $((n - 1))); do
    echo "web.service A 10.0.0.$((i + 1))"
    echo "_web._tcp.service SRV 1 1 $((8000 + i)) web-$i.web.instance.roster."
    echo "web-$i.web.instance A 10.0.0.$((i + 1))"
  done
} > "$work/roster.zone"
cat > "$work/knot.conf" <<CONF
server:
    listen: 127.0.0.1@$dns
    rundir: "$work"
    background-workers: 1
    udp-workers: 1
    tcp-workers: 1
database:
    storage: "$work"
log:
  - target: stderr
    any: error
zone:
  - domain: roster.
    file: "$work/roster.zone"
CONF
# queries MIX FILE: the query file of a mix.
queries() {
  for _ in $(seq 100); do
    case $1 in
      a) echo "web.service.roster A" ;;
      srv) echo "_web._tcp.service.roster SRV" ;;
      *) echo "web.service.roster A"; echo "_web._tcp.service.roster SRV"; echo "nosuch.service.roster A" ;;
    esac
  done > "$2"
}

start_roster() {
  taskset -c 0 "$bin" serve --http-addr 127.0.0.1:$http --dns-addr 127.0.0.1:$dns --log warn & pid=$!
  for _ in $(seq 100); do curl -sf http://127.0.0.1:$http/ready >/dev/null && break; sleep 0.05; done
  for i in $(seq 0 $((n - 1))); do
    tags='[]'; [ $((i % 2)) = 0 ] && tags='["v2"]'
    curl -sf -X PUT "http://127.0.0.1:$http/v1/services/web/instances/web-$i" \
      -d "{\"address\":\"10.0.0.$((i + 1))\",\"port\":$((8000 + i)),\"tags\":$tags}" >/dev/null
  done
}
start_knot() {
  taskset -c 0 knotd -c "$work/knot.conf" & pid=$!
  for _ in $(seq 100); do dig +short @127.0.0.1 -p $dns web.service.roster A >/dev/null 2>&1 && break; sleep 0.05; done
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=; }
run() {
  local perf=
  if [ -n "${PERF_DATA:-}" ] && [ "$1" = roster ] && [ ! -e "$PERF_DATA" ]; then
    (sleep 1; exec perf record -q -F 999 -g -p "$pid" -o "$PERF_DATA" -- sleep $((secs / 2 + 1))) >/dev/null 2>&1 &
    perf=$!
  fi
  taskset -c 1 dnsperf -s 127.0.0.1 -p $dns -d "$work/queries-$2" -l "$secs" -c 8 -q 200 2>&1 |
    awk -v who="$1" -v mix="$2" '/Queries per second/ {qps=$4} /Average Latency/ {lat=$4} /Queries lost/ {lost=$3}
      END {printf "%s mix=%s qps=%.0f avg_latency_ms=%.3f lost=%s\n", who, mix, qps, lat*1000, lost}'
  [ -z "$perf" ] || wait "$perf" || true
}

for mix in ${MIXES:-mixed}; do
  queries "$mix" "$work/queries-$mix"
  for round in $(seq "${ROUNDS:-2}"); do
    start_roster; run roster "$mix" | tee -a "$out"; stop
    start_knot; run knot "$mix" | tee -a "$out"; stop
  done
  awk -v mix="mix=$mix" '$2 == mix && $1 == "roster" {split($3,a,"="); r+=a[2]; rn++}
    $2 == mix && $1 == "knot" {split($3,a,"="); k+=a[2]; kn++}
    END {printf "mean %s roster %.0f qps, knot %.0f qps, roster/knot %.2f\n", mix, r/rn, k/kn, (r/rn)/(k/kn)}' "$out" | tee -a "$out"
done
echo "versions: $("$bin" --version); $(knotd --version 2>&1 | head -1); $(dnsperf -h 2>&1 | grep -m1 -i version || true)" | tee -a "$out"
