// TierManager behaviour (runtime/include/kvtier/tier_manager.h): creation checks, the
// allocate -> write -> commit -> match cycle, aborts, drops, onboard/offload, watermarks and
// demotion, DRAM-only dropping, injected copy failures, and the statistics they leave.
//
// Every test writes fresh random bytes (seeded from std::random_device; the seed is printed
// on failure) and reads them back through the addresses the manager hands out.
#include "kvtier/tier_manager.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "memcpy_mover.h"
#include "registry.h"

namespace kvtier {
namespace {

using namespace std::chrono_literals;

// 2 layers, 2 KV heads, d=16, 4-token blocks, f16: 512 B blocks.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};

// Counts log lines instead of printing them (failed copies log a warning each).
class CountingLogger final : public Logger {
 public:
  void Write(LogLevel level, std::string_view) override {
    if (level >= LogLevel::kWarning) warnings.fetch_add(1, std::memory_order_relaxed);
  }
  std::atomic<uint64_t> warnings{0};
};

template <class T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

bool WaitUntil(const std::function<bool()>& pred, std::chrono::milliseconds timeout = 5000ms) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > deadline) return pred();
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Records the segments of every batch it is given, then hands the batch on.
using SegmentLog = std::vector<std::vector<CopySegment>>;
class RecordingMover final : public Mover {
 public:
  RecordingMover(std::unique_ptr<Mover> inner, std::shared_ptr<SegmentLog> log)
      : inner_(std::move(inner)), log_(std::move(log)) {}
  std::string_view name() const override { return inner_->name(); }
  TierKind source() const override { return inner_->source(); }
  TierKind destination() const override { return inner_->destination(); }
  Fence Submit(MoveBatch batch) override {
    {
      std::lock_guard lock(mu_);
      log_->push_back(batch.segments);
    }
    return inner_->Submit(std::move(batch));
  }
  MoverStats stats() const override { return inner_->stats(); }

 private:
  std::unique_ptr<Mover> inner_;
  std::shared_ptr<SegmentLog> log_;
  std::mutex mu_;
};

// What a hand-built TierSet has: HBM (emulated) and DRAM (host, unpinned allowed) slots,
// and optional fault plans on the movers (DRAM -> HBM is "up", HBM -> DRAM is "down").
struct TierSpec {
  uint32_t hbm_slots = 16;  // 0: no HBM tier
  uint32_t dram_slots = 64;
  std::optional<FaultOptions> up_faults;
  std::optional<FaultOptions> down_faults;
  uint64_t hbm_slot_bytes = kGeo.block_bytes();
  std::shared_ptr<SegmentLog> record_up;  // the DRAM -> HBM batches, when set
};

TierSpec Spec(uint32_t hbm_slots, uint32_t dram_slots) {
  TierSpec s;
  s.hbm_slots = hbm_slots;
  s.dram_slots = dram_slots;
  return s;
}
TierSpec WithFaults(TierSpec s, std::optional<FaultOptions> up, std::optional<FaultOptions> down) {
  s.up_faults = up;
  s.down_faults = down;
  return s;
}

TierSet MakeTiers(const TierSpec& spec, Logger* log) {
  TierSet set;
  HostTierOptions ho;
  ho.slot_bytes = kGeo.block_bytes();
  ho.slot_count = spec.dram_slots;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  ho.logger = log;
  auto dram = Must(HostTier::Create(ho), "HostTier::Create");
  Tier* dram_ptr = dram.get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
  if (spec.hbm_slots == 0) return set;
  auto hbm = Must(EmulatedHbmTier::Create({.slot_bytes = spec.hbm_slot_bytes, .slot_count = spec.hbm_slots}),
                  "EmulatedHbmTier::Create");
  Tier* hbm_ptr = hbm.get();
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
  std::unique_ptr<Mover> up = Must(MemcpyMover::Create(dram_ptr, hbm_ptr, {.threads = 1}), "mover up");
  std::unique_ptr<Mover> down = Must(MemcpyMover::Create(hbm_ptr, dram_ptr, {.threads = 1}), "mover down");
  if (spec.up_faults) up = std::make_unique<FaultyMover>(std::move(up), std::make_shared<FaultPlan>(*spec.up_faults));
  if (spec.down_faults) {
    down = std::make_unique<FaultyMover>(std::move(down), std::make_shared<FaultPlan>(*spec.down_faults));
  }
  if (spec.record_up) up = std::make_unique<RecordingMover>(std::move(up), spec.record_up);
  set.movers.push_back(std::move(up));
  set.movers.push_back(std::move(down));
  return set;
}

class TierManagerTest : public testing::Test {
 protected:
  TierManagerTest() : seed_(std::random_device{}()), rng_(seed_) {}

  void SetUp() override { RecordProperty("seed", std::to_string(seed_)); }

  TierManagerOptions Options() {
    TierManagerOptions o;
    o.geometry = kGeo;
    o.index_shards = 8;
    o.high_watermark = 0.75;
    o.low_watermark = 0.5;
    o.demotion_period = 5ms;
    o.logger = &log_;
    return o;
  }

  std::unique_ptr<TierManager> Make(const TierSpec& spec, TierManagerOptions o) {
    return Must(TierManager::Create(std::move(o), MakeTiers(spec, &log_)), "TierManager::Create");
  }
  std::unique_ptr<TierManager> Make(const TierSpec& spec = {}) { return Make(spec, Options()); }

  ChainHash RandomChain() {
    ChainHash c;
    for (auto& b : c.bytes) b = static_cast<uint8_t>(rng_());
    return c;
  }
  std::vector<ChainHash> RandomChains(size_t n) {
    std::vector<ChainHash> out;
    for (size_t i = 0; i < n; ++i) out.push_back(RandomChain());
    return out;
  }
  // Block-major: (c0,L0), (c0,L1), (c1,L0), ... as MatchPrefix pins them.
  static std::vector<BlockKey> KeysOf(const std::vector<ChainHash>& chains) {
    std::vector<BlockKey> keys;
    for (const ChainHash& c : chains) {
      for (uint32_t l = 0; l < kGeo.layers; ++l) keys.push_back(BlockKey{c, LayerId{l}});
    }
    return keys;
  }
  std::vector<BlockKey> RandomKeys(size_t n) {
    std::vector<BlockKey> keys;
    for (size_t i = 0; i < n; ++i) keys.push_back(BlockKey{RandomChain(), LayerId{0}});
    return keys;
  }

  std::vector<std::byte> RandomBytes() {
    std::vector<std::byte> b(kGeo.block_bytes());
    for (size_t i = 0; i < b.size(); i += 8) {
      const uint64_t v = rng_() | 1;  // never an all-zero word
      std::memcpy(b.data() + i, &v, std::min<size_t>(8, b.size() - i));
    }
    return b;
  }

  static std::byte* PtrOf(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    auto loc = tm.Locate(pins, i, t);
    if (!loc.ok()) return nullptr;
    return std::get<MemoryAddress>(*loc).ptr;
  }

  // Writes fresh bytes for every block of `pins` at its slot in `t`, remembering them.
  void WriteAll(const TierManager& tm, const PinSet& pins, TierKind t = TierKind::kHbm) {
    for (size_t i = 0; i < pins.size(); ++i) {
      std::byte* p = PtrOf(tm, pins, i, t);
      ASSERT_NE(p, nullptr) << "block " << i << " has no slot in " << TierName(t);
      std::vector<std::byte> b = RandomBytes();
      std::memcpy(p, b.data(), b.size());
      data_[pins.key(i)] = std::move(b);
    }
  }

  // Allocates `keys` in `t`, writes fresh bytes and commits them with a signaled fence.
  PinSet CommitNew(TierManager& tm, const std::vector<BlockKey>& keys, TierKind t = TierKind::kHbm) {
    auto r = tm.Allocate(keys, t);
    if (!r.ok()) throw std::runtime_error("Allocate: " + r.status().ToString());
    PinSet pins = std::move(r).value();
    WriteAll(tm, pins, t);
    if (Status s = tm.Commit(pins, Fence()); !s.ok()) throw std::runtime_error("Commit: " + s.ToString());
    return pins;
  }
  void CommitAndRelease(TierManager& tm, const std::vector<BlockKey>& keys, TierKind t = TierKind::kHbm) {
    PinSet pins = CommitNew(tm, keys, t);
    ASSERT_TRUE(tm.Release(pins).ok());
  }

  // The bytes of block `i` of `pins` in tier `t` equal what was written for its key.
  ::testing::AssertionResult HoldsWritten(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    std::byte* p = PtrOf(tm, pins, i, t);
    if (p == nullptr) return ::testing::AssertionFailure() << "block " << i << " not resident in " << TierName(t);
    auto it = data_.find(pins.key(i));
    if (it == data_.end()) return ::testing::AssertionFailure() << "no bytes were written for block " << i;
    if (std::memcmp(p, it->second.data(), it->second.size()) != 0) {
      return ::testing::AssertionFailure() << "block " << i << " (" << pins.key(i).ToString() << ") in "
                                           << TierName(t) << " differs from what was written";
    }
    return ::testing::AssertionSuccess();
  }

  static bool Resident(const TierManager& tm, const PinSet& pins, size_t i, TierKind t) {
    return tm.Locate(pins, i, t).ok();
  }
  // Waits for the manager's own pins (copies on commit, onboard/offload hops) to go, given
  // that the test itself holds `held` pins.
  static bool Settle(const TierManager& tm, uint64_t held = 0) {
    return WaitUntil([&] { return tm.Stats().pins == held; });
  }
  static uint64_t Used(const TierManager& tm, TierKind t) { return tm.Stats().tiers[TierIndex(t)].used_slots; }

  uint32_t seed_;
  std::mt19937_64 rng_;
  CountingLogger log_;
  std::map<BlockKey, std::vector<std::byte>> data_;
};

#define SEED_TRACE() SCOPED_TRACE(::testing::Message() << "seed " << seed_)

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
