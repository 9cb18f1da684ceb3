// SliceCache (runtime/include/kvtier/slice_cache.h): creation checks, LRU order, slices used
// by the current step never evicted, sink/recent protection per request, slot reuse only
// after the last use's fence, failed and abandoned loads forgotten, and concurrent use.
#include "kvtier/slice_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "emulated_hbm_tier.h"
#include "host_tier.h"

namespace kvtier {
namespace {

using namespace std::chrono_literals;

// 2 layers, 2 KV heads, d=16, 16-token blocks, f16: 1 KiB slices.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 16, .dtype = DType::kF16};

template <class T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

SliceKey Key(uint32_t block, uint32_t head = 0, uint32_t layer = 0) {
  ChainHash c;
  c.bytes[0] = static_cast<uint8_t>(block);
  c.bytes[1] = static_cast<uint8_t>(block >> 8);
  c.bytes[2] = 0x5a;
  return SliceKey{BlockKey{c, LayerId{layer}}, head};
}

SliceRef Ref(uint32_t block, RequestId r = RequestId{1}, uint32_t head = 0) {
  return SliceRef{.key = Key(block, head), .request = r, .block_index = block};
}

class SliceCacheTest : public testing::Test {
 protected:
  void Make(uint32_t slots, SliceCacheOptions o = {}) {
    tier_ = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.slice_bytes(), .slot_count = slots}), "tier");
    o.geometry = kGeo;
    cache_ = Must(SliceCache::Create(o, tier_.get()), "SliceCache::Create");
  }
  // Acquires and completes the loads at once (OK).
  Acquisition Get(std::vector<SliceRef> refs, SliceUse use = SliceUse::kStep) {
    Acquisition a = Must(cache_->Acquire(refs, use), "Acquire");
    cache_->CompleteLoads(a, Fence());
    return a;
  }
  std::unique_ptr<EmulatedHbmTier> tier_;
  std::unique_ptr<SliceCache> cache_;  // destroyed before the tier
};

TEST_F(SliceCacheTest, CreateRejectsWrongTiers) {
  auto small = Must(EmulatedHbmTier::Create({.slot_bytes = 512, .slot_count = 4}), "tier");
  SliceCacheOptions o;
  o.geometry = kGeo;
  auto r = SliceCache::Create(o, small.get());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("512 B slots"), std::string_view::npos) << r.status().ToString();

  HostTierOptions ho;
  ho.slot_bytes = 4096;
  ho.slot_count = 2;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  auto dram = Must(HostTier::Create(ho), "host");
  SliceCacheOptions o4 = o;
  o4.geometry.head_dim = 128;  // 4 KiB slices: slot size matches, kind does not
  r = SliceCache::Create(o4, dram.get());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("not HBM"), std::string_view::npos) << r.status().ToString();

  auto ok = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.slice_bytes(), .slot_count = 4}), "tier");
  o.capacity_slices = 5;
  r = SliceCache::Create(o, ok.get());
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("capacity_slices"), std::string_view::npos);
  o.geometry.head_dim = 0;
  EXPECT_EQ(SliceCache::Create(o, ok.get()).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SliceCacheTest, EvictsLeastRecentlyUsedNotUsedThisStep) {
  Make(4, {.protect_sink_blocks = 0, .protect_recent_tokens = 0});
  Get({Ref(10), Ref(11), Ref(12), Ref(13)});
  cache_->EndStep(Fence());
  Acquisition a = Get({Ref(10), Ref(14)});  // 10 hits and moves to MRU; 11 is the LRU victim
  EXPECT_EQ(a.hits, 1u);
  EXPECT_EQ(a.misses.size(), 1u);
  EXPECT_FALSE(cache_->Contains(Key(11)));
  for (uint32_t b : {10u, 12u, 13u, 14u}) EXPECT_TRUE(cache_->Contains(Key(b))) << b;
  const SliceCacheStats s = cache_->Stats();
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 5u);
  EXPECT_EQ(s.evictions, 1u);
  EXPECT_EQ(s.loaded_bytes, 5 * kGeo.slice_bytes());
  EXPECT_EQ(s.resident_slices, 4u);
}

TEST_F(SliceCacheTest, SlicesUsedByTheCurrentStepAreNeverEvicted) {
  Make(3, {.protect_sink_blocks = 0, .protect_recent_tokens = 0});
  Get({Ref(1), Ref(2)});
  Get({Ref(3)});
  // Same step: 1, 2, 3 are all in use, so a fourth slice finds no room.
  auto r = cache_->Acquire(std::vector<SliceRef>{Ref(4)}, SliceUse::kStep);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  for (uint32_t b : {1u, 2u, 3u}) EXPECT_TRUE(cache_->Contains(Key(b)));
  cache_->EndStep(Fence());
  Get({Ref(4)});
  EXPECT_FALSE(cache_->Contains(Key(1)));
}

TEST_F(SliceCacheTest, SinkAndRecentBlocksOfActiveRequestsAreProtected) {
  // 16-token blocks; the last 32 tokens cover 2 blocks.
  Make(5, {.protect_sink_blocks = 1, .protect_recent_tokens = 32});
  const RequestId r{7};
  cache_->SetRequestTokens(r, 6 * 16);  // blocks 0..5; recent = blocks 4, 5
  Get({Ref(0, r), Ref(1, r), Ref(2, r), Ref(4, r), Ref(5, r)});
  cache_->EndStep(Fence());
  Get({Ref(8, RequestId{9}), Ref(9, RequestId{9})});  // two victims: only 1 and 2 may go
  EXPECT_TRUE(cache_->Contains(Key(0)));
  EXPECT_FALSE(cache_->Contains(Key(1)));
  EXPECT_FALSE(cache_->Contains(Key(2)));
  EXPECT_TRUE(cache_->Contains(Key(4)));
  EXPECT_TRUE(cache_->Contains(Key(5)));
  cache_->EndStep(Fence());
  // Everything left of r is protected: no room for a third newcomer beyond 8, 9.
  EXPECT_EQ(cache_->Acquire(std::vector<SliceRef>{Ref(10, RequestId{9}), Ref(11, RequestId{9}), Ref(12, RequestId{9})},
                            SliceUse::kStep)
                .status()
                .code(),
            StatusCode::kExhausted);
  cache_->EndStep(Fence());
  // The sequence grew: block 4 is no longer recent.
  cache_->SetRequestTokens(r, 8 * 16);
  Get({Ref(10, RequestId{9})});
  EXPECT_FALSE(cache_->Contains(Key(4)));  // the LRU unprotected one (0 is the sink)
  EXPECT_TRUE(cache_->Contains(Key(0)));
  // Once the request ends its sink is evictable too.
  cache_->EndStep(Fence());
  cache_->EndRequest(r);
  Get({Ref(20, RequestId{9}), Ref(21, RequestId{9}), Ref(22, RequestId{9}), Ref(23, RequestId{9})});
  EXPECT_FALSE(cache_->Contains(Key(0)));
}

TEST_F(SliceCacheTest, EvictedSlotIsReusedOnlyAfterItsLastUse) {
  Make(1, {.protect_sink_blocks = 0, .protect_recent_tokens = 0});
  Get({Ref(1)});
  auto [attention, done] = Fence::Make();
  cache_->EndStep(attention);  // the step's attention still reads slot of block 1
  std::atomic<bool> signaled{false};
  std::thread t([&, d = std::move(done)]() mutable {
    std::this_thread::sleep_for(50ms);
    signaled.store(true);
    d.Signal(Status());
  });
  Acquisition a = Get({Ref(2)});  // evicts 1, then must wait for `attention`
  EXPECT_TRUE(signaled.load());
  EXPECT_EQ(a.slots.size(), 1u);
  EXPECT_EQ(cache_->Stats().fence_waits, 1u);
  t.join();
}

TEST_F(SliceCacheTest, FailedLoadIsForgottenAndMissesAgain) {
  Make(4);
  Acquisition a = Must(cache_->Acquire(std::vector<SliceRef>{Ref(3), Ref(4)}, SliceUse::kStep), "Acquire");
  cache_->CompleteLoads(a, Fence::Failed(Status::IoError("copy failed")));
  EXPECT_EQ(a.ready.Wait().code(), StatusCode::kIoError);
  EXPECT_FALSE(cache_->Contains(Key(3)));
  EXPECT_FALSE(cache_->Contains(Key(4)));
  SliceCacheStats s = cache_->Stats();
  EXPECT_EQ(s.failed_loads, 2u);
  EXPECT_EQ(s.resident_slices, 0u);
  EXPECT_EQ(tier_->usage().reserved_slots, 0u);
  Acquisition b = Get({Ref(3)});
  EXPECT_EQ(b.misses.size(), 1u);
  EXPECT_TRUE(b.ready.Wait().ok());
  EXPECT_TRUE(cache_->Contains(Key(3)));
}

TEST_F(SliceCacheTest, AbandonedAcquisitionCancelsItsLoads) {
  Make(4);
  Fence ready;
  {
    Acquisition a = Must(cache_->Acquire(std::vector<SliceRef>{Ref(1)}, SliceUse::kStep), "Acquire");
    ready = a.ready;
  }
  EXPECT_EQ(ready.Wait().code(), StatusCode::kCancelled);
  EXPECT_FALSE(cache_->Contains(Key(1)));
  EXPECT_EQ(cache_->Stats().failed_loads, 1u);
}

TEST_F(SliceCacheTest, HitOnASliceStillLoadingWaitsForThatLoad) {
  Make(4);
  Acquisition a = Must(cache_->Acquire(std::vector<SliceRef>{Ref(1)}, SliceUse::kHint), "Acquire");
  auto [loaded, signal] = Fence::Make();
  cache_->CompleteLoads(a, loaded);
  Acquisition b = Get({Ref(1)});
  EXPECT_EQ(b.hits, 1u);
  EXPECT_TRUE(b.misses.empty());
  EXPECT_EQ(b.slots[0], a.slots[0]);
  EXPECT_FALSE(b.ready.ready());
  EXPECT_FALSE(cache_->Contains(Key(1)));
  signal.Signal(Status());
  EXPECT_TRUE(b.ready.Wait().ok());
  EXPECT_TRUE(cache_->Contains(Key(1)));
  const SliceCacheStats s = cache_->Stats();
  EXPECT_EQ(s.hint_misses, 1u);
  EXPECT_EQ(s.hits, 1u);
  EXPECT_EQ(s.misses, 0u);
}

TEST_F(SliceCacheTest, DuplicateRefsShareOneSlot) {
  Make(4);
  Acquisition a = Get({Ref(5), Ref(5, RequestId{1}, 0), Ref(6)});
  EXPECT_EQ(a.misses.size(), 2u);
  EXPECT_EQ(a.slots[0], a.slots[1]);
  EXPECT_NE(a.slots[0], a.slots[2]);
}

// Several threads acquire overlapping hint sets with loads completing late on another thread;
// the bookkeeping stays consistent (every lookup a hit or a miss, never over capacity, every
// slot back in the tier at the end).
TEST_F(SliceCacheTest, ConcurrentAcquiresStayConsistent) {
  Make(64, {.protect_sink_blocks = 0, .protect_recent_tokens = 0});
  constexpr int kThreads = 4, kIters = 400;
  std::atomic<uint64_t> refs_total{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(1234 + t);
      for (int i = 0; i < kIters; ++i) {
        std::vector<SliceRef> refs;
        for (int k = 0; k < 4; ++k) refs.push_back(Ref(rng() % 200, RequestId{uint64_t(t)}, rng() % 2));
        auto r = cache_->Acquire(refs, SliceUse::kHint);
        if (!r.ok()) continue;  // everything loading: allowed
        refs_total.fetch_add(refs.size());
        auto [loaded, signal] = Fence::Make();
        cache_->CompleteLoads(*r, loaded);
        std::thread([s = std::move(signal), fail = (i % 17 == 0)]() mutable {
          s.Signal(fail ? Status::IoError("injected") : Status());
        }).detach();
        (void)r->ready.Wait();
        EXPECT_LE(cache_->Stats().resident_slices, 64u);
      }
    });
  }
  for (auto& th : threads) th.join();
  const SliceCacheStats s = cache_->Stats();
  EXPECT_EQ(s.hint_hits + s.hint_misses, refs_total.load());
  EXPECT_LE(s.peak_slices, 64u);
  cache_.reset();
  EXPECT_EQ(tier_->usage().reserved_slots, 0u);
}

}  // namespace
}  // namespace kvtier
