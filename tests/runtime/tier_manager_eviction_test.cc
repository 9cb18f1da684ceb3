// TierManager behaviour (runtime/include/kvtier/tier_manager.h), part 2: release and drop,
// watermarks and demotion, DRAM-only dropping, injected copy failures (never served), prefix
// matching and the statistics they leave. Part 1 is tier_manager_test.cc; the fixture is
// tier_manager_testing.h.
#include <gtest/gtest.h>

#include "tier_manager_testing.h"

namespace kvtier {
namespace {

using namespace tier_manager_testing;  // NOLINT: the fixture and helpers of these tests

// --- release and drop --------------------------------------------------------------------------

TEST_F(TierManagerTest, DropIsNotFoundForUnknownFailedPreconditionWhilePinnedThenOk) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(2);
  const auto unknown = RandomKeys(1);
  EXPECT_EQ(tm->Drop(unknown).code(), StatusCode::kNotFound);

  PinSet pins = CommitNew(*tm, keys);
  ASSERT_TRUE(Settle(*tm, pins.size()));
  Status s = tm->Drop(keys);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(keys[0].ToString()), std::string_view::npos) << s.ToString();
  EXPECT_TRUE(HoldsWritten(*tm, pins, 0, TierKind::kHbm)) << "a refused drop must change nothing";
  EXPECT_EQ(tm->MatchKeys(keys).size(), 2u);

  ASSERT_TRUE(tm->Release(pins).ok());
  // One unknown key among known ones: kNotFound, and the known ones are dropped anyway.
  const std::vector<BlockKey> mixed = {keys[0], unknown[0], keys[1]};
  EXPECT_EQ(tm->Drop(mixed).code(), StatusCode::kNotFound);
  EXPECT_TRUE(tm->MatchKeys(keys).empty());
  const RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kDram)].used_slots, 0u);
  EXPECT_EQ(tm->Drop(keys).code(), StatusCode::kNotFound);
  // The keys can be written again.
  CommitAndRelease(*tm, keys);
  EXPECT_EQ(tm->MatchKeys(keys).size(), 2u);
}

TEST_F(TierManagerTest, DropOfABlockBeingWrittenIsAFailedPrecondition) {
  auto tm = Make();
  const auto keys = RandomKeys(1);
  PinSet pins = Must(tm->Allocate(keys), "Allocate");
  EXPECT_EQ(tm->Drop(keys).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(tm->Stats().indexed_blocks, 1u);
}

TEST_F(TierManagerTest, ReleaseTwiceIsAFailedPrecondition) {
  SEED_TRACE();
  auto tm = Make();
  auto other = Make();
  const auto keys = RandomKeys(2);
  CommitAndRelease(*tm, keys);
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 2u);
  EXPECT_EQ(other->Release(pins).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(other->Locate(pins, 0, TierKind::kHbm).status().code(), StatusCode::kInvalidArgument);
  ASSERT_TRUE(tm->Release(pins).ok());
  EXPECT_EQ(tm->Release(pins).code(), StatusCode::kFailedPrecondition);
  PinSet moved = tm->MatchKeys(keys);
  PinSet to = std::move(moved);
  EXPECT_EQ(tm->Release(moved).code(), StatusCode::kFailedPrecondition);  // NOLINT(bugprone-use-after-move)
  EXPECT_TRUE(Settle(*tm, 2));
  ASSERT_TRUE(tm->Release(to).ok());
  EXPECT_TRUE(Settle(*tm, 0));
}

TEST_F(TierManagerTest, PinSetSplitAndAppendKeepEveryPinOnce) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(4);
  CommitAndRelease(*tm, keys);
  ASSERT_TRUE(Settle(*tm));
  PinSet pins = tm->MatchKeys(keys);
  PinSet middle = pins.Split(1, 3);
  ASSERT_EQ(middle.size(), 2u);
  ASSERT_EQ(pins.size(), 2u);
  EXPECT_EQ(middle.key(0), keys[1]);
  EXPECT_EQ(pins.key(1), keys[3]);
  EXPECT_EQ(tm->Stats().pins, 4u);
  ASSERT_TRUE(tm->Release(middle).ok());
  EXPECT_EQ(tm->Stats().pins, 2u);
  PinSet more = tm->MatchKeys(std::span(keys).first(1));
  pins.Append(std::move(more));
  EXPECT_EQ(pins.size(), 3u);
  EXPECT_TRUE(more.empty());  // NOLINT(bugprone-use-after-move)
  EXPECT_EQ(tm->Stats().pins, 3u);
  pins = PinSet();
  EXPECT_EQ(tm->Stats().pins, 0u);

  // An empty set (even one another manager returned) takes pins from any manager.
  auto other = Make();
  PinSet empty = other->MatchKeys(RandomKeys(1));
  ASSERT_TRUE(empty.empty());
  empty.Append(tm->MatchKeys(keys));
  EXPECT_EQ(empty.size(), 4u);
  EXPECT_TRUE(tm->Release(empty).ok());
  EXPECT_EQ(tm->Stats().pins, 0u);
}

// --- watermarks and demotion -------------------------------------------------------------------

TEST_F(TierManagerTest, DemotionTakesHbmFromAboveHighDownToLowWatermark) {
  SEED_TRACE();
  auto tm = Make(Spec(20, 64));  // high: 15 slots, low: 10
  const auto keys = RandomKeys(20);
  CommitAndRelease(*tm, keys);
  ASSERT_TRUE(Settle(*tm));
  tm->DemoteNow();
  RuntimeStats st = tm->Stats();
  const TierStats& hbm = st.tiers[TierIndex(TierKind::kHbm)];
  EXPECT_EQ(hbm.peak_used_slots, 20u);
  EXPECT_LE(hbm.used_slots, 10u);
  EXPECT_GE(hbm.evictions, 10u);
  EXPECT_EQ(st.indexed_blocks, 20u) << "demotion from HBM keeps the DRAM copy";
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 20u);
  size_t in_hbm = 0;
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
    if (Resident(*tm, pins, i, TierKind::kHbm)) {
      ++in_hbm;
      EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
    }
  }
  EXPECT_EQ(in_hbm, hbm.used_slots);
  // Below the high watermark the demotion thread leaves HBM alone.
  tm->DemoteNow();
  EXPECT_EQ(Used(*tm, TierKind::kHbm), in_hbm);
}

TEST_F(TierManagerTest, PinnedBlocksAreNeverEvicted) {
  SEED_TRACE();
  auto tm = Make(Spec(16, 64));  // high: 12, low: 8
  const auto keys = RandomKeys(16);
  PinSet pins = CommitNew(*tm, keys);
  PinSet loose = pins.Split(12, 16);  // 12 stay pinned
  ASSERT_TRUE(tm->Release(loose).ok());
  ASSERT_TRUE(Settle(*tm, 12));
  std::vector<std::byte*> before;
  ASSERT_TRUE(tm->BlockTable(pins, TierKind::kHbm, &before).ok());
  for (int round = 0; round < 3; ++round) tm->DemoteNow();
  EXPECT_EQ(Used(*tm, TierKind::kHbm), 12u) << "only the 4 unpinned blocks may leave";
  std::vector<std::byte*> after;
  ASSERT_TRUE(tm->BlockTable(pins, TierKind::kHbm, &after).ok());
  EXPECT_EQ(before, after);
  for (size_t i = 0; i < pins.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
  PinSet rest = tm->MatchKeys(std::span(keys).subspan(12));
  ASSERT_EQ(rest.size(), 4u);
  for (size_t i = 0; i < rest.size(); ++i) {
    EXPECT_FALSE(Resident(*tm, rest, i, TierKind::kHbm));
    EXPECT_TRUE(HoldsWritten(*tm, rest, i, TierKind::kDram));
  }
}

TEST_F(TierManagerTest, DirtyBlocksAreCopiedDownBeforeEviction) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.offload_on_commit = false;
  auto tm = Make(Spec(8, 64), o);  // high: 6, low: 4
  const auto keys = RandomKeys(8);
  CommitAndRelease(*tm, keys);
  tm->DemoteNow();
  ASSERT_TRUE(WaitUntil([&] { return Used(*tm, TierKind::kHbm) <= 4; })) << tm->Stats().ToText();
  const RuntimeStats st = tm->Stats();
  EXPECT_GE(st.tiers[TierIndex(TierKind::kHbm)].demoted_blocks, 4u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kDram)].used_slots, st.tiers[TierIndex(TierKind::kHbm)].demoted_blocks);
  EXPECT_EQ(st.indexed_blocks, 8u) << "no dirty block may be lost";
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 8u);
  size_t in_dram = 0;
  for (size_t i = 0; i < pins.size(); ++i) {
    const bool hbm = Resident(*tm, pins, i, TierKind::kHbm);
    const bool dram = Resident(*tm, pins, i, TierKind::kDram);
    EXPECT_TRUE(hbm || dram) << i;
    if (hbm) {
      EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
    }
    if (dram) {
      ++in_dram;
      EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
    }
  }
  EXPECT_GE(in_dram, 4u);
  ASSERT_TRUE(tm->Onboard(pins).WaitFor(5s).ok());
  for (size_t i = 0; i < pins.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
}

TEST_F(TierManagerTest, DemoteNowDoesNotWaitForTheDemotionPeriod) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.demotion_period = std::chrono::hours(1);
  auto tm = Make(Spec(8, 64), o);
  CommitAndRelease(*tm, RandomKeys(8));
  ASSERT_TRUE(Settle(*tm));
  auto done = std::async(std::launch::async, [&] { tm->DemoteNow(); });
  EXPECT_EQ(done.wait_for(10s), std::future_status::ready) << "DemoteNow waited for a periodic pass";
  EXPECT_LE(Used(*tm, TierKind::kHbm), 4u);
  tm.reset();  // stops the demotion thread, which also ends a stuck DemoteNow
  done.wait();
}

TEST_F(TierManagerTest, DirtyBlocksDemoteIntoWhatRoomIsLeftBelow) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.offload_on_commit = false;
  auto tm = Make(Spec(16, 16), o);  // HBM high 12, low 8; DRAM high 12
  // DRAM: 12 pinned blocks, 4 free slots, at (not above) its high watermark.
  PinSet dram_held = CommitNew(*tm, RandomKeys(12), TierKind::kDram);
  const auto keys = RandomKeys(16);
  CommitAndRelease(*tm, keys);  // HBM full of dirty blocks: 8 should leave, 4 can
  tm->DemoteNow();
  ASSERT_TRUE(WaitUntil([&] { return Used(*tm, TierKind::kHbm) <= 12; }))
      << "dirty blocks waited for room for all of them\n" << tm->Stats().ToText();
  const RuntimeStats st = tm->Stats();
  const uint64_t demoted = st.tiers[TierIndex(TierKind::kHbm)].demoted_blocks;
  EXPECT_GE(demoted, 4u);
  // DRAM is then full (above its high watermark) and may drop what arrived (its only
  // unpinned blocks): a block is gone or intact, and only demoted blocks can be gone.
  uint64_t gone = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    PinSet p = tm->MatchKeys(std::span(keys).subspan(i, 1));
    if (p.empty()) {
      ++gone;
      continue;
    }
    const bool hbm = Resident(*tm, p, 0, TierKind::kHbm);
    EXPECT_TRUE(HoldsWritten(*tm, p, 0, hbm ? TierKind::kHbm : TierKind::kDram)) << i;
  }
  EXPECT_LE(gone, demoted);
  EXPECT_EQ(gone, st.tiers[TierIndex(TierKind::kDram)].dropped_blocks);
  for (size_t i = 0; i < dram_held.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, dram_held, i, TierKind::kDram));
}

TEST_F(TierManagerTest, DramOnlyRuntimeDropsLeastRecentlyUsedBlocksWhenFull) {
  SEED_TRACE();
  ManualClock clock;
  TierManagerOptions o = Options();
  o.clock = &clock;
  TierConfig c;
  c.geometry = kGeo;
  c.dram_bytes = 16 * 4096;
  c.hbm = HbmBackend::kNone;
  c.allow_unpinned_dram = true;
  c.logger = &log_;
  auto tm = Must(TierManager::Create(o, Must(BuildTiers(c), "BuildTiers")), "Create");  // high: 12, low: 8
  ASSERT_EQ(tm->tier_caps(TierKind::kDram)->slot_count, 16u);

  const auto keys = RandomKeys(16);
  PinSet held;  // everything stays pinned until the ages are set
  for (const BlockKey& k : keys) {
    clock.Advance(1000);
    held.Append(CommitNew(*tm, {k}, TierKind::kDram));
  }
  EXPECT_EQ(tm->Allocate(RandomKeys(1), TierKind::kDram).status().code(), StatusCode::kExhausted);
  clock.Advance(1'000'000);
  PinSet touched = tm->MatchKeys(std::span(keys).first(4));  // the oldest four, used again
  ASSERT_EQ(touched.size(), 4u);
  touched = PinSet();
  held = PinSet();
  tm->DemoteNow();

  const RuntimeStats st = tm->Stats();
  const TierStats& dram = st.tiers[TierIndex(TierKind::kDram)];
  EXPECT_EQ(dram.used_slots, 8u);
  EXPECT_EQ(dram.evictions, 8u);
  EXPECT_EQ(dram.dropped_blocks, 8u);
  EXPECT_EQ(st.indexed_blocks, 8u);
  for (size_t i = 0; i < keys.size(); ++i) {
    PinSet p = tm->MatchKeys(std::span(keys).subspan(i, 1));
    const bool should_survive = i < 4 || i >= 12;
    EXPECT_EQ(p.size(), should_survive ? 1u : 0u) << "block " << i;
    if (!p.empty()) {
      EXPECT_TRUE(HoldsWritten(*tm, p, 0, TierKind::kDram)) << "block " << i;
    }
  }
}

TEST_F(TierManagerTest, ManualClockOrdersHbmEvictionByLastMatch) {
  SEED_TRACE();
  ManualClock clock;
  TierManagerOptions o = Options();
  o.clock = &clock;
  auto tm = Make(Spec(8, 64), o);  // high: 6, low: 4
  const auto keys = RandomKeys(8);
  PinSet held = CommitNew(*tm, keys);
  ASSERT_TRUE(Settle(*tm, 8));
  // Match in reverse order, later and later: key 7 is the least recently used, key 0 the most.
  for (size_t i = keys.size(); i-- > 0;) {
    clock.Advance(1000);
    PinSet p = tm->MatchKeys(std::span(keys).subspan(i, 1));
    ASSERT_EQ(p.size(), 1u);
  }
  held = PinSet();
  tm->DemoteNow();
  ASSERT_EQ(Used(*tm, TierKind::kHbm), 4u);
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 8u);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(Resident(*tm, pins, i, TierKind::kHbm), i < 4) << "block " << i;
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram)) << "block " << i;
  }
}

TEST_F(TierManagerTest, ACommitCountsAsAUseForEviction) {
  SEED_TRACE();
  ManualClock clock;
  TierManagerOptions o = Options();
  o.clock = &clock;
  auto tm = Make(Spec(4, 64), o);  // high: 3, low: 2
  const auto keys = RandomKeys(4);
  clock.Advance(1000);
  PinSet slow = Must(tm->Allocate(std::span(keys).first(1)), "Allocate");  // allocated first...
  WriteAll(*tm, slow);
  auto [written, signal] = Fence::Make();
  ASSERT_TRUE(tm->Commit(slow, written).ok());
  clock.Advance(1000);
  PinSet fast = CommitNew(*tm, {keys[1], keys[2], keys[3]});
  clock.Advance(1000);
  signal.Signal(Status());  // ...but its write lands last
  slow = PinSet();
  fast = PinSet();
  ASSERT_TRUE(Settle(*tm));
  tm->DemoteNow();
  ASSERT_EQ(Used(*tm, TierKind::kHbm), 2u);
  PinSet first = tm->MatchKeys(std::span(keys).first(1));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_TRUE(Resident(*tm, first, 0, TierKind::kHbm)) << "the block committed last was evicted first";
  EXPECT_TRUE(HoldsWritten(*tm, first, 0, TierKind::kHbm));
}

// --- injected copy failures ----------------------------------------------------------------------

TEST_F(TierManagerTest, FailedOnboardCopyIsNeverServed) {
  SEED_TRACE();
  FaultOptions f;
  f.seed = seed_;
  f.copy_failure = 1.0;
  auto tm = Make(WithFaults(Spec(8, 64), f, std::nullopt));
  const auto chains = RandomChains(2);
  const auto keys = KeysOf(chains);
  CommitAndRelease(*tm, keys, TierKind::kDram);

  PrefixMatch m = tm->MatchPrefix(chains);
  ASSERT_EQ(m.blocks, 2u);
  EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kHbm)], 0u);
  Status s = tm->Onboard(m.pins).WaitFor(5s);
  EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
  for (size_t i = 0; i < m.pins.size(); ++i) {
    EXPECT_EQ(tm->Locate(m.pins, i, TierKind::kHbm).status().code(), StatusCode::kFailedPrecondition);
    EXPECT_TRUE(HoldsWritten(*tm, m.pins, i, TierKind::kDram));
  }
  std::vector<std::byte*> table;
  EXPECT_EQ(tm->BlockTable(m.pins, TierKind::kHbm, &table).code(), StatusCode::kFailedPrecondition);
  const RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.failed_copies, keys.size());
  EXPECT_EQ(st.onboard_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u) << "the slots of a failed copy go back";
  EXPECT_EQ(tm->MatchPrefix(chains).blocks_at_or_above[TierIndex(TierKind::kHbm)], 0u);
  EXPECT_GT(log_.warnings.load(), 0u);
}

TEST_F(TierManagerTest, PartiallyCopiedOnboardIsNeverServed) {
  SEED_TRACE();
  FaultOptions f;
  f.seed = seed_;
  f.partial_copy = 1.0;
  auto tm = Make(WithFaults(Spec(8, 64), f, std::nullopt));
  const auto keys = RandomKeys(4);
  CommitAndRelease(*tm, keys, TierKind::kDram);
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 4u);
  EXPECT_EQ(tm->Onboard(pins).WaitFor(5s).code(), StatusCode::kIoError);
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_FALSE(Resident(*tm, pins, i, TierKind::kHbm)) << "block " << i << " half-copied and served";
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
  }
  const RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.failed_copies, 4u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
}

TEST_F(TierManagerTest, FailedCopiesDownKeepTheBlockInHbm) {
  SEED_TRACE();
  FaultOptions f;
  f.seed = seed_;
  f.copy_failure = 1.0;
  TierManagerOptions o = Options();
  o.demotion_period = std::chrono::hours(1);  // passes only when kicked: Stats see no copy in progress
  auto tm = Make(WithFaults(Spec(8, 64), std::nullopt, f), o);  // high: 6, low: 4
  const auto keys = RandomKeys(8);
  CommitAndRelease(*tm, keys);  // the copies on commit fail
  ASSERT_TRUE(Settle(*tm));
  tm->DemoteNow();  // so do the demotion copies
  tm->DemoteNow();
  const RuntimeStats st = tm->Stats();
  EXPECT_GE(st.failed_copies, 8u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 8u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].evictions, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kDram)].used_slots, 0u);
  EXPECT_EQ(st.indexed_blocks, 8u);
  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 8u);
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
    EXPECT_FALSE(Resident(*tm, pins, i, TierKind::kDram));
  }
  EXPECT_EQ(tm->Offload(pins).WaitFor(5s).code(), StatusCode::kIoError);
  for (size_t i = 0; i < pins.size(); ++i) EXPECT_FALSE(Resident(*tm, pins, i, TierKind::kDram));
}

// --- matching and statistics ----------------------------------------------------------------------

TEST_F(TierManagerTest, MatchPrefixNeedsEveryLayerOfABlock) {
  SEED_TRACE();
  auto tm = Make();
  const auto chains = RandomChains(4);
  const auto keys = KeysOf(chains);
  CommitAndRelease(*tm, keys);
  ASSERT_TRUE(Settle(*tm));
  ASSERT_EQ(tm->MatchPrefix(chains).blocks, 4u);
  const BlockKey gone{chains[2], LayerId{1}};
  ASSERT_TRUE(tm->Drop(std::span(&gone, 1)).ok());
  PrefixMatch m = tm->MatchPrefix(chains);
  EXPECT_EQ(m.blocks, 2u);
  EXPECT_EQ(m.pins.size(), 4u) << "the partial block's layer 0 must not stay pinned";
  EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kHbm)], 2u);
  EXPECT_EQ(tm->Stats().pins, 4u);
  PinSet k = tm->MatchKeys(keys);
  EXPECT_EQ(k.size(), 5u);  // keys before (chain 2, layer 1)
}

TEST_F(TierManagerTest, StatsCountHitsAndMissesPerTier) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.offload_on_commit = false;
  auto tm = Make({}, o);
  const auto keys = RandomKeys(3);
  CommitAndRelease(*tm, {keys[0]});                  // HBM
  CommitAndRelease(*tm, {keys[1]}, TierKind::kDram);  // DRAM only
  const size_t hbm = TierIndex(TierKind::kHbm), dram = TierIndex(TierKind::kDram);

  { PinSet p = tm->MatchKeys(std::span(keys).first(1)); }
  RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.tiers[hbm].hits, 1u);
  EXPECT_EQ(st.tiers[hbm].misses, 0u);
  EXPECT_EQ(st.tiers[dram].hits, 0u);

  { PinSet p = tm->MatchKeys(std::span(keys).subspan(1, 1)); }
  st = tm->Stats();
  EXPECT_EQ(st.tiers[hbm].hits, 1u);
  EXPECT_EQ(st.tiers[hbm].misses, 1u);
  EXPECT_EQ(st.tiers[dram].hits, 1u);
  EXPECT_EQ(st.tiers[dram].misses, 0u);

  { PinSet p = tm->MatchKeys(std::span(keys).subspan(2, 1)); }  // unknown
  st = tm->Stats();
  EXPECT_EQ(st.tiers[hbm].hits, 1u);
  EXPECT_EQ(st.tiers[hbm].misses, 2u);
  EXPECT_EQ(st.tiers[dram].hits, 1u);
  EXPECT_EQ(st.tiers[dram].misses, 1u);

  EXPECT_EQ(st.blocks_allocated, 2u);
  EXPECT_EQ(st.blocks_committed, 2u);
  EXPECT_EQ(st.blocks_aborted, 0u);
  EXPECT_EQ(st.indexed_blocks, 2u);
  EXPECT_EQ(st.pins, 0u);
  EXPECT_TRUE(st.tiers[hbm].present);
  EXPECT_TRUE(st.tiers[dram].present);
  EXPECT_FALSE(st.tiers[TierIndex(TierKind::kNvme)].present);
  EXPECT_EQ(st.tiers[hbm].capacity_slots, 16u);
  EXPECT_EQ(st.tiers[hbm].used_slots, 1u);
  EXPECT_EQ(st.tiers[dram].used_slots, 1u);
  EXPECT_EQ(st.movers.size(), 2u);
  EXPECT_NE(st.ToText().find("hbm"), std::string::npos);
}

}  // namespace
}  // namespace kvtier
