#!/usr/bin/env bash
# Runs the GPU tests and the GPU benchmarks on a machine with an NVIDIA GPU, from binaries
# built by tools/gpu-build.sh, and writes at most 8 files under $OUT (default ./gpu-results):
#   gpu-tests.txt        nvidia-smi, then the GPU test binaries' output
#   gpu-tests.xml        their GoogleTest reports merged into one <testsuites>
#   profile.json         `kvtier probe`
#   transfer.jsonl       `kvtier bench transfer --json` for each direction, block size, mode
#   log.txt              probe, transfer errors, `kvtier demo` on the real HBM tier, and
#                        `kvtier bench score --gpu` (Expected Attention scoring vs a D2D copy)
#   decode.jsonl         `kvtier bench decode --json` (sparse vs dense decode attention vs copy)
#   decode.txt           the same as a table
#   summary.txt          the transfer table printed last
#   sweep.txt            (sweep mode) the launch-shape sweep of `kvtier bench decode --sweep`:
#                        per point, µs of every score shape and attention plan as grids, the
#                        fastest matching ones, mismatches, and the tuned sparse step; the dense
#                        plan grid (µs and x copy) and its fastest plans; a dense summary table
#   usage: tools/gpu-check.sh [quick|sparse|sweep|diag|engine|bulk]
#     quick   fewer transfer block sizes
#     sparse  only the sparse-attention tests and `kvtier bench decode` (gpu-tests.*, decode.*)
#     sweep   the sparse-attention tests, then `kvtier bench decode --sweep` at 32K and 128K,
#             batch 1 and 8, in one process (gpu-tests.*, decode.{jsonl,txt} with every row,
#             sweep.txt: grids, the graph table of the fastest pairs, sparse_graph (default
#             score rule r9w) against round 8's rule and the tuned step; the dense plan sweep
#             and dense_r9d against dense and the copy); about 3 minutes on an H100 with the tests
#     diag    every test, then the transfer diagnostics (page backing, placement pattern, piecewise
#             vs single launch, gather + concurrent copy, CPU copy path, D2H launch size; contiguous
#             baseline only, 512 MiB runs) into transfer.jsonl, `kvtier bench host-scatter` and
#             `kvtier bench score --gpu` into log.txt, and `kvtier bench decode`
#     engine  every test, then the copy-engine runs: h2d, d2h and both at random and churned
#             (SlotPool) placements, and the run threshold (transfer.jsonl, summary.txt)
#     bulk    every test, then the copy kernels (loads vs bulk) in two alternating rounds: h2d
#             and d2h alone and next to a device-bound kernel (--contend), both at once at
#             random and churned slots (transfer.jsonl, summary.txt); then `kvtier demo`
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
export LD_LIBRARY_PATH=$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
b=build-cuda
kv=$b/tools/kvtier/kvtier
mode=${1:-}
status=0
xml=$(mktemp -d)
trap 'rm -rf "$xml"' EXIT

if [ "$mode" = sparse ] || [ "$mode" = sweep ]; then
  tests=(sparse_attention_gpu_test quest_select_gpu_test quest_topk_gpu_test quest_score_gpu_test read_bound_gpu_test
    device_slice_metadata_test)
else
  tests=(copy_blocks_gpu_test gpu_tier_test gpu_mover_engine_test expected_attention_gpu_test sparse_attention_gpu_test
    quest_select_gpu_test quest_topk_gpu_test quest_score_gpu_test read_bound_gpu_test device_slice_metadata_test
    stream_copy_test host_tier_test)
fi
{
  nvidia-smi --query-gpu=name,pcie.link.gen.current,pcie.link.width.current,memory.total,driver_version --format=csv
  for t in "${tests[@]}"; do
    bin=$b/tests/kernels/$t
    [ -x "$bin" ] || bin=$b/tests/tiers/$t
    "$bin" --gtest_output=xml:"$xml/$t.xml" || status=1
  done
} >"$out/gpu-tests.txt" 2>&1
grep -E '^\[  (PASSED|FAILED|SKIPPED) |tests? ran|FAILED' "$out/gpu-tests.txt" | tail -20
python3 - "$out/gpu-tests.xml" "$xml"/*.xml <<'PY'
import sys, xml.etree.ElementTree as ET
root = ET.Element("testsuites")
for path in sys.argv[2:]:
    try:
        for suite in ET.parse(path).getroot().iter("testsuite"):
            root.append(suite)
    except (ET.ParseError, OSError) as e:
        print(f"gpu-check: {path}: {e}", file=sys.stderr)
ET.ElementTree(root).write(sys.argv[1], encoding="unicode")
PY

decode() {
  "$kv" bench decode --json "$@" >"$out/decode.jsonl" 2>>"$out/decode.txt" || status=1
  # The table of the standard rows (sweep.txt has the sweep's as grids), from the JSON lines.
  grep -v '"method":"sweep_' "$out/decode.jsonl" >"$xml/decode-standard.jsonl"
  "$kv" bench decode --table "$xml/decode-standard.jsonl" >>"$out/decode.txt" || status=1
  cat "$out/decode.txt"
}
: >"$out/decode.txt"
if [ "$mode" = sparse ]; then
  decode
  exit $status
fi
if [ "$mode" = sweep ]; then
  decode --sweep --contexts 32768,131072 --batches 1,8
  python3 - "$out/decode.jsonl" <<'PY' | tee "$out/sweep.txt"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
points = collections.OrderedDict()
for r in rows:
    points.setdefault((r["context"], r["batch"]), []).append(r)
def grid(title, rs, key_row, key_col, fmt_row, value="us", fmt="7.1f", unit="us"):
    # `value` per (row key, column key); '*' = output differs from the default's, '-' = not run
    cols = sorted({key_col(r) for r in rs})
    print(f"  {title}: {unit} ('*' = MISMATCH)")
    print("    " + f'{"":<34}' + "".join(f"{c:>8}" for c in cols))
    for k in sorted({key_row(r) for r in rs}, reverse=True):
        cells = {key_col(r): r for r in rs if key_row(r) == k}
        line = "".join(f'{"-":>8}' if c not in cells or "error" in cells[c] else
                       format(cells[c][value], fmt) + (" " if cells[c]["matches"] else "*") for c in cols)
        print("    " + f"{fmt_row(k):<34}" + line)
for (ctx, b), rs in points.items():
    by = {r["method"]: r for r in rs}
    print(f"== context {ctx} batch {b} ({rs[0].get('device', '')})")
    for m in ("copy", "dense", "dense_r9d", "scores", "scores_r8", "topk", "attention", "sparse_graph", "sparse_graph_r8",
              "sparse_graph_tuned"):
        if m in by:
            r = by[m]
            extra = f'  speedup {r["speedup"]:.2f}x' if "speedup" in r else ""
            if m.startswith("dense"):
                extra = (f'  {r["vs_copy"]:.3f}x copy; {r["heads_per_cta"]} heads, {r["tile_loads"]} loads, '
                         f'{r["chunk_pages"]} pages x {r["splits"]}')
            if m == "dense_r9d":
                extra += (f', {r["waves"]:.2f} waves; {r["vs_dense"]:.3f}x dense' + ("" if r["applied"] else " (as dense)")
                          + ("" if r["matches_dense"] else "  MISMATCH"))
            if m == "scores" and "score_preset" in r:
                extra += (f'  {r["score_preset"]}: {r["stages"]} buffers, {r["tiles_per_cta"]} tiles x '
                          f'{r["ctas_per_row"]} CTAs/row'
                          + (" (falls back to r8)" if r["score_preset"] != "explicit" and not r["score_rule_applied"]
                             else ""))
            if "preset" in r:
                extra += (f'  {r["score_stages"]} buffers, {r["score_tiles_per_cta"]} tiles x {r["score_ctas_per_row"]}'
                          f' CTAs/row' if r["applied"] else "  (falls back to r8)")
                ok = r["matches_default"] if m.startswith("scores") else r["matches_sparse_graph"]
                extra += "" if ok else "  MISMATCH"
            print(f'  {m:<19} {r["us"]:>8.1f} us {r["gbps"]:>8.1f} GB/s{extra}')
    if "sparse_graph_tuned" in by:
        t = by["sparse_graph_tuned"]
        print(f'  tuned (fastest of {t["graph_pairs"]} graphs): scores {t["score_label"]}; '
              f'attention {t["attention_label"]}; {t["us"]:.1f} us vs default pair {t["default_graph_us"]:.1f} ({t["vs_default_graph"]:.3f}x); '
              f'single launches summed {t["sum_single_us"]:.1f}')
    for r in rs:
        if r["method"] == "sweep_failed":
            print(f'  SWEEP FAILED: {r["error"]}')
    gr = [r for r in rs if r["method"] == "sweep_graph"]
    if gr:
        si = sorted({r["score_index"] for r in gr})
        pi = sorted({r["attention_index"] for r in gr})
        cell = {(r["score_index"], r["attention_index"]): r for r in gr}
        print("  step as a graph (PDL, 20 steps, median of 7), us [single launches summed]; '*' = MISMATCH")
        for p in pi:
            print(f'    A{p} = {next(r for r in gr if r["attention_index"] == p)["attention_label"]} '
                  f'({next(r for r in gr if r["attention_index"] == p)["attention_us"]:.1f} us alone)')
        print("    " + f'{"scores (us alone)":<44}' + "".join(f'{"A" + str(p):>16}' for p in pi))
        for s_ in si:
            r0 = cell[(s_, pi[0])]
            line = "".join(f'{cell[(s_, p)]["us"]:>8.1f}{"*" if not cell[(s_, p)]["matches"] else " "}'
                           f'[{cell[(s_, p)]["sum_single_us"]:>5.1f}]' for p in pi)
            print("    " + f'{r0["score_label"][:36] + " (" + format(r0["score_us"], ".1f") + ")":<44}' + line)
    sc = [r for r in rs if r["method"] == "sweep_scores" and "preset" not in r]
    at = [r for r in rs if r["method"] == "sweep_attention" and not r["default"]]
    if sc:
        grid("scores, rows (slices/thread, stages), columns tiles/CTA (0 = one wave)", sc,
             lambda r: (r["slices_per_thread"], r["stages"]), lambda r: r["tiles_per_cta"],
             lambda k: f"{k[0]} slices, {k[1]} stages")
        ok = sorted((r for r in sc if "error" not in r and r["matches"]), key=lambda r: r["us"])
        print("  fastest score shapes:")
        for r in ok[:6]:
            print(f'    {r["us"]:>7.1f} us {r["gbps"]:>7.1f} GB/s {r["vs_default"]:.2f}x  {r["slices_per_thread"]} slices, '
                  f'{r["stages"]} stages, {r["tiles_per_cta_used"]} tiles x {r["ctas_per_row"]} CTAs/row, {r["ctas_per_sm"]}/SM')
        bad = [r for r in sc if "error" not in r and not r["matches"]]
        err = [r for r in sc if "error" in r]
        print(f"  score shapes: {len(sc)}, mismatches {len(bad)}, not launched {len(err)}")
    if at:
        d = next(r for r in rs if r["method"] == "sweep_attention" and r["default"])
        print(f'  attention default: {d["us"]:.1f} us ({d.get("kernel", "streamed")}, cluster {d["cluster"]}, '
              f'{d["heads_per_cta"]} heads, {d["chunk_pages"]} pages x {d["splits"]})')
        grid("attention, rows (heads/CTA, kernel, loads), columns pages/CTA (0 = the streamed planner's)", at,
             lambda r: (r["heads_per_cta"], r.get("kernel", "streamed"), r["tile_loads"]),
             lambda r: r["chunk_pages_requested"], lambda k: f"{k[0]} heads, {k[1]}, {k[2]} loads")
        ok = sorted((r for r in at if r["matches"]), key=lambda r: r["us"])
        print("  fastest attention plans:")
        for r in ok[:6]:
            print(f'    {r["us"]:>7.1f} us {r["gbps"]:>7.1f} GB/s {r["vs_default"]:.2f}x  {r.get("kernel", "streamed")}, '
                  f'{r["heads_per_cta"]} heads, {r["tile_loads"]} loads, {r["chunk_pages"]} pages x {r["splits"]} '
                  f'({r["ctas"]} CTAs), max diff {r["max_abs_diff"]:.2g}')
        bad = [r for r in at if not r["matches"]]
        print(f"  attention plans: {len(at)}, mismatches {len(bad)}")
    dn = [r for r in rs if r["method"] == "sweep_dense"]
    if dn:
        d = next(r for r in dn if r["default"])
        print(f'  dense plans (every block; {d["iterations"]} steps x 7, median): default {d["us"]:.1f} us = '
              f'{d["vs_copy"]:.3f}x copy ({d.get("kernel", "streamed")}, {d["heads_per_cta"]} heads, {d["tile_loads"]} loads, {d["chunk_pages"]} pages x '
              f'{d["splits"]}, {d["waves"]:.2f} waves)')
        g = [r for r in dn if not r["default"]]
        kr = lambda r: (r["heads_per_cta"], r.get("kernel", "streamed"), r["tile_loads"])
        kc = lambda r: r["chunk_pages_requested"]
        fr = lambda k: f"{k[0]} heads, {k[1]}, {k[2]} loads"
        grid("dense, rows (heads/CTA, kernel, loads), columns pages/CTA", g, kr, kc, fr)
        grid("dense, the same", g, kr, kc, fr, value="vs_copy", fmt="7.3f", unit="x copy (target >= 0.9)")
        grid("dense, the same", g, kr, kc, fr, value="waves", fmt="7.2f", unit="waves (CTAs / resident)")
        ok = sorted((r for r in dn if r["matches"]), key=lambda r: r["us"])
        print("  fastest dense plans:")
        for r in ok[:6]:
            print(f'    {r["us"]:>7.1f} us {r["vs_copy"]:.3f}x copy {r["vs_default"]:.3f}x default  '
                  f'{"(default) " if r["default"] else ""}{r.get("kernel", "streamed")}, {r["heads_per_cta"]} heads, '
                  f'{r["tile_loads"]} loads, '
                  f'{r["chunk_pages"]} pages x {r["splits"]} ({r["ctas"]} CTAs, {r["waves"]:.2f} waves), '
                  f'max diff {r["max_abs_diff"]:.2g}')
        bad = [r for r in dn if not r["matches"]]
        print(f"  dense plans: {len(dn)}, mismatches {len(bad)}")
# The default score rule (r9w since round 9) against the previous one (r8) and the tuned
# step, each as a graph in the same run (docs/sparse.md, "Round 9, default").
print("== score rules, step as a graph (us; ratio = sparse_graph / it: < 1 = slower than the default)")
print(f'{"context":>8} {"batch":>5} {"sparse_graph":>12} {"r8":>16} {"tuned":>16}')
for (ctx, b), rs in points.items():
    by = {r["method"]: r for r in rs}
    if "sparse_graph" not in by: continue
    g = by["sparse_graph"]["us"]
    def cell(m):
        if m not in by: return f'{"-":>16}'
        r = by[m]
        bad = not r.get("matches_sparse_graph", r.get("matches_default", True))
        return f'{r["us"]:>8.1f} {g / r["us"]:>5.3f}x' + ("*" if bad else " ")
    print(f'{ctx:>8} {b:>5} {g:>12.1f} {cell("sparse_graph_r8")}{cell("sparse_graph_tuned")}')
# Dense (issue 5 target: vs_copy >= 0.9): the default plan, the candidate rule r9d and the
# fastest matching plan of the dense sweep, each as x copy (same copy row).
print("== dense vs copy (us, x copy; target >= 0.9)")
print(f'{"context":>8} {"batch":>5} {"copy":>8} {"dense":>16} {"dense_r9d":>16} {"sweep best":>16}  best plan')
for (ctx, b), rs in points.items():
    by = {r["method"]: r for r in rs}
    if "dense" not in by: continue
    def dcell(r, bad=False):
        return f'{r["us"]:>8.1f} {r["vs_copy"]:>6.3f}x' + ("*" if bad else " ")
    r9 = by.get("dense_r9d")
    ok = sorted((r for r in rs if r["method"] == "sweep_dense" and r["matches"]), key=lambda r: r["us"])
    best = ok[0] if ok else None
    print(f'{ctx:>8} {b:>5} {by["copy"]["us"]:>8.1f} {dcell(by["dense"])}'
          + (dcell(r9, not r9["matches_dense"]) if r9 else f'{"-":>17}')
          + (dcell(best) if best else f'{"-":>17}')
          + (f'  {best["heads_per_cta"]} heads, {best["tile_loads"]} loads, {best["chunk_pages"]} pages x '
             f'{best["splits"]} ({best["waves"]:.2f} waves)' if best else ""))
PY
  exit $status
fi

log=$out/log.txt
# One `kvtier bench transfer` diagnostic (512 MiB, contiguous baseline only) into
# transfer.jsonl, tagged with its arguments; by_args prints them with ratios to contiguous.
# $tag, when set, prefixes the arguments (rounds of the same runs).
d() { echo "-- ${tag:-}$*" >>"$log"; "$kv" bench transfer --json --total 536870912 --repeats "${reps:-3}" --baselines contiguous "$@" \
  | sed "s|^{|{\"args\": \"${tag:-}$*\", |" >>"$out/transfer.jsonl" 2>>"$log" || status=1; }
by_args() {
  python3 - "$out/transfer.jsonl" <<'PY' | tee "$out/summary.txt"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = collections.OrderedDict()
for r in rows:
    by.setdefault(r["args"], {})[r["method"]] = r["gbps"]
for args, v in by.items():
    c = v.get("contiguous", 0)
    print(f"{args:70} " + "  ".join(f"{m} {g:.2f}" + (f" ({g / c:.2f}x)" if c and m != "contiguous" and
                                                        not m.startswith("contender") else "")
                                     for m, g in v.items()))
PY
}
if [ "$mode" = diag ]; then
  : >"$out/transfer.jsonl"
  echo "== kvtier bench host-scatter" >"$log"
  "$kv" bench host-scatter --threads 1 2 4 8 --pool 4294967296 --total 1073741824 >>"$log" 2>&1 || status=1
  echo "== kvtier bench transfer diagnostics (stderr)" >>"$log"
  for bs in 4096 16384 65536; do
    d --direction h2d --block-size "$bs"
    d --direction h2d --block-size "$bs" --launch-bytes 0
    d --direction h2d --block-size "$bs" --huge-pages off
    d --direction h2d --block-size "$bs" --pattern sequential
  done
  d --direction h2d --block-size 8192
  for f in 0.1 0.2 0.3; do d --direction h2d --block-size 16384 --copy-share "$f"; done
  for bs in 16384 65536; do
    d --direction d2h --block-size "$bs" --mode kernel
    d --direction d2h --block-size "$bs" --mode cpu --cpu-threads 8
    d --direction d2h --block-size "$bs" --mode cpu --cpu-threads 8 --cpu-copy memcpy
    d --direction both --block-size "$bs" --mode kernel
  done
  for c in 264 396; do d --direction both --block-size 16384 --mode kernel --d2h-ctas "$c"; done
  d --direction both --block-size 16384 --mode kernel --unroll 8
  echo "== kvtier bench score --gpu" >>"$log"
  { "$kv" bench score --gpu || status=1; } >>"$log" 2>&1
  grep -v '^-- ' "$log" | tail -60
  by_args
  decode
  exit $status
fi
# The movers' copy-engine runs (GpuMoverOptions::engine_run_bytes): each direction and both
# at once, for blocks at random slots and at slots of a churned SlotPool (requests of 8..256
# and 64..2048 blocks), then the run threshold; 5 runs per median.
if [ "$mode" = engine ]; then
  : >"$out/transfer.jsonl"
  echo "== kvtier bench transfer, copy-engine runs (stderr)" >"$log"
  for bs in 16384 65536; do
    for pat in random churn:8:256 churn:64:2048; do
      for dir in h2d d2h both; do reps=5 d --direction "$dir" --block-size "$bs" --pattern "$pat"; done
    done
    for er in 65536 262144 1048576 0; do
      for dir in h2d both; do d --direction "$dir" --block-size "$bs" --pattern churn:8:256 --engine-run-bytes "$er"; done
    done
  done
  grep -E 'rror|runs of' "$log" | sort | uniq -c | head -20
  by_args
  exit $status
fi
# The copy kernels of the kernel paths (GpuMoverOptions::copy_kernel), loads against bulk.
if [ "$mode" = bulk ]; then
  : >"$out/transfer.jsonl"
  echo "== kvtier bench transfer, copy kernels (stderr)" >"$log"
  for round in 1 2; do
    for bs in 8192 16384 65536; do
      for k in loads bulk; do
        tag="r$round " reps=5 d --direction h2d --block-size "$bs" --engine-run-bytes 0 --contend --copy-kernel "$k"
        tag="r$round " reps=5 d --direction d2h --block-size "$bs" --mode kernel --engine-run-bytes 0 --contend --copy-kernel "$k"
        for pat in random churn:8:256; do
          tag="r$round " reps=5 d --direction both --block-size "$bs" --mode kernel --pattern "$pat" --copy-kernel "$k"
        done
      done
    done
  done
  echo "== kvtier demo" >>"$log"
  "$kv" demo --hbm-mib 8192 --dram-mib 16384 --requests 96 --workers 4 >>"$log" 2>&1 || status=1
  grep -E 'rror|copy kernel' "$log" | sort | uniq -c | head -20
  sed -n '/== kvtier demo/,$p' "$log" | tail -30
  by_args
  exit $status
fi
echo "== kvtier probe" >"$log"
"$kv" probe --out "$out/profile.json" >>"$log" 2>&1 || status=1

: >"$out/transfer.jsonl"
echo "== kvtier bench transfer (stderr)" >>"$log"
run() { "$kv" bench transfer --json "$@" >>"$out/transfer.jsonl" 2>>"$log" || status=1; }
if [ "$mode" = quick ]; then sizes="16384"; else sizes="4096 8192 16384 65536 262144 2097152"; fi
for bs in $sizes; do run --direction h2d --block-size "$bs"; done
for bs in 16384 65536; do
  run --direction d2h --block-size "$bs" --mode kernel
  run --direction d2h --block-size "$bs" --mode cpu --cpu-threads 8
  run --direction both --block-size "$bs" --mode kernel
  # Blocks where the DRAM tier's allocator puts them (a churned SlotPool): copy-engine runs.
  for dir in h2d d2h both; do run --direction "$dir" --block-size "$bs" --mode kernel --pattern churn:64:2048; done
done

echo "== kvtier demo" >>"$log"
"$kv" demo --hbm-mib 8192 --dram-mib 16384 --requests 96 --workers 4 >>"$log" 2>&1 || status=1
echo "== kvtier bench score --gpu" >>"$log"
{ "$kv" bench score --gpu || status=1; } >>"$log" 2>&1
tail -30 "$log"

decode

python3 - "$out/transfer.jsonl" <<'PY' | tee "$out/summary.txt"
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
by = collections.defaultdict(dict)
for r in rows:
    key = (r["direction"] + ("" if r.get("pattern", "random") == "random" else " " + r["pattern"]), r["block_size"],
           r["mode"] if r["direction"] != "h2d" else "")
    by[key][r["method"]] = r["gbps"]
print(f'{"dir":24} {"block":>8} {"kvtier":>8} {"contig":>8} {"per_blk":>8} {"batch":>8} {"k/contig":>9} {"k/batch":>8}')
for (d, b, m), v in sorted(by.items()):
    k = next((x for n, x in v.items() if n.startswith("kvtier")), 0.0)
    c, p, bt = v.get("contiguous", 0), v.get("per_block", 0), v.get("batch", 0)
    name = d + ("-" + m if m else "")
    print(f'{name:24} {b:>8} {k:8.2f} {c:8.2f} {p:8.2f} {bt:8.2f} {k/c if c else 0:9.2f} {k/bt if bt else 0:8.2f}')
PY
exit $status
