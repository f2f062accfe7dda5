#!/bin/bash
# Resident memory of one warden member and one etcd 3.4 member holding the
# same keys: KEYS distinct keys of 256-byte values, written by `warden bench
# put` (random keys, so TOTAL puts cover most of the key space), then RSS
# from /proc after the writes settle, and the key count each reports.
#
#   W=./target/release/warden KEYS=100000 TOTAL=300000 contrib/bench/memory.sh
#
# Then, for warden: RSS after compacting all history (`warden compaction`),
# and after a restart on the same data directory (the live state alone,
# without the peaks of the write phase).
#
# WARDEN_ARGS adds server flags to the warden member (to see what a setting
# changes, e.g. "--auto-compaction-mode revision --auto-compaction-retention 1000").
set -u
W=${W:-./target/release/warden}
W=$(cd "$(dirname "$W")" && pwd)/$(basename "$W")
KEYS=${KEYS:-100000}
TOTAL=${TOTAL:-$((KEYS * 3))}
OUT=${OUT:-$(mktemp -d /tmp/memory.XXXX)}
cd "$OUT" || exit 1
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wc=$(port); wp=$(port); ec=$(port); ep=$(port)
"$W" server --name n1 --data-dir n1 --client-addr 127.0.0.1:$wc --peer-addr 127.0.0.1:$wp ${WARDEN_ARGS:-} > n1.log 2>&1 &
wpid=$!
etcd --name e1 --data-dir e1.etcd --listen-client-urls http://127.0.0.1:$ec \
  --advertise-client-urls http://127.0.0.1:$ec --listen-peer-urls http://127.0.0.1:$ep \
  --initial-advertise-peer-urls http://127.0.0.1:$ep --initial-cluster e1=http://127.0.0.1:$ep > e1.log 2>&1 &
epid=$!
trap 'kill $wpid $epid 2>/dev/null; wait 2>/dev/null' EXIT
for t in $(seq 100); do
  "$W" --endpoints 127.0.0.1:$wc put ready x >/dev/null 2>&1 && "$W" --endpoints 127.0.0.1:$ec put ready x >/dev/null 2>&1 && break
  sleep 0.3
done
rss() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
echo "idle: warden $(rss $wpid) kB, etcd $(rss $epid) kB"
for side in warden etcd; do
  [ $side = warden ] && c=$wc || c=$ec
  "$W" --endpoints 127.0.0.1:$c bench put --clients 64 --total "$TOTAL" --key-space "$KEYS" >/dev/null 2>&1
done
sleep 5
for side in warden etcd; do
  [ $side = warden ] && { c=$wc; pid=$wpid; } || { c=$ec; pid=$epid; }
  n=$("$W" --endpoints 127.0.0.1:$c get "" --prefix --count-only -w json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count",0))')
  echo "$side: $n keys, RSS $(rss $pid) kB"
done
rev=$("$W" --endpoints 127.0.0.1:$wc get ready -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["header"]["revision"])')
"$W" --endpoints 127.0.0.1:$wc compaction "$rev" --physical >/dev/null
sleep 3
echo "warden after compacting to $rev: RSS $(rss $wpid) kB"
# mimalloc returns freed pages to the system some time after they are freed
# (and only as the member goes on allocating): the settled figure.
sleep 12
echo "warden 15 s after compacting: RSS $(rss $wpid) kB"
kill $wpid; wait $wpid 2>/dev/null
"$W" server --name n1 --data-dir n1 --client-addr 127.0.0.1:$wc --peer-addr 127.0.0.1:$wp ${WARDEN_ARGS:-} >> n1.log 2>&1 &
wpid=$!
for t in $(seq 100); do
  "$W" --endpoints 127.0.0.1:$wc get ready >/dev/null 2>&1 && break
  sleep 0.3
done
sleep 3
echo "warden after a restart: RSS $(rss $wpid) kB"
sleep 12
echo "warden 15 s after a restart: RSS $(rss $wpid) kB"
