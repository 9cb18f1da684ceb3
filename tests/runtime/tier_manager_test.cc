// TierManager behaviour (runtime/include/kvtier/tier_manager.h), part 1: creation checks,
// the allocate -> write -> commit -> match cycle, aborts, onboard/offload and the addresses
// they hand out. Part 2 (release and drop, watermarks, demotion, injected copy failures,
// statistics) is tier_manager_eviction_test.cc; the fixture is tier_manager_testing.h.
#include <gtest/gtest.h>

#include "tier_manager_testing.h"

namespace kvtier {
namespace {

using namespace tier_manager_testing;  // NOLINT: the fixture and helpers of these tests

// --- Create ---------------------------------------------------------------------------------

TEST_F(TierManagerTest, CreateRejectsATierSetWithoutTiers) {
  auto r = TierManager::Create(Options(), TierSet{});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TierManagerTest, CreateRejectsSlotsSmallerThanABlock) {
  TierSpec spec;
  spec.hbm_slot_bytes = 256;  // emulated HBM rounds to 256 B; the block is 512 B
  auto r = TierManager::Create(Options(), MakeTiers(spec, &log_));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("smaller than"), std::string_view::npos) << r.status().ToString();
}

TEST_F(TierManagerTest, CreateRejectsATierGivenAsAnotherKind) {
  TierSet set = MakeTiers(Spec(0, 64), &log_);
  std::swap(set.tiers[TierIndex(TierKind::kDram)], set.tiers[TierIndex(TierKind::kHbm)]);
  auto r = TierManager::Create(Options(), std::move(set));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TierManagerTest, CreateRejectsAMoverJoiningAnAbsentTier) {
  // The HBM tier exists for the mover to borrow, but is not part of the set.
  auto hbm = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.block_bytes(), .slot_count = 4}), "hbm");
  TierSet set = MakeTiers(Spec(0, 64), &log_);
  set.movers.push_back(Must(MemcpyMover::Create(set.tiers[TierIndex(TierKind::kDram)].get(), hbm.get(), {}), "mv"));
  auto r = TierManager::Create(Options(), std::move(set));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("does not join"), std::string_view::npos) << r.status().ToString();
}

TEST_F(TierManagerTest, CreateRejectsTwoMoversForOneDirection) {
  TierSet set = MakeTiers({}, &log_);
  Tier* dram = set.tiers[TierIndex(TierKind::kDram)].get();
  Tier* hbm = set.tiers[TierIndex(TierKind::kHbm)].get();
  set.movers.push_back(Must(MemcpyMover::Create(dram, hbm, {}), "second mover up"));
  auto r = TierManager::Create(Options(), std::move(set));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("two movers"), std::string_view::npos) << r.status().ToString();
}

TEST_F(TierManagerTest, CreateRejectsBadWatermarks) {
  const std::pair<double, double> bad[] = {{0.9, 0.8}, {0.8, 0.8}, {0.0, 0.5}, {-0.1, 0.5}, {0.5, 1.01}};
  for (auto [low, high] : bad) {
    TierManagerOptions o = Options();
    o.low_watermark = low;
    o.high_watermark = high;
    auto r = TierManager::Create(o, MakeTiers({}, &log_));
    ASSERT_FALSE(r.ok()) << "low " << low << " high " << high;
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  TierManagerOptions o = Options();
  o.low_watermark = 0.5;
  o.high_watermark = 1.0;  // the edge is allowed
  EXPECT_TRUE(TierManager::Create(o, MakeTiers({}, &log_)).ok());
}

TEST_F(TierManagerTest, CreateRejectsShardCountsThatAreNotPowersOfTwo) {
  for (uint32_t shards : {0u, 3u, 6u, 100u, 8192u}) {
    TierManagerOptions o = Options();
    o.index_shards = shards;
    auto r = TierManager::Create(o, MakeTiers({}, &log_));
    ASSERT_FALSE(r.ok()) << shards << " shards";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  for (uint32_t shards : {1u, 2u, 64u, 4096u}) {
    TierManagerOptions o = Options();
    o.index_shards = shards;
    EXPECT_TRUE(TierManager::Create(o, MakeTiers({}, &log_)).ok()) << shards << " shards";
  }
}

TEST_F(TierManagerTest, CreateRejectsABadGeometryOrDemotionPeriod) {
  TierManagerOptions o = Options();
  o.geometry.layers = 0;
  EXPECT_EQ(TierManager::Create(o, MakeTiers({}, &log_)).status().code(), StatusCode::kInvalidArgument);
  o = Options();
  o.demotion_period = 0ms;
  EXPECT_EQ(TierManager::Create(o, MakeTiers({}, &log_)).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(TierManagerTest, CreateAcceptsWhatBuildTiersAssembles) {
  for (HbmBackend hbm : {HbmBackend::kEmulated, HbmBackend::kNone}) {
    TierConfig c;
    c.geometry = kGeo;
    c.hbm_bytes = 64 << 10;
    c.dram_bytes = 256 << 10;
    c.hbm = hbm;
    c.allow_unpinned_dram = true;
    c.logger = &log_;
    auto tiers = BuildTiers(c);
    ASSERT_TRUE(tiers.ok()) << tiers.status().ToString();
    auto tm = TierManager::Create(Options(), std::move(tiers).value());
    ASSERT_TRUE(tm.ok()) << tm.status().ToString();
    EXPECT_EQ((*tm)->has_tier(TierKind::kHbm), hbm != HbmBackend::kNone);
    EXPECT_TRUE((*tm)->has_tier(TierKind::kDram));
    EXPECT_FALSE((*tm)->has_tier(TierKind::kNvme));
    ASSERT_NE((*tm)->tier_caps(TierKind::kDram), nullptr);
    EXPECT_GE((*tm)->tier_caps(TierKind::kDram)->slot_bytes, kGeo.block_bytes());
  }
}

// --- allocate, write, commit, match ---------------------------------------------------------

TEST_F(TierManagerTest, CommittedBlocksMatchWithTheirBytes) {
  SEED_TRACE();
  auto tm = Make();
  const auto chains = RandomChains(3);
  const auto keys = KeysOf(chains);
  CommitAndRelease(*tm, keys);

  PrefixMatch m = tm->MatchPrefix(chains);
  EXPECT_EQ(m.blocks, 3u);
  EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kHbm)], 3u);
  EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kDram)], 3u);
  ASSERT_EQ(m.pins.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) EXPECT_EQ(m.pins.key(i), keys[i]);
  std::vector<std::byte*> table;
  ASSERT_TRUE(tm->BlockTable(m.pins, TierKind::kHbm, &table).ok());
  ASSERT_EQ(table.size(), keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(table[i], PtrOf(*tm, m.pins, i, TierKind::kHbm));
    EXPECT_TRUE(HoldsWritten(*tm, m.pins, i, TierKind::kHbm));
  }

  // A longer request matches the committed prefix only.
  auto longer = chains;
  longer.push_back(RandomChain());
  PrefixMatch m2 = tm->MatchPrefix(longer);
  EXPECT_EQ(m2.blocks, 3u);
  EXPECT_EQ(m2.pins.size(), keys.size());
  const auto stats = tm->Stats();
  EXPECT_EQ(stats.blocks_allocated, keys.size());
  EXPECT_EQ(stats.blocks_committed, keys.size());
  EXPECT_EQ(stats.indexed_blocks, keys.size());
}

TEST_F(TierManagerTest, UncommittedBlocksDoNotMatch) {
  SEED_TRACE();
  auto tm = Make();
  const auto chains = RandomChains(2);
  const auto keys = KeysOf(chains);
  PinSet pins = Must(tm->Allocate(keys), "Allocate");
  WriteAll(*tm, pins);
  EXPECT_EQ(tm->MatchPrefix(chains).blocks, 0u);
  EXPECT_TRUE(tm->MatchKeys(keys).empty());

  // Committed with a fence still pending: not matchable until it signals.
  auto [written, signal] = Fence::Make();
  ASSERT_TRUE(tm->Commit(pins, written).ok());
  EXPECT_EQ(tm->MatchPrefix(chains).blocks, 0u);
  EXPECT_TRUE(tm->MatchKeys(keys).empty());
  signal.Signal(Status());
  PrefixMatch m = tm->MatchPrefix(chains);
  EXPECT_EQ(m.blocks, 2u);
  for (size_t i = 0; i < m.pins.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, m.pins, i, TierKind::kHbm));
}

TEST_F(TierManagerTest, ReleaseOfAnUncommittedAllocationAbortsIt) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(4);
  {
    PinSet pins = Must(tm->Allocate(keys), "Allocate");
    WriteAll(*tm, pins);
    EXPECT_EQ(Used(*tm, TierKind::kHbm), 4u);
    EXPECT_EQ(tm->Stats().indexed_blocks, 4u);
    ASSERT_TRUE(tm->Release(pins).ok());
  }
  RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.blocks_aborted, 4u);
  EXPECT_EQ(st.pins, 0u);
  EXPECT_TRUE(tm->MatchKeys(keys).empty());
  EXPECT_EQ(tm->Drop(std::span(keys).first(1)).code(), StatusCode::kNotFound);

  // The destructor of a PinSet aborts the same way; the keys are free for a new allocation.
  { PinSet again = Must(tm->Allocate(keys), "Allocate again"); }
  st = tm->Stats();
  EXPECT_EQ(st.blocks_aborted, 8u);
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
}

TEST_F(TierManagerTest, CommitWithAFailedFenceDropsTheBlocks) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(3);
  PinSet pins = Must(tm->Allocate(keys), "Allocate");
  WriteAll(*tm, pins);
  ASSERT_TRUE(tm->Commit(pins, Fence::Failed(Status::IoError("the engine's kernel failed"))).ok());
  EXPECT_TRUE(tm->MatchKeys(keys).empty());
  EXPECT_EQ(tm->Stats().blocks_committed, 0u);
  EXPECT_EQ(tm->Stats().blocks_aborted, 3u);
  EXPECT_FALSE(Resident(*tm, pins, 0, TierKind::kHbm));
  ASSERT_TRUE(tm->Release(pins).ok());
  RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kDram)].used_slots, 0u);
  EXPECT_EQ(st.pins, 0u);

  // A fence that fails later (its producer went away) drops them the same way.
  {
    PinSet p2 = Must(tm->Allocate(keys), "Allocate again");
    WriteAll(*tm, p2);
    auto [written, signal] = Fence::Make();
    ASSERT_TRUE(tm->Commit(p2, written).ok());
    { FenceSignal gone = std::move(signal); }  // dropped unsignaled: kCancelled
  }
  EXPECT_TRUE(tm->MatchKeys(keys).empty());
  st = tm->Stats();
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.blocks_aborted, 6u);
}

TEST_F(TierManagerTest, CommitTwiceIsAFailedPrecondition) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(2);
  PinSet pins = Must(tm->Allocate(keys), "Allocate");
  WriteAll(*tm, pins);
  EXPECT_EQ(tm->Commit(pins, Fence(), std::vector<uint32_t>{2}).code(), StatusCode::kInvalidArgument);
  auto [written, signal] = Fence::Make();
  ASSERT_TRUE(tm->Commit(pins, written).ok());
  EXPECT_EQ(tm->Commit(pins, Fence()).code(), StatusCode::kFailedPrecondition);  // still pending
  signal.Signal(Status());
  EXPECT_EQ(tm->Commit(pins, Fence()).code(), StatusCode::kFailedPrecondition);  // landed
  PinSet matched = tm->MatchKeys(keys);
  ASSERT_EQ(matched.size(), 2u);
  EXPECT_EQ(tm->Commit(matched, Fence()).code(), StatusCode::kFailedPrecondition);  // never allocated here
  for (size_t i = 0; i < matched.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, matched, i, TierKind::kHbm));
  EXPECT_EQ(tm->Stats().blocks_committed, 2u);
}

TEST_F(TierManagerTest, CommitOfSomeIndicesLeavesTheOthersWriting) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(3);
  PinSet pins = Must(tm->Allocate(keys), "Allocate");
  WriteAll(*tm, pins);
  ASSERT_TRUE(tm->Commit(pins, Fence(), std::vector<uint32_t>{1}).ok());
  PinSet m0 = tm->MatchKeys(std::span(keys).subspan(1, 1));
  EXPECT_EQ(m0.size(), 1u);
  EXPECT_TRUE(tm->MatchKeys(std::span(keys).first(1)).empty());
  ASSERT_TRUE(tm->Release(pins).ok());  // aborts keys 0 and 2
  EXPECT_EQ(tm->Stats().blocks_aborted, 2u);
  ASSERT_TRUE(tm->Release(m0).ok());
  ASSERT_TRUE(Settle(*tm));
  EXPECT_EQ(tm->Stats().indexed_blocks, 1u);
}

TEST_F(TierManagerTest, AllocateOfAnIndexedKeyIsAlreadyExistsAndChangesNothing) {
  SEED_TRACE();
  auto tm = Make();
  const auto old_keys = RandomKeys(1);
  CommitAndRelease(*tm, old_keys);
  ASSERT_TRUE(Settle(*tm));
  const RuntimeStats before = tm->Stats();

  const auto fresh = RandomKeys(2);
  const std::vector<BlockKey> mixed = {fresh[0], fresh[1], old_keys[0]};  // the old key last
  auto r = tm->Allocate(mixed);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kAlreadyExists);
  const RuntimeStats after = tm->Stats();
  EXPECT_EQ(after.indexed_blocks, before.indexed_blocks);
  EXPECT_EQ(after.tiers[TierIndex(TierKind::kHbm)].used_slots, before.tiers[TierIndex(TierKind::kHbm)].used_slots);
  EXPECT_EQ(after.blocks_allocated, before.blocks_allocated);
  EXPECT_EQ(after.pins, 0u);
  EXPECT_EQ(tm->Drop(std::span(fresh).first(1)).code(), StatusCode::kNotFound);  // not left behind
  PinSet old = tm->MatchKeys(old_keys);
  ASSERT_EQ(old.size(), 1u);
  EXPECT_TRUE(HoldsWritten(*tm, old, 0, TierKind::kHbm));

  // A key still being written by another request is indexed too.
  PinSet writing = Must(tm->Allocate(std::span(fresh).first(1)), "Allocate fresh[0]");
  EXPECT_EQ(tm->Allocate(std::span(fresh).first(1)).status().code(), StatusCode::kAlreadyExists);
  // And the fresh keys were not left behind: they allocate now.
  PinSet other = Must(tm->Allocate(std::span(fresh).subspan(1, 1)), "Allocate fresh[1]");
  EXPECT_EQ(other.size(), 1u);
}

TEST_F(TierManagerTest, AllocateWithADuplicateKeyIsInvalidArgument) {
  auto tm = Make();
  const auto keys = RandomKeys(2);
  const std::vector<BlockKey> dup = {keys[0], keys[1], keys[0]};
  EXPECT_EQ(tm->Allocate(dup).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm->Allocate(std::span<const BlockKey>()).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm->Allocate(keys, TierKind::kNvme).status().code(), StatusCode::kInvalidArgument);
  const RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.blocks_allocated, 0u);
}

TEST_F(TierManagerTest, AllocateBeyondCapacityFailsWithoutLeaks) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.high_watermark = 1.0;  // keep the demotion thread out of the way
  o.low_watermark = 0.9;
  auto tm = Make(Spec(8, 16), o);
  EXPECT_EQ(tm->Allocate(RandomKeys(9)).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(Used(*tm, TierKind::kHbm), 0u);

  PinSet held = Must(tm->Allocate(RandomKeys(6)), "Allocate 6");
  const auto more = RandomKeys(3);
  auto r = tm->Allocate(more);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  EXPECT_TRUE(r.status().retryable());
  RuntimeStats st = tm->Stats();
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 6u);
  EXPECT_EQ(st.indexed_blocks, 6u);
  EXPECT_GE(st.tiers[TierIndex(TierKind::kHbm)].reserve_failures, 1u);
  EXPECT_EQ(tm->Drop(std::span(more).first(1)).code(), StatusCode::kNotFound);
  // Two fit.
  PinSet two = Must(tm->Allocate(std::span(more).first(2)), "Allocate 2");
  EXPECT_EQ(Used(*tm, TierKind::kHbm), 8u);
  held = PinSet();
  two = PinSet();
  st = tm->Stats();
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].used_slots, 0u);
  EXPECT_EQ(st.indexed_blocks, 0u);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kHbm)].peak_used_slots, 8u);
}

TEST_F(TierManagerTest, AllocateDefaultsToDramWithoutHbm) {
  SEED_TRACE();
  auto tm = Make(Spec(0, 8));
  const auto keys = RandomKeys(2);
  PinSet pins = Must(tm->Allocate(keys), "Allocate (default tier) on a DRAM-only runtime");
  EXPECT_FALSE(tm->Locate(pins, 0, TierKind::kHbm).ok());
  WriteAll(*tm, pins, TierKind::kDram);
  ASSERT_TRUE(tm->Commit(pins, Fence()).ok());
  PinSet m = tm->MatchKeys(keys);
  ASSERT_EQ(m.size(), 2u);
  for (size_t i = 0; i < m.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, m, i, TierKind::kDram));
}

// --- offload, onboard, addresses -------------------------------------------------------------

TEST_F(TierManagerTest, OffloadOnCommitCopiesTheBytesToDram) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(5);
  PinSet pins = CommitNew(*tm, keys);
  ASSERT_TRUE(WaitUntil([&] {
    for (size_t i = 0; i < pins.size(); ++i) {
      if (!Resident(*tm, pins, i, TierKind::kDram)) return false;
    }
    return true;
  })) << "the copies on commit never landed";
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));  // the HBM copy stays
    EXPECT_NE(PtrOf(*tm, pins, i, TierKind::kDram), PtrOf(*tm, pins, i, TierKind::kHbm));
  }
  EXPECT_EQ(tm->Stats().offload_blocks, 5u);
  EXPECT_EQ(Used(*tm, TierKind::kDram), 5u);
}

TEST_F(TierManagerTest, ExplicitOffloadCopiesDirtyBlocksToDram) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.offload_on_commit = false;
  auto tm = Make({}, o);
  const auto keys = RandomKeys(4);
  PinSet pins = CommitNew(*tm, keys);
  EXPECT_EQ(Used(*tm, TierKind::kDram), 0u);
  EXPECT_FALSE(Resident(*tm, pins, 0, TierKind::kDram));
  ASSERT_TRUE(tm->Offload(pins).WaitFor(5s).ok());
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
  }
  EXPECT_EQ(tm->Stats().offload_blocks, 4u);
  // Offloading again moves nothing.
  ASSERT_TRUE(tm->Offload(pins).WaitFor(5s).ok());
  EXPECT_EQ(tm->Stats().offload_blocks, 4u);
  EXPECT_EQ(Used(*tm, TierKind::kDram), 4u);
  EXPECT_EQ(tm->Offload(PinSet()).Wait().code(), StatusCode::kFailedPrecondition);
}

// The blocks of one Offload get adjacent DRAM slots in the caller's key order (SlotPool hands
// out ascending runs and the hop takes them in that order), so a later Onboard of the same keys
// reads one run, which the GPU movers copy with the copy engines.
TEST_F(TierManagerTest, OneOffloadPutsItsBlocksInAdjacentDramSlotsInKeyOrder) {
  SEED_TRACE();
  TierManagerOptions o = Options();
  o.offload_on_commit = false;
  auto tm = Make(Spec(64, 256), o);
  CommitAndRelease(*tm, RandomKeys(5), TierKind::kDram);  // a few DRAM slots in use already
  const auto keys = RandomKeys(24);
  PinSet pins = CommitNew(*tm, keys);
  ASSERT_TRUE(tm->Offload(pins).WaitFor(5s).ok());
  const std::byte* first = PtrOf(*tm, pins, 0, TierKind::kDram);
  ASSERT_NE(first, nullptr);
  const std::byte* second = PtrOf(*tm, pins, 1, TierKind::kDram);
  ASSERT_NE(second, nullptr);
  const ptrdiff_t stride = second - first;
  EXPECT_GE(stride, static_cast<ptrdiff_t>(kGeo.block_bytes())) << "ascending, one slot apart";
  for (size_t i = 0; i < pins.size(); ++i) {
    EXPECT_EQ(PtrOf(*tm, pins, i, TierKind::kDram), first + static_cast<ptrdiff_t>(i) * stride) << "block " << i;
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
  }
}

// An Onboard's copy goes in DRAM slot order, whatever order the keys come in: blocks written
// layer by layer and onboarded block-major (as MatchPrefix pins them) are one ascending run
// of DRAM slots in the batch the mover gets.
TEST_F(TierManagerTest, OnboardSegmentsGoInDramSlotOrder) {
  SEED_TRACE();
  TierSpec spec = Spec(64, 128);
  spec.record_up = std::make_shared<SegmentLog>();
  auto tm = Make(spec);
  const auto chains = RandomChains(6);
  std::vector<BlockKey> layer_major;
  for (uint32_t l = 0; l < kGeo.layers; ++l) {
    for (const ChainHash& c : chains) layer_major.push_back(BlockKey{c, LayerId{l}});
  }
  CommitAndRelease(*tm, layer_major, TierKind::kDram);
  PrefixMatch match = tm->MatchPrefix(chains);
  ASSERT_EQ(match.blocks, chains.size());
  ASSERT_TRUE(tm->Onboard(match.pins).WaitFor(5s).ok());
  ASSERT_EQ(spec.record_up->size(), 1u);
  const std::vector<CopySegment>& segs = spec.record_up->front();
  ASSERT_EQ(segs.size(), layer_major.size());
  for (size_t i = 1; i < segs.size(); ++i) {
    EXPECT_EQ(segs[i].src.value(), segs[i - 1].src.value() + 1) << "segment " << i << " breaks the DRAM run";
  }
  for (size_t i = 0; i < match.pins.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, match.pins, i, TierKind::kHbm));
}

TEST_F(TierManagerTest, OnboardBringsADemotedBlockBackWithItsBytes) {
  SEED_TRACE();
  auto tm = Make(Spec(8, 64));
  const auto chains = RandomChains(4);
  const auto keys = KeysOf(chains);  // 8 blocks: HBM full
  CommitAndRelease(*tm, keys);
  ASSERT_TRUE(Settle(*tm));
  tm->DemoteNow();
  ASSERT_LE(Used(*tm, TierKind::kHbm), 4u);

  // Find a chain with a layer no longer in HBM.
  PrefixMatch all = tm->MatchPrefix(chains);
  ASSERT_EQ(all.blocks, 4u) << "a block demoted with a clean copy below must still match";
  size_t evicted = 0;
  for (size_t i = 0; i < all.pins.size(); ++i) {
    EXPECT_TRUE(HoldsWritten(*tm, all.pins, i, TierKind::kDram));
    if (!Resident(*tm, all.pins, i, TierKind::kHbm)) ++evicted;
  }
  EXPECT_GE(evicted, 4u);
  EXPECT_LT(all.blocks_at_or_above[TierIndex(TierKind::kHbm)], 4u);
  EXPECT_EQ(all.blocks_at_or_above[TierIndex(TierKind::kDram)], 4u);

  const RuntimeStats before = tm->Stats();
  EXPECT_GE(before.tiers[TierIndex(TierKind::kHbm)].evictions, 4u);
  EXPECT_EQ(before.tiers[TierIndex(TierKind::kHbm)].demoted_blocks, 0u) << "clean blocks leave without a copy";
  ASSERT_TRUE(tm->Onboard(all.pins).WaitFor(5s).ok());
  for (size_t i = 0; i < all.pins.size(); ++i) EXPECT_TRUE(HoldsWritten(*tm, all.pins, i, TierKind::kHbm));
  EXPECT_EQ(tm->Stats().onboard_blocks - before.onboard_blocks, evicted);
  PrefixMatch again = tm->MatchPrefix(chains);
  EXPECT_EQ(again.blocks_at_or_above[TierIndex(TierKind::kHbm)], 4u);
  // Onboarding blocks already in HBM moves nothing.
  ASSERT_TRUE(tm->Onboard(again.pins).WaitFor(5s).ok());
  EXPECT_EQ(tm->Stats().onboard_blocks - before.onboard_blocks, evicted);
}

TEST_F(TierManagerTest, BlockTableNamesTheFirstBlockNotResident) {
  SEED_TRACE();
  auto tm = Make();
  const auto keys = RandomKeys(3);
  PinSet in_hbm = CommitNew(*tm, {keys[0], keys[2]});
  PinSet in_dram = CommitNew(*tm, {keys[1]}, TierKind::kDram);
  ASSERT_TRUE(tm->Release(in_hbm).ok());
  ASSERT_TRUE(tm->Release(in_dram).ok());
  ASSERT_TRUE(Settle(*tm));

  PinSet pins = tm->MatchKeys(keys);
  ASSERT_EQ(pins.size(), 3u);
  std::vector<std::byte*> table = {nullptr};
  Status s = tm->BlockTable(pins, TierKind::kHbm, &table);
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find(keys[1].ToString()), std::string_view::npos) << s.ToString();
  EXPECT_NE(s.message().find("#1"), std::string_view::npos) << s.ToString();
  EXPECT_TRUE(table.empty());
  EXPECT_EQ(tm->Locate(pins, 1, TierKind::kHbm).status().code(), StatusCode::kFailedPrecondition);

  // A range that avoids it works; DRAM holds all three (write-through and direct).
  ASSERT_TRUE(tm->BlockTable(pins, TierKind::kHbm, &table, 2, 3).ok());
  ASSERT_EQ(table.size(), 1u);
  EXPECT_EQ(table[0], PtrOf(*tm, pins, 2, TierKind::kHbm));
  ASSERT_TRUE(tm->BlockTable(pins, TierKind::kDram, &table).ok());
  ASSERT_EQ(table.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(table[i], PtrOf(*tm, pins, i, TierKind::kDram));
    EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kDram));
  }
  EXPECT_EQ(tm->BlockTable(pins, TierKind::kNvme, &table).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm->BlockTable(pins, TierKind::kHbm, &table, 3, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(tm->Locate(pins, 3, TierKind::kHbm).status().code(), StatusCode::kInvalidArgument);

  // Onboard fills the gap.
  ASSERT_TRUE(tm->Onboard(pins).WaitFor(5s).ok());
  ASSERT_TRUE(tm->BlockTable(pins, TierKind::kHbm, &table).ok());
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(HoldsWritten(*tm, pins, i, TierKind::kHbm));
}

}  // namespace
}  // namespace kvtier
