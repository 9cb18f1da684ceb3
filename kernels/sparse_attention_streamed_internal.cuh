// Internal to the streamed sparse attention kernel (sparse_attention_streamed.cu: round 6,
// registers) and its planner and launch (sparse_attention.cu): the CTA shape, the device
// helpers, the end-of-piece merge and the kernel selection. Not part of the public API. (The
// staged variant, sparse_attention_staged.cu, has its own CTA shape: it does not include
// this; the tile math both use is in sparse_attention_tile.cuh.)
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "cp_async.cuh"
#include "sparse_attention.cuh"
#include "sparse_attention_tile.cuh"

namespace kvtier::kernels::attention_internal {

inline constexpr int kWarps = 4;
inline constexpr int kThreads = 32 * kWarps;
inline constexpr uint32_t kMergeStage = 1024;  // (piece, head) weights of a row staged for the merge

template <HalfType kType>
__device__ __forceinline__ uint16_t ToHalfBits(float x) {
  if constexpr (kType == HalfType::kBf16) return __bfloat16_as_ushort(__float2bfloat16_rn(x));
  else return __half_as_ushort(__float2half_rn(x));
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

// A CTA of the streamed grid (piece blockIdx.x of row blockIdx.y): its pages [p0, p1) of the
// row, the tokens valid in them, and where its outputs go.
struct Piece {
  uint32_t row, piece, pieces;  // pieces: of this row (a shorter row has fewer than gridDim.x)
  uint32_t p0, p1, valid;
  size_t out_base;
};

// Where the CTA's piece lies, from the row's page offsets and last-page tokens alone (no slot
// is read, nothing written): kRun; kFill: the row's first CTA writes the row's fill (FillRow:
// zeros for a row with no page, NaN for a row longer than the plan allows, so misuse cannot
// pass for a result); kSkip: nothing to do (a piece past the row's end, or another CTA fills).
enum class PieceKind { kRun, kFill, kSkip };
template <int kD, int kHeads>
__device__ __forceinline__ PieceKind PlacePiece(const SparseAttentionDeviceArgs& a, uint32_t chunk_pages,
                                                uint32_t block_shift, Piece& p) {
  p.row = blockIdx.y;
  p.piece = blockIdx.x;
  const AttentionRow r = RowOf<kD, kHeads>(a, p.row);
  p.out_base = r.out_base;
  const uint32_t n = r.end - r.begin;
  p.pieces = (n + chunk_pages - 1) / chunk_pages;
  if (n == 0 || p.pieces > gridDim.x) return p.piece == 0 ? PieceKind::kFill : PieceKind::kSkip;
  if (p.piece >= p.pieces) return PieceKind::kSkip;
  p.p0 = r.begin + p.piece * chunk_pages;
  p.p1 = min(p.p0 + chunk_pages, r.end);
  const uint32_t bt = 1u << block_shift;
  const uint32_t last = min(__ldcg(&a.last_page_tokens[r.page_row]), bt);
  p.valid = (p.p1 - p.p0) * bt - (p.p1 == r.end ? bt - last : 0u);
  return PieceKind::kRun;
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__device__ __forceinline__ void FillRow(const SparseAttentionDeviceArgs& a, const Piece& p) {
  const float fill = p.pieces == 0 ? 0.0f : __int_as_float(0x7fc00000);
  for (int i = static_cast<int>(threadIdx.x); i < kHeads * kD; i += kThreads) {
    WriteOutput<kD, kHeads, kType, kOut>(a.out, p.out_base + i, fill);
  }
}

// The piece's slot ids into slots_s (read them after a barrier).
__device__ __forceinline__ void StageSlots(const SparseAttentionDeviceArgs& a, const Piece& p, uint32_t* slots_s) {
  for (uint32_t i = threadIdx.x; i < p.p1 - p.p0; i += kThreads) slots_s[i] = a.page_slots[p.p0 + i];
}

// The CTA's piece, its slot ids staged in slots_s (read them after a barrier). false when
// the CTA has no piece (PlacePiece; the fill written where it is this CTA's). Every kernel of
// the streamed grid (streamed, bulk, tensor-core) starts here or with its parts.
template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__device__ __forceinline__ bool PieceOf(const SparseAttentionDeviceArgs& a, uint32_t chunk_pages, uint32_t block_shift,
                                        uint32_t* slots_s, Piece& p) {
  const PieceKind kind = PlacePiece<kD, kHeads>(a, chunk_pages, block_shift, p);
  if (kind == PieceKind::kFill) FillRow<kD, kHeads, kType, kOut>(a, p);
  if (kind != PieceKind::kRun) return false;
  StageSlots(a, p, slots_s);
  return true;
}

// The merge's buffers (FinishFromWarps) carved out of a kernel's dynamic shared memory, for
// the kernels whose K/V ring is free by the time a piece ends (bulk, tensor-core): the warps'
// m and l, their unnormalised o, and the merge's staged weights.
template <int kD, int kHeads>
struct MergeBuffers {
  static constexpr size_t kBytes = sizeof(float) * (kWarps * kHeads * (2 + kD) + kMergeStage);
  float (&m)[kWarps][kHeads];
  float (&l)[kWarps][kHeads];
  float (*o)[kHeads][kD];
  float* w;
  __device__ explicit MergeBuffers(unsigned char* p)
      : m(*reinterpret_cast<float(*)[kWarps][kHeads]>(p)),
        l(*reinterpret_cast<float(*)[kWarps][kHeads]>(p + sizeof(float) * kWarps * kHeads)),
        o(reinterpret_cast<float(*)[kHeads][kD]>(p + 2 * sizeof(float) * kWarps * kHeads)),
        w(reinterpret_cast<float*>(p + sizeof(float) * kWarps * kHeads * (2 + kD))) {}
};

// The end of a piece once every warp's state (m, l, unnormalised o per head) is in merge_m,
// merge_l, merge_o and visible to the CTA: merge the warps (fixed order), then write the
// output (a row of one piece) or the piece's (o/l, log2 Σ) and, in the last CTA of the row to
// finish, merge the row's pieces. merge_o holds kWarps·kHeads·kD floats, merge_w
// kMergeStage. kDeep: the deep variant's wider merge rounds. (The streamed and bulk kernels
// come here through FinishPiece; the tensor-core kernel writes its warps' state itself.)
// claims: the row's claim counters of a balanced plan (reset with the row's counter once
// every CTA of the row has counted itself out), else nullptr. stage / stage_bytes: shared
// memory free for the merge (16-byte aligned, not aliasing merge_*), where the merging CTA
// stages the row's partials when they fit (the tensor-core kernel's ring), else nullptr.
template <int kD, int kHeads, HalfType kType, AttentionOutput kOut, bool kDeep>
__device__ __forceinline__ void FinishFromWarps(const SparseAttentionDeviceArgs& a, uint32_t row, uint32_t piece,
                                                uint32_t pieces, size_t out_base, float* __restrict__ partial,
                                                float* __restrict__ lse, uint32_t* __restrict__ counters,
                                                float (&merge_m)[kWarps][kHeads], float (&merge_l)[kWarps][kHeads],
                                                float (*merge_o)[kHeads][kD], float* merge_w, bool& last_s,
                                                uint32_t* __restrict__ claims = nullptr,
                                                unsigned char* stage = nullptr, size_t stage_bytes = 0) {
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid / 32, lane = tid % 32;
  const bool single = pieces == 1;
  const size_t piece_base = (size_t{row} * gridDim.x + piece) * kHeads;  // (row, piece, head 0)
  for (int i = tid; i < kHeads * kD; i += kThreads) {
    const int g = i / kD, dim = i % kD;
    float mm, ll, oo;
    MergeWarps(merge_m, merge_l, merge_o, g, dim, mm, ll, oo);
    const float value = ll > 0.0f ? oo / ll : 0.0f;
    if (single) {
      WriteOutput<kD, kHeads, kType, kOut>(a.out, out_base + i, value);
    } else {
      partial[(piece_base + g) * kD + dim] = value;
      if (dim == 0) lse[piece_base + g] = ll > 0.0f ? mm + log2f(ll) : -INFINITY;
    }
  }
  if (single) {
    if (claims != nullptr && tid == 0) claims[row] = 0;  // the CTA's warps claimed their last tiles before the barrier
    return;
  }

  // Last CTA of the row merges (threadFenceReduction pattern: every thread fences its
  // partial writes before the count; the last one fences again before reading).
  __threadfence();
  __syncthreads();
  if (tid == 0) last_s = atomicAdd(&counters[row], 1u) == pieces - 1;
  __syncthreads();
  if (!last_s) return;
  __threadfence();
  // The row's partial outputs: staged in shared memory by cp.async in one round trip when the
  // caller has room (`stage`: the tensor-core kernel's free ring), so the merge waits for one
  // L2/DRAM round trip instead of one per round of pieces below. Same values, same order of
  // sums either way.
  const size_t row_base = size_t{row} * gridDim.x * kHeads;
  const uint32_t entries = pieces * kHeads;
  const float* staged = nullptr;
  if (stage != nullptr && entries <= kMergeStage && size_t{entries} * kD * sizeof(float) <= stage_bytes) {
    const float* src = partial + row_base * kD;  // the row's pieces: contiguous, 16-byte aligned
    for (uint32_t i = tid; i < entries * (kD / 4); i += kThreads) cp_async::Copy16(stage + 16 * size_t{i}, src + 4 * i);
    cp_async::Commit();
    staged = reinterpret_cast<const float*>(stage);
  }
  // Parallel merge. Entry i = p·kHeads + g of the row's (piece, head) list; thread t sees
  // only head t % kHeads (kHeads divides kThreads). 1: every thread loads its entries' lse
  // (independent loads, all in flight), the per-head max M_g by shuffles + one shared step;
  // 2: the weights 2^(lse − M_g) (staged in shared memory when the row has ≤ kMergeStage
  // entries) and their per-head sum l_g the same way; 3: each thread's outputs as
  // Σ_p w_pg · partial_pg / l_g, kU pieces × kOuts outputs of loads in flight per round.
  // Fixed order of every sum: deterministic whatever the arrival order of the pieces.
  const bool stage_w = entries <= kMergeStage;
  {
    float mx = -INFINITY;
    for (uint32_t i = tid; i < entries; i += kThreads) {
      const float v = __ldcg(&lse[row_base + i]);
      if (stage_w) merge_w[i] = v;
      mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int off = 16; off >= kHeads; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
    if (lane < kHeads) merge_m[warp][lane] = mx;
  }
  if (staged != nullptr) cp_async::Wait<0>();  // visible to the CTA after the barrier
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
      const float w = exp2f((stage_w ? merge_w[i] : __ldcg(&lse[row_base + i])) - base);
      if (stage_w) merge_w[i] = w;
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
    base_j[j] = stage_w ? 0.0f : head_max(g_j[j]);
  }
  if (staged != nullptr) {
    // Staged: the weights and every piece's outputs are in shared memory; a short loop
    // (staging implies entries ≤ kMergeStage, so the weights are staged too). Same sums in the
    // same order as the rounds below.
    for (uint32_t p = 0; p < pieces; ++p) {
#pragma unroll
      for (int j = 0; j < kOuts; ++j) {
        const int i = tid + j * kThreads;
        const uint32_t e = p * kHeads + g_j[j];
        if (i < kHeads * kD) acc[j] = fmaf(merge_w[e], staged[e * kD + i % kD], acc[j]);
      }
    }
  } else {
    // From L2: kU pieces × kOuts outputs of loads in flight per round, each output's address
    // stepping by one piece from its own base. The round is kept short: the merge runs once
    // per row, its code is fetched cold, and a long unrolled round (both weight paths inline)
    // cost ~2 µs per round on an H100 (docs/sparse.md, round 11).
    constexpr size_t kStride = size_t{kHeads} * kD;  // floats from one piece to the next
    const float* src[kOuts];
#pragma unroll
    for (int j = 0; j < kOuts; ++j) src[j] = partial + (row_base + g_j[j]) * kD + (tid + j * kThreads) % kD;
    if (stage_w) {
      for (uint32_t p0 = 0; p0 < pieces; p0 += kU) {
        float x[kU][kOuts];
#pragma unroll
        for (int u = 0; u < kU; ++u) {
#pragma unroll
          for (int j = 0; j < kOuts; ++j) {
            const bool in = p0 + u < pieces && tid + j * kThreads < kHeads * kD;
            x[u][j] = in ? __ldcg(src[j] + (p0 + u) * kStride) : 0.0f;
          }
        }
#pragma unroll
        for (int u = 0; u < kU; ++u) {
          if (p0 + u >= pieces) break;
#pragma unroll
          for (int j = 0; j < kOuts; ++j) acc[j] = fmaf(merge_w[(p0 + u) * kHeads + g_j[j]], x[u][j], acc[j]);
        }
      }
    } else {
      // More than kMergeStage entries (rows of hundreds of pieces): the weights from the
      // log-sum-exps again, one piece at a time.
      for (uint32_t p = 0; p < pieces; ++p) {
#pragma unroll
        for (int j = 0; j < kOuts; ++j) {
          if (tid + j * kThreads >= kHeads * kD) continue;
          const float w = exp2f(__ldcg(&lse[row_base + p * kHeads + g_j[j]]) - base_j[j]);
          acc[j] = fmaf(w, __ldcg(src[j] + p * kStride), acc[j]);
        }
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
  if (tid == 0) {  // ready for the next launch (stream order)
    counters[row] = 0;
    if (claims != nullptr) claims[row] = 0;  // every CTA of the row claimed its last tile before counting
  }
}

// The end of a piece of the streamed kernel: merge the row groups of each warp into
// merge_* (lanes c, c + kL, ...), then FinishFromWarps.
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
  MergeRowGroups<kL>(m, l, o);
  StoreWarpState<kD>(m, l, o, warp, c, rr, merge_m, merge_l, merge_o);
  __syncthreads();
  FinishFromWarps<kD, kHeads, kType, kOut, kDeep>(a, row, piece, pieces, out_base, partial, lse, counters, merge_m,
                                                  merge_l, merge_o, merge_w, last_s);
}

// CTAs per SM the register budget is sized for: 3 × 128 threads (≤ 168 registers) up to 4
// heads per CTA, 2 (≤ 255) for 8, whose q and o take 128 registers on their own.
// The deep variant (8 loads per tile, ≤ 4 heads) is sized for 2 (≤ 255).
constexpr int MinBlocks(int heads, bool deep) { return heads >= 8 || deep ? 2 : 3; }

using KernelPtr = void (*)(SparseAttentionDeviceArgs, uint32_t, uint32_t, float*, float*, uint32_t*);

// The streamed kernel (sparse_attention_streamed.cu) of (head_dim, heads, type, out); deep:
// the deep variant (8 loads per tile, ≤ 4 heads). nullptr where there is none.
KernelPtr Pick(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out, bool deep = false);

// The instance of a kernel family for (head_dim, heads, type, out): K::Of<kD, kHeads, kType,
// kOut>() (a K::Ptr) for d 64 or 128 and heads 1, 2, 4 (and 8 when K::kMaxHeads is 8), else
// nullptr. The bulk and tensor-core kernels pick their instances so.
template <class K, int kD, int kHeads, HalfType kType>
typename K::Ptr PickInstanceOf(AttentionOutput out) {
  return out == AttentionOutput::kFloat32 ? K::template Of<kD, kHeads, kType, AttentionOutput::kFloat32>()
                                          : K::template Of<kD, kHeads, kType, AttentionOutput::kInputType>();
}
template <class K, int kD, int kHeads>
typename K::Ptr PickInstanceOf(HalfType type, AttentionOutput out) {
  return type == HalfType::kBf16 ? PickInstanceOf<K, kD, kHeads, HalfType::kBf16>(out)
                                 : PickInstanceOf<K, kD, kHeads, HalfType::kFp16>(out);
}
template <class K, int kD>
typename K::Ptr PickInstanceOf(uint32_t heads, HalfType type, AttentionOutput out) {
  switch (heads) {
    case 1: return PickInstanceOf<K, kD, 1>(type, out);
    case 2: return PickInstanceOf<K, kD, 2>(type, out);
    case 4: return PickInstanceOf<K, kD, 4>(type, out);
    case 8:
      if constexpr (K::kMaxHeads >= 8) return PickInstanceOf<K, kD, 8>(type, out);
      return nullptr;
    default: return nullptr;
  }
}
template <class K>
typename K::Ptr PickInstance(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  switch (head_dim) {
    case 64: return PickInstanceOf<K, 64>(heads, type, out);
    case 128: return PickInstanceOf<K, 128>(heads, type, out);
    default: return nullptr;
  }
}

// The bulk kernel (sparse_attention_bulk.cu, SparseAttentionPlan::bulk): the streamed
// kernel's standard tiles with K/V pages streamed into kBulkStages shared-memory stages of 16
// KiB by TMA bulk copies; kBulkRingBytes of dynamic shared memory (the merge reuses it).
// nullptr where there is none (heads > 4, head_dim not 64 or 128).
inline constexpr uint32_t kBulkStages = 4;
inline constexpr uint32_t kBulkRingBytes = kBulkStages * (16u << 10);
KernelPtr PickBulk(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out);
// Whether the bulk kernel takes `shape` at `heads` per CTA: d 64 or 128, ≤ 4 heads, whole
// slices per stage (block_tokens ≤ 4096 / d: 32 at d = 128), 16-byte slot strides.
bool BulkFits(const SparseAttentionShape& shape, uint32_t heads);

// The tensor-core kernel (sparse_attention_mma.cu, SparseAttentionPlan::mma): the streamed
// kernel's grid and merge, each warp's tiles of 16 tokens through its own ring of
// kMmaBuffers shared-memory buffers, scores and P·V by mma.sync; MmaSmemBytes(head_dim) of
// dynamic shared memory. nullptr where there is none (heads not 1, 2, 4 or 8; head_dim not 64
// or 128). Its last argument: nullptr = static pieces; else one claim counter per row
// (SparseAttentionPlan::balance: the row's CTAs claim its tiles from it).
inline constexpr uint32_t kMmaBuffers = 3;
using MmaKernelPtr = void (*)(SparseAttentionDeviceArgs, uint32_t, uint32_t, float*, float*, uint32_t*, uint32_t*);
MmaKernelPtr PickMma(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out);
uint32_t MmaSmemBytes(uint32_t head_dim);

}  // namespace kvtier::kernels::attention_internal
