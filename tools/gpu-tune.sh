#!/usr/bin/env bash
# Sweeps the copy kernel's launch shape (blocks x unroll) on a GPU machine, with binaries
# from tools/gpu-build.sh; one JSON line per measurement in $OUT/tune.jsonl and a table.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
kv=build-cuda/tools/kvtier/kvtier
: >"$out/tune.jsonl"
common=(--total $((512 << 20)) --pool $((2 << 30)) --repeats 3 --json)
for ctas in 264 528 1056 2112; do
  for unroll in 4 8; do
    for bs in 4096 16384 65536; do
      "$kv" bench transfer --direction h2d --block-size "$bs" --ctas "$ctas" --unroll "$unroll" "${common[@]}" >>"$out/tune.jsonl"
    done
    "$kv" bench transfer --direction d2h --mode kernel --block-size 16384 --ctas "$ctas" --unroll "$unroll" "${common[@]}" >>"$out/tune.jsonl"
  done
done
python3 - "$out/tune.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f'{"dir":4} {"block":>7} {"ctas":>5} {"unroll":>6} {"kvtier":>7} {"contig":>7} {"ratio":>6}')
for r in rows:
    if not r["method"].startswith("kvtier"): continue
    c = next(x["gbps"] for x in rows if x["direction"] == r["direction"] and x["block_size"] == r["block_size"]
             and x["ctas"] == r["ctas"] and x["unroll"] == r["unroll"] and x["method"] == "contiguous")
    print(f'{r["direction"]:4} {r["block_size"]:>7} {r["ctas"]:>5} {r["unroll"]:>6} {r["gbps"]:7.2f} {c:7.2f} {r["gbps"]/c:6.2f}')
PY
