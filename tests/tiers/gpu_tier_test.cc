// The GPU tier and movers on a real device: the tier conformance suite, bit-exact round trips
// DRAM -> HBM -> DRAM through the movers (kernel and CPU-assisted D2H), producer/consumer
// fences, a forced-overlap stress of 10^6 block round trips, and the TierManager end to end
// on GpuHbmTier. Every case skips without a CUDA device.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <random>
#include <thread>

#include "cuda_host_pinner.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#include "host_tier.h"
#include "kvtier/tier_manager.h"
#include "registry.h"
#include "tier_conformance.h"

namespace kvtier {
namespace {

bool HaveDevice() { return CudaDeviceCount() > 0; }

struct GpuHbmFactory {
  static bool Available() { return HaveDevice(); }
  static std::unique_ptr<Tier> Make(uint64_t slot_bytes, uint32_t slot_count) {
    auto t = GpuHbmTier::Create({.device = 0, .slot_bytes = slot_bytes, .slot_count = slot_count});
    return t.ok() ? std::move(t).value() : nullptr;
  }
};

}  // namespace
}  // namespace kvtier

namespace kvtier::testing {
INSTANTIATE_TYPED_TEST_SUITE_P(GpuHbm, TierConformance, ::kvtier::GpuHbmFactory);
}  // namespace kvtier::testing

namespace kvtier {
namespace {

std::unique_ptr<HostTier> PinnedDram(uint64_t slot_bytes, uint32_t slots) {
  auto pinner = CudaHostPinner::Create();
  if (!pinner.ok()) return nullptr;
  HostTierOptions o;
  o.slot_bytes = slot_bytes;
  o.slot_count = slots;
  o.pinner = *pinner;
  auto t = HostTier::Create(o);
  return t.ok() ? std::move(t).value() : nullptr;
}

std::byte* Ptr(const Tier& t, SlotId s) { return std::get<MemoryAddress>(t.Locate(s)).ptr; }

void FillRandom(std::byte* p, uint64_t bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
    const uint64_t w = rng();
    std::memcpy(p + i, &w, 8);
  }
}

class GpuMoverTest : public ::testing::TestWithParam<D2hMode> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
  // DRAM source and destination pools and one HBM pool, `slots` slots of `bytes` each.
  void Build(uint64_t bytes, uint32_t slots) {
    dram_ = PinnedDram(bytes, slots * 2);
    ASSERT_NE(dram_, nullptr);
    auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = (bytes + 15) / 16 * 16, .slot_count = slots});
    ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
    hbm_ = std::move(hbm).value();
    GpuMoverOptions o;
    o.d2h_mode = GetParam();
    auto up = GpuMover::Create(dram_.get(), hbm_.get(), o);
    auto down = GpuMover::Create(hbm_.get(), dram_.get(), o);
    ASSERT_TRUE(up.ok()) << up.status().ToString();
    ASSERT_TRUE(down.ok()) << down.status().ToString();
    up_ = std::move(up).value();
    down_ = std::move(down).value();
  }
  void TearDown() override {
    up_.reset();
    down_.reset();
  }
  std::unique_ptr<HostTier> dram_;
  std::unique_ptr<GpuHbmTier> hbm_;
  std::unique_ptr<GpuMover> up_, down_;
};

TEST_P(GpuMoverTest, RoundTripsAreBitExactForManyBlockSizes) {
  for (uint64_t bytes : {16ull, 48ull, 4096ull, 8192ull, 16384ull, 65536ull, 65552ull, 262144ull, 2097152ull}) {
    const uint32_t slots = bytes >= (1u << 20) ? 8 : 64;
    Build(bytes, slots);
    if (HasFatalFailure()) return;
    const uint32_t n = slots / 2;
    MoveBatch h2d, d2h;
    for (uint32_t i = 0; i < n; ++i) {
      FillRandom(Ptr(*dram_, SlotId{i}), bytes, bytes * 131 + i);
      std::memset(Ptr(*dram_, SlotId{slots + i}), 0xA5, dram_->caps().slot_bytes);  // poison
      h2d.segments.push_back({SlotId{i}, SlotId{slots - 1 - i}, 0, 0, bytes});
      d2h.segments.push_back({SlotId{slots - 1 - i}, SlotId{slots + (i * 7) % n}, 0, 0, bytes});
    }
    Fence up = up_->Submit(std::move(h2d));
    d2h.wait_for.push_back(up);  // the producer of the HBM bytes
    ASSERT_TRUE(down_->Submit(std::move(d2h)).Wait().ok());
    for (uint32_t i = 0; i < n; ++i) {
      std::vector<std::byte> want(bytes);
      FillRandom(want.data(), bytes, bytes * 131 + i);
      const std::byte* got = Ptr(*dram_, SlotId{slots + (i * 7) % n});
      ASSERT_EQ(std::memcmp(got, want.data(), bytes), 0) << bytes << " B block " << i;
      for (uint64_t b = bytes; b < dram_->caps().slot_bytes; ++b) ASSERT_EQ(got[b], std::byte{0xA5}) << "wrote past the block";
    }
    const MoverStats st = down_->stats();
    EXPECT_EQ(st.bytes, uint64_t{n} * bytes);
    EXPECT_EQ(st.errors, 0u);
    TearDown();
  }
}

TEST_P(GpuMoverTest, SlicesAtOffsetsLandAtTheirOffsets) {
  const uint64_t block = 65536, slice = 8192;
  Build(block, 16);
  FillRandom(Ptr(*dram_, SlotId{0}), block, 5);
  MoveBatch h2d;
  for (uint64_t s = 0; s < block / slice; ++s) h2d.segments.push_back({SlotId{0}, SlotId{1}, s * slice, (7 - s) * slice, slice});
  ASSERT_TRUE(up_->Submit(std::move(h2d)).Wait().ok());
  std::memset(Ptr(*dram_, SlotId{20}), 0, block);
  MoveBatch d2h;
  d2h.segments.push_back({SlotId{1}, SlotId{20}, 0, 0, block});
  ASSERT_TRUE(down_->Submit(std::move(d2h)).Wait().ok());
  for (uint64_t s = 0; s < block / slice; ++s) {
    EXPECT_EQ(std::memcmp(Ptr(*dram_, SlotId{20}) + (7 - s) * slice, Ptr(*dram_, SlotId{0}) + s * slice, slice), 0);
  }
}

TEST_P(GpuMoverTest, MisalignedOrOutOfRangeSegmentsFailBeforeAnythingMoves) {
  Build(4096, 8);
  MoveBatch a;
  a.segments.push_back({SlotId{0}, SlotId{0}, 8, 0, 64});
  EXPECT_EQ(up_->Submit(std::move(a)).Wait().code(), StatusCode::kInvalidArgument);
  MoveBatch b;
  b.segments.push_back({SlotId{0}, SlotId{99}, 0, 0, 64});
  EXPECT_EQ(up_->Submit(std::move(b)).Wait().code(), StatusCode::kInvalidArgument);
}

TEST_P(GpuMoverTest, BatchWaitsForItsFencesAndFailsWithThem) {
  Build(4096, 8);
  FillRandom(Ptr(*dram_, SlotId{0}), 4096, 1);
  std::memset(Ptr(*dram_, SlotId{9}), 0, 4096);
  auto [gate, open] = Fence::Make();
  MoveBatch h2d;
  h2d.segments.push_back({SlotId{0}, SlotId{0}, 0, 0, 4096});
  Fence up = up_->Submit(std::move(h2d));
  MoveBatch d2h;
  d2h.segments.push_back({SlotId{0}, SlotId{9}, 0, 0, 4096});
  d2h.wait_for = {up, gate};
  Fence down = down_->Submit(std::move(d2h));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(down.ready());
  std::vector<std::byte> zero(4096);
  EXPECT_EQ(std::memcmp(Ptr(*dram_, SlotId{9}), zero.data(), 4096), 0) << "copied before its fence";
  open.Signal(Status());
  ASSERT_TRUE(down.Wait().ok());
  EXPECT_EQ(std::memcmp(Ptr(*dram_, SlotId{9}), Ptr(*dram_, SlotId{0}), 4096), 0);

  auto [bad, fail] = Fence::Make();
  MoveBatch again;
  again.segments.push_back({SlotId{0}, SlotId{10}, 0, 0, 4096});
  again.wait_for = {bad};
  Fence f = down_->Submit(std::move(again));
  fail.Signal(Status::IoError("producer failed"));
  EXPECT_EQ(f.Wait().code(), StatusCode::kIoError);
}

// Forced overlap: H2D of round r+1 runs while D2H of round r drains; an HBM slot is reused
// only after the D2H that read it (consumer fence), and every D2H waits for its H2D
// (producer fence). 10^6 blocks make the round trip; every byte is checked.
TEST_P(GpuMoverTest, MillionBlockRoundTripsUnderForcedOverlapHaveNoMismatch) {
  const uint64_t bytes = 4096;
  const uint32_t per_batch = 8192, hbm_slots = 4 * per_batch;
  Build(bytes, hbm_slots);
  const uint32_t src_slots = hbm_slots, dst_base = hbm_slots;  // dram: [0, n) sources, [n, 2n) destinations
  for (uint32_t i = 0; i < src_slots; ++i) FillRandom(Ptr(*dram_, SlotId{i}), bytes, 1000 + i);
  const uint64_t total = 1'000'000;
  std::mt19937_64 rng(42);
  std::vector<Fence> consumer(4);  // last D2H reading each quarter of HBM
  std::vector<std::pair<Fence, std::vector<std::pair<uint32_t, uint32_t>>>> checks;  // (fence, (src, dst))
  uint64_t done = 0;
  uint64_t mismatches = 0;
  for (uint32_t round = 0; done < total; ++round) {
    const uint32_t quarter = round % 4;
    MoveBatch h2d, d2h;
    std::vector<std::pair<uint32_t, uint32_t>> pairs;
    h2d.wait_for.push_back(consumer[quarter]);
    for (uint32_t i = 0; i < per_batch; ++i) {
      const uint32_t src = static_cast<uint32_t>(rng() % src_slots);
      const uint32_t hbm = quarter * per_batch + i;
      const uint32_t dst = dst_base + quarter * per_batch + i;
      h2d.segments.push_back({SlotId{src}, SlotId{hbm}, 0, 0, bytes});
      d2h.segments.push_back({SlotId{hbm}, SlotId{dst}, 0, 0, bytes});
      pairs.emplace_back(src, dst);
    }
    Fence up = up_->Submit(std::move(h2d));
    d2h.wait_for.push_back(up);
    // The destination quarter of DRAM is checked before it is overwritten again.
    if (checks.size() >= 4) {
      auto& [f, ps] = checks[checks.size() - 4];
      ASSERT_TRUE(f.Wait().ok());
      for (auto [s, d] : ps) mismatches += std::memcmp(Ptr(*dram_, SlotId{s}), Ptr(*dram_, SlotId{d}), bytes) != 0;
    }
    Fence down = down_->Submit(std::move(d2h));
    consumer[quarter] = down;
    checks.emplace_back(down, std::move(pairs));
    done += per_batch;
  }
  for (size_t c = checks.size() >= 4 ? checks.size() - 4 : 0; c < checks.size(); ++c) {
    ASSERT_TRUE(checks[c].first.Wait().ok());
    for (auto [s, d] : checks[c].second) mismatches += std::memcmp(Ptr(*dram_, SlotId{s}), Ptr(*dram_, SlotId{d}), bytes) != 0;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GE(up_->stats().segments, total);
  EXPECT_GE(down_->stats().segments, total);
}

INSTANTIATE_TEST_SUITE_P(D2hModes, GpuMoverTest, ::testing::Values(D2hMode::kKernel, D2hMode::kCpuAssisted),
                         [](const auto& p) { return std::string(D2hModeName(p.param)); });

// CPU-assisted D2H with every scatter copy this CPU has (memcpy, AVX2 / AVX-512 streaming
// stores), into pools of every page backing: bit-exact, nothing written outside the blocks.
TEST(GpuMoverCpuCopyTest, EveryHostCopyPathAndPageBackingRoundTripsBitExact) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  auto pinner = CudaHostPinner::Create();
  ASSERT_TRUE(pinner.ok()) << pinner.status().ToString();
  for (HugePages pages : {HugePages::kOff, HugePages::kTransparent, HugePages::kHugetlb}) {
    for (HostCopyPath path : {HostCopyPath::kMemcpy, HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
      if (!HostCopyPathSupported(path)) continue;
      for (uint64_t bytes : {48ull, 4112ull, 16384ull, 65552ull, 2097152ull}) {
        const uint32_t slots = bytes >= (1u << 20) ? 8 : 32;
        HostTierOptions ho;
        ho.slot_bytes = bytes;
        ho.slot_count = slots * 2;
        ho.pinner = *pinner;
        ho.huge_pages = pages;
        auto dram = HostTier::Create(ho);
        ASSERT_TRUE(dram.ok()) << dram.status().ToString();
        auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = bytes, .slot_count = slots});
        ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
        GpuMoverOptions o;
        o.d2h_mode = D2hMode::kCpuAssisted;
        o.cpu_copy = path;
        auto up = GpuMover::Create(dram->get(), hbm->get(), o);
        auto down = GpuMover::Create(hbm->get(), dram->get(), o);
        ASSERT_TRUE(up.ok() && down.ok());
        EXPECT_EQ((*down)->cpu_copy_path(), path);
        const uint32_t n = slots / 2;
        const uint64_t slot_bytes = (*dram)->caps().slot_bytes;
        MoveBatch h2d, d2h;
        for (uint32_t i = 0; i < n; ++i) {
          FillRandom(Ptr(**dram, SlotId{i}), bytes, bytes * 17 + i);
          std::memset(Ptr(**dram, SlotId{slots + i}), 0xA5, slot_bytes);
          h2d.segments.push_back({SlotId{i}, SlotId{slots - 1 - i}, 0, 0, bytes});
          d2h.segments.push_back({SlotId{slots - 1 - i}, SlotId{slots + (i * 5) % n}, 0, 0, bytes});
        }
        d2h.wait_for.push_back((*up)->Submit(std::move(h2d)));
        ASSERT_TRUE((*down)->Submit(std::move(d2h)).Wait().ok());
        std::vector<std::byte> want(bytes);
        for (uint32_t i = 0; i < n; ++i) {
          FillRandom(want.data(), bytes, bytes * 17 + i);
          const std::byte* got = Ptr(**dram, SlotId{slots + (i * 5) % n});
          ASSERT_EQ(std::memcmp(got, want.data(), bytes), 0)
              << HostCopyPathName(path) << ", pages " << HugePagesName(pages) << ", " << bytes << " B block " << i;
          for (uint64_t b = bytes; b < slot_bytes; ++b) ASSERT_EQ(got[b], std::byte{0xA5}) << "wrote past the block";
        }
      }
    }
  }
}

TEST(GpuMoverCpuCopyTest, AHostCopyPathThisCpuLacksIsRefusedAtCreate) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  HostCopyPath missing = HostCopyPath::kAuto;
  for (HostCopyPath p : {HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
    if (!HostCopyPathSupported(p)) missing = p;
  }
  if (missing == HostCopyPath::kAuto) GTEST_SKIP() << "this CPU has every streaming path";
  auto dram = PinnedDram(4096, 8);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = 4096, .slot_count = 8});
  ASSERT_TRUE(hbm.ok());
  GpuMoverOptions o;
  o.cpu_copy = missing;
  auto down = GpuMover::Create(hbm->get(), dram.get(), o);
  ASSERT_FALSE(down.ok());
  EXPECT_EQ(down.status().code(), StatusCode::kInvalidArgument);
}

TEST(GpuTierManagerTest, OnboardAndOffloadThroughTheGpuTierAreBitExact) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  KvGeometry g{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};
  const uint64_t block = g.block_bytes();
  TierSet set;
  auto dram = PinnedDram(block, 256);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = block, .slot_count = 64});
  ASSERT_TRUE(hbm.ok());
  auto up = GpuMover::Create(dram.get(), hbm->get(), {});
  auto down = GpuMover::Create(hbm->get(), dram.get(), {});
  ASSERT_TRUE(up.ok() && down.ok());
  Tier* dram_ptr = dram.get();
  set.tiers[TierIndex(TierKind::kDram)] = std::move(dram);
  set.tiers[TierIndex(TierKind::kHbm)] = std::move(hbm).value();
  set.movers.push_back(std::move(up).value());
  set.movers.push_back(std::move(down).value());
  auto tm = TierManager::Create({.geometry = g}, std::move(set));
  ASSERT_TRUE(tm.ok()) << tm.status().ToString();

  // Write blocks into DRAM directly, commit, onboard them to HBM, evict them from DRAM's
  // view by reading back through a fresh D2H copy: bytes must survive the round trip.
  std::vector<BlockKey> keys(32);
  std::mt19937_64 rng(3);
  for (auto& k : keys) {
    for (auto& b : k.chain.bytes) b = static_cast<uint8_t>(rng());
  }
  auto pins = (*tm)->Allocate(keys, TierKind::kDram);
  ASSERT_TRUE(pins.ok()) << pins.status().ToString();
  for (size_t i = 0; i < keys.size(); ++i) {
    auto loc = (*tm)->Locate(*pins, i, TierKind::kDram);
    ASSERT_TRUE(loc.ok());
    FillRandom(std::get<MemoryAddress>(*loc).ptr, block, 77 + i);
  }
  ASSERT_TRUE((*tm)->Commit(*pins, Fence()).ok());
  ASSERT_TRUE((*tm)->Onboard(*pins, TierKind::kHbm).Wait().ok());
  std::vector<std::byte*> table;
  ASSERT_TRUE((*tm)->BlockTable(*pins, TierKind::kHbm, &table).ok());
  // Read every HBM block back with cudaMemcpy and compare with what was written.
  std::vector<std::byte> got(block), want(block);
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_EQ(cudaMemcpy(got.data(), table[i], block, cudaMemcpyDeviceToHost), cudaSuccess);
    FillRandom(want.data(), block, 77 + i);
    ASSERT_EQ(std::memcmp(got.data(), want.data(), block), 0) << "block " << i;
  }
  ASSERT_TRUE((*tm)->Release(*pins).ok());
  (void)dram_ptr;
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

TEST(GpuRegistryTest, AutoPicksTheGpuTierAndSaysSo) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  TierConfig config;
  config.geometry = KvGeometry{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};
  config.hbm_bytes = 16ull << 20;
  config.dram_bytes = 32ull << 20;
  TierSetInfo info;
  auto set = BuildTiers(config, &info);
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_TRUE(info.hbm_is_gpu);
  EXPECT_EQ(info.hbm.rfind("gpu-hbm", 0), 0u) << info.hbm;
  EXPECT_TRUE(info.dram_pinned);
  EXPECT_EQ(set->tiers[TierIndex(TierKind::kHbm)]->name(), "gpu-hbm");
  EXPECT_EQ(set->movers.size(), 2u);
}

}  // namespace
}  // namespace kvtier
