// Internal to the Quest score kernels (quest_select_scores.cu: the register-ring kernel, plain
// or fused with the bisection top-k; quest_select_scores_pipelined.cu: the round-8 pipelined
// kernel, its plan and the round-9 shape rules): the CTA shape, the int8 → fp32 conversion and
// the query staging both kernels share (the same operations in the same order, so their scores
// stay bit for bit equal), and what each file exposes to the other. Not part of the public API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>

#include "quest_select.cuh"

namespace kvtier::kernels::quest_internal {

inline constexpr int kScoreThreads = 256;
inline constexpr int kLanesPerSlice = 8;
inline constexpr int kSlicesPerPass = kScoreThreads / kLanesPerSlice;  // 32
inline constexpr int kGroupChunk = 4;  // query heads per set of max accumulators (staged zero-padded)

__device__ __forceinline__ float LoadQuery(const void* q, QuestQueryType t, size_t i) {
  switch (t) {
    case QuestQueryType::kBf16: return __bfloat162float(static_cast<const __nv_bfloat16*>(q)[i]);
    case QuestQueryType::kFp16: return __half2float(static_cast<const __half*>(q)[i]);
    default: return static_cast<const float*>(q)[i];
  }
}

// The kC int8 channels of one lane (16 at d = 128, 8 at d = 64).
template <int kC>
struct Bytes;
template <>
struct Bytes<16> {
  uint4 v;
  __device__ void Load(const int8_t* p) { v = __ldg(reinterpret_cast<const uint4*>(p)); }
  __device__ uint32_t Word(int i) const { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }
};
template <>
struct Bytes<8> {
  uint2 v;
  __device__ void Load(const int8_t* p) { v = __ldg(reinterpret_cast<const uint2*>(p)); }
  __device__ uint32_t Word(int i) const { return i == 0 ? v.x : v.y; }
};

// int8 → fp32, exact, without I2F (a quarter-rate conversion: 16 per SM per clock, the
// score kernel's bottleneck when it did 2·d of them per slice): bias every byte to u = b + 128
// (one XOR per 4 bytes), place u in the mantissa of 2^23 (0x4B0000uu = 8388608 + u, one PRMT),
// subtract 8388736 (exact: both are integers below 2^24).
template <int kC>
__device__ __forceinline__ void ToFloat(const Bytes<kC>& b, float (&f)[kC]) {
#pragma unroll
  for (int w = 0; w < kC / 4; ++w) {
    const uint32_t u = b.Word(w) ^ 0x80808080u;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      f[4 * w + j] = __uint_as_float(__byte_perm(u, 0x4B000000u, 0x7650u + j)) - 8388736.0f;
    }
  }
}

// The CTA's queries staged in shared memory (`staged`), shared by both score kernels (the
// same operations in the same order, so their scores stay bit for bit equal). Sum: per
// channel P_i = Σ_g max(q_gi, 0) at staged[i], N_i = Σ_g min(q_gi, 0) at staged[kD + i].
// Max: per (chunk of kGroupChunk heads, channel) q⁺ and q⁻ as float4 over the chunk's heads
// (zero-padded past the group).
template <int kD, bool kSum>
__device__ __forceinline__ void StageQueries(const QuestSelectDeviceArgs& a, float* staged, int tid, size_t q_base,
                                             uint32_t group, uint32_t chunks) {
  constexpr int kC = kD / kLanesPerSlice;
  if constexpr (kSum) {
    for (int i = tid; i < kD; i += kScoreThreads) {
      float pos = 0.0f, neg = 0.0f;
      for (uint32_t g = 0; g < group; ++g) {
        const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{g} * kD + i);
        pos += fmaxf(x, 0.0f);
        neg += fminf(x, 0.0f);
      }
      staged[i] = pos;
      staged[kD + i] = neg;
    }
  } else {
    for (uint32_t i = tid; i < chunks * kGroupChunk * kD; i += kScoreThreads) {
      const uint32_t g = i / kD, ch = i % kD;
      const float x = g < group ? LoadQuery(a.queries, a.query_type, q_base + i) : 0.0f;
      const bool up = x >= 0.0f;  // NaN goes to q⁻ and propagates as it does in the reference
      // float4 index ((chunk·kC + i)·2 + sign)·8 + lane for channel ch = lane·kC + i: the 8
      // lanes of a slice read 8 consecutive float4 (one wavefront, no bank conflict).
      const size_t at = ((size_t{g / kGroupChunk} * kC + ch % kC) * 2 * kLanesPerSlice + ch / kC) * 4 + g % kGroupChunk;
      staged[at] = up ? x : 0.0f;
      staged[at + kLanesPerSlice * 4] = up ? 0.0f : x;
    }
  }
}

// Dynamic shared memory of the staged queries (either kernel's layout).
inline size_t ScoreSmem(const QuestSelectDeviceArgs& a) {
  const size_t chunks = (a.q_heads / a.kv_heads + kGroupChunk - 1) / kGroupChunk;
  return a.params.combine == GqaCombine::kSum ? 2 * a.head_dim * sizeof(float)
                                              : chunks * kGroupChunk * a.head_dim * 2 * sizeof(float);
}

// The current device's SMs (132 when the query fails: a hint, only speed depends on it).
// Defined in quest_select_scores_pipelined.cu.
int DeviceSms();

// Resident CTAs per SM of `kernel` at `threads` and `smem` dynamic bytes (a hint: only speed
// depends on it; 1 when the query fails), cached in `cache` as smem << 8 | CTAs — one cache per
// kernel instance.
template <class Kernel>
int CachedResidentCtas(Kernel kernel, int threads, size_t smem, std::atomic<uint64_t>& cache) {
  if (const uint64_t v = cache.load(std::memory_order_relaxed); v != 0 && (v >> 8) == smem) {
    return static_cast<int>(v & 0xff);
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, smem) != cudaSuccess || per_sm <= 0) {
    (void)cudaGetLastError();
    per_sm = 1;
  }
  per_sm = std::min(per_sm, 255);
  cache.store((uint64_t{smem} << 8) | static_cast<uint64_t>(per_sm), std::memory_order_relaxed);
  return per_sm;
}

// quest_select_scores_pipelined.cu. PipelinedScoresApply: the separate score launch of `a`
// runs the pipelined kernel (QuestScoreAlgorithm::kPipelined, bounds and scales aligned for
// cp.async). LaunchPipelinedScores: that launch (a.score_shape's rule resolved, or its
// explicit fields).
bool PipelinedScoresApply(const QuestSelectDeviceArgs& a);
cudaError_t LaunchPipelinedScores(const QuestSelectDeviceArgs& a, cudaStream_t stream);

// quest_select_scores_mma.cu. TensorCoreScoresApply: the separate score launch of `a` runs
// the tensor-core kernel (kTensorCore, aligned metadata, a group it stages). Its plan and launch.
bool TensorCoreScoresApply(const QuestSelectDeviceArgs& a);
cudaError_t PlanTensorCoreScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan);
cudaError_t LaunchTensorCoreScores(const QuestSelectDeviceArgs& a, cudaStream_t stream);

}  // namespace kvtier::kernels::quest_internal
