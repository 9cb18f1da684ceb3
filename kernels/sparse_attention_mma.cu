// The tensor-core sparse attention kernel (SparseAttentionPlan::mma): the streamed kernel's
// grid, pieces, workspace and merge, with each warp's scores and P·V computed by mma.sync
// instead of per-lane dot products and shuffle reductions.
//
// Why: at batch 1 the streamed kernel is issue-bound (ncu, H100: 62% of issue slots used,
// DRAM at 53%): a 16-token tile costs it ~2.8k instructions per warp. Here a tile costs
// 16 cp.async per lane, 8 + 8 ldmatrix, 2·kD/16 + 2·kD/8 mma (d = 128: 16 for QKᵀ, 32 for
// P·V) and a short softmax.
//
// Per warp, tiles of 16 tokens of the piece, round-robin over the CTA's 4 warps (tile w,
// w + 4, ...), each through the warp's own ring of kBuffers shared-memory buffers (cp.async,
// one commit group per tile; the next tile loads while this one is computed; no CTA barrier
// in the loop). A buffer holds the tile's K rows then V rows, 16 × kD values each, every
// 16-byte chunk j of row r stored at chunk j ^ (r & 7) so that ldmatrix reads 8 rows without
// bank conflicts. Tokens past the piece's valid ones are zero-filled (never read).
//
//   Sᵀ[16 × 16] = Q[16 × kD] · Kᵀ    A: the CTA's kHeads query heads in rows 0..kHeads-1 (the
//                                    rest zero), bf16/fp16 exactly as given, from shared
//                                    memory; B: K rows by ldmatrix. fp32, then × log2(e)/√d.
//   online softmax per head (row g = lane / 4 of the C fragment; 4 lanes share a head)
//   O[16 × kD] += P · V             A: P from the C fragments (the FlashAttention register
//                                    reuse), in two 16-bit parts p_hi + p_lo so that P keeps
//                                    ~16 bits of precision; B: V rows by ldmatrix.trans.
//
// The warps' (m, l, O) go to the merge buffers (aliasing the ring) and the streamed kernel's
// FinishFromWarps writes the piece. Not bit-equal to the streamed kernel (other summation
// order); within fp32 rounding of the reference.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <type_traits>

#include "cp_async.cuh"
#include "mma.cuh"
#include "sparse_attention.cuh"
#include "sparse_attention_streamed_internal.cuh"

namespace kvtier::kernels::attention_internal {
namespace {

constexpr int kTileTokens = 16;

template <HalfType kType>
using MmaType = std::conditional_t<kType == HalfType::kBf16, __nv_bfloat16, __half>;

// Two floats as one 32-bit register of 16-bit values (the first in the low half), and what
// rounding left over.
template <HalfType kType>
__device__ __forceinline__ uint32_t PackRounded(float x, float y, float& rx, float& ry) {
  if constexpr (kType == HalfType::kBf16) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(x, y);
    rx = x - __low2float(v);
    ry = y - __high2float(v);
    return *reinterpret_cast<const uint32_t*>(&v);
  } else {
    const __half2 v = __floats2half2_rn(x, y);
    rx = x - __low2float(v);
    ry = y - __high2float(v);
    return *reinterpret_cast<const uint32_t*>(&v);
  }
}
template <HalfType kType>
__device__ __forceinline__ uint32_t Pack(float x, float y) {
  float rx, ry;
  return PackRounded<kType>(x, y, rx, ry);
}

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__global__ void __launch_bounds__(kThreads, 2)
    SparseAttentionMmaKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift,
                             float* __restrict__ partial, float* __restrict__ lse, uint32_t* __restrict__ counters,
                             uint32_t* __restrict__ claims) {
  static_assert(kHeads <= 8, "query heads fill rows 0..7 of the mma tile");
  using T = MmaType<kType>;
  constexpr int kChunks = kD / 8;                              // 16-byte chunks per token row
  constexpr uint32_t kRowBytes = kD * 2;
  constexpr uint32_t kHalfBytes = kTileTokens * kRowBytes;     // K (or V) of a tile
  constexpr uint32_t kBufBytes = 2 * kHalfBytes;
  constexpr uint32_t kRingBytes = kWarps * kMmaBuffers * kBufBytes;
  constexpr int kLoadsPerLane = 2 * kTileTokens * kChunks / 32;
  constexpr int kSteps = kD / 16;                              // k16 steps of QKᵀ
  constexpr int kDTiles = kD / 8;                              // n8 tiles of O
  extern __shared__ __align__(128) unsigned char ring[];       // kWarps x kMmaBuffers buffers
  __shared__ uint32_t slots_s[kSparseAttentionMaxChunkPages];
  // Q as the A operand: rows = heads (rows kHeads..7 zero), two 16-bit values per word; rows
  // padded by 4 words so that the 8 rows a fragment load reads fall in different banks.
  __shared__ uint32_t q_s[8][kD / 2 + 4];
  __shared__ bool last_s;
  // With early_inputs the piece's place and the queries are read before the PDL wait (the
  // predecessor writes only the page slots); otherwise nothing is read before it.
  auto wait = [] {
    cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
    cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue
  };
  if (!a.early_inputs) wait();
  const SparseAttentionShape& s = a.shape;
  Piece pc;
  const PieceKind kind = PlacePiece<kD, kHeads>(a, chunk_pages, block_shift, pc);
  const uint32_t bt = 1u << block_shift;
  const size_t out_base = pc.out_base;
  const int tid = static_cast<int>(threadIdx.x);
  if (kind == PieceKind::kRun) {
    for (int i = tid; i < 8 * kD / 2; i += kThreads) {  // through L2: see RowOf
      const int h = i / (kD / 2), w = i % (kD / 2);
      q_s[h][w] =
          h < kHeads ? __ldcg(reinterpret_cast<const uint32_t*>(a.queries + out_base + static_cast<size_t>(h) * kD) + w)
                     : 0u;
    }
  }
  if (a.early_inputs) wait();
  if (kind == PieceKind::kFill) FillRow<kD, kHeads, kType, kOut>(a, pc);
  if (kind != PieceKind::kRun) return;
  StageSlots(a, pc, slots_s);
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, t = lane % 4;  // fragment row (query head) and column pair

  // What this CTA reads. Static (claims == nullptr): its piece, slots staged in slots_s, warp w
  // taking the piece's tiles w, w + 4, ... Balanced: the whole row, whose tiles every CTA of
  // the row claims one at a time from claims[row] (block_tokens ≥ 16: a tile lies in one page).
  const bool balanced = claims != nullptr;
  uint32_t valid = pc.valid;
  const uint32_t* row_slots = nullptr;
  if (balanced) {
    const AttentionRow r = RowOf<kD, kHeads>(a, pc.row);
    valid = (r.end - r.begin) * bt - (bt - min(a.last_page_tokens[r.page_row], bt));
    row_slots = a.page_slots + r.begin;
  }
  const uint32_t tiles = (valid + kTileTokens - 1) / kTileTokens;
  __syncthreads();  // slots_s, q_s

  const char* arena = static_cast<const char*>(a.arena);
  unsigned char* buffers = ring + static_cast<size_t>(warp) * kMmaBuffers * kBufBytes;
  // Tile `tile`'s K and V rows into buffer `b` (zeros past the valid tokens); one commit group
  // is the caller's. `slot`: the tile's page (balanced), else looked up in slots_s.
  auto load = [&](uint32_t tile, uint32_t slot, uint32_t b) {
    unsigned char* buf = buffers + b * kBufBytes;
#pragma unroll
    for (int i = 0; i < kLoadsPerLane; ++i) {
      const int x = lane + 32 * i;
      const int kv = x / (kTileTokens * kChunks), y = x % (kTileTokens * kChunks);
      const int rr = y / kChunks, j = y % kChunks;
      const uint32_t f = tile * kTileTokens + rr;
      const bool ok = f < valid;
      const uint32_t sl = balanced ? slot : slots_s[ok ? f >> block_shift : 0];
      const char* src = arena + size_t{sl} * s.slot_bytes + static_cast<size_t>(kv) * bt * kRowBytes +
                        size_t{f & (bt - 1)} * kRowBytes + j * 16;
      cp_async::Copy16OrZero(buf + kv * kHalfBytes + rr * kRowBytes + ((j ^ (rr & 7)) * 16), src, ok);
    }
  };

  const float scale = kLog2e * rsqrtf(static_cast<float>(kD));
  float m = -INFINITY, l = 0.0f;  // head g: running max (log2 domain), this lane's part of Σp
  float o[kDTiles][4];
#pragma unroll
  for (int d = 0; d < kDTiles; ++d) o[d][0] = o[d][1] = o[d][2] = o[d][3] = 0.0f;

  // One tile (its first token `first`) from buffer b, once its copies have landed.
  auto compute = [&](uint32_t b, uint32_t first) {
    const unsigned char* kbuf = buffers + b * kBufBytes;
    const unsigned char* vbuf = kbuf + kHalfBytes;
    // Sᵀ = Q Kᵀ: n8 tiles of tokens 0-7 and 8-15. ldmatrix x4: lane l gives row l % 8 of
    // matrix l / 8 = (token half, k half).
    float sc[2][4] = {};
#pragma unroll
    for (int k = 0; k < kSteps; ++k) {
      const int mi = lane / 8, rr = (mi / 2) * 8 + lane % 8, j = 2 * k + (mi % 2);
      uint32_t kb[4];
      mma::LoadMatrices<false>(kb, kbuf + rr * kRowBytes + ((j ^ (rr & 7)) * 16));
      const uint32_t af[4] = {q_s[g][8 * k + t], 0u, q_s[g][8 * k + 4 + t], 0u};  // rows 8..15 zero
      mma::Mma(sc[0], af, kb[0], kb[1], T{});
      mma::Mma(sc[1], af, kb[2], kb[3], T{});
    }
    // Online softmax for head g over the tile's tokens (this lane: 2t, 2t+1, 8+2t, 9+2t).
    float x[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const uint32_t token = first + (e / 2) * 8 + 2 * t + (e % 2);
      x[e] = token < valid ? sc[e / 2][e % 2] * scale : -INFINITY;
    }
    float mx = fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(m, mx);  // finite: the tile has a valid token
    const float alpha = exp2f(m - m_new);
    float p[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = exp2f(x[e] - m_new);
    l = l * alpha + ((p[0] + p[1]) + (p[2] + p[3]));
    m = m_new;
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      o[d][0] *= alpha;
      o[d][1] *= alpha;
    }
    // P as the A operand (rows = heads, k = the tile's 16 tokens), high and low parts.
    float rest[4];
    const uint32_t hi[4] = {PackRounded<kType>(p[0], p[1], rest[0], rest[1]), 0u,
                            PackRounded<kType>(p[2], p[3], rest[2], rest[3]), 0u};
    const uint32_t lo[4] = {Pack<kType>(rest[0], rest[1]), 0u, Pack<kType>(rest[2], rest[3]), 0u};
    // O += P V: ldmatrix.trans x4 over (token half, d tile) for two d tiles at a time.
#pragma unroll
    for (int d = 0; d < kDTiles; d += 2) {
      const int mi = lane / 8, rr = (mi % 2) * 8 + lane % 8, j = d + mi / 2;
      uint32_t vb[4];
      mma::LoadMatrices<true>(vb, vbuf + rr * kRowBytes + ((j ^ (rr & 7)) * 16));
      mma::Mma(o[d], hi, vb[0], vb[1], T{});
      mma::Mma(o[d], lo, vb[0], vb[1], T{});
      mma::Mma(o[d + 1], hi, vb[2], vb[3], T{});
      mma::Mma(o[d + 1], lo, vb[2], vb[3], T{});
    }
  };

  static_assert(kMmaBuffers == 3, "the loops below keep two tiles in flight");
  if (!balanced) {
    const uint32_t mine = tiles > static_cast<uint32_t>(warp) ? (tiles - warp + kWarps - 1) / kWarps : 0u;
#pragma unroll
    for (uint32_t b = 0; b + 1 < kMmaBuffers; ++b) {
      if (b < mine) load(warp + kWarps * b, 0, b);
      cp_async::Commit();
    }
    for (uint32_t i = 0; i < mine; ++i) {
      const uint32_t ahead = i + kMmaBuffers - 1;
      if (ahead < mine) load(warp + kWarps * ahead, 0, ahead % kMmaBuffers);
      cp_async::Commit();
      cp_async::Wait<kMmaBuffers - 1>();
      __syncwarp();  // every lane's copies of tile i have landed
      compute(i % kMmaBuffers, (warp + kWarps * i) * kTileTokens);
      __syncwarp();  // every lane is done with the buffer before it is refilled
    }
  } else {
    // Claims run ahead of the ring: while tile t0 is computed, t1 is in flight, t2's copies are
    // issued (its slot fetched one iteration earlier), t3's slot is fetched, and t4 is claimed.
    // A warp's claims only grow (one address, one thread), so the first past the row's end ends
    // the warp, and no claim is left unread when it does.
    uint32_t* claim = claims + pc.row;
    const uint32_t page_shift = block_shift - 4;  // tiles per page = 2^page_shift
    auto slot_of = [&](uint32_t tile) { return tile < tiles ? row_slots[tile >> page_shift] : 0u; };
    uint32_t first3 = 0;
    if (lane == 0) first3 = atomicAdd(claim, 3u);
    first3 = __shfl_sync(0xffffffffu, first3, 0);
    uint32_t t0 = first3, t1 = first3 + 1, t2 = first3 + 2, t3 = 0, pend = 0;
    if (t0 < tiles) load(t0, slot_of(t0), 0);
    cp_async::Commit();
    if (t1 < tiles) load(t1, slot_of(t1), 1);
    cp_async::Commit();
    uint32_t s2 = slot_of(t2);
    if (lane == 0 && t2 < tiles) pend = atomicAdd(claim, 1u);
    for (uint32_t i = 0; t0 < tiles; ++i) {
      if (t2 < tiles) load(t2, s2, (i + 2) % kMmaBuffers);
      cp_async::Commit();
      t3 = t2 < tiles ? __shfl_sync(0xffffffffu, pend, 0) : tiles;
      const uint32_t s3 = slot_of(t3);
      if (lane == 0 && t3 < tiles) pend = atomicAdd(claim, 1u);
      cp_async::Wait<kMmaBuffers - 1>();
      __syncwarp();  // every lane's copies of tile t0 have landed
      compute(i % kMmaBuffers, t0 * kTileTokens);
      __syncwarp();  // every lane is done with the buffer before it is refilled
      t0 = t1;
      t1 = t2;
      t2 = t3;
      s2 = s3;
    }
  }
  cp_async::Wait<0>();
  l += __shfl_xor_sync(0xffffffffu, l, 1);
  l += __shfl_xor_sync(0xffffffffu, l, 2);

  // The warps' state into the merge buffers, which alias the ring: after every warp is done.
  // The rest of the ring stages the row's partial outputs if this CTA merges them.
  using Merge = MergeBuffers<kD, kHeads>;
  static_assert(Merge::kBytes <= kRingBytes);
  constexpr size_t kStageAt = (Merge::kBytes + 127) / 128 * 128;
  const Merge merge(ring);
  __syncthreads();
  if (g < kHeads) {
    if (t == 0) {
      merge.m[warp][g] = m;
      merge.l[warp][g] = l;
    }
#pragma unroll
    for (int d = 0; d < kDTiles; ++d) {
      merge.o[warp][g][d * 8 + 2 * t] = o[d][0];
      merge.o[warp][g][d * 8 + 2 * t + 1] = o[d][1];
    }
  }
  __syncthreads();
  FinishFromWarps<kD, kHeads, kType, kOut, false>(a, pc.row, pc.piece, pc.pieces, out_base, partial, lse, counters,
                                                  merge.m, merge.l, merge.o, merge.w, last_s, claims,
                                                  ring + kStageAt, kRingBytes - kStageAt);
}

// The instances PickInstance takes.
struct Instances {
  using Ptr = MmaKernelPtr;
  static constexpr int kMaxHeads = 8;
  template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
  static MmaKernelPtr Of() {
    return &SparseAttentionMmaKernel<kD, kHeads, kType, kOut>;
  }
};

}  // namespace

MmaKernelPtr PickMma(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  return PickInstance<Instances>(head_dim, heads, type, out);
}

uint32_t MmaSmemBytes(uint32_t head_dim) { return kWarps * kMmaBuffers * 2 * kTileTokens * head_dim * 2; }

}  // namespace kvtier::kernels::attention_internal
