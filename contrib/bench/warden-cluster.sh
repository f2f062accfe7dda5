# Sourced by ab.sh, against-etcd.sh, cpu-per-request.sh and
# cpu-against-etcd.sh.
#
# port: a free TCP port on 127.0.0.1.
# start_warden BINARY PREFIX: a three-member warden cluster started in the
#   current directory: members PREFIX1..PREFIX3 (their data directories and
#   `.log` files named so), their ports in PREFIX.ports, the client
#   endpoints in PREFIX.endpoints, and the members' pids appended to ./pids.
# start_etcd PREFIX: the same with etcd 3.4 ($ETCD, default `etcd`) as the
#   members, each with its data directory PREFIXi.etcd.
# wait_ready BINARY ENDPOINTS...: until a put succeeds on every cluster
#   named (comma-separated endpoints each), at most 30 s.
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# pick_ports PREFIX [PEER_SCHEME]: "i client peer" lines in PREFIX.ports, the
# client endpoints in PREFIX.endpoints, and the --initial-cluster list echoed.
pick_ports() {
  local pre=$1 scheme=${2:-} ic="" ep="" i c p
  for i in 1 2 3; do
    c=$(port); p=$(port)
    ic="${ic:+$ic,}$pre$i=${scheme}127.0.0.1:$p"; ep="${ep:+$ep,}127.0.0.1:$c"
    echo "$i $c $p" >> "$pre.ports"
  done
  echo "$ep" > "$pre.endpoints"
  echo "$ic"
}
start_warden() { # binary, name prefix
  local bin=$1 pre=$2 ic i c p
  ic=$(pick_ports "$pre")
  while read -r i c p; do
    "$bin" server --name "$pre$i" --data-dir "$pre$i" --client-addr "127.0.0.1:$c" \
      --peer-addr "127.0.0.1:$p" --initial-cluster "$ic" > "$pre$i.log" 2>&1 &
    echo $! >> pids
  done < "$pre.ports"
}
start_etcd() { # name prefix
  local pre=$1 ic i c p
  ic=$(pick_ports "$pre" http://)
  while read -r i c p; do
    "${ETCD:-etcd}" --name "$pre$i" --data-dir "$pre$i.etcd" \
      --listen-client-urls "http://127.0.0.1:$c" --advertise-client-urls "http://127.0.0.1:$c" \
      --listen-peer-urls "http://127.0.0.1:$p" --initial-advertise-peer-urls "http://127.0.0.1:$p" \
      --initial-cluster "$ic" --initial-cluster-token bench --initial-cluster-state new \
      > "$pre$i.log" 2>&1 &
    echo $! >> pids
  done < "$pre.ports"
}
wait_ready() { # binary, endpoints of each cluster
  local bin=$1 ep ok
  shift
  for _ in $(seq 100); do
    ok=1
    for ep in "$@"; do
      "$bin" --endpoints "$ep" put ready x >/dev/null 2>&1 || { ok=0; break; }
    done
    [ $ok = 1 ] && return 0
    sleep 0.3
  done
  return 1
}
