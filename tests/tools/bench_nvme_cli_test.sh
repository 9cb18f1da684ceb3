#!/bin/sh
# kvtier bench nvme --json, short: one JSON line per measurement (kvtier and fio, read and
# write; fio only where it is installed) and the restore line. Exit 77 (skipped) where the
# test directory's filesystem refuses O_DIRECT (e.g. tmpfs).
set -u
KV=$1
DIR=$2
mkdir -p "$DIR"
"$KV" bench nvme --dir "$DIR" --block-size 16384 --qd 4 --seconds 0.3 --file-bytes 4194304 \
  --restore-blocks 64 --restore-chunk 16 --json > "$DIR/out" 2> "$DIR/err"; rc=$?
if [ $rc -ne 0 ] && grep -q "O_DIRECT is not available" "$DIR/err"; then
  cat "$DIR/err"; echo "SKIP: O_DIRECT is not available in $DIR"; exit 77
fi
[ $rc -eq 0 ] || { cat "$DIR/out" "$DIR/err"; echo "exited $rc"; exit 10; }
for op in read write; do
  grep -q "^{\"block_size\":16384,\"engine\":\"kvtier\",\"gbps\":[0-9.e+-]*,\"iops\":[0-9.e+-]*,\"op\":\"$op\",\"p50_us\":[0-9.e+-]*,\"p99_us\":[0-9.e+-]*,\"qd\":4," "$DIR/out" \
    || { cat "$DIR/out"; echo "no kvtier $op line"; exit 11; }
  if command -v fio > /dev/null; then
    grep -q "\"engine\":\"fio\".*\"op\":\"$op\"" "$DIR/out" || { cat "$DIR/out" "$DIR/err"; echo "no fio $op line"; exit 12; }
  fi
done
grep -q "\"op\":\"restore\".*\"ratio\":" "$DIR/out" || { cat "$DIR/out"; echo "no restore line"; exit 13; }
[ ! -e "$DIR/kvtier-bench-nvme" ] || { echo "the slab was not removed"; exit 14; }
echo "bench nvme CLI: OK"
