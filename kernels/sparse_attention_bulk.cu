// The bulk sparse attention kernel (SparseAttentionPlan::bulk): the streamed kernel's CTA
// shape, lane layout, tile order, tile math and end-of-piece merge, with the K/V pages brought
// into shared memory by Tensor Memory Accelerator bulk copies instead of into registers.
//
// Why: the streamed kernel keeps one tile of K and V (4 KiB) in flight per warp, and issues the
// next tile's loads only after the current tile's scores (K) or P·V (V), so an SM has at most
// ~48 KiB of loads in flight and fewer on average: ~2.0 TB/s at batch 1 over a dense 32K row,
// ~0.7 of a device-to-device copy. Here thread 0 keeps the next kBulkStages - 1 stages of 16 KiB
// (whole slices: K rows then V rows, as in the arena) in flight per CTA, ~144 KiB per SM at 3
// CTAs, and no register holds a byte in flight.
//
// A stage holds kStageTokens = 4 tiles of tokens (4096 / d: 32 at d = 128), i.e. 32 / block
// tokens slices; warp w computes tile w of the stage, which is tile 4·k + w of the piece at
// stage k: the streamed kernel's order exactly, so the same numbers bit for bit. Tokens past
// the piece's valid ones (the tail of the last page, read by the bulk copy with the rest of
// the slice) are never used: their K and V read as zeros and their scores are masked.
// Needs block_tokens <= kStageTokens (a stage of whole slices) and heads_per_cta <= 4.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "bulk_copy.cuh"
#include "sparse_attention.cuh"
#include "sparse_attention_streamed_internal.cuh"

namespace kvtier::kernels::attention_internal {
namespace {

constexpr uint32_t kBulkStageBytes = 16 << 10;

template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
__global__ void __launch_bounds__(kThreads, 3)
    SparseAttentionBulkKernel(SparseAttentionDeviceArgs a, uint32_t chunk_pages, uint32_t block_shift,
                              float* __restrict__ partial, float* __restrict__ lse, uint32_t* __restrict__ counters) {
  constexpr int kL = kD / 8;   // lanes per token row (one 16-byte vector each)
  constexpr int kR = 32 / kL;  // token rows per warp instruction
  constexpr int kT = 4;        // instructions per tile
  constexpr int kTile = kR * kT;
  constexpr uint32_t kStageTokens = kWarps * kTile;
  static_assert(kStageTokens * kD * 2 * 2 == kBulkStageBytes);
  extern __shared__ __align__(128) unsigned char ring[];  // kBulkStages stages, then the merge's buffers
  __shared__ uint32_t slots_s[kSparseAttentionMaxChunkPages];
  __shared__ __align__(8) uint64_t full[kBulkStages];
  __shared__ bool last_s;
  cudaGridDependencySynchronize();            // PDL launch: the previous kernel's writes are visible
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL-launched successor may start its prologue

  const SparseAttentionShape& s = a.shape;
  Piece pc;
  if (!PieceOf<kD, kHeads, kType, kOut>(a, chunk_pages, block_shift, slots_s, pc)) return;
  const uint32_t bt = 1u << block_shift, valid = pc.valid, np = pc.p1 - pc.p0;
  const size_t out_base = pc.out_base;
  const int tid = static_cast<int>(threadIdx.x);
  if (tid == 0) {
    for (uint32_t st = 0; st < kBulkStages; ++st) bulk::BarrierInit(&full[st]);
    bulk::BarrierInitFence();
  }

  const int warp = tid / 32, lane = tid % 32;
  const int c = lane % kL, rr = lane / kL;  // channel vector, token row within an instruction
  float q[kHeads][8];
  LoadQueries<kD, kHeads, kType>(a, out_base, c, q);
  __syncthreads();  // slots_s, the barriers

  const uint32_t slice_bytes = 2u * bt * kD * 2u;  // K rows then V rows
  const uint32_t pages_per_stage = kStageTokens >> block_shift;
  const uint32_t stages = (np + pages_per_stage - 1) / pages_per_stage;
  const char* arena = static_cast<const char*>(a.arena);
  // Thread 0: the slices of stage `st` into ring buffer st % kBulkStages, on its barrier.
  auto issue = [&](uint32_t st) {
    const uint32_t first = st * pages_per_stage, count = min(pages_per_stage, np - first);
    unsigned char* dst = ring + (st % kBulkStages) * kBulkStageBytes;
    uint64_t* bar = &full[st % kBulkStages];
    bulk::BarrierExpectBytes(bar, count * slice_bytes);
    for (uint32_t j = 0; j < count; ++j) {
      bulk::Load(dst + j * slice_bytes, arena + size_t{slots_s[first + j]} * s.slot_bytes, slice_bytes, bar);
    }
  };
  if (tid == 0) {
    for (uint32_t st = 0; st < min(stages, kBulkStages); ++st) issue(st);
  }

  float m[kHeads], l[kHeads], o[kHeads][8];
  InitState(m, l, o);
  const uint4 zero = make_uint4(0, 0, 0, 0);
  const uint32_t v_offset = bt * kD * 2u;
  for (uint32_t st = 0; st < stages; ++st) {
    const unsigned char* stage = ring + (st % kBulkStages) * kBulkStageBytes;
    const uint32_t stage_first = st * kStageTokens;
    const uint32_t base = stage_first + warp * kTile;  // this warp's tile
    bulk::BarrierWait(&full[st % kBulkStages], (st / kBulkStages) & 1u);
    if (base < valid) {
      auto at = [&](uint32_t f) {
        const uint32_t x = f - stage_first;
        return reinterpret_cast<const uint4*>(stage + (x >> block_shift) * slice_bytes + (x & (bt - 1)) * (kD * 2u) +
                                              c * 16u);
      };
      float sc[kT][kHeads];
#pragma unroll
      for (int i = 0; i < kT; ++i) {
        const uint32_t f = base + i * kR + rr;
        float kf[8];
        Unpack<kType>(f < valid ? *at(f) : zero, kf);
        RowScores(q, kf, sc[i]);
      }
      ReduceMaskScores<kL, kR>(sc, base, rr, valid);
      OnlineSoftmax(sc, m, l, o);
      AccumulatePV<kType>(
          sc,
          [&](int i) -> uint4 {
            const uint32_t f = base + i * kR + rr;
            return f < valid ? *reinterpret_cast<const uint4*>(reinterpret_cast<const char*>(at(f)) + v_offset) : zero;
          },
          o);
    }
    __syncthreads();  // every warp is done with the stage
    if (tid == 0 && st + kBulkStages < stages) issue(st + kBulkStages);
  }

  // The ring is free (the loop's last barrier): the merge's buffers live in it.
  using Merge = MergeBuffers<kD, kHeads>;
  static_assert(Merge::kBytes <= kBulkStages * kBulkStageBytes);
  const Merge merge(ring);
  FinishPiece<kD, kHeads, kType, kOut, false>(a, m, l, o, pc.row, pc.piece, pc.pieces, out_base, partial, lse,
                                              counters, merge.m, merge.l, merge.o, merge.w, last_s);
}

// The instances PickInstance takes.
struct Instances {
  using Ptr = KernelPtr;
  static constexpr int kMaxHeads = 4;
  template <int kD, int kHeads, HalfType kType, AttentionOutput kOut>
  static KernelPtr Of() {
    return &SparseAttentionBulkKernel<kD, kHeads, kType, kOut>;
  }
};

}  // namespace

KernelPtr PickBulk(uint32_t head_dim, uint32_t heads, HalfType type, AttentionOutput out) {
  return PickInstance<Instances>(head_dim, heads, type, out);
}

bool BulkFits(const SparseAttentionShape& shape, uint32_t heads) {
  return (shape.head_dim == 64 || shape.head_dim == 128) && heads <= 4 && shape.block_tokens != 0 &&
         shape.block_tokens <= 4096 / shape.head_dim && shape.slot_bytes % 16 == 0;
}

}  // namespace kvtier::kernels::attention_internal
