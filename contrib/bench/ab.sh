#!/bin/bash
# Two warden builds side by side: a three-member cluster of each on this
# machine, one `warden bench --against` run alternating between them
# (A, B, A, ...; PAIRS pairs), medians and the ratio A/B printed. Only
# ratios measured together like this mean anything on a shared machine.
#
#   A=./warden-before B=./target/release/warden PAIRS=3 SECS=4 \
#     contrib/bench/ab.sh put --clients 64
#
# Everything after the variables is a `warden bench` workload. Both clusters
# are led by their first member (PIN_LEADER=0 leaves the elections' choice).
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
A=$(cd "$(dirname "$A")" && pwd)/$(basename "$A")
B=$(cd "$(dirname "$B")" && pwd)/$(basename "$B")
OUT=${OUT:-$(mktemp -d /tmp/ab.XXXX)}
mkdir -p "$OUT"
cd "$OUT" || exit 1
. "$HERE/warden-cluster.sh"
start_warden "$A" a
start_warden "$B" b
# Wait for the members to exit: a caller that deletes OUT right after
# would pull the data directories from under members still stopping.
trap 'kill $(cat "$OUT/pids") 2>/dev/null; wait 2>/dev/null' EXIT
EA=$(cat a.endpoints); EB=$(cat b.endpoints)
wait_ready "$A" "$EA" "$EB"
# Both clusters led by their first member, so that a workload with few
# clients meets the same leader/follower mix on either side (which member a
# client's connection lands on decides whether its writes are forwarded).
. "$HERE/pin-leader.sh"
[ "${PIN_LEADER:-1}" = 1 ] && { pin_leader "$A" "$EA"; pin_leader "$A" "$EB"; }
"$A" --endpoints "$EA" bench "$@" --duration 1 >/dev/null 2>&1
"$A" --endpoints "$EB" bench "$@" --duration 1 >/dev/null 2>&1
"$A" --endpoints "$EA" bench "$@" --duration "${SECS:-4}" --label A \
  --against "$EB" --against-label B --pairs "${PAIRS:-3}" | tail -4
