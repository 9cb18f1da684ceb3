#!/usr/bin/env bash
# Builds the CUDA targets for sm_90 into build-cuda/ and bundles the shared libraries they
# need into .bundle/lib, so that tools/gpu-check.sh can run them on a GPU machine that has
# none of our Debian packages (run there with LD_LIBRARY_PATH=.bundle/lib).
#   usage: tools/gpu-build.sh [--with-fio]   (from the repository root)
#     --with-fio   also pack /usr/bin/fio and its libraries into .bundle/fio.tar.xz, for
#                  tools/gpu-nvme.sh (about 21 MB; the carry limit is 64 MiB in all)
set -euo pipefail
cd "$(dirname "$0")/.."
build=build-cuda
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVTIER_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
  -DKVTIER_WERROR=ON >/dev/null
targets=(kvtier copy_blocks_gpu_test gpu_tier_test expected_attention_gpu_test sparse_attention_gpu_test
  quest_select_gpu_test quest_topk_gpu_test quest_score_gpu_test read_bound_gpu_test device_slice_metadata_test stream_copy_test
  host_tier_test gpu_mover_engine_test)
cmake --build "$build" -j "$(nproc)" --target "${targets[@]}"
bins=("$build/tools/kvtier/kvtier" "$build/tests/kernels/copy_blocks_gpu_test" "$build/tests/tiers/gpu_tier_test"
  "$build/tests/kernels/expected_attention_gpu_test" "$build/tests/kernels/sparse_attention_gpu_test"
  "$build/tests/kernels/quest_select_gpu_test" "$build/tests/kernels/quest_topk_gpu_test"
  "$build/tests/kernels/quest_score_gpu_test" "$build/tests/kernels/read_bound_gpu_test"
  "$build/tests/tiers/device_slice_metadata_test"
  "$build/tests/tiers/stream_copy_test" "$build/tests/tiers/host_tier_test" "$build/tests/tiers/gpu_mover_engine_test")
strip --strip-debug "${bins[@]}"
rm -rf .bundle && mkdir -p .bundle/lib
bundle=../shared/tools/bundle-libs.sh
[ -f "$bundle" ] || bundle=/work/shared/tools/bundle-libs.sh
bash "$bundle" .bundle/lib "${bins[@]}"
echo "gpu-build: carry build-cuda and .bundle; run tools/gpu-check.sh there"
if [ "${1:-}" = --with-fio ]; then
  tmp=$(mktemp -d)
  mkdir -p "$tmp/fio" && cp "$(command -v fio)" "$tmp/fio/fio"
  bash "$bundle" "$tmp/fiolib" "$tmp/fio/fio" >/dev/null
  tar -C "$tmp" -cJf .bundle/fio.tar.xz fio fiolib
  rm -rf "$tmp"
  echo "gpu-build: .bundle/fio.tar.xz for tools/gpu-nvme.sh"
fi
