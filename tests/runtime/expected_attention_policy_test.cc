// ExpectedAttentionPolicy and ScoreBoard: victims by block score with recency as the
// tie-break, unscored blocks last, refresh cadence, protected / force-kept blocks held in
// tiers that drop or demote below DRAM, fair drops across spans in the lowest tier; and, in
// a TierManager whose only tier is DRAM (so victims are dropped), protected blocks are never
// dropped.
#include "kvtier/expected_attention_policy.h"

#include <gtest/gtest.h>

#include <map>
#include <random>

#include "host_tier.h"
#include "kvtier/tier_manager.h"

namespace kvtier {
namespace {

ChainHash Chain(uint32_t i) {
  ChainHash c;
  c.bytes[0] = static_cast<uint8_t>(i);
  c.bytes[1] = static_cast<uint8_t>(i >> 8);
  c.bytes[31] = 0x5A;
  return c;
}
BlockKey Key(uint32_t i, uint32_t layer = 0) { return BlockKey{Chain(i), LayerId(layer)}; }
EvictionCandidate Cand(uint32_t i, uint64_t tick) { return {Key(i), Tick(tick), 0, false}; }

std::shared_ptr<ScoreBoard> Board() {
  auto b = ScoreBoard::Create({});
  EXPECT_TRUE(b.ok());
  return *b;
}

std::vector<uint32_t> Ids(std::span<const EvictionCandidate> c, size_t n) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < n; ++i) out.push_back(c[i].key.chain.bytes[0] | (c[i].key.chain.bytes[1] << 8));
  return out;
}

TEST(ExpectedAttentionPolicy, OrdersVictimsByScoreThenRecencyWithUnscoredLast) {
  auto board = Board();
  ASSERT_TRUE(board->UpdateScores(std::vector<BlockScore>{{Key(0), 5}, {Key(1), 1}, {Key(2), 3}, {Key(3), 1}}).ok());
  ExpectedAttentionPolicy p({.tier = TierKind::kHbm, .lowest = TierKind::kNvme}, board);
  std::vector<EvictionCandidate> c = {Cand(0, 1), Cand(1, 9), Cand(2, 2), Cand(3, 4), Cand(4, 0)};
  EXPECT_EQ(p.SelectVictims(c, 5), 5u);
  EXPECT_EQ(Ids(c, 5), (std::vector<uint32_t>{3, 1, 2, 0, 4}));  // 1 and 3 tie: older (3) first
}

TEST(ExpectedAttentionPolicy, ScoresAreDueOnTheFirstStepThenEveryInterval) {
  auto board = *ScoreBoard::Create({.refresh_interval = 4});
  std::vector<bool> due;
  for (int i = 0; i < 9; ++i) due.push_back(board->DecodeStep());
  EXPECT_EQ(due, (std::vector<bool>{true, false, false, false, true, false, false, false, true}));
  EXPECT_EQ(ScoreBoard::Create({.refresh_interval = 0}).status().code(), StatusCode::kInvalidArgument);
}

TEST(ExpectedAttentionPolicy, RejectsNegativeOrNonFiniteScores) {
  auto board = Board();
  EXPECT_EQ(board->UpdateScores(std::vector<BlockScore>{{Key(0), 1}, {Key(1), -1}}).code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(board->Snapshot()->scores.empty());  // all or nothing
}

TEST(ExpectedAttentionPolicy, ProtectedBlocksLeaveHbmLastAndNeverLeaveLowerTiers) {
  auto board = Board();
  const std::vector<ChainHash> sys = {Chain(0), Chain(1)};
  board->TagSpan(sys, {.span_id = 1, .kind = SpanKind::kSystemPrompt});
  board->ForceKeep(std::vector<ChainHash>{Chain(2)});
  ASSERT_TRUE(board->UpdateScores(std::vector<BlockScore>{{Key(0), 0}, {Key(1), 0}, {Key(2), 0}, {Key(3), 9}}).ok());
  std::vector<EvictionCandidate> c = {Cand(0, 1), Cand(1, 1), Cand(2, 1), Cand(3, 1)};
  ExpectedAttentionPolicy hbm({.tier = TierKind::kHbm, .lowest = TierKind::kNvme}, board);
  EXPECT_EQ(hbm.SelectVictims(c, 4), 4u);  // HBM -> DRAM is allowed for protected blocks
  EXPECT_EQ(Ids(c, 1), std::vector<uint32_t>{3});
  for (TierKind t : {TierKind::kDram, TierKind::kNvme}) {
    ExpectedAttentionPolicy lower({.tier = t, .lowest = TierKind::kNvme}, board);
    EXPECT_EQ(lower.SelectVictims(c, 4), 1u) << TierName(t);
    EXPECT_EQ(Ids(c, 1), std::vector<uint32_t>{3});
    EXPECT_EQ(lower.last_held(), 3u);
  }
  ExpectedAttentionPolicy hbm_only({.tier = TierKind::kHbm, .lowest = TierKind::kHbm}, board);
  EXPECT_EQ(hbm_only.SelectVictims(c, 4), 1u);  // HBM drops here: held
}

TEST(ExpectedAttentionPolicy, UserTurnsAreDroppableUnlessTaggedProtected) {
  EXPECT_FALSE((SpanTag{.kind = SpanKind::kUserTurn}).is_protected());
  EXPECT_TRUE((SpanTag{.kind = SpanKind::kUserTurn, .protection = SpanProtection::kProtected}).is_protected());
  EXPECT_FALSE((SpanTag{.kind = SpanKind::kToolSchema, .protection = SpanProtection::kDroppable}).is_protected());
  EXPECT_TRUE((SpanTag{.kind = SpanKind::kToolSchema}).is_protected());
}

TEST(ExpectedAttentionPolicy, DropsInTheLowestTierAreFairAcrossSpans) {
  // Span 1's blocks all score below span 2's: a global ranking would drop only span 1.
  auto board = Board();
  std::vector<ChainHash> s1, s2;
  std::vector<BlockScore> scores;
  std::vector<EvictionCandidate> c;
  for (uint32_t i = 0; i < 100; ++i) {
    (i < 40 ? s1 : s2).push_back(Chain(i));
    scores.push_back({Key(i), i < 40 ? 0.01f * i : 10.0f + i});
    c.push_back(Cand(i, i));
  }
  board->TagSpan(s1, {.span_id = 1, .kind = SpanKind::kUserTurn});
  board->TagSpan(s2, {.span_id = 2, .kind = SpanKind::kCustom});
  ASSERT_TRUE(board->UpdateScores(scores).ok());
  ExpectedAttentionPolicy p({.tier = TierKind::kNvme, .lowest = TierKind::kNvme}, board);
  ASSERT_EQ(p.SelectVictims(c, 50), 50u);
  std::map<bool, int> dropped;
  for (uint32_t id : Ids(c, 50)) dropped[id < 40]++;
  EXPECT_EQ(dropped[true], 20);   // half of span 1
  EXPECT_EQ(dropped[false], 30);  // half of span 2
  // Inside span 1 the lowest scores go.
  for (uint32_t id : Ids(c, 50)) {
    if (id < 40) {
      EXPECT_LT(id, 20u);
    }
  }
}

TEST(ExpectedAttentionPolicy, BlockScoresOfALayerSumTheKvHeads) {
  const std::vector<ChainHash> chains = {Chain(0), Chain(1), Chain(2)};
  const std::vector<float> scores = {1, 2, 3, 10, 20, 30};  // [2 kv heads][3 blocks]
  auto r = BlockScoresOfLayer(chains, LayerId(5), scores, 2);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_EQ(r->size(), 3u);
  EXPECT_EQ((*r)[1].key, Key(1, 5));
  EXPECT_FLOAT_EQ((*r)[1].score, 22);
  EXPECT_EQ(BlockScoresOfLayer(chains, LayerId(0), scores, 3).status().code(), StatusCode::kInvalidArgument);
  const std::vector<float> bad = {1, 2, NAN, 1, 1, 1};
  EXPECT_EQ(BlockScoresOfLayer(chains, LayerId(0), bad, 2).status().code(), StatusCode::kInvalidArgument);
}

TEST(ExpectedAttentionPolicy, ForgetClearsEveryLayerOfAChain) {
  auto board = Board();
  ASSERT_TRUE(board->UpdateScores(std::vector<BlockScore>{{Key(0, 0), 1}, {Key(0, 1), 1}, {Key(1, 0), 1}}).ok());
  board->ForceKeep(std::vector<ChainHash>{Chain(0)});
  board->Forget(std::vector<ChainHash>{Chain(0)});
  auto s = board->Snapshot();
  EXPECT_EQ(s->scores.size(), 1u);
  EXPECT_TRUE(s->force_keep.empty());
}

// A TierManager with DRAM only: DRAM is the lowest tier, so its victims are dropped.
TEST(ExpectedAttentionPolicyInTierManager, ProtectedBlocksAreNeverDropped) {
  const KvGeometry geo{.layers = 1, .kv_heads = 1, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};
  HostTierOptions ho;
  ho.slot_bytes = geo.block_bytes();
  ho.slot_count = 16;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  auto dram = HostTier::Create(ho);
  ASSERT_TRUE(dram.ok()) << dram.status().ToString();
  auto board = Board();
  TierSet set;
  set.tiers[TierIndex(TierKind::kDram)] = std::move(*dram);
  set.policies[TierIndex(TierKind::kDram)] =
      std::make_unique<ExpectedAttentionPolicy>(ExpectedAttentionPolicyOptions{.tier = TierKind::kDram, .lowest = TierKind::kDram}, board);
  TierManagerOptions o;
  o.geometry = geo;
  o.index_shards = 4;
  o.high_watermark = 0.75;
  o.low_watermark = 0.5;
  auto tm = TierManager::Create(o, std::move(set));
  ASSERT_TRUE(tm.ok()) << tm.status().ToString();

  // 10 protected blocks with the lowest scores, then a stream of unprotected ones.
  std::vector<ChainHash> sys;
  for (uint32_t i = 0; i < 10; ++i) sys.push_back(Chain(i));
  board->TagSpan(sys, {.span_id = 0, .kind = SpanKind::kSystemPrompt});
  auto write = [&](uint32_t i, float score) {
    ASSERT_TRUE(board->UpdateScores(std::vector<BlockScore>{{Key(i), score}}).ok());
    std::vector<BlockKey> keys = {Key(i)};
    auto pins = (*tm)->Allocate(keys, TierKind::kDram);
    ASSERT_TRUE(pins.ok()) << "block " << i << ": " << pins.status().ToString();
    ASSERT_TRUE((*tm)->Commit(*pins, Fence()).ok());
    ASSERT_TRUE((*tm)->Release(*pins).ok());
  };
  for (uint32_t i = 0; i < 10; ++i) write(i, 0.0f);
  for (uint32_t i = 10; i < 60; ++i) {
    write(i, 1.0f + static_cast<float>(i));
    (*tm)->DemoteNow();
  }
  for (uint32_t i = 0; i < 10; ++i) {
    std::vector<BlockKey> keys = {Key(i)};
    PinSet p = (*tm)->MatchKeys(keys);
    EXPECT_EQ(p.size(), 1u) << "protected block " << i << " was dropped";
  }
  EXPECT_GT((*tm)->Stats().tiers[TierIndex(TierKind::kDram)].dropped_blocks, 0u);
}

}  // namespace
}  // namespace kvtier
