#!/bin/bash
# Where a workload's throughput against etcd is bounded, when the machine is
# the bound: a three-member warden cluster and a three-member etcd 3.4
# cluster on this machine, driven alternately (warden, etcd, ...; PAIRS
# pairs) by one `warden bench` for 10 s each. Over the middle 5 s or so of
# each run (the window is timed) it measures:
# - the members' CPU time (user + system, /proc) per request;
# - the load generator's CPU time per request (it shares the machine);
# - the members' system calls per request, by kind (`perf stat` on the
#   syscalls:sys_enter_* tracepoints; needs perf and root);
# - the whole machine, in cores: busy (every process), idle, and stolen by
#   the host (/proc/stat), to show whether the machine was the bound.
# One line per run (label, req/s, members' and generator's µs per request,
# syscalls per request, machine busy/idle/stolen cores, syscalls by kind),
# then the medians and their ratios.
#
#   W=./target/release/warden PAIRS=3 contrib/bench/cpu-against-etcd.sh put --clients 64
#
# When both runs use the whole machine, throughput follows the sum of the
# two CPU figures: the ratio of the sums is the ratio of throughputs.
# Everything after the variables is a `warden bench` workload.
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
W=${W:-./target/release/warden}
W=$(cd "$(dirname "$W")" && pwd)/$(basename "$W")
OUT=${OUT:-$(mktemp -d /tmp/cpu-against-etcd.XXXX)}
mkdir -p "$OUT"
cd "$OUT" || exit 1
. "$HERE/warden-cluster.sh"
start_warden "$W" n
mapfile -t WP < pids
start_etcd e
mapfile -t EP < <(tail -n 3 pids)
WE=$(cat n.endpoints)
EE=$(cat e.endpoints)
trap 'kill $(cat "$OUT/pids") 2>/dev/null; wait 2>/dev/null' EXIT
wait_ready "$W" "$WE" "$EE"
. "$HERE/pin-leader.sh"
pin_leader "$W" "$WE"
pin_leader "$W" "$EE"
tick=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
# The machine's busy, idle and stolen ticks, summed over its CPUs.
machine() { awk '/^cpu /{print $2+$3+$4+$7+$8, $5+$6, $9}' /proc/stat; }
CALLS=fdatasync,fsync,pwrite64,write,writev,sendmsg,sendto,read,recvfrom,futex,epoll_wait,epoll_pwait
events=$(echo "$CALLS" | sed 's/\([a-z0-9_]*\)/syscalls:sys_enter_\1/g')

run() { # label endpoints member-pids... -- bench-args...
  local label=$1 ep=$2 s0=0 s1=0 c0 c1 m0 m1 t0 t1 b rate p pids=()
  shift 2
  while [ "$1" != -- ]; do pids+=("$1"); shift; done
  shift
  "$W" --endpoints "$ep" bench "$@" --duration 10 > "$label.out" 2>&1 &
  b=$!
  sleep 3
  for p in "${pids[@]}"; do s0=$((s0 + $(cpu "$p"))); done
  c0=$(cpu $b)
  m0=$(machine)
  t0=$(date +%s.%N)
  perf stat -x, -e "$events" -p "$(IFS=,; echo "${pids[*]}")" -o "$label.stat" -- sleep 5
  for p in "${pids[@]}"; do s1=$((s1 + $(cpu "$p"))); done
  c1=$(cpu $b)
  m1=$(machine)
  t1=$(date +%s.%N)
  wait $b
  rate=$(awk '/throughput/{print $2; exit}' "$label.out")
  python3 - "$label" "${rate:-0}" $((s1 - s0)) $((c1 - c0)) "$tick" "$label.stat" "$m0" "$m1" "$t0" "$t1" <<'PY' | tee -a runs.txt
import sys
label, rate, s, c, tick, stat = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:6]), sys.argv[6]
secs = float(sys.argv[10]) - float(sys.argv[9])
busy, idle, steal = (
    (b - a) / tick / secs
    for a, b in zip(map(int, sys.argv[7].split()), map(int, sys.argv[8].split()))
)
calls = {}
for line in open(stat):
    f = line.split(',')
    if len(f) > 2 and f[0].strip().isdigit() and int(f[0]) > 0:
        calls[f[2].split('sys_enter_')[1]] = int(f[0])
n = rate * secs or float('nan')
per = ' '.join(f'{k}={v / n:.2f}' for k, v in calls.items())
print(f'{label} {rate:.0f} {s / tick / n * 1e6:.1f} {c / tick / n * 1e6:.1f} '
      f'{sum(calls.values()) / n:.2f} {busy:.2f} {idle:.2f} {steal:.2f} {per}')
PY
}

for _ in $(seq "${PAIRS:-3}"); do
  run warden "$WE" "${WP[@]}" -- "$@"
  run etcd "$EE" "${EP[@]}" -- "$@"
done
python3 - runs.txt <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    f = line.split()
    rows.setdefault(f[0], []).append([float(x) for x in f[1:8]])
med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
w, e = med['warden'], med['etcd']
print('median      req/s  members us/req  generator us/req  syscalls/req  '
      'machine cores: busy idle stolen')
for k in ('warden', 'etcd'):
    m = med[k]
    print(f'{k:8s} {m[0]:8.0f} {m[1]:15.1f} {m[2]:17.1f} {m[3]:13.2f}  '
          f'{m[4]:19.2f} {m[5]:4.2f} {m[6]:6.2f}')
print(f'warden/etcd: throughput {w[0] / e[0]:.2f}, members\' CPU per request '
      f'{w[1] / e[1]:.2f}, all CPU per request {(w[1] + w[2]) / (e[1] + e[2]):.2f}')
PY
echo "runs in $OUT/runs.txt" >&2
