// The streaming logits pass: bf16/fp16 keys with the low-rank or mean-only term. Why this
// shape (docs/scoring.md, "Tuning notes"):
// - The pass must read keys at close to HBM speed, and the cp.async-ring kernel did not:
//   per 64-key tile it stalls all 8 warps on two CTA barriers, re-reads the tile from shared
//   memory (4× for the A fragments of K·Wᵀ at group 4), and leaves half the warps idle in
//   its softmax phase. Here every warp is independent: it loads its own 16-key m-tile
//   straight from global memory into registers (16-byte loads, streaming cache hint), keeps
//   the next m-tile's loads in flight while it computes the current one (4 KB per warp at
//   d = 128, 16 warps ≈ 64 KB per SM: Little's law at ~3 TB/s and ~1 µs needs ~24 KB), and
//   never waits for another warp until the end of the kernel.
// - Key bytes go from the load registers into the MMA unchanged: the k index of the
//   m16n8k16 product may be any permutation of the d columns as long as A and B agree, so
//   lane (g, t) loads whole 16-byte chunks t, t + 4, … of rows g and g + 8, and its pairs are
//   the A fragments in load order; the B fragments (W in bf16/fp16) are stored pre-permuted
//   to match, one 8-byte shared load per (n8-tile, k-step) per lane, conflict-free. Each A
//   fragment serves every factor row of every query head of the CTA (no redundant loads).
// - The linear and diagonal terms (μ̄ᵀk/√d + Σ ρ_c k_c²/(2d)) are fp32 SIMT on the exact key
//   values from the same registers; μ̄/√d and ρ/(2d) sit in shared memory as one float4 per
//   (head, pair, t), a broadcast load. Per-lane partials are summed over the 4 lanes of a row.
// - Softmax partials: lane t keeps a running (max, Σexp) of heads t, t + 4 over its rows;
//   merged over the warp and the CTA once, at the end. One partial per CTA and head.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstring>

#include "expected_attention_internal.cuh"

namespace kvtier::kernels::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr uint32_t kMRows = 16;  // keys per warp step: one m16 tile
constexpr size_t kSmemLimit = 220 * 1024;

// Where lane (g, t) finds its key pairs. A row of kD elements is 4·kChunks chunks of
// kChunkBytes (16 B, or 8 B for 32-byte rows); lane t loads chunks t + 4q, q < kChunks, of
// rows g and g + 8. Its pair p (p < kD/8) is word p % kChunkPairs of chunk q = p / kChunkPairs;
// pairs 2s and 2s + 1 are the (low, high) k-halves of its A fragment of k-step s.
template <class T, int kD>
struct KeyLayout {
  static constexpr int kRowBytes = kD * static_cast<int>(sizeof(T));
  static constexpr int kChunkBytes = kRowBytes / 4 < 16 ? kRowBytes / 4 : 16;
  static constexpr int kChunkElems = kChunkBytes / static_cast<int>(sizeof(T));
  static constexpr int kChunkPairs = kChunkElems / 2;
  static constexpr int kChunks = kRowBytes / kChunkBytes / 4;  // per lane and row
  static constexpr int kPairs = kD / 8;                        // per lane and row
  static constexpr int kKSteps = kD / 16;
  static_assert(sizeof(T) == 2 && kChunks * kChunkPairs == kPairs && kPairs == 2 * kKSteps);
  // First element (column) of pair p of the lane with t.
  __host__ __device__ static constexpr int Column(int t, int p) {
    return kChunkElems * (t + 4 * (p / kChunkPairs)) + 2 * (p % kChunkPairs);
  }
};

template <class T>
__device__ __forceinline__ uint32_t Pack(float lo, float hi);
template <>
__device__ __forceinline__ uint32_t Pack<__nv_bfloat16>(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}
template <>
__device__ __forceinline__ uint32_t Pack<__half>(float lo, float hi) {
  const __half2 v = __floats2half2_rn(lo, hi);
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

template <class T>
__device__ __forceinline__ float2 Widen(uint32_t u);
template <>
__device__ __forceinline__ float2 Widen<__nv_bfloat16>(uint32_t u) {
  return make_float2(__uint_as_float(u << 16), __uint_as_float(u & 0xffff0000u));  // exact
}
template <>
__device__ __forceinline__ float2 Widen<__half>(uint32_t u) {
  __half2 v;
  memcpy(&v, &u, sizeof(u));
  return __half22float2(v);
}

__device__ __forceinline__ float2 Merge(float2 a, float2 b) {  // (max, Σexp); (-FLT_MAX, 0) is the identity
  const float m = fmaxf(a.x, b.x);
  return make_float2(m, a.y * expf(a.x - m) + b.y * expf(b.x - m));
}

struct StreamParams {
  const void* keys;        // [kv_heads][tokens][d]
  const float* mean;       // [q_heads][d]
  const float* factors;    // [q_heads][rank][d], or null with rank 0
  const float* residual;   // [q_heads][d], or null (mean only)
  float* logits;           // [q_heads][tokens]
  float2* partials;        // [q_heads][gridDim.x]
  uint32_t* best;          // two words zeroed by CTA (0, 0, 0) for the score pass
  uint32_t tokens, sinks, group, heads_per_cta, rank;
};

// Shared memory: B fragments uint2 [heads·rank/8 n-tiles][kKSteps][32 lanes], the linear and
// diagonal coefficients float4 [kMaxHeads][kPairs][4 (t)] (zero past heads_per_cta), the
// end-of-kernel merge float2 [kWarps][kMaxHeads].
template <class T, int kD, int kMaxHeads>
size_t StreamSmemBytes(uint32_t heads, uint32_t rank) {
  using L = KeyLayout<T, kD>;
  return size_t{heads} * rank / 8 * L::kKSteps * 32 * sizeof(uint2) + size_t{kMaxHeads} * L::kPairs * 4 * sizeof(float4) +
         size_t{kWarps} * kMaxHeads * sizeof(float2);
}

// Keys of rows g and g + 8 of m-tile `mt` (zeros past the last token).
template <class T, int kD>
__device__ __forceinline__ void LoadRows(const T* head, uint32_t tokens, uint32_t mt, int g, int t,
                                         uint32_t (&k)[2][KeyLayout<T, kD>::kPairs]) {
  using L = KeyLayout<T, kD>;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const uint32_t tok = mt * kMRows + g + 8 * r;
    const bool ok = tok < tokens;
    const char* row = reinterpret_cast<const char*>(head + size_t{ok ? tok : 0} * kD);
#pragma unroll
    for (int q = 0; q < L::kChunks; ++q) {
      const char* src = row + (t + 4 * q) * L::kChunkBytes;
      if constexpr (L::kChunkBytes == 16) {
        uint4 v = make_uint4(0, 0, 0, 0);
        if (ok) v = __ldcs(reinterpret_cast<const uint4*>(src));
        k[r][4 * q] = v.x;
        k[r][4 * q + 1] = v.y;
        k[r][4 * q + 2] = v.z;
        k[r][4 * q + 3] = v.w;
      } else {
        uint2 v = make_uint2(0, 0);
        if (ok) v = __ldcs(reinterpret_cast<const uint2*>(src));
        k[r][2 * q] = v.x;
        k[r][2 * q + 1] = v.y;
      }
    }
  }
}

// grid (CTAs per KV head, kv_heads, head chunks); 8 independent warps per CTA striding over
// the KV head's m-tiles. kMaxHeads >= heads_per_cta: the register arrays' size.
template <class T, int kD, int kMaxHeads>
__global__ void __launch_bounds__(kThreads, 2) StreamLogitsKernel(StreamParams p) {
  using L = KeyLayout<T, kD>;
  constexpr int kSlots = (kMaxHeads + 3) / 4;  // heads per lane (t, t + 4)
  extern __shared__ __align__(16) unsigned char smem[];
  const uint32_t hc = p.heads_per_cta, rank = p.rank, ntiles = hc * rank / 8;
  auto* bfrag = reinterpret_cast<uint2*>(smem);
  auto* lin = reinterpret_cast<float4*>(bfrag + size_t{ntiles} * L::kKSteps * 32);
  auto* merged = reinterpret_cast<float2*>(lin + size_t{kMaxHeads} * L::kPairs * 4);

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32, g = lane / 4, t = lane % 4;
  const uint32_t kv = blockIdx.y, qh0 = kv * p.group + blockIdx.z * hc;
  const float inv_2d = 1.0f / (2.0f * kD);

  for (uint32_t i = tid; i < ntiles * L::kKSteps * 32; i += kThreads) {
    const uint32_t ln = i % 32, s = (i / 32) % L::kKSteps, j = i / 32 / L::kKSteps;
    const float* w = p.factors + (size_t{qh0} * rank + j * 8 + ln / 4) * kD;
    const int c0 = L::Column(static_cast<int>(ln % 4), static_cast<int>(2 * s));
    const int c1 = L::Column(static_cast<int>(ln % 4), static_cast<int>(2 * s + 1));
    bfrag[i] = make_uint2(Pack<T>(w[c0], w[c0 + 1]), Pack<T>(w[c1], w[c1 + 1]));
  }
  for (uint32_t i = tid; i < kMaxHeads * L::kPairs * 4; i += kThreads) {
    const uint32_t tt = i % 4, pp = (i / 4) % L::kPairs, h = i / 4 / L::kPairs;
    float4 c = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (h < hc) {
      const int col = L::Column(static_cast<int>(tt), static_cast<int>(pp));
      const float* mu = p.mean + size_t{qh0 + h} * kD;
      c.x = mu[col] / sqrtf(static_cast<float>(kD));
      c.y = mu[col + 1] / sqrtf(static_cast<float>(kD));
      if (p.residual != nullptr) {
        c.z = p.residual[size_t{qh0 + h} * kD + col] * inv_2d;
        c.w = p.residual[size_t{qh0 + h} * kD + col + 1] * inv_2d;
      }
    }
    lin[i] = c;
  }
  if (tid < 2 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) p.best[tid] = 0;
  __syncthreads();

  const T* head = static_cast<const T*>(p.keys) + size_t{kv} * p.tokens * kD;
  const uint32_t m_tiles = (p.tokens + kMRows - 1) / kMRows;
  const uint32_t stride = gridDim.x * kWarps;
  float run_m[kSlots], run_s[kSlots];
#pragma unroll
  for (int u = 0; u < kSlots; ++u) {
    run_m[u] = -FLT_MAX;
    run_s[u] = 0.0f;
  }
  uint32_t cur[2][L::kPairs], nxt[2][L::kPairs];
  uint32_t mt = blockIdx.x * kWarps + warp;
  if (mt < m_tiles) LoadRows<T, kD>(head, p.tokens, mt, g, t, cur);
  for (; mt < m_tiles; mt += stride) {  // warp-uniform
    if (mt + stride < m_tiles) LoadRows<T, kD>(head, p.tokens, mt + stride, g, t, nxt);  // in flight during the math

    // Linear and diagonal terms over this lane's pairs, every head (zero coefficients past hc).
    float lg[kMaxHeads][2];
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) lg[h][0] = lg[h][1] = 0.0f;
#pragma unroll
    for (int pp = 0; pp < L::kPairs; ++pp) {
      const float2 k0 = Widen<T>(cur[0][pp]), k1 = Widen<T>(cur[1][pp]);
#pragma unroll
      for (int h = 0; h < kMaxHeads; ++h) {
        const float4 c = lin[(h * L::kPairs + pp) * 4 + t];
        lg[h][0] = fmaf(k0.x, fmaf(c.z, k0.x, c.x), lg[h][0]);
        lg[h][0] = fmaf(k0.y, fmaf(c.w, k0.y, c.y), lg[h][0]);
        lg[h][1] = fmaf(k1.x, fmaf(c.z, k1.x, c.x), lg[h][1]);
        lg[h][1] = fmaf(k1.y, fmaf(c.w, k1.y, c.y), lg[h][1]);
      }
    }
    // Σ_j (w_jᵀk)²/(2d): lane (g, t) holds columns 2t, 2t + 1 of each n8-tile (factor rows)
    // for rows g and g + 8; an n8-tile lies inside one head (rank is a multiple of 8).
    const uint32_t per_head = rank / 8;
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h) {
      if (static_cast<uint32_t>(h) >= hc) continue;  // uniform
      for (uint32_t jj = 0; jj < per_head; ++jj) {
        const uint2* b = bfrag + (size_t{h * per_head + jj} * L::kKSteps) * 32 + lane;
        float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
        for (int s = 0; s < L::kKSteps; ++s) {
          const uint2 bb = b[s * 32];
          const uint32_t a[4] = {cur[0][2 * s], cur[1][2 * s], cur[0][2 * s + 1], cur[1][2 * s + 1]};
          Mma(acc, a, bb.x, bb.y, T{});
        }
        lg[h][0] = fmaf(fmaf(acc[0], acc[0], acc[1] * acc[1]), inv_2d, lg[h][0]);
        lg[h][1] = fmaf(fmaf(acc[2], acc[2], acc[3] * acc[3]), inv_2d, lg[h][1]);
      }
    }
#pragma unroll
    for (int h = 0; h < kMaxHeads; ++h)
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        lg[h][r] += __shfl_xor_sync(0xffffffffu, lg[h][r], 1);
        lg[h][r] += __shfl_xor_sync(0xffffffffu, lg[h][r], 2);
      }

    // Lane t: heads t + 4u. Logits of rows g, g + 8 and the running softmax partial.
    const uint32_t tok0 = mt * kMRows + g, tok1 = tok0 + 8;
    const bool ok0 = tok0 < p.tokens && tok0 >= p.sinks, ok1 = tok1 < p.tokens && tok1 >= p.sinks;
#pragma unroll
    for (int u = 0; u < kSlots; ++u) {
      float v0 = 0.0f, v1 = 0.0f;
#pragma unroll
      for (int h = 4 * u; h < kMaxHeads && h < 4 * u + 4; ++h) {
        if (h - 4 * u == t) {
          v0 = lg[h][0];
          v1 = lg[h][1];
        }
      }
      const uint32_t h = 4 * u + t;
      if (h < hc) {
        float* out = p.logits + size_t{qh0 + h} * p.tokens;
        if (ok0) out[tok0] = v0;
        if (ok1) out[tok1] = v1;
        const float tile_m = fmaxf(ok0 ? v0 : -FLT_MAX, ok1 ? v1 : -FLT_MAX);
        if (ok0 || ok1) {
          const float m = fmaxf(run_m[u], tile_m);
          run_s[u] = run_s[u] * expf(run_m[u] - m) + (ok0 ? expf(v0 - m) : 0.0f) + (ok1 ? expf(v1 - m) : 0.0f);
          run_m[u] = m;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r)
#pragma unroll
      for (int pp = 0; pp < L::kPairs; ++pp) cur[r][pp] = nxt[r][pp];
  }

  // (max, Σexp) per head: over the 8 lanes of equal t, then over the warps.
#pragma unroll
  for (int u = 0; u < kSlots; ++u) {
    float2 v = make_float2(run_m[u], run_s[u]);
#pragma unroll
    for (int off = 4; off < 32; off *= 2) {
      v = Merge(v, make_float2(__shfl_xor_sync(0xffffffffu, v.x, off), __shfl_xor_sync(0xffffffffu, v.y, off)));
    }
    const int h = 4 * u + t;
    if (g == 0 && h < kMaxHeads) merged[warp * kMaxHeads + h] = v;
  }
  __syncthreads();
  if (tid < static_cast<int>(hc)) {
    float2 v = make_float2(-FLT_MAX, 0.0f);
    for (int w = 0; w < kWarps; ++w) v = Merge(v, merged[w * kMaxHeads + tid]);
    p.partials[size_t{qh0 + tid} * gridDim.x + blockIdx.x] = v;
  }
}

// Largest divisor of `group` (<= 8) whose B fragments fit shared memory: more heads per CTA
// = fewer passes over the keys.
template <class T, int kD>
uint32_t StreamHeadsPerCta(uint32_t group, uint32_t rank) {
  for (uint32_t h = std::min<uint32_t>(group, 8); h > 1; --h) {
    if (group % h == 0 && StreamSmemBytes<T, kD, 8>(h, rank) <= kSmemLimit) return h;
  }
  return 1;
}

template <class T, int kD, int kMaxHeads>
cudaError_t LaunchStream(const StreamParams& p, uint32_t kv_heads, uint32_t chunks, uint32_t* partial_count,
                         cudaStream_t stream) {
  auto* kernel = StreamLogitsKernel<T, kD, kMaxHeads>;
  const size_t smem = StreamSmemBytes<T, kD, kMaxHeads>(p.heads_per_cta, p.rank);
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      e != cudaSuccess) {
    return e;
  }
  int device = 0, sms = 0, per_sm = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem); e != cudaSuccess) {
    return e;
  }
  // One wave, every CTA with at least one m-tile per warp; at most Tiles(shape) partials per
  // head (the workspace's room).
  const uint32_t m_tiles = (p.tokens + kMRows - 1) / kMRows;
  const uint32_t resident = static_cast<uint32_t>(std::max(1, sms * std::max(1, per_sm)));
  const uint32_t cap = std::min((m_tiles + kWarps - 1) / kWarps, (p.tokens + kTileKeys - 1) / kTileKeys);
  const dim3 grid(std::clamp<uint32_t>(resident / (kv_heads * chunks), 1, std::max(cap, 1u)), kv_heads, chunks);
  kernel<<<grid, kThreads, smem, stream>>>(p);
  *partial_count = grid.x;
  return cudaGetLastError();
}

template <class T, int kD>
cudaError_t LaunchStreamDim(StreamParams p, uint32_t kv_heads, uint32_t* n, cudaStream_t stream) {
  p.heads_per_cta = StreamHeadsPerCta<T, kD>(p.group, p.rank);
  const uint32_t chunks = p.group / p.heads_per_cta;
  if (p.heads_per_cta == 1) return LaunchStream<T, kD, 1>(p, kv_heads, chunks, n, stream);
  if (p.heads_per_cta == 2) return LaunchStream<T, kD, 2>(p, kv_heads, chunks, n, stream);
  if (p.heads_per_cta <= 4) return LaunchStream<T, kD, 4>(p, kv_heads, chunks, n, stream);
  return LaunchStream<T, kD, 8>(p, kv_heads, chunks, n, stream);
}

template <class T>
cudaError_t LaunchStreamType(const StreamParams& p, uint32_t head_dim, uint32_t kv_heads, uint32_t* n,
                             cudaStream_t stream) {
  switch (head_dim) {
    case 16: return LaunchStreamDim<T, 16>(p, kv_heads, n, stream);
    case 32: return LaunchStreamDim<T, 32>(p, kv_heads, n, stream);
    case 64: return LaunchStreamDim<T, 64>(p, kv_heads, n, stream);
    case 128: return LaunchStreamDim<T, 128>(p, kv_heads, n, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

bool UseStreamLogits(const ExpectedAttentionDeviceArgs& a) {
  const bool exact = a.use_covariance && a.covariance_rank == 0;
  return a.logits_pass == LogitsPass::kAuto && !exact && (a.kv_dtype == KvDType::kBf16 || a.kv_dtype == KvDType::kFp16);
}

cudaError_t LaunchStreamLogits(const ExpectedAttentionDeviceArgs& a, float* logits, float2* partials, uint32_t* best,
                               uint32_t* partial_count, cudaStream_t stream) {
  const auto& s = a.shape;
  const uint32_t rank = a.use_covariance ? a.covariance_rank : 0;
  const StreamParams p{.keys = a.keys, .mean = a.rotated_mean, .factors = rank > 0 ? a.cov_factors : nullptr,
                       .residual = rank > 0 ? a.cov_residual : nullptr, .logits = logits, .partials = partials,
                       .best = best, .tokens = s.tokens, .sinks = s.sink_tokens, .group = s.group(),
                       .heads_per_cta = 1, .rank = rank};
  switch (a.kv_dtype) {
    case KvDType::kBf16: return LaunchStreamType<__nv_bfloat16>(p, s.head_dim, s.kv_heads, partial_count, stream);
    case KvDType::kFp16: return LaunchStreamType<__half>(p, s.head_dim, s.kv_heads, partial_count, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvtier::kernels::detail
