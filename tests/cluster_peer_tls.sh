#!/usr/bin/env bash
# Peer TLS with three real processes: certificates made with openssl (a peer
# CA, one certificate per node for 127.0.0.1, and a node certificate from
# another CA). Checks that the cluster forms over HTTPS, that a plain-HTTP peer
# request gets no answer, that a node with the other CA's certificate cannot
# join and its append/vote requests die at the TLS handshake, that a request
# to /v1/raft/* with the token but no peer certificate is 403 while an API
# client without a certificate registers and reads, that SIGKILL of the leader
# fails over and the restarted node catches up, and that new certificates from
# the same CA (SIGHUP) are served and keep the cluster up through another
# failover. Takes about 30 s.
# Usage: ROSTER_BIN=target/debug/roster bash tests/cluster_peer_tls.sh
# KEEP_WORK=1 keeps the work directory (printed path).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=${ROSTER_BIN:-target/debug/roster}
case "$bin" in /*) ;; *) bin="$PWD/$bin" ;; esac
[ -x "$bin" ] || { echo "cluster_peer_tls: no roster binary at $bin (cargo build first, or set ROSTER_BIN)" >&2; exit 1; }
for tool in curl openssl python3; do
  command -v "$tool" >/dev/null || { echo "cluster_peer_tls: $tool is required" >&2; exit 1; }
done

work=$(mktemp -d "${TMPDIR:-/tmp}/roster-peer-tls.XXXXXX")
token=peer-tls-test-token-0123456789
declare -A pid port
t_begin=$(date +%s%3N)
say() { printf '[cluster_peer_tls %5.1fs] %s\n' "$(( $(date +%s%3N) - t_begin ))e-3" "$*"; }
fail() { say "FAIL: $*"; exit 1; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  set +e
  {
    for n in "${!pid[@]}"; do kill -9 "${pid[$n]}"; done
    wait
  } 2>/dev/null
  if [ "$rc" -ne 0 ]; then
    for n in 1 2 3 4; do
      [ -f "$work/log$n" ] || continue
      echo "---- last lines of node $n log ----" >&2
      tail -n 20 "$work/log$n" | sed 's/\x1b\[[0-9;]*m//g' >&2
    done
  fi
  if [ -n "${KEEP_WORK:-}" ]; then echo "cluster_peer_tls: kept $work" >&2; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT INT TERM

# ---- certificates ----
mkca() { # NAME
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=$1" -keyout "$work/$1.key" -out "$work/$1.pem" 2>/dev/null
}
mkleaf() { # CA NAME: NAME.pem and NAME.key for 127.0.0.1, server and client use
  local tmp="$work/$2.tmp"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$2" \
    -keyout "$tmp.key" -out "$tmp.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n' > "$tmp.ext"
  openssl x509 -req -in "$tmp.csr" -CA "$work/$1.pem" -CAkey "$work/$1.key" -days 2 \
    -extfile "$tmp.ext" -out "$tmp.pem" 2>/dev/null
  mv "$tmp.key" "$work/$2.key"
  mv "$tmp.pem" "$work/$2.pem"
  rm -f "$tmp.csr" "$tmp.ext"
}
mkca ca
mkca rogue-ca
for n in 1 2 3; do mkleaf ca node$n; done
mkleaf rogue-ca rogue

read -r port[1] port[2] port[3] port[4] < <(python3 tests/cluster_fault/helper.py ports 4)
join="127.0.0.1:${port[1]},127.0.0.1:${port[2]},127.0.0.1:${port[3]}"

start() { # N [CERT-NAME]
  local n=$1 name=${2:-node$1}
  "$bin" serve --http-addr "127.0.0.1:${port[$n]}" --no-dns --no-grpc --data-dir "$work/data$n" \
    --bootstrap-expect "$([ "$n" -le 3 ] && echo 3 || echo 0)" --join "$join" \
    --cluster-token "$token" --raft-heartbeat 100ms \
    --peer-tls-ca "$work/ca.pem" --peer-tls-cert "$work/$name.pem" --peer-tls-key "$work/$name.key" \
    >> "$work/log$n" 2>&1 &
  pid[$n]=$!
}
kill_node() { # N: SIGKILL, quietly
  { kill -9 "${pid[$1]}"; wait "${pid[$1]}"; } 2>/dev/null || true
  unset "pid[$1]"
}
api() { curl -sS -m 5 --cacert "$work/ca.pem" "$@"; }
code() { curl -s -o /dev/null -m 5 --cacert "$work/ca.pem" -w '%{http_code}' "$@" || true; }
ready() { [ "$(code "https://127.0.0.1:${port[$1]}/ready")" = 200 ]; }
wait_ready() { # N...
  for n in "$@"; do
    for _ in $(seq 300); do ready "$n" && continue 2; sleep 0.1; done
    fail "node $n never became ready"
  done
}
leader() { # prints the number of the node the others call leader
  local addr
  for n in 1 2 3; do
    [ -n "${pid[$n]:-}" ] || continue
    addr=$(api "https://127.0.0.1:${port[$n]}/v1/operator/raft" 2>/dev/null |
      python3 -c 'import json,sys; s=json.load(sys.stdin); print(next((m["addr"] for m in s["members"] if m["leader"]), ""))' 2>/dev/null) || continue
    for m in 1 2 3; do [ "$addr" = "127.0.0.1:${port[$m]}" ] && { echo "$m"; return; }; done
  done
}
register() { # N ID: through node N, retried until it is taken
  for _ in $(seq 100); do
    case "$(code -X PUT -H 'content-type: application/json' -d '{"address":"10.0.0.1","port":80}' \
      "https://127.0.0.1:${port[$1]}/v1/services/web/instances/$2")" in 2??) return ;; esac
    sleep 0.1
  done
  fail "register $2 on node $1"
}
has() { # N ID...: node N lists every ID (waits)
  local n=$1; shift
  for _ in $(seq 100); do
    local got ok=1
    got=$(api "https://127.0.0.1:${port[$n]}/v1/services/web?all=true" 2>/dev/null || true)
    for id in "$@"; do grep -q "\"$id\"" <<<"$got" || ok=0; done
    [ "$ok" = 1 ] && return
    sleep 0.1
  done
  fail "node $n does not have $*"
}
served() { # N: the certificate node N serves, PEM
  python3 -c 'import ssl,sys; print(ssl.get_server_certificate(("127.0.0.1", int(sys.argv[1])), ca_certs=sys.argv[2]))' \
    "${port[$1]}" "$work/ca.pem"
}
same_cert() { # PEM-A PEM-B
  [ "$(openssl x509 -noout -fingerprint -sha256 <<<"$1")" = "$(openssl x509 -noout -fingerprint -sha256 -in "$2")" ]
}

# ---- forms over TLS ----
for n in 1 2 3; do start "$n"; done
wait_ready 1 2 3
say "3 nodes ready over peer TLS"
grep -q "peer TLS is off" "$work/log1" && fail "node 1 warned that peer TLS is off"
register 1 w1
for n in 1 2 3; do has "$n" w1; done
say "an API client without a certificate registers and reads on every node"

# ---- who may talk to /v1/raft ----
c=$(curl -s -o /dev/null -m 5 -w '%{http_code}' -H "x-roster-cluster-token: $token" "http://127.0.0.1:${port[1]}/v1/raft/node" || true)
[ "$c" = 000 ] || fail "plain HTTP to the TLS port answered $c"
c=$(code -H "x-roster-cluster-token: $token" "https://127.0.0.1:${port[1]}/v1/raft/node")
[ "$c" = 403 ] || fail "the token without a peer certificate got $c"
c=$(code --cert "$work/node2.pem" --key "$work/node2.key" -H "x-roster-cluster-token: $token" "https://127.0.0.1:${port[1]}/v1/raft/node")
[ "$c" = 200 ] || fail "a peer certificate and the token got $c"
for path in append vote; do
  c=$(code --cert "$work/rogue.pem" --key "$work/rogue.key" -H "x-roster-cluster-token: $token" \
    -H 'content-type: application/json' -d '{}' "https://127.0.0.1:${port[1]}/v1/raft/$path")
  [ "$c" = 000 ] || fail "$path with the other CA's certificate got HTTP $c (not refused at the handshake)"
done
say "plain HTTP: no answer; token without certificate: 403; other CA: refused at the handshake"

start 4 rogue
sleep 3
members=$(api "https://127.0.0.1:${port[1]}/v1/operator/raft" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')
[ "$members" = 3 ] || fail "the cluster has $members members after the rogue node tried to join"
kill_node 4
say "a node with the other CA's certificate did not join"

# ---- failover and catch-up ----
l=$(leader); [ -n "$l" ] || fail "no leader"
kill_node "$l"
s=$(( l % 3 + 1 ))
register "$s" w2
say "leader (node $l) killed; node $s took a write"
start "$l"
wait_ready "$l"
has "$l" w1 w2
say "node $l restarted and caught up"

# ---- rotation ----
for n in 1 2 3; do
  cp "$work/node$n.pem" "$work/node$n.old.pem"
  mkleaf ca node$n
  kill -HUP "${pid[$n]}"
done
for n in 1 2 3; do
  for _ in $(seq 50); do same_cert "$(served "$n")" "$work/node$n.pem" && continue 2; sleep 0.1; done
  fail "node $n does not serve its new certificate"
done
say "every node serves its new certificate (SIGHUP)"
l=$(leader); [ -n "$l" ] || fail "no leader"
kill_node "$l"
s=$(( l % 3 + 1 ))
register "$s" w3
start "$l"
wait_ready "$l"
for n in 1 2 3; do has "$n" w1 w2 w3; done
say "after the rotation: failover (node $l killed), writes and catch-up work"
say "PASS"
