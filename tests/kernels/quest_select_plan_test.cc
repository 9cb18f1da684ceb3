// The Quest selection API's pure parts (kernels/quest_select.cuh; no device needed): the
// default top-k algorithm, QuestScoreShape validation and its messages, and the score rules
// resolved for the shapes docs/sparse.md quotes. The kernels against their reference:
// quest_select_gpu_test.cc.
#include <gtest/gtest.h>

#include <cstdint>
#include <string>

#include "quest_select.cuh"

namespace kvtier::kernels {
namespace {

TEST(QuestSelectGpuApi, DefaultTopKIsAutoAsDocumented) {  // no device needed
  EXPECT_EQ(QuestSelectDeviceArgs{}.topk_algorithm, QuestTopKAlgorithm::kAuto);
  EXPECT_EQ(kDigitTopKAutoMaxBlocks, 8192u);
}

// QuestScoreShape validation (no device needed): the default (rule kRound9Wave) everywhere,
// explicit fields at d 128 only, stages 2/3/4/6, slices per thread 2/4, any tiles per CTA.
// Round 15's prefetch rule (pure, no device): nothing where the selection fits in a quarter of
// the L2, else the first quarter of each piece (at least one page).
TEST(QuestSelectGpuApi, SlicePrefetchRuleAsDocumented) {
  const auto* arena = reinterpret_cast<const void*>(uintptr_t{1} << 20);
  const uint64_t l2 = uint64_t{50} << 20, slice = 8192;
  // Batch 1 at a 2048-token budget: 8 rows x 128 slices = 8 MiB <= L2 / 4.
  EXPECT_EQ(QuestSlicePrefetchForPieces(arena, slice, slice, 8, 8 * 128 * slice, l2).arena, nullptr);
  // Batch 8: 64 MiB; pieces of 32 pages -> the first 8 of each.
  const QuestSelectDeviceArgs::SlicePrefetch p = QuestSlicePrefetchForPieces(arena, slice, slice, 32, 64 * 128 * slice, l2);
  EXPECT_EQ(p.arena, arena);
  EXPECT_EQ(p.slot_bytes, slice);
  EXPECT_EQ(p.bytes, slice);
  EXPECT_EQ(p.period, 32u);
  EXPECT_EQ(p.count, 8u);
  EXPECT_EQ(QuestSlicePrefetchForPieces(arena, slice, slice, 3, 64 * 128 * slice, l2).count, 1u);  // at least one
  EXPECT_EQ(QuestSlicePrefetchForPieces(arena, slice, slice, 0, 64 * 128 * slice, l2).arena, nullptr);
  EXPECT_EQ(QuestSlicePrefetchForPieces(nullptr, slice, slice, 32, 64 * 128 * slice, l2).arena, nullptr);
}

TEST(QuestSelectGpuApi, ScoreShapeErrorsNameTheProblem) {
  EXPECT_EQ(QuestScoreShapeError({}, 64), nullptr);
  EXPECT_EQ(QuestScoreShapeError({}, 128), nullptr);
  EXPECT_TRUE(IsDefault(QuestSelectDeviceArgs{}.score_shape));
  EXPECT_TRUE(IsDefault(QuestScoreShape{.preset = QuestScorePreset::kRound9Wave}));
  for (uint32_t stages : {0u, 2u, 3u, 4u, 6u}) {
    for (uint32_t per_thread : {0u, 2u, 4u}) {
      for (uint32_t tiles : {0u, 1u, 7u, 1u << 30}) {
        EXPECT_EQ(QuestScoreShapeError({.tiles_per_cta = tiles, .stages = stages, .slices_per_thread = per_thread}, 128),
                  nullptr)
            << tiles << " " << stages << " " << per_thread;
      }
    }
  }
  auto error = [](const QuestScoreShape& s, uint32_t d) {
    const char* e = QuestScoreShapeError(s, d);
    return std::string(e == nullptr ? "" : e);
  };
  EXPECT_NE(error({.stages = 1}, 128).find("stages"), std::string::npos);
  EXPECT_NE(error({.stages = 5}, 128).find("stages"), std::string::npos);
  EXPECT_NE(error({.stages = 8}, 128).find("stages"), std::string::npos);
  EXPECT_NE(error({.slices_per_thread = 1}, 128).find("slices"), std::string::npos);
  EXPECT_NE(error({.slices_per_thread = 3}, 128).find("slices"), std::string::npos);
  EXPECT_NE(error({.slices_per_thread = 8}, 128).find("slices"), std::string::npos);
  EXPECT_NE(error({.tiles_per_cta = 2}, 64).find("head_dim"), std::string::npos);
  EXPECT_NE(error({.stages = 4}, 64).find("head_dim"), std::string::npos);
  // The rules other than the default: valid alone at any head_dim (round 8's shape where they
  // do not apply), never with explicit fields (those go with the default value, which they
  // replace); unknown values refused.
  for (QuestScorePreset p : {QuestScorePreset::kRound8, QuestScorePreset::kRound9}) {
    EXPECT_EQ(QuestScoreShapeError({.preset = p}, 128), nullptr);
    EXPECT_EQ(QuestScoreShapeError({.preset = p}, 64), nullptr);
    EXPECT_FALSE(IsDefault(QuestScoreShape{.preset = p}));
    EXPECT_FALSE(HasExplicitFields(QuestScoreShape{.preset = p}));
    EXPECT_NE(error({.stages = 2, .preset = p}, 128).find("preset"), std::string::npos);
    EXPECT_NE(error({.tiles_per_cta = 8, .preset = p}, 128).find("preset"), std::string::npos);
  }
  EXPECT_EQ(QuestScoreShapeError({.stages = 2, .preset = QuestScorePreset::kRound9Wave}, 128), nullptr);
  EXPECT_NE(error({.preset = static_cast<QuestScorePreset>(3)}, 128).find("preset"), std::string::npos);
}

// The score rules (no device needed): the shapes docs/sparse.md quotes for Llama-3-8B (8 KV
// heads) on an H100 (132 SMs, 3 CTAs of the 2-buffer instance per SM), the fallbacks to round
// 8's shape, kRound8 itself everywhere, and kRound9Wave the default.
TEST(QuestSelectGpuApi, ScorePresetsResolveAsDocumented) {
  constexpr QuestScorePreset kR9 = QuestScorePreset::kRound9, kR9w = QuestScorePreset::kRound9Wave;
  auto tiles = [](QuestScorePreset p, uint32_t batch, uint32_t blocks, uint32_t d = 128, uint32_t sms = 132,
                  uint32_t per_sm = 3) {
    const QuestScoreShape s = QuestScoreShapeOfPreset(p, batch * 8, blocks, d, sms, per_sm);
    if (!HasExplicitFields(s)) {
      EXPECT_EQ(s.preset, QuestScorePreset::kRound8);  // round 8's shape
      return 0u;
    }
    EXPECT_EQ(s.stages, 2u);
    EXPECT_EQ(s.slices_per_thread, 2u);
    EXPECT_EQ(s.preset, kQuestScoreDefaultPreset);  // explicit fields (the rule's value is ignored)
    EXPECT_EQ(QuestScoreShapeError(s, d), nullptr);
    return s.tiles_per_cta;
  };
  // context / 16 blocks: 32K = 2048 blocks (32 tiles of 64), 128K = 8192 (128 tiles).
  EXPECT_EQ(tiles(kR9, 1, 2048), 0u);    // 33 CTAs per row of 1 tile: latency-bound, round 8's
  EXPECT_EQ(tiles(kR9, 8, 2048), 8u);    // 4 CTAs per row
  EXPECT_EQ(tiles(kR9, 1, 8192), 4u);    // 33 per row → 4 tiles (32 CTAs)
  EXPECT_EQ(tiles(kR9, 8, 8192), 32u);   // 4 per row
  EXPECT_EQ(tiles(kR9w, 1, 2048), 0u);   // 49 per row of 1 tile: round 8's
  EXPECT_EQ(tiles(kR9w, 8, 2048), 6u);   // 6 per row
  EXPECT_EQ(tiles(kR9w, 1, 8192), 3u);   // 49 per row → 3 tiles (43 CTAs)
  EXPECT_EQ(tiles(kR9w, 8, 8192), 22u);  // 6 per row
  EXPECT_EQ(tiles(kR9, 8, 128), 0u);     // 2 tiles per row: round 8's
  EXPECT_EQ(tiles(kR9, 64, 2048), 32u);  // more rows than 2·SMs: one CTA per row
  EXPECT_EQ(tiles(kR9, 8, 8192, 64), 0u);                       // d 64: round 8's instance only
  EXPECT_EQ(tiles(kR9w, 8, 8192, 64), 0u);
  EXPECT_EQ(tiles(kR9, 8, 8192, 128, 132, 1), 64u);             // kRound9: at most the resident CTAs
  EXPECT_EQ(tiles(kR9w, 8, 8192, 128, 132, 1), 64u);
  EXPECT_EQ(tiles(kR9, 8, 0), 0u);
  EXPECT_EQ(tiles(kR9, 0, 8192), 0u);
  EXPECT_EQ(tiles(QuestScorePreset::kRound8, 8, 8192), 0u);  // round 8's shape everywhere
  EXPECT_EQ(tiles(QuestScorePreset::kRound8, 8, 2048), 0u);
  EXPECT_EQ(QuestScoreShape{}.preset, QuestScorePreset::kRound9Wave);  // the default since round 9
  EXPECT_EQ(QuestSelectDeviceArgs{}.score_shape.preset, QuestScorePreset::kRound9Wave);
  EXPECT_EQ(kQuestScoreRound8Shape.preset, QuestScorePreset::kRound8);
  EXPECT_FALSE(HasExplicitFields(kQuestScoreRound8Shape));
}

}  // namespace
}  // namespace kvtier::kernels
