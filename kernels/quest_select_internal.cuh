// Internal to the Quest selection kernels (quest_select.cu: validation and the public
// launches; quest_select_scores.cu and quest_select_scores_pipelined.cu: the score kernels,
// helpers in quest_select_scores_internal.cuh; quest_select_bisection.cu and
// quest_select_topk.cu: the two top-k kernels): shared helpers and the launches each file
// exposes. Not part of the public API. (TopKRow: quest_select_bisection_internal.cuh.)
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "quest_select.cuh"

namespace kvtier::kernels::quest_internal {

// Order-preserving bits: larger key = larger score. NaN ranks as -inf and -0 as +0, as the
// reference compares them.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  uint32_t u = __float_as_uint(isnan(f) ? -INFINITY : f);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

// Where row `row` (request row / kv_heads, KV head row % kv_heads) of a top-k launch reads
// its scores and slots and writes its selection; both top-k algorithms start from it.
struct TopKRowPlace {
  uint32_t n;       // the request's blocks
  size_t slice0;    // index of the row's first score (and slot)
  uint32_t k;       // blocks the budget selects
  uint32_t out0;    // the row's first output position
  uint32_t space;   // output positions the caller reserved (must equal k)
};
// The slice of block 0 of (request r, KV head h) whose blocks start at `first` (block_offsets)
// and number n: packed, or at the head pitch (QuestSelectDeviceArgs::head_pitch).
__device__ __forceinline__ size_t HeadSlice0(const QuestSelectDeviceArgs& a, uint32_t r, uint32_t h, uint32_t first,
                                             uint32_t n) {
  return a.head_pitch != 0 ? (size_t{r} * a.kv_heads + h) * a.head_pitch : size_t{first} * a.kv_heads + size_t{h} * n;
}

__device__ __forceinline__ TopKRowPlace PlaceTopKRow(const QuestSelectDeviceArgs& a, uint32_t row) {
  const uint32_t r = row / a.kv_heads, h = row % a.kv_heads;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t out0 = a.selected_offsets[row];
  return {n, HeadSlice0(a, r, h, first, n), QuestBudgetBlocksOf(n, a.params), out0, a.selected_offsets[row + 1] - out0};
}

inline constexpr uint32_t kMaxStagedQueryFloats = 12288;  // 48 KiB of shared memory

template <class... P, class... A>
cudaError_t LaunchEx(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, bool pdl,
                     A&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, std::forward<A>(args)...);
}

// Rows the digit top-k takes: ≤ 8 keys per thread of a 1024-thread CTA.
inline constexpr uint32_t kDigitTopKMaxBlocks = 8192;

// The digit top-k (quest_select_topk.cu) over every row of `a` (requests · kv_heads CTAs of
// 1024 threads, 2 blocks per thread when max_blocks ≤ 2048, else 8); requires a.max_blocks ≤
// kDigitTopKMaxBlocks.
// inputs_early: the launch rides PDL behind a kernel that writes only the scores and waits for
// its own predecessor before it triggers (LaunchQuestSelect's score launch), so the row's
// offsets and slots are read before the wait; otherwise nothing is read before it.
cudaError_t LaunchDigitTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl, bool inputs_early);

// The score kernels (quest_select_scores.cu: CanFuse, LaunchScoresAny;
// quest_select_scores_pipelined.cu: PlanScores). CanFuse: the fused score + top-k launch
// applies (row counters given, the queries' shared memory small enough).
// LaunchScoresAny: the scores of every row of `a`, fused with the bisection top-k if `fused`.
// PlanScores: what the separate (unfused) score launch of `a` runs (PlanQuestScores).
bool CanFuse(const QuestSelectDeviceArgs& a);
cudaError_t LaunchScoresAny(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused);
cudaError_t PlanScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan);

// The bisection top-k (quest_select_bisection.cu) over every row of `a` (requests · kv_heads
// CTAs of 1024 threads).
cudaError_t LaunchBisectionTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl);

}  // namespace kvtier::kernels::quest_internal
