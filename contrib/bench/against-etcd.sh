#!/bin/bash
# The goal table of docs/benchmarks.md: a three-member warden cluster and a
# three-member etcd 3.4 cluster on this machine, every workload run with
# `warden bench --against` (warden, etcd, warden, ... ; PAIRS pairs; the
# medians and ratios are printed), one JSON line per workload in
# $OUT/results.jsonl and a latency plot per workload in $OUT/*.svg.
#
#   W=./target/release/warden PAIRS=3 SECS=6 contrib/bench/against-etcd.sh [workload ...]
#
# CLIENT=path/to/warden runs the load generator from another build (the
# servers stay $W). Both clusters are led by their first member before the
# runs (PIN_LEADER=0 leaves the elections' choice).
#
# Workloads (default: all): put1 put64 put256 get64 getser64 txn64 v3lock16
# v3lock1 native16 native1 watch keepalive mixed.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=${W:-./target/release/warden}
W=$(cd "$(dirname "$W")" && pwd)/$(basename "$W")
# The load generator (`warden bench`): the same binary unless CLIENT names another.
C=${CLIENT:-$W}
C=$(cd "$(dirname "$C")" && pwd)/$(basename "$C")
PAIRS=${PAIRS:-3}
SECS=${SECS:-6}
OUT=${OUT:-$(mktemp -d /tmp/against-etcd.XXXX)}
mkdir -p "$OUT"
cd "$OUT" || exit 1
. "$HERE/warden-cluster.sh"

start_warden "$W" n
WE=$(cat n.endpoints)
start_etcd e
EE=$(cat e.endpoints)
trap 'kill $(cat "$OUT/pids") 2>/dev/null; wait 2>/dev/null' EXIT
wait_ready "$W" "$WE" "$EE"
# Both clusters led by their first member (PIN_LEADER=0 leaves the
# elections' choice), as contrib/bench/ab.sh does: with few clients, whether
# a connection lands on the leader or on a follower (whose writes are
# forwarded) decided the ratio from one run to the next.
. "$HERE/pin-leader.sh"
[ "${PIN_LEADER:-1}" = 1 ] && { pin_leader "$W" "$WE"; pin_leader "$W" "$EE"; }

run() {
  local name=$1; shift
  echo "== $name: $*" >&2
  # Warm-up of each side, then the alternating pairs.
  "$C" --endpoints "$WE" bench "$@" --duration 1 >/dev/null 2>&1
  "$C" --endpoints "$EE" bench "$@" --duration 1 >/dev/null 2>&1
  "$C" --endpoints "$WE" bench "$@" --duration "$SECS" --label warden \
    --against "$EE" --against-label etcd --pairs "$PAIRS" --plot "$name.svg" -w json \
    | sed "s/^/{\"workload\":\"$name\",\"result\":/; s/\$/}/" | tee -a results.jsonl
}

ALL="put1 put64 put256 get64 getser64 txn64 v3lock16 v3lock1 watch keepalive mixed"
for w in ${@:-$ALL}; do
  case $w in
    put1) run put1 put --clients 1 ;;
    put64) run put64 put --clients 64 ;;
    put256) run put256 put --clients 256 ;;
    get64) run get64 get --clients 64 ;;
    getser64) run getser64 get-serializable --clients 64 ;;
    txn64) run txn64 txn-cas --clients 64 ;;
    v3lock16) run v3lock16 v3lock --clients 16 --lock-names 16 ;;
    v3lock1) run v3lock1 v3lock --clients 16 --lock-names 1 ;;
    watch) run watch watch --clients 4 --watchers 16 ;;
    keepalive) run keepalive lease-keepalive --clients 64 ;;
    mixed) run mixed mixed --clients 64 ;;
    *) echo "unknown workload $w" >&2 ;;
  esac
done
echo "results in $OUT" >&2
