// Residency hints: the store turns hit counts of entries that reference KV prefixes into a
// budgeted, weighted hint list; KeepWarmPolicy orders hinted blocks after unhinted ones
// (lightest hint first) without ever pinning them.
#include <gtest/gtest.h>

#include <algorithm>

#include "kvtier/clock.h"
#include "kvtier/keep_warm_policy.h"
#include "kvtier/tier_manager.h"
#include "query_store/query_store.h"
#include "query_store_testing.h"
#include "registry.h"

namespace kvtier {
namespace {

using testing::MakeEntry;
using testing::SmallOptions;
using testing::TempDir;

ChainHash Chain(uint8_t b) {
  ChainHash c;
  c.bytes[0] = b;
  c.bytes[31] = b;
  return c;
}

EvictionCandidate Candidate(uint8_t chain, uint64_t last_access) {
  return EvictionCandidate{BlockKey{Chain(chain), LayerId{0}}, Tick{last_access}, 1, false};
}

TEST(KeepWarmHintsTest, BudgetKeepsTheHeaviestChainsAndRepeatsAddUp) {
  auto hints = KeepWarmHints::Create(KeepWarmOptions{.max_chains = 2});
  ASSERT_TRUE(hints.ok());
  std::vector<ResidencyHint> in = {{Chain(1), 1.0}, {Chain(2), 5.0}, {Chain(3), 2.0}, {Chain(1), 3.0}};
  ASSERT_TRUE((*hints)->Set(in).ok());
  auto snap = (*hints)->Snapshot();
  EXPECT_EQ(snap->size(), 2u);
  EXPECT_DOUBLE_EQ(snap->at(Chain(2)), 5.0);
  EXPECT_DOUBLE_EQ(snap->at(Chain(1)), 4.0);
  EXPECT_FALSE(snap->contains(Chain(3)));
  std::vector<ResidencyHint> bad = {{Chain(4), -1.0}};
  EXPECT_EQ((*hints)->Set(bad).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*hints)->size(), 2u);  // unchanged
  EXPECT_EQ(KeepWarmHints::Create(KeepWarmOptions{.max_chains = 0}).status().code(), StatusCode::kInvalidArgument);
}

TEST(KeepWarmPolicyTest, HintedBlocksLeaveAfterUnhintedOnesLightestFirst) {
  auto hints = KeepWarmHints::Create(KeepWarmOptions{});
  ASSERT_TRUE(hints.ok());
  std::vector<ResidencyHint> in = {{Chain(1), 10.0}, {Chain(2), 1.0}};
  ASSERT_TRUE((*hints)->Set(in).ok());
  KeepWarmPolicy policy(MakeLruPolicy(), *hints);
  // Chains 1 and 2 are the least recently used, so plain LRU would evict them first.
  std::vector<EvictionCandidate> c = {Candidate(3, 50), Candidate(1, 10), Candidate(4, 40), Candidate(2, 20)};
  policy.ChooseVictims(c, 2);
  EXPECT_EQ(policy.last_hinted(), 2u);
  EXPECT_EQ(c[0].key.chain, Chain(4));  // unhinted, LRU order
  EXPECT_EQ(c[1].key.chain, Chain(3));
  policy.ChooseVictims(c, 4);  // demand beyond the unhinted blocks: hints yield, never pin
  EXPECT_EQ(c[2].key.chain, Chain(2));  // weight 1 before weight 10
  EXPECT_EQ(c[3].key.chain, Chain(1));
  (*hints)->Clear();
  policy.ChooseVictims(c, 4);  // no hints: exactly the inner policy
  EXPECT_EQ(c[0].key.chain, Chain(1));
  EXPECT_EQ(c[1].key.chain, Chain(2));
}

// An inner policy that orders like LRU but lets at most `allow` blocks leave per pass.
class HoldingPolicy final : public EvictionPolicy {
 public:
  explicit HoldingPolicy(size_t allow) : allow_(allow) {}
  std::string_view name() const override { return "holding"; }
  void ChooseVictims(std::span<EvictionCandidate> c, size_t count) override { lru_.ChooseVictims(c, count); }
  size_t SelectVictims(std::span<EvictionCandidate> c, size_t count) override {
    ChooseVictims(c, count);
    return std::min({count, c.size(), allow_});
  }

 private:
  LruPolicy lru_;
  size_t allow_;
};

TEST(KeepWarmPolicyTest, SelectVictimsKeepsTheInnerPolicysHoldBacks) {
  auto hints = KeepWarmHints::Create(KeepWarmOptions{});
  ASSERT_TRUE(hints.ok());
  std::vector<ResidencyHint> in = {{Chain(1), 10.0}, {Chain(2), 1.0}};
  ASSERT_TRUE((*hints)->Set(in).ok());
  std::vector<EvictionCandidate> c = {Candidate(3, 50), Candidate(1, 10), Candidate(4, 40), Candidate(2, 20)};
  KeepWarmPolicy lets_all(MakeLruPolicy(), *hints);
  EXPECT_EQ(lets_all.SelectVictims(c, 3), 3u);
  EXPECT_EQ(c[0].key.chain, Chain(4));
  EXPECT_EQ(c[1].key.chain, Chain(3));
  EXPECT_EQ(c[2].key.chain, Chain(2));  // the lighter hint goes first
  KeepWarmPolicy holds_one(std::make_unique<HoldingPolicy>(1), *hints);
  EXPECT_EQ(holds_one.SelectVictims(c, 4), 1u);  // the inner policy holds an unhinted block
  EXPECT_EQ(c[0].key.chain, Chain(4));
  KeepWarmPolicy holds_none(std::make_unique<HoldingPolicy>(8), *hints);
  EXPECT_EQ(holds_none.SelectVictims(c, 1), 1u);
}

TEST(QueryStoreHintsTest, HitCountsOfPrefixEntriesBecomeBudgetedHints) {
  TempDir dir;
  auto opened = QueryStore::Open(SmallOptions(dir.path()));
  ASSERT_TRUE(opened.ok());
  QueryStore& store = **opened;
  NamespaceSpec ns;
  ns.model_fingerprint = "test-model@1";
  ns.tokenizer_id = "tok";
  ns.geometry = KvGeometry{.layers = 2, .kv_heads = 1, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};
  auto deriver = KeyDeriver::Create(TenantSecret::FromPassphrase("tenant"), ns);
  ASSERT_TRUE(deriver.ok()) << deriver.status().ToString();

  QueryEntry a = MakeEntry(1, 32), b = MakeEntry(2, 32), c = MakeEntry(3, 32), d = MakeEntry(4, 32);
  a.prefix.tokens = {1, 2, 3, 4, 5, 6, 7, 8};         // two blocks
  b.prefix.tokens = {1, 2, 3, 4, 9, 9, 9, 9, 10};     // shares the first block; a partial tail
  c.prefix.chain = Chain(0xC0);                       // a chain key only
  std::vector<QueryEntry> es = {a, b, c, d};
  ASSERT_TRUE(store.Ingest(es).ok());
  auto hit = [&](const QueryEntry& e, int times) {
    for (int i = 0; i < times; ++i) ASSERT_TRUE(store.Lookup(e.embedding, LookupOptions{.threshold = 0.99f})->hit());
  };
  hit(a, 3);
  hit(b, 1);
  hit(c, 2);
  hit(d, 5);  // no prefix: no hint

  const std::vector<ChainHash> ca = deriver->Chain(a.prefix.tokens);
  const std::vector<ChainHash> cb = deriver->Chain(b.prefix.tokens);
  ASSERT_EQ(ca.size(), 2u);
  ASSERT_EQ(cb.size(), 2u);
  ASSERT_EQ(ca[0], cb[0]);
  auto all = store.ResidencyHints(ResidencyHintOptions{.deriver = &*deriver, .max_chains = 10});
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0], (ResidencyHint{ca[0], 4.0}));  // shared block: 3 + 1
  EXPECT_EQ((*all)[1], (ResidencyHint{ca[1], 3.0}));
  EXPECT_EQ((*all)[2], (ResidencyHint{Chain(0xC0), 2.0}));
  EXPECT_EQ((*all)[3], (ResidencyHint{cb[1], 1.0}));

  auto budgeted = store.ResidencyHints(ResidencyHintOptions{.deriver = &*deriver, .max_chains = 2});
  ASSERT_TRUE(budgeted.ok());
  ASSERT_EQ(budgeted->size(), 2u);
  EXPECT_EQ((*budgeted)[1].chain, ca[1]);

  auto chains_only = store.ResidencyHints(ResidencyHintOptions{});  // no deriver: stored chain keys
  ASSERT_TRUE(chains_only.ok());
  ASSERT_EQ(chains_only->size(), 1u);
  EXPECT_EQ((*chains_only)[0].chain, Chain(0xC0));

  // The hints feed the policy's hint set directly.
  auto set = KeepWarmHints::Create(KeepWarmOptions{.max_chains = 3});
  ASSERT_TRUE((*set)->Set(*all).ok());
  EXPECT_EQ((*set)->size(), 3u);
}

// End to end: a DRAM-only TierManager whose DRAM policy is KeepWarmPolicy(LRU), fed with the
// store's hints. Under demotion pressure the hinted blocks stay although they are the
// least recently used; with a budget of 2 only the two heaviest do.
class KeepWarmTierManagerTest : public ::testing::TestWithParam<uint32_t> {};

TEST_P(KeepWarmTierManagerTest, HintedBlocksStayResidentWithinTheBudget) {
  const uint32_t budget = GetParam();
  TempDir dir;
  auto store = QueryStore::Open(SmallOptions(dir.path()));
  ASSERT_TRUE(store.ok());
  auto hints = KeepWarmHints::Create(KeepWarmOptions{.max_chains = budget});
  ASSERT_TRUE(hints.ok());

  const KvGeometry geo{.layers = 1, .kv_heads = 1, .head_dim = 16, .block_tokens = 16, .dtype = DType::kF16};
  TierConfig c;
  c.geometry = geo;
  c.dram_bytes = 16 * 4096;  // 16 slots
  c.hbm = HbmBackend::kNone;
  c.allow_unpinned_dram = true;
  auto tiers = BuildTiers(c);
  ASSERT_TRUE(tiers.ok()) << tiers.status().ToString();
  tiers->policies[TierIndex(TierKind::kDram)] = std::make_unique<KeepWarmPolicy>(MakeLruPolicy(), *hints);
  ManualClock clock;
  TierManagerOptions o;
  o.geometry = geo;
  o.clock = &clock;
  o.high_watermark = 0.75;  // above 12 of 16 slots, demote down to 8
  o.low_watermark = 0.5;
  auto tm = TierManager::Create(o, std::move(tiers).value());
  ASSERT_TRUE(tm.ok()) << tm.status().ToString();

  std::vector<BlockKey> keys(16);
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i].chain = Chain(static_cast<uint8_t>(i + 1));
    keys[i].layer = LayerId{0};
  }
  PinSet held;  // pinned until every block is written, so nothing leaves early
  for (const BlockKey& k : keys) {
    clock.Advance(1000);  // block 0 is the least recently used
    auto pins = (*tm)->Allocate(std::span(&k, 1), TierKind::kDram);
    ASSERT_TRUE(pins.ok()) << pins.status().ToString();
    ASSERT_TRUE((*tm)->Commit(*pins, Fence()).ok());
    held.Append(std::move(pins).value());
  }
  // Four store entries reference the chains of the four oldest blocks; block 0's entry is
  // hit most, then 1, 2, 3.
  std::vector<QueryEntry> es;
  for (uint64_t i = 0; i < 4; ++i) {
    es.push_back(MakeEntry(100 + i, 32));
    es.back().prefix.chain = keys[i].chain;
  }
  ASSERT_TRUE((*store)->Ingest(es).ok());
  for (uint64_t i = 0; i < 4; ++i) {
    for (uint64_t h = 0; h < 4 - i; ++h) ASSERT_TRUE((*store)->Lookup(es[i].embedding, LookupOptions{.threshold = 0.99f})->hit());
  }
  auto list = (*store)->ResidencyHints(ResidencyHintOptions{});
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 4u);
  ASSERT_TRUE((*hints)->Set(*list).ok());

  held = PinSet();
  (*tm)->DemoteNow();
  EXPECT_EQ((*tm)->Stats().tiers[TierIndex(TierKind::kDram)].used_slots, 8u);
  for (size_t i = 0; i < keys.size(); ++i) {
    const bool hinted = i < std::min<size_t>(budget, 4);
    const bool newest = i >= 16 - (8 - std::min<size_t>(budget, 4));  // the rest of the 8 survivors
    PinSet p = (*tm)->MatchKeys(std::span(keys).subspan(i, 1));
    EXPECT_EQ(p.size(), hinted || newest ? 1u : 0u) << "block " << i << " (budget " << budget << ")";
  }
}

INSTANTIATE_TEST_SUITE_P(Budgets, KeepWarmTierManagerTest, ::testing::Values(4u, 2u));

}  // namespace
}  // namespace kvtier
