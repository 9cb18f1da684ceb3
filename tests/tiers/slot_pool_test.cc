// SlotPool: the slot bookkeeping every tier shares.
#include "slot_pool.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <ostream>
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

TEST(SlotPoolTest, MostRecentlyReleasedSlotIsReusedFirst) {
  SlotPool pool(16);
  const std::vector<SlotId> all = ReserveOk(pool, 16);
  ASSERT_EQ(all.size(), 16u);
  const SlotId a{11}, b{4}, c{7};
  pool.Release(std::span(&a, 1), Fence());
  pool.Release(std::span(&b, 1), Fence());
  pool.Release(std::span(&c, 1), Fence());
  // LIFO: c (warmest), then b, then a.
  EXPECT_EQ(ReserveOk(pool, 1), std::vector<SlotId>{c});
  EXPECT_EQ(ReserveOk(pool, 1), std::vector<SlotId>{b});
  EXPECT_EQ(ReserveOk(pool, 1), std::vector<SlotId>{a});
}

TEST(SlotPoolTest, SlotFreedByAFenceIsReusedBeforeOlderFreeSlots) {
  SlotPool pool(4);
  const std::vector<SlotId> all = ReserveOk(pool, 4);
  pool.Release(std::span(all).first(1), Fence());  // slot 0 free since long ago
  auto [fence, signal] = Fence::Make();
  pool.Release(std::span(all).subspan(3, 1), fence);  // slot 3 waits
  signal.Signal(Status());
  EXPECT_EQ(ReserveOk(pool, 1), std::vector<SlotId>{all[3]});
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
