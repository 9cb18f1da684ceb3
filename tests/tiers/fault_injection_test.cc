// FaultyTier and FaultyMover: seeded, replayable faults on top of real tiers and movers.
#include "fault_injection.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "emulated_hbm_tier.h"
#include "host_tier.h"
#include "kvtier/logger.h"
#include "memcpy_mover.h"

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSlotBytes = 64 * 1024;
constexpr uint32_t kSlotCount = 16;
constexpr std::byte kPoison{0x3c};

class QuietLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
};

std::byte* Ptr(const Tier& tier, SlotId slot) { return std::get<MemoryAddress>(tier.Locate(slot)).ptr; }

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}

class FaultInjectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    RecordProperty("seed", std::to_string(seed_));
    rng_.seed(seed_);
    auto hbm = EmulatedHbmTier::Create({.slot_bytes = kSlotBytes, .slot_count = kSlotCount});
    ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
    hbm_ = std::move(hbm).value();
    HostTierOptions host;
    host.slot_bytes = kSlotBytes;
    host.slot_count = kSlotCount;
    host.pinning = PinningPolicy::kAllowUnpinned;
    host.touch_threads = 2;
    host.logger = &logger_;
    auto dram = HostTier::Create(host);
    ASSERT_TRUE(dram.ok()) << dram.status().ToString();
    dram_ = std::move(dram).value();
    auto src = dram_->Reserve(kSlotCount);
    auto dst = hbm_->Reserve(kSlotCount);
    ASSERT_TRUE(src.ok() && dst.ok());
    src_slots_ = std::move(src).value();
    dst_slots_ = std::move(dst).value();
    for (SlotId s : src_slots_) {
      for (uint64_t i = 0; i < kSlotBytes; i += 8) {
        const uint64_t w = rng_();
        std::memcpy(Ptr(*dram_, s) + i, &w, 8);
      }
    }
    PoisonDestinations();
  }

  void TearDown() override {
    if (dram_ && !src_slots_.empty()) dram_->Release(src_slots_, Fence());
    if (hbm_ && !dst_slots_.empty()) hbm_->Release(dst_slots_, Fence());
  }

  void PoisonDestinations() {
    for (SlotId s : dst_slots_) std::memset(Ptr(*hbm_, s), static_cast<int>(kPoison), kSlotBytes);
  }

  // A DRAM -> HBM mover behind a fault plan.
  std::unique_ptr<FaultyMover> MakeMover(std::shared_ptr<FaultPlan> plan) {
    auto inner = MemcpyMover::Create(dram_.get(), hbm_.get(), {.threads = 2});
    EXPECT_TRUE(inner.ok()) << inner.status().ToString();
    if (!inner.ok()) return nullptr;
    return std::make_unique<FaultyMover>(std::move(inner).value(), std::move(plan));
  }

  // Segment i copies source slot i to destination slot i, whole.
  MoveBatch WholeSlots(uint32_t first, uint32_t count) {
    MoveBatch b;
    for (uint32_t i = first; i < first + count; ++i) {
      b.segments.push_back({.src = src_slots_[i], .dst = dst_slots_[i], .bytes = kSlotBytes});
    }
    return b;
  }

  bool Landed(uint32_t i) const {
    return std::memcmp(Ptr(*hbm_, dst_slots_[i]), Ptr(*dram_, src_slots_[i]), kSlotBytes) == 0;
  }
  bool Poisoned(uint32_t i) const {
    const std::byte* p = Ptr(*hbm_, dst_slots_[i]);
    for (uint64_t k = 0; k < kSlotBytes; ++k) {
      if (p[k] != kPoison) return false;
    }
    return true;
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  QuietLogger logger_;
  std::unique_ptr<EmulatedHbmTier> hbm_;
  std::unique_ptr<HostTier> dram_;
  std::vector<SlotId> src_slots_;
  std::vector<SlotId> dst_slots_;
};

enum class Outcome { kOk, kReserveFailed, kCopyFailed, kPartial, kOther };

Outcome Classify(const Status& s) {
  if (s.ok()) return Outcome::kOk;
  if (s.code() == StatusCode::kExhausted && Contains(s.message(), "injected reserve failure")) {
    return Outcome::kReserveFailed;
  }
  if (s.code() == StatusCode::kIoError && Contains(s.message(), "injected copy failure")) return Outcome::kCopyFailed;
  if (s.code() == StatusCode::kIoError && Contains(s.message(), "partial copy")) return Outcome::kPartial;
  return Outcome::kOther;
}

TEST(FaultPlanTest, SameSeedDrawsTheSameDecisionsAndDelays) {
  const FaultOptions options{.seed = 42, .delay = 0.5, .max_delay = 1000us};
  FaultPlan a(options), b(options), c(FaultOptions{.seed = 43, .delay = 0.5, .max_delay = 1000us});
  std::vector<int> da, db, dc;
  for (int i = 0; i < 256; ++i) {
    da.push_back(a.Draw(0.3));
    db.push_back(b.Draw(0.3));
    dc.push_back(c.Draw(0.3));
    da.push_back(static_cast<int>(a.DrawDelay().count()));
    db.push_back(static_cast<int>(b.DrawDelay().count()));
    dc.push_back(static_cast<int>(c.DrawDelay().count()));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc) << "a different seed must give a different sequence";
}

TEST(FaultPlanTest, RatesOfZeroAndOneAreNeverAndAlways) {
  FaultPlan plan(FaultOptions{.seed = 5});
  for (int i = 0; i < 1000; ++i) {
    EXPECT_FALSE(plan.Draw(0.0));
    EXPECT_TRUE(plan.Draw(1.0));
  }
  EXPECT_EQ(plan.DrawDelay(), 0us) << "no max_delay, no delay";
}

TEST(FaultPlanTest, DelaysSpreadEvenlyFromZeroToMaxDelay) {
  FaultPlan plan(FaultOptions{.seed = 11, .max_delay = 1000us});
  double sum = 0;
  int64_t longest = 0;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) {
    const int64_t d = plan.DrawDelay().count();
    ASSERT_GE(d, 0);
    ASSERT_LE(d, 1000);
    sum += double(d);
    longest = std::max(longest, d);
  }
  EXPECT_NEAR(sum / kDraws, 500.0, 25.0);
  EXPECT_GE(longest, 990);
}

TEST(FaultPlanTest, DrawRateMatchesTheProbability) {
  FaultPlan plan(FaultOptions{.seed = 9});
  int hits = 0;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) hits += plan.Draw(0.25) ? 1 : 0;
  EXPECT_NEAR(double(hits) / kDraws, 0.25, 0.02);
}

TEST_F(FaultInjectionTest, SameSeedReplaysTheSameFaultSequence) {
  const FaultOptions options{.seed = seed_, .reserve_failure = 0.3, .copy_failure = 0.2, .partial_copy = 0.2,
                             .delay = 0.3, .max_delay = 300us};
  auto run = [&](const FaultOptions& o) {
    std::vector<Outcome> outcomes;
    auto tier_plan = std::make_shared<FaultPlan>(o);
    auto inner_tier = EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 8});
    EXPECT_TRUE(inner_tier.ok());
    FaultyTier tier(std::move(inner_tier).value(), tier_plan);
    for (int i = 0; i < 100; ++i) {
      auto r = tier.Reserve(2);
      outcomes.push_back(Classify(r.status()));
      if (r.ok()) tier.Release(*r, Fence());
    }
    auto mover = MakeMover(std::make_shared<FaultPlan>(o));
    for (int i = 0; i < 60; ++i) outcomes.push_back(Classify(mover->Submit(WholeSlots(0, 4)).Wait()));
    return outcomes;
  };
  const std::vector<Outcome> first = run(options);
  const std::vector<Outcome> second = run(options);
  EXPECT_EQ(first, second);
  for (Outcome o : {Outcome::kOk, Outcome::kReserveFailed, Outcome::kCopyFailed, Outcome::kPartial}) {
    EXPECT_NE(std::count(first.begin(), first.end(), o), 0) << "outcome " << static_cast<int>(o) << " never drawn";
  }
  EXPECT_EQ(std::count(first.begin(), first.end(), Outcome::kOther), 0);
  FaultOptions other = options;
  other.seed = seed_ + 1;
  EXPECT_NE(run(other), first);
}

TEST_F(FaultInjectionTest, ReserveFailureOfOneAlwaysExhaustsAndReservesNothing) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_, .reserve_failure = 1.0});
  auto inner = EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 8});
  ASSERT_TRUE(inner.ok());
  FaultyTier tier(std::move(inner).value(), plan);
  for (int i = 0; i < 100; ++i) {
    auto r = tier.Reserve(1 + static_cast<uint32_t>(i % 8));
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
    EXPECT_TRUE(r.status().retryable());
    EXPECT_TRUE(Contains(r.status().message(), "emulated-hbm")) << r.status().ToString();
  }
  EXPECT_EQ(plan->counters().reserve_failures.load(), 100u);
  EXPECT_EQ(tier.usage().free_slots, 8u);
  EXPECT_EQ(tier.usage().reserved_slots, 0u);
  // The inner tier still works, and the decorator forwards releases to it.
  auto direct = tier.inner()->Reserve(3);
  ASSERT_TRUE(direct.ok());
  EXPECT_EQ(tier.usage().reserved_slots, 3u);
  tier.Release(*direct, Fence());
  EXPECT_EQ(tier.usage().free_slots, 8u);
}

TEST_F(FaultInjectionTest, CopyFailureOfOneFailsEveryBatchAndCopiesNothing) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_, .copy_failure = 1.0});
  auto mover = MakeMover(plan);
  ASSERT_NE(mover, nullptr);
  for (uint32_t i = 0; i < 20; ++i) {
    const Status s = mover->Submit(WholeSlots(i % kSlotCount, 1)).Wait();
    EXPECT_EQ(s.code(), StatusCode::kIoError) << s.ToString();
    EXPECT_EQ(Classify(s), Outcome::kCopyFailed) << s.ToString();
  }
  const Status many = mover->Submit(WholeSlots(0, kSlotCount)).Wait();
  EXPECT_EQ(many.code(), StatusCode::kIoError);
  EXPECT_EQ(plan->counters().copy_failures.load(), 21u);
  EXPECT_EQ(mover->stats().batches, 0u) << "the inner mover never saw a batch";
  mover.reset();  // drained: nothing could still land
  for (uint32_t i = 0; i < kSlotCount; ++i) EXPECT_TRUE(Poisoned(i)) << "slot " << i;
}

TEST_F(FaultInjectionTest, PartialCopyOfOneCopiesOnlyTheFirstHalfAndStillFails) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_, .partial_copy = 1.0});
  auto mover = MakeMover(plan);
  ASSERT_NE(mover, nullptr);
  // Four segments: 0 and 1 land, 2 and 3 do not.
  const Status even = mover->Submit(WholeSlots(0, 4)).Wait();
  EXPECT_EQ(even.code(), StatusCode::kIoError) << even.ToString();
  EXPECT_EQ(Classify(even), Outcome::kPartial) << even.ToString();
  EXPECT_TRUE(Landed(0));
  EXPECT_TRUE(Landed(1));
  EXPECT_TRUE(Poisoned(2));
  EXPECT_TRUE(Poisoned(3));
  // Five segments: the first two (floor of half) land.
  const Status odd = mover->Submit(WholeSlots(4, 5)).Wait();
  EXPECT_EQ(odd.code(), StatusCode::kIoError) << odd.ToString();
  EXPECT_TRUE(Landed(4));
  EXPECT_TRUE(Landed(5));
  for (uint32_t i = 6; i < 9; ++i) EXPECT_TRUE(Poisoned(i)) << "slot " << i;
  EXPECT_EQ(plan->counters().partial_copies.load(), 2u);
  const MoverStats st = mover->stats();
  EXPECT_EQ(st.segments, 4u) << "only the halves reached the inner mover";
  mover.reset();
  for (uint32_t i = 9; i < kSlotCount; ++i) EXPECT_TRUE(Poisoned(i)) << "slot " << i;
}

TEST_F(FaultInjectionTest, DelaysHoldCompletionBackYetDataIsCorrect) {
  const FaultOptions options{.seed = seed_, .delay = 1.0, .max_delay = 20000us};
  auto plan = std::make_shared<FaultPlan>(options);
  // The same seed replays the decorator's draws: per batch, one delay decision, then its length.
  FaultPlan shadow(options);
  auto mover = MakeMover(plan);
  ASSERT_NE(mover, nullptr);
  for (uint32_t i = 0; i < 10; ++i) {
    ASSERT_TRUE(shadow.Draw(options.delay));
    const auto expected = shadow.DrawDelay();
    const auto t0 = std::chrono::steady_clock::now();
    const Fence f = mover->Submit(WholeSlots(i, 1));
    if (expected >= 2000us) {
      EXPECT_FALSE(f.ready()) << "completion was not held back";
    }
    ASSERT_TRUE(f.Wait().ok());
    const auto elapsed = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(elapsed, expected) << "batch " << i;
    EXPECT_TRUE(Landed(i)) << "slot " << i;
  }
  EXPECT_EQ(plan->counters().delays.load(), 10u);
}

TEST_F(FaultInjectionTest, DestructionDeliversEveryDelayedCompletion) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_, .delay = 1.0, .max_delay = 30000us});
  auto mover = MakeMover(plan);
  ASSERT_NE(mover, nullptr);
  // Every batch is held by a producer fence until the destructor is already running, so
  // the delayed completions only arrive while the decorator is going away.
  auto [gate, open_gate] = Fence::Make();
  std::vector<Fence> fences;
  for (uint32_t i = 0; i < kSlotCount; ++i) {
    MoveBatch batch = WholeSlots(i, 1);
    batch.wait_for.push_back(gate);
    fences.push_back(mover->Submit(std::move(batch)));
  }
  std::thread destroyer([&] { mover.reset(); });
  std::this_thread::sleep_for(20ms);
  open_gate.Signal(Status());
  destroyer.join();
  for (uint32_t i = 0; i < kSlotCount; ++i) {
    ASSERT_TRUE(fences[i].ready()) << "batch " << i << " left pending by the destructor";
    EXPECT_TRUE(fences[i].Wait().ok()) << "batch " << i << ": " << fences[i].Wait().ToString();
    EXPECT_TRUE(Landed(i)) << "slot " << i;
  }
  EXPECT_EQ(plan->counters().delays.load(), uint64_t{kSlotCount});
}

TEST_F(FaultInjectionTest, CountersEqualTheFaultsCallersSaw) {
  const FaultOptions options{.seed = seed_, .reserve_failure = 0.25, .copy_failure = 0.25, .partial_copy = 0.25,
                             .delay = 0.25, .max_delay = 200us};
  auto tier_plan = std::make_shared<FaultPlan>(options);
  auto inner = EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 8});
  ASSERT_TRUE(inner.ok());
  FaultyTier tier(std::move(inner).value(), tier_plan);
  uint64_t reserve_failures = 0;
  for (int i = 0; i < 400; ++i) {
    auto r = tier.Reserve(4);
    if (r.ok()) {
      tier.Release(*r, Fence());
    } else {
      ASSERT_EQ(Classify(r.status()), Outcome::kReserveFailed) << r.status().ToString();
      ++reserve_failures;
    }
  }
  EXPECT_EQ(tier_plan->counters().reserve_failures.load(), reserve_failures);
  EXPECT_GT(reserve_failures, 0u);
  EXPECT_LT(reserve_failures, 400u);

  auto mover_plan = std::make_shared<FaultPlan>(options);
  FaultPlan shadow(options);  // replays the decorator's draws to know which batches were delayed
  auto mover = MakeMover(mover_plan);
  ASSERT_NE(mover, nullptr);
  uint64_t copy_failures = 0, partials = 0, oks = 0, expected_delays = 0;
  for (int i = 0; i < 200; ++i) {
    PoisonDestinations();
    const Status s = mover->Submit(WholeSlots(0, 4)).Wait();
    switch (Classify(s)) {
      case Outcome::kOk:
        ++oks;
        for (uint32_t k = 0; k < 4; ++k) EXPECT_TRUE(Landed(k));
        break;
      case Outcome::kCopyFailed:
        ++copy_failures;
        for (uint32_t k = 0; k < 4; ++k) EXPECT_TRUE(Poisoned(k));
        break;
      case Outcome::kPartial:
        ++partials;
        EXPECT_TRUE(Landed(0) && Landed(1) && Poisoned(2) && Poisoned(3));
        break;
      default:
        ADD_FAILURE() << s.ToString();
    }
    if (shadow.Draw(options.copy_failure)) continue;
    (void)shadow.Draw(options.partial_copy);
    if (shadow.Draw(options.delay)) {
      ++expected_delays;
      (void)shadow.DrawDelay();
    }
  }
  const FaultCounters& c = mover_plan->counters();
  EXPECT_EQ(c.copy_failures.load(), copy_failures);
  EXPECT_EQ(c.partial_copies.load(), partials);
  EXPECT_EQ(c.delays.load(), expected_delays);
  EXPECT_GT(copy_failures, 0u);
  EXPECT_GT(partials, 0u);
  EXPECT_GT(oks, 0u);
  EXPECT_GT(expected_delays, 0u);
  // Every batch that reached the inner mover is in its stats (a partial one with half its segments).
  const MoverStats st = mover->stats();
  EXPECT_EQ(st.batches, oks + partials);
  EXPECT_EQ(st.segments, 4 * oks + 2 * partials);
  EXPECT_EQ(st.errors, 0u) << "the inner mover itself never failed";
}

TEST_F(FaultInjectionTest, FaultyMoverWithoutFaultsIsTransparent) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_});
  auto mover = MakeMover(plan);
  ASSERT_NE(mover, nullptr);
  EXPECT_EQ(mover->name(), "memcpy dram->hbm");
  EXPECT_EQ(mover->source(), TierKind::kDram);
  EXPECT_EQ(mover->destination(), TierKind::kHbm);
  ASSERT_TRUE(mover->Submit(WholeSlots(0, kSlotCount)).Wait().ok());
  for (uint32_t i = 0; i < kSlotCount; ++i) EXPECT_TRUE(Landed(i));
  EXPECT_EQ(mover->stats().bytes, kSlotCount * kSlotBytes);
  // Bad segments still fail as the inner mover says.
  MoveBatch bad;
  bad.segments.push_back({.src = src_slots_[0], .dst = dst_slots_[0], .bytes = 0});
  EXPECT_EQ(mover->Submit(std::move(bad)).Wait().code(), StatusCode::kInvalidArgument);
  const FaultCounters& c = plan->counters();
  EXPECT_EQ(c.copy_failures.load() + c.partial_copies.load() + c.delays.load(), 0u);
}

}  // namespace
}  // namespace kvtier
