// Internal to the sparse attention kernels: the per-lane tile math shared by the streamed
// kernel (sparse_attention_streamed.cu, K/V in registers) and the staged kernel
// (sparse_attention_staged.cu, K/V in shared memory). The lane layout is the same in both:
// kL = kD/8 lanes per token row (one 16-byte vector of 8 channels each), kR = 32/kL token
// rows per warp instruction, kT instructions per tile; each row group keeps its own online
// softmax (m, l, o) in the log2 domain (q pre-scaled by log2(e)/√d). Only the CTA shape
// (warps, where K/V come from, the end-of-piece merge) differs between the kernels: the
// loads are passed in as callables, the warp count as a template argument.
// Everything here is __forceinline__: the kernels compile to the same code as when this was
// written out in each of them (same operations, same order). Not part of the public API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sparse_attention.cuh"

namespace kvtier::kernels::attention_internal {

inline constexpr float kLog2e = 1.4426950408889634f;

// 8 consecutive 16-bit values → fp32.
// Where launch row `row` (request, KV head, chunk of kHeads query heads of its group) reads and
// writes: its page list [begin, end) (entry page_row of the CSR) and its first output element.
struct AttentionRow {
  uint32_t page_row, begin, end;
  size_t out_base;
};
template <int kD, int kHeads>
__device__ __forceinline__ AttentionRow RowOf(const SparseAttentionDeviceArgs& a, uint32_t row) {
  const SparseAttentionShape& s = a.shape;
  const uint32_t group = s.q_heads / s.kv_heads, chunks = group / kHeads;
  const uint32_t request = row / (s.kv_heads * chunks);
  const uint32_t kv_head = row / chunks % s.kv_heads;
  const uint32_t head0 = kv_head * group + row % chunks * kHeads;
  const uint32_t page_row = request * s.kv_heads + kv_head;
  // Through L2 (.cg): the tensor-core kernel may read them before its PDL wait
  // (SparseAttentionDeviceArgs::early_inputs), where a line left in L1 could be stale.
  return {page_row, __ldcg(&a.page_offsets[page_row]), __ldcg(&a.page_offsets[page_row + 1]),
          (size_t{request} * s.q_heads + head0) * kD};
}

template <HalfType kType>
__device__ __forceinline__ void Unpack(const uint4& v, float (&f)[8]) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (kType == HalfType::kBf16) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    } else {
      const float2 x = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      f[2 * i] = x.x;
      f[2 * i + 1] = x.y;
    }
  }
}

// (m, l, o) ⊕ (m2, l2, o2) in the log2 domain; an empty side has m = -inf, l = 0, o = 0.
__device__ __forceinline__ void MergeScale(float m, float m2, float& a, float& b, float& m_new) {
  m_new = fmaxf(m, m2);
  const float base = m_new == -INFINITY ? 0.0f : m_new;  // both empty: keep zeros, no NaN
  a = exp2f(m - base);
  b = exp2f(m2 - base);
}

// The lane's 8 channels (vector c) of the CTA's kHeads query heads, scaled by log2(e)/√kD.
template <int kD, int kHeads, HalfType kType>
__device__ __forceinline__ void LoadQueries(const SparseAttentionDeviceArgs& a, size_t out_base, int c,
                                            float (&q)[kHeads][8]) {
  const float qscale = kLog2e * rsqrtf(static_cast<float>(kD));
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    const uint4 v = *reinterpret_cast<const uint4*>(a.queries + out_base + static_cast<size_t>(g) * kD + c * 8);
    Unpack<kType>(v, q[g]);
#pragma unroll
    for (int j = 0; j < 8; ++j) q[g][j] *= qscale;
  }
}

// The empty online-softmax state: m = -inf, l = 0, o = 0.
template <int kHeads>
__device__ __forceinline__ void InitState(float (&m)[kHeads], float (&l)[kHeads], float (&o)[kHeads][8]) {
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[g][j] = 0.0f;
  }
}

// The lane's partial dot products of one token row: s[g] = q[g] · k over the lane's 8
// channels (kf: the row's K vector, unpacked).
template <int kHeads>
__device__ __forceinline__ void RowScores(const float (&q)[kHeads][8], const float (&kf)[8], float (&s)[kHeads]) {
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    float acc = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) acc = fmaf(q[g][j], kf[j], acc);
    s[g] = acc;
  }
}

// Reduce the partial scores over the row group (log2(kL) shuffles) and mask the rows past
// `limit`: token tile_base + i·kR + rr of instruction i (the same for the whole row group).
template <int kL, int kR, int kHeads, int kT>
__device__ __forceinline__ void ReduceMaskScores(float (&sc)[kT][kHeads], uint32_t tile_base, int rr, uint32_t limit) {
#pragma unroll
  for (int i = 0; i < kT; ++i) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
#pragma unroll
      for (int off = kL / 2; off > 0; off /= 2) sc[i][g] += __shfl_xor_sync(0xffffffffu, sc[i][g], off);
    }
    const bool ok = tile_base + i * kR + rr < limit;  // the same for the whole row group
#pragma unroll
    for (int g = 0; g < kHeads; ++g) sc[i][g] = ok ? sc[i][g] : -INFINITY;
  }
}

// The online-softmax step of a tile: rescale (m, l, o) to the tile's max, turn the scores
// into the weights p = 2^(s − m) (0 for a masked token) and add them to l.
template <int kHeads, int kT>
__device__ __forceinline__ void OnlineSoftmax(float (&sc)[kT][kHeads], float (&m)[kHeads], float (&l)[kHeads],
                                              float (&o)[kHeads][8]) {
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    float mx = sc[0][g];
#pragma unroll
    for (int i = 1; i < kT; ++i) mx = fmaxf(mx, sc[i][g]);
    float alpha, unused, m_new;
    MergeScale(m[g], mx, alpha, unused, m_new);
    const float base = m_new == -INFINITY ? 0.0f : m_new;
    m[g] = m_new;
    l[g] *= alpha;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[g][j] *= alpha;
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      sc[i][g] = exp2f(sc[i][g] - base);  // now the weight p (0 for a masked token)
      l[g] += sc[i][g];
    }
  }
}

// o += P·V over the tile; v_at(i) gives the 16-byte V vector of instruction i (zeros past
// the end).
template <HalfType kType, int kHeads, int kT, typename VAt>
__device__ __forceinline__ void AccumulatePV(const float (&sc)[kT][kHeads], VAt&& v_at, float (&o)[kHeads][8]) {
#pragma unroll
  for (int i = 0; i < kT; ++i) {
    float vf[8];
    Unpack<kType>(v_at(i), vf);
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
#pragma unroll
      for (int j = 0; j < 8; ++j) o[g][j] = fmaf(sc[i][g], vf[j], o[g][j]);
    }
  }
}

// Merge the row groups of the warp (lanes c, c + kL, ...): every lane ends with its channel
// vector's (m, l, o) of the whole warp.
template <int kL, int kHeads>
__device__ __forceinline__ void MergeRowGroups(float (&m)[kHeads], float (&l)[kHeads], float (&o)[kHeads][8]) {
#pragma unroll
  for (int off = kL; off < 32; off *= 2) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m[g], off);
      const float l2 = __shfl_xor_sync(0xffffffffu, l[g], off);
      float wa, wb, m_new;
      MergeScale(m[g], m2, wa, wb, m_new);
      m[g] = m_new;
      l[g] = l[g] * wa + l2 * wb;
#pragma unroll
      for (int j = 0; j < 8; ++j) o[g][j] = o[g][j] * wa + __shfl_xor_sync(0xffffffffu, o[g][j], off) * wb;
    }
  }
}

// Row group 0 of each warp writes the warp's (m, l, o) to shared memory (kW warps).
template <int kD, int kHeads, int kW>
__device__ __forceinline__ void StoreWarpState(const float (&m)[kHeads], const float (&l)[kHeads],
                                               const float (&o)[kHeads][8], int warp, int c, int rr,
                                               float (&warp_m)[kW][kHeads], float (&warp_l)[kW][kHeads],
                                               float (*warp_o)[kHeads][kD]) {
  if (rr == 0) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      if (c == 0) {
        warp_m[warp][g] = m[g];
        warp_l[warp][g] = l[g];
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) warp_o[warp][g][c * 8 + j] = o[g][j];
    }
  }
}

// Output (g, dim) of the CTA: the kW warps' (m, l, o) merged in warp order.
template <int kD, int kHeads, int kW>
__device__ __forceinline__ void MergeWarps(float (&warp_m)[kW][kHeads], float (&warp_l)[kW][kHeads],
                                           float (*warp_o)[kHeads][kD], int g, int dim, float& mm, float& ll,
                                           float& oo) {
  mm = -INFINITY;
  ll = 0.0f;
  oo = 0.0f;
#pragma unroll
  for (int w = 0; w < kW; ++w) {
    float wa, wb, m_new;
    MergeScale(mm, warp_m[w][g], wa, wb, m_new);
    mm = m_new;
    ll = ll * wa + warp_l[w][g] * wb;
    oo = oo * wa + warp_o[w][g][dim] * wb;
  }
}

}  // namespace kvtier::kernels::attention_internal
