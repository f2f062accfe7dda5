#!/bin/bash
# CPU per request of two warden builds, side by side: for each of PAIRS
# pairs, a fresh three-member cluster of A, then one of B (led by their
# first member), each driven by `warden bench` for 10 s; over the middle
# 5 s, the members' CPU time (user + system, from /proc) and the load
# generator's, divided by the requests completed. Prints one line per run
# and the median ratios B/A of the members' and the generator's CPU per
# request.
#
#   A=./warden-before B=./target/release/warden PAIRS=4 \
#     contrib/bench/cpu-per-request.sh put --clients 64
#
# Throughput on a shared machine moves with whatever else runs; CPU per
# request moves much less, so small changes show here first. Everything
# after the variables is a `warden bench` workload (the bench binary is A).
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
abs() { echo "$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"; }
A=$(abs "${A:?set A to a warden binary}")
B=$(abs "${B:?set B to a warden binary}")
OUT=${OUT:-$(mktemp -d /tmp/cpu-per-request.XXXX)}
mkdir -p "$OUT"
cd "$OUT" || exit 1
. "$HERE/pin-leader.sh"
tick=$(getconf CLK_TCK)
. "$HERE/warden-cluster.sh"
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null' EXIT

run() { # binary label bench-args...
  local bin=$1 label=$2 dir ep p s0=0 s1=0 c0 c1 t0 t1 b rate
  shift 2
  dir=$(mktemp -d "$OUT/$label.XXXX")
  cd "$dir" || exit 1
  start_warden "$bin" m
  cd "$OUT" || exit 1
  mapfile -t pids < "$dir/pids"
  ep=$(cat "$dir/m.endpoints")
  wait_ready "$A" "$ep"
  pin_leader "$A" "$ep"
  "$A" --endpoints "$ep" bench "$@" --duration 10 > "$dir/bench.out" 2>&1 &
  b=$!
  sleep 3
  for p in "${pids[@]}"; do s0=$((s0 + $(cpu "$p"))); done; c0=$(cpu $b)
  t0=$(date +%s.%N); sleep 5; t1=$(date +%s.%N)
  for p in "${pids[@]}"; do s1=$((s1 + $(cpu "$p"))); done; c1=$(cpu $b)
  wait $b
  rate=$(awk '/throughput/{print $2; exit}' "$dir/bench.out")
  kill "${pids[@]}" 2>/dev/null; wait "${pids[@]}" 2>/dev/null
  python3 -c "
s, c, t, r = ($s1-$s0)/$tick, ($c1-$c0)/$tick, $t1-$t0, float('${rate:-0}' or 0)
us = s/t/r*1e6 if r else float('nan')
print(f'$label {r:8.0f} req/s  members {us:6.1f} us/req  generator {c/t/r*1e6 if r else 0:5.1f} us/req')
open('$OUT/$label.us', 'a').write(f'{us} {c/t/r*1e6 if r else float(\"nan\")}\n')"
  rm -rf "$dir"
}

for _ in $(seq "${PAIRS:-3}"); do
  run "$A" A "$@"
  run "$B" B "$@"
done
python3 -c "
import statistics
a = [[float(v) for v in x.split()] for x in open('$OUT/A.us')]
b = [[float(v) for v in x.split()] for x in open('$OUT/B.us')]
for i, who in ((0, 'members'), (1, 'generator')):
    r = sorted(y[i] / x[i] for x, y in zip(a, b))
    print(f'{who} CPU per request B/A, by pair:', ' '.join(f'{v:.2f}' for v in r), ' median', f'{statistics.median(r):.2f}')"
