# Sourced by ab.sh and against-etcd.sh: `pin_leader WARDEN ENDPOINTS` moves
# the leadership of the cluster at ENDPOINTS (warden or etcd) to its first
# member, with the `warden` binary WARDEN. With few clients, whether a
# client's connection lands on the leader or on a follower (whose writes
# are forwarded) decides the ratio; both sides are led by the same member.
pin_leader() { # warden-binary endpoints
  local w=$1 eps=$2 first=${2%%,*} id
  for _ in $(seq 50); do
    id=$("$w" --endpoints "$first" status -w json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)[0]["Status"]
me, leader = s["header"]["member_id"], s["leader"]
print("" if me == leader else format(me, "x"))' 2>/dev/null) || { sleep 0.3; continue; }
    [ -z "$id" ] && return 0
    "$w" --endpoints "$eps" member transfer-leader "$id" >/dev/null 2>&1
    sleep 0.3
  done
  echo "could not move the leader of $eps to its first member" >&2
}
