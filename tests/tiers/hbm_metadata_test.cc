// Metadata arenas of the HBM tier (Tier::ReserveMetadata, docs/sparse.md): bytes of the
// tier's metadata budget, aligned, counted in usage(), in TierManager's statistics and
// their text, and in SliceCache's statistics; kExhausted when they do not fit.
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <vector>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "kvtier/slice_cache.h"
#include "kvtier/tier_manager.h"
#include "memcpy_mover.h"

namespace kvtier {
namespace {

constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};

template <typename T>
T Must(Result<T> r, const char* what) {
  EXPECT_TRUE(r.ok()) << what << ": " << r.status().ToString();
  return std::move(r).value();
}

std::unique_ptr<EmulatedHbmTier> Hbm(uint64_t metadata_bytes, uint32_t slots = 4) {
  return Must(EmulatedHbmTier::Create({.slot_bytes = 1024, .slot_count = slots, .metadata_bytes = metadata_bytes}),
              "EmulatedHbmTier::Create");
}

TEST(HbmMetadata, ReservesAlignedBytesApartFromTheSlotsAndCountsThem) {
  auto t = Hbm(4096);
  TierUsage u = t->usage();
  EXPECT_EQ(u.metadata_bytes, 0u);
  EXPECT_EQ(u.metadata_capacity_bytes, 4096u);
  EXPECT_EQ(u.free_slots, 4u);
  MetadataArena a = Must(t->ReserveMetadata(100), "reserve 100");
  MetadataArena b = Must(t->ReserveMetadata(1000), "reserve 1000");
  EXPECT_EQ(a.bytes, 100u);
  EXPECT_EQ(b.bytes, 1000u);
  EXPECT_EQ(a.address.device, kEmulatedDevice);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(a.address.ptr) % t->caps().alignment, 0u);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.address.ptr) % t->caps().alignment, 0u);
  // Disjoint from each other and from every slot, and writable.
  std::vector<SlotId> slots = Must(t->Reserve(4), "reserve slots");
  EXPECT_TRUE(a.address.ptr + 256 <= b.address.ptr || b.address.ptr + 1024 <= a.address.ptr);
  for (SlotId s : slots) {
    std::byte* p = std::get<MemoryAddress>(t->Locate(s)).ptr;
    for (const MetadataArena* m : {&a, &b}) {
      EXPECT_TRUE(m->address.ptr >= p + 1024 || m->address.ptr + m->bytes <= p) << "arena overlaps slot " << s.value();
    }
  }
  std::memset(a.address.ptr, 0x11, a.bytes);
  std::memset(b.address.ptr, 0x22, b.bytes);
  u = t->usage();
  EXPECT_EQ(u.metadata_bytes, 256u + 1024u);  // rounded up to the alignment
  EXPECT_EQ(u.free_slots, 0u);                // the slots are untouched by the arenas
  t->ReleaseMetadata(a);
  t->ReleaseMetadata(b);
  EXPECT_EQ(t->usage().metadata_bytes, 0u);
  t->Release(slots, Fence());
}

TEST(HbmMetadata, ExhaustionIsAClearError) {
  auto t = Hbm(1024);
  auto too_big = t->ReserveMetadata(1025);
  ASSERT_FALSE(too_big.ok());
  EXPECT_EQ(too_big.status().code(), StatusCode::kExhausted);
  EXPECT_NE(too_big.status().message().find("metadata budget"), std::string::npos) << too_big.status().ToString();
  MetadataArena a = Must(t->ReserveMetadata(512), "a");
  MetadataArena b = Must(t->ReserveMetadata(512), "b");
  auto full = t->ReserveMetadata(1);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.status().code(), StatusCode::kExhausted);
  EXPECT_NE(full.status().message().find("emulated-hbm"), std::string::npos) << full.status().ToString();
  EXPECT_EQ(t->usage().metadata_bytes, 1024u);
  // Released ranges merge: the whole budget fits again.
  t->ReleaseMetadata(b);
  t->ReleaseMetadata(a);
  MetadataArena whole = Must(t->ReserveMetadata(1024), "whole");
  t->ReleaseMetadata(whole);
  EXPECT_EQ(t->ReserveMetadata(0).status().code(), StatusCode::kInvalidArgument);
}

TEST(HbmMetadata, ATierWithoutABudgetSaysExhausted) {
  auto t = Hbm(0);
  auto r = t->ReserveMetadata(64);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kExhausted);
  EXPECT_EQ(t->usage().metadata_capacity_bytes, 0u);
  HostTierOptions ho;
  ho.slot_bytes = 1024;
  ho.slot_count = 2;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  auto dram = Must(HostTier::Create(ho), "HostTier::Create");
  auto d = dram->ReserveMetadata(64);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kExhausted);
}

TEST(HbmMetadata, FaultyTierForwardsToItsInnerTier) {
  FaultyTier t(Hbm(512), std::make_shared<FaultPlan>(FaultOptions{}));
  MetadataArena a = Must(t.ReserveMetadata(300), "reserve");
  EXPECT_EQ(t.usage().metadata_bytes, 512u);
  t.ReleaseMetadata(a);
  EXPECT_EQ(t.usage().metadata_bytes, 0u);
}

TEST(HbmMetadata, TierManagerAndSliceCacheStatisticsShowTheBytes) {
  TierSet set;
  HostTierOptions ho;
  ho.slot_bytes = kGeo.block_bytes();
  ho.slot_count = 8;
  ho.pinning = PinningPolicy::kAllowUnpinned;
  ho.touch_threads = 1;
  auto dram = Must(HostTier::Create(ho), "HostTier::Create");
  auto hbm = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.block_bytes(), .slot_count = 4, .metadata_bytes = 1 << 20}),
                  "EmulatedHbmTier::Create");
  Tier* dram_ptr = dram.get();
  EmulatedHbmTier* hbm_ptr = hbm.get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm);
  set.movers.push_back(Must(MemcpyMover::Create(dram_ptr, hbm_ptr, {.threads = 1}), "up"));
  set.movers.push_back(Must(MemcpyMover::Create(hbm_ptr, dram_ptr, {.threads = 1}), "down"));
  TierManagerOptions o;
  o.geometry = kGeo;
  o.index_shards = 2;
  auto tm = Must(TierManager::Create(std::move(o), std::move(set)), "TierManager::Create");

  MetadataArena a = Must(hbm_ptr->ReserveMetadata(300 << 10), "reserve");
  const RuntimeStats st = tm->Stats();
  const TierStats& h = st.tiers[TierIndex(TierKind::kHbm)];
  EXPECT_EQ(h.metadata_bytes, 300u << 10);
  EXPECT_EQ(h.metadata_capacity_bytes, 1u << 20);
  EXPECT_EQ(st.tiers[TierIndex(TierKind::kDram)].metadata_capacity_bytes, 0u);
  const std::string text = st.ToText();
  EXPECT_NE(text.find("hbm metadata: 300.0 KiB of 1.0 MiB"), std::string::npos) << text;

  auto cache_tier = Hbm(4096, 8);
  SliceCacheOptions co;
  co.geometry = KvGeometry{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 16, .dtype = DType::kF16};
  auto cache = Must(SliceCache::Create(co, cache_tier.get()), "SliceCache::Create");
  MetadataArena c = Must(cache_tier->ReserveMetadata(1000), "reserve");
  EXPECT_EQ(cache->Stats().metadata_bytes, 1024u);
  cache_tier->ReleaseMetadata(c);
  EXPECT_EQ(cache->Stats().metadata_bytes, 0u);
  hbm_ptr->ReleaseMetadata(a);
  EXPECT_EQ(tm->Stats().tiers[TierIndex(TierKind::kHbm)].metadata_bytes, 0u);
}

}  // namespace
}  // namespace kvtier
