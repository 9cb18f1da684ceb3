#!/usr/bin/env bash
# Measures the NVMe tier on the GPU machine's own disk (a real NVMe drive, unlike the
# development VM's virtio disk): `kvtier bench nvme` next to fio on the same slab, 64 KiB
# and 16 KiB blocks. The GPU machine has none of our Debian packages, so fio travels too:
# `tools/gpu-build.sh --with-fio` packs /usr/bin/fio and its libraries into
# .bundle/fio.tar.xz. Writes under $OUT (default ./gpu-results): nvme.jsonl, nvme.txt.
#   usage: tools/gpu-nvme.sh [DIR [BASELINE]]
#     DIR       where the slab goes; default $TMPDIR or /tmp
#     BASELINE  another kvtier binary (e.g. the previous build) to run in the same call: each
#               block size then runs this build and the baseline alternately, twice each
#               (--runs 1 per invocation), into nvme.jsonl and nvme-baseline.jsonl
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}
mkdir -p "$out"
dir=${1:-${TMPDIR:-/tmp}}
baseline=${2:-}
export LD_LIBRARY_PATH=$PWD/.bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
kv=${KV:-build-cuda/tools/kvtier/kvtier}  # KV=path: another kvtier build (e.g. a CPU one)
fio_args=(--no-fio)
if [ -f .bundle/fio.tar.xz ]; then
  fio_dir=$(mktemp -d)
  trap 'rm -rf "$fio_dir"' EXIT
  tar -C "$fio_dir" -xJf .bundle/fio.tar.xz
  cat >"$fio_dir/fio.sh" <<SH
#!/usr/bin/env bash
LD_LIBRARY_PATH=$fio_dir/fiolib exec $fio_dir/fio/fio "\$@"
SH
  chmod +x "$fio_dir/fio.sh"
  fio_args=(--fio "$fio_dir/fio.sh")
fi
status=0
{
  df -h "$dir" | tail -1
  findmnt -T "$dir" -o SOURCE,FSTYPE | tail -1
  lsblk -d -o NAME,MODEL,SIZE,ROTA 2>/dev/null
} >"$out/nvme.txt" 2>&1
: >"$out/nvme.jsonl"
bench() {  # binary, runs, output, block size
  "$1" bench nvme --dir "$dir" --block-size "$4" --qd 32 --seconds 3 --runs "$2" --file-bytes $((4 << 30)) \
    --no-restore "${fio_args[@]}" --json >>"$3" 2>>"$out/nvme.txt" || status=1
}
for bs in 65536 16384; do
  if [ -z "$baseline" ]; then
    bench "$kv" 3 "$out/nvme.jsonl" "$bs"
  else
    for round in 1 2; do
      echo "== block $bs, round $round: this build, then $baseline" >>"$out/nvme.txt"
      bench "$kv" 1 "$out/nvme.jsonl" "$bs"
      bench "$baseline" 1 "$out/nvme-baseline.jsonl" "$bs"
    done
  fi
done
cat "$out/nvme.jsonl" >>"$out/nvme.txt"
[ -z "$baseline" ] || { echo "== baseline" && cat "$out/nvme-baseline.jsonl"; } >>"$out/nvme.txt"
cat "$out/nvme.txt"
exit $status
