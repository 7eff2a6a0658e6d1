#!/usr/bin/env bash
# A follower catching up by snapshot install (issue 22): a one-node cluster
# with --data-dir takes N instances through POST /v1/batch in about 10,050
# Raft entries, so it builds a Raft snapshot (every 10,000 entries) and purges
# the log before it; then a second node joins and can only catch up by
# installing that snapshot. Reports the load time, the time from the second
# node's start until it holds all N instances, both nodes' RSS, and what the
# joining node logged about the snapshot. Then the leader is stopped, and the
# second node restarted alone from its data directory must still hold them.
# Both nodes on CPU 0, the loader on CPU 1. Writes bench/results/catchup.txt.
# Usage: bench/catchup.sh [instances, default 1000000]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
. bench/common.sh
mkdir -p bench/results
out=bench/results/catchup.txt
token=bench-cluster-token-0123
read -r p1 p2 < <(python3 -c 'import socket
s=[socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1",0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
pid2=
cleanup() { for p in "$pid" "$pid2"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null; done; rm -rf "$work"; }
trap cleanup EXIT
log() { echo "$*" | tee -a "$out"; }
now() { date +%s.%N; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$2"; }
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
count() { curl -s -m 5 "http://127.0.0.1:$1/health" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("instances", 0))' 2>/dev/null || echo 0; }
ready() { curl -sf -m 2 "http://127.0.0.1:$1/ready" >/dev/null; }
node() { # node PORT DIR ARGS...: a cluster node on CPU 0, its pid in $started
  local port=$1 dir=$2; shift 2
  taskset -c 0 "$bin" serve --http-addr "127.0.0.1:$port" --no-dns --no-grpc --log info \
    --data-dir "$dir" --cluster-token "$token" "$@" >> "$dir.log" 2>&1 &
  started=$!
}

per=$(( n / 10050 )); [ "$per" -ge 1 ] || per=1
log "# bench/catchup.sh $(date -u +%Y-%m-%dT%H:%M:%SZ) instances=$n per_batch=$per load=$(cut -d' ' -f1-3 /proc/loadavg)"
node "$p1" "$work/d1" --bootstrap-expect 1
pid=$started
for _ in $(seq 300); do ready "$p1" && break; sleep 0.1; done
ready "$p1" || { tail "$work/d1.log"; exit 1; }

t0=$(now)
taskset -c 1 python3 - "$p1" "$n" "$per" <<'PY'
import http.client, sys
port, n, per = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
conn = http.client.HTTPConnection("127.0.0.1", port)
item = ('{"op":"register","service":"svc%d","id":"i%d","instance":{"address":"10.%d.%d.%d",'
        '"port":8080,"ttl":"1h","tags":["v1"],"meta":{"zone":"z%d"}}}')
for start in range(0, n, per):
    ops = [item % (i % 100, i, i >> 16 & 255, i >> 8 & 255, i & 255, i % 3) for i in range(start, min(n, start + per))]
    conn.request("POST", "/v1/batch", body='{"ops":[' + ",".join(ops) + "]}",
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse(); body = r.read()
    if r.status != 200:
        sys.exit(f"batch refused: {r.status} {body[:400].decode(errors='replace')}")
PY
t1=$(now)
log "LOAD instances=$n seconds=$(secs "$t0" "$t1") leader_rss_mb=$(rss_mb "$pid")"
# Let the leader finish building its snapshot (it logs when it does).
for _ in $(seq 600); do grep -i "snapshot" "$work/d1.log" | grep -vq "peer TLS is off" && break; sleep 0.1; done
log "LEADER_LOG $(grep -i snapshot "$work/d1.log" | grep -vc "peer TLS is off") lines naming a snapshot"

t2=$(now)
node "$p2" "$work/d2" --join "127.0.0.1:$p1"
pid2=$started
have=0
for _ in $(seq 3000); do
  have=$(count "$p2")
  [ "$have" -ge "$n" ] && break
  kill -0 "$pid2" 2>/dev/null || break
  sleep 0.2
done
t3=$(now)
log "CATCHUP instances=$have of=$n seconds=$(secs "$t2" "$t3") follower_rss_mb=$(rss_mb "$pid2" 2>/dev/null || echo -) leader_rss_mb=$(rss_mb "$pid")"
snap_lines() { grep -i "install" "$1" | grep -i "snapshot" | grep -v "peer TLS is off\|startup begin" || true; }
log "FOLLOWER_LOG $(snap_lines "$work/d2.log" | wc -l) lines about installing a snapshot, the first: $(snap_lines "$work/d2.log" | head -1 | cut -c1-240)"
[ "$have" -ge "$n" ] || { log "FAILED: the joining node holds $have of $n"; tail -5 "$work/d2.log"; exit 1; }

# The follower alone, restarted from its own data directory.
kill "$pid"; wait "$pid" 2>/dev/null || true; pid=
kill "$pid2"; wait "$pid2" 2>/dev/null || true
t4=$(now)
node "$p2" "$work/d2" --join "127.0.0.1:$p1"
pid2=$started
for _ in $(seq 3000); do [ "$(count "$p2")" -ge "$n" ] && break; sleep 0.2; done
log "RESTART follower_alone instances=$(count "$p2") seconds=$(secs "$t4" "$(now)")"
