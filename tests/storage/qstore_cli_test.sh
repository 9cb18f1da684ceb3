#!/usr/bin/env bash
# CLI tests of `kvtier qstore` and `kvtier bench qstore`.
# Usage: qstore_cli_test.sh KVTIER DATA_DIR CASE
set -uo pipefail
kvtier=$1 data=$2 case=$3
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
db=$work/db
fail() { echo "FAIL ($case): $*"; echo "--- stdout"; cat "$work/out" 2>/dev/null; echo "--- stderr"; cat "$work/err" 2>/dev/null; exit 1; }
run() { "$kvtier" "$@" >"$work/out" 2>"$work/err"; echo $?; }
expect_rc() { [[ $1 == "$2" ]] || fail "exit code $1, expected $2"; }
expect_out() { grep -qF -- "$1" "$work/out" || fail "stdout lacks: $1"; }
expect_err() { grep -qF -- "$1" "$work/err" || fail "stderr lacks: $1"; }

case $case in
  ingest_good)
    rc=$(run qstore ingest --db "$db" --input "$data/good.jsonl")
    expect_rc "$rc" 0
    expect_out "5 lines: 4 inserted, 0 replaced, 0 duplicates skipped, 0 bad; the store holds 4 entries"
    rc=$(run qstore ingest --db "$db" --input "$data/good.jsonl" --json)  # the same again: all near-copies of themselves
    expect_rc "$rc" 0
    expect_out '"entries":4'
    ;;
  ingest_malformed)
    rc=$(run qstore ingest --db "$db" --input "$data/malformed.jsonl" --json)
    expect_rc "$rc" 3
    expect_out '"inserted":3'
    expect_out '"bad_lines":14'
    expect_err "malformed.jsonl:2: invalid JSON (line skipped)"
    expect_err "malformed.jsonl:3: embedding has 3 values, the store's dimension is 4"
    expect_err "malformed.jsonl:4: invalid JSON"
    expect_err "malformed.jsonl:5: "
    expect_err "malformed.jsonl:6: missing field 'response'"
    expect_err "malformed.jsonl:7: embedding[1] is not a number"
    expect_err "malformed.jsonl:9: embedding has norm 0"
    expect_err "malformed.jsonl:10: not a JSON object"
    expect_err "malformed.jsonl:11: field 'id' is not a string"
    expect_err "malformed.jsonl:12: field 'prefix_tokens' is not an array"
    expect_err "malformed.jsonl:13: prefix_tokens[1] is not a token id"
    expect_err "malformed.jsonl:14: prefix_chain must be 64 hex digits"
    expect_err "malformed.jsonl:15: field 'source' is not a string"
    expect_err "malformed.jsonl:16: field 'embedding' is not an array"
    grep -q "malformed.jsonl:17" "$work/err" && fail "a good line was rejected"
    rc=$(run qstore stats --db "$db" --verify --json)
    expect_rc "$rc" 0
    expect_out '"entries":3'
    ;;
  ingest_strict)
    rc=$(run qstore ingest --db "$db" --input "$data/malformed.jsonl" --strict)
    expect_rc "$rc" 3
    expect_err "malformed.jsonl:2: invalid JSON"
    grep -q "malformed.jsonl:3" "$work/err" && fail "went on after the first bad line"
    expect_out "1 inserted"
    expect_out "stopped at the first bad line"
    rc=$(run qstore stats --db "$db" --json)
    expect_out '"entries":1'
    ;;
  ingest_dedup_and_replace)
    rc=$(run qstore ingest --db "$db" --input "$data/good.jsonl")
    expect_rc "$rc" 0
    rc=$(run qstore ingest --db "$db" --input "$data/dup.jsonl")
    expect_rc "$rc" 0
    expect_out "0 inserted, 1 replaced, 1 duplicates skipped"
    rc=$(run qstore lookup --db "$db" --input "$data/queries.jsonl" --threshold 0.5 --json)
    expect_out '"match_id":"a"'
    rc=$(run qstore stats --db "$db" --json --verify)
    expect_rc "$rc" 0
    expect_out '"duplicates_total":1'
    expect_out '"verify":"OK"'
    ;;
  lookup_json)
    run qstore ingest --db "$db" --input "$data/good.jsonl" >/dev/null
    rc=$(run qstore lookup --db "$db" --input "$data/queries.jsonl" --threshold 0.9 --json)
    expect_rc "$rc" 0
    [[ $(wc -l <"$work/out") == 3 ]] || fail "expected one line per query"
    expect_out '{"hit":true,"id":"qa","latency_us":'
    expect_out '"match_id":"a","response":"the keys and values of past tokens","similarity":0.99'
    expect_out '{"hit":false,"id":"qmiss","latency_us":'
    expect_out '"match_id":null,"similarity":null}'
    expect_out '"match_id":"d"'
    rc=$(run qstore lookup --db "$db" --input "$data/queries.jsonl" --threshold 0.9 --k 2 --json --exact)
    expect_rc "$rc" 0
    expect_out '"matches":[{"id":"a"'
    rc=$(run qstore lookup --db "$db" --input "$data/queries.jsonl" --threshold 2)
    expect_rc "$rc" 2
    ;;
  lookup_malformed)
    run qstore ingest --db "$db" --input "$data/good.jsonl" >/dev/null
    rc=$(run qstore lookup --db "$db" --input "$data/queries_malformed.jsonl" --threshold 0.9)
    expect_rc "$rc" 3
    expect_err "queries_malformed.jsonl:2: lookup embedding has 2 values"
    expect_err "queries_malformed.jsonl:3: missing field 'id'"
    expect_err "queries_malformed.jsonl:4: invalid JSON"
    expect_out "qa: hit a"
    expect_out "qd: hit d"
    expect_err "queries_malformed.jsonl:6: field 'embedding' is not an array"
    expect_err "queries_malformed.jsonl:7: field 'id' is not a string"
    expect_out "2 queries: 2 hits, 0 misses, 5 bad lines"
    rc=$(run qstore lookup --db "$db" --input "$data/queries_malformed.jsonl" --threshold 0.9 --strict --json)
    expect_rc "$rc" 3
    expect_out '"id":"qa"'
    grep -q '"id":"qd"' "$work/out" && fail "--strict went on after the first bad line"
    rc=$(run qstore lookup --db "$work/nowhere" --input "$data/queries.jsonl" --threshold 0.9)
    expect_rc "$rc" 1
    expect_err "no query store at"
    ;;
  stats_verify)
    run qstore ingest --db "$db" --input "$data/good.jsonl" >/dev/null
    rc=$(run qstore stats --db "$db" --verify)
    expect_rc "$rc" 0
    expect_out "entries              4"
    expect_out "dim                  4"
    expect_out "verify               OK"
    rm -f "$db"/ann/hnsw-*.bin  # the index payload is lost: rebuilt from RocksDB
    rc=$(run qstore stats --db "$db" --verify --json)
    expect_rc "$rc" 0
    expect_out '"index_origin":"rebuilt"'
    expect_out '"verify":"OK"'
    ;;
  bench_quick)
    rc=$(run bench qstore --quick --entries 3000 --dim 64 --json)
    expect_rc "$rc" 0
    expect_out '"bench":"qstore"'
    expect_out '"recall_at_1":'
    expect_out '"exact_p99_us":'
    ;;
  *) fail "unknown case" ;;
esac
echo "PASS ($case)"
