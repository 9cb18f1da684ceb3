// SlotPool: the slot bookkeeping every tier shares.
#include "slot_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
#include <random>
#include <set>
#include <thread>
#include <vector>

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

namespace {

std::vector<SlotId> ReserveOk(SlotPool& pool, uint32_t count) {
  auto r = pool.Reserve(count, "test");
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? std::move(r).value() : std::vector<SlotId>{};
}

void ExpectUsage(const SlotPool& pool, uint32_t free_slots, uint32_t fenced_slots, uint32_t reserved_slots) {
  const TierUsage u = pool.usage();
  EXPECT_EQ(u.free_slots, free_slots);
  EXPECT_EQ(u.fenced_slots, fenced_slots);
  EXPECT_EQ(u.reserved_slots, reserved_slots);
}

TEST(SlotPoolTest, FreshPoolHandsOutEverySlotExactlyOnce) {
  SlotPool pool(8);
  EXPECT_EQ(pool.slot_count(), 8u);
  ExpectUsage(pool, 8, 0, 0);
  std::set<SlotId> got;
  for (int i = 0; i < 8; ++i) {
    const std::vector<SlotId> one = ReserveOk(pool, 1);
    ASSERT_EQ(one.size(), 1u);
    EXPECT_LT(one[0].value(), 8u);
    EXPECT_TRUE(got.insert(one[0]).second) << "slot " << one[0].value() << " handed out twice";
  }
  EXPECT_EQ(pool.Reserve(1, "test").status().code(), StatusCode::kExhausted);
  ExpectUsage(pool, 0, 0, 8);
}

std::vector<SlotId> Slots(uint32_t first, uint32_t count) {
  std::vector<SlotId> v;
  for (uint32_t s = first; s < first + count; ++s) v.push_back(SlotId{s});
  return v;
}

TEST(SlotPoolTest, AFreshPoolHandsOutAscendingRuns) {
  SlotPool pool(64);
  EXPECT_EQ(ReserveOk(pool, 5), Slots(0, 5));
  EXPECT_EQ(ReserveOk(pool, 3), Slots(5, 3));
  EXPECT_EQ(ReserveOk(pool, 1), Slots(8, 1));
}

TEST(SlotPoolTest, ReleasedNeighboursMergeIntoOneRun) {
  SlotPool pool(16);
  const std::vector<SlotId> all = ReserveOk(pool, 16);
  // Freed out of order and one by one, slots 4..9 become one extent again.
  for (uint32_t s : {7u, 4u, 9u, 5u, 8u, 6u}) {
    const SlotId id{s};
    pool.Release(std::span(&id, 1), Fence());
  }
  EXPECT_EQ(ReserveOk(pool, 6), Slots(4, 6));
}

TEST(SlotPoolTest, ReserveTakesTheSmallestExtentThatFits) {
  SlotPool pool(32);
  const std::vector<SlotId> all = ReserveOk(pool, 32);
  pool.Release(std::span(all).subspan(2, 8), Fence());   // extent 2..9 (8 slots)
  pool.Release(std::span(all).subspan(12, 3), Fence());  // extent 12..14 (3)
  pool.Release(std::span(all).subspan(20, 1), Fence());  // extent 20 (1)
  EXPECT_EQ(ReserveOk(pool, 1), Slots(20, 1)) << "a single slot fills the one-slot hole";
  EXPECT_EQ(ReserveOk(pool, 3), Slots(12, 3)) << "three slots take the three-slot extent, not the eight";
  EXPECT_EQ(ReserveOk(pool, 2), Slots(2, 2));
  EXPECT_EQ(ReserveOk(pool, 6), Slots(4, 6));
  EXPECT_EQ(pool.Reserve(1, "test").status().code(), StatusCode::kExhausted);
}

TEST(SlotPoolTest, WithoutAnExtentLongEnoughTheLongestGoFirst) {
  SlotPool pool(32);
  const std::vector<SlotId> all = ReserveOk(pool, 32);
  pool.Release(std::span(all).subspan(1, 2), Fence());   // 1..2
  pool.Release(std::span(all).subspan(10, 5), Fence());  // 10..14
  pool.Release(std::span(all).subspan(20, 3), Fence());  // 20..22
  std::vector<SlotId> want = Slots(10, 5);
  for (SlotId s : Slots(20, 2)) want.push_back(s);
  EXPECT_EQ(ReserveOk(pool, 7), want);
  ExpectUsage(pool, 3, 0, 29);
  // What is left: 1..2 and 22.
  EXPECT_EQ(ReserveOk(pool, 1), Slots(22, 1));
  EXPECT_EQ(ReserveOk(pool, 2), Slots(1, 2));
}

TEST(SlotPoolTest, SlotsFreedByAFenceRejoinTheirNeighbours) {
  SlotPool pool(8);
  const std::vector<SlotId> all = ReserveOk(pool, 8);
  pool.Release(std::span(all).subspan(2, 2), Fence());  // 2..3 free now
  auto [fence, signal] = Fence::Make();
  pool.Release(std::span(all).subspan(4, 2), fence);    // 4..5 wait
  EXPECT_EQ(pool.Reserve(3, "test").status().code(), StatusCode::kExhausted);
  signal.Signal(Status());
  EXPECT_EQ(ReserveOk(pool, 4), Slots(2, 4));
}

// Random reserves and releases against an oracle of every slot's owner: each slot is handed
// out once, the counts are exact, and a reservation is one ascending run exactly when the
// oracle's free slots contain a run that long.
TEST(SlotPoolTest, RandomReservesAndReleasesMatchAnOracle) {
  constexpr uint32_t kSlots = 512;
  SlotPool pool(kSlots);
  std::vector<bool> held(kSlots, false);
  std::vector<std::vector<SlotId>> live;
  std::mt19937 rng(11);
  for (int step = 0; step < 5000; ++step) {
    if (live.empty() || rng() % 2 == 0) {
      const uint32_t want = 1 + rng() % 24;
      uint32_t free_now = 0, longest = 0, cur = 0;
      for (uint32_t s = 0; s < kSlots; ++s) {
        cur = held[s] ? 0 : cur + 1;
        free_now += held[s] ? 0 : 1;
        longest = std::max(longest, cur);
      }
      auto r = pool.Reserve(want, "test");
      if (want > free_now) {
        ASSERT_EQ(r.status().code(), StatusCode::kExhausted);
        continue;
      }
      ASSERT_TRUE(r.ok()) << r.status().ToString();
      ASSERT_EQ(r->size(), want);
      bool one_run = true;
      for (size_t i = 0; i < r->size(); ++i) {
        const uint32_t s = (*r)[i].value();
        ASSERT_LT(s, kSlots);
        ASSERT_FALSE(held[s]) << "slot " << s << " handed out twice";
        held[s] = true;
        if (i > 0 && s != (*r)[i - 1].value() + 1) one_run = false;
      }
      EXPECT_EQ(one_run, longest >= want) << "step " << step << ": " << want << " slots, longest free run " << longest;
      live.push_back(std::move(r).value());
    } else {
      const size_t i = rng() % live.size();
      for (SlotId s : live[i]) held[s.value()] = false;
      pool.Release(live[i], Fence());
      live.erase(live.begin() + static_cast<ptrdiff_t>(i));
    }
    const uint32_t used = static_cast<uint32_t>(std::count(held.begin(), held.end(), true));
    ASSERT_EQ(pool.usage().reserved_slots, used);
    ASSERT_EQ(pool.usage().free_slots, kSlots - used);
  }
}

TEST(SlotPoolTest, FailedReserveNamesTheTierAndTakesNothing) {
  SlotPool pool(5);
  const std::vector<SlotId> three = ReserveOk(pool, 3);
  auto r = pool.Reserve(3, "my-tier");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  EXPECT_NE(r.status().message().find("my-tier"), std::string_view::npos) << r.status().ToString();
  ExpectUsage(pool, 2, 0, 3);
  EXPECT_EQ(ReserveOk(pool, 2).size(), 2u);
}

TEST(SlotPoolTest, IsReservedTracksEachSlotsState) {
  SlotPool pool(4);
  for (uint32_t i = 0; i < 4; ++i) EXPECT_FALSE(pool.IsReserved(SlotId{i}));
  const std::vector<SlotId> two = ReserveOk(pool, 2);
  ASSERT_EQ(two.size(), 2u);
  for (uint32_t i = 0; i < 4; ++i) {
    const bool held = std::find(two.begin(), two.end(), SlotId{i}) != two.end();
    EXPECT_EQ(pool.IsReserved(SlotId{i}), held) << "slot " << i;
  }
  auto [fence, signal] = Fence::Make();
  pool.Release(std::span(two).first(1), fence);
  EXPECT_FALSE(pool.IsReserved(two[0])) << "a fenced slot is no longer the caller's";
  EXPECT_TRUE(pool.IsReserved(two[1]));
  signal.Signal(Status());
  EXPECT_FALSE(pool.IsReserved(two[0]));
  // Out of range is simply "not reserved", never an abort.
  EXPECT_FALSE(pool.IsReserved(SlotId{4}));
  EXPECT_FALSE(pool.IsReserved(kNoSlot));
}

TEST(SlotPoolTest, FencedSlotsAreCountedUntilTheirFenceSignals) {
  SlotPool pool(10);
  const std::vector<SlotId> all = ReserveOk(pool, 10);
  auto [f1, s1] = Fence::Make();
  auto [f2, s2] = Fence::Make();
  pool.Release(std::span(all).first(3), f1);
  pool.Release(std::span(all).subspan(3, 2), f2);
  pool.Release(std::span(all).subspan(5, 1), Fence());
  ExpectUsage(pool, 1, 5, 4);
  auto r = pool.Reserve(2, "test");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("5 waiting for a fence"), std::string_view::npos) << r.status().ToString();

  s2.Signal(Status::IoError("failed copy"));  // a failed fence frees the slots too
  ExpectUsage(pool, 3, 3, 4);
  s1.Signal(Status());
  ExpectUsage(pool, 6, 0, 4);
  pool.Release(std::span(all).subspan(6), Fence());
  ExpectUsage(pool, 10, 0, 0);
}

TEST(SlotPoolTest, ReleaseBehindAnAlreadyFailedFenceFreesAtOnce) {
  SlotPool pool(2);
  const std::vector<SlotId> all = ReserveOk(pool, 2);
  pool.Release(all, Fence::Failed(Status::IoError("gone")));
  ExpectUsage(pool, 2, 0, 0);
}

TEST(SlotPoolTest, FenceSignaledAfterThePoolIsGoneDoesNotCrash) {
  auto [fence, signal] = Fence::Make();
  {
    SlotPool pool(3);
    const std::vector<SlotId> all = ReserveOk(pool, 3);
    pool.Release(all, fence);
  }
  signal.Signal(Status());  // the callback holds the pool's state alive
}

TEST(SlotPoolTest, EmptyReleaseAndZeroReserveChangeNothing) {
  SlotPool pool(3);
  pool.Release({}, Fence());
  const std::vector<SlotId> none = ReserveOk(pool, 0);
  EXPECT_TRUE(none.empty());
  ExpectUsage(pool, 3, 0, 0);
}

TEST(SlotPoolTest, ConcurrentFenceSignalsAndReservesKeepCountsExact) {
  constexpr uint32_t kSlots = 256;
  SlotPool pool(kSlots);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool] {
      for (int i = 0; i < 2000; ++i) {
        auto r = pool.Reserve(3, "test");
        if (!r.ok()) continue;
        auto [fence, signal] = Fence::Make();
        pool.Release(*r, fence);
        // Signaled from a different thread than the one that released.
        std::thread([s = std::move(signal)]() mutable { s.Signal(Status()); }).join();
      }
    });
  }
  for (auto& t : threads) t.join();
  ExpectUsage(pool, kSlots, 0, 0);
  const std::vector<SlotId> all = ReserveOk(pool, kSlots);
  EXPECT_EQ(std::set<SlotId>(all.begin(), all.end()).size(), kSlots);
}

class SlotPoolDeathTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(SlotPoolDeathTest, DoubleReleaseAborts) {
  SlotPool pool(4);
  const std::vector<SlotId> one = ReserveOk(pool, 1);
  pool.Release(one, Fence());
  EXPECT_DEATH(pool.Release(one, Fence()), "release of slot 0 that is not reserved");
}

TEST_F(SlotPoolDeathTest, ReleaseOfANeverReservedSlotAborts) {
  SlotPool pool(4);
  const SlotId s{2};
  EXPECT_DEATH(pool.Release(std::span(&s, 1), Fence()), "release of slot 2 that is not reserved");
}

TEST_F(SlotPoolDeathTest, ReleaseOfAFencedSlotAborts) {
  SlotPool pool(4);
  const std::vector<SlotId> one = ReserveOk(pool, 1);
  auto [fence, signal] = Fence::Make();
  pool.Release(one, fence);
  EXPECT_DEATH(pool.Release(one, Fence()), "not reserved");
  signal.Signal(Status());
}

TEST_F(SlotPoolDeathTest, ReleaseOutOfRangeAborts) {
  SlotPool pool(4);
  const SlotId four{4};
  EXPECT_DEATH(pool.Release(std::span(&four, 1), Fence()), "release of slot 4 out of range");
  EXPECT_DEATH(pool.Release(std::span(&kNoSlot, 1), Fence()), "out of range");
}

}  // namespace
}  // namespace kvtier
