// The tensor-core Quest score kernel (QuestScoreAlgorithm::kTensorCore, ninth session).
//
// Why: the fp32 score kernels spend 4 FFMA and 2 conversion instructions per int8 bound in
// the default max combine and are issue-bound (b8/32K on an H100: 21 µs for 34 MB, 2.64
// instructions per cycle; docs/sparse.md, round 13). The bound of a head is a dot product of
// 2d int8 bounds with 2d weights (q⁻ against the min bounds, q⁺ against the max bounds), so a
// group's bounds over a tile of slices are one small integer GEMM: int8 mma.sync (m16n8k32,
// int32 accumulation) runs it with one instruction per 16 slices × 8 columns × 32 bounds,
// the bounds straight from shared memory, no conversion.
//
// The weights are the fixed-point form of kernels/reference/quest_select.h
// (QuestScoresFixedPoint, bit for bit): per head, W = rint(w · 2^(22 − E)) on the head's own
// power-of-two grid, split into three signed bytes W = l2·2^16 + l1·2^8 + l0 (each in
// [−128, 127]); every column of the GEMM is one (head, limb). Integer sums are exact, so the
// order of the K dimension is free: a thread's bounds are 16 consecutive bytes of a slice
// (one conflict-free shared load, rows swizzled by parity), and its weights the same bytes
// of its column. S = Σ_limb 2^(8·limb) · sum_limb (int64), f = float(S) · 2^(E − 22).
//
// Grid (pieces of a row, kv_heads, requests), 128 threads = 4 warps; a tile is 64 slices
// (16 per warp: the mma's M), copied with cp.async into 2 buffers (one tile scored while the
// next loads, as the pipelined kernel does). Columns per chunk of 4 heads: n-tile
// 0 = (head, limb 0 | limb 1), n-tile 1 = (head, limb 2 | zero), so after the mma thread
// t = lane % 4 holds head t's three limb sums for slices g and g + 8 (g = lane / 4).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <climits>

#include "cp_async.cuh"
#include "quest_select.cuh"
#include "quest_select_internal.cuh"
#include "quest_select_scores_internal.cuh"
#include "reference/quest_select.h"

namespace kvtier::kernels::quest_internal {
namespace {

// Round 13's A/B on an H100 (docs/sparse.md): 4 warps (tiles of 64 slices) with 2 buffers
// against 8 warps (128) and 2–4 buffers — the step 0.99–1.09x the fp32 kernel's where 8 warps
// with 3 buffers gave 0.94–1.08x; small CTAs leave shared memory for the top-k CTAs that PDL
// places behind them.
constexpr int kTcWarps = 4;
constexpr int kTcThreads = 32 * kTcWarps;
constexpr int kTcTile = 16 * kTcWarps;  // slices per tile: one m16 tile per warp
constexpr int kTcStages = 2;            // tile buffers: one loads while one is scored
constexpr int kHeadsPerChunk = 4;
constexpr int kColumnPad = 64;  // bytes after each column: two columns of a quarter warp fall in different banks

template <int kD>
__host__ __device__ constexpr size_t TileBytes() {
  return size_t{kTcTile} * 2 * kD + size_t{kTcTile} * sizeof(float);  // bounds (swizzled), then scales
}
template <int kD>
__host__ __device__ constexpr int ColumnStride() {
  return 2 * kD + kColumnPad;
}
template <int kD>
__host__ __device__ constexpr size_t ChunkBytes() {  // two n-tiles of 8 columns
  return size_t{2} * 8 * ColumnStride<kD>();
}
// Shared memory of a CTA: the tile buffers, the columns of `chunks` chunks, an exponent per head.
template <int kD>
size_t TcSmem(uint32_t chunks) {
  return kTcStages * TileBytes<kD>() + chunks * ChunkBytes<kD>() + chunks * kHeadsPerChunk * sizeof(int);
}

__device__ __forceinline__ void MmaS8(int (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                      uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

// NaN wins (a head with a non-finite query makes the score NaN, as the reference model does).
__device__ __forceinline__ float MaxOrNan(float x, float y) { return (isnan(x) || isnan(y)) ? NAN : fmaxf(x, y); }

// The 16-byte chunk c of slice s's 2d bounds sits at chunk c ^ 4·(s & 1) of its row: a
// quarter warp reads slices 2m and 2m + 1, 4 chunks each, in 8 different bank groups.
__device__ __forceinline__ uint32_t Swizzle(uint32_t slice, uint32_t chunk) { return chunk ^ ((slice & 1u) << 2); }

// Warp w stages the columns of heads w, w + 8, … (kSum: the single column of P and N).
template <int kD, bool kSum>
__device__ void StageColumns(const QuestSelectDeviceArgs& a, int8_t* cols, int* exps, size_t q_base, uint32_t group,
                             uint32_t heads, uint32_t chunks) {
  constexpr int kPerLane = 2 * kD / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  for (uint32_t h = warp; h < chunks * kHeadsPerChunk; h += kTcWarps) {
    float w[kPerLane];
    bool finite = true;
    float peak = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;  // weight j: min bound j (j < d) or max bound j − d
      const int ch = j % kD;
      const bool up = j >= kD;
      float v = 0.0f;
      if (h < heads) {
        if constexpr (kSum) {
          float pos = 0.0f, neg = 0.0f;
          for (uint32_t g = 0; g < group; ++g) {
            const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{g} * kD + ch);
            finite = finite && isfinite(x);
            pos += fmaxf(x, 0.0f);
            neg += fminf(x, 0.0f);
          }
          v = up ? pos : neg;
        } else {
          const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{h} * kD + ch);
          finite = finite && isfinite(x);
          v = up ? fmaxf(x, 0.0f) : fminf(x, 0.0f);
        }
      }
      finite = finite && isfinite(v);
      w[i] = v;
      peak = fmaxf(peak, fabsf(v));
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) peak = fmaxf(peak, __shfl_xor_sync(0xffffffffu, peak, off));
    finite = __all_sync(0xffffffffu, finite);
    const int e = !finite ? kQuestNonFinite : peak == 0.0f ? 0 : ilogbf(peak) + 1;
    if (lane == 0) exps[h] = h < heads ? e : kQuestNonFinite;  // a padding head: skipped (see the epilogue)
    const uint32_t chunk = h / kHeadsPerChunk, hh = h % kHeadsPerChunk;
    int8_t* tile0 = cols + chunk * ChunkBytes<kD>();
    int8_t* tile1 = tile0 + 8 * ColumnStride<kD>();
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      const int wq = finite && h < heads ? __float2int_rn(ldexpf(w[i], kQuestFixedPointBits - e)) : 0;
      const int l0 = static_cast<int8_t>(wq & 0xff);
      const int w1 = (wq - l0) >> 8;
      const int l1 = static_cast<int8_t>(w1 & 0xff);
      const int l2 = (w1 - l1) >> 8;  // |wq| ≤ 2^22: |l2| ≤ 65
      tile0[(2 * hh) * ColumnStride<kD>() + j] = static_cast<int8_t>(l0);
      tile0[(2 * hh + 1) * ColumnStride<kD>() + j] = static_cast<int8_t>(l1);
      tile1[(2 * hh) * ColumnStride<kD>() + j] = static_cast<int8_t>(l2);
      tile1[(2 * hh + 1) * ColumnStride<kD>() + j] = 0;
    }
  }
}

template <int kD, bool kSum>
__global__ void __launch_bounds__(kTcThreads) QuestScoreTensorCoreKernel(QuestSelectDeviceArgs a,
                                                                            uint32_t tiles_per_cta, uint32_t chunks) {
  constexpr int kRowChunks = 2 * kD / 16;  // 16-byte chunks of a slice's bounds
  constexpr size_t kBoundBytes = size_t{kTcTile} * 2 * kD;
  extern __shared__ float4 smem4[];
  char* tiles_s = reinterpret_cast<char*>(smem4);
  int8_t* cols = reinterpret_cast<int8_t*>(tiles_s + kTcStages * TileBytes<kD>());
  int* exps = reinterpret_cast<int*>(cols + chunks * ChunkBytes<kD>());
  cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t b0 = blockIdx.x * tiles_per_cta * kTcTile;
  if (b0 >= n) return;
  const uint32_t my_tiles = min(tiles_per_cta, (n - b0 + kTcTile - 1) / kTcTile);
  const int tid = static_cast<int>(threadIdx.x);
  const size_t slice0 = HeadSlice0(a, r, h, first, n);

  auto issue = [&](uint32_t t) {
    if (t < my_tiles) {
      const uint32_t b = b0 + t * kTcTile;
      const uint32_t v = min(static_cast<uint32_t>(kTcTile), n - b);  // nothing past the row is read
      char* buf = tiles_s + (t % kTcStages) * TileBytes<kD>();
      const int8_t* src = a.bounds + (slice0 + b) * 2 * kD;
      const uint32_t count = v * kRowChunks;
#pragma unroll 4
      for (uint32_t j = tid; j < count; j += kTcThreads) {
        const uint32_t s = j / kRowChunks, c = j % kRowChunks;
        cp_async::Copy16(buf + (s * kRowChunks + Swizzle(s, c)) * 16, src + size_t{j} * 16);
      }
      if (static_cast<uint32_t>(tid) < v) cp_async::Copy4(buf + kBoundBytes + tid * 4, a.scales + slice0 + b + tid);
    }
    cp_async::Commit();
  };
#pragma unroll
  for (int t = 0; t < kTcStages - 1; ++t) issue(t);  // before the queries: independent round trips

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t heads = kSum ? 1 : group;
  StageColumns<kD, kSum>(a, cols, exps, (size_t{r} * a.q_heads + size_t{h} * group) * kD, group, heads, chunks);
  __syncthreads();

  const int lane = tid % 32, warp = tid / 32, g = lane / 4, t4 = lane % 4;
  const uint32_t s_lo = warp * 16 + g, s_hi = s_lo + 8;  // this thread's two slices of the tile
  for (uint32_t t = 0; t < my_tiles; ++t) {
    cp_async::Wait<kTcStages - 2>();
    __syncthreads();
    issue(t + kTcStages - 1);
    const char* buf = tiles_s + (t % kTcStages) * TileBytes<kD>();
    float score_lo = -INFINITY, score_hi = -INFINITY;
    for (uint32_t k = 0; k < chunks; ++k) {
      const int8_t* col0 = cols + k * ChunkBytes<kD>() + g * ColumnStride<kD>();
      const int8_t* col1 = col0 + 8 * ColumnStride<kD>();
      int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
#pragma unroll
      for (int u = 0; u < kRowChunks / 4; ++u) {
        const uint32_t c = t4 + 4 * u;
        const uint4 lo = *reinterpret_cast<const uint4*>(buf + (s_lo * kRowChunks + Swizzle(s_lo, c)) * 16);
        const uint4 hi = *reinterpret_cast<const uint4*>(buf + (s_hi * kRowChunks + Swizzle(s_hi, c)) * 16);
        const uint4 w0 = *reinterpret_cast<const uint4*>(col0 + c * 16);
        const uint4 w1 = *reinterpret_cast<const uint4*>(col1 + c * 16);
        MmaS8(c0, lo.x, hi.x, lo.y, hi.y, w0.x, w0.y);
        MmaS8(c0, lo.z, hi.z, lo.w, hi.w, w0.z, w0.w);
        MmaS8(c1, lo.x, hi.x, lo.y, hi.y, w1.x, w1.y);
        MmaS8(c1, lo.z, hi.z, lo.w, hi.w, w1.z, w1.w);
      }
      // Thread t4 holds head 4k + t4: limbs 0, 1 in c0[0], c0[1] (slice s_lo) and c0[2], c0[3]
      // (s_hi); limb 2 in c1[0] and c1[2].
      const int e = exps[k * kHeadsPerChunk + t4];
      const bool head = k * kHeadsPerChunk + t4 < (kSum ? 1u : group);
      float f_lo = -INFINITY, f_hi = -INFINITY;
      if (head) {
        if (e == kQuestNonFinite) {
          f_lo = f_hi = NAN;
        } else {
          const long long s_l = (long long)c1[0] * 65536 + (long long)c0[1] * 256 + c0[0];
          const long long s_h = (long long)c1[2] * 65536 + (long long)c0[3] * 256 + c0[2];
          f_lo = ldexpf(__ll2float_rn(s_l), e - kQuestFixedPointBits);
          f_hi = ldexpf(__ll2float_rn(s_h), e - kQuestFixedPointBits);
        }
      }
      f_lo = MaxOrNan(f_lo, __shfl_xor_sync(0xffffffffu, f_lo, 1));
      f_hi = MaxOrNan(f_hi, __shfl_xor_sync(0xffffffffu, f_hi, 1));
      f_lo = MaxOrNan(f_lo, __shfl_xor_sync(0xffffffffu, f_lo, 2));
      f_hi = MaxOrNan(f_hi, __shfl_xor_sync(0xffffffffu, f_hi, 2));
      score_lo = MaxOrNan(score_lo, f_lo);
      score_hi = MaxOrNan(score_hi, f_hi);
    }
    const uint32_t tb = b0 + t * kTcTile;
    const float* scales = reinterpret_cast<const float*>(buf + kBoundBytes);
    if (t4 == 0 && tb + s_lo < n) a.scores[slice0 + tb + s_lo] = score_lo * scales[s_lo];
    if (t4 == 1 && tb + s_hi < n) a.scores[slice0 + tb + s_hi] = score_hi * scales[s_hi];
  }
}

int Sms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return sms;
}

uint32_t Chunks(const QuestSelectDeviceArgs& a) {
  const uint32_t heads = a.params.combine == GqaCombine::kSum ? 1 : a.q_heads / a.kv_heads;
  return (heads + kHeadsPerChunk - 1) / kHeadsPerChunk;
}

// One wave of resident CTAs, as the pipelined kernel's default: ⌊resident · SMs / rows⌋
// CTAs per row, each ⌈tiles of the row / that⌉ tiles.
template <int kD, bool kSum>
cudaError_t PlanOf(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  auto k = QuestScoreTensorCoreKernel<kD, kSum>;
  const size_t smem = TcSmem<kD>(Chunks(a));
  static std::atomic<int> opted_in{0};  // once per instance: the largest shared memory any launch needs
  if (opted_in.load(std::memory_order_relaxed) == 0) {
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(TcSmem<kD>(kTensorCoreScoreMaxGroup / kHeadsPerChunk)));
        e != cudaSuccess) {
      return e;
    }
    opted_in.store(1, std::memory_order_relaxed);
  }
  static std::atomic<uint64_t> cached{0};  // smem << 8 | resident CTAs per SM
  int per_sm = 0;
  if (const uint64_t v = cached.load(std::memory_order_relaxed); v != 0 && (v >> 8) == smem) {
    per_sm = static_cast<int>(v & 0xff);
  } else {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kTcThreads, smem) != cudaSuccess || per_sm <= 0) {
      (void)cudaGetLastError();
      per_sm = 1;
    }
    per_sm = std::min(per_sm, 255);
    cached.store((uint64_t{smem} << 8) | static_cast<uint64_t>(per_sm), std::memory_order_relaxed);
  }
  const uint64_t tiles_per_row = std::max<uint64_t>(1, (uint64_t{a.max_blocks} + kTcTile - 1) / kTcTile);
  const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(Sms()) * uint64_t(per_sm);
  const uint64_t ctas_per_row = std::min(tiles_per_row, std::max<uint64_t>(1, slots / rows));
  const uint64_t per_cta = (tiles_per_row + ctas_per_row - 1) / ctas_per_row;
  *plan = {.pipelined = false, .tile_slices = kTcTile, .stages = kTcStages,
           .tiles_per_row = static_cast<uint32_t>(tiles_per_row), .tiles_per_cta = static_cast<uint32_t>(per_cta),
           .ctas_per_row = static_cast<uint32_t>((tiles_per_row + per_cta - 1) / per_cta),
           .ctas_per_sm = static_cast<uint32_t>(per_sm), .smem_bytes = static_cast<uint32_t>(smem),
           .tensor_core = true};
  return cudaSuccess;
}

template <int kD, bool kSum>
cudaError_t LaunchOf(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  QuestScorePlan p;
  if (cudaError_t e = PlanOf<kD, kSum>(a, &p); e != cudaSuccess) return e;
  const dim3 grid(p.ctas_per_row, a.kv_heads, a.requests);
  return LaunchEx(QuestScoreTensorCoreKernel<kD, kSum>, grid, dim3(kTcThreads), p.smem_bytes, stream,
                  a.programmatic_dependent_launch, a, p.tiles_per_cta, Chunks(a));
}

}  // namespace

bool TensorCoreScoresApply(const QuestSelectDeviceArgs& a) {
  const uint32_t group = a.q_heads / a.kv_heads;
  return a.score_algorithm == QuestScoreAlgorithm::kTensorCore && reinterpret_cast<uintptr_t>(a.bounds) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.scales) % 4 == 0 &&
         (a.params.combine == GqaCombine::kSum || group <= kTensorCoreScoreMaxGroup);
}

cudaError_t PlanTensorCoreScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  const bool sum = a.params.combine == GqaCombine::kSum;
  if (a.head_dim == 128) return sum ? PlanOf<128, true>(a, plan) : PlanOf<128, false>(a, plan);
  return sum ? PlanOf<64, true>(a, plan) : PlanOf<64, false>(a, plan);
}

cudaError_t LaunchTensorCoreScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  const bool sum = a.params.combine == GqaCombine::kSum;
  if (a.head_dim == 128) return sum ? LaunchOf<128, true>(a, stream) : LaunchOf<128, false>(a, stream);
  return sum ? LaunchOf<64, true>(a, stream) : LaunchOf<64, false>(a, stream);
}

}  // namespace kvtier::kernels::quest_internal
