// Why this shape: decode attention reads each K/V byte once and does ~2 flops per byte per
// query head, so it is a streaming problem. Each lane owns 8 channels (one 16-byte vector)
// of kD/8-lane "row groups"; a warp loads kR = 32·8/kD token rows per instruction and kT
// instructions per tile for K and as many for V, so 1 KiB·kT is in flight per warp with no
// shared-memory staging; the next tile's loads are issued before the current tile's
// softmax and P·V. Dot products are reduced over a row group with log2(kD/8) shuffles; each
// row group keeps its own online softmax (running max m, sum l, accumulator o, in the log2
// domain: q is pre-scaled by log2(e)/√d), merged across row groups, warps and pieces with
// the usual (m, l, o) rule at the end.
#include "sparse_attention.cuh"
#include "sparse_attention_internal.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <atomic>
#include <cmath>

namespace kvtier::kernels {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = 32 * kWarps;
constexpr float kLog2e = 1.4426950408889634f;
constexpr uint32_t kMergeStage = 1024;  // (piece, head) weights of a row staged for the merge

size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

struct Layout {
  size_t counters = 0, partial = 0, lse = 0, total = 0;
};

Layout WorkspaceLayout(const SparseAttentionShape& s, const SparseAttentionPlan& p) {
  Layout l;
  const size_t pieces = size_t{p.rows} * p.max_splits * p.heads_per_cta;  // (row, piece, head)
  l.counters = 0;
  l.partial = AlignUp(sizeof(uint32_t) * p.rows);
  l.lse = AlignUp(l.partial + sizeof(float) * pieces * s.head_dim);
  l.total = AlignUp(l.lse + sizeof(float) * pieces);
  return l;
}

uint32_t HeadsPerCta(uint32_t group) {
  for (uint32_t h : {8u, 4u, 2u}) {
    if (group % h == 0) return h;
  }
  return 1;
}

// 8 consecutive 16-bit values → fp32.
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

template <HalfType kType>
__device__ __forceinline__ uint16_t ToHalfBits(float x) {
  if constexpr (kType == HalfType::kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else return __half_as_ushort(__float2half_rn(x));
}

// (m, l, o) ⊕ (m2, l2, o2) in the log2 domain; an empty side has m = -inf, l = 0, o = 0.
__device__ __forceinline__ void MergeScale(float m, float m2, float& a, float& b, float& m_new) {
  m_new = fmaxf(m, m2);
  const float base = m_new == -INFINITY ? 0.0f : m_new;  // both empty: keep zeros, no NaN
  a = exp2f(m - base);
  b = exp2f(m2 - base);
}

struct Row {
  uint32_t request, kv_head, head0;  // head0: first query head of this CTA
  uint32_t page_row;                 // r·kv_heads + h
};

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__device__ __forceinline__ void WriteOutput(void* out, size_t index, float value) {
  if constexpr (kOut == AttentionOutput::kFloat32) static_cast<float*>(out)[index] = value;
  else static_cast<uint16_t*>(out)[index] = ToHalfBits<kType>(value);
}

// The end of a piece, shared by the streamed kernels: merge the row groups of each warp and
// the warps (fixed order), then write the output (a row of one piece) or the piece's
// (o/l, log2 Σ) and, in the last CTA of the row to finish, merge the row's pieces.
// merge_o holds kWarps·kHeads·kD floats, merge_w kMergeStage (the pipelined kernel aliases
// both onto its drained K/V buffers). kDeep: the deep variant's wider merge rounds.
template <int kD, int kHeads, HalfType kType, AttentionOutput kOut, bool kDeep>
__device__ __forceinline__ void FinishPiece(const SparseAttentionDeviceArgs& a, float (&m)[kHeads], float (&l)[kHeads],
                                            float (&o)[kHeads][8], uint32_t row, uint32_t piece, uint32_t pieces,
                                            size_t out_base, float* __restrict__ partial, float* __restrict__ lse,
                                            uint32_t* __restrict__ counters, float (&merge_m)[kWarps][kHeads],
                                            float (&merge_l)[kWarps][kHeads], float (*merge_o)[kHeads][kD],
                                            float* merge_w, bool& last_s) {
  constexpr int kL = kD / 8;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;
  // Merge the row groups of the warp (lanes c, c + kL, ...), then the warps.
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
  if (rr == 0) {
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      if (c == 0) {
        merge_m[warp][g] = m[g];
        merge_l[warp][g] = l[g];
      }
#pragma unroll
      for (int j = 0; j < 8; ++j) merge_o[warp][g][c * 8 + j] = o[g][j];
    }
  }
  __syncthreads();
  const bool single = pieces == 1;
  const size_t piece_base = (size_t{row} * gridDim.x + piece) * kHeads;  // (row, piece, head 0)
  for (int i = tid; i < kHeads * kD; i += kThreads) {
    const int g = i / kD, dim = i % kD;
    float mm = -INFINITY, ll = 0.0f, oo = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      float wa, wb, m_new;
      MergeScale(mm, merge_m[w][g], wa, wb, m_new);
      mm = m_new;
      ll = ll * wa + merge_l[w][g] * wb;
      oo = oo * wa + merge_o[w][g][dim] * wb;
    }
    const float value = ll > 0.0f ? oo / ll : 0.0f;
    if (single) {
      WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, value);
    } else {
      partial[(piece_base + g) * kD + dim] = value;
      if (dim == 0) lse[piece_base + g] = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
    }
  }
  if (single) return;

  // Last CTA of the row merges (threadFenceReduction pattern: every thread fences its
  // partial writes before the count; the last one fences again before reading).
  __threadfence();
  __syncthreads();
  if (tid == 0) last_s = atomicAdd(&counters[row], 1u) == pieces - 1;
  __syncthreads();
  if (!last_s) return;
  __threadfence();
  // Parallel merge. Entry i = p·kHeads + g of the row's (piece, head) list; thread t sees
  // only head t % kHeads (kHeads divides kThreads). 1: every thread loads its entries' lse
  // (independent loads, all in flight), the per-head max M_g by shuffles + one shared step;
  // 2: the weights 2^(lse − M_g) (staged in shared memory when the row has ≤ kMergeStage
  // entries) and their per-head sum l_g the same way; 3: each thread's outputs as
  // Σ_p w_pg · partial_pg / l_g, kU pieces × kOuts outputs of loads in flight per round.
  // Fixed order of every sum: deterministic whatever the arrival order of the pieces.
  const size_t row_base = size_t{row} * gridDim.x * kHeads;
  const uint32_t entries = pieces * kHeads;
  const bool stage = entries <= kMergeStage;
  {
    float mx = -INFINITY;
    for (uint32_t i = tid; i < entries; i += kThreads) {
      const float v = __ldcg(&lse[row_base + i]);
      if (stage) merge_w[i] = v;
      mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int off = 16; off >= kHeads; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane < kHeads) merge_m[warp][lane] = mx;
  }
  __syncthreads();
  auto head_max = [&](int g) {
    float mx = merge_m[0][g];
#pragma unroll
    for (int w = 1; w < kWarps; ++w) mx = fmaxf(mx, merge_m[w][g]);
    return mx == -INFINITY ? 0.0f : mx;  // all pieces empty: weights 0, output 0
  };
  {
    const float base = head_max(tid % kHeads);
    float sum = 0.0f;
    for (uint32_t i = tid; i < entries; i += kThreads) {
      const float w = exp2f((stage ? merge_w[i] : __ldcg(&lse[row_base + i])) - base);
      if (stage) merge_w[i] = w;
      sum += w;
    }
#pragma unroll
    for (int off = 16; off >= kHeads; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
    if (lane < kHeads) merge_l[warp][lane] = sum;
  }
  __syncthreads();
  constexpr int kOuts = (kHeads * kD + kThreads - 1) / kThreads;  // outputs per thread
  // Pieces per round: the deep plan (many short pieces, registers to spare once the K/V
  // registers are dead) keeps 64 loads in flight per thread, the others 32.
  constexpr int kU = kDeep ? (64 / kOuts < 32 ? 64 / kOuts : 32) : (kOuts >= 8 ? 4 : 8);
  float acc[kOuts], base_j[kOuts];
  int g_j[kOuts];
#pragma unroll
  for (int j = 0; j < kOuts; ++j) {
    acc[j] = 0.0f;
    g_j[j] = min((tid + j * kThreads) / kD, kHeads - 1);
    base_j[j] = stage ? 0.0f : head_max(g_j[j]);
  }
  for (uint32_t p0 = 0; p0 < pieces; p0 += kU) {
    float x[kU][kOuts];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
#pragma unroll
      for (int j = 0; j < kOuts; ++j) {
        const int i = tid + j * kThreads;
        const size_t at = row_base + size_t{p0 + u} * kHeads + g_j[j];
        x[u][j] = p0 + u < pieces && i < kHeads * kD ? __ldcg(&partial[at * kD + i % kD]) : 0.0f;
      }
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (p0 + u >= pieces) break;
#pragma unroll
      for (int j = 0; j < kOuts; ++j) {
        const uint32_t e = (p0 + u) * kHeads + g_j[j];
        const float w = stage ? merge_w[e] : exp2f(__ldcg(&lse[row_base + e]) - base_j[j]);
        acc[j] = fmaf(w, x[u][j], acc[j]);
      }
    }
  }
#pragma unroll
  for (int j = 0; j < kOuts; ++j) {
    const int i = tid + j * kThreads;
    if (i >= kHeads * kD) break;
    float l = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) l += merge_l[w][g_j[j]];
    WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, l > 0.0f ? acc[j] / l : 0.0f);
  }
  if (tid == 0) counters[row] = 0;  // ready for the next launch (stream order)
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut, int kMinBlocks, int kT>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    SparseAttentionKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift,
                          float* __restrict__ partial, float* __restrict__ lse, uint32_t* __restrict__ counters) {
  constexpr int kL = kD / 8;      // lanes per token row (one 16-byte vector each)
  constexpr int kR = 32 / kL;     // token rows per warp instruction
  // kT: instructions per tile (for K, and for V): 4, or 8 for the deep plan (short pieces
  // loaded in one round; 2 CTAs per SM).
  constexpr int kTile = kR * kT;  // tokens per warp tile
  __shared__ uint32_t slots_s[kSparseAttentionMaxChunkPages];
  __shared__ float merge_m[kWarps][kHeads], merge_l[kWarps][kHeads];
  __shared__ float merge_o[kWarps][kHeads][kD];
  __shared__ float merge_w[kMergeStage];
  __shared__ bool last_s;
  cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue

  const SparseAttentionShape& s = a.shape;
  const uint32_t chunks = s.q_heads / s.kv_heads / kHeads;
  const uint32_t row = blockIdx.y, piece = blockIdx.x;
  const uint32_t request = row / (s.kv_heads * chunks);
  const uint32_t kv_head = row / chunks % s.kv_heads;
  const uint32_t head0 = kv_head * (s.q_heads / s.kv_heads) + row % chunks * kHeads;
  const uint32_t page_row = request * s.kv_heads + kv_head;
  const uint32_t begin = a.page_offsets[page_row], end = a.page_offsets[page_row + 1];
  const uint32_t n = end - begin;
  const uint32_t pieces = (n + chunk_pages - 1) / chunk_pages;
  const int tid = static_cast<int>(threadIdx.x);
  const size_t out_base = (size_t{request} * s.q_heads + head0) * kD;
  if (n == 0 || pieces > gridDim.x) {
    // No page: zeros. More pages than the plan allows: NaN, so misuse cannot pass for a result.
    if (piece == 0) {
      const float fill = n == 0 ? 0.0f : __int_as_float(0x7fc00000);
      for (int i = tid; i < kHeads * kD; i += kThreads) WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, fill);
    }
    return;
  }
  if (piece >= pieces) return;

  const uint32_t p0 = begin + piece * chunk_pages;
  const uint32_t p1 = min(p0 + chunk_pages, end);
  const uint32_t bt = 1u << block_shift;
  const uint32_t last = min(a.last_page_tokens[page_row], bt);
  const uint32_t valid = (p1 - p0) * bt - (p1 == end ? bt - last : 0u);
  for (uint32_t i = tid; i < p1 - p0; i += kThreads) slots_s[i] = a.page_slots[p0 + i];

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  {
    const float qscale = kLog2e * rsqrtf(static_cast<float>(kD));
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const uint4 v = *reinterpret_cast<const uint4*>(a.queries + out_base + static_cast<size_t>(g) * kD + c * 8);
      Unpack<kType>(v, q[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[g][j] *= qscale;
    }
  }
  __syncthreads();  // slots_s

  const char* arena = static_cast<const char*>(a.arena);
  const size_t v_offset = size_t{bt} * kD * sizeof(uint16_t);
  auto token_ptr = [&](uint32_t f) -> const uint4* {
    const uint32_t page = f >> block_shift, t = f & (bt - 1);
    return reinterpret_cast<const uint4*>(arena + size_t{slots_s[page]} * s.slot_bytes +
                                          size_t{t} * kD * sizeof(uint16_t) + c * 16);
  };
  const uint4 zero = make_uint4(0, 0, 0, 0);
  auto load_k = [&](uint32_t tile, uint4 (&k)[kT]) {
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      const uint32_t f = tile * kTile + i * kR + rr;
      k[i] = f < valid ? __ldcs(token_ptr(f)) : zero;
    }
  };
  auto load_v = [&](uint32_t tile, uint4 (&v)[kT]) {
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      const uint32_t f = tile * kTile + i * kR + rr;
      v[i] = f < valid ? __ldcs(reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(token_ptr(f)) + v_offset))
                       : zero;
    }
  };

  float m[kHeads], l[kHeads], o[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[g][j] = 0.0f;
  }

  const uint32_t tiles = (valid + kTile - 1) / kTile;
  uint32_t tile = warp;
  uint4 kreg[kT], vreg[kT];
  if (tile < tiles) {
    load_k(tile, kreg);
    load_v(tile, vreg);
  }
  for (; tile < tiles; tile += kWarps) {
    const uint32_t next = tile + kWarps;
    float sc[kT][kHeads];
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      float kf[8];
      Unpack<kType>(kreg[i], kf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = fmaf(q[g][j], kf[j], acc);
        sc[i][g] = acc;
      }
    }
    if (next < tiles) load_k(next, kreg);
#pragma unroll
    for (int i = 0; i < kT; ++i) {
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int off = kL / 2; off > 0; off /= 2) sc[i][g] += __shfl_xor_sync(0xffffffffu, sc[i][g], off);
      }
      const bool ok = tile * kTile + i * kR + rr < valid;  // the same for the whole row group
#pragma unroll
      for (int g = 0; g < kHeads; ++g) sc[i][g] = ok ? sc[i][g] : -INFINITY;
    }
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
        sc[i][g] = exp2f(sc[i][g] - base);  // now the weight p
        l[g] += sc[i][g];
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      float vf[8];
      Unpack<kType>(vreg[i], vf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) o[g][j] = fmaf(sc[i][g], vf[j], o[g][j]);
      }
    }
    if (next < tiles) load_v(next, vreg);
  }

  FinishPiece<kD, kHeads, kType, kOut, kT == 8>(a, m, l, o, row, piece, pieces, out_base, partial, lse, counters, merge_m,
                                                merge_l, merge_o, merge_w, last_s);
}

// ---- Round 8: the pipelined streamed kernel (plan.pipeline_stages > 0). ----
// Why: the register kernel above keeps one warp tile of K/V loads in flight per warp (4 KiB)
// at ~160 registers (3 CTAs = 12 warps per SM), so each warp waits a DRAM round trip per
// tile: 1.9 TB/s at b8/32K sparse, 0.69× the copy for dense b1. Here the loads take no
// registers: the CTA copies its piece's tokens to shared memory with cp.async in stages of
// kAttnStageTokens<kD> tokens (K then V, 16 KiB), kAttnPipeStages buffers, so 3 stages
// (48 KiB) are in flight per CTA while its warps compute the 4th — ~144 KiB per SM. The math
// is the register kernel's tile body (the same lane layout, per-row-group online softmax,
// fixed merge order), reading K and V from shared memory: each warp one tile of 4 loads
// (8 tokens at d = 128) per stage. Masked tokens are never copied.
constexpr int kAttnPipeStages = 4;
template <int kD>
constexpr int kAttnStageTokens = kWarps * (32 / (kD / 8)) * 4;  // 32 at d = 128, 64 at d = 64
template <int kD>
constexpr size_t kAttnStageBytes = size_t{kAttnStageTokens<kD>} * kD * sizeof(uint16_t) * 2;  // K, V: 16 KiB

__device__ __forceinline__ void AttnCpAsync16(void* smem, const void* global) {
  const auto s = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(s), "l"(global) : "memory");
}
__device__ __forceinline__ void AttnCpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int kPending>
__device__ __forceinline__ void AttnCpAsyncWait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut, int kMinBlocks>
__global__ void __launch_bounds__(kThreads, kMinBlocks)
    SparseAttentionPipelinedKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift,
                                   float* __restrict__ partial, float* __restrict__ lse,
                                   uint32_t* __restrict__ counters) {
  constexpr int kL = kD / 8;      // lanes per token row (one 16-byte vector each)
  constexpr int kR = 32 / kL;     // token rows per warp instruction
  constexpr int kT = 4;           // instructions per warp tile, for K and for V
  constexpr int kTile = kR * kT;  // tokens per warp tile; kWarps tiles per stage
  constexpr int kStageTok = kAttnStageTokens<kD>;
  constexpr size_t kHalfBytes = size_t{kStageTok} * kD * sizeof(uint16_t);  // K (then V) of a stage
  constexpr int kChunks = 2 * kStageTok * kL;  // 16-byte copies per stage
  static_assert(kChunks % kThreads == 0, "whole copy rounds");
  static_assert(size_t{kWarps} * kHeads * kD * 4 + kMergeStage * 4 <= kAttnPipeStages * kAttnStageBytes<kD>,
                "the epilogue's buffers fit the drained stages");
  __shared__ uint32_t slots_s[kSparseAttentionMaxChunkPages];
  __shared__ float merge_m[kWarps][kHeads], merge_l[kWarps][kHeads];
  __shared__ bool last_s;
  extern __shared__ uint4 stage_s[];  // [kAttnPipeStages][K tokens | V tokens]
  char* stages = reinterpret_cast<char*>(stage_s);
  cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue

  const SparseAttentionShape& s = a.shape;
  const uint32_t chunks = s.q_heads / s.kv_heads / kHeads;
  const uint32_t row = blockIdx.y, piece = blockIdx.x;
  const uint32_t request = row / (s.kv_heads * chunks);
  const uint32_t kv_head = row / chunks % s.kv_heads;
  const uint32_t head0 = kv_head * (s.q_heads / s.kv_heads) + row % chunks * kHeads;
  const uint32_t page_row = request * s.kv_heads + kv_head;
  const uint32_t begin = a.page_offsets[page_row], end = a.page_offsets[page_row + 1];
  const uint32_t n = end - begin;
  const uint32_t pieces = (n + chunk_pages - 1) / chunk_pages;
  const int tid = static_cast<int>(threadIdx.x);
  const size_t out_base = (size_t{request} * s.q_heads + head0) * kD;
  if (n == 0 || pieces > gridDim.x) {
    // No page: zeros. More pages than the plan allows: NaN, so misuse cannot pass for a result.
    if (piece == 0) {
      const float fill = n == 0 ? 0.0f : __int_as_float(0x7fc00000);
      for (int i = tid; i < kHeads * kD; i += kThreads) WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, fill);
    }
    return;
  }
  if (piece >= pieces) return;

  const uint32_t p0 = begin + piece * chunk_pages;
  const uint32_t p1 = min(p0 + chunk_pages, end);
  const uint32_t bt = 1u << block_shift;
  const uint32_t last = min(a.last_page_tokens[page_row], bt);
  const uint32_t valid = (p1 - p0) * bt - (p1 == end ? bt - last : 0u);
  for (uint32_t i = tid; i < p1 - p0; i += kThreads) slots_s[i] = a.page_slots[p0 + i];

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  {
    const float qscale = kLog2e * rsqrtf(static_cast<float>(kD));
#pragma unroll
    for (int g = 0; g < kHeads; ++g) {
      const uint4 v = *reinterpret_cast<const uint4*>(a.queries + out_base + static_cast<size_t>(g) * kD + c * 8);
      Unpack<kType>(v, q[g]);
#pragma unroll
      for (int j = 0; j < 8; ++j) q[g][j] *= qscale;
    }
  }
  __syncthreads();  // slots_s

  const char* arena = static_cast<const char*>(a.arena);
  const size_t v_offset = size_t{bt} * kD * sizeof(uint16_t);
  const uint32_t n_stages = (valid + kStageTok - 1) / kStageTok;
  // Stage st into buffer st % kAttnPipeStages: copy j of the stage is (K or V, token, vector);
  // one commit group per call from every thread (empty past the last stage).
  auto issue = [&](uint32_t st) {
    if (st < n_stages) {
      char* buf = stages + (st % kAttnPipeStages) * kAttnStageBytes<kD>;
#pragma unroll
      for (int r = 0; r < kChunks / kThreads; ++r) {
        const int j = r * kThreads + tid;
        const int kv = j / (kStageTok * kL), tok = j / kL % kStageTok, vec = j % kL;
        const uint32_t f = st * kStageTok + tok;
        if (f < valid) {
          const char* src = arena + size_t{slots_s[f >> block_shift]} * s.slot_bytes + (kv != 0 ? v_offset : 0) +
                            static_cast<size_t>(f & (bt - 1)) * kD * sizeof(uint16_t) + vec * 16;
          AttnCpAsync16(buf + kv * kHalfBytes + (static_cast<size_t>(tok) * kL + vec) * 16, src);
        }
      }
    }
    AttnCpAsyncCommit();
  };
#pragma unroll
  for (int st = 0; st < kAttnPipeStages - 1; ++st) issue(st);

  float m[kHeads], l[kHeads], o[kHeads][8];
#pragma unroll
  for (int g = 0; g < kHeads; ++g) {
    m[g] = -INFINITY;
    l[g] = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; ++j) o[g][j] = 0.0f;
  }

  for (uint32_t st = 0; st < n_stages; ++st) {
    AttnCpAsyncWait<kAttnPipeStages - 2>();  // this thread's copies of stage st have landed
    __syncthreads();                         // everyone's; buffer (st − 1) % stages is free again
    issue(st + kAttnPipeStages - 1);
    const uint32_t t0 = st * kStageTok + warp * kTile;  // this warp's first token of the stage
    if (t0 >= valid) continue;                          // warp-uniform: nothing of this stage is ours
    const char* kbuf = stages + (st % kAttnPipeStages) * kAttnStageBytes<kD> + static_cast<size_t>(warp) * kTile * kD * 2;
    const char* vbuf = kbuf + kHalfBytes;
    float sc[kT][kHeads];
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      float kf[8];
      Unpack<kType>(*reinterpret_cast<const uint4*>(kbuf + (static_cast<size_t>(i * kR + rr) * kL + c) * 16), kf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
        float acc = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = fmaf(q[g][j], kf[j], acc);
        sc[i][g] = acc;
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i) {
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int off = kL / 2; off > 0; off /= 2) sc[i][g] += __shfl_xor_sync(0xffffffffu, sc[i][g], off);
      }
      const bool ok = t0 + i * kR + rr < valid;  // the same for the whole row group; stale bytes never count
#pragma unroll
      for (int g = 0; g < kHeads; ++g) sc[i][g] = ok ? sc[i][g] : -INFINITY;
    }
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
        sc[i][g] = exp2f(sc[i][g] - base);  // now the weight p
        l[g] += sc[i][g];
      }
    }
#pragma unroll
    for (int i = 0; i < kT; ++i) {
      // A masked row's weight is 0, but its V bytes are stale (never copied): skip it, so
      // 0 · (a stale NaN pattern) cannot reach o.
      if (t0 + i * kR + rr >= valid) continue;
      float vf[8];
      Unpack<kType>(*reinterpret_cast<const uint4*>(vbuf + (static_cast<size_t>(i * kR + rr) * kL + c) * 16), vf);
#pragma unroll
      for (int g = 0; g < kHeads; ++g) {
#pragma unroll
        for (int j = 0; j < 8; ++j) o[g][j] = fmaf(sc[i][g], vf[j], o[g][j]);
      }
    }
  }
  AttnCpAsyncWait<0>();  // only empty groups remain; drained before the buffers are reused
  __syncthreads();
  float* merge_o = reinterpret_cast<float*>(stages);
  FinishPiece<kD, kHeads, kType, kOut, false>(a, m, l, o, row, piece, pieces, out_base, partial, lse, counters, merge_m,
                                              merge_l, reinterpret_cast<float (*)[kHeads][kD]>(merge_o),
                                              merge_o + kWarps * kHeads * kD, last_s);
}

// CTAs per SM the register budget is sized for: 3 × 128 threads (≤ 168 registers) up to 4
// heads per CTA, 2 (≤ 255) for 8, whose q and o take 128 registers on their own.
// The deep variant (8 loads per tile, ≤ 4 heads) is sized for 2 (≤ 255).
constexpr int MinBlocks(int heads, bool deep) { return heads >= 8 || deep ? 2 : 3; }

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
auto KernelFor(bool deep) {
  if constexpr (kHeads <= 4) {
    if (deep) return &SparseAttentionKernel<kD, kHeads, kType, kOut, MinBlocks(kHeads, true), 8>;
  }
  return &SparseAttentionKernel<kD, kHeads, kType, kOut, MinBlocks(kHeads, false), 4>;
}

using KernelPtr = void (*)(SparseAttentionDeviceArgs, uint32_t, uint32_t, float*, float*, uint32_t*);

template <int kD, int kHeads, HalfType kType>
KernelPtr PickOut(AttentionOutput out, bool deep) {
  return out == AttentionOutput::kFloat32 ? KernelFor<kD, kHeads, kType, AttentionOutput::kFloat32>(deep)
                                          : KernelFor<kD, kHeads, kType, AttentionOutput::kInputType>(deep);
}

template <int kD, int kHeads>
KernelPtr PickType(HalfType type, AttentionOutput out, bool deep) {
  return type == HalfType::kBf16 ? PickOut<kD, kHeads, HalfType::kBf16>(out, deep)
                                 : PickOut<kD, kHeads, HalfType::kFp16>(out, deep);
}

template <int kD>
KernelPtr PickHeads(uint32_t heads, HalfType type, AttentionOutput out, bool deep) {
  switch (heads) {
    case 1: return PickType<kD, 1>(type, out, deep);
    case 2: return PickType<kD, 2>(type, out, deep);
    case 4: return PickType<kD, 4>(type, out, deep);
    case 8: return deep ? nullptr : PickType<kD, 8>(type, out, false);
    default: return nullptr;
  }
}

KernelPtr Pick(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out, bool deep = false) {
  switch (head_dim) {
    case 64: return PickHeads<64>(heads, type, out, deep);
    case 128: return PickHeads<128>(heads, type, out, deep);
    default: return nullptr;
  }
}

// The pipelined kernel: 3 CTAs per SM up to 4 heads (~64 KiB of stages each), 2 for 8.
template <int kD, int kHeads, HalfType kType>
KernelPtr PipelinedFor(AttentionOutput out) {
  return out == AttentionOutput::kFloat32
             ? &SparseAttentionPipelinedKernel<kD, kHeads, kType, AttentionOutput::kFloat32, MinBlocks(kHeads, false)>
             : &SparseAttentionPipelinedKernel<kD, kHeads, kType, AttentionOutput::kInputType, MinBlocks(kHeads, false)>;
}

template <int kD>
KernelPtr PipelinedHeads(uint32_t heads, HalfType type, AttentionOutput out) {
  const bool bf16 = type == HalfType::kBf16;
  switch (heads) {
    case 1: return bf16 ? PipelinedFor<kD, 1, HalfType::kBf16>(out) : PipelinedFor<kD, 1, HalfType::kFp16>(out);
    case 2: return bf16 ? PipelinedFor<kD, 2, HalfType::kBf16>(out) : PipelinedFor<kD, 2, HalfType::kFp16>(out);
    case 4: return bf16 ? PipelinedFor<kD, 4, HalfType::kBf16>(out) : PipelinedFor<kD, 4, HalfType::kFp16>(out);
    case 8: return bf16 ? PipelinedFor<kD, 8, HalfType::kBf16>(out) : PipelinedFor<kD, 8, HalfType::kFp16>(out);
    default: return nullptr;
  }
}

KernelPtr PickPipelined(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  switch (head_dim) {
    case 64: return PipelinedHeads<64>(heads, type, out);
    case 128: return PipelinedHeads<128>(heads, type, out);
    default: return nullptr;
  }
}

// Dynamic shared memory of a pipelined CTA (the same 64 KiB at d = 64 and 128), opted in
// once per kernel (above the 48 KiB default).
size_t PipelinedSmemBytes() { return kAttnPipeStages * kAttnStageBytes<128>; }
static_assert(kAttnStageBytes<64> == kAttnStageBytes<128>);

cudaError_t OptInPipelined(KernelPtr k) {
  // Remembered per kernel (32 instances at most), so a launch pays the attribute call once.
  static std::atomic<KernelPtr> done[64];
  for (auto& d : done) {
    const KernelPtr v = d.load(std::memory_order_acquire);
    if (v == k) return cudaSuccess;
    if (v == nullptr) break;
  }
  if (cudaError_t e = cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(PipelinedSmemBytes()));
      e != cudaSuccess) {
    return e;
  }
  for (auto& d : done) {  // a racing duplicate entry is harmless
    KernelPtr expected = nullptr;
    if (d.compare_exchange_strong(expected, k, std::memory_order_acq_rel) || expected == k) break;
  }
  return cudaSuccess;
}

// Tokens a CTA of the deep variant loads in one round: 4 warps × (256/d rows × 8 loads).
uint32_t DeepRoundTokens(uint32_t head_dim) { return kWarps * (256 / head_dim) * 8; }

bool ShapeSupported(const SparseAttentionShape& s) {
  const uint32_t bt = s.block_tokens;
  return s.requests > 0 && s.kv_heads > 0 && s.q_heads % s.kv_heads == 0 && s.q_heads >= s.kv_heads &&
         (s.head_dim == 64 || s.head_dim == 128) && bt > 0 && bt <= 256 && (bt & (bt - 1)) == 0 &&
         s.slot_bytes % 16 == 0 && s.slot_bytes >= s.slice_bytes();
}

}  // namespace

namespace {

SparseAttentionPlan PlanWithHeads(const SparseAttentionShape& shape, uint32_t heads, uint32_t max_pages_per_row,
                                  uint32_t sm_count, uint32_t ctas_per_sm) {
  SparseAttentionPlan p;
  if (shape.kv_heads == 0) return p;
  p.heads_per_cta = heads;
  p.rows = shape.requests * shape.kv_heads * (shape.group() / p.heads_per_cta);
  const uint64_t slots = uint64_t{std::max(sm_count, 1u)} * std::max(ctas_per_sm, 1u);
  const uint32_t pages = std::max(max_pages_per_row, 1u);
  const uint32_t min_chunk = std::min(pages, kSparseAttentionMinChunkPages);
  uint32_t best_chunk = 0;
  double best_use = -1;
  for (uint64_t waves = 1;; ++waves) {
    const uint64_t splits = std::max<uint64_t>(1, waves * slots / std::max(p.rows, 1u));
    const auto chunk = static_cast<uint32_t>(std::max<uint64_t>(min_chunk, (pages + splits - 1) / splits));
    if (chunk > kSparseAttentionMaxChunkPages) continue;
    const uint64_t ctas = uint64_t{p.rows} * ((pages + chunk - 1) / chunk);
    const double use = double(ctas) / double((ctas + slots - 1) / slots * slots);  // of the waves it occupies
    if (use > best_use + 1e-9) {
      best_use = use;
      best_chunk = chunk;
    }
    if (use >= 0.9 || chunk == min_chunk) break;
  }
  p.chunk_pages = best_chunk;
  p.max_splits = (pages + p.chunk_pages - 1) / p.chunk_pages;
  return p;
}

SparseAttentionPlan PlanWithHeads(const SparseAttentionShape& shape, uint32_t heads, uint32_t max_pages_per_row,
                                  uint32_t sm_count, uint32_t ctas_per_sm, uint32_t deep_ctas_per_sm) {
  SparseAttentionPlan p = PlanWithHeads(shape, heads, max_pages_per_row, sm_count, ctas_per_sm);
  if (deep_ctas_per_sm == 0 || p.heads_per_cta > 4 || p.rows == 0 || shape.block_tokens == 0 ||
      (shape.head_dim != 64 && shape.head_dim != 128)) {
    return p;
  }
  const uint32_t round = DeepRoundTokens(shape.head_dim);
  if (shape.block_tokens > round) return p;  // a page alone takes more than one round
  const uint32_t chunk = round / shape.block_tokens, pages = std::max(max_pages_per_row, 1u);
  const uint64_t splits = (pages + chunk - 1) / chunk;
  // Only where the standard plan's CTAs take more than one round (half a deep round: 4
  // loads per tile) and the deep pieces (one round each) all fit in one wave.
  if (uint64_t{p.chunk_pages} * shape.block_tokens <= round / 2 ||
      uint64_t{p.rows} * splits > uint64_t{std::max(sm_count, 1u)} * deep_ctas_per_sm || splits > 65535u * 1024u) {
    return p;
  }
  p.chunk_pages = chunk;
  p.max_splits = static_cast<uint32_t>(splits);
  p.tile_loads = 8;
  return p;
}

uint32_t Log2Heads(uint32_t heads) { return heads >= 8 ? 3 : heads >= 4 ? 2 : heads >= 2 ? 1 : 0; }

}  // namespace

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm) {
  if (shape.kv_heads == 0) return {};
  return PlanWithHeads(shape, HeadsPerCta(shape.group()), max_pages_per_row, sm_count, ctas_per_sm);
}

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm, uint32_t deep_ctas_per_sm) {
  if (shape.kv_heads == 0) return {};
  return PlanWithHeads(shape, HeadsPerCta(shape.group()), max_pages_per_row, sm_count, ctas_per_sm, deep_ctas_per_sm);
}

SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, const SparseAttentionOccupancy& occ) {
  if (shape.kv_heads == 0) return {};
  const uint32_t heads = HeadsPerCta(shape.group());
  const uint32_t sms = std::max(sm_count, 1u);
  auto plan = [&](uint32_t h) {
    return PlanWithHeads(shape, h, max_pages_per_row, sm_count, occ.standard[Log2Heads(h)], occ.deep[Log2Heads(h)]);
  };
  // CTAs of `p` resident at once if the whole grid is one wave of its variant, else 0.
  auto one_wave = [&](const SparseAttentionPlan& p) -> uint64_t {
    const uint32_t per_sm = p.tile_loads == 8 ? occ.deep[Log2Heads(p.heads_per_cta)]
                                              : occ.standard[Log2Heads(p.heads_per_cta)];
    const uint64_t ctas = uint64_t{p.rows} * p.max_splits;
    return per_sm > 0 && ctas <= uint64_t{sms} * per_sm ? ctas : 0;
  };
  const SparseAttentionPlan full = plan(heads);
  if (heads < 2 || occ.standard[Log2Heads(heads / 2)] == 0) return full;
  // Every K/V byte is read once per head chunk: half the heads per CTA reads it twice, the
  // second time from L2 only if the launch's K/V fits in it with room (≤ half).
  const uint64_t kv_bytes = uint64_t{shape.requests} * shape.kv_heads * std::max(max_pages_per_row, 1u) *
                            shape.slice_bytes();
  if (kv_bytes > occ.l2_bytes / 2) return full;
  const uint64_t resident = one_wave(full);
  if (resident == 0) return full;  // more than a wave: the SMs are full already
  const SparseAttentionPlan half = plan(heads / 2);
  return one_wave(half) > resident ? half : full;
}

SparseAttentionPlan PlanStagedSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                              uint32_t sm_count, const SparseAttentionStagedLimits& lim) {
  SparseAttentionPlan p;  // cluster 0: no staged plan
  if (shape.kv_heads == 0 || shape.q_heads % shape.kv_heads != 0 || lim.max_cluster < 2 || lim.ctas_per_sm == 0 ||
      max_pages_per_row == 0) {
    return p;
  }
  const uint32_t heads = std::min(HeadsPerCta(shape.group()), 4u);
  const uint64_t rows = uint64_t{shape.requests} * shape.kv_heads * (shape.group() / heads);
  if (rows == 0 || rows > 65535) return p;
  uint32_t cl = lim.max_cluster;
  while (cl > 2 && cl / 2 >= max_pages_per_row) cl /= 2;  // no cluster larger than the pages need
  for (; cl >= 2; cl /= 2) {
    const uint32_t chunk = (max_pages_per_row + cl - 1) / cl;
    const uint64_t dyn = uint64_t{chunk} * shape.slice_bytes();
    if (chunk > kStagedMaxChunkPages || dyn > lim.smem_per_cta) break;  // smaller clusters: longer pieces
    const uint64_t per_sm = std::min<uint64_t>(lim.ctas_per_sm, lim.smem_per_sm / (dyn + lim.static_smem + 1024));
    if (per_sm == 0 || rows * cl > uint64_t{std::max(sm_count, 1u)} * per_sm) continue;  // not one wave
    p.heads_per_cta = heads;
    p.rows = static_cast<uint32_t>(rows);
    p.chunk_pages = chunk;
    p.max_splits = cl;
    p.cluster = cl;
    return p;
  }
  return p;
}

cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionPlan* plan) {
  return PlanSparseAttentionForDevice(shape, type, max_pages_per_row, device, SparseAttentionKernels::kAuto, plan);
}

cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionKernels kernels, SparseAttentionPlan* plan) {
  if (plan == nullptr || !ShapeSupported(shape)) return cudaErrorInvalidValue;
  int sms = 0, per_sm = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device); e != cudaSuccess) return e;
  int l2 = 0;
  if (cudaError_t e = cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device); e != cudaSuccess) return e;
  SparseAttentionOccupancy occ;
  occ.l2_bytes = static_cast<uint64_t>(std::max(l2, 0));
  // Occupancy of the largest head chunk and of half of it (the batch-1 alternative).
  const uint32_t heads = HeadsPerCta(shape.group());
  for (uint32_t h : {heads, heads / 2}) {
    if (h == 0) continue;
    for (bool deep : {false, true}) {
      const KernelPtr k = Pick(shape.head_dim, h, type, AttentionOutput::kFloat32, deep);
      if (k == nullptr) continue;
      if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kThreads, 0); e != cudaSuccess) {
        return e;
      }
      (deep ? occ.deep : occ.standard)[Log2Heads(h)] = static_cast<uint32_t>(std::max(per_sm, 0));
    }
  }
  *plan = PlanSparseAttention(shape, max_pages_per_row, static_cast<uint32_t>(sms), occ);
  if (kernels == SparseAttentionKernels::kPipelined) {  // the pipelined plan (round 8; slower on the H100)
    const KernelPtr k = PickPipelined(shape.head_dim, heads, type, AttentionOutput::kFloat32);
    if (k == nullptr) return cudaErrorInvalidValue;
    if (cudaError_t e = OptInPipelined(k); e != cudaSuccess) return e;
    if (cudaError_t e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, k, kThreads, PipelinedSmemBytes());
        e != cudaSuccess) {
      return e;
    }
    *plan = PlanWithHeads(shape, heads, max_pages_per_row, static_cast<uint32_t>(sms),
                          static_cast<uint32_t>(std::max(per_sm, 1)));
    plan->pipeline_stages = kSparseAttentionPipelineStages;
  }
  if (kernels == SparseAttentionKernels::kAuto) {
    SparseAttentionStagedLimits lim;
    if (cudaError_t e = attention_internal::StagedLimitsForDevice(shape, type, std::min(heads, 4u), device, &lim);
        e != cudaSuccess) {
      return e;
    }
    const SparseAttentionPlan staged = PlanStagedSparseAttention(shape, max_pages_per_row, static_cast<uint32_t>(sms), lim);
    if (staged.cluster != 0) *plan = staged;
  }
  return cudaSuccess;
}

size_t SparseAttentionWorkspaceBytes(const SparseAttentionShape& shape, const SparseAttentionPlan& plan) {
  return WorkspaceLayout(shape, plan).total;
}

cudaError_t InitSparseAttentionWorkspace(void* workspace, const SparseAttentionShape& shape,
                                         const SparseAttentionPlan& plan, cudaStream_t stream) {
  if (workspace == nullptr) return cudaErrorInvalidValue;
  const Layout l = WorkspaceLayout(shape, plan);
  return cudaMemsetAsync(static_cast<char*>(workspace) + l.counters, 0, l.partial - l.counters, stream);
}

cudaError_t LaunchSparseAttention(const SparseAttentionDeviceArgs& a, const SparseAttentionPlan& plan,
                                  cudaStream_t stream) {
  const SparseAttentionShape& s = a.shape;
  if (!ShapeSupported(s) || a.arena == nullptr || a.queries == nullptr || a.page_offsets == nullptr ||
      a.page_slots == nullptr || a.last_page_tokens == nullptr || a.out == nullptr || a.workspace == nullptr ||
      reinterpret_cast<uintptr_t>(a.arena) % 16 != 0 || reinterpret_cast<uintptr_t>(a.queries) % 16 != 0 ||
      reinterpret_cast<uintptr_t>(a.workspace) % 16 != 0) {
    return cudaErrorInvalidValue;
  }
  const uint32_t h = plan.heads_per_cta;
  if ((h != 1 && h != 2 && h != 4 && h != 8) || s.group() % h != 0 || plan.chunk_pages == 0 ||
      plan.chunk_pages > kSparseAttentionMaxChunkPages || plan.max_splits == 0 || plan.max_splits > 65535u * 1024u ||
      plan.rows != s.requests * s.kv_heads * (s.group() / plan.heads_per_cta) || plan.rows > 65535 ||
      (plan.tile_loads != 0 && plan.tile_loads != 4 && plan.tile_loads != 8) ||
      (plan.pipeline_stages != 0 && (plan.pipeline_stages != kSparseAttentionPipelineStages || plan.tile_loads == 8 ||
                                     plan.cluster != 0))) {
    return cudaErrorInvalidValue;
  }
  if (plan.cluster != 0) return attention_internal::LaunchStaged(a, plan, stream);
  const bool pipelined = plan.pipeline_stages != 0;
  const KernelPtr kernel = pipelined ? PickPipelined(s.head_dim, plan.heads_per_cta, a.type, a.output)
                                     : Pick(s.head_dim, plan.heads_per_cta, a.type, a.output, plan.tile_loads == 8);
  if (kernel == nullptr) return cudaErrorInvalidValue;
  if (pipelined) {
    if (cudaError_t e = OptInPipelined(kernel); e != cudaSuccess) return e;
  }
  const Layout l = WorkspaceLayout(s, plan);
  char* ws = static_cast<char*>(a.workspace);
  const auto shift = static_cast<uint32_t>(__builtin_ctz(s.block_tokens));
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(plan.max_splits, plan.rows);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = pipelined ? PipelinedSmemBytes() : 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = a.programmatic_dependent_launch ? 1 : 0;
  return cudaLaunchKernelEx(&cfg, kernel, a, plan.chunk_pages, shift, reinterpret_cast<float*>(ws + l.partial),
                            reinterpret_cast<float*>(ws + l.lse), reinterpret_cast<uint32_t*>(ws + l.counters));
}

}  // namespace kvtier::kernels
