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
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
start() { # binary, name prefix
  local bin=$1 pre=$2 ic="" ep=""
  for i in 1 2 3; do
    c=$(port); p=$(port)
    ic="${ic:+$ic,}$pre$i=127.0.0.1:$p"; ep="${ep:+$ep,}127.0.0.1:$c"
    echo "$i $c $p" >> "$pre.ports"
  done
  while read -r i c p; do
    "$bin" server --name "$pre$i" --data-dir "$pre$i" --client-addr "127.0.0.1:$c" \
      --peer-addr "127.0.0.1:$p" --initial-cluster "$ic" > "$pre$i.log" 2>&1 &
    echo $! >> pids
  done < "$pre.ports"
  echo "$ep" > "$pre.endpoints"
}
start "$A" a
start "$B" b
# Wait for the members to exit: a caller that deletes OUT right after
# would pull the data directories from under members still stopping.
trap 'kill $(cat "$OUT/pids") 2>/dev/null; wait 2>/dev/null' EXIT
EA=$(cat a.endpoints); EB=$(cat b.endpoints)
for _ in $(seq 60); do
  "$A" --endpoints "$EA" put ready x >/dev/null 2>&1 && "$A" --endpoints "$EB" put ready x >/dev/null 2>&1 && break
  sleep 0.3
done
# Both clusters led by their first member, so that a workload with few
# clients meets the same leader/follower mix on either side (which member a
# client's connection lands on decides whether its writes are forwarded).
. "$HERE/pin-leader.sh"
[ "${PIN_LEADER:-1}" = 1 ] && { pin_leader "$A" "$EA"; pin_leader "$A" "$EB"; }
"$A" --endpoints "$EA" bench "$@" --duration 1 >/dev/null 2>&1
"$A" --endpoints "$EB" bench "$@" --duration 1 >/dev/null 2>&1
"$A" --endpoints "$EA" bench "$@" --duration "${SECS:-4}" --label A \
  --against "$EB" --against-label B --pairs "${PAIRS:-3}" | tail -4
