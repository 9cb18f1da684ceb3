// Internal to the Quest selection kernels (quest_select.cu, quest_select_topk.cu): shared
// device helpers and the launch of the digit top-k. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "quest_select.cuh"

namespace kvtier::kernels::quest_internal {

// Order-preserving bits: larger key = larger score. NaN ranks as -inf and -0 as +0, as the
// reference compares them.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  uint32_t u = __float_as_uint(isnan(f) ? -INFINITY : f);
  if (u == 0x80000000u) u = 0;
  return (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
}

// Rows the digit top-k takes: ≤ 8 keys per thread of a 1024-thread CTA.
inline constexpr uint32_t kDigitTopKMaxBlocks = 8192;

// The digit top-k (quest_select_topk.cu) over every row of `a` (requests · kv_heads CTAs of
// 256 threads when max_blocks ≤ 2048, else 1024); requires a.max_blocks ≤ kDigitTopKMaxBlocks.
cudaError_t LaunchDigitTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl);

}  // namespace kvtier::kernels::quest_internal
