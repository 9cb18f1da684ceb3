// Quest selection: argument validation and the public launches, which dispatch to
//   - the score kernels: register ring, fused with the top-k or not, in
//     quest_select_scores.cu; pipelined in quest_select_scores_pipelined.cu;
//   - the bisection / radix top-k: quest_select_bisection.cu (TopKRow in
//     quest_select_bisection_internal.cuh);
//   - the digit top-k: quest_select_topk.cu.
#include "quest_select.cuh"
#include "quest_select_internal.cuh"

#include <algorithm>
#include <cstdint>

namespace kvtier::kernels {
namespace {

using quest_internal::CanFuse;
using quest_internal::kMaxStagedQueryFloats;
using quest_internal::LaunchScoresAny;

bool ValidShape(const QuestSelectDeviceArgs& a) {
  return a.requests > 0 && a.kv_heads > 0 && a.q_heads % a.kv_heads == 0 && a.q_heads >= a.kv_heads &&
         (a.head_dim == 64 || a.head_dim == 128) && a.requests <= 65535 && a.kv_heads <= 65535 &&
         a.block_offsets != nullptr && a.scores != nullptr && (a.head_pitch == 0 || a.head_pitch >= a.max_blocks);
}

// A score shape with explicit fields applies only where the pipelined kernel runs: never a
// silent fallback to the register ring (misaligned metadata, kRegisterRing). A rule alone (the
// default shape included) is valid everywhere: it falls back to round 8's shape or to the
// other kernels where it does not apply.
bool ScoreShapeApplies(const QuestSelectDeviceArgs& a) {
  if (QuestScoreShapeError(a.score_shape, a.head_dim) != nullptr) return false;
  if (!HasExplicitFields(a.score_shape)) return true;
  return a.score_algorithm == QuestScoreAlgorithm::kPipelined && reinterpret_cast<uintptr_t>(a.bounds) % 16 == 0 &&
         reinterpret_cast<uintptr_t>(a.scales) % 4 == 0;
}

bool ValidForScores(const QuestSelectDeviceArgs& a) {
  if (!ValidShape(a) || a.queries == nullptr || a.bounds == nullptr || a.scales == nullptr) return false;
  if (!ScoreShapeApplies(a)) return false;
  return a.params.combine != GqaCombine::kMax || (a.q_heads / a.kv_heads) * a.head_dim <= kMaxStagedQueryFloats;
}

bool ValidPrefetch(const QuestSelectDeviceArgs::SlicePrefetch& p, bool slots) {
  if (p.arena == nullptr) return true;
  return slots && reinterpret_cast<uintptr_t>(p.arena) % 16 == 0 && p.slot_bytes % 16 == 0 && p.bytes % 16 == 0 &&
         p.bytes != 0 && (p.period == 0 || p.count != 0);
}

bool ValidForTopK(const QuestSelectDeviceArgs& a) {
  return ValidShape(a) && a.selected_offsets != nullptr && a.selected != nullptr &&
         (a.block_slots == nullptr) == (a.selected_slots == nullptr) &&
         ValidPrefetch(a.prefetch, a.block_slots != nullptr) &&
         static_cast<uint8_t>(a.topk_algorithm) <= static_cast<uint8_t>(QuestTopKAlgorithm::kAuto);
}

}  // namespace

void QuestSelectedOffsets(const uint32_t* blocks, uint32_t requests, uint32_t kv_heads, const QuestSelectParams& params,
                          uint32_t* offsets) {
  uint32_t at = 0;
  offsets[0] = 0;
  for (uint32_t r = 0; r < requests; ++r) {
    for (uint32_t h = 0; h < kv_heads; ++h) {
      at += QuestBudgetBlocksOf(blocks[r], params);
      offsets[r * kv_heads + h + 1] = at;
    }
  }
}

const char* QuestScoreShapeError(const QuestScoreShape& shape, uint32_t head_dim) {
  if (static_cast<uint8_t>(shape.preset) > static_cast<uint8_t>(QuestScorePreset::kRound9)) {
    return "unknown score preset";
  }
  if (!HasExplicitFields(shape)) return nullptr;  // a rule alone: any head_dim (see QuestScorePreset)
  if (shape.preset != kQuestScoreDefaultPreset) {
    return "a score preset sets tiles per CTA, stages and slices per thread itself: give either the preset or "
           "explicit fields";
  }
  if (head_dim != 128) return "score shape overrides are instantiated for head_dim 128 only";
  if (shape.stages != 0 && shape.stages != 2 && shape.stages != 3 && shape.stages != 4 && shape.stages != 6) {
    return "score stages must be 2, 3, 4 or 6 (0 = 4)";
  }
  if (shape.slices_per_thread != 0 && shape.slices_per_thread != 2 && shape.slices_per_thread != 4) {
    return "score slices per thread must be 2 or 4 (0 = 2)";
  }
  return nullptr;  // tiles_per_cta: any value (0 = one wave; more than a row's tiles = one CTA per row)
}

QuestScoreShape QuestScoreShapeOfPreset(QuestScorePreset preset, uint32_t rows, uint32_t max_blocks,
                                        uint32_t head_dim, uint32_t sms, uint32_t ctas_per_sm) {
  if (preset != QuestScorePreset::kRound9 && preset != QuestScorePreset::kRound9Wave) return kQuestScoreRound8Shape;
  if (head_dim != 128 || rows == 0 || max_blocks == 0 || sms == 0 || ctas_per_sm == 0) return kQuestScoreRound8Shape;
  constexpr uint32_t kSlicesPerThread = 2, kTileSlices = 32 * kSlicesPerThread;
  // kRound9: about 2 CTAs per SM in all (of those resident); kRound9Wave: one wave of them.
  const uint64_t per_sm = preset == QuestScorePreset::kRound9 ? std::min<uint32_t>(2, ctas_per_sm) : ctas_per_sm;
  const uint64_t tiles_per_row = (uint64_t{max_blocks} + kTileSlices - 1) / kTileSlices;
  const uint64_t ctas_per_row = std::max<uint64_t>(1, per_sm * sms / rows);
  const uint64_t per_cta = (tiles_per_row + ctas_per_row - 1) / ctas_per_row;
  if (per_cta < kQuestScorePresetMinTilesPerCta) return kQuestScoreRound8Shape;  // latency-bound: too few to pipeline
  return {.tiles_per_cta = static_cast<uint32_t>(per_cta), .stages = 2, .slices_per_thread = kSlicesPerThread};
}

QuestSelectDeviceArgs::SlicePrefetch QuestSlicePrefetchForPieces(const void* arena, uint64_t slot_bytes,
                                                                 uint32_t slice_bytes, uint32_t pages_per_piece,
                                                                 uint64_t selection_bytes, uint64_t l2_bytes) {
  if (arena == nullptr || pages_per_piece == 0 || selection_bytes <= l2_bytes / 4) return {};
  return {.arena = arena, .slot_bytes = slot_bytes, .bytes = slice_bytes, .period = pages_per_piece,
          .count = std::max(pages_per_piece / 4, 1u)};
}

cudaError_t PlanQuestScores(const QuestSelectDeviceArgs& a, QuestScorePlan* plan) {
  if (plan == nullptr || !ValidForScores(a)) return cudaErrorInvalidValue;
  return quest_internal::PlanScores(a, plan);
}

cudaError_t LaunchQuestScores(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForScores(a)) return cudaErrorInvalidValue;
  if (a.max_blocks == 0) return cudaSuccess;
  return LaunchScoresAny(a, stream, false);
}

namespace {
// behind_own_scores: the launch follows this file's score launch of the same `a` (see
// LaunchDigitTopK's inputs_early).
cudaError_t LaunchTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream, bool pdl, bool behind_own_scores) {
  const bool digits = a.topk_algorithm == QuestTopKAlgorithm::kDigits
                          ? a.max_blocks <= quest_internal::kDigitTopKMaxBlocks
                          : a.topk_algorithm == QuestTopKAlgorithm::kAuto && a.max_blocks <= kDigitTopKAutoMaxBlocks;
  if (digits) {
    return quest_internal::LaunchDigitTopK(a, stream, pdl, behind_own_scores);
  }
  return quest_internal::LaunchBisectionTopK(a, stream, pdl);
}
}  // namespace

cudaError_t LaunchQuestTopK(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForTopK(a)) return cudaErrorInvalidValue;
  return LaunchTopK(a, stream, a.programmatic_dependent_launch, false);
}

cudaError_t LaunchQuestSelect(const QuestSelectDeviceArgs& a, cudaStream_t stream) {
  if (!ValidForScores(a) || !ValidForTopK(a)) return cudaErrorInvalidValue;  // nothing enqueued
  // The fused path has its own score kernel: explicit fields there would be ignored (a rule
  // alone, the default included, falls back to it, as it does to the register ring).
  if (a.row_counters != nullptr && HasExplicitFields(a.score_shape)) return cudaErrorInvalidValue;
  if (a.max_blocks == 0) return LaunchQuestTopK(a, stream);  // rows of no block: only the output fill
  if (CanFuse(a)) return LaunchScoresAny(a, stream, true);
  if (cudaError_t e = LaunchScoresAny(a, stream, false); e != cudaSuccess) return e;
  // The top-k always rides PDL behind its scores (the score kernel triggers at its start): its
  // CTAs are resident when the last score CTA ends, no launch gap; it waits for them in
  // cudaGridDependencySynchronize — after reading the row's offsets and slots, which the
  // scores do not write. Same result as a plain launch.
  return LaunchTopK(a, stream, true, true);
}

}  // namespace kvtier::kernels
