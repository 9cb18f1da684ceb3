// The round-8 pipelined Quest score kernel (QuestScoreAlgorithm::kPipelined, the default of
// the separate score launch), its plan (PlanQuestScores) and the resolution of the round-9
// shape rules (QuestScorePreset) to one of its instances. The register-ring kernel is in
// quest_select_scores.cu (why the shapes: there); shared helpers in
// quest_select_scores_internal.cuh.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>

#include "quest_select.cuh"
#include "quest_select_internal.cuh"
#include "cp_async.cuh"
#include "quest_select_scores_internal.cuh"

namespace kvtier::kernels::quest_internal {
namespace {

// ---- Round 8: the pipelined score kernel (QuestScoreAlgorithm::kPipelined). ----
// Why: the register-ring kernel held 4 passes × 36 B of loads per thread in registers
// (~127 registers, 2 CTAs = 16 warps per SM) and measured 1.2 TB/s at b8/32K — its warps
// stalled, not the memory. Here the loads take no registers: a CTA copies tiles of 64
// slices (bounds, then scales) to shared memory with cp.async, kPipeStages buffers, so 3
// tiles (~50 KB) are in flight per CTA while it scores the 4th, at ≤ 80 registers (3 CTAs
// = 24 warps per SM, ~150 KB in flight per SM). A thread scores 2 slices of a tile (slots
// `slot` and `slot + 32`) with the same lane → channel split as the register-ring kernel
// (lane c: channels c·kC .. c·kC + kC − 1, summed in that order, then the same butterfly), so
// every score is bit for bit the same; one shared load of q⁺/q⁻ (4 heads) feeds both slices.
// Round 9: the slices per thread (kS: tile = 32·kS slices) and the tile buffers (kStages) are
// template parameters so that a sweep can try other shapes (QuestScoreShape). The default
// rule (kRound9Wave) takes kS = 2, kStages = 2 — one tile in flight while one is scored, on
// the same one-wave grid — where a CTA gets ≥ 3 tiles, else round 8's kS = 2, kStages = 4.
template <int kS>
__host__ __device__ constexpr int PipeTile() {
  return kSlicesPerPass * kS;  // 64 slices per tile at kS = 2
}

template <int kD, int kS>
__host__ __device__ constexpr size_t PipeStageBytes() {
  return size_t{PipeTile<kS>()} * 2 * kD + size_t{PipeTile<kS>()} * sizeof(float);  // bounds, then scales
}

// Channel i of a lane's kC int8 bytes (the words already XORed with 0x80808080) as fp32: the
// same exact conversion as ToFloat.
template <int kC>
__device__ __forceinline__ float ChannelOf(const uint32_t (&biased)[kC / 4], int i) {
  return __uint_as_float(__byte_perm(biased[i / 4], 0x4B000000u, 0x7650u + (i % 4))) - 8388736.0f;
}

template <int kC>
__device__ __forceinline__ void LoadBiased(const int8_t* p, uint32_t (&w)[kC / 4]) {
  if constexpr (kC == 16) {
    const uint4 v = *reinterpret_cast<const uint4*>(p);
    w[0] = v.x ^ 0x80808080u;
    w[1] = v.y ^ 0x80808080u;
    w[2] = v.z ^ 0x80808080u;
    w[3] = v.w ^ 0x80808080u;
  } else {
    const uint2 v = *reinterpret_cast<const uint2*>(p);
    w[0] = v.x ^ 0x80808080u;
    w[1] = v.y ^ 0x80808080u;
  }
}

// Grid (pieces of tiles_per_cta tiles of a row, kv_heads, requests), 256 threads, dynamic
// shared memory: kPipeStages tile buffers, then the staged queries (the register-ring
// kernel's layout). One barrier per tile: wait for the tile's copies, barrier (every thread's
// copies landed, every warp done with the buffer scored last), refill that buffer with the
// tile kPipeStages − 1 ahead, score.
// Every instance is bounded for 3 CTAs per SM (≤ 80 registers; ptxas: no spills at 4 slices
// per thread either), so the shared memory of the stages alone sets the occupancy.
template <int kD, bool kSum, int kS, int kStages>
__global__ void __launch_bounds__(kScoreThreads, 3)
    QuestScorePipelinedKernel(QuestSelectDeviceArgs a, uint32_t tiles_per_cta) {
  static_assert(kStages >= 2, "one buffer is scored while the others load");
  constexpr int kC = kD / kLanesPerSlice;
  constexpr int kPipeSlicesPerThread = kS;
  constexpr int kPipeTile = PipeTile<kS>();
  constexpr int kPipeStages = kStages;
  static_assert(kPipeTile <= kScoreThreads, "one thread copies each slice's scale");
  constexpr size_t kBoundBytes = size_t{kPipeTile} * 2 * kD;
  constexpr size_t kStageBytes = PipeStageBytes<kD, kS>();
  extern __shared__ float4 smem4[];
  char* tiles_s = reinterpret_cast<char*>(smem4);
  float4* staged4 = reinterpret_cast<float4*>(tiles_s + kPipeStages * kStageBytes);
  float* staged = reinterpret_cast<float*>(staged4);
  cudaGridDependencySynchronize();            // launched with PDL: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  const uint32_t r = blockIdx.z, h = blockIdx.y;
  const uint32_t first = a.block_offsets[r], n = a.block_offsets[r + 1] - first;
  const uint32_t b0 = blockIdx.x * tiles_per_cta * kPipeTile;
  if (b0 >= n) return;
  const uint32_t my_tiles = min(tiles_per_cta, (n - b0 + kPipeTile - 1) / kPipeTile);
  const int tid = static_cast<int>(threadIdx.x);
  const int c = tid % kLanesPerSlice, slot = tid / kLanesPerSlice;
  const size_t slice0 = HeadSlice0(a, r, h, first, n);  // slice of block 0 of this (request, head)

  // Tile t of this CTA into buffer t % kPipeStages; every thread commits a group per call
  // (empty past the last tile), so the group count stays uniform.
  auto issue = [&](uint32_t t) {
    if (t < my_tiles) {
      const uint32_t b = b0 + t * kPipeTile;
      const uint32_t v = min(static_cast<uint32_t>(kPipeTile), n - b);  // valid slices: nothing past the row is read
      char* buf = tiles_s + (t % kPipeStages) * kStageBytes;
      const int8_t* src = a.bounds + (slice0 + b) * 2 * kD;
      const uint32_t chunks = v * (2 * kD / 16);
#pragma unroll 4
      for (uint32_t j = tid; j < chunks; j += kScoreThreads) cp_async::Copy16(buf + j * 16, src + j * 16);
      if (static_cast<uint32_t>(tid) < v) cp_async::Copy4(buf + kBoundBytes + tid * 4, a.scales + slice0 + b + tid);
    }
    cp_async::Commit();
  };
#pragma unroll
  for (int t = 0; t < kPipeStages - 1; ++t) issue(t);  // before the queries: independent round trips

  const uint32_t group = a.q_heads / a.kv_heads;
  const uint32_t chunks = (group + kGroupChunk - 1) / kGroupChunk;
  const size_t q_base = (size_t{r} * a.q_heads + size_t{h} * group) * kD;
  StageQueries<kD, kSum>(a, staged, tid, q_base, group, chunks);
  __syncthreads();
  float pos[kSum ? kC : 1], neg[kSum ? kC : 1];
  if constexpr (kSum) {
#pragma unroll
    for (int i = 0; i < kC; ++i) {
      pos[i] = staged[c * kC + i];
      neg[i] = staged[kD + c * kC + i];
    }
  }
  // After the butterfly, lane c holds head j = 2·bit2(c) + bit1(c) of the chunk.
  const uint32_t j_mine = ((c >> 2) & 1) * 2 + ((c >> 1) & 1);
  const bool hi4 = (c & 4) != 0, hi2 = (c & 2) != 0;

  for (uint32_t t = 0; t < my_tiles; ++t) {
    cp_async::Wait<kPipeStages - 2>();  // this thread's copies of tile t have landed
    __syncthreads();                     // everyone's; and buffer (t − 1) % kPipeStages is free
    issue(t + kPipeStages - 1);
    const char* buf = tiles_s + (t % kPipeStages) * kStageBytes;
    const uint32_t tb = b0 + t * kPipeTile;
    uint32_t lo[kPipeSlicesPerThread][kC / 4], hi[kPipeSlicesPerThread][kC / 4];
    float sc[kPipeSlicesPerThread], score[kPipeSlicesPerThread];
#pragma unroll
    for (int s = 0; s < kPipeSlicesPerThread; ++s) {
      const int local = slot + s * kSlicesPerPass;
      LoadBiased<kC>(reinterpret_cast<const int8_t*>(buf) + local * 2 * kD + c * kC, lo[s]);
      LoadBiased<kC>(reinterpret_cast<const int8_t*>(buf) + local * 2 * kD + kD + c * kC, hi[s]);
      sc[s] = reinterpret_cast<const float*>(buf + kBoundBytes)[local];
    }
    if constexpr (kSum) {
#pragma unroll
      for (int s = 0; s < kPipeSlicesPerThread; ++s) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          acc = fmaf(ChannelOf<kC>(hi[s], i), pos[i], fmaf(ChannelOf<kC>(lo[s], i), neg[i], acc));
        }
#pragma unroll
        for (int off = kLanesPerSlice / 2; off > 0; off /= 2) acc += __shfl_xor_sync(0xffffffffu, acc, off);
        score[s] = acc;
      }
    } else {
#pragma unroll
      for (int s = 0; s < kPipeSlicesPerThread; ++s) score[s] = -INFINITY;
      for (uint32_t k = 0; k < chunks; ++k) {
        const float4* q = staged4 + size_t{k} * kC * 2 * kLanesPerSlice + c;
        // Opaque per chunk: keeps the compiler from hoisting all 2·kC·2 conversions out of the
        // chunk loop (64 live floats: spills at 80 registers); each is converted where used.
        uint32_t lw[kPipeSlicesPerThread][kC / 4], hw[kPipeSlicesPerThread][kC / 4];
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) {
#pragma unroll
          for (int w = 0; w < kC / 4; ++w) {
            lw[s][w] = lo[s][w];
            hw[s][w] = hi[s][w];
            asm volatile("" : "+r"(lw[s][w]), "+r"(hw[s][w]));
          }
        }
        float acc[kPipeSlicesPerThread][4];
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) acc[s][0] = acc[s][1] = acc[s][2] = acc[s][3] = 0.0f;
#pragma unroll
        for (int i = 0; i < kC; ++i) {
          const float4 qp = q[(2 * i) * kLanesPerSlice], qn = q[(2 * i + 1) * kLanesPerSlice];
#pragma unroll
          for (int s = 0; s < kPipeSlicesPerThread; ++s) {
            const float fh = ChannelOf<kC>(hw[s], i), fl = ChannelOf<kC>(lw[s], i);
            acc[s][0] = fmaf(qp.x, fh, fmaf(qn.x, fl, acc[s][0]));
            acc[s][1] = fmaf(qp.y, fh, fmaf(qn.y, fl, acc[s][1]));
            acc[s][2] = fmaf(qp.z, fh, fmaf(qn.z, fl, acc[s][2]));
            acc[s][3] = fmaf(qp.w, fh, fmaf(qn.w, fl, acc[s][3]));
          }
        }
#pragma unroll
        for (int s = 0; s < kPipeSlicesPerThread; ++s) {
          // The register-ring kernel's butterfly, unchanged (same sums in the same order).
          const float send_a = hi4 ? acc[s][0] : acc[s][2], send_b = hi4 ? acc[s][1] : acc[s][3];
          const float x0 = (hi4 ? acc[s][2] : acc[s][0]) + __shfl_xor_sync(0xffffffffu, send_a, 4);
          const float x1 = (hi4 ? acc[s][3] : acc[s][1]) + __shfl_xor_sync(0xffffffffu, send_b, 4);
          float y = (hi2 ? x1 : x0) + __shfl_xor_sync(0xffffffffu, hi2 ? x0 : x1, 2);
          y += __shfl_xor_sync(0xffffffffu, y, 1);
          if (k * kGroupChunk + j_mine >= group) y = -INFINITY;  // a zero-padded head
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 2));
          y = fmaxf(y, __shfl_xor_sync(0xffffffffu, y, 4));
          score[s] = fmaxf(score[s], y);
        }
      }
    }
#pragma unroll
    for (int s = 0; s < kPipeSlicesPerThread; ++s) {
      const uint32_t b = tb + slot + s * kSlicesPerPass;
      if (c == 0 && b < n) a.scores[slice0 + b] = score[s] * sc[s];  // scale > 0 commutes with max
    }
  }
}

// The plan of the pipelined instance <kD, kSum, kS, kStages> for `a`: pieces of
// `tiles_per_cta` tiles of 32·kS slices; with 0 (round 8's shape) as many per row as one wave
// of resident CTAs allows (b1/32K on an H100: 8 rows × 32 CTAs of 1 tile; b8/32K: 64 rows × 6 CTAs of
// ≤ 6 tiles; b8/128K: 64 × 6 of ≤ 22), else a.score_shape.tiles_per_cta.
template <int kD, bool kSum, int kS, int kStages>
cudaError_t PlanPipelinedOf(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  auto k = QuestScorePipelinedKernel<kD, kSum, kS, kStages>;
  constexpr size_t kTiles = size_t{kStages} * PipeStageBytes<kD, kS>();
  const size_t smem = kTiles + ScoreSmem(a);
  // Once per instance: opt in to the largest shared memory it may be given (its tiles plus
  // the largest staged queries), within what the device allows a CTA.
  static std::atomic<int> opted_in{0};
  int limit = opted_in.load(std::memory_order_relaxed);
  if (limit == 0) {
    int dev = 0, optin = 0;
    if (cudaError_t e = cudaGetDevice(&dev); e != cudaSuccess) return e;
    if (cudaError_t e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev);
        e != cudaSuccess) {
      return e;
    }
    cudaFuncAttributes attr{};  // the dynamic opt-in must leave room for any static shared memory
    if (cudaError_t e = cudaFuncGetAttributes(&attr, k); e != cudaSuccess) return e;
    const size_t room = size_t(optin) > attr.sharedSizeBytes ? size_t(optin) - attr.sharedSizeBytes : 0;
    const size_t most = std::min(kTiles + size_t{kMaxStagedQueryFloats} * 2 * sizeof(float), room);
    if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(most));
        e != cudaSuccess) {
      return e;
    }
    limit = static_cast<int>(most);
    opted_in.store(limit, std::memory_order_relaxed);
  }
  if (smem > size_t(limit)) return cudaErrorInvalidValue;  // these buffers and queries do not fit a CTA
  static std::atomic<uint64_t> cached{0};
  const int per_sm = CachedResidentCtas(k, kScoreThreads, smem, cached);
  const uint64_t tiles_per_row = std::max<uint64_t>(1, (uint64_t{a.max_blocks} + PipeTile<kS>() - 1) / PipeTile<kS>());
  uint64_t per_cta = a.score_shape.tiles_per_cta;
  if (per_cta == 0) {
    const uint64_t rows = uint64_t{a.kv_heads} * a.requests, slots = uint64_t(DeviceSms()) * uint64_t(per_sm);
    const uint64_t ctas_per_row = std::max<uint64_t>(1, slots / rows);
    per_cta = std::max<uint64_t>(1, (tiles_per_row + ctas_per_row - 1) / ctas_per_row);
  }
  per_cta = std::min(per_cta, tiles_per_row);  // more than a row's tiles: one CTA per row
  *plan = {.pipelined = true, .tile_slices = static_cast<uint32_t>(PipeTile<kS>()),
           .stages = static_cast<uint32_t>(kStages), .tiles_per_row = static_cast<uint32_t>(tiles_per_row),
           .tiles_per_cta = static_cast<uint32_t>(per_cta),
           .ctas_per_row = static_cast<uint32_t>((tiles_per_row + per_cta - 1) / per_cta),
           .ctas_per_sm = static_cast<uint32_t>(per_sm), .smem_bytes = static_cast<uint32_t>(smem)};
  return cudaSuccess;
}

template <int kD, bool kSum, int kS, int kStages>
cudaError_t LaunchPipelinedScoresOf(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  QuestScorePlan p;
  if (cudaError_t e = PlanPipelinedOf<kD, kSum, kS, kStages>(a, &p); e != cudaSuccess) return e;
  const dim3 grid(p.ctas_per_row, a.kv_heads, a.requests);
  return LaunchEx(QuestScorePipelinedKernel<kD, kSum, kS, kStages>, grid, dim3(kScoreThreads), p.smem_bytes, stream,
                  a.programmatic_dependent_launch, a, p.tiles_per_cta);
}

// Calls f.template operator()<kS, kStages>() for the instance a.score_shape names (d = 128:
// every shape QuestScoreShapeError accepts; d = 64: round 8's only, what every rule gives there).
template <int kD, class F>
cudaError_t WithPipelinedInstance(const QuestSelectDeviceArgs& a, F&& f) {
  const uint32_t sp = a.score_shape.slices_per_thread == 0 ? kQuestScoreRound8SlicesPerThread
                                                           : a.score_shape.slices_per_thread;
  const uint32_t st = a.score_shape.stages == 0 ? kQuestScoreRound8Stages : a.score_shape.stages;
  if constexpr (kD == 128) {
    switch (sp * 16 + st) {
      case 2 * 16 + 2: return f.template operator()<2, 2>();
      case 2 * 16 + 3: return f.template operator()<2, 3>();
      case 2 * 16 + 4: return f.template operator()<2, 4>();
      case 2 * 16 + 6: return f.template operator()<2, 6>();
      case 4 * 16 + 2: return f.template operator()<4, 2>();
      case 4 * 16 + 3: return f.template operator()<4, 3>();
      case 4 * 16 + 4: return f.template operator()<4, 4>();
      case 4 * 16 + 6: return f.template operator()<4, 6>();
      default: return cudaErrorInvalidValue;
    }
  } else {
    if (sp != kQuestScoreRound8SlicesPerThread || st != kQuestScoreRound8Stages) return cudaErrorInvalidValue;
    return f.template operator()<2, 4>();
  }
}

// `a` with a.score_shape's rule resolved to the shape it gives this launch
// (QuestScoreShapeOfPreset; the occupancy of the 2-buffer, 2-slice instance at this launch's
// shared memory): explicit fields, or kQuestScoreRound8Shape. With explicit fields, `a` itself.
template <int kD, bool kSum>
cudaError_t ResolvePreset(const QuestSelectDeviceArgs& a, QuestSelectDeviceArgs* resolved) {
  *resolved = a;
  if (HasExplicitFields(a.score_shape)) return cudaSuccess;
  resolved->score_shape = kQuestScoreRound8Shape;
  if (a.score_shape.preset == QuestScorePreset::kRound8) return cudaSuccess;
  if constexpr (kD == 128) {
    QuestSelectDeviceArgs probe = a;
    probe.score_shape = {.stages = 2, .slices_per_thread = 2};
    QuestScorePlan p;
    if (cudaError_t e = PlanPipelinedOf<kD, kSum, 2, 2>(probe, &p); e != cudaSuccess) return e;
    resolved->score_shape = QuestScoreShapeOfPreset(a.score_shape.preset, a.requests * a.kv_heads, a.max_blocks, kD,
                                                    static_cast<uint32_t>(DeviceSms()), p.ctas_per_sm);
  }
  return cudaSuccess;
}

template <int kD, bool kSum>
cudaError_t PlanPipelined(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  QuestSelectDeviceArgs r;
  if (cudaError_t e = ResolvePreset<kD, kSum>(a, &r); e != cudaSuccess) return e;
  const cudaError_t e = WithPipelinedInstance<kD>(
      r, [&]<int kS, int kStages>() { return PlanPipelinedOf<kD, kSum, kS, kStages>(r, plan); });
  // A round-9 rule that applied (resolved to explicit fields); else plan->preset stays kRound8.
  if (e == cudaSuccess && !HasExplicitFields(a.score_shape) && HasExplicitFields(r.score_shape)) {
    plan->preset = a.score_shape.preset;
  }
  return e;
}

template <int kD, bool kSum>
cudaError_t LaunchPipelined(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  QuestSelectDeviceArgs r;
  if (cudaError_t e = ResolvePreset<kD, kSum>(a, &r); e != cudaSuccess) return e;
  return WithPipelinedInstance<kD>(
      r, [&]<int kS, int kStages>() { return LaunchPipelinedScoresOf<kD, kSum, kS, kStages>(r, stream); });
}

}  // namespace

int DeviceSms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return sms;
}

bool PipelinedScoresApply(const QuestSelectDeviceArgs& a) {
  return a.score_algorithm == QuestScoreAlgorithm::kPipelined && reinterpret_cast<uintptr_t>(a.bounds) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.scales) % 4 == 0;
}

cudaError_t LaunchPipelinedScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  const bool sum = a.params.combine == GqaCombine::kSum;
  if (a.head_dim == 128) return sum ? LaunchPipelined<128, true>(a, stream) : LaunchPipelined<128, false>(a, stream);
  return sum ? LaunchPipelined<64, true>(a, stream) : LaunchPipelined<64, false>(a, stream);
}

cudaError_t PlanScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  if (TensorCoreScoresApply(a)) return PlanTensorCoreScores(a, plan);
  if (!PipelinedScoresApply(a)) {
    if (HasExplicitFields(a.score_shape)) return cudaErrorInvalidValue;
    *plan = {};  // the register-ring kernel (a rule alone, the default included, falls back to it)
    return cudaSuccess;
  }
  const bool sum = a.params.combine == GqaCombine::kSum;
  if (a.head_dim == 128) return sum ? PlanPipelined<128, true>(a, plan) : PlanPipelined<128, false>(a, plan);
  return sum ? PlanPipelined<64, true>(a, plan) : PlanPipelined<64, false>(a, plan);
}

}  // namespace kvtier::kernels::quest_internal
