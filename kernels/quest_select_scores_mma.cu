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
// order of the K dimension is free: k32 step s takes the slices' 16-byte chunks 2s and
// 2s + 1, read as the A fragment by one ldmatrix.x4 (rows swizzled so its 8 rows hit 8 bank
// groups); a thread's B words (word t of each chunk of its column) lie contiguous, 4 chunks
// per LDS.128, so no register shuffling feeds the mma (round 13c: ~3x fewer instructions
// than round 13's LDS.128 fragments). S = Σ_limb 2^(8·limb) · sum_limb (int64),
// f = float(S) · 2^(E − 22) by two exact power-of-two multiplies (no ldexpf).
//
// Grid (pieces of a row, kv_heads, requests), 128 threads = 4 warps; a tile is 64 slices
// (16 per warp: the mma's M), copied with cp.async into 2 buffers (one tile scored while the
// next loads, as the pipelined kernel does; 3 where a CTA gets 3–4 tiles, round 15). Columns per chunk of 4 heads: n-tile
// 0 = (head, limb 0 | limb 1), n-tile 1 = (head, limb 2 | zero), so after the mma thread
// t = lane % 4 holds head t's three limb sums for slices g and g + 8 (g = lane / 4).
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

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
// Tile buffers: 2 (one loads while one is scored); 3 for CTAs of 3–4 tiles (round 15: two of
// them in flight from the start; more buffers elsewhere leave no room for the top-k CTAs that
// PDL places beside the score CTAs — round 13 — and the scores are the same bits either way).
constexpr int kTcStages = 2;
constexpr int kTcStagesShortCta = 3;
constexpr uint32_t kTcShortCtaMinTiles = 3, kTcShortCtaMaxTiles = 4;
constexpr int kHeadsPerChunk = 4;

// A column (one (head, byte) of the weights) as thread t of a quad reads it: word t of each of
// the slice's 2d/16 chunks, contiguous (one LDS.128 per 4 chunks), padded by 16 bytes so that a
// quarter warp's 8 (column, t) pairs fall in different banks.
template <int kD>
__host__ __device__ constexpr int RowChunks() {
  return 2 * kD / 16;
}
template <int kD>
__host__ __device__ constexpr int QuadStride() {  // bytes per (column, t)
  return RowChunks<kD>() * 4 + 16;
}
template <int kD>
__host__ __device__ constexpr size_t TileBytes() {
  return size_t{kTcTile} * 2 * kD + size_t{kTcTile} * sizeof(float);  // bounds (swizzled), then scales
}
template <int kD>
__host__ __device__ constexpr size_t ChunkBytes() {  // two n-tiles of 8 columns × 4 quad lanes
  return size_t{2} * 8 * 4 * QuadStride<kD>();
}
// Per head: the two factors of 2^(E − 22) (each a normal float; see StageColumns), whether the
// head takes part (a head of the group, its query finite) and whether it makes the row's
// scores NaN (a head of the group with a non-finite query value).
struct HeadScale {
  float m1, m2;
  int valid;
  int nan;
};
// Shared memory of a CTA: the tile buffers, the columns of `chunks` chunks, a HeadScale per head.
template <int kD, int kStages>
size_t TcSmem(uint32_t chunks) {
  return kStages * TileBytes<kD>() + chunks * ChunkBytes<kD>() + chunks * kHeadsPerChunk * sizeof(HeadScale);
}

__device__ __forceinline__ void MmaS8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 × 16-byte matrices from shared memory (lane l: row l % 8 of matrix l / 8): for int8
// they are the m16n8k32 A fragment as it stands (lane: row g, bytes 4t..4t+3 of each).
__device__ __forceinline__ void LoadMatrices(uint32_t (&r)[4], const void* row) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 2^k as a float, for k in [−126, 127] (exact).
__device__ __forceinline__ float Pow2(int k) { return __int_as_float((k + 127) << 23); }

// The 16-byte chunk c of slice s's 2d bounds sits at chunk c ^ (s & 7) of its row: the 8 rows
// an ldmatrix reads at one chunk fall in 8 different bank groups.
__device__ __forceinline__ uint32_t Swizzle(uint32_t slice, uint32_t chunk) { return chunk ^ (slice & 7u); }

// Warp w stages the columns of heads w, w + 4, … (kSum: the single column of P and N) and
// their HeadScale. The weights' rounding and the scores' read-back multiply by powers of two
// instead of ldexpf, bit for bit the same: w · 2^k (|result| < 2^22, never an overflow) is one
// correctly rounded multiply like ldexpf where 2^k is a normal float (k ≤ 127), and two exact
// ones past that (w < 2^−105 there); float(S) · 2^(E−22): the first factor m1 = 2^max(E−22,
// −126) keeps |float(S)| ≥ 1 normal, so it is exact, and m2 (the rest, ≥ 2^−44) rounds once.
template <int kD, bool kSum>
__device__ void StageColumns(const QuestSelectDeviceArgs& a, int8_t* cols, HeadScale* scales_s, size_t q_base,
                             uint32_t group, uint32_t heads, uint32_t chunks) {
  constexpr int kPerLane = 2 * kD / 32;
  const int lane = static_cast<int>(threadIdx.x % 32), warp = static_cast<int>(threadIdx.x / 32);
  for (uint32_t h = warp; h < chunks * kHeadsPerChunk; h += kTcWarps) {
    // Weight j = lane + 32·i: the min bound of channel j (i < kPerLane / 2) or the max bound
    // of channel j − d, so w[i] and w[i + kPerLane / 2] share channel lane + 32·i.
    float w[kPerLane] = {};
    bool finite = true;
    if (h < heads) {
#pragma unroll
      for (int i = 0; i < kPerLane / 2; ++i) {
        const int ch = lane + 32 * i;
        if constexpr (kSum) {
          float pos = 0.0f, neg = 0.0f;
          for (uint32_t g = 0; g < group; ++g) {
            const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{g} * kD + ch);
            finite = finite && isfinite(x);
            pos += fmaxf(x, 0.0f);
            neg += fminf(x, 0.0f);
          }
          w[i] = neg;
          w[i + kPerLane / 2] = pos;
        } else {
          const float x = LoadQuery(a.queries, a.query_type, q_base + size_t{h} * kD + ch);
          finite = finite && isfinite(x);
          w[i] = fminf(x, 0.0f);
          w[i + kPerLane / 2] = fmaxf(x, 0.0f);
        }
      }
    }
    float peak = 0.0f;
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      finite = finite && isfinite(w[i]);
      peak = fmaxf(peak, fabsf(w[i]));
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) peak = fmaxf(peak, __shfl_xor_sync(0xffffffffu, peak, off));
    finite = __all_sync(0xffffffffu, finite);
    const int e = peak == 0.0f ? 0 : ilogbf(peak) + 1;  // e ∈ [−148, 129]
    const bool take = finite && h < heads;
    if (lane == 0) {
      const int k = e - kQuestFixedPointBits, k1 = max(k, -126);
      scales_s[h] = {Pow2(k1), Pow2(k - k1), take ? 1 : 0, h < heads && !finite ? 1 : 0};
    }
    const int up = kQuestFixedPointBits - e, up1 = min(up, 127);  // up ∈ [−107, 170]
    const float f1 = Pow2(up1), f2 = Pow2(up - up1);
    const uint32_t chunk = h / kHeadsPerChunk, hh = h % kHeadsPerChunk;
    int8_t* tile0 = cols + chunk * ChunkBytes<kD>();
    int8_t* tile1 = tile0 + 8 * 4 * QuadStride<kD>();
#pragma unroll
    for (int i = 0; i < kPerLane; ++i) {
      const int j = lane + 32 * i;
      const int wq = take ? __float2int_rn((w[i] * f1) * f2) : 0;
      const int l0 = static_cast<int8_t>(wq & 0xff);
      const int w1 = (wq - l0) >> 8;
      const int l1 = static_cast<int8_t>(w1 & 0xff);
      const int l2 = (w1 - l1) >> 8;  // |wq| ≤ 2^22: |l2| ≤ 65
      // Byte j: chunk j / 16, quad lane (j % 16) / 4, byte j % 4 of that lane's word.
      const int at = ((j % 16) / 4) * QuadStride<kD>() + (j / 16) * 4 + j % 4;
      tile0[(2 * hh) * 4 * QuadStride<kD>() + at] = static_cast<int8_t>(l0);
      tile0[(2 * hh + 1) * 4 * QuadStride<kD>() + at] = static_cast<int8_t>(l1);
      tile1[(2 * hh) * 4 * QuadStride<kD>() + at] = static_cast<int8_t>(l2);
      tile1[(2 * hh + 1) * 4 * QuadStride<kD>() + at] = 0;
    }
  }
}

template <int kD, bool kSum, int kStages>
__global__ void __launch_bounds__(kTcThreads) QuestScoreTensorCoreKernel(QuestSelectDeviceArgs a,
                                                                            uint32_t tiles_per_cta, uint32_t chunks) {
  constexpr int kRowChunks = RowChunks<kD>();  // 16-byte chunks of a slice's bounds
  constexpr int kSteps = kRowChunks / 2;        // k32 steps
  constexpr size_t kBoundBytes = size_t{kTcTile} * 2 * kD;
  constexpr int kCopies = kTcTile * kRowChunks / kTcThreads;  // 16-byte copies per thread per tile
  extern __shared__ float4 smem4[];
  char* tiles_s = reinterpret_cast<char*>(smem4);
  int8_t* cols = reinterpret_cast<int8_t*>(tiles_s + kStages * TileBytes<kD>());
  HeadScale* scales_s = reinterpret_cast<HeadScale*>(cols + chunks * ChunkBytes<kD>());
  auto wait = [] {
    cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
    cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  };
  // early_metadata: the metadata is not the predecessor's output, so the CTA's place is read
  // and its first tile's copies issued before the wait; only the queries come after it.
  if (!a.early_metadata) wait();
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t b0 = blockIdx.x * tiles_per_cta * kTcTile;
  if (b0 >= n) return;
  const uint32_t my_tiles = min(tiles_per_cta, (n - b0 + kTcTile - 1) / kTcTile);
  const int tid = static_cast<int>(threadIdx.x);
  const size_t slice0 = HeadSlice0(a, r, h, first, n);

  // Copy i of this thread: chunk j = tid + i·threads of the tile, i.e. chunk tid % R of slice
  // tid / R + i·threads / R (R chunks per slice; threads / R is a multiple of 8, so the slice's
  // swizzle is the same for every i): at dst0 + 16·i·threads in every tile.
  static_assert(kTcThreads % (8 * kRowChunks) == 0, "a thread's copies share their slices' swizzle");
  const uint32_t dst0 = (tid / kRowChunks * kRowChunks + Swizzle(tid / kRowChunks, tid % kRowChunks)) * 16;
  auto issue = [&](uint32_t t) {
    if (t < my_tiles) {
      const uint32_t b = b0 + t * kTcTile;
      const uint32_t v = min(static_cast<uint32_t>(kTcTile), n - b);  // nothing past the row is read
      char* buf = tiles_s + (t % kStages) * TileBytes<kD>();
      const int8_t* src = a.bounds + (slice0 + b) * 2 * kD + size_t(tid) * 16;
      const uint32_t count = v * kRowChunks;
#pragma unroll
      for (int i = 0; i < kCopies; ++i) {
        if (v == kTcTile || tid + i * kTcThreads < count) {
          cp_async::Copy16(buf + dst0 + i * kTcThreads * 16, src + i * kTcThreads * 16);
        }
      }
      if (static_cast<uint32_t>(tid) < v) cp_async::Copy4(buf + kBoundBytes + tid * 4, a.scales + slice0 + b + tid);
    }
    cp_async::Commit();
  };
#pragma unroll
  for (int t = 0; t < kStages - 1; ++t) issue(t);  // before the queries: independent round trips
  if (a.early_metadata) wait();

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t heads = kSum ? 1 : group;
  StageColumns<kD, kSum>(a, cols, scales_s, (size_t{r} * a.q_heads + size_t{h} * group) * kD, group, heads, chunks);
  __syncthreads();
  bool nan_row = false;  // a head with a non-finite query makes every score of the row NaN
  for (uint32_t i = 0; i < chunks * kHeadsPerChunk; ++i) nan_row = nan_row || scales_s[i].nan != 0;

  const int lane = tid % 32, warp = tid / 32, g = lane / 4, t4 = lane % 4;
  // ldmatrix rows: lane l gives row l % 8 of matrix l / 8 = (rows 0–7 | 8–15) × (chunk 2k | 2k+1).
  const uint32_t lm_slice = warp * 16 + (lane % 8) + ((lane / 8) & 1) * 8, lm_half = lane / 16;
  const uint32_t s_lo = warp * 16 + g, s_hi = s_lo + 8;  // the two slices whose scores this thread holds
  for (uint32_t t = 0; t < my_tiles; ++t) {
    cp_async::Wait<kStages - 2>();
    __syncthreads();
    issue(t + kStages - 1);
    const char* buf = tiles_s + (t % kStages) * TileBytes<kD>();
    const char* lm_row = buf + lm_slice * 2 * kD;
    float score_lo = -INFINITY, score_hi = -INFINITY;
    for (uint32_t k = 0; k < chunks; ++k) {
      // This thread's B words: word t4 of every chunk of column g, 4 chunks per LDS.128.
      const uint4* col0 = reinterpret_cast<const uint4*>(cols + k * ChunkBytes<kD>() + (g * 4 + t4) * QuadStride<kD>());
      const uint4* col1 = reinterpret_cast<const uint4*>(reinterpret_cast<const int8_t*>(col0) + 8 * 4 * QuadStride<kD>());
      int c0[4] = {0, 0, 0, 0}, c1[4] = {0, 0, 0, 0};
#pragma unroll 2  // fully unrolled, d = 128 held ~99 registers: too many to leave the top-k CTAs room under PDL
      for (int q = 0; q < kSteps / 2; ++q) {  // two k32 steps (chunks 4q .. 4q + 3) per pair of B loads
        const uint4 x0 = col0[q], x1 = col1[q];
        uint32_t am[4];
        LoadMatrices(am, lm_row + Swizzle(lm_slice, 4 * q + lm_half) * 16);
        MmaS8(c0, am, x0.x, x0.y);
        MmaS8(c1, am, x1.x, x1.y);
        LoadMatrices(am, lm_row + Swizzle(lm_slice, 4 * q + 2 + lm_half) * 16);
        MmaS8(c0, am, x0.z, x0.w);
        MmaS8(c1, am, x1.z, x1.w);
      }
      // Thread t4 holds head 4k + t4: limbs 0, 1 in c0[0], c0[1] (slice s_lo) and c0[2], c0[3]
      // (s_hi); limb 2 in c1[0] and c1[2].
      const HeadScale hs = scales_s[k * kHeadsPerChunk + t4];
      const long long s_l = (long long)c1[0] * 65536 + (long long)c0[1] * 256 + c0[0];
      const long long s_h = (long long)c1[2] * 65536 + (long long)c0[3] * 256 + c0[2];
      float f_lo = (__ll2float_rn(s_l) * hs.m1) * hs.m2, f_hi = (__ll2float_rn(s_h) * hs.m1) * hs.m2;
      if (!hs.valid) f_lo = f_hi = -INFINITY;
      f_lo = fmaxf(f_lo, __shfl_xor_sync(0xffffffffu, f_lo, 1));
      f_hi = fmaxf(f_hi, __shfl_xor_sync(0xffffffffu, f_hi, 1));
      f_lo = fmaxf(f_lo, __shfl_xor_sync(0xffffffffu, f_lo, 2));
      f_hi = fmaxf(f_hi, __shfl_xor_sync(0xffffffffu, f_hi, 2));
      score_lo = fmaxf(score_lo, f_lo);
      score_hi = fmaxf(score_hi, f_hi);
    }
    const uint32_t tb = b0 + t * kTcTile;
    const float* scales = reinterpret_cast<const float*>(buf + kBoundBytes);
    if (t4 == 0 && tb + s_lo < n) a.scores[slice0 + tb + s_lo] = nan_row ? NAN : score_lo * scales[s_lo];
    if (t4 == 1 && tb + s_hi < n) a.scores[slice0 + tb + s_hi] = nan_row ? NAN : score_hi * scales[s_hi];
  }
}

uint32_t Chunks(const QuestSelectDeviceArgs& a) {
  const uint32_t heads = a.params.combine == GqaCombine::kSum ? 1 : a.q_heads / a.kv_heads;
  return (heads + kHeadsPerChunk - 1) / kHeadsPerChunk;
}

// One wave of resident CTAs, as the pipelined kernel's default: ⌊resident · SMs / rows⌋
// CTAs per row, each ⌈tiles of the row / that⌉ tiles.
template <int kD, bool kSum, int kStages>
cudaError_t PlanOf(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  auto k = QuestScoreTensorCoreKernel<kD, kSum, kStages>;
  const size_t smem = TcSmem<kD, kStages>(Chunks(a));
  static std::atomic<int> opted_in{0};  // once per instance: the largest shared memory any launch needs
  if (opted_in.load(std::memory_order_relaxed) == 0) {
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                             static_cast<int>(TcSmem<kD, kStages>(kTensorCoreScoreMaxGroup / kHeadsPerChunk)));
        e != cudaSuccess) {
      return e;
    }
    opted_in.store(1, std::memory_order_relaxed);
  }
  static std::atomic<uint64_t> cached{0};
  const int per_sm = CachedResidentCtas(k, kTcThreads, smem, cached);
  const uint64_t tiles_per_row = std::max<uint64_t>(1, (uint64_t{a.max_blocks} + kTcTile - 1) / kTcTile);
  const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(DeviceSms()) * uint64_t(per_sm);
  const uint64_t ctas_per_row = std::min(tiles_per_row, std::max<uint64_t>(1, slots / rows));
  const uint64_t per_cta = (tiles_per_row + ctas_per_row - 1) / ctas_per_row;
  *plan = {.pipelined = false, .tile_slices = kTcTile, .stages = kStages,
           .tiles_per_row = static_cast<uint32_t>(tiles_per_row), .tiles_per_cta = static_cast<uint32_t>(per_cta),
           .ctas_per_row = static_cast<uint32_t>((tiles_per_row + per_cta - 1) / per_cta),
           .ctas_per_sm = static_cast<uint32_t>(per_sm), .smem_bytes = static_cast<uint32_t>(smem),
           .tensor_core = true};
  return cudaSuccess;
}

// The 2-buffer plan, or the 3-buffer one where the 2-buffer plan's CTAs get 3–4 tiles.
template <int kD, bool kSum>
cudaError_t PlanTc(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  if (cudaError_t e = PlanOf<kD, kSum, kTcStages>(a, plan); e != cudaSuccess) return e;
  if (plan->tiles_per_cta < kTcShortCtaMinTiles || plan->tiles_per_cta > kTcShortCtaMaxTiles) return cudaSuccess;
  return PlanOf<kD, kSum, kTcStagesShortCta>(a, plan);
}

template <int kD, bool kSum>
cudaError_t LaunchOf(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  QuestScorePlan p;
  if (cudaError_t e = PlanTc<kD, kSum>(a, &p); e != cudaSuccess) return e;
  const dim3 grid(p.ctas_per_row, a.kv_heads, a.requests);
  auto k = p.stages == kTcStagesShortCta ? QuestScoreTensorCoreKernel<kD, kSum, kTcStagesShortCta>
                                         : QuestScoreTensorCoreKernel<kD, kSum, kTcStages>;
  return LaunchEx(k, grid, dim3(kTcThreads), p.smem_bytes, stream, a.programmatic_dependent_launch, a,
                  p.tiles_per_cta, Chunks(a));
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
  if (a.head_dim == 128) return sum ? PlanTc<128, true>(a, plan) : PlanTc<128, false>(a, plan);
  return sum ? PlanTc<64, true>(a, plan) : PlanTc<64, false>(a, plan);
}

cudaError_t LaunchTensorCoreScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  const bool sum = a.params.combine == GqaCombine::kSum;
  if (a.head_dim == 128) return sum ? LaunchOf<128, true>(a, stream) : LaunchOf<128, false>(a, stream);
  return sum ? LaunchOf<64, true>(a, stream) : LaunchOf<64, false>(a, stream);
}

}  // namespace kvtier::kernels::quest_internal
