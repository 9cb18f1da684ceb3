// QuestSelector: options are validated; dense layers select everything; sparse layers run
// the reference per KV head over the metadata (compact or fp32 bounds) with the forced
// blocks in; a key aligned with the query is found; bad input gets a clear Status.
#include "kvtier/quest_selector.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

#include "kvtier/slice_metadata.h"
#include "reference/quest_select.h"

namespace kvtier {
namespace {

constexpr uint32_t kKv = 2, kGroup = 4, kDim = 16, kBt = 16;

struct Fixture {
  SliceMetadata meta;
  std::vector<float> keys;     // [tokens][kv][d]
  std::vector<float> queries;  // [q_heads][d]
};

Fixture Make(uint32_t tokens, uint64_t seed, bool exact = true) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  auto meta = SliceMetadata::Create({.layers = 4, .kv_heads = kKv, .head_dim = kDim, .block_tokens = kBt,
                                     .keep_exact_bounds = exact});
  KVT_CHECK(meta.ok());
  Fixture f{std::move(*meta), std::vector<float>(size_t{tokens} * kKv * kDim), std::vector<float>(kKv * kGroup * kDim)};
  for (float& x : f.keys) x = nd(rng);
  for (float& x : f.queries) x = nd(rng);
  for (uint32_t l = 0; l < 4; ++l) KVT_CHECK(f.meta.Append(LayerId{l}, f.keys, tokens).ok());
  return f;
}

TEST(QuestSelectorTest, OptionsAreValidated) {
  EXPECT_TRUE(QuestSelector::Create({}).ok());
  EXPECT_EQ(QuestSelector::Create({.block_tokens = 0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuestSelector::Create({.budget_tokens = 8, .block_tokens = 16}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(QuestSelector::Create({.budget_tokens = 64, .sink_blocks = 4}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(QuestSelector::Create({.budget_tokens = 64, .sink_blocks = 3}).ok());
  EXPECT_EQ(QuestSelector::Create({.combine = static_cast<GqaCombine>(7)}).status().code(), StatusCode::kInvalidArgument);
}

TEST(QuestSelectorTest, DenseLayersSelectEveryBlock) {
  Fixture f = Make(1000, 1);
  auto sel = QuestSelector::Create({.budget_tokens = 128, .dense_layers = 2});
  ASSERT_TRUE(sel.ok());
  for (uint32_t l = 0; l < 2; ++l) {
    auto s = sel->Select(LayerId{l}, f.queries, f.meta);
    ASSERT_TRUE(s.ok()) << s.status().message();
    EXPECT_TRUE(s->dense);
    EXPECT_EQ(s->per_head, 63u);
    std::vector<uint32_t> all(63);
    std::iota(all.begin(), all.end(), 0u);
    for (uint32_t h = 0; h < kKv; ++h) EXPECT_TRUE(std::ranges::equal(s->Head(h), all));
  }
  auto s = sel->Select(LayerId{2}, f.queries, f.meta);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE(s->dense);
  EXPECT_EQ(s->per_head, 8u);
}

TEST(QuestSelectorTest, SparseLayersMatchTheReferenceOnBothBoundForms) {
  for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
    for (bool compact : {true, false}) {
      Fixture f = Make(2000 + 5, 2);
      auto sel = QuestSelector::Create({.budget_tokens = 256, .sink_blocks = 2, .dense_layers = 1, .combine = combine,
                                        .use_compact_metadata = compact});
      ASSERT_TRUE(sel.ok());
      auto s = sel->Select(LayerId{3}, f.queries, f.meta);
      ASSERT_TRUE(s.ok()) << s.status().message();
      ASSERT_EQ(s->blocks, 126u);
      ASSERT_EQ(s->per_head, 16u);
      kernels::QuestShape shape{.q_heads = kGroup, .kv_heads = 1, .head_dim = kDim, .blocks = 126};
      kernels::QuestSelectParams p{.budget_tokens = 256, .block_tokens = kBt, .sink_blocks = 2,
                                   .combine = combine == GqaCombine::kSum ? kernels::GqaCombine::kSum
                                                                          : kernels::GqaCombine::kMax};
      for (uint32_t h = 0; h < kKv; ++h) {
        auto v = f.meta.Bounds(LayerId{3}, h);
        ASSERT_TRUE(v.ok());
        std::vector<float> scores(126);
        auto q = std::span<const float>(f.queries).subspan(h * kGroup * kDim, kGroup * kDim);
        if (compact) {
          kernels::QuestScoresQuantized(shape, p.combine, q, v->compact, v->scales, scores);
        } else {
          kernels::QuestScores(shape, p.combine, q, v->exact, scores);
        }
        std::vector<uint32_t> want(16);
        kernels::QuestSelectTopK(shape, p, scores, want);
        EXPECT_TRUE(std::ranges::equal(s->Head(h), want));
        EXPECT_EQ(s->Head(h)[0], 0u);
        EXPECT_EQ(s->Head(h)[1], 1u);
        EXPECT_EQ(s->Head(h).back(), 125u);
      }
    }
  }
}

TEST(QuestSelectorTest, FindsAKeyAlignedWithTheQuery) {
  Fixture f = Make(4096, 3);
  const uint32_t needle = 37 * kBt + 5;  // kv head 1
  for (uint32_t i = 0; i < kDim; ++i) f.keys[(size_t{needle} * kKv + 1) * kDim + i] = 4.0f * f.queries[kGroup * kDim + i];
  auto meta = SliceMetadata::Create({.layers = 4, .kv_heads = kKv, .head_dim = kDim, .block_tokens = kBt});
  ASSERT_TRUE(meta.ok());
  ASSERT_TRUE(meta->Append(LayerId{2}, f.keys, 4096).ok());
  auto sel = QuestSelector::Create({.budget_tokens = 64});
  ASSERT_TRUE(sel.ok());
  auto s = sel->Select(LayerId{2}, f.queries, *meta);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE(std::ranges::binary_search(s->Head(1), 37u));
}

TEST(QuestSelectorTest, SelectIntoReusesAndAgrees) {
  Fixture f = Make(700, 4);
  auto sel = QuestSelector::Create({.budget_tokens = 128, .dense_layers = 0});
  ASSERT_TRUE(sel.ok());
  Selection out;
  ASSERT_TRUE(sel->SelectInto(LayerId{0}, f.queries, f.meta, &out).ok());
  auto again = sel->Select(LayerId{0}, f.queries, f.meta);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(out.indices, again->indices);
  EXPECT_EQ(sel->BlocksPerHead(LayerId{0}, 44), 8u);
  EXPECT_EQ(sel->BlocksPerHead(LayerId{0}, 5), 5u);
}

TEST(QuestSelectorTest, BadInputGetsAClearStatus) {
  Fixture f = Make(100, 5, /*exact=*/false);
  auto sel = QuestSelector::Create({.budget_tokens = 32, .dense_layers = 0});
  ASSERT_TRUE(sel.ok());
  EXPECT_EQ(sel->Select(LayerId{4}, f.queries, f.meta).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> odd(kDim * 3);  // 3 query heads, 2 KV heads
  EXPECT_EQ(sel->Select(LayerId{0}, odd, f.meta).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> ragged(kDim * 2 + 1);
  EXPECT_EQ(sel->Select(LayerId{0}, ragged, f.meta).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(sel->Select(LayerId{0}, {}, f.meta).status().code(), StatusCode::kInvalidArgument);
  auto nan = f.queries;
  nan[3] = std::nanf("");
  EXPECT_EQ(sel->Select(LayerId{0}, nan, f.meta).status().code(), StatusCode::kInvalidArgument);
  auto wide = QuestSelector::Create({.budget_tokens = 64, .block_tokens = 32});
  ASSERT_TRUE(wide.ok());
  EXPECT_EQ(wide->Select(LayerId{0}, f.queries, f.meta).status().code(), StatusCode::kInvalidArgument);
  auto exact = QuestSelector::Create({.budget_tokens = 32, .use_compact_metadata = false});
  ASSERT_TRUE(exact.ok());
  EXPECT_EQ(exact->Select(LayerId{3}, f.queries, f.meta).status().code(), StatusCode::kFailedPrecondition);
  auto empty = SliceMetadata::Create({.layers = 1, .kv_heads = kKv, .head_dim = kDim});
  ASSERT_TRUE(empty.ok());
  auto s = sel->Select(LayerId{0}, f.queries, *empty);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->blocks, 0u);
  EXPECT_TRUE(s->indices.empty());
}

}  // namespace
}  // namespace kvtier
