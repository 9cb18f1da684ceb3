// SparsePrefetcher (runtime/include/kvtier/sparse_prefetcher.h): the bytes landed in the HBM
// slice slots equal the DRAM slices byte for byte (fresh random data); one MoveBatch per
// layer call whatever the batch size; hits move no bytes; a hint's loads are hits for the
// exact selection; a failed mover is a miss, never served; malformed selections rejected.
#include "kvtier/sparse_prefetcher.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "memcpy_mover.h"

namespace kvtier {
namespace {

// 2 layers, 4 KV heads, d=16, 4-token blocks, f16: 256 B slices, 1 KiB blocks.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 4, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};

template <class T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

// A request's blocks of one layer in DRAM, filled with random bytes.
struct Sequence {
  RequestId id;
  std::vector<BlockKey> keys;
  std::vector<SlotId> slots;
  SequenceLayer View() const {
    return SequenceLayer{.request = id, .tokens = uint32_t(keys.size() * kGeo.block_tokens + 1), .keys = keys,
                         .dram_slots = slots};
  }
};

class SparsePrefetcherTest : public testing::Test {
 protected:
  SparsePrefetcherTest() : seed_(std::random_device{}()), rng_(seed_) {}

  void SetUp() override {
    RecordProperty("seed", std::to_string(seed_));
    HostTierOptions ho;
    ho.slot_bytes = kGeo.block_bytes();
    ho.slot_count = 64;
    ho.pinning = PinningPolicy::kAllowUnpinned;
    ho.touch_threads = 1;
    dram_ = Must(HostTier::Create(ho), "dram");
    hbm_ = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.slice_bytes(), .slot_count = 48}), "hbm");
    mover_ = Must(MemcpyMover::Create(dram_.get(), hbm_.get(), {.threads = 1}), "mover");
    SliceCacheOptions co;
    co.geometry = kGeo;
    cache_ = Must(SliceCache::Create(co, hbm_.get()), "cache");
    prefetcher_ = Must(SparsePrefetcher::Create(cache_.get(), mover_.get()), "prefetcher");
  }

  Sequence MakeSequence(uint64_t id, uint32_t blocks) {
    Sequence s;
    s.id = RequestId{id};
    s.slots = Must(dram_->Reserve(blocks), "dram reserve");
    for (uint32_t b = 0; b < blocks; ++b) {
      ChainHash c;
      for (auto& x : c.bytes) x = static_cast<uint8_t>(rng_());
      s.keys.push_back(BlockKey{c, LayerId{0}});
      std::byte* p = std::get<MemoryAddress>(dram_->Locate(s.slots[b])).ptr;
      for (uint64_t i = 0; i < kGeo.block_bytes(); ++i) p[i] = static_cast<std::byte>(rng_());
    }
    return s;
  }
  // `per_head` distinct random blocks per head, sorted (the selector's output shape).
  std::vector<uint32_t> RandomSelection(uint32_t blocks, uint32_t per_head) {
    std::vector<uint32_t> out;
    for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
      std::vector<uint32_t> all(blocks);
      for (uint32_t b = 0; b < blocks; ++b) all[b] = b;
      std::shuffle(all.begin(), all.end(), rng_);
      std::sort(all.begin(), all.begin() + per_head);
      out.insert(out.end(), all.begin(), all.begin() + per_head);
    }
    return out;
  }
  // Every table entry's HBM bytes equal the DRAM slice.
  void ExpectBytesMatch(const Sequence& s, const LayerSelection& sel, const PageTable& t) {
    for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
      for (uint32_t i = 0; i < sel.blocks_per_head; ++i) {
        const uint32_t b = sel.blocks[h * sel.blocks_per_head + i];
        const std::byte* hbm = t.pointers[h * sel.blocks_per_head + i];
        if (b == s.keys.size()) {
          EXPECT_EQ(t.at(h, i), kNoSlot);
          continue;
        }
        ASSERT_NE(hbm, nullptr);
        EXPECT_EQ(std::get<MemoryAddress>(hbm_->Locate(t.at(h, i))).ptr, hbm);
        const std::byte* dram = std::get<MemoryAddress>(dram_->Locate(s.slots[b])).ptr + kGeo.SliceOffset(h);
        ASSERT_EQ(std::memcmp(hbm, dram, kGeo.slice_bytes()), 0) << "head " << h << " block " << b;
      }
    }
  }

  uint32_t seed_;
  std::mt19937 rng_;
  std::unique_ptr<HostTier> dram_;
  std::unique_ptr<EmulatedHbmTier> hbm_;
  std::unique_ptr<Mover> mover_;
  std::unique_ptr<SliceCache> cache_;
  std::unique_ptr<SparsePrefetcher> prefetcher_;
};

TEST_F(SparsePrefetcherTest, LandsTheDramSlicesByteForByteInOneBatchPerLayer) {
  Sequence a = MakeSequence(1, 12), b = MakeSequence(2, 9);
  const auto sa = RandomSelection(12, 4), sb = RandomSelection(9, 3);
  std::vector<LayerSelection> layer = {{a.View(), sa, 4}, {b.View(), sb, 3}};
  LayerPrefetch p = Must(prefetcher_->Prefetch(layer), "Prefetch");
  ASSERT_TRUE(p.ready.Wait().ok());
  ASSERT_EQ(p.tables.size(), 2u);
  EXPECT_EQ(p.misses, 4u * 4 + 4u * 3);
  EXPECT_EQ(p.hits, 0u);
  ExpectBytesMatch(a, layer[0], p.tables[0]);
  ExpectBytesMatch(b, layer[1], p.tables[1]);
  const MoverStats ms = mover_->stats();
  EXPECT_EQ(ms.batches, 1u);
  EXPECT_EQ(ms.segments, p.misses);
  EXPECT_EQ(ms.bytes, p.misses * kGeo.slice_bytes());
  EXPECT_EQ(prefetcher_->Stats().batches, 1u);
}

TEST_F(SparsePrefetcherTest, HitsMoveNoBytes) {
  Sequence a = MakeSequence(1, 10);
  const auto sel = RandomSelection(10, 5);
  std::vector<LayerSelection> layer = {{a.View(), sel, 5}};
  ASSERT_TRUE(Must(prefetcher_->Prefetch(layer), "first").ready.Wait().ok());
  prefetcher_->EndStep(Fence());
  const MoverStats before = mover_->stats();
  LayerPrefetch again = Must(prefetcher_->Prefetch(layer), "again");
  ASSERT_TRUE(again.ready.Wait().ok());
  EXPECT_EQ(again.misses, 0u);
  EXPECT_EQ(again.hits, 20u);
  ExpectBytesMatch(a, layer[0], again.tables[0]);
  const MoverStats after = mover_->stats();
  EXPECT_EQ(after.batches, before.batches);
  EXPECT_EQ(after.bytes, before.bytes);
  EXPECT_EQ(cache_->Stats().hits, 20u);
}

TEST_F(SparsePrefetcherTest, HintLoadsBecomeHitsOfTheExactSelection) {
  Sequence a = MakeSequence(1, 16);
  const auto hint = RandomSelection(16, 6), exact = RandomSelection(16, 6);
  ASSERT_TRUE(Must(prefetcher_->PrefetchHint(std::vector<LayerSelection>{{a.View(), hint, 6}}), "hint").Wait().ok());
  uint32_t overlap = 0;
  for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
    std::set<uint32_t> hs(hint.begin() + h * 6, hint.begin() + (h + 1) * 6);
    for (uint32_t i = 0; i < 6; ++i) overlap += hs.count(exact[h * 6 + i]);
  }
  std::vector<LayerSelection> layer = {{a.View(), exact, 6}};
  LayerPrefetch p = Must(prefetcher_->Prefetch(layer), "exact");
  ASSERT_TRUE(p.ready.Wait().ok());
  EXPECT_EQ(p.hits, overlap);
  EXPECT_EQ(p.misses, 24u - overlap);
  ExpectBytesMatch(a, layer[0], p.tables[0]);
  // Hinted slices not attended stay cached.
  for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
    for (uint32_t i = 0; i < 6; ++i) EXPECT_TRUE(cache_->Contains(SliceKey{a.keys[hint[h * 6 + i]], h}));
  }
  const SparsePrefetcherStats s = prefetcher_->Stats();
  EXPECT_EQ(s.hint_slices, 24u);
  EXPECT_EQ(s.batches, overlap == 24 ? 1u : 2u);
}

TEST_F(SparsePrefetcherTest, TailBlockHasNoSlot) {
  Sequence a = MakeSequence(1, 5);
  std::vector<uint32_t> sel;
  for (uint32_t h = 0; h < kGeo.kv_heads; ++h) sel.insert(sel.end(), {0u, 2u, 5u});  // 5 = the partial block
  std::vector<LayerSelection> layer = {{a.View(), sel, 3}};
  LayerPrefetch p = Must(prefetcher_->Prefetch(layer), "Prefetch");
  ASSERT_TRUE(p.ready.Wait().ok());
  EXPECT_EQ(p.tail, kGeo.kv_heads);
  EXPECT_EQ(p.misses, 2 * kGeo.kv_heads);
  ExpectBytesMatch(a, layer[0], p.tables[0]);
}

TEST_F(SparsePrefetcherTest, FailedMoverIsAMissNeverServed) {
  auto plan = std::make_shared<FaultPlan>(FaultOptions{.seed = seed_, .copy_failure = 1.0});
  auto faulty = std::make_unique<FaultyMover>(Must(MemcpyMover::Create(dram_.get(), hbm_.get(), {.threads = 1}), "m"), plan);
  auto bad = Must(SparsePrefetcher::Create(cache_.get(), faulty.get()), "bad prefetcher");
  Sequence a = MakeSequence(1, 8);
  const auto sel = RandomSelection(8, 3);
  std::vector<LayerSelection> layer = {{a.View(), sel, 3}};
  LayerPrefetch p = Must(bad->Prefetch(layer), "Prefetch");
  EXPECT_FALSE(p.ready.Wait().ok());
  for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
    for (uint32_t i = 0; i < 3; ++i) EXPECT_FALSE(cache_->Contains(SliceKey{a.keys[sel[h * 3 + i]], h}));
  }
  EXPECT_EQ(cache_->Stats().failed_loads, 12u);
  EXPECT_EQ(cache_->Stats().resident_slices, 0u);
  bad->EndStep(Fence());
  // The next lookup misses again and loads through a working mover.
  LayerPrefetch q = Must(prefetcher_->Prefetch(layer), "retry");
  ASSERT_TRUE(q.ready.Wait().ok());
  EXPECT_EQ(q.misses, 12u);
  EXPECT_EQ(q.hits, 0u);
  ExpectBytesMatch(a, layer[0], q.tables[0]);
  EXPECT_GE(plan->counters().copy_failures.load(), 1u);
}

TEST_F(SparsePrefetcherTest, RejectsMalformedSelections) {
  Sequence a = MakeSequence(1, 4);
  std::vector<uint32_t> short_sel = {0, 1, 2};  // not kv_heads x 1
  EXPECT_EQ(prefetcher_->Prefetch(std::vector<LayerSelection>{{a.View(), short_sel, 1}}).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<uint32_t> beyond(kGeo.kv_heads, 6);  // 4 full blocks + tail = 4 is the last valid index
  auto r = prefetcher_->Prefetch(std::vector<LayerSelection>{{a.View(), beyond, 1}});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("block 6"), std::string_view::npos) << r.status().ToString();
  SequenceLayer mismatched = a.View();
  mismatched.dram_slots = mismatched.dram_slots.subspan(1);
  std::vector<uint32_t> ok(kGeo.kv_heads, 0);
  EXPECT_EQ(prefetcher_->Prefetch(std::vector<LayerSelection>{{mismatched, ok, 1}}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(mover_->stats().batches, 0u);
  // The mover's direction is checked.
  auto down = Must(MemcpyMover::Create(hbm_.get(), dram_.get(), {.threads = 1}), "down");
  EXPECT_EQ(SparsePrefetcher::Create(cache_.get(), down.get()).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(SparsePrefetcherTest, SelectionLargerThanTheCacheIsExhausted) {
  Sequence a = MakeSequence(1, 16);
  const auto sel = RandomSelection(16, 13);  // 52 slices > 48 slots
  auto r = prefetcher_->Prefetch(std::vector<LayerSelection>{{a.View(), sel, 13}});
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  EXPECT_EQ(mover_->stats().batches, 0u);
}

}  // namespace
}  // namespace kvtier
