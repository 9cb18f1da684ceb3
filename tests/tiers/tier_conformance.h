// The Tier conformance suite: the contract of kvtier/tier.h, checked against any
// implementation. Every tier (emulated HBM, the DRAM pool, the fault-injecting decorator,
// and later the GPU and NVMe tiers) instantiates it with a factory type:
//
//   struct MyTierFactory {
//     static std::unique_ptr<kvtier::Tier> Make(uint64_t slot_bytes, uint32_t slot_count);
//     static bool Available();  // optional: false skips every case (no GPU, no NVMe, ...)
//   };
//   INSTANTIATE_TYPED_TEST_SUITE_P(My, TierConformance, MyTierFactory);
//
// Asked slot sizes are multiples of 16 B (the movers' word); a tier may round them up.
// Cases that read or write slot bytes through a pointer skip tiers whose slots are files.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <memory>
#include <ostream>
#include <random>
#include <set>
#include <span>
#include <thread>
#include <utility>
#include <variant>
#include <vector>

#include "kvtier/fence.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

}  // namespace kvtier

namespace kvtier::testing {

template <class Factory>
concept HasAvailable = requires {
  { Factory::Available() } -> std::convertible_to<bool>;
};

template <class Factory>
bool FactoryAvailable() {
  if constexpr (HasAvailable<Factory>) {
    return Factory::Available();
  } else {
    return true;
  }
}

// Fills `out` with bytes from a generator seeded by `seed`.
inline void FillRandom(std::span<std::byte> out, uint64_t seed) {
  std::mt19937_64 rng(seed);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(out.data() + i, &w, 8);
  }
  const uint64_t tail = rng();
  std::memcpy(out.data() + i, &tail, out.size() - i);
}

// The pointer behind a memory slot, or null for a file extent.
inline std::byte* SlotPointer(const Tier& tier, SlotId slot) {
  const Location loc = tier.Locate(slot);
  const auto* mem = std::get_if<MemoryAddress>(&loc);
  return mem ? mem->ptr : nullptr;
}

inline void ExpectUsage(const Tier& tier, uint32_t free_slots, uint32_t fenced_slots, uint32_t reserved_slots) {
  const TierUsage u = tier.usage();
  EXPECT_EQ(u.free_slots, free_slots) << tier.name();
  EXPECT_EQ(u.fenced_slots, fenced_slots) << tier.name();
  EXPECT_EQ(u.reserved_slots, reserved_slots) << tier.name();
}

template <class Factory>
class TierConformance : public ::testing::Test {
 protected:
  static constexpr uint64_t kSlotBytes = 4096;
  static constexpr uint32_t kSlotCount = 64;

  void SetUp() override {
    if (!FactoryAvailable<Factory>()) GTEST_SKIP() << "this tier is not available on this machine";
    seed_ = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    RecordProperty("seed", std::to_string(seed_));
  }

  std::unique_ptr<Tier> Make(uint64_t slot_bytes = kSlotBytes, uint32_t slot_count = kSlotCount) {
    std::unique_ptr<Tier> tier = Factory::Make(slot_bytes, slot_count);
    EXPECT_NE(tier, nullptr);
    return tier;
  }

  static std::vector<SlotId> ReserveOrDie(Tier& tier, uint32_t count) {
    Result<std::vector<SlotId>> r = tier.Reserve(count);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : std::vector<SlotId>{};
  }

  uint64_t seed_ = 0;
};

TYPED_TEST_SUITE_P(TierConformance);

TYPED_TEST_P(TierConformance, CapsDescribeAlignedDistinctNonOverlappingSlots) {
  // 1008 B is not a multiple of any plausible alignment: the tier must round up, not down.
  for (const uint64_t asked : {uint64_t{1008}, uint64_t{4096}, uint64_t{65536}}) {
    SCOPED_TRACE(asked);
    constexpr uint32_t kCount = 16;
    auto tier = this->Make(asked, kCount);
    ASSERT_NE(tier, nullptr);
    const TierCaps& caps = tier->caps();
    EXPECT_FALSE(tier->name().empty());
    EXPECT_EQ(tier->kind(), caps.kind);
    EXPECT_GE(caps.slot_bytes, asked);
    EXPECT_EQ(caps.slot_count, kCount);
    ASSERT_GT(caps.alignment, 0u);
    EXPECT_TRUE(std::has_single_bit(caps.alignment)) << caps.alignment;

    const std::vector<SlotId> slots = this->ReserveOrDie(*tier, kCount);
    ASSERT_EQ(slots.size(), kCount);
    std::vector<std::pair<uint64_t, uint64_t>> ranges;  // [begin, end) per slot, any address space
    for (SlotId s : slots) {
      ASSERT_LT(s.value(), kCount);
      const Location loc = tier->Locate(s);
      if (const auto* mem = std::get_if<MemoryAddress>(&loc)) {
        ASSERT_NE(mem->ptr, nullptr);
        const auto addr = reinterpret_cast<uintptr_t>(mem->ptr);
        EXPECT_EQ(addr % caps.alignment, 0u) << "slot " << s.value();
        ranges.emplace_back(addr, addr + caps.slot_bytes);
        // The whole slot is addressable: its first and last bytes can be written.
        if (mem->device.value() < 0) {
          mem->ptr[0] = std::byte{0x5a};
          mem->ptr[caps.slot_bytes - 1] = std::byte{0xa5};
          EXPECT_EQ(mem->ptr[0], std::byte{0x5a});
          EXPECT_EQ(mem->ptr[caps.slot_bytes - 1], std::byte{0xa5});
        }
      } else {
        const auto& file = std::get<FileExtent>(loc);
        EXPECT_GE(file.fd, 0);
        EXPECT_EQ(file.offset % caps.alignment, 0u) << "slot " << s.value();
        ranges.emplace_back(file.offset, file.offset + caps.slot_bytes);
      }
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i) {
      EXPECT_GE(ranges[i].first, ranges[i - 1].second) << "slots " << i - 1 << " and " << i << " overlap";
    }
    tier->Release(slots, Fence());
  }
}

TYPED_TEST_P(TierConformance, ReserveHandsOutDistinctSlotsUntilExhausted) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  std::set<uint32_t> seen;
  std::vector<SlotId> held;
  // In uneven pieces: 1, 2, 3, ... until the last piece fills the tier exactly.
  for (uint32_t piece = 1; held.size() < n; ++piece) {
    const uint32_t take = std::min<uint32_t>(piece, n - static_cast<uint32_t>(held.size()));
    const std::vector<SlotId> got = this->ReserveOrDie(*tier, take);
    ASSERT_EQ(got.size(), take);
    for (SlotId s : got) {
      EXPECT_LT(s.value(), n);
      EXPECT_TRUE(seen.insert(s.value()).second) << "slot " << s.value() << " handed out twice";
      held.push_back(s);
    }
  }
  ExpectUsage(*tier, 0, 0, n);
  const auto one_more = tier->Reserve(1);
  ASSERT_FALSE(one_more.ok());
  EXPECT_EQ(one_more.status().code(), StatusCode::kExhausted) << one_more.status().ToString();
  EXPECT_TRUE(one_more.status().retryable());
  ExpectUsage(*tier, 0, 0, n);
  tier->Release(held, Fence());
  ExpectUsage(*tier, n, 0, 0);
}

TYPED_TEST_P(TierConformance, ReserveIsAllOrNothing) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  const std::vector<SlotId> most = this->ReserveOrDie(*tier, n - 3);
  ASSERT_EQ(most.size(), n - 3);

  const auto too_many = tier->Reserve(4);
  ASSERT_FALSE(too_many.ok());
  EXPECT_EQ(too_many.status().code(), StatusCode::kExhausted) << too_many.status().ToString();
  // Nothing was taken by the failed call: the three free slots are all still there.
  ExpectUsage(*tier, 3, 0, n - 3);
  const auto way_too_many = tier->Reserve(n + 1);
  EXPECT_EQ(way_too_many.status().code(), StatusCode::kExhausted);
  ExpectUsage(*tier, 3, 0, n - 3);

  const std::vector<SlotId> rest = this->ReserveOrDie(*tier, 3);
  EXPECT_EQ(rest.size(), 3u);
  ExpectUsage(*tier, 0, 0, n);
  tier->Release(most, Fence());
  tier->Release(rest, Fence());
}

TYPED_TEST_P(TierConformance, ReleaseReturnsCapacity) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  std::vector<SlotId> all = this->ReserveOrDie(*tier, n);
  ASSERT_EQ(all.size(), n);
  const std::vector<SlotId> first_half(all.begin(), all.begin() + n / 2);
  const std::vector<SlotId> second_half(all.begin() + n / 2, all.end());

  tier->Release(first_half, Fence());  // a signaled fence: reusable at once
  ExpectUsage(*tier, n / 2, 0, n - n / 2);
  const std::vector<SlotId> again = this->ReserveOrDie(*tier, n / 2);
  ASSERT_EQ(again.size(), n / 2);
  // Exactly the released slots come back (the others are still held).
  EXPECT_EQ(std::set<SlotId>(again.begin(), again.end()), std::set<SlotId>(first_half.begin(), first_half.end()));
  EXPECT_EQ(tier->Reserve(1).status().code(), StatusCode::kExhausted);

  tier->Release(again, Fence());
  tier->Release(second_half, Fence());
  ExpectUsage(*tier, n, 0, 0);
  // Many cycles neither leak nor duplicate slots.
  for (int i = 0; i < 100; ++i) {
    std::vector<SlotId> s = this->ReserveOrDie(*tier, n);
    ASSERT_EQ(s.size(), n);
    tier->Release(s, Fence());
  }
  ExpectUsage(*tier, n, 0, 0);
}

TYPED_TEST_P(TierConformance, ReleasedSlotStaysUnreservableUntilItsFenceSignals) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  std::vector<SlotId> all = this->ReserveOrDie(*tier, n);
  ASSERT_EQ(all.size(), n);
  const SlotId last_used = all.back();
  all.pop_back();

  auto [fence, signal] = Fence::Make();
  tier->Release(std::span(&last_used, 1), fence);
  ExpectUsage(*tier, 0, 1, n - 1);
  for (int i = 0; i < 3; ++i) {
    const auto r = tier->Reserve(1);
    EXPECT_EQ(r.status().code(), StatusCode::kExhausted) << "a fenced slot was handed out";
  }
  ExpectUsage(*tier, 0, 1, n - 1);

  signal.Signal(Status());
  ExpectUsage(*tier, 1, 0, n - 1);
  const std::vector<SlotId> reused = this->ReserveOrDie(*tier, 1);
  ASSERT_EQ(reused.size(), 1u);
  EXPECT_EQ(reused[0], last_used);
  tier->Release(reused, Fence());
  tier->Release(all, Fence());
  ExpectUsage(*tier, n, 0, 0);
}

TYPED_TEST_P(TierConformance, SlotsGuardedByOneFenceAllReturnWhenItSignals) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  const std::vector<SlotId> all = this->ReserveOrDie(*tier, n);
  ASSERT_EQ(all.size(), n);
  auto [fence, signal] = Fence::Make();
  tier->Release(std::span(all).first(10), fence);
  tier->Release(std::span(all).subspan(10), Fence());
  ExpectUsage(*tier, n - 10, 10, 0);
  EXPECT_EQ(tier->Reserve(n - 9).status().code(), StatusCode::kExhausted);
  // A signal from another thread (as a mover's completion would).
  std::thread producer([s = std::move(signal)]() mutable { s.Signal(Status()); });
  producer.join();
  ExpectUsage(*tier, n, 0, 0);
  const std::vector<SlotId> again = this->ReserveOrDie(*tier, n);
  EXPECT_EQ(again.size(), n);
  tier->Release(again, Fence());
}

TYPED_TEST_P(TierConformance, FailedFenceStillFreesTheSlot) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  const std::vector<SlotId> all = this->ReserveOrDie(*tier, n);
  ASSERT_EQ(all.size(), n);

  // A fence that fails later.
  auto [fence, signal] = Fence::Make();
  tier->Release(std::span(all).first(2), fence);
  ExpectUsage(*tier, 0, 2, n - 2);
  signal.Signal(Status::IoError("the copy that last used these slots failed"));
  ExpectUsage(*tier, 2, 0, n - 2);

  // A fence that has already failed.
  tier->Release(std::span(all).subspan(2, 1), Fence::Failed(Status::IoError("failed before release")));
  ExpectUsage(*tier, 3, 0, n - 3);

  // A producer that went away without signaling (kCancelled).
  {
    auto [abandoned, dropped_signal] = Fence::Make();
    tier->Release(std::span(all).subspan(3, 1), abandoned);
    ExpectUsage(*tier, 3, 1, n - 4);
  }  // dropped_signal is destroyed here
  ExpectUsage(*tier, 4, 0, n - 4);

  const std::vector<SlotId> again = this->ReserveOrDie(*tier, 4);
  EXPECT_EQ(std::set<SlotId>(again.begin(), again.end()), std::set<SlotId>(all.begin(), all.begin() + 4));
  tier->Release(again, Fence());
  tier->Release(std::span(all).subspan(4), Fence());
}

TYPED_TEST_P(TierConformance, BytesWrittenToASlotReadBackIntactWithoutBleeding) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const TierCaps& caps = tier->caps();
  const std::vector<SlotId> all = this->ReserveOrDie(*tier, caps.slot_count);
  ASSERT_EQ(all.size(), caps.slot_count);
  if (SlotPointer(*tier, all[0]) == nullptr) GTEST_SKIP() << "slots are not host-addressable memory";
  if (std::get<MemoryAddress>(tier->Locate(all[0])).device.value() >= 0) {
    GTEST_SKIP() << "slots are device memory";
  }
  const size_t bytes = caps.slot_bytes;

  // Every slot gets its own random content; then each is checked against what was written
  // to it, so a write that spilled past a slot's end shows up in its neighbour.
  std::vector<std::vector<std::byte>> expected(all.size(), std::vector<std::byte>(bytes));
  for (size_t i = 0; i < all.size(); ++i) {
    FillRandom(expected[i], this->seed_ + i);
    std::memcpy(SlotPointer(*tier, all[i]), expected[i].data(), bytes);
  }
  for (size_t i = 0; i < all.size(); ++i) {
    ASSERT_EQ(std::memcmp(SlotPointer(*tier, all[i]), expected[i].data(), bytes), 0) << "slot " << all[i].value();
  }

  // Guard pattern in the neighbours of one slot; rewrite that slot twice with fresh data.
  const SlotId victim = SlotId{caps.slot_count / 2};
  const std::vector<std::byte> guard(bytes, std::byte{0xc3});
  for (uint32_t s : {victim.value() - 1, victim.value() + 1}) {
    std::memcpy(SlotPointer(*tier, SlotId{s}), guard.data(), bytes);
  }
  for (int round = 0; round < 2; ++round) {
    std::vector<std::byte> fresh(bytes);
    FillRandom(fresh, this->seed_ ^ (0x9e3779b97f4a7c15ull + static_cast<uint64_t>(round)));
    std::memcpy(SlotPointer(*tier, victim), fresh.data(), bytes);
    EXPECT_EQ(std::memcmp(SlotPointer(*tier, victim), fresh.data(), bytes), 0);
    for (uint32_t s : {victim.value() - 1, victim.value() + 1}) {
      EXPECT_EQ(std::memcmp(SlotPointer(*tier, SlotId{s}), guard.data(), bytes), 0) << "bled into slot " << s;
    }
  }

  // A slot's address is stable across release and reuse, and its bytes survive.
  std::byte* before = SlotPointer(*tier, victim);
  tier->Release(std::span(&victim, 1), Fence());
  const std::vector<SlotId> again = this->ReserveOrDie(*tier, 1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0], victim);
  EXPECT_EQ(SlotPointer(*tier, victim), before);
  for (const SlotId s : all) {
    if (s != victim) tier->Release(std::span(&s, 1), Fence());
  }
  tier->Release(again, Fence());
}

TYPED_TEST_P(TierConformance, UsageAlwaysAddsUpToSlotCount) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  auto check_sum = [&] {
    const TierUsage u = tier->usage();
    EXPECT_EQ(u.free_slots + u.fenced_slots + u.reserved_slots, n);
  };
  ExpectUsage(*tier, n, 0, 0);

  std::mt19937_64 rng(this->seed_);
  std::vector<SlotId> held;
  std::vector<std::pair<FenceSignal, uint32_t>> pending;  // a signal and how many slots it guards
  uint32_t fenced = 0;
  for (int step = 0; step < 400; ++step) {
    const uint32_t free_now = n - static_cast<uint32_t>(held.size()) - fenced;
    switch (rng() % 4) {
      case 0: {  // reserve a few (possibly more than are free)
        const uint32_t want = 1 + static_cast<uint32_t>(rng() % 6);
        auto r = tier->Reserve(want);
        if (want <= free_now) {
          ASSERT_TRUE(r.ok()) << r.status().ToString();
          held.insert(held.end(), r->begin(), r->end());
        } else {
          ASSERT_EQ(r.status().code(), StatusCode::kExhausted);
        }
        break;
      }
      case 1: {  // release one now
        if (held.empty()) break;
        const SlotId s = held.back();
        held.pop_back();
        tier->Release(std::span(&s, 1), Fence());
        break;
      }
      case 2: {  // release a few behind a pending fence
        if (held.empty()) break;
        const size_t k = 1 + rng() % std::min<size_t>(held.size(), 4);
        auto [fence, signal] = Fence::Make();
        tier->Release(std::span(held).last(k), fence);
        held.resize(held.size() - k);
        fenced += static_cast<uint32_t>(k);
        pending.emplace_back(std::move(signal), static_cast<uint32_t>(k));
        break;
      }
      case 3: {  // signal the oldest pending fence (OK or failed)
        if (pending.empty()) break;
        pending.front().first.Signal(rng() % 2 ? Status() : Status::IoError("injected"));
        fenced -= pending.front().second;
        pending.erase(pending.begin());
        break;
      }
    }
    ExpectUsage(*tier, n - static_cast<uint32_t>(held.size()) - fenced, fenced, static_cast<uint32_t>(held.size()));
    check_sum();
    if (::testing::Test::HasFailure()) return;
  }
  for (auto& guarded : pending) guarded.first.Signal(Status());
  tier->Release(held, Fence());
  ExpectUsage(*tier, n, 0, 0);
}

TYPED_TEST_P(TierConformance, ConcurrentReserveAndReleaseNeverShareASlot) {
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  const bool host_memory = [&] {
    const Location loc = tier->Locate(SlotId{0});
    const auto* mem = std::get_if<MemoryAddress>(&loc);
    return mem != nullptr && mem->device.value() < 0;
  }();
  // owner[s] = 0 when nobody holds slot s, else the holder's id. Exchanging our id in must
  // find 0, and exchanging 0 back must find our id: two holders of one slot break either.
  std::vector<std::atomic<uint32_t>> owner(n);
  std::atomic<uint64_t> violations{0}, exhausted{0}, reserved_total{0};
  constexpr int kThreads = 4;
  constexpr int kIterations = 3000;

  auto worker = [&](uint32_t id) {
    std::mt19937_64 rng(this->seed_ + id);
    for (int i = 0; i < kIterations; ++i) {
      const uint32_t want = 1 + static_cast<uint32_t>(rng() % 5);
      auto r = tier->Reserve(want);
      if (!r.ok()) {
        if (r.status().code() != StatusCode::kExhausted) violations.fetch_add(1);
        exhausted.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      if (r->size() != want) violations.fetch_add(1);
      reserved_total.fetch_add(r->size(), std::memory_order_relaxed);
      for (SlotId s : *r) {
        if (s.value() >= n || owner[s.value()].exchange(id, std::memory_order_acq_rel) != 0) violations.fetch_add(1);
        if (host_memory) std::memset(SlotPointer(*tier, s), static_cast<int>(id), 64);
      }
      if (rng() % 4 == 0) std::this_thread::yield();
      for (SlotId s : *r) {
        // Our mark is still there: nobody else wrote this slot while we held it.
        if (host_memory) {
          const std::byte* p = SlotPointer(*tier, s);
          if (std::any_of(p, p + 64, [&](std::byte b) { return b != static_cast<std::byte>(id); })) {
            violations.fetch_add(1);
          }
        }
        if (s.value() < n && owner[s.value()].exchange(0, std::memory_order_acq_rel) != id) violations.fetch_add(1);
      }
      if (rng() % 3 == 0) {
        // Release behind a fence signaled from this thread right after.
        auto [fence, signal] = Fence::Make();
        tier->Release(*r, fence);
        signal.Signal(Status());
      } else {
        tier->Release(*r, Fence());
      }
    }
  };
  std::vector<std::thread> threads;
  for (uint32_t t = 1; t <= kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();

  EXPECT_EQ(violations.load(), 0u);
  EXPECT_GT(reserved_total.load(), 0u);
  ExpectUsage(*tier, n, 0, 0);
}

TYPED_TEST_P(TierConformance, ReleaseOfAnUnreservedSlotAborts) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  auto tier = this->Make();
  ASSERT_NE(tier, nullptr);
  const uint32_t n = tier->caps().slot_count;
  const SlotId never_reserved{3};
  EXPECT_DEATH(tier->Release(std::span(&never_reserved, 1), Fence()), "not reserved");

  const std::vector<SlotId> one = this->ReserveOrDie(*tier, 1);
  ASSERT_EQ(one.size(), 1u);
  tier->Release(one, Fence());
  EXPECT_DEATH(tier->Release(one, Fence()), "not reserved") << "a double release must abort";

  const std::vector<SlotId> two = this->ReserveOrDie(*tier, 1);
  ASSERT_EQ(two.size(), 1u);
  const std::vector<SlotId> twice = {two[0], two[0]};
  EXPECT_DEATH(tier->Release(twice, Fence()), "not reserved") << "one slot listed twice in a release";

  auto [fence, signal] = Fence::Make();
  tier->Release(two, fence);
  EXPECT_DEATH(tier->Release(two, Fence()), "not reserved") << "releasing a fenced slot again";
  signal.Signal(Status());

  const SlotId out_of_range{n};
  EXPECT_DEATH(tier->Release(std::span(&out_of_range, 1), Fence()), "out of range");
  ExpectUsage(*tier, n, 0, 0);
}

REGISTER_TYPED_TEST_SUITE_P(TierConformance, CapsDescribeAlignedDistinctNonOverlappingSlots,
                            ReserveHandsOutDistinctSlotsUntilExhausted, ReserveIsAllOrNothing, ReleaseReturnsCapacity,
                            ReleasedSlotStaysUnreservableUntilItsFenceSignals,
                            SlotsGuardedByOneFenceAllReturnWhenItSignals, FailedFenceStillFreesTheSlot,
                            BytesWrittenToASlotReadBackIntactWithoutBleeding, UsageAlwaysAddsUpToSlotCount,
                            ConcurrentReserveAndReleaseNeverShareASlot, ReleaseOfAnUnreservedSlotAborts);

}  // namespace kvtier::testing
