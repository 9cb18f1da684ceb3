// Why the shapes: the score pass reads 2·d + 4 bytes per slice and does ~4 flops per byte,
// so like attention it is a streaming read, spread over one wave of CTAs that loop over their
// passes with loads in flight (a batch of one 32K-token sequence is 32 × 8 CTAs of 2 passes).
// This file: the register-ring score kernel (round 4), plain or fused with the bisection
// top-k, and its launch; the round-8 pipelined kernel, its plan and the round-9 shape rules
// are in quest_select_scores_pipelined.cu (shared helpers: quest_select_scores_internal.cuh).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "quest_select.cuh"
#include "quest_select_bisection_internal.cuh"
#include "quest_select_internal.cuh"
#include "quest_select_scores_internal.cuh"

namespace kvtier::kernels::quest_internal {
namespace {

constexpr int kStages = 4;  // passes whose loads are in flight per thread

constexpr size_t kSmemLimit = 48 * 1024 - sizeof(TopKShared) - 64;  // dynamic bytes of a fused score CTA

// kFused: the last CTA of a row (request, KV head) to finish its scores (a counter per row,
// the threadFenceReduction pattern) runs the row's top-k with its 256 threads, the keys
// staged in the same dynamic shared memory that held the queries (`cap` keys).
//
// A CTA scores `passes` passes of 32 blocks of one row; each thread keeps kStages passes of
// loads in flight (a ring of registers: a pass's bytes are converted, then the same registers
// are refilled with the pass kStages ahead before the math), so loads overlap the math of the
// CTA itself instead of relying on other CTAs. The first loads are issued before the queries
// are staged (independent round trips).
// Sum: per channel P_i = Σ_g max(q_gi, 0), N_i = Σ_g min(q_gi, 0) in registers, one fused
// dot per slice. Max: staged per (chunk of 4 heads, channel) as float4 q⁺ and float4 q⁻
// (zero-padded heads; laid out so a slice's 8 lanes read consecutive float4), so one
// channel's int8 → fp32 conversion serves every head and each (head, channel) costs 2 FFMA
// (no compare/select: the sign split is done once per CTA); the 4 heads' 8-lane sums are
// reduced by a transposing butterfly (4 shuffles, not 12), then maxed over the chunk (2 more). Every bound is summed on the int8 values in fp32 and
// scaled once at the end (scale > 0 commutes with max).
template <int kD, bool kSum, bool kFused>
__global__ void __launch_bounds__(kScoreThreads) QuestScoreKernel(QuestSelectDeviceArgs a, uint32_t cap,
                                                                  uint32_t passes) {
  constexpr int kC = kD / kLanesPerSlice;
  extern __shared__ float4 staged4[];  // sum: P [kD] then N [kD] (floats); max: [chunk][kC][q⁺, q⁻][lane]
  float* staged = reinterpret_cast<float*>(staged4);
  __shared__ TopKShared sh;
  __shared__ bool last_s;
  cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t tile_blocks = passes * kSlicesPerPass;
  const uint32_t b0 = blockIdx.x * tile_blocks;
  if (b0 >= n) {
    if constexpr (kFused) {
      if (n == 0 && blockIdx.x == 0) TopKRow<kScoreThreads>(a, r * a.kv_heads + h, reinterpret_cast<uint32_t*>(staged), 0, sh);
    }
    return;
  }
  const uint32_t my_passes = min(passes, (n - b0 + kSlicesPerPass - 1) / kSlicesPerPass);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % kLanesPerSlice, slot = tid / kLanesPerSlice;
  const size_t slice0 = HeadSlice0(a, r, h, first, n);  // slice of block 0 of this (request, head)
  Bytes<kC> lo[kStages] = {}, hi[kStages] = {};
  float scale[kStages] = {};
  auto load = [&](int s, uint32_t p) {
    const uint32_t b = b0 + p * kSlicesPerPass + slot;
    if (p < my_passes && b < n) {
      const int8_t* m = a.bounds + (slice0 + b) * 2 * kD + c * kC;
      lo[s].Load(m);
      hi[s].Load(m + kD);
      scale[s] = __ldg(&a.scales[slice0 + b]);
    }
  };
#pragma unroll
  for (int s = 0; s < kStages; ++s) load(s, s);

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t chunks = (group + kGroupChunk - 1) / kGroupChunk;
  const size_t q_base = (size_t{r} * a.q_heads + size_t{h} * group) * kD;
  StageQueries<kD, kSum>(a, staged, tid, q_base, group, chunks);
  __syncthreads();

  float pos[kC], neg[kC];
  if constexpr (kSum) {
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      pos[i] = staged[c * kC + i];
      neg[i] = staged[kD + c * kC + i];
    }
  }
  for (uint32_t p0 = 0; p0 < my_passes; p0 += kStages) {
#pragma unroll
    for (int s = 0; s < kStages; ++s) {
      const uint32_t p = p0 + s;
      if (p >= my_passes) break;  // uniform over the CTA
      const uint32_t b = b0 + p * kSlicesPerPass + slot;
      const bool valid = b < n;
      float fl[kC], fh[kC];
      ToFloat(lo[s], fl);
      ToFloat(hi[s], fh);
      const float sc = scale[s];
      load(s, p + kStages);  // refill this stage: its bytes are consumed
      float score;
      if constexpr (kSum) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) acc = fmaf(fh[i], pos[i], fmaf(fl[i], neg[i], acc));
#pragma unroll
        for (int off = kLanesPerSlice / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        score = acc;
      } else {
        score = -INFINITY;
        // After the butterfly, lane c holds head j = 2·bit2(c) + bit1(c) of the chunk.
        const uint32_t j_mine = ((c >> 2) & 1) * 2 + ((c >> 1) & 1);
        for (uint32_t k = 0; k < chunks; ++k) {
          const float4* q = staged4 + size_t{k} * kC * 2 * kLanesPerSlice + c;
          float acc0 = 0.0f, acc1 = 0.0f, acc2 = 0.0f, acc3 = 0.0f;
#pragma unroll
          for (int i = 0; i < kC; ++i) {
            const float4 qp = q[(2 * i) * kLanesPerSlice], qn = q[(2 * i + 1) * kLanesPerSlice];
            acc0 = fmaf(qp.x, fh[i], fmaf(qn.x, fl[i], acc0));
            acc1 = fmaf(qp.y, fh[i], fmaf(qn.y, fl[i], acc1));
            acc2 = fmaf(qp.z, fh[i], fmaf(qn.z, fl[i], acc2));
            acc3 = fmaf(qp.w, fh[i], fmaf(qn.w, fl[i], acc3));
          }
          // Butterfly over the 8 lanes of the slice: xor 4 halves the heads held (keep 0,1 or
          // 2,3), xor 2 halves again, xor 1 finishes the sum.
          const bool hi4 = (c & 4) != 0, hi2 = (c & 2) != 0;
          const float send_a = hi4 ? acc0 : acc2, send_b = hi4 ? acc1 : acc3;
          float x0 = (hi4 ? acc2 : acc0) + __shfl_xor_sync(0xffffffffu, send_a, 4);
          float x1 = (hi4 ? acc3 : acc1) + __shfl_xor_sync(0xffffffffu, send_b, 4);
          float y = (hi2 ? x1 : x0) + __shfl_xor_sync(0xffffffffu, hi2 ? x0 : x1, 2);
          y += __shfl_xor_sync(0xffffffffu, y, 1);
          if (k * kGroupChunk + j_mine >= group) y = -INFINITY;  // a zero-padded head
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 2));
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 4));
          score = fmaxf(score, y);
        }
      }
      if (c == 0 && valid) a.scores[slice0 + b] = score * sc;  // scale > 0 commutes with max
    }
  }
  if constexpr (kFused) {
    const uint32_t row = r * a.kv_heads + h, tiles = (n + tile_blocks - 1) / tile_blocks;
    __threadfence();
    __syncthreads();  // also: `staged` is free for the keys
    if (tid == 0) last_s = atomicAdd(&a.row_counters[row], 1u) == tiles - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    TopKRow<kScoreThreads>(a, row, reinterpret_cast<uint32_t*>(staged), cap, sh);
    if (tid == 0) a.row_counters[row] = 0;  // ready for the next launch (stream order)
  }
}

}  // namespace

bool CanFuse(const QuestSelectDeviceArgs& a) { return a.row_counters != nullptr && ScoreSmem(a) <= kSmemLimit; }

namespace {

// Passes (of 32 blocks) per score CTA so that the grid is one wave of the resident CTAs
// (2 per SM at d = 128: ~120–128 registers): at b1/32K 2 passes per CTA (256 CTAs, latency),
// at b8/128K 64 (4 CTAs per row, a streaming loop with kStages passes in flight).
template <int kD, bool kSum, bool kFused>
uint32_t PassesPerCta(const QuestSelectDeviceArgs& a, size_t smem) {
  static std::atomic<int> resident{0};  // CTAs per SM of this instantiation (a hint: only speed depends on it)
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    sms = 132;
  }
  int per_sm = resident.load(std::memory_order_relaxed);
  if (per_sm == 0) {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, QuestScoreKernel<kD, kSum, kFused>, kScoreThreads,
                                                      smem) != cudaSuccess ||
        per_sm <= 0) {
      per_sm = 2;
    }
    resident.store(per_sm, std::memory_order_relaxed);
  }
  const uint64_t per_row = (uint64_t{a.max_blocks} + kSlicesPerPass - 1) / kSlicesPerPass;
  // One wave: split each row into as many tiles as the resident slots allow (a row in one
  // CTA when rows outnumber them), then the passes per tile.
  const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(sms) * uint64_t(per_sm);
  const uint64_t tiles = std::max<uint64_t>(1, slots / rows);
  const uint64_t ppc = std::clamp<uint64_t>((per_row + tiles - 1) / tiles, 1, per_row);
  return static_cast<uint32_t>(ppc);
}

template <int kD, bool kSum, bool kFused>
cudaError_t LaunchScoresOf(const QuestSelectDeviceArgs& a, cudaStream_t stream, size_t smem, uint32_t cap) {
  auto k = QuestScoreKernel<kD, kSum, kFused>;
  if (smem > 48 * 1024) {  // a large max group (≤ 12288 query floats, ≤ ~99 KiB split in q⁺/q⁻)
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
        e != cudaSuccess) {
      return e;
    }
  }
  const uint32_t passes = PassesPerCta<kD, kSum, kFused>(a, smem);
  const uint32_t tile_blocks = passes * kSlicesPerPass;
  const dim3 grid((a.max_blocks + tile_blocks - 1) / tile_blocks, a.kv_heads, a.requests);
  return LaunchEx(k, grid, dim3(kScoreThreads), smem, stream, a.programmatic_dependent_launch, a, cap, passes);
}

template <int kD>
cudaError_t LaunchScores(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused) {
  if (!fused && TensorCoreScoresApply(a)) {
    return LaunchTensorCoreScores(a, stream);
  }
  if (!fused && PipelinedScoresApply(a)) {
    return LaunchPipelinedScores(a, stream);
  }
  // Explicit fields only the pipelined kernel has (a rule alone, the default included, falls
  // back to this kernel).
  if (HasExplicitFields(a.score_shape)) return cudaErrorInvalidValue;
  size_t smem = ScoreSmem(a);
  uint32_t cap = 0;
  if (fused) {
    cap = static_cast<uint32_t>(std::min<size_t>(std::min(a.max_blocks, kTopKStageKeys), kSmemLimit / 4));
    smem = std::max(smem, size_t{cap} * 4);
  }
  if (a.params.combine == GqaCombine::kSum) {
    return fused ? LaunchScoresOf<kD, true, true>(a, stream, smem, cap)
                 : LaunchScoresOf<kD, true, false>(a, stream, smem, cap);
  }
  return fused ? LaunchScoresOf<kD, false, true>(a, stream, smem, cap)
               : LaunchScoresOf<kD, false, false>(a, stream, smem, cap);
}

}  // namespace

cudaError_t LaunchScoresAny(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused) {
  return a.head_dim == 128 ? LaunchScores<128>(a, stream, fused) : LaunchScores<64>(a, stream, fused);
}

}  // namespace kvtier::kernels::quest_internal
