// Guardrails (kvtier/fair_budget.h), as randomised properties on synthetic scores: for any
// drop ratio <= 0.9 the keep rates of droppable spans differ by <= 0.05 (block rounding
// aside), protected and force-kept blocks are never dropped, the budget is met exactly, and
// a force-keep set over its budget is a clear error. AdaKV head budgets: the safeguard per
// head, the exact total, and the global ranking for the rest.
#include "kvtier/fair_budget.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>

namespace kvtier {
namespace {

TEST(FairBudget, KeepRatesOfSpansAgreeForEveryDropRatio) {
  std::mt19937 rng(42);
  for (int trial = 0; trial < 200; ++trial) {
    const uint32_t spans = 2 + rng() % 4;
    std::vector<SpanBlock> blocks;
    std::map<uint32_t, size_t> len;
    for (uint32_t s = 0; s < spans; ++s) {
      const uint32_t n = 20 + rng() % 200;
      len[s] = n;
      // Span-dependent score scales: an unfair global top-k would starve the low span.
      for (uint32_t i = 0; i < n; ++i) blocks.push_back({s, std::exp(3.0f * s) * std::uniform_real_distribution<float>(0, 1)(rng)});
    }
    std::shuffle(blocks.begin(), blocks.end(), rng);
    const double r = std::uniform_real_distribution<double>(0.0, 0.9)(rng);
    const size_t keep_budget = blocks.size() - static_cast<size_t>(std::round(r * blocks.size()));
    auto keep = PlanFairKeep(blocks, keep_budget);
    ASSERT_TRUE(keep.ok()) << keep.status().ToString();
    std::map<uint32_t, size_t> kept;
    size_t total = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      kept[blocks[i].span] += (*keep)[i];
      total += (*keep)[i];
    }
    EXPECT_EQ(total, keep_budget);
    double lo = 1, hi = 0, slack = 0;
    for (auto [s, n] : len) {
      const double rate = static_cast<double>(kept[s]) / n;
      lo = std::min(lo, rate);
      hi = std::max(hi, rate);
      slack = std::max(slack, 1.0 / n);  // one block of rounding
    }
    EXPECT_LE(hi - lo, 0.05 + slack) << "trial " << trial << " r=" << r;
  }
}

TEST(FairBudget, ScoresDecideInsideASpan) {
  std::vector<SpanBlock> blocks = {{0, 1.0f}, {0, 5.0f}, {0, 3.0f}, {1, 0.1f}, {1, 0.3f}, {1, 0.2f}};
  auto keep = PlanFairKeep(blocks, 2);
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(*keep, (std::vector<uint8_t>{0, 1, 0, 0, 1, 0}));
}

TEST(FairBudget, ProtectedAndForceKeptBlocksAreNeverDropped) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<SpanBlock> blocks;
    size_t protected_n = 0;
    for (uint32_t i = 0; i < 300; ++i) {
      SpanBlock b{static_cast<uint32_t>(rng() % 4), std::uniform_real_distribution<float>(0, 1)(rng)};
      if (b.span == 0) {
        b.rule = KeepRule::kProtected;
        ++protected_n;
      } else if (rng() % 50 == 0) {
        b.rule = KeepRule::kForceKeep;
      }
      blocks.push_back(b);
    }
    const size_t budget = protected_n + (blocks.size() - protected_n) * (1 + rng() % 9) / 10;
    auto keep = PlanFairKeep(blocks, budget);
    if (!keep.ok()) {
      EXPECT_EQ(keep.status().code(), StatusCode::kInvalidArgument);  // a span's force-keep set over budget
      continue;
    }
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (blocks[i].rule != KeepRule::kScored) {
        EXPECT_TRUE((*keep)[i]) << "trial " << trial << " block " << i;
      }
    }
  }
}

TEST(FairBudget, ForceKeepOverTheSpanBudgetIsAClearError) {
  std::vector<SpanBlock> blocks(10, SpanBlock{3, 1.0f, KeepRule::kForceKeep});
  auto keep = PlanFairKeep(blocks, 5);
  ASSERT_FALSE(keep.ok());
  EXPECT_EQ(keep.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(keep.status().message().find("span 3: 10 force-kept blocks exceed its fair budget of 5"), std::string_view::npos)
      << keep.status().ToString();
}

TEST(FairBudget, ProtectedBlocksOverTheBudgetAreRefused) {
  std::vector<SpanBlock> blocks(4, SpanBlock{0, 1.0f, KeepRule::kProtected});
  blocks.push_back({1, 1.0f});
  auto keep = PlanFairKeep(blocks, 3);
  ASSERT_FALSE(keep.ok());
  EXPECT_EQ(keep.status().code(), StatusCode::kFailedPrecondition);
}

TEST(FairBudget, RejectsABudgetLargerThanTheBlocksAndNonFiniteScores) {
  std::vector<SpanBlock> blocks = {{0, 1.0f}, {0, NAN}};
  EXPECT_EQ(PlanFairKeep(blocks, 3).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(PlanFairKeep(blocks, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(HeadBudgets, EveryHeadKeepsItsSafeguardAndTheTotalIsExact) {
  std::mt19937 rng(3);
  const uint32_t heads = 8, n = 100, kept = 40;
  std::vector<float> scores(heads * n);
  for (uint32_t h = 0; h < heads; ++h)
    for (uint32_t i = 0; i < n; ++i) scores[h * n + i] = std::pow(10.0f, static_cast<float>(h)) * std::uniform_real_distribution<float>(0, 1)(rng);
  auto keep = AllocateHeadBudgets(scores, heads, n, kept, {.alpha_safeguard = 0.2});
  ASSERT_TRUE(keep.ok());
  size_t total = 0;
  for (uint32_t h = 0; h < heads; ++h) {
    size_t k = 0;
    for (uint32_t i = 0; i < n; ++i) k += (*keep)[h * n + i];
    EXPECT_GE(k, 8u) << "head " << h;  // 20% of 40
    total += k;
  }
  EXPECT_EQ(total, size_t{heads} * kept);
  // The loudest head takes the global share: it keeps more than its even share.
  size_t loud = 0;
  for (uint32_t i = 0; i < n; ++i) loud += (*keep)[(heads - 1) * n + i];
  EXPECT_GT(loud, kept);
}

TEST(HeadBudgets, AlphaOneIsAnEvenSplitAndBadOptionsAreRejected) {
  std::vector<float> scores = {1, 2, 3, 4, 100, 200, 300, 400};
  auto keep = AllocateHeadBudgets(scores, 2, 4, 2, {.alpha_safeguard = 1.0});
  ASSERT_TRUE(keep.ok());
  EXPECT_EQ(*keep, (std::vector<uint8_t>{0, 0, 1, 1, 0, 0, 1, 1}));
  EXPECT_EQ(AllocateHeadBudgets(scores, 2, 4, 2, {.alpha_safeguard = 1.5}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateHeadBudgets(scores, 2, 4, 5).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(AllocateHeadBudgets(scores, 3, 4, 2).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
