#!/usr/bin/env bash
# Runs the GPU tests and the GPU benchmarks on a machine with an NVIDIA GPU, from binaries
# built by tools/gpu-build.sh, and writes everything under $OUT (default ./gpu-results):
#   gpu-tests.txt        the GPU test binaries' output (and *.xml GoogleTest reports)
#   profile.json         `kvtier probe`
#   transfer.jsonl       `kvtier bench transfer --json` for each direction, block size, mode
#   demo.txt             `kvtier demo` on the real HBM tier
#   score_gpu.txt        `kvtier bench score --gpu` (Expected Attention scoring vs a D2D copy)
#   summary.txt          the table printed last
#   usage: tools/gpu-check.sh [quick]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
b=build-cuda
kv=$b/tools/kvtier/kvtier
quick=${1:-}
status=0

nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current,memory.total,driver_version \
  --format=csv | tee "$out/gpu.txt"

{
  "$b/tests/kernels/copy_blocks_gpu_test" --gtest_output=xml:"$out/copy_blocks_gpu_test.xml" || status=1
  "$b/tests/tiers/gpu_tier_test" --gtest_output=xml:"$out/gpu_tier_test.xml" || status=1
  "$b/tests/kernels/expected_attention_gpu_test" --gtest_output=xml:"$out/expected_attention_gpu_test.xml" || status=1
} >"$out/gpu-tests.txt" 2>&1
grep -E '^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED' "$out/gpu-tests.txt" | tail -20

"$kv" probe --out "$out/profile.json" >"$out/probe.txt" 2>&1 || status=1
cat "$out/probe.txt"

: >"$out/transfer.jsonl"
run() { "$kv" bench transfer --json "$@" >>"$out/transfer.jsonl" 2>>"$out/transfer.err" || status=1; }
if [ "$quick" = quick ]; then sizes="16384"; else sizes="4096 8192 16384 65536 262144 2097152"; fi
for bs in $sizes; do run --direction h2d --block-size "$bs"; done
for bs in 16384 65536; do
  run --direction d2h --block-size "$bs" --mode kernel
  run --direction d2h --block-size "$bs" --mode cpu --cpu-threads 8
  run --direction both --block-size "$bs" --mode kernel
done

"$kv" demo --hbm-mib 8192 --dram-mib 16384 --requests 96 --workers 4 >"$out/demo.txt" 2>&1 || status=1
tail -16 "$out/demo.txt"

{ "$kv" bench score --gpu || status=1; } >"$out/score_gpu.txt" 2>&1
tail -12 "$out/score_gpu.txt"

python3 - "$out/transfer.jsonl" <<'PY' | tee "$out/summary.txt"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(dict)
for r in rows:
    key = (r["direction"], r["block_size"], r["mode"] if r["direction"] != "h2d" else "")
    by[key][r["method"]] = r["gbps"]
print(f'{"dir":10} {"block":>8} {"kvtier":>8} {"contig":>8} {"per_blk":>8} {"batch":>8} {"k/contig":>9} {"k/batch":>8}')
for (d, b, m), v in sorted(by.items()):
    k = next((x for n, x in v.items() if n.startswith("kvtier")), 0.0)
    c, p, bt = v.get("contiguous", 0), v.get("per_block", 0), v.get("batch", 0)
    name = d + ("-" + m if m else "")
    print(f'{name:10} {b:>8} {k:8.2f} {c:8.2f} {p:8.2f} {bt:8.2f} {k/c if c else 0:9.2f} {k/bt if bt else 0:8.2f}')
PY
exit $status
