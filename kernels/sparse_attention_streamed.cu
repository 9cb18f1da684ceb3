// Why this shape: decode attention reads each K/V byte once and does ~2 flops per byte per
// query head, so it is a streaming problem. Each lane owns 8 channels (one 16-byte vector)
// of kD/8-lane "row groups"; a warp loads kR = 32·8/kD token rows per instruction and kT
// instructions per tile for K and as many for V, so 1 KiB·kT is in flight per warp with no
// shared-memory staging; the next tile's loads are issued before the current tile's
// softmax and P·V. Dot products are reduced over a row group with log2(kD/8) shuffles; each
// row group keeps its own online softmax (running max m, sum l, accumulator o, in the log2
// domain: q is pre-scaled by log2(e)/√d), merged across row groups, warps and pieces with
// the usual (m, l, o) rule at the end.
// This file: the round-6 streamed kernel (K/V in registers) and its selection by shape.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "sparse_attention.cuh"
#include "sparse_attention_streamed_internal.cuh"

namespace kvtier::kernels::attention_internal {
namespace {

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
  Piece pc;
  if (!PieceOf<kD, kHeads, kType, kOut>(a, chunk_pages, block_shift, slots_s, pc)) return;
  const uint32_t bt = 1u << block_shift, valid = pc.valid;
  const size_t out_base = pc.out_base;
  const int tid = static_cast<int>(threadIdx.x);

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  LoadQueries<kD, kHeads, kType>(a, out_base, c, q);
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
  InitState(m, l, o);

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
      RowScores(q, kf, sc[i]);
    }
    if (next < tiles) load_k(next, kreg);
    ReduceMaskScores<kL, kR>(sc, tile * kTile, rr, valid);
    OnlineSoftmax(sc, m, l, o);
    AccumulatePV<kType>(sc, [&](int i) -> const uint4& { return vreg[i]; }, o);
    if (next < tiles) load_v(next, vreg);
  }

  FinishPiece<kD, kHeads, kType, kOut, kT == 8>(a, m, l, o, pc.row, pc.piece, pc.pieces, out_base, partial, lse,
                                                counters, merge_m, merge_l, merge_o, merge_w, last_s);
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
auto KernelFor(bool deep) {
  if constexpr (kHeads <= 4) {
    if (deep) return &SparseAttentionKernel<kD, kHeads, kType, kOut, MinBlocks(kHeads, true), 8>;
  }
  return &SparseAttentionKernel<kD, kHeads, kType, kOut, MinBlocks(kHeads, false), 4>;
}

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

}  // namespace

KernelPtr Pick(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out, bool deep) {
  switch (head_dim) {
    case 64: return PickHeads<64>(heads, type, out, deep);
    case 128: return PickHeads<128>(heads, type, out, deep);
    default: return nullptr;
  }
}

}  // namespace kvtier::kernels::attention_internal
