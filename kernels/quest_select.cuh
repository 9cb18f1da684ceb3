// Quest page selection on the GPU, batched over requests (each with its own number of
// blocks) and KV heads: the result of the CPU reference (kernels/reference/quest_select.h,
// which is the contract: QuestScoresQuantized then QuestSelectTopK) for every (request, KV
// head) at once. The caller owns every buffer; nothing here allocates or synchronises.
//
// Two launches on `stream`:
//   1. scores  grid (pieces of a row, KV heads, requests), 256 threads, sized so the grid
//              is one wave: 8 lanes per slice (16 channels each at d = 128). By default
//              (QuestScoreAlgorithm::kPipelined, rule QuestScorePreset::kRound9Wave) a CTA
//              copies tiles of 64 slices to shared memory with cp.async, 2 buffers (the next
//              tile in flight while it scores one; 4 buffers, round 8's, where a CTA would
//              get < 3 tiles), each thread 2 slices per tile; kRegisterRing keeps 4 passes
//              of 32 slices in flight per thread in registers. The group's query heads are
//              staged once per CTA. Sum: Σ_g q_gi·(q_gi ≥ 0 ? M_i : m_i) = M_i·P_i + m_i·N_i with
//              P_i = Σ_g max(q_gi, 0), N_i = Σ_g min(q_gi, 0), two registers per channel
//              whatever the group; max: the same split per query head (q⁺, q⁻ staged per chunk
//              of 4 heads), one int8 conversion per channel for all heads, then the max.
//   2. top-k   one CTA per (request, KV head). By default (QuestTopKAlgorithm::kAuto) a
//              launch whose max_blocks is ≤ 8192 takes kDigits (≤ 2048 until the eighth
//              session), a longer one the radix path for every row: 1024 threads, 2
//              consecutive blocks per thread (8 above 2048 blocks), ≤ 3 passes of an 11-bit
//              digit below the bits all candidates share, one block-scan compaction (see the
//              enum). With kBisection, 1024 threads: ≤ 8
//              keys per thread in registers, K = OrderedKey(score) << 32 | ~index (distinct,
//              ordered as the reference ranks: score, then lower index); the rest-th largest
//              K found by bisection from the top bit (one block-wide count per bit, early exit
//              once exactly `rest` keys are above), then one compaction in block order of the
//              forced blocks and K ≥ T. Longer rows: the row's order-preserving
//              keys staged once in shared memory (rows ≤ 11264 blocks); radix select (up to
//              4 passes of 8 bits, warp-aggregated histogram, early exit once the selected
//              bin is taken whole) finds the k-th largest value T and how many ties at T to
//              take; one ballot compaction in block order then writes forced blocks, scores
//              > T, and the lowest-index ties = T — the sorted selection, with ties going to
//              the lower index exactly as the reference.
// With `row_counters` the two are one launch: the last score CTA of a row does its top-k.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "reference/quest_select.h"

namespace kvtier::kernels {

enum class QuestQueryType : uint8_t { kFloat32 = 0, kBf16 = 1, kFp16 = 2 };

// The top-k launch's algorithm for rows of ≤ 8192 blocks (longer rows always take the radix
// path below). Same selection, bit for bit, either way.
//   kDigits     (round 7) consecutive blocks in registers, 1024 threads per row (2 blocks
//               per thread up to 2048 blocks, 8 up to 8192); the bits every candidate shares
//               found by one AND/OR reduction, then ≤ 3 passes of an 11-bit digit (shared
//               histogram, 2 barriers a pass, the bin search done redundantly by every
//               warp), one block scan for the compaction: ~6–8 barriers per row.
//   kBisection  (round 5) 64-bit (score, index) keys bisected bit by bit, one barrier per
//               bit (~43 at 2048 blocks).
//   kAuto       (default) kDigits when the launch's max_blocks is ≤ kDigitTopKAutoMaxBlocks
//               (8192), else the radix path. Up to the eighth session kAuto took the digits
//               only up to 2048 blocks (round 8 run: 21.5 µs against the bisection's 15.9 at
//               8192); with the eighth session's search (docs/sparse.md, round 12) the
//               1024-thread digits take 10.6 µs against 15.8 there, and the sparse step at
//               128K gets 1.15–1.22× faster.
enum class QuestTopKAlgorithm : uint8_t { kDigits = 0, kBisection = 1, kAuto = 2 };
inline constexpr uint32_t kDigitTopKAutoMaxBlocks = 8192;

// The score launch's kernel (the separate launch; the fused one-launch path always takes
// kRegisterRing). Two contracts: the fp32 kernels kPipelined and kRegisterRing give the same
// scores, bit for bit (same lane → channel split, same order of every sum); kTensorCore gives
// the fixed-point form's. All are within the tolerance of the CPU reference that the GPU
// tests check.
//   kPipelined     (round 8, the default until round 13) tiles of 64 slices copied to shared memory with
//                  cp.async into a ring of tile buffers (no register budget for loads: ≤ 80
//                  registers, 3 CTAs of 256 per SM); each thread scores 2 slices per tile, so
//                  one shared q⁺/q⁻ load serves both. Its launch shape (buffers, tiles per
//                  CTA) is QuestScoreShape's (default: the kRound9Wave rule). Needs `bounds`
//                  16-byte and `scales` 4-byte aligned (else kRegisterRing is used).
//   kRegisterRing  (round 4) 4 passes of 16-byte loads in flight per thread in registers
//                  (~127 registers, 2 CTAs per SM) — kept to compare the two in one run.
//   kTensorCore    (default since round 13) int8 tensor-core GEMM of the bounds with the
//                  queries in fixed point (kernels/reference/quest_select.h,
//                  QuestScoresFixedPoint, bit for bit): not bit-equal to the two fp32 kernels
//                  above, within the same tolerance of QuestScoresQuantized plus the
//                  fixed-point rounding of the queries (≤ 2^(E − 23) per weight; see the
//                  reference; none for bf16 queries whose values span ≤ 15 binades). Tiles of
//                  64 slices through cp.async, 2 buffers, 128 threads, one wave. H100 sparse
//                  step vs kPipelined: 0.99x b1/32K, 1.05x b8/32K, 1.09x b1/128K, 1.08x
//                  b8/128K (docs/sparse.md, round 13). Needs `bounds` 16-byte and `scales`
//                  4-byte aligned and, with kMax, a group of ≤ kTensorCoreScoreMaxGroup heads
//                  (else kRegisterRing runs); no score_shape fields (its own fixed shape).
enum class QuestScoreAlgorithm : uint8_t { kPipelined = 0, kRegisterRing = 1, kTensorCore = 2 };
inline constexpr uint32_t kTensorCoreScoreMaxGroup = 16;

// Rules that choose the pipelined score kernel's launch shape (QuestScoreShape::preset). The
// zero value, kRound9Wave, is the rule in force (a default-constructed shape runs it); the
// others stay selectable so that one GPU run can time them against it (`kvtier bench
// decode`: sparse_graph_r8, `--score-preset`; docs/sparse.md, round 9). Each resolves, per
// launch, to the shape it gives (QuestScoreShapeOfPreset):
//   kRound9Wave  (default since round 9) 2 tile buffers, 2 slices per thread (tiles of 64
//                slices), the one-wave grid: ⌊resident·SMs / rows⌋ CTAs per row (3 per SM
//                on the H100), each ⌈tiles of the row / that⌉ tiles. H100 graph step vs
//                round 8: 1.00x b1/32K (falls back), 1.05x b8/32K, 1.08x b1/128K, 1.03x
//                b8/128K (docs/sparse.md, "Round 9, default").
//   kRound8      (the default of round 8, for comparison) 4 buffers, 2 slices per thread,
//                the same one-wave grid: kQuestScoreRound8Shape.
//   kRound9      (a candidate that lost: 0.86x at b8/128K) 2 buffers, 2 slices per thread,
//                ⌊2·SMs / rows⌋ CTAs per row (≈ 2 CTAs per SM in all, of the 3 resident).
// The round-9 rules give the round-8 shape where they would give a CTA fewer than
// kQuestScorePresetMinTilesPerCta tiles (b1/32K: 8 rows of 32 tiles — one tile per CTA, where
// 2 buffers measured 30 µs against 6.2), at head_dim 64, and wherever the pipelined kernel
// does not run (register ring, misaligned metadata, the fused path: their own kernels): a
// rule never makes a launch fail. Same scores bit for bit whatever the rule.
enum class QuestScorePreset : uint8_t { kRound9Wave = 0, kRound8 = 1, kRound9 = 2 };
inline constexpr QuestScorePreset kQuestScoreDefaultPreset = QuestScorePreset::kRound9Wave;
inline constexpr uint32_t kQuestScorePresetMinTilesPerCta = 3;

// Launch shape of the pipelined score kernel (kPipelined): a rule (`preset`, default
// kRound9Wave) or, for tuning (`kvtier bench decode --sweep`, round 9), explicit fields. A
// default-constructed shape runs the default rule. Any shape gives the same scores bit for
// bit (each slice is scored by the same lanes in the same order whatever the tiling); only
// speed changes. QuestScoreShapeError says what is wrong with one.
//   A rule alone (no field set) is valid everywhere and falls back to the round-8 shape where
//     it does not apply (see QuestScorePreset).
//   Explicit fields (any set) replace the rule: `preset` must then be left at the default
//     (explicit fields with kRound8 or kRound9 are invalid). Fields left 0 take round 8's
//     values (one wave, 4 buffers, 2 slices per thread). They apply only where the pipelined
//     kernel runs at head_dim 128: elsewhere the launches refuse them (cudaErrorInvalidValue),
//     never run something else instead.
struct QuestScoreShape {
  // Tiles of a row per CTA (gridDim.x = ⌈tiles of the longest row / tiles_per_cta⌉). 0: as
  // many CTAs per row as one wave of resident CTAs allows (b8/32K on an H100: 6 CTAs of ≤ 6
  // tiles per row). Any value ≥ 1 is valid (one larger than a row's tiles = one CTA per row).
  uint32_t tiles_per_cta = 0;
  // Tile buffers per CTA (tiles in flight while one is scored = stages − 1): 2, 3, 4, 6.
  // 0 = 4. Shared memory per CTA = stages · tile bytes (+ the staged queries).
  uint32_t stages = 0;
  // Slices each thread scores per tile: 2 (tiles of 64 slices, 16.6 KB at d = 128) or 4 (128
  // slices: one shared q⁺/q⁻ load feeds 4 slices instead of 2). 0 = 2.
  uint32_t slices_per_thread = 0;
  // The rule, where no field above is set.
  QuestScorePreset preset = kQuestScoreDefaultPreset;
};
// Values of explicit fields left 0 (round 8's shape).
inline constexpr uint32_t kQuestScoreRound8Stages = 4;
inline constexpr uint32_t kQuestScoreRound8SlicesPerThread = 2;
// The round-8 shape, as a rule (valid everywhere, like any rule).
inline constexpr QuestScoreShape kQuestScoreRound8Shape{.preset = QuestScorePreset::kRound8};

// Any of the explicit fields set (a shape the launches refuse where it would not run as asked).
inline bool HasExplicitFields(const QuestScoreShape& s) {
  return s.tiles_per_cta != 0 || s.stages != 0 || s.slices_per_thread != 0;
}
// What a default-constructed shape is: no field set, the default rule.
inline bool IsDefault(const QuestScoreShape& s) {
  return !HasExplicitFields(s) && s.preset == kQuestScoreDefaultPreset;
}

// Pure (no device): the shape `preset` gives a pipelined score launch over `rows` rows
// (requests · kv_heads) of ≤ max_blocks blocks at `head_dim`, on a device of `sms` SMs where
// the 2-buffer, 2-slice instance has `ctas_per_sm` resident CTAs per SM: explicit fields where
// a round-9 rule applies, else kQuestScoreRound8Shape (kRound8 itself, or a fallback; see
// QuestScorePreset). H100 (132 SMs, 3 per SM), Llama-3-8B (8 KV heads): kRound9Wave gives
// b1/32K the round-8 shape, b8/32K 6 tiles per CTA, b1/128K 3, b8/128K 22; kRound9 the
// round-8 shape, 8, 4, 32 — all with 2 buffers and 2 slices per thread.
QuestScoreShape QuestScoreShapeOfPreset(QuestScorePreset preset, uint32_t rows, uint32_t max_blocks,
                                        uint32_t head_dim, uint32_t sms, uint32_t ctas_per_sm);

// QuestBudgetBlocks for a sequence of `blocks` blocks (host and device).
__host__ __device__ inline uint32_t QuestBudgetBlocksOf(uint32_t blocks, const QuestSelectParams& p) {
  const uint32_t by_budget = p.block_tokens == 0 ? 0 : p.budget_tokens / p.block_tokens;
  uint32_t k = p.min_blocks > by_budget ? p.min_blocks : by_budget;
  if (p.sink_blocks + 1 > k) k = p.sink_blocks + 1;
  return k < blocks ? k : blocks;
}

struct QuestSelectDeviceArgs {
  uint32_t requests = 0;
  uint32_t q_heads = 0;              // a multiple of kv_heads
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;             // 64 or 128
  uint32_t max_blocks = 0;           // ≥ every request's blocks (sizes the score grid)
  QuestSelectParams params;
  QuestQueryType query_type = QuestQueryType::kFloat32;
  const void* queries = nullptr;           // [requests][q_heads][d]
  const uint32_t* block_offsets = nullptr; // [requests + 1]: request r has blocks [off[r], off[r+1])
  // Request r's metadata at element off[r]·kv_heads·2d: [kv_heads][blocks_r][2][d] int8
  // (min then max), and its scales at off[r]·kv_heads: [kv_heads][blocks_r] — the
  // reference's layout per request, requests back to back. With head_pitch > 0, (request r,
  // KV head h) starts at slice (r·kv_heads + h)·head_pitch instead (block_offsets then only
  // give each request's block count): metadata kept per (request or layer, head) at a fixed
  // capacity, as DeviceSliceMetadata keeps it, selects in ONE launch. scores and block_slots
  // follow the same layout.
  const int8_t* bounds = nullptr;
  const float* scales = nullptr;
  float* scores = nullptr;                 // output, laid out like `scales`
  uint32_t head_pitch = 0;                 // 0: packed (above); else slices per (request, head), ≥ max_blocks
  // Row (r, h) = r·kv_heads + h writes its selection at selected[sel_off[row] ..
  // sel_off[row+1]), which must hold QuestBudgetBlocksOf(blocks_r) entries (a row whose
  // range has another size is filled with 0xffffffff).
  const uint32_t* selected_offsets = nullptr;  // [requests·kv_heads + 1]
  uint32_t* selected = nullptr;                // block indices, each row ascending
  // Optional (both or neither): the slot of every slice, laid out like `scales`; the
  // selection is also written as slots (the page list of sparse attention).
  const uint32_t* block_slots = nullptr;
  uint32_t* selected_slots = nullptr;
  // Optional: a counter per row ([requests·kv_heads], zeroed once by the caller; every launch
  // leaves them at zero). Given, LaunchQuestSelect is ONE launch: the last score CTA of each
  // row to finish runs the row's top-k (the register-ring kernel's fp32 scores: the same
  // result, bit for bit, as two launches with kPipelined or kRegisterRing; within the
  // tolerance of the default kTensorCore's). Ignored for a kMax group whose queries take more than ~23 KiB (they are staged
  // as q⁺ and q⁻). Measured on an H100 (docs/sparse.md, tuning log) it is no faster than the
  // two launches (slower at batch 8 and at 128K: the top-k runs on 256 threads behind the
  // slowest score CTA of its row), so leave it null unless a measurement says otherwise;
  // without it the top-k launch rides PDL behind the scores (no launch gap).
  uint32_t* row_counters = nullptr;
  // Launch the scores with programmatic dependent launch (PDL): the kernel's CTAs may start
  // while the previous kernel on the stream finishes, and wait for it (and its writes) in
  // cudaGridDependencySynchronize() before reading anything. Every kernel here also calls
  // cudaTriggerProgrammaticLaunchCompletion() right after that wait, so a PDL-launched
  // successor (the sparse attention) is scheduled early and waits for this grid's completion
  // the same way. (Inside LaunchQuestSelect the top-k, which rides PDL behind the scores,
  // reads the row's offsets and slots before its own wait: inputs the scores do not write.)
  bool programmatic_dependent_launch = false;
  // With programmatic_dependent_launch: the metadata (block_offsets, bounds, scales) is not
  // written by the kernel this launch waits for, so the tensor-core score kernel may read it
  // before its wait — it places its CTA and starts its first tile's copies while the
  // predecessor finishes, and reads only the queries after the wait (round 14). Set it where
  // the predecessor writes the queries but not the metadata (a DeviceSliceMetadata::Update is
  // a copy, not a kernel: it is complete before any kernel behind it starts). The other score
  // kernels read everything after the wait either way. Same scores, bit for bit.
  bool early_metadata = false;
  // Optional (round 15): the digit top-k asks L2 for selected slices as it writes their slots
  // (a bulk prefetch of `bytes` at `arena + slot · slot_bytes`, a hint: nothing waits for it),
  // so the attention behind the select finds its first pages in L2 instead of one DRAM round
  // trip away. Position i of a row's selection is fetched when i % period < count (period 0:
  // every position) — e.g. the first pages of each of the attention's pieces. Needs
  // block_slots; `arena` 16-byte aligned, slot_bytes and bytes multiples of 16 (else the
  // launch is refused). The bisection top-k ignores it.
  struct SlicePrefetch {
    const void* arena = nullptr;  // null: no prefetch
    uint64_t slot_bytes = 0;
    uint32_t bytes = 0;
    uint32_t period = 0;
    uint32_t count = 0;
  } prefetch{};
  // The separate top-k launch's algorithm (the fused one-launch path keeps the bisection).
  QuestTopKAlgorithm topk_algorithm = QuestTopKAlgorithm::kAuto;
  // The separate score launch's kernel (see the enum).
  QuestScoreAlgorithm score_algorithm = QuestScoreAlgorithm::kTensorCore;
  // The pipelined kernel's launch shape (default: the kRound9Wave rule). A rule alone applies
  // where it can and gives the round-8 shape or the other kernels elsewhere, never a refusal.
  // A shape with explicit fields needs score_algorithm kPipelined, head_dim 128, `bounds`
  // 16-byte and `scales` 4-byte aligned and no row_counters (the fused path has its own
  // kernel); otherwise the launch is refused.
  QuestScoreShape score_shape{};
};

// What a score launch of `args` runs (the pipelined kernel's grid as LaunchQuestScores sizes
// it, overrides applied), for benchmarks and tests.
struct QuestScorePlan {
  bool pipelined = false;        // false: the register-ring kernel (fields below 0) or, with tensor_core, that kernel
  uint32_t tile_slices = 0;      // slices per tile (64 · slices_per_thread / 2)
  uint32_t stages = 0;           // tile buffers per CTA
  uint32_t tiles_per_row = 0;    // tiles of the longest row
  uint32_t tiles_per_cta = 0;
  uint32_t ctas_per_row = 0;     // gridDim.x
  uint32_t ctas_per_sm = 0;      // resident CTAs per SM (occupancy of the instance at its shared memory)
  uint32_t smem_bytes = 0;       // dynamic shared memory per CTA
  // The rule that set this grid: score_shape.preset where a round-9 rule applied; kRound8
  // for the round-8 shape (asked for, or a rule's fallback), explicit fields (no rule) and
  // the register-ring kernel.
  QuestScorePreset preset = QuestScorePreset::kRound8;
  bool tensor_core = false;      // the tensor-core kernel (kTensorCore): its fixed shape in the fields above
};

// nullptr if `shape` is valid for scores of head_dim `head_dim`, else what is wrong with it
// (a static string).
const char* QuestScoreShapeError(const QuestScoreShape& shape, uint32_t head_dim);

// The plan of a score launch of `a` (queries the device's occupancy once per kernel
// instance). cudaErrorInvalidValue where LaunchQuestScores would refuse `a`.
cudaError_t PlanQuestScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan);

// Host, pure: the slice prefetch (QuestSelectDeviceArgs::prefetch) a decode step's select asks
// for on behalf of the attention behind it, whose CTAs take pieces of `pages_per_piece` pages
// of a row's selection (SparseAttentionPlan::chunk_pages): none where the step's selected
// slices (`selection_bytes`) fit in a quarter of the L2 (`l2_bytes`), else the first quarter of
// each piece's pages (at least one) — on an H100 (round 15) that took the b8/32K step from
// 48.0 to 46.7 µs, while prefetching at batch 1 (8.4 MB) made the step slower. `arena`,
// `slot_bytes`, `slice_bytes`: as the attention reads its slices.
QuestSelectDeviceArgs::SlicePrefetch QuestSlicePrefetchForPieces(const void* arena, uint64_t slot_bytes,
                                                                 uint32_t slice_bytes, uint32_t pages_per_piece,
                                                                 uint64_t selection_bytes, uint64_t l2_bytes);

// Host: sel_off for `blocks[r]` blocks per request — the running sum of
// QuestBudgetBlocksOf over rows (requests · kv_heads + 1 entries).
void QuestSelectedOffsets(const uint32_t* blocks, uint32_t requests, uint32_t kv_heads, const QuestSelectParams& params,
                          uint32_t* offsets);

// Launch 1 only (the raw scores, for tests and for callers that rank differently).
cudaError_t LaunchQuestScores(const QuestSelectDeviceArgs& args, cudaStream_t stream);
// Launch 2 only, on scores already in args.scores (queries, bounds and scales unused).
cudaError_t LaunchQuestTopK(const QuestSelectDeviceArgs& args, cudaStream_t stream);
// Both. cudaErrorInvalidValue for an unsupported head_dim, a q_heads that is not a multiple
// of kv_heads, a group whose queries do not fit in shared memory (group·d > 12288 with max),
// a null pointer, or a score_shape that is invalid or does not apply (see the field);
// otherwise the launch error, if any.
cudaError_t LaunchQuestSelect(const QuestSelectDeviceArgs& args, cudaStream_t stream);

}  // namespace kvtier::kernels
