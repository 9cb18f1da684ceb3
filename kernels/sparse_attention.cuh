// Paged decode attention on the GPU, flash-decoding style: the numbers of the CPU reference
// (kernels/reference/sparse_attention.h, which documents the arena, the page lists and the
// formula) over device-resident views. Sparse attention lists the selected slices of each
// (request, KV head); dense attention lists every block. The caller owns every buffer, the
// workspace included; nothing here allocates or synchronises.
//
// One launch on `stream`; two kernels. The staged one (plan.cluster > 0; short lists at small
// batch, sparse_attention_staged.cu) is described at SparseAttentionPlan::cluster. The
// streamed one: grid (splits, rows): a row is (request, KV head, head chunk), a
// head chunk being `heads_per_cta` query heads of the KV head's GQA group (all of them for
// groups 1, 2, 4, 8), so each K/V byte is read once per chunk. A row's page list is cut into
// pieces of `chunk_pages`; the CTA of piece s streams its K/V tokens straight into registers
// (16-byte loads, a warp's next tile in flight while it computes the current one), keeps an
// online softmax per query head in fp32, and merges its warps. A row of one piece writes the
// output; otherwise each piece writes (o/l, log2 Σ) to the workspace and the last CTA of the
// row to finish (a counter per row) merges the pieces — in parallel (every piece's loads in
// flight at once, per-head max and sum by a block reduction), in a fixed order of sums,
// deterministic whatever the arrival order — and writes the output.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "reference/sparse_attention.h"

namespace kvtier::kernels {

enum class AttentionOutput : uint8_t { kFloat32 = 0, kInputType = 1 };

// How a launch is cut. Chosen on the host from the shape (PlanSparseAttention); the same
// plan sizes the workspace and drives the launch.
struct SparseAttentionPlan {
  uint32_t heads_per_cta = 0;  // 1, 2, 4 or 8: query heads one CTA serves (divides group)
  uint32_t chunk_pages = 0;    // pages of one CTA (the last piece of a row may hold fewer)
  uint32_t max_splits = 0;     // pieces of the longest row: gridDim.x
  uint32_t rows = 0;           // requests · kv_heads · group / heads_per_cta: gridDim.y
  // K (and V) loads per warp tile: 0 or 4 = the standard kernel (3 CTAs per SM); 8 = the
  // deep variant for short page lists (heads_per_cta ≤ 4; 2 CTAs per SM): a piece of one
  // round (4 warps × 8 loads: 64 tokens at d = 128) has all its K/V loads in flight at once,
  // and the merge keeps 64 loads per thread in flight. Same numbers (same order of sums per
  // row group; only the cut into pieces differs, as with any chunk_pages).
  uint32_t tile_loads = 0;
  // > 0: the STAGED kernel (PlanStagedSparseAttention): the max_splits (= cluster) pieces of a
  // row are one thread-block cluster of 256-thread CTAs; each copies its whole piece into
  // shared memory (cp.async) and the pieces merge through distributed shared memory (no
  // workspace traffic, no counters). heads_per_cta ≤ 4; tile_loads unused. 0: the streamed kernel.
  uint32_t cluster = 0;
  // true (streamed plans only: cluster 0, tile_loads 0 or 4, heads_per_cta ≤ 4): the BULK
  // kernel — the streamed kernel's tiles, with K/V pages streamed into four 16 KiB
  // shared-memory stages by TMA bulk copies (three stages of loads in flight per CTA instead of
  // one tile per warp in registers); needs block_tokens ≤ 4096 / head_dim. Same numbers as the
  // streamed kernel with standard tiles on the same cut, bit for bit.
  bool bulk = false;
  // true (streamed plans only, not with bulk or deep tiles): the TENSOR-CORE kernel — the
  // streamed kernel's grid, pieces and merge, with each warp's 16-token tiles staged in shared
  // memory (cp.async) and Q·Kᵀ and P·V computed by mma.sync (P in two 16-bit parts). Within
  // fp32 rounding of the reference; not bit-equal to the streamed kernel.
  bool mma = false;
  // true (tensor-core plans only; block_tokens ≥ 16): BALANCED rows — the row's CTAs (the
  // plan's pieces) share its tiles of 16 tokens through a claim counter per row instead of
  // each reading a fixed piece, so a CTA on a faster SM reads more of the row and they finish
  // together. Same merge (one partial per CTA). Not bit-reproducible from run to run: which CTA
  // sums which tile depends on timing (each result within fp32 rounding of the reference).
  bool balance = false;
};

// Balanced rows need whole 16-token tiles within a page.
inline constexpr uint32_t kSparseAttentionBalanceMinBlockTokens = 16;

// Pages one staged CTA may hold (its slot ids sit in a fixed shared array).
inline constexpr uint32_t kStagedMaxChunkPages = 64;

// What the staged planner needs to know of the device (StagedLimits... fills it from the
// device; zeros mean "no staged kernel").
struct SparseAttentionStagedLimits {
  uint32_t max_cluster = 0;   // largest cluster launched (16 on an H100: non-portable opt-in; else 8)
  uint32_t ctas_per_sm = 0;   // resident CTAs per SM by registers and threads
  uint64_t smem_per_sm = 0;   // shared memory of an SM, bytes
  uint64_t smem_per_cta = 0;  // dynamic shared memory one CTA may have (opt-in), bytes
  uint64_t static_smem = 0;   // the kernel's fixed shared memory per CTA, bytes
};

// The staged plan (pure): heads_per_cta = the largest of 4/2/1 dividing the group, rows as
// usual, and the LARGEST cluster c ≤ max_cluster (a power of two, no larger than the pages
// need) whose pieces of ⌈pages / c⌉ pages fit a CTA's shared memory and whose rows · c CTAs
// are one wave (resident at once, shared memory and registers counted). Returns a plan with
// cluster = 0 where none fits (long lists, large batches: the streamed kernel's case).
// Llama-3-8B, budget 2048 (128 pages of 16) at batch 1 on an H100: 8 rows × 16 CTAs of 8
// pages (64 KB each) = 128 CTAs; batch 8 (1024 CTAs of 64 KB) is more than a wave: streamed.
SparseAttentionPlan PlanStagedSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                              uint32_t sm_count, const SparseAttentionStagedLimits& limits);

inline constexpr uint32_t kSparseAttentionMaxChunkPages = 256;  // slot ids staged in shared memory
inline constexpr uint32_t kSparseAttentionMinChunkPages = 4;

// The split heuristic (pure; documented in docs/sparse.md): with `slots` = sm_count ·
// ctas_per_sm CTAs resident at once and rows of `max_pages_per_row` pages, try w = 1, 2, ...
// waves: cut each row into floor(w · slots / rows) pieces (at most kMaxChunkPages, at least
// kMinChunkPages pages each) and take the first w whose CTAs use ≥ 90% of the waves they
// occupy (else the best seen before the pieces reach the minimum). Equal rows then fill
// whole waves (no nearly-empty last wave), a batch too small to fill the machine is split
// until it does, and pieces stay as long as that allows (fewer partials to merge).
SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm);

// The same, then the deep plan for short page lists (the sparse decode case): when
// deep_ctas_per_sm > 0 (occupancy of the deep variant), heads_per_cta ≤ 4, a page fits in one
// deep round and the standard plan's pieces are longer than one round, pieces of one round
// each (chunk_pages = 64 tokens' pages at d = 128, 128 at d = 64; tile_loads = 8) if they all
// fit in one wave (rows · pieces ≤ sm_count · deep_ctas_per_sm). Llama-3-8B, budget 2048
// (128 pages of 16) at batch 1 on an H100: 8 rows × 32 pieces of 4 pages = 256 CTAs ≤ 264,
// every K/V load of a CTA issued before its first dot product; batch 8 keeps the standard plan.
SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, uint32_t ctas_per_sm, uint32_t deep_ctas_per_sm);

// CTAs per SM of each kernel variant, indexed by log2(heads_per_cta) (0 = unknown / none),
// and the L2 size, for the planner below.
struct SparseAttentionOccupancy {
  uint32_t standard[4] = {};  // 4 loads per tile
  uint32_t deep[4] = {};      // 8 loads per tile (heads_per_cta ≤ 4)
  uint64_t l2_bytes = 0;
};

// The same, also choosing heads_per_cta: the largest of 8/4/2/1 dividing the group (as
// above), or half of it when rows are few (batch 1): when the launch's K/V (requests ·
// kv_heads · max_pages_per_row slices) fits in half the L2, the largest-chunk plan is one
// wave, and the half-chunk plan (its own standard/deep choice) is one wave of at least as
// many CTAs (round 12c: on a tie too — each CTA then streams twice the pages and a row merges
// half as many pieces; before, only of more CTAs).
// Half the heads per CTA = half the q/o/score registers (H100, d 128: 112 instead of 159
// standard, 161 instead of 226–255 deep), so more CTAs resident; each K/V byte is then read
// twice, the second time from L2. Same numbers up to the order of the merge's sums.
// Llama-3-8B, budget 2048 at batch 1 on an H100: 16 rows × 32 pieces of 4 pages, 2 heads per
// CTA, 4 loads per tile (512 CTAs at 4 per SM, instead of 256 at 2).
SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, const SparseAttentionOccupancy& occupancy);

// The last, with sm_count, the L2 size and the occupancies of `device` for this shape and
// type (of the kernel instances the launch may use).
cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionPlan* plan);

// Which kernels PlanSparseAttentionForDevice may choose (every value names a plan):
//   kAuto = 0      the default (round 12c): the tensor-core kernel's plan (kMma), which takes
//                  half the heads per CTA for short page lists at small batch (the sparse
//                  step at batch 1); where it does not but the streamed planner takes a
//                  short-list plan (half the heads or deep tiles), that streamed plan (round
//                  11c's default there). On an H100 the batch-1 step with the tensor-core
//                  half-heads plan was 1.07x (32K) and 1.01-1.03x (128K) round 11c's
//                  streamed one in three runs each;
//   kStreamed = 1  the register-tile streamed plan (round 6), standard or deep;
//   kMma = 3       the tensor-core kernel (SparseAttentionPlan::mma) on the streamed split
//                  heuristic with that kernel's occupancy (round 10; dense attention and the
//                  batch-8 sparse step by default since round 10c);
//   kMmaBalanced = 4  the kMma plan with balanced rows (SparseAttentionPlan::balance) where
//                  block_tokens ≥ 16 (else the kMma plan as is): 1.006-1.034x kMma on dense
//                  attention (round 11, H100), slower on short sparse lists, and not
//                  bit-reproducible from run to run — opt-in;
//   kStaged = 5    the staged plan where one fits (PlanStagedSparseAttention), else kMma's —
//                  the default of rounds 7 to 11.
// (Round 8's pipelined streamed kernel, value 2, was slower than the streamed one in every
// case measured on the H100 and was removed: docs/sparse.md, round 8.) Any other value:
// cudaErrorInvalidValue.
enum class SparseAttentionKernels : uint8_t { kAuto = 0, kStreamed = 1, kMma = 3, kMmaBalanced = 4, kStaged = 5 };
cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionKernels kernels, SparseAttentionPlan* plan);

// Split rules of the streamed plan (round 9d). kDefault = 0: the heuristics above. Candidates
// are selectable for measurement (`kvtier bench decode --attention-rule`, the `dense_r9d` row);
// none is the default:
//   kRound9Dense = 1 ("r9d", dense-length rows at small batch): where rows have ≥
//     kDenseRuleMinPages pages and the default streamed plan is standard tiles (4 loads) whose
//     CTAs are ONE wave, the same split heuristic from w = kDenseRuleMinWaves waves on (same
//     heads per CTA): short pieces in several waves, so each CTA's start (page list, slots,
//     first tile: dependent DRAM round trips) and end (partial write, fence, counter) overlap
//     other CTAs' streaming and the SMs that finish early take more work — batch 8 (several
//     waves by the default rule) reaches 0.90–0.94x of the copy where batch 1 (one wave)
//     reaches 0.69–0.86x. Against it: more pieces to merge (the last row's merge is exposed).
//     Llama-3-8B on an H100 (132 SMs × 3): b1/32K 8 rows × 147 pieces of 14 pages (1176 CTAs,
//     3 waves) instead of 49 × 42; b1/128K 147 × 56 instead of 49 × 168; batch 8 and sparse
//     lists unchanged. Same numbers up to the order of the merge's sums.
enum class SparseAttentionRule : uint8_t { kDefault = 0, kRound9Dense = 1 };
inline constexpr uint32_t kDenseRuleMinPages = 1024;  // 16K tokens of 16-token pages
inline constexpr uint32_t kDenseRuleMinWaves = 3;

// PlanSparseAttention(shape, pages, sm_count, occupancy) with `rule` applied (pure).
SparseAttentionPlan PlanSparseAttention(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                        uint32_t sm_count, const SparseAttentionOccupancy& occupancy,
                                        SparseAttentionRule rule);

// The device planner with `rule` applied to the split of the streamed or tensor-core plan
// (where kStaged picks the staged plan, it stays: the staged kernel holds ≤ 64 pages per CTA,
// never dense-length rows).
cudaError_t PlanSparseAttentionForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t max_pages_per_row,
                                         int device, SparseAttentionKernels kernels, SparseAttentionRule rule,
                                         SparseAttentionPlan* plan);

// CTAs of the streamed kernel resident per SM of the current device for (shape's head_dim,
// type, output, heads_per_cta, tile_loads 0/4 = standard or 8 = deep); 0 where there is no
// such instance. For tools that report waves (`kvtier bench decode --sweep`).
cudaError_t SparseAttentionCtasPerSm(const SparseAttentionShape& shape, HalfType type, AttentionOutput output,
                                     uint32_t heads_per_cta, uint32_t tile_loads, uint32_t* ctas_per_sm);
// The same for the kernel a plan runs (streamed standard or deep, bulk, tensor-core with its
// shared memory); 0 for a staged plan (clusters: not this launch shape).
cudaError_t SparseAttentionCtasPerSm(const SparseAttentionShape& shape, HalfType type, AttentionOutput output,
                                     const SparseAttentionPlan& plan, uint32_t* ctas_per_sm);

// Overrides of the streamed plan, for tuning (`kvtier bench decode --sweep`, round 9). A zero
// field keeps the planner's choice, so a default-constructed one changes nothing.
struct SparseAttentionPlanOverrides {
  uint32_t heads_per_cta = 0;  // 1, 2, 4 or 8, dividing the group (rows follow)
  uint32_t chunk_pages = 0;    // pages per CTA, 1 .. kSparseAttentionMaxChunkPages
  uint32_t splits = 0;         // or: pieces per row (chunk_pages = ⌈pages / splits⌉; the plan's
                               // max_splits may come out lower); not together with chunk_pages
  uint32_t tile_loads = 0;     // 4 (standard tiles, 3 CTAs per SM at 4 heads) or 8 (deep, 2 CTAs
                               // per SM: twice the loads in flight per warp; heads_per_cta ≤ 4)
  uint32_t bulk = 0;           // 1: the bulk kernel (SparseAttentionPlan::bulk), 2: registers
                               // (the streamed kernel), 0: as planned
  uint32_t mma = 0;            // 1: the tensor-core kernel (SparseAttentionPlan::mma), 2: not, 0: as planned
  uint32_t balance = 0;        // 1: balanced rows (SparseAttentionPlan::balance; needs mma), 2: static, 0: as planned
};

inline bool IsDefault(const SparseAttentionPlanOverrides& o) {
  return o.heads_per_cta == 0 && o.chunk_pages == 0 && o.splits == 0 && o.tile_loads == 0 && o.bulk == 0 &&
         o.mma == 0 && o.balance == 0;
}

// Pure (no device). `base`: a streamed plan (cluster 0) for `shape`, rows of ≤
// max_pages_per_row pages (PlanSparseAttentionForDevice with SparseAttentionKernels::kStreamed).
// Sets *plan to `base` with `overrides` applied and returns nullptr, or returns what is wrong
// (a static string) and leaves *plan alone. Any plan it returns computes the same attention
// (up to the order of the merge's fp32 sums); only speed changes.
const char* ApplySparseAttentionOverrides(const SparseAttentionShape& shape, uint32_t max_pages_per_row,
                                          const SparseAttentionPlan& base, const SparseAttentionPlanOverrides& overrides,
                                          SparseAttentionPlan* plan);

// Device bytes of scratch for `plan`: a counter per row (two for a balanced plan: the second
// hands out its tiles), then per (row, piece, head) a partial output [d] and its
// log2-sum-exp, fp32.
size_t SparseAttentionWorkspaceBytes(const SparseAttentionShape& shape, const SparseAttentionPlan& plan);

// Zeroes the counters: once after allocating the workspace (every launch leaves them at zero
// again). The partial outputs need no initialisation.
cudaError_t InitSparseAttentionWorkspace(void* workspace, const SparseAttentionShape& shape,
                                         const SparseAttentionPlan& plan, cudaStream_t stream);

struct SparseAttentionDeviceArgs {
  SparseAttentionShape shape;  // head_dim ∈ {64, 128}; block_tokens a power of two ≤ 256;
                               // slot_bytes a multiple of 16 and ≥ slice_bytes()
  HalfType type = HalfType::kBf16;
  AttentionOutput output = AttentionOutput::kFloat32;
  const void* arena = nullptr;                  // slot s at arena + s·slot_bytes, 16-B aligned
  const uint16_t* queries = nullptr;            // [requests][q_heads][d]
  const uint32_t* page_offsets = nullptr;       // [rows + 1] CSR over r·kv_heads + h
  const uint32_t* page_slots = nullptr;         // [page_offsets[rows]]
  const uint32_t* last_page_tokens = nullptr;   // [rows], 1..block_tokens
  void* out = nullptr;                          // [requests][q_heads][d], fp32 or `type`
  void* workspace = nullptr;                    // SparseAttentionWorkspaceBytes(plan), 16-B aligned
  // Launch with programmatic dependent launch (PDL): the CTAs may be scheduled while the
  // previous kernel on the stream (e.g. LaunchQuestSelect, which triggers at its start) still
  // runs; they wait for its completion and writes in cudaGridDependencySynchronize() before
  // reading anything. Same result, bit for bit.
  bool programmatic_dependent_launch = false;
  // With programmatic_dependent_launch, behind a kernel that writes only page_slots of these
  // inputs (LaunchQuestSelect's selection: the top-k launch writes nothing else, and every
  // kernel before it has completed once its CTAs run): the tensor-core kernel reads the page
  // offsets, last-page tokens and queries before its PDL wait, so only the slots and the K/V
  // are left after it (one round trip fewer; round 13b, docs/sparse.md). The other kernels
  // ignore it. Same result, bit for bit.
  bool early_inputs = false;
};

// Enqueues the attention. Every row's page count must be ≤ the plan's max_pages_per_row
// (longer rows would be cut short — the binding layer checks it). cudaErrorInvalidValue for
// an unsupported shape, a plan that does not match it, or a null pointer; otherwise the
// launch error, if any. A row with no pages gets zeros.
cudaError_t LaunchSparseAttention(const SparseAttentionDeviceArgs& args, const SparseAttentionPlan& plan,
                                  cudaStream_t stream);

}  // namespace kvtier::kernels
