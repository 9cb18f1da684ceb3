// The bisection top-k kernel and its launch (QuestTopKAlgorithm::kBisection; kAuto and kDigits
// above 8192 blocks: kDigitTopKAutoMaxBlocks, kDigitTopKMaxBlocks). The row's top-k itself
// (TopKRow) is in quest_select_bisection_internal.cuh, shared with the fused score kernel.
// The top-k pass touches only n floats per row (L2-resident right after the scores), so one
// CTA per row suffices; its cost is its serial steps (one barrier per key bit of the
// bisection, ≤ 64 and usually ~35–45, then one per compaction round; long rows: staging fused
// with the first radix pass, ≤ 4 passes of 2 block syncs each, the compaction), not bytes.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "quest_select.cuh"
#include "quest_select_bisection_internal.cuh"
#include "quest_select_internal.cuh"

namespace kvtier::kernels::quest_internal {
namespace {

constexpr int kSelectThreads = 1024;

__global__ void __launch_bounds__(kSelectThreads) QuestTopKKernel(QuestSelectDeviceArgs a, uint32_t cap) {
  extern __shared__ uint32_t keys_s[];
  __shared__ TopKShared sh;
  cudaGridDependencySynchronize();            // PDL launch behind the scores: their writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  TopKRow<kSelectThreads>(a, blockIdx.x, keys_s, cap, sh);
}

}  // namespace

cudaError_t LaunchBisectionTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl) {
  // Rows the bisection takes (≤ 8192 blocks) need no staged keys.
  const uint32_t cap =
      a.max_blocks <= uint32_t{kSelectThreads} * kMaxKeysPerThread ? 0u : std::min(a.max_blocks, kTopKStageKeys);
  return LaunchEx(QuestTopKKernel, dim3(a.requests * a.kv_heads), dim3(kSelectThreads), size_t{cap} * 4, stream, pdl,
                  a, cap);
}

}  // namespace kvtier::kernels::quest_internal
