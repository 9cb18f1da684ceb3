// The cp.async-ring logits pass on tensor cores: the exact covariance term on bf16/fp16 keys,
// fp32 keys with the low-rank or mean-only term, and any case but fp32-exact under
// LogitsPass::kRing (bf16/fp16 low-rank and mean-only keys stream through
// expected_attention_stream.cu by default). Why this shape:
// - The exact kᵀΣ̄k is 2·d² FLOP per key and query head (4.4 TFLOP for 128K tokens of
//   Llama-3-8B): compute-bound in fp32 SIMT, so K_tile·Σ̄ runs as bf16/fp16 mma.sync with fp32
//   accumulation, and only the row-wise dot with K (and the folded-in μ̄/√d) is SIMT.
// - The low-rank form needs d·r MACs per key and head: K_tile·Wᵀ is a skinny GEMM whose B
//   (group·r rows of W, a few KB) stays in shared memory for the CTA's whole life, so the
//   pass streams keys at close to the copy rate.
// - CTAs are persistent over the tiles of one KV head (grid = one wave): Σ̄ / W is staged once
//   per CTA, the next key tiles are in flight in a cp.async ring (up to 4 slots, 3 tiles =
//   48 KB in flight per CTA for bf16 at d = 128; double buffering left ≤ 32 KB per SM, short
//   of what HBM3 needs) while the current one is computed,
//   and each CTA leaves one softmax partial (max, Σexp) per query head, so no second pass over
//   the logits is needed for the softmax statistics.
// - Without precomputed norms the pass also streams the values for ‖v‖ (twice the key bytes);
//   with ExpectedAttentionDeviceArgs::value_norms it reads only keys. LaunchValueNorms (the
//   once-per-written-block norms) is at the end of this file: it shares the ‖v‖ arithmetic.
// Warp layout: 8 warps as 2 (32-row halves of the 64-key tile) × 4 (column groups); a warp
// owns n8-tiles wn, wn+4, … of the current column range and both 16-row m-tiles of its half.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstring>

#include "cp_async.cuh"
#include "expected_attention_internal.cuh"

namespace kvtier::kernels::detail {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsN = 4;          // column groups; 2 row halves
constexpr int kPad = 8;             // elements of padding per shared row: conflict-free fragment loads
constexpr int kMaxHeadsPerCta = 8;  // one warp per head for the softmax partials
constexpr size_t kSmemLimit = 220 * 1024;
constexpr uint32_t kMinStages = 2;  // double buffering: at most one tile (64·d·sizeof(T) B) in flight
constexpr uint32_t kMaxStages = 4;  // three tiles in flight per CTA (48 KB for bf16, d = 128)

template <class T>
struct MmaOf {
  using type = __nv_bfloat16;  // fp32 and bf16 keys
};
template <>
struct MmaOf<__half> {
  using type = __half;
};

template <class M>
__device__ __forceinline__ M ToMma(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 ToMma<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
template <>
__device__ __forceinline__ __half ToMma<__half>(float x) { return __float2half_rn(x); }

template <class V>
__device__ __forceinline__ uint32_t AsU32(V v) {
  uint32_t u;
  memcpy(&u, &v, sizeof(u));
  return u;
}

// Two consecutive key elements as one packed 16-bit pair (the lower column in the low half).
__device__ __forceinline__ uint32_t PackPair(const float* p) {
  const float2 v = *reinterpret_cast<const float2*>(p);
  return AsU32(__floats2bfloat162_rn(v.x, v.y));
}
__device__ __forceinline__ uint32_t PackPair(const __nv_bfloat16* p) { return *reinterpret_cast<const uint32_t*>(p); }
__device__ __forceinline__ uint32_t PackPair(const __half* p) { return *reinterpret_cast<const uint32_t*>(p); }

// Two consecutive key elements as floats (exact for every key type).
__device__ __forceinline__ float2 LoadPair(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 LoadPair(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 LoadPair(const __half* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

// Two consecutive key elements as stored (fp32: a float2; 16-bit: one packed word), kept in
// registers and widened when used.
template <class T>
struct RawPairOf {
  using type = uint32_t;
};
template <>
struct RawPairOf<float> {
  using type = float2;
};
template <class T>
using RawPair = typename RawPairOf<T>::type;
__device__ __forceinline__ float2 LoadRaw(const float* p) { return LoadPair(p); }
template <class T>
__device__ __forceinline__ uint32_t LoadRaw(const T* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}
__device__ __forceinline__ float2 Unpack(float2 v, const float*) { return v; }
__device__ __forceinline__ float2 Unpack(uint32_t u, const __nv_bfloat16*) {
  __nv_bfloat162 v;
  memcpy(&v, &u, sizeof(u));
  return __bfloat1622float2(v);
}
__device__ __forceinline__ float2 Unpack(uint32_t u, const __half*) {
  __half2 v;
  memcpy(&v, &u, sizeof(u));
  return __half22float2(v);
}

// Sum of squares of the elements in 16 bytes of T.
__device__ __forceinline__ float SumSquares(uint4 raw, const float*) {
  const float* f = reinterpret_cast<const float*>(&raw);
  return f[0] * f[0] + f[1] * f[1] + f[2] * f[2] + f[3] * f[3];
}
template <class T>
__device__ __forceinline__ float SumSquares(uint4 raw, const T*) {
  const T* h = reinterpret_cast<const T*>(&raw);
  float s = 0;
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    const float2 v = LoadPair(h + i);
    s = fmaf(v.x, v.x, fmaf(v.y, v.y, s));
  }
  return s;
}

// wait_group takes an immediate: pending = stages − 2 ∈ {0, 1, 2}.
__device__ __forceinline__ void CpAsyncWaitPending(uint32_t pending) {
  if (pending == 0) {
    cp_async::Wait<0>();
  } else if (pending == 1) {
    cp_async::Wait<1>();
  } else {
    cp_async::Wait<2>();
  }
}

struct Params {
  const void* keys;
  const void* values;
  const float* mean;      // [q_heads][d]
  const float* b_source;  // [q_heads][cols][d]: Σ̄ (exact, cols = d) or W (low-rank, cols = r); null if cols = 0
  const float* residual;  // [q_heads][d] or null
  float* logits;
  float* vnorm;
  float2* partials;  // [q_heads][gridDim.x]
  uint32_t* best;    // two words zeroed by CTA (0, 0, 0) for the score pass
  uint32_t tokens, sinks, group, heads_per_cta, cols, tiles;
  uint32_t stages;  // key-tile buffers, kMinStages .. kMaxStages: stages − 1 tiles in flight per CTA
  bool value_norm;
};

// Shared memory: key tiles [stages][64][d + pad] of T, then B rows [heads·cols][d + pad] of the mma
// type, μ̄/√d and ρ/(2d) [heads][d] floats, and the per-column-group row sums [4][heads][64].
template <class T, int kD>
size_t SmemBytes(uint32_t heads, uint32_t cols, uint32_t stages) {
  using M = typename MmaOf<T>::type;
  constexpr size_t kStride = kD + kPad;
  return size_t{stages} * kTileKeys * kStride * sizeof(T) + size_t{heads} * cols * kStride * sizeof(M) +
         2 * size_t{heads} * kD * sizeof(float) + size_t{kWarpsN} * heads * kTileKeys * sizeof(float);
}

// Row sums of one warp's 2×2 rows (m-tile mi, half hr) reduced over the 4 lanes of a row and
// added by lane t = 0 into its own column group's slot (no other thread writes it).
__device__ __forceinline__ void FlushRows(float (&part)[2][2], float* slot, int row0, int g, int t) {
#pragma unroll
  for (int mi = 0; mi < 2; ++mi)
#pragma unroll
    for (int hr = 0; hr < 2; ++hr) {
      float v = part[mi][hr];
      v += __shfl_xor_sync(0xffffffffu, v, 1);
      v += __shfl_xor_sync(0xffffffffu, v, 2);
      if (t == 0) slot[row0 + mi * 16 + hr * 8 + g] += v;
      part[mi][hr] = 0.0f;
    }
}

template <class T, int kD, bool kExact>
__global__ void __launch_bounds__(kThreads, sizeof(T) == 4 ? 1 : 2) MmaLogitsKernel(Params p) {
  using M = typename MmaOf<T>::type;
  constexpr int kStride = kD + kPad;
  constexpr int kNI = kD >= 32 ? kD / 32 : 1;  // n8-tiles per warp per column range
  constexpr int kRangeTiles = kWarpsN * kNI;   // n8-tiles per column range (kD columns for kD >= 32)
  constexpr int kChunksPerRow = kD * static_cast<int>(sizeof(T)) / 16;
  constexpr int kVPerThread = (static_cast<int>(kTileKeys) * kChunksPerRow + kThreads - 1) / kThreads;

  extern __shared__ __align__(16) unsigned char smem[];
  T* ks = reinterpret_cast<T*>(smem);
  M* bt = reinterpret_cast<M*>(smem + size_t{p.stages} * kTileKeys * kStride * sizeof(T));
  const uint32_t hc = p.heads_per_cta, cols = p.cols, b_rows = hc * cols;
  float* ms = reinterpret_cast<float*>(bt + size_t{b_rows} * kStride);
  float* rs = ms + hc * kD;
  float* qp = rs + hc * kD;  // [kWarpsN][hc][kTileKeys]

  const int tid = static_cast<int>(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int wm = warp / kWarpsN, wn = warp % kWarpsN, g = lane / 4, t = lane % 4;
  const int row0 = wm * 32;  // this warp's rows: row0 + mi*16 + hr*8 + g
  const uint32_t kv = blockIdx.y;
  const uint32_t qh0 = kv * p.group + blockIdx.z * hc;
  const float inv_2d = 1.0f / (2.0f * kD);

  for (uint32_t i = tid; i < b_rows * kD; i += kThreads) {
    bt[(i / kD) * kStride + i % kD] = ToMma<M>(p.b_source[size_t{qh0} * cols * kD + i]);
  }
  for (uint32_t i = tid; i < hc * kD; i += kThreads) {
    ms[i] = p.mean[size_t{qh0} * kD + i] / sqrtf(static_cast<float>(kD));
    rs[i] = p.residual != nullptr ? p.residual[size_t{qh0} * kD + i] * inv_2d : 0.0f;
  }
  if (tid < 2 && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0) p.best[tid] = 0;

  const T* keys = static_cast<const T*>(p.keys);
  const T* values = static_cast<const T*>(p.values);
  const size_t head_row0 = size_t{kv} * p.tokens;  // row of token 0 of this KV head
  auto load_tile = [&](uint32_t tile, int buf) {
    T* dst = ks + buf * kTileKeys * kStride;
    for (int i = tid; i < static_cast<int>(kTileKeys) * kChunksPerRow; i += kThreads) {
      const int r = i / kChunksPerRow, c = i % kChunksPerRow;
      const uint32_t tok = tile * kTileKeys + r;
      const bool ok = tok < p.tokens;
      const T* src = keys + (head_row0 + (ok ? tok : 0)) * kD + c * (16 / sizeof(T));
      cp_async::Copy16OrZero(dst + r * kStride + c * (16 / sizeof(T)), src, ok);
    }
    cp_async::Commit();
  };

  const bool do_vnorm = p.value_norm && blockIdx.z == 0;
  float run_m = -FLT_MAX, run_s = 0.0f;  // softmax partial of head `warp` (warp < hc)
  // cp.async ring of p.stages buffers: tiles it .. it + stages − 2 are in flight while tile `it`
  // is computed. One commit group per tile slot (empty past the end), so before iteration `it`
  // the groups committed are stages − 1 + it and waiting down to stages − 2 pending completes
  // tile `it`. gridDim.x <= tiles: every CTA has a first tile.
  for (uint32_t s = 0; s + 1 < p.stages; ++s) {
    const uint32_t t0 = blockIdx.x + s * gridDim.x;
    if (t0 < p.tiles) {
      load_tile(t0, static_cast<int>(s));
    } else {
      cp_async::Commit();
    }
  }
  uint32_t it = 0;
  for (uint32_t tile = blockIdx.x; tile < p.tiles; tile += gridDim.x, ++it) {
    const int buf = static_cast<int>(it % p.stages);
    uint4 vraw[kVPerThread];
    if (do_vnorm) {  // issued now, consumed after the math: the loads overlap it
#pragma unroll
      for (int v = 0; v < kVPerThread; ++v) {
        const int idx = tid + v * kThreads;
        const uint32_t tok = tile * kTileKeys + idx / kChunksPerRow;
        vraw[v] = make_uint4(0, 0, 0, 0);
        if (idx < static_cast<int>(kTileKeys) * kChunksPerRow && tok < p.tokens) {
          vraw[v] = __ldcs(reinterpret_cast<const uint4*>(values + (head_row0 + tok) * kD) + idx % kChunksPerRow);
        }
      }
    }
    CpAsyncWaitPending(p.stages - 2);
    __syncthreads();  // this tile's keys (and, the first time, B, μ̄, ρ) are visible to all
    {
      // Refill the buffer of tile it − 1: every read of it ended before the trailing
      // __syncthreads of the previous iteration.
      const uint32_t ahead = tile + (p.stages - 1) * gridDim.x;
      if (ahead < p.tiles) {
        load_tile(ahead, static_cast<int>((it + p.stages - 1) % p.stages));
      } else {
        cp_async::Commit();
      }
    }
    const T* kt = ks + buf * kTileKeys * kStride;
    if (t == 0) {
      for (uint32_t h = 0; h < hc; ++h)
#pragma unroll
        for (int r = 0; r < 4; ++r) qp[(wn * hc + h) * kTileKeys + row0 + (r / 2) * 16 + (r % 2) * 8 + g] = 0.0f;
    }
    float part[2][2] = {};

    // C[64 × 8·count] = K_tile · Bt[n-tiles]ᵀ for this warp's n-tiles j = first + wn + 4i.
    auto mma_range = [&](const M* b, uint32_t first, uint32_t end_tile, float (&acc)[2][kNI][4]) {
#pragma unroll
      for (int i = 0; i < kNI; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[0][i][e] = acc[1][i][e] = 0.0f;
#pragma unroll
      for (int k0 = 0; k0 < kD; k0 += 16) {
        uint32_t a[2][4];
#pragma unroll
        for (int mi = 0; mi < 2; ++mi) {
          const T* base = kt + (row0 + mi * 16 + g) * kStride + k0 + 2 * t;
          a[mi][0] = PackPair(base);
          a[mi][1] = PackPair(base + 8 * kStride);
          a[mi][2] = PackPair(base + 8);
          a[mi][3] = PackPair(base + 8 * kStride + 8);
        }
#pragma unroll
        for (int i = 0; i < kNI; ++i) {
          const uint32_t j = first + wn + kWarpsN * i;
          if (j < end_tile) {
            const M* bb = b + (j * 8 + g) * kStride + k0 + 2 * t;
            const uint32_t b0 = *reinterpret_cast<const uint32_t*>(bb);
            const uint32_t b1 = *reinterpret_cast<const uint32_t*>(bb + 8);
            Mma(acc[0][i], a[0], b0, b1, M{});
            Mma(acc[1][i], a[1], b0, b1, M{});
          }
        }
      }
    };

    if constexpr (kExact) {
      // Per head: Σ_c k_c·(P_c/(2d) + μ̄_c/√d) with P = K_tile·Σ̄ — the linear term folded in.
      for (uint32_t h = 0; h < hc; ++h) {
        float acc[2][kNI][4];
        mma_range(bt + size_t{h} * kD * kStride, 0, kD / 8, acc);
#pragma unroll
        for (int i = 0; i < kNI; ++i) {
          const uint32_t j = wn + kWarpsN * i;
          if (j >= kD / 8) continue;
          const int c = static_cast<int>(j) * 8 + 2 * t;
          const float m0 = ms[h * kD + c], m1 = ms[h * kD + c + 1];
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const float2 k = LoadPair(kt + (row0 + mi * 16 + hr * 8 + g) * kStride + c);
              part[mi][hr] += k.x * fmaf(acc[mi][i][2 * hr], inv_2d, m0) + k.y * fmaf(acc[mi][i][2 * hr + 1], inv_2d, m1);
            }
        }
        FlushRows(part, qp + (wn * hc + h) * kTileKeys, row0, g, t);
      }
    } else {
      // Per head: Σ_c k_c·(μ̄_c/√d + ρ_c/(2d)·k_c), fp32, over the same columns as above. The
      // thread's key pairs are read from shared memory once per tile (packed, as stored) and
      // reused by every head: the per-head re-reads were 4× the tile's bytes through the
      // shared-memory pipe at group 4. Same arithmetic, same order, same bits.
      RawPair<T> kr[kNI][2][2];
#pragma unroll
      for (int i = 0; i < kNI; ++i) {
        const int c = static_cast<int>(wn + kWarpsN * i) * 8 + 2 * t;
#pragma unroll
        for (int mi = 0; mi < 2; ++mi)
#pragma unroll
          for (int hr = 0; hr < 2; ++hr) {
            kr[i][mi][hr] = (wn + kWarpsN * i < kD / 8) ? LoadRaw(kt + (row0 + mi * 16 + hr * 8 + g) * kStride + c)
                                                        : RawPair<T>{};
          }
      }
      for (uint32_t h = 0; h < hc; ++h) {
#pragma unroll
        for (int i = 0; i < kNI; ++i) {
          const uint32_t j = wn + kWarpsN * i;
          if (j >= kD / 8) continue;
          const int c = static_cast<int>(j) * 8 + 2 * t;
          const float2 m = *reinterpret_cast<const float2*>(ms + h * kD + c);
          const float2 r = *reinterpret_cast<const float2*>(rs + h * kD + c);
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const float2 k = Unpack(kr[i][mi][hr], static_cast<const T*>(nullptr));
              part[mi][hr] += k.x * fmaf(r.x, k.x, m.x) + k.y * fmaf(r.y, k.y, m.y);
            }
        }
        FlushRows(part, qp + (wn * hc + h) * kTileKeys, row0, g, t);
      }
      // Σ_j (w_jᵀk)²/(2d) over the factor rows of every head of the CTA, kRangeTiles at a time;
      // an n8-tile lies inside one head (r is a multiple of 8).
      const uint32_t ntiles = b_rows / 8;
      for (uint32_t first = 0; first < ntiles; first += kRangeTiles) {
        float acc[2][kNI][4];
        mma_range(bt, first, ntiles, acc);
#pragma unroll
        for (int i = 0; i < kNI; ++i) {
          const uint32_t j = first + wn + kWarpsN * i;
          if (j >= ntiles) continue;  // warp-uniform
#pragma unroll
          for (int mi = 0; mi < 2; ++mi)
#pragma unroll
            for (int hr = 0; hr < 2; ++hr) {
              const float x = acc[mi][i][2 * hr], y = acc[mi][i][2 * hr + 1];
              part[mi][hr] = fmaf(x, x, y * y) * inv_2d;
            }
          FlushRows(part, qp + (wn * hc + j * 8 / cols) * kTileKeys, row0, g, t);
        }
      }
    }

    if (do_vnorm) {
#pragma unroll
      for (int v = 0; v < kVPerThread; ++v) {
        const int idx = tid + v * kThreads;
        float sq = SumSquares(vraw[v], static_cast<const T*>(nullptr));
#pragma unroll
        for (int off = kChunksPerRow / 2; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
        const uint32_t tok = tile * kTileKeys + idx / kChunksPerRow;
        if (idx < static_cast<int>(kTileKeys) * kChunksPerRow && idx % kChunksPerRow == 0 && tok < p.tokens) {
          p.vnorm[head_row0 + tok] = sqrtf(sq);
        }
      }
    }
    __syncthreads();  // row sums complete; every read of this key buffer done

    if (warp < static_cast<int>(hc)) {  // head `warp`: logits of the tile, softmax partial
      const uint32_t qh = qh0 + warp;
      float l[2];
      bool ok[2];
      float tile_m = -FLT_MAX;
#pragma unroll
      for (int rr = 0; rr < 2; ++rr) {
        const int row = lane + 32 * rr;
        const uint32_t tok = tile * kTileKeys + row;
        l[rr] = 0.0f;
#pragma unroll
        for (int c = 0; c < kWarpsN; ++c) l[rr] += qp[(c * hc + warp) * kTileKeys + row];
        ok[rr] = tok < p.tokens && tok >= p.sinks;
        if (ok[rr]) {
          p.logits[size_t{qh} * p.tokens + tok] = l[rr];
          tile_m = fmaxf(tile_m, l[rr]);
        }
      }
      for (int off = 16; off > 0; off /= 2) tile_m = fmaxf(tile_m, __shfl_xor_sync(0xffffffffu, tile_m, off));
      float tile_s = (ok[0] ? expf(l[0] - tile_m) : 0.0f) + (ok[1] ? expf(l[1] - tile_m) : 0.0f);
      for (int off = 16; off > 0; off /= 2) tile_s += __shfl_xor_sync(0xffffffffu, tile_s, off);
      const float m = fmaxf(run_m, tile_m);
      run_s = run_s * expf(run_m - m) + tile_s * expf(tile_m - m);
      run_m = m;
    }
  }
  if (warp < static_cast<int>(hc) && lane == 0) {
    p.partials[size_t{qh0 + warp} * gridDim.x + blockIdx.x] = make_float2(run_m, run_s);
  }
}

// Largest divisor of `group` (<= kMaxHeadsPerCta) whose shared memory fits with double
// buffering (more heads per CTA = fewer passes over the keys; that comes before depth).
template <class T, int kD>
uint32_t HeadsPerCta(uint32_t group, uint32_t cols) {
  for (uint32_t h = std::min<uint32_t>(group, kMaxHeadsPerCta); h > 1; --h) {
    if (group % h == 0 && SmemBytes<T, kD>(h, cols, kMinStages) <= kSmemLimit) return h;
  }
  return 1;
}

template <class T, int kD, bool kExact>
cudaError_t Launch(const ExpectedAttentionDeviceArgs& a, const Params& base, uint32_t* partial_count,
                   cudaStream_t stream) {
  const auto& s = a.shape;
  Params p = base;
  p.heads_per_cta = HeadsPerCta<T, kD>(s.group(), p.cols);
  auto* kernel = MmaLogitsKernel<T, kD, kExact>;
  uint32_t top = kMaxStages;  // deepest ring that fits one CTA
  while (top > kMinStages && SmemBytes<T, kD>(p.heads_per_cta, p.cols, top) > kSmemLimit) --top;
  if (cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(SmemBytes<T, kD>(p.heads_per_cta, p.cols, top)));
      e != cudaSuccess) {
    return e;
  }
  int device = 0, sms = 0, per_sm = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess) return e;
  // Bytes in flight per SM = CTAs per SM × (stages − 1) tiles. CTAs per SM are set by
  // registers for 16-bit keys (2 at 256 threads × ≤ 128 registers, __launch_bounds__), so take
  // the deepest ring that keeps the double-buffered occupancy: for bf16, d = 128, mean-only or
  // low-rank, 4 stages = 3 × 16 KB in flight per CTA, 96 KB per SM where double buffering had
  // at most 32 KB (HBM3 needs ≳ 24 KB per SM, and more to cover the gaps between a CTA's tiles).
  auto occupancy = [&](uint32_t stages, int* n) {
    return cudaOccupancyMaxActiveBlocksPerMultiprocessor(n, kernel, kThreads,
                                                         SmemBytes<T, kD>(p.heads_per_cta, p.cols, stages));
  };
  if (a.logits_stages != 0) {  // a forced depth (tuning, benchmarks), lowered to what fits
    p.stages = std::min(top, a.logits_stages);
    if (cudaError_t e = occupancy(p.stages, &per_sm); e != cudaSuccess) return e;
  } else {
    p.stages = kMinStages;
    if (cudaError_t e = occupancy(kMinStages, &per_sm); e != cudaSuccess) return e;
    for (uint32_t st = top; st > kMinStages; --st) {
      int n = 0;
      if (cudaError_t e = occupancy(st, &n); e != cudaSuccess) return e;
      if (n >= per_sm) {
        p.stages = st;
        break;
      }
    }
  }
  const size_t smem = SmemBytes<T, kD>(p.heads_per_cta, p.cols, p.stages);
  const uint32_t chunks = s.group() / p.heads_per_cta;
  const uint32_t resident = static_cast<uint32_t>(std::max(1, sms * std::max(1, per_sm)));
  // One wave: rounding up would leave a few CTAs (each with a full share of the tiles) for a
  // second wave and double the time; rounding down idles at most kv_heads·chunks − 1 slots.
  const uint32_t per_head = resident / (s.kv_heads * chunks);
  const dim3 grid(std::clamp<uint32_t>(per_head, 1, p.tiles), s.kv_heads, chunks);
  MmaLogitsKernel<T, kD, kExact><<<grid, kThreads, smem, stream>>>(p);
  *partial_count = grid.x;
  return cudaGetLastError();
}

template <class T, bool kExact>
cudaError_t LaunchDim(const ExpectedAttentionDeviceArgs& a, const Params& p, uint32_t* n, cudaStream_t stream) {
  switch (a.shape.head_dim) {
    case 16: return Launch<T, 16, kExact>(a, p, n, stream);
    case 32: return Launch<T, 32, kExact>(a, p, n, stream);
    case 64: return Launch<T, 64, kExact>(a, p, n, stream);
    case 128: return Launch<T, 128, kExact>(a, p, n, stream);
    default: return cudaErrorInvalidValue;
  }
}

// LaunchValueNorms: a row (one token of one head) is kChunks 16-byte chunks, one per lane;
// 32 / kChunks rows per warp per step. The same per-chunk sums and shuffle order as the
// logits pass's in-line ‖v‖, so both paths give the same bits.
template <class T, int kD>
__global__ void __launch_bounds__(kThreads) ValueNormsKernel(ValueNormsArgs a) {
  constexpr int kChunks = kD * static_cast<int>(sizeof(T)) / 16;  // 2 .. 32, a power of two
  constexpr int kRowsPerWarp = 32 / kChunks;
  const int lane = static_cast<int>(threadIdx.x % 32);
  const size_t rows = size_t{a.heads} * a.tokens;
  const size_t warps = size_t{gridDim.x} * (kThreads / 32);
  const T* values = static_cast<const T*>(a.values);
  for (size_t base = (size_t{blockIdx.x} * (kThreads / 32) + threadIdx.x / 32) * kRowsPerWarp; base < rows;
       base += warps * kRowsPerWarp) {  // warp-uniform
    const size_t row = base + lane / kChunks;
    const bool ok = row < rows;
    const size_t h = ok ? row / a.tokens : 0, t = ok ? row % a.tokens : 0;
    uint4 raw = make_uint4(0, 0, 0, 0);
    if (ok) raw = __ldcs(reinterpret_cast<const uint4*>(values + h * a.values_head_stride + t * kD) + lane % kChunks);
    float sq = SumSquares(raw, static_cast<const T*>(nullptr));
#pragma unroll
    for (int off = kChunks / 2; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
    if (ok && lane % kChunks == 0) a.norms[h * a.norms_head_stride + t] = sqrtf(sq);
  }
}

template <class T>
cudaError_t LaunchValueNormsOf(const ValueNormsArgs& a, cudaStream_t stream) {
  const size_t rows = size_t{a.heads} * a.tokens;
  auto launch = [&](auto kernel, int chunks) {
    const size_t rows_per_cta = size_t{kThreads / 32} * (32 / chunks);
    const auto ctas = static_cast<unsigned>(std::min<size_t>((rows + rows_per_cta - 1) / rows_per_cta, 8192));
    kernel<<<ctas, kThreads, 0, stream>>>(a);
    return cudaGetLastError();
  };
  constexpr int kPerChunk = 16 / static_cast<int>(sizeof(T));
  switch (a.head_dim) {
    case 16: return launch(ValueNormsKernel<T, 16>, 16 / kPerChunk);
    case 32: return launch(ValueNormsKernel<T, 32>, 32 / kPerChunk);
    case 64: return launch(ValueNormsKernel<T, 64>, 64 / kPerChunk);
    case 128: return launch(ValueNormsKernel<T, 128>, 128 / kPerChunk);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace

cudaError_t LaunchMmaLogits(const ExpectedAttentionDeviceArgs& a, float* logits, float* vnorm, float2* partials,
                            uint32_t* best, uint32_t* partial_count, cudaStream_t stream) {
  const auto& s = a.shape;
  const bool exact = a.use_covariance && a.covariance_rank == 0;
  const bool low_rank = a.use_covariance && a.covariance_rank > 0;
  Params p{.keys = a.keys, .values = a.values, .mean = a.rotated_mean,
           .b_source = exact ? a.rotated_cov : (low_rank ? a.cov_factors : nullptr),
           .residual = low_rank ? a.cov_residual : nullptr, .logits = logits, .vnorm = vnorm, .partials = partials,
           .best = best, .tokens = s.tokens, .sinks = s.sink_tokens, .group = s.group(), .heads_per_cta = 1,
           .cols = exact ? s.head_dim : (low_rank ? a.covariance_rank : 0), .tiles = Tiles(s),
           .value_norm = a.use_value_norm && a.value_norms == nullptr};
  switch (a.kv_dtype) {
    case KvDType::kFp32:
      if (exact) return cudaErrorInvalidValue;  // the fp32 SIMT kernel's case
      return LaunchDim<float, false>(a, p, partial_count, stream);
    case KvDType::kBf16:
      return exact ? LaunchDim<__nv_bfloat16, true>(a, p, partial_count, stream)
                   : LaunchDim<__nv_bfloat16, false>(a, p, partial_count, stream);
    case KvDType::kFp16:
      return exact ? LaunchDim<__half, true>(a, p, partial_count, stream)
                   : LaunchDim<__half, false>(a, p, partial_count, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kvtier::kernels::detail

namespace kvtier::kernels {

cudaError_t LaunchValueNorms(const ValueNormsArgs& a, cudaStream_t stream) {
  const size_t elem = a.dtype == KvDType::kFp32 ? 4 : 2;
  if (a.heads == 0 || a.tokens == 0 || a.values == nullptr || a.norms == nullptr ||
      reinterpret_cast<uintptr_t>(a.values) % 16 != 0 || (a.values_head_stride * elem) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.norms) % alignof(float) != 0) {
    return cudaErrorInvalidValue;
  }
  switch (a.dtype) {
    case KvDType::kFp32: return detail::LaunchValueNormsOf<float>(a, stream);
    case KvDType::kBf16: return detail::LaunchValueNormsOf<__nv_bfloat16>(a, stream);
    case KvDType::kFp16: return detail::LaunchValueNormsOf<__half>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kvtier::kernels
