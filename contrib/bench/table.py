#!/usr/bin/env python3
"""Markdown table from contrib/bench/against-etcd.sh's results.jsonl:
per workload, each side's median throughput and p50/p99, and the ratios
warden/etcd (throughput: higher is better for warden; latency: lower)."""
import json
import sys

path = sys.argv[1] if len(sys.argv) > 1 else "results.jsonl"
print("| workload | warden req/s (p50 / p99 ms) | etcd req/s (p50 / p99 ms) | throughput ratio | p99 ratio |")
print("| --- | --- | --- | ---: | ---: |")
for line in open(path):
    line = line.strip()
    if not line:
        continue
    r = json.loads(line)
    res = r["result"]
    a, b = res["a"]["median"], res["b"]["median"]
    fmt = lambda m: f"{m['throughput']:,.0f} ({m['p50_ms']:.2f} / {m['p99_ms']:.2f})".replace(",", " ")
    print(f"| {r['workload']} | {fmt(a)} | {fmt(b)} | {res['ratio']['throughput']:.2f} | {res['ratio']['p99']:.2f} |")
