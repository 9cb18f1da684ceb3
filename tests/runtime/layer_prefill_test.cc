// LayerPrefill (runtime/include/kvtier/layer_prefill.h): HBM never holds more than one layer
// of the prompt (the staging tier is sized to exactly one layer, and the peak is measured);
// every layer's bytes are in DRAM afterwards, byte for byte; the metadata built through the
// hook equals the min/max computed in bulk from DRAM; copies that complete late on the mover
// thread; a failed copy leaves nothing in DRAM; the DRAM blocks feed the sparse prefetcher.
#include "kvtier/layer_prefill.h"

#include <gtest/gtest.h>

#include <bit>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "emulated_hbm_tier.h"
#include "fault_injection.h"
#include "host_tier.h"
#include "kvtier/sparse_prefetcher.h"
#include "memcpy_mover.h"

namespace kvtier {
namespace {

using namespace std::chrono_literals;

// 3 layers, 2 KV heads, d=8, 4-token blocks, bf16: 128 B slices, 256 B blocks.
constexpr KvGeometry kGeo{.layers = 3, .kv_heads = 2, .head_dim = 8, .block_tokens = 4, .dtype = DType::kBF16};
constexpr uint64_t kPromptTokens = 10 * 4 + 3;  // 10 full blocks + a 3-token tail
constexpr uint32_t kBlocks = 10;

template <class T>
T Must(Result<T> r, const char* what) {
  if (!r.ok()) throw std::runtime_error(std::string(what) + ": " + r.status().ToString());
  return std::move(r).value();
}

uint16_t ToBf16(float f) { return static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16); }
float FromBf16(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

class LayerPrefillTest : public testing::Test {
 protected:
  LayerPrefillTest() : seed_(std::random_device{}()), rng_(seed_) {}

  // staging_slots: slices in the HBM tier (default: exactly one layer of the prompt).
  void Build(std::optional<FaultOptions> faults = std::nullopt, uint32_t staging_slots = kBlocks * kGeo.kv_heads) {
    RecordProperty("seed", std::to_string(seed_));
    TierSet set;
    HostTierOptions ho;
    ho.slot_bytes = kGeo.block_bytes();
    ho.slot_count = 64;
    ho.pinning = PinningPolicy::kAllowUnpinned;
    ho.touch_threads = 1;
    auto dram = Must(HostTier::Create(ho), "dram");
    dram_ = dram.get();
    set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
    TierManagerOptions o;
    o.geometry = kGeo;
    o.index_shards = 4;
    o.logger = &quiet_;
    tm_ = Must(TierManager::Create(o, std::move(set)), "TierManager");
    hbm_ = Must(EmulatedHbmTier::Create({.slot_bytes = kGeo.slice_bytes(), .slot_count = staging_slots}), "hbm");
    std::unique_ptr<Mover> down = Must(MemcpyMover::Create(hbm_.get(), dram_, {.threads = 1}), "down");
    if (faults) down = std::make_unique<FaultyMover>(std::move(down), std::make_shared<FaultPlan>(*faults));
    down_ = std::move(down);
    for (uint32_t b = 0; b < kBlocks; ++b) {
      ChainHash c;
      for (auto& x : c.bytes) x = static_cast<uint8_t>(rng_());
      for (uint32_t l = 0; l < kGeo.layers; ++l) keys_.push_back(BlockKey{c, LayerId{l}});
    }
    written_.assign(kGeo.layers, std::vector<std::byte>(kBlocks * kGeo.block_bytes()));
    bounds_.assign(size_t{kGeo.layers} * kGeo.kv_heads * kBlocks * 2 * kGeo.head_dim, 0.0f);
  }

  // The metadata hook: what an engine on a host-addressable tier does (fp32 keys -> min/max).
  LayerKeysFn Hook() {
    return [this](const LayerStaging& s, const Fence& written) -> Result<Fence> {
      KVT_RETURN_IF_ERROR(written.Wait());
      std::vector<float> keys;
      KVT_RETURN_IF_ERROR(GatherLayerKeys(kGeo, s, &keys));
      const uint32_t d = kGeo.head_dim, tokens = s.blocks * kGeo.block_tokens;
      for (uint32_t h = 0; h < kGeo.kv_heads; ++h)
        for (uint32_t b = 0; b < s.blocks; ++b)
          for (uint32_t i = 0; i < d; ++i) {
            float lo = INFINITY, hi = -INFINITY;
            for (uint32_t t = b * kGeo.block_tokens; t < (b + 1) * kGeo.block_tokens; ++t) {
              lo = std::min(lo, keys[(size_t{h} * tokens + t) * d + i]);
              hi = std::max(hi, keys[(size_t{h} * tokens + t) * d + i]);
            }
            float* out = &bounds_[(((size_t{s.layer.value()} * kGeo.kv_heads + h) * kBlocks + b) * 2) * d];
            out[i] = lo;
            out[d + i] = hi;
          }
      return Fence();
    };
  }

  // Random bf16 K and V into every slice of the staging; remembered as the block bytes.
  void WriteLayer(const LayerStaging& s) {
    std::normal_distribution<float> nd(0.0f, 2.0f);
    for (uint32_t b = 0; b < s.blocks; ++b)
      for (uint32_t h = 0; h < kGeo.kv_heads; ++h) {
        std::byte* slice = s.pointers[b * kGeo.kv_heads + h];
        for (uint64_t i = 0; i < kGeo.slice_bytes() / 2; ++i) {
          const uint16_t v = ToBf16(nd(rng_));
          std::memcpy(slice + 2 * i, &v, 2);
        }
        std::memcpy(&written_[s.layer.value()][b * kGeo.block_bytes() + kGeo.SliceOffset(h)], slice,
                    kGeo.slice_bytes());
      }
  }

  std::vector<PinSet> RunAll(LayerPrefill& p) {
    for (uint32_t l = 0; l < kGeo.layers; ++l) {
      LayerStaging s = Must(p.BeginLayer(LayerId{l}), "BeginLayer");
      EXPECT_EQ(s.blocks, kBlocks);
      EXPECT_EQ(s.slots.size(), kBlocks * kGeo.kv_heads);
      WriteLayer(s);
      (void)Must(p.FinishLayer(Fence()), "FinishLayer");
    }
    return Must(p.Finish(), "Finish");
  }

  std::unique_ptr<LayerPrefill> Make(LayerPrefillOptions o = {}, bool hook = true) {
    o.geometry = kGeo;
    o.prompt_tokens = kPromptTokens;
    return Must(LayerPrefill::Create(o, tm_.get(), hbm_.get(), down_.get(), keys_, hook ? Hook() : LayerKeysFn{}),
                "LayerPrefill::Create");
  }

  class Quiet final : public Logger {
   public:
    void Write(LogLevel, std::string_view) override {}
  };
  uint32_t seed_;
  std::mt19937 rng_;
  Quiet quiet_;
  Tier* dram_ = nullptr;
  std::unique_ptr<EmulatedHbmTier> hbm_;
  std::unique_ptr<TierManager> tm_;
  std::unique_ptr<Mover> down_;  // destroyed before tm_ (its DRAM tier) and hbm_
  std::vector<BlockKey> keys_;
  std::vector<std::vector<std::byte>> written_;
  std::vector<float> bounds_;  // [layer][head][block][min|max][d] from the hook
};

TEST_F(LayerPrefillTest, PeakIsOneLayerEveryLayerInDramMetadataMatchesBulk) {
  Build();
  auto p = Make();
  std::vector<PinSet> pins = RunAll(*p);
  ASSERT_EQ(pins.size(), kGeo.layers);
  const LayerPrefillStats st = p->Stats();
  EXPECT_EQ(st.layer_bytes, kBlocks * kGeo.block_bytes());
  EXPECT_EQ(st.peak_hbm_bytes, st.layer_bytes);  // <= one layer (+0%)
  EXPECT_EQ(st.hbm_bytes, 0u);
  EXPECT_EQ(st.offloaded_bytes, kGeo.layers * st.layer_bytes);
  EXPECT_EQ(st.layers_finished, kGeo.layers);
  EXPECT_EQ(hbm_->usage().reserved_slots, 0u);
  const uint32_t d = kGeo.head_dim;
  for (uint32_t l = 0; l < kGeo.layers; ++l) {
    ASSERT_EQ(pins[l].size(), kBlocks);
    for (uint32_t b = 0; b < kBlocks; ++b) {
      EXPECT_EQ(pins[l].key(b), keys_[b * kGeo.layers + l]);
      const std::byte* dram = std::get<MemoryAddress>(Must(tm_->Locate(pins[l], b, TierKind::kDram), "Locate")).ptr;
      ASSERT_EQ(std::memcmp(dram, &written_[l][b * kGeo.block_bytes()], kGeo.block_bytes()), 0)
          << "layer " << l << " block " << b;
      // Bulk min/max straight from the DRAM block's keys.
      for (uint32_t h = 0; h < kGeo.kv_heads; ++h)
        for (uint32_t i = 0; i < d; ++i) {
          float lo = INFINITY, hi = -INFINITY;
          for (uint32_t t = 0; t < kGeo.block_tokens; ++t) {
            uint16_t v;
            std::memcpy(&v, dram + kGeo.Offset(h, KvPart::kKey, t, i), 2);
            lo = std::min(lo, FromBf16(v));
            hi = std::max(hi, FromBf16(v));
          }
          const float* m = &bounds_[(((size_t{l} * kGeo.kv_heads + h) * kBlocks + b) * 2) * d];
          EXPECT_EQ(m[i], lo);
          EXPECT_EQ(m[d + i], hi);
        }
    }
  }
  // The blocks are indexed: a match finds every one of them.
  EXPECT_EQ(tm_->MatchKeys(keys_).size(), keys_.size());
}

// Copies complete late on the mover's delay thread: BeginLayer waits for them, so the one-layer
// staging tier always has room and the peak stays one layer.
TEST_F(LayerPrefillTest, LateCopiesAreWaitedForNotOverlapped) {
  Build(FaultOptions{.seed = seed_, .delay = 1.0, .max_delay = 20ms});
  auto p = Make({}, /*hook=*/false);
  std::vector<PinSet> pins = RunAll(*p);
  EXPECT_EQ(p->Stats().peak_hbm_bytes, p->Stats().layer_bytes);
  EXPECT_GE(p->Stats().copy_waits, 1u);
  for (uint32_t l = 0; l < kGeo.layers; ++l)
    for (uint32_t b = 0; b < kBlocks; ++b) {
      const std::byte* dram = std::get<MemoryAddress>(Must(tm_->Locate(pins[l], b, TierKind::kDram), "Locate")).ptr;
      ASSERT_EQ(std::memcmp(dram, &written_[l][b * kGeo.block_bytes()], kGeo.block_bytes()), 0);
    }
}

TEST_F(LayerPrefillTest, TwoLayersInHbmOverlapWithinTwoLayers) {
  Build(FaultOptions{.seed = seed_, .delay = 1.0, .max_delay = 5ms}, 2 * kBlocks * kGeo.kv_heads);
  LayerPrefillOptions o;
  o.max_layers_in_hbm = 2;
  auto p = Make(o, false);
  (void)RunAll(*p);
  EXPECT_LE(p->Stats().peak_hbm_bytes, 2 * p->Stats().layer_bytes);
}

TEST_F(LayerPrefillTest, FailedCopyLeavesNothingInDram) {
  Build(FaultOptions{.seed = seed_, .copy_failure = 1.0});
  auto p = Make({}, false);
  for (uint32_t l = 0; l < kGeo.layers; ++l) {
    LayerStaging s = Must(p->BeginLayer(LayerId{l}), "BeginLayer");
    WriteLayer(s);
    Fence copied = Must(p->FinishLayer(Fence()), "FinishLayer");
    EXPECT_FALSE(copied.Wait().ok());
  }
  auto r = p->Finish();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("layer 0"), std::string_view::npos) << r.status().ToString();
  EXPECT_EQ(p->Stats().offloaded_bytes, 0u);
  EXPECT_EQ(tm_->MatchKeys(std::span(keys_).first(1)).size(), 0u);
  EXPECT_EQ(hbm_->usage().reserved_slots, 0u);
}

TEST_F(LayerPrefillTest, RejectsBadUse) {
  Build();
  LayerPrefillOptions o;
  o.geometry = kGeo;
  o.prompt_tokens = 3;  // not one full block
  EXPECT_EQ(LayerPrefill::Create(o, tm_.get(), hbm_.get(), down_.get(), keys_).status().code(),
            StatusCode::kInvalidArgument);
  o.prompt_tokens = kPromptTokens;
  std::vector<BlockKey> few(keys_.begin(), keys_.end() - 1);
  EXPECT_EQ(LayerPrefill::Create(o, tm_.get(), hbm_.get(), down_.get(), few).status().code(),
            StatusCode::kInvalidArgument);
  std::vector<BlockKey> swapped = keys_;
  std::swap(swapped[0], swapped[1]);  // layer-major is not block-major
  EXPECT_EQ(LayerPrefill::Create(o, tm_.get(), hbm_.get(), down_.get(), swapped).status().code(),
            StatusCode::kInvalidArgument);
  o.max_layers_in_hbm = 0;
  EXPECT_EQ(LayerPrefill::Create(o, tm_.get(), hbm_.get(), down_.get(), keys_).status().code(),
            StatusCode::kInvalidArgument);
  auto p = Make({}, false);
  EXPECT_EQ(p->BeginLayer(LayerId{1}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(p->FinishLayer(Fence()).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(p->Finish().status().code(), StatusCode::kFailedPrecondition);
}

// End to end: the prefill's DRAM blocks feed the sparse prefetcher (slots via TierManager::
// SlotOf), sharing the HBM tier with the staging once the prefill is done.
TEST_F(LayerPrefillTest, PrefilledBlocksFeedTheSparsePrefetcher) {
  Build(std::nullopt, 64);
  auto p = Make({}, false);
  std::vector<PinSet> pins = RunAll(*p);
  auto up = Must(MemcpyMover::Create(dram_, hbm_.get(), {.threads = 1}), "up");
  SliceCacheOptions co;
  co.geometry = kGeo;
  auto cache = Must(SliceCache::Create(co, hbm_.get()), "cache");
  auto prefetcher = Must(SparsePrefetcher::Create(cache.get(), up.get()), "prefetcher");
  const uint32_t l = 1;
  std::vector<SlotId> slots;
  ASSERT_TRUE(DramSlotsOf(*tm_, pins[l], &slots).ok());
  std::vector<BlockKey> layer_keys;
  for (uint32_t b = 0; b < kBlocks; ++b) layer_keys.push_back(pins[l].key(b));
  const std::vector<uint32_t> sel = {0, 3, 7, 10, /*head 1*/ 0, 1, 9, 10};  // 10 = the tail
  std::vector<LayerSelection> work = {
      {SequenceLayer{.request = RequestId{1}, .tokens = kPromptTokens, .keys = layer_keys, .dram_slots = slots}, sel, 4}};
  LayerPrefetch f = Must(prefetcher->Prefetch(work), "Prefetch");
  ASSERT_TRUE(f.ready.Wait().ok());
  EXPECT_EQ(f.misses, 6u);
  EXPECT_EQ(f.tail, 2u);
  for (uint32_t h = 0; h < 2; ++h)
    for (uint32_t i = 0; i < 3; ++i) {
      const uint32_t b = sel[h * 4 + i];
      ASSERT_EQ(std::memcmp(f.tables[0].pointers[h * 4 + i], &written_[l][b * kGeo.block_bytes() + kGeo.SliceOffset(h)],
                            kGeo.slice_bytes()),
                0);
    }
  prefetcher.reset();
  cache.reset();
}

}  // namespace
}  // namespace kvtier
