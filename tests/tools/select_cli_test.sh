#!/usr/bin/env bash
# CLI tests of `kvtier select`: good runs (JSON and table, checked against a straightforward
# Quest selection written here in Python) and every error path, on small generated .npy
# files (python3 standard library only; no numpy needed).
# Usage: select_cli_test.sh KVTIER CASE
set -uo pipefail
kvtier=$1 case=$2
subcommand=select
source "$(dirname "$0")/npy_cli_lib.sh"
# 2 KV heads, 100 tokens (7 blocks of 16, the last partial), d 8; 3 steps of 4 query heads.
good() { npy k.npy 2,100,8; npy q.npy 3,4,8; }
args() { echo --keys "$work/k.npy" --queries "$work/q.npy" --block-tokens 16; }

# check_against_python GQA METADATA BUDGET: the JSON equals a plain Quest selection.
check_against_python() {
  python3 - "$work/k.npy" "$work/q.npy" "$work/out" "$1" "$2" "$3" <<'PY' || fail "selection differs from the Python Quest ($1, $2)"
import json, math, struct, sys
def load(p):
    b = open(p, "rb").read(); hl = struct.unpack("<H", b[8:10])[0]; h = b[10:10 + hl].decode()
    shape = tuple(int(x) for x in h.split("'shape': (")[1].split(")")[0].split(",") if x.strip())
    n = 1
    for d in shape: n *= d
    return shape, struct.unpack("<%df" % n, b[10 + hl:10 + hl + 4 * n])
(kv, T, d), K = load(sys.argv[1]); (S, QH, _), Q = load(sys.argv[2])
gqa, meta, budget = sys.argv[4], sys.argv[5], int(sys.argv[6]); bt = 16; g = QH // kv
f32 = lambda x: struct.unpack("<f", struct.pack("<f", x))[0]
nb = (T + bt - 1) // bt; k_sel = min(nb, max(3, budget // bt, 2))
lines = [json.loads(l) for l in open(sys.argv[3])]
assert len(lines) == S * kv, len(lines)
for s in range(S):
  for h in range(kv):
    scores = []
    for b in range(nb):
      toks = range(b * bt, min(T, (b + 1) * bt))
      lo = [min(K[(h * T + t) * d + i] for t in toks) for i in range(d)]
      hi = [max(K[(h * T + t) * d + i] for t in toks) for i in range(d)]
      if meta == "compact":  # int8 + scale, conservative (the header's rule)
        peak = max(max(abs(x) for x in lo), max(abs(x) for x in hi))
        sc = 1.0 if peak == 0 else f32(peak / 127)
        while f32(sc * 127) < peak: sc = f32(sc * (1 + 2 ** -23))
        def down(x):
          v = math.floor(f32(x / sc)); v -= f32(v * sc) > x; return f32(sc * max(-127, min(127, v)))
        def up(x):
          v = math.ceil(f32(x / sc)); v += f32(v * sc) < x; return f32(sc * max(-127, min(127, v)))
        lo = [down(x) for x in lo]; hi = [up(x) for x in hi]
      per = []
      for j in range(g):
        q = Q[((s * QH) + h * g + j) * d:((s * QH) + h * g + j + 1) * d]
        per.append(sum(max(q[i] * lo[i], q[i] * hi[i]) for i in range(d)))
      scores.append(sum(per) if gqa == "sum" else max(per))
    forced = [0, nb - 1]
    rest = sorted((b for b in range(nb) if b not in forced), key=lambda b: (-scores[b], b))
    want = sorted(forced + rest[:k_sel - 2])
    got = lines[s * kv + h]
    assert list(got.keys()) == ["step", "kv_head", "blocks"], got
    assert got["step"] == s and got["kv_head"] == h, got
    assert got["blocks"] == want, (s, h, got["blocks"], want, scores)
PY
}

case $case in
  good_json)
    good
    rc=$(run $(args) --budget 64 --json)
    expect_rc "$rc" 0
    [[ $(wc -l <"$work/out") == 6 ]] || fail "expected one line per step and KV head"
    expect_out '{"step":0,"kv_head":0,"blocks":[0,'
    expect_out '{"step":2,"kv_head":1,"blocks":['
    check_against_python max compact 64
    ;;
  good_gqa_max_exact)
    good
    rc=$(run $(args) --budget 48 --gqa max --metadata exact --json)
    expect_rc "$rc" 0
    check_against_python max exact 48
    ;;
  good_table)
    good
    rc=$(run $(args) --budget 64)
    expect_rc "$rc" 0
    expect_out "step 0 kv_head 0: 4 of 7 blocks: 0"
    ;;
  budget_covers_all)
    good
    rc=$(run $(args) --budget 4096 --json)
    expect_rc "$rc" 0
    expect_out '"blocks":[0,1,2,3,4,5,6]}'
    ;;
  missing_file)
    good
    rc=$(run --keys "$work/none.npy" --queries "$work/q.npy" --budget 64)
    expect_rc "$rc" 2; expect_err "none.npy"; expect_err "No such file"
    ;;
  not_npy)
    good; npy k.npy 2,100,8 "<f4" False 1 nomagic
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "k.npy: not an .npy file"
    ;;
  wrong_dtype)
    good; npy q.npy 3,4,8 "<f8"
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: dtype '<f8' is not float32"
    ;;
  truncated_data)
    good; npy k.npy 2,100,8 "<f4" False 1 truncate
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "k.npy: 6396 data bytes, the shape (2, 100, 8) needs 6400"
    ;;
  non_finite)
    good; npy q.npy 3,4,8 "<f4" False 1 nan
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: value 48 is not finite"
    ;;
  keys_rank)
    good; npy k.npy 200,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "k.npy: keys must be [kv_heads, tokens, dim], got shape [200, 8]"
    ;;
  queries_rank)
    good; npy q.npy 12,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: queries must be [steps, q_heads, dim], got shape [12, 8]"
    ;;
  fewer_query_heads)
    good; npy q.npy 3,1,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: 1 query heads are fewer than the 2 KV heads"
    ;;
  heads_not_multiple)
    good; npy q.npy 3,5,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: 5 query heads are not a multiple of the 2 KV heads"
    ;;
  dim_mismatch)
    good; npy q.npy 3,4,16
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: query dim 16 differs from the key dim 8"
    ;;
  empty_keys)
    good; npy k.npy 2,0,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "k.npy: empty keys, shape [2, 0, 8]"
    ;;
  no_steps)
    good; npy q.npy 0,4,8
    rc=$(run $(args) --budget 64); expect_rc "$rc" 2; expect_err "q.npy: no query steps"
    ;;
  budget_below_block)
    good
    rc=$(run $(args) --budget 8); expect_rc "$rc" 2; expect_err "--budget 8 must be at least one block (16 tokens)"
    ;;
  budget_missing)
    good
    rc=$(run $(args)); [[ $rc != 0 ]] || fail "ran without --budget"; expect_err "--budget is required"
    ;;
  budget_not_a_number)
    good
    rc=$(run $(args) --budget lots); [[ $rc != 0 ]] || fail "accepted --budget lots"; expect_err "--budget"
    ;;
  bad_gqa)
    good
    rc=$(run $(args) --budget 64 --gqa mean); expect_rc "$rc" 2; expect_err "--gqa mean is neither sum nor max"
    ;;
  bad_metadata)
    good
    rc=$(run $(args) --budget 64 --metadata bf16); expect_rc "$rc" 2; expect_err "--metadata bf16 is neither compact nor exact"
    ;;
  too_many_sinks)
    good
    rc=$(run $(args) --budget 32 --sink-blocks 3); expect_rc "$rc" 2; expect_err "sink_blocks = 3 plus the current block exceed"
    ;;
  *) echo "unknown case $case"; exit 2 ;;
esac
echo "ok ($case)"
