// The GPU tier and movers on a real device: the tier conformance suite, bit-exact round trips
// DRAM -> HBM -> DRAM through the movers (kernel and CPU-assisted D2H), producer/consumer
// fences, a forced-overlap stress of 10^6 block round trips, every launch shape of the kernel
// paths (one launch, inline / side-stream descriptor uploads, ramped pieces), and the
// TierManager end to end on GpuHbmTier. Every case skips without a CUDA device.
#include <gtest/gtest.h>

#include <atomic>
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <thread>

#include "cuda_host_pinner.h"
#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#include "gpu_mover_testing.h"
#include "host_tier.h"
#include "kvtier/tier_manager.h"
#include "registry.h"
#include "tier_conformance.h"

namespace kvtier {
namespace {

using gpu_testing::HaveDevice;

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

using gpu_testing::FillRandom;
using gpu_testing::PinnedDram;
using gpu_testing::Ptr;

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
// (producer fence). `total` blocks of 4 KiB make the round trip; every byte is checked.
// `dram` has 2 * 4 * per_batch slots, the HBM tier behind the movers 4 * per_batch.
void ExpectForcedOverlapRoundTripsExact(HostTier& dram, GpuMover& up_mover, GpuMover& down_mover, uint32_t per_batch,
                                        uint64_t total) {
  const uint64_t bytes = 4096;
  const uint32_t hbm_slots = 4 * per_batch;
  const uint32_t src_slots = hbm_slots, dst_base = hbm_slots;  // dram: [0, n) sources, [n, 2n) destinations
  for (uint32_t i = 0; i < src_slots; ++i) FillRandom(Ptr(dram, SlotId{i}), bytes, 1000 + i);
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
    Fence up = up_mover.Submit(std::move(h2d));
    d2h.wait_for.push_back(up);
    // The destination quarter of DRAM is checked before it is overwritten again.
    if (checks.size() >= 4) {
      auto& [f, ps] = checks[checks.size() - 4];
      ASSERT_TRUE(f.Wait().ok());
      for (auto [s, d] : ps) mismatches += std::memcmp(Ptr(dram, SlotId{s}), Ptr(dram, SlotId{d}), bytes) != 0;
    }
    Fence down = down_mover.Submit(std::move(d2h));
    consumer[quarter] = down;
    checks.emplace_back(down, std::move(pairs));
    done += per_batch;
  }
  for (size_t c = checks.size() >= 4 ? checks.size() - 4 : 0; c < checks.size(); ++c) {
    ASSERT_TRUE(checks[c].first.Wait().ok());
    for (auto [s, d] : checks[c].second) mismatches += std::memcmp(Ptr(dram, SlotId{s}), Ptr(dram, SlotId{d}), bytes) != 0;
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GE(up_mover.stats().segments, total);
  EXPECT_GE(down_mover.stats().segments, total);
}

TEST_P(GpuMoverTest, MillionBlockRoundTripsUnderForcedOverlapHaveNoMismatch) {
  const uint32_t per_batch = 8192;
  Build(4096, 4 * per_batch);
  if (HasFatalFailure()) return;
  ExpectForcedOverlapRoundTripsExact(*dram_, *up_, *down_, per_batch, 1'000'000);
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

// The kernel paths' launch shapes: one launch, fixed pieces with descriptors uploaded on the
// copy stream (inline) or on the upload stream (side), and pieces ramped from 64 KiB. Many
// pieces per batch (1 MiB launches over ~12-24 MiB batches), uniform and ragged batches
// (ragged segments split into 4 KiB chunks), poisoned destinations on both sides; each with
// the default copy kernels (the bulk gather, the loads scatter), and the loads or the bulk
// kernel both ways (1008-byte chunks in 2 stages: blocks cut at odd places).
struct LaunchShape {
  const char* name;
  uint64_t launch_bytes;
  uint64_t first_launch_bytes;
  DescriptorUpload upload;
  uint32_t ctas_per_sm = 0;  // 0 = the movers' default (4 per SM for H2D, 2 for D2H)
  CopyKernel kernel = CopyKernel::kAuto;
  uint32_t bulk_chunk = 16 << 10;
  uint32_t bulk_stages = 4;
};

class GpuMoverLaunchTest : public ::testing::TestWithParam<LaunchShape> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
  GpuMoverOptions Options() const {
    GpuMoverOptions o;
    o.d2h_mode = D2hMode::kKernel;
    o.chunk_bytes = 4096;
    o.launch_bytes = GetParam().launch_bytes;
    o.first_launch_bytes = GetParam().first_launch_bytes;
    o.descriptor_upload = GetParam().upload;
    o.ctas_per_sm = GetParam().ctas_per_sm;
    o.copy_kernel = GetParam().kernel;
    o.bulk_chunk_bytes = GetParam().bulk_chunk;
    o.bulk_stages = GetParam().bulk_stages;
    o.engine_run_bytes = 0;  // the kernel launch shapes only (gpu_mover_engine_test: the engines)
    return o;
  }
};

TEST_P(GpuMoverLaunchTest, ManyPieceRoundTripsAreBitExactAndWriteNothingElse) {
  const uint64_t slot = 8192;
  const uint32_t n = 3000;
  auto dram = PinnedDram(slot, 2 * n);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = slot, .slot_count = n});
  ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
  auto up = GpuMover::Create(dram.get(), hbm->get(), Options());
  auto down = GpuMover::Create(hbm->get(), dram.get(), Options());
  ASSERT_TRUE(up.ok() && down.ok());
  // kAuto: the bulk gather up, the loads scatter down.
  const CopyKernel asked = GetParam().kernel;
  EXPECT_EQ((*up)->copy_kernel(), asked == CopyKernel::kAuto ? CopyKernel::kBulk : asked);
  EXPECT_EQ((*down)->copy_kernel(), asked == CopyKernel::kAuto ? CopyKernel::kLoads : asked);
  std::byte* hbm_base = Ptr(**hbm, SlotId{0});
  for (bool ragged : {false, true}) {
    std::mt19937_64 rng(ragged ? 7 : 3);
    std::vector<uint32_t> hbm_of(n), dst_of(n);
    std::iota(hbm_of.begin(), hbm_of.end(), 0u);
    std::iota(dst_of.begin(), dst_of.end(), n);
    std::shuffle(hbm_of.begin(), hbm_of.end(), rng);
    std::shuffle(dst_of.begin(), dst_of.end(), rng);
    std::vector<uint64_t> size(n);
    MoveBatch h2d, d2h;
    for (uint32_t i = 0; i < n; ++i) {
      size[i] = ragged ? 16 * (1 + rng() % (slot / 16)) : 4096;
      FillRandom(Ptr(*dram, SlotId{i}), slot, 5000 * ragged + i);
      std::memset(Ptr(*dram, SlotId{dst_of[i]}), 0xA5, slot);
      h2d.segments.push_back({SlotId{i}, SlotId{hbm_of[i]}, 0, 0, size[i]});
      d2h.segments.push_back({SlotId{hbm_of[i]}, SlotId{dst_of[i]}, 0, 0, size[i]});
    }
    std::vector<std::byte> device;
    gpu_testing::RoundTripThroughHbm(**up, **down, std::move(h2d), std::move(d2h), hbm_base, uint64_t{n} * slot,
                                     &device);
    if (HasFatalFailure()) return;
    std::vector<std::byte> want(slot);
    for (uint32_t i = 0; i < n; ++i) {
      FillRandom(want.data(), slot, 5000 * ragged + i);
      const std::byte* on_device = device.data() + uint64_t{hbm_of[i]} * slot;
      const std::byte* back = Ptr(*dram, SlotId{dst_of[i]});
      ASSERT_EQ(std::memcmp(on_device, want.data(), size[i]), 0) << "ragged " << ragged << ", HBM block " << i;
      ASSERT_EQ(std::memcmp(back, want.data(), size[i]), 0) << "ragged " << ragged << ", DRAM block " << i;
      for (uint64_t b = size[i]; b < slot; ++b) {
        ASSERT_EQ(on_device[b], std::byte{0x5A}) << "HBM written past block " << i;
        ASSERT_EQ(back[b], std::byte{0xA5}) << "DRAM written past block " << i;
      }
    }
  }
  EXPECT_EQ((*up)->stats().errors, 0u);
  EXPECT_EQ((*down)->stats().errors, 0u);
}

// Batches of many small pieces in flight on every lane, both directions at once.
TEST_P(GpuMoverLaunchTest, ForcedOverlapRoundTripsHaveNoMismatch) {
  const uint32_t per_batch = 2048;  // 8 MiB batches: up to 12 pieces each
  auto dram = PinnedDram(4096, 8 * per_batch);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = 4096, .slot_count = 4 * per_batch});
  ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
  auto up = GpuMover::Create(dram.get(), hbm->get(), Options());
  auto down = GpuMover::Create(hbm->get(), dram.get(), Options());
  ASSERT_TRUE(up.ok() && down.ok());
  ExpectForcedOverlapRoundTripsExact(*dram, **up, **down, per_batch, 200'000);
}

TEST(GpuMoverOptionsTest, LaunchShapeOptionsAreValidated) {
  GpuMoverOptions o;
  EXPECT_TRUE(o.Validate().ok());
  EXPECT_EQ(o.descriptor_upload, DescriptorUpload::kSideStream);
  o.first_launch_bytes = 4096;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.first_launch_bytes = 0;
  EXPECT_TRUE(o.Validate().ok());
  EXPECT_EQ(*ParseDescriptorUpload("inline"), DescriptorUpload::kInline);
  EXPECT_EQ(*ParseDescriptorUpload(DescriptorUploadName(DescriptorUpload::kSideStream)), DescriptorUpload::kSideStream);
  EXPECT_FALSE(ParseDescriptorUpload("both").ok());
  EXPECT_EQ(o.ctas_per_sm, 0u);  // by direction
  o.ctas_per_sm = 8;
  EXPECT_TRUE(o.Validate().ok());
  o.ctas_per_sm = 9;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.ctas_per_sm = 0;
  EXPECT_EQ(o.copy_kernel, CopyKernel::kAuto);
  EXPECT_EQ(*ParseCopyKernel("bulk"), CopyKernel::kBulk);
  EXPECT_EQ(*ParseCopyKernel(CopyKernelName(CopyKernel::kLoads)), CopyKernel::kLoads);
  EXPECT_FALSE(ParseCopyKernel("tma").ok());
  for (uint32_t chunk : {0u, 24u, (64u << 10) + 16}) {
    o.bulk_chunk_bytes = chunk;
    EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument) << chunk;
  }
  o.bulk_chunk_bytes = 64 << 10;
  EXPECT_TRUE(o.Validate().ok());
  for (uint32_t stages : {1u, 9u}) {
    o.bulk_stages = stages;
    EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument) << stages;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GpuMoverLaunchTest,
    ::testing::Values(LaunchShape{"one_launch", 0, 0, DescriptorUpload::kSideStream},
                      LaunchShape{"inline_pieces", 1 << 20, 0, DescriptorUpload::kInline},
                      LaunchShape{"side_pieces", 1 << 20, 0, DescriptorUpload::kSideStream},
                      LaunchShape{"side_ramped", 1 << 20, 64 << 10, DescriptorUpload::kSideStream},
                      LaunchShape{"inline_ramped", 1 << 20, 64 << 10, DescriptorUpload::kInline},
                      LaunchShape{"defaults", GpuMoverOptions{}.launch_bytes, GpuMoverOptions{}.first_launch_bytes,
                                  GpuMoverOptions{}.descriptor_upload},
                      LaunchShape{"one_per_sm", 1 << 20, 64 << 10, DescriptorUpload::kSideStream, 1,
                                  CopyKernel::kLoads},
                      LaunchShape{"four_per_sm", GpuMoverOptions{}.launch_bytes, GpuMoverOptions{}.first_launch_bytes,
                                  GpuMoverOptions{}.descriptor_upload, 4, CopyKernel::kLoads},
                      LaunchShape{"loads", GpuMoverOptions{}.launch_bytes, GpuMoverOptions{}.first_launch_bytes,
                                  GpuMoverOptions{}.descriptor_upload, 0, CopyKernel::kLoads},
                      LaunchShape{"bulk", GpuMoverOptions{}.launch_bytes, GpuMoverOptions{}.first_launch_bytes,
                                  GpuMoverOptions{}.descriptor_upload, 0, CopyKernel::kBulk},
                      LaunchShape{"bulk_odd_chunks", 1 << 20, 64 << 10, DescriptorUpload::kSideStream, 0,
                                  CopyKernel::kBulk, 1008, 2}),
    [](const auto& p) { return std::string(p.param.name); });

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
