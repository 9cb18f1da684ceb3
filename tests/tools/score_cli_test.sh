#!/usr/bin/env bash
# CLI tests of `kvtier score`: a good run, and every error path on small generated .npy
# files (python3 standard library only; no numpy needed).
# Usage: score_cli_test.sh KVTIER CASE
set -uo pipefail
kvtier=$1 case=$2
subcommand=score
npy_seed=7
source "$(dirname "$0")/npy_cli_lib.sh"
good() { npy k.npy 2,40,16; npy v.npy 2,40,16; npy q.npy 8,4,16; }
args() { echo --keys "$work/k.npy" --values "$work/v.npy" --queries "$work/q.npy" --position 40 --block-tokens 16; }

case $case in
  good_json)
    good
    rc=$(run $(args) --future 64 --rope-theta 500000 --sink-tokens 4 --json)
    expect_rc "$rc" 0
    [[ $(wc -l <"$work/out") == 2 ]] || fail "expected one line per KV head"
    expect_out '{"block_scores":['
    expect_out '"kv_head":1}'
    python3 -c "import json,sys; [json.loads(l) for l in open(sys.argv[1])]; r=json.loads(open(sys.argv[1]).readline()); assert len(r['block_scores'])==3, r" "$work/out" \
      || fail "not 3 blocks of JSON"
    ;;
  good_table)
    good
    rc=$(run $(args))
    expect_rc "$rc" 0
    expect_out "kv_head 0: 3 blocks:"
    ;;
  default_is_exact)
    # The command's default stays the exact covariance term (docs/scoring.md "kvtier score"),
    # unlike the scorer's options (rank 16): the default output equals --covariance-rank 0 and
    # r >= dim (also exact), and differs from rank 16 at dim 32 (40 queries: Σ has rank > 16).
    npy k.npy 2,40,32; npy v.npy 2,40,32; npy q.npy 40,4,32
    rc=$(run $(args) --json); expect_rc "$rc" 0; cp "$work/out" "$work/default"
    rc=$(run $(args) --json --covariance-rank 0); expect_rc "$rc" 0
    cmp -s "$work/out" "$work/default" || fail "default output differs from --covariance-rank 0"
    rc=$(run $(args) --json --covariance-rank 32); expect_rc "$rc" 0
    cmp -s "$work/out" "$work/default" || fail "--covariance-rank 32 (= dim) differs from the exact default"
    rc=$(run $(args) --json --covariance-rank 16); expect_rc "$rc" 0
    [[ $(wc -l <"$work/out") == 2 ]] || fail "expected one line per KV head"
    cmp -s "$work/out" "$work/default" && fail "--covariance-rank 16 gives the exact scores (option ignored?)"
    python3 - "$work/out" "$work/default" <<'PY' || fail "rank 16 is not close to exact"
import json, sys
low = [json.loads(l)["block_scores"] for l in open(sys.argv[1])]
ex = [json.loads(l)["block_scores"] for l in open(sys.argv[2])]
assert len(low) == len(ex) == 2
for a, b in zip(low, ex):
    assert len(a) == len(b) == 3
    # sinks dominate block 0; the low-rank term keeps every variance, so scores stay close
    assert all(abs(x - y) <= 0.2 * abs(y) for x, y in zip(a, b)), (a, b)
PY
    ;;
  missing_file)
    good
    rc=$(run --keys "$work/none.npy" --values "$work/v.npy" --queries "$work/q.npy" --position 40)
    expect_rc "$rc" 2
    expect_err "none.npy"
    expect_err "No such file"
    ;;
  not_npy)
    good; npy k.npy 2,40,16 "<f4" False 1 nomagic
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "k.npy: not an .npy file"
    ;;
  bad_version)
    good; npy v.npy 2,40,16 "<f4" False 9
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "v.npy: unsupported .npy version 9"
    ;;
  wrong_dtype)
    good; npy q.npy 8,4,16 "<f8"
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "q.npy: dtype '<f8' is not float32"
    ;;
  fortran_order)
    good; npy k.npy 2,40,16 "<f4" True
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "k.npy: Fortran order is not supported"
    ;;
  truncated_data)
    good; npy v.npy 2,40,16 "<f4" False 1 truncate
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "v.npy: 5116 data bytes, the shape (2, 40, 16) needs 5120"
    ;;
  non_finite)
    good; npy k.npy 2,40,16 "<f4" False 1 nan
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "k.npy: value 640 is not finite"
    ;;
  keys_rank)
    good; npy k.npy 80,16
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "keys must be [kv_heads, tokens, dim], got shape [80, 16]"
    ;;
  values_mismatch)
    good; npy v.npy 2,41,16
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "values have shape [2, 41, 16], the keys"
    ;;
  query_dim_mismatch)
    good; npy q.npy 8,4,32
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "query dim 32 differs from the key dim 16"
    ;;
  heads_not_multiple)
    good; npy q.npy 8,3,16
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "3 query heads are not a multiple of the 2 KV heads"
    ;;
  odd_dim)
    npy k.npy 2,40,15; npy v.npy 2,40,15; npy q.npy 8,4,15
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "head dim 15 must be even"
    ;;
  position_before_end)
    good
    rc=$(run --keys "$work/k.npy" --values "$work/v.npy" --queries "$work/q.npy" --position 39)
    expect_rc "$rc" 2; expect_err "--position 39 is before the end of the 40 cached tokens"
    ;;
  no_queries)
    good; npy q.npy 0,4,16
    rc=$(run $(args)); expect_rc "$rc" 2; expect_err "no queries"
    ;;
  *) echo "unknown case $case"; exit 2 ;;
esac
echo "ok ($case)"
