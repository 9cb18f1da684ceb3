// Why the shapes: the score pass reads 2·d + 4 bytes per slice and does ~4 flops per byte,
// so like attention it is a streaming read, spread over one wave of CTAs that loop over their
// passes with loads in flight (a batch of one 32K-token sequence is 32 × 8 CTAs of 2 passes).
// This file: the score kernels (the register-ring kernel, plain or fused with the bisection
// top-k, and the round-8 pipelined kernel) and their launches.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>

#include "quest_select.cuh"
#include "quest_select_bisection_internal.cuh"
#include "quest_select_internal.cuh"

namespace kvtier::kernels::quest_internal {
namespace {

constexpr int kScoreThreads = 256;
constexpr int kLanesPerSlice = 8;
constexpr int kSlicesPerPass = kScoreThreads / kLanesPerSlice;  // 32
constexpr int kStages = 4;       // passes whose loads are in flight per thread
constexpr int kGroupChunk = 4;   // query heads per set of max accumulators (staged zero-padded)

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
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;  // slice of block 0 of this (request, head)
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

__device__ __forceinline__ void ScoreCpAsync16(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void ScoreCpAsync4(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void ScoreCpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void ScoreCpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
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
  const size_t slice0 = size_t{first} * a.kv_heads + size_t{h} * n;  // slice of block 0 of this (request, head)

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
      for (uint32_t j = tid; j < chunks; j += kScoreThreads) ScoreCpAsync16(buf + j * 16, src + j * 16);
      if (static_cast<uint32_t>(tid) < v) ScoreCpAsync4(buf + kBoundBytes + tid * 4, a.scales + slice0 + b + tid);
    }
    ScoreCpAsyncCommit();
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
    ScoreCpAsyncWait<kPipeStages - 2>();  // this thread's copies of tile t have landed
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

size_t ScoreSmem(const QuestSelectDeviceArgs& a) {
  const size_t chunks = (a.q_heads / a.kv_heads + kGroupChunk - 1) / kGroupChunk;
  return a.params.combine == GqaCombine::kSum ? 2 * a.head_dim * sizeof(float)
                                              : chunks * kGroupChunk * a.head_dim * 2 * sizeof(float);
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

int DeviceSms() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0) {
    (void)cudaGetLastError();
    sms = 132;
  }
  return sms;
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
  // Resident CTAs per SM for this shared-memory size (a hint: only speed depends on it),
  // cached as smem << 8 | CTAs.
  static std::atomic<uint64_t> cached{0};
  int per_sm = 0;
  if (const uint64_t v = cached.load(std::memory_order_relaxed); v != 0 && (v >> 8) == smem) {
    per_sm = static_cast<int>(v & 0xff);
  } else {
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kScoreThreads, smem) != cudaSuccess || per_sm <= 0) {
      (void)cudaGetLastError();
      per_sm = 1;
    }
    per_sm = std::min(per_sm, 255);
    cached.store((uint64_t{smem} << 8) | static_cast<uint64_t>(per_sm), std::memory_order_relaxed);
  }
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

bool PipelinedScoresApply(const QuestSelectDeviceArgs& a) {
  return a.score_algorithm == QuestScoreAlgorithm::kPipelined && reinterpret_cast<uintptr_t>(a.bounds) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.scales) % 4 == 0;
}

template <int kD>
cudaError_t LaunchScores(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool fused) {
  if (!fused && PipelinedScoresApply(a)) {
    return a.params.combine == GqaCombine::kSum ? LaunchPipelined<kD, true>(a, stream)
                                                : LaunchPipelined<kD, false>(a, stream);
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

cudaError_t PlanScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
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
