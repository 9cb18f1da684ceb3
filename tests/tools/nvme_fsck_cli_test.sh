#!/bin/sh
# kvtier fsck on a tier directory written by `kvtier stress nvme`: clean -> exit 0; every
# header record and payload overwritten with junk -> the bad blocks are listed, both kinds
# counted (exit 1); --drop unindexes them
# (exit 1, "dropped N"); a second fsck is clean (exit 0). A directory without a slab -> 2.
set -u
KV=$1
D=$(mktemp -d)
trap 'rm -rf "$D"' EXIT
"$KV" stress nvme --dir "$D/t" --cycles 2 --slots 32 --block-size 4096 --seed 7 > "$D/stress" || { cat "$D/stress"; exit 10; }
"$KV" fsck --dir "$D/t" > "$D/out1"; rc=$?
[ $rc -eq 0 ] || { cat "$D/out1"; echo "clean fsck exited $rc"; exit 11; }
grep -q "checked [1-9][0-9]*, bad 0 (payloads 0, header records 0), dropped 0" "$D/out1" || { cat "$D/out1"; exit 12; }
grep -q "format v3" "$D/out1" || { cat "$D/out1"; exit 12; }
# Junk over every slot: 32 slots of a 4 KiB header record and a 4 KiB payload each, after the
# 4 KiB file header.
dd if=/dev/urandom of="$D/t/slab.kvt" bs=4096 seek=1 count=64 conv=notrunc status=none
"$KV" fsck --dir "$D/t" > "$D/out2"; rc=$?
[ $rc -eq 1 ] || { cat "$D/out2"; echo "fsck of a damaged slab exited $rc"; exit 13; }
grep -q "^bad: slot" "$D/out2" || { cat "$D/out2"; exit 14; }
grep -q "bad \([1-9][0-9]*\) (payloads \1, header records \1)" "$D/out2" || { cat "$D/out2"; exit 14; }
"$KV" fsck --dir "$D/t" --drop > "$D/out3"; rc=$?
[ $rc -eq 1 ] || { cat "$D/out3"; exit 15; }
grep -q "dropped [1-9]" "$D/out3" || { cat "$D/out3"; exit 16; }
"$KV" fsck --dir "$D/t" > "$D/out4"; rc=$?
[ $rc -eq 0 ] || { cat "$D/out4"; echo "fsck after --drop exited $rc"; exit 17; }
grep -q "checked 0, bad 0" "$D/out4" || { cat "$D/out4"; exit 18; }
"$KV" fsck --dir "$D/nothing" 2> "$D/err"; rc=$?
[ $rc -eq 2 ] && grep -q "no NVMe tier here" "$D/err" || { cat "$D/err"; exit 19; }
echo "fsck CLI: OK"
