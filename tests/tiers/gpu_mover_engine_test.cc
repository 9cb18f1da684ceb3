// The GPU movers' copy-engine runs (GpuMoverOptions::engine_run_bytes) on a real device:
// batches whose DRAM slots form runs of adjacent slots, mixed with scattered blocks, uniform
// and ragged (blocks split into segments at random 16-byte boundaries, so a run spans
// several segments and ragged chunks), a staging ring smaller than a batch (every piece
// reuses a buffer), both D2H modes for the scattered rest; poisoned destinations on both
// sides and an oracle of which bytes go by the engines. Every case skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>

#include "gpu_hbm_tier.h"
#include "gpu_mover.h"
#include "gpu_mover_testing.h"

namespace kvtier {
namespace {

using gpu_testing::FillRandom;
using gpu_testing::HaveDevice;
using gpu_testing::PinnedDram;
using gpu_testing::Ptr;
using gpu_testing::RoundTripThroughHbm;

// `n` DRAM slots out of [base, base + 2n): runs of 1..max_run adjacent slots at random,
// non-overlapping places, in random order.
std::vector<uint32_t> RunsOfSlots(uint32_t n, uint32_t base, uint32_t max_run, std::mt19937_64& rng) {
  std::vector<uint32_t> out;
  std::vector<bool> used(2 * n, false);
  while (out.size() < n) {
    const uint32_t len = std::min<uint32_t>(1 + rng() % max_run, n - static_cast<uint32_t>(out.size()));
    const uint32_t start = rng() % (2 * n - len + 1);
    bool free = true;
    for (uint32_t i = start; i < start + len; ++i) free &= !used[i];
    if (!free) continue;
    for (uint32_t i = start; i < start + len; ++i) {
      used[i] = true;
      out.push_back(base + i);
    }
  }
  return out;
}

// Bytes of the batch in runs of adjacent DRAM addresses of at least `threshold` bytes: the
// mover's engine share, computed independently.
uint64_t EngineBytes(const MoveBatch& b, const Tier& dram, bool dram_is_source, uint64_t threshold) {
  uint64_t total = 0, run = 0;
  const std::byte* end = nullptr;
  for (const CopySegment& c : b.segments) {
    const std::byte* at = dram_is_source ? Ptr(dram, c.src) + c.src_offset : Ptr(dram, c.dst) + c.dst_offset;
    if (at != end) {
      total += run >= threshold ? run : 0;
      run = 0;
    }
    run += c.bytes;
    end = at + c.bytes;
  }
  return total + (run >= threshold ? run : 0);
}

class GpuMoverEngineTest : public ::testing::TestWithParam<D2hMode> {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
  static GpuMoverOptions Options() {
    GpuMoverOptions o;
    o.d2h_mode = GetParam();
    o.chunk_bytes = 4096;
    o.engine_run_bytes = 64 << 10;
    o.engine_piece_bytes = 1 << 20;  // batches of several MiB: many pieces through 2 buffers
    o.engine_pieces = 2;
    return o;
  }
};

// DRAM sources in runs (some shorter than the threshold) -> random HBM slots -> DRAM
// destinations in other runs; uniform blocks, then ragged segments.
TEST_P(GpuMoverEngineTest, RunsAndScatteredBlocksRoundTripBitExact) {
  const uint64_t slot = 16384;
  const uint32_t n = 1200;  // ~19 MiB per batch
  auto dram = PinnedDram(slot, 4 * n);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = slot, .slot_count = n});
  ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
  const GpuMoverOptions o = Options();
  auto up = GpuMover::Create(dram.get(), hbm->get(), o);
  auto down = GpuMover::Create(hbm->get(), dram.get(), o);
  ASSERT_TRUE(up.ok() && down.ok()) << up.status().ToString() << down.status().ToString();
  std::byte* hbm_base = Ptr(**hbm, SlotId{0});
  uint64_t up_engine = 0, down_engine = 0;
  for (bool ragged : {false, true}) {
    std::mt19937_64 rng(ragged ? 17 : 13);
    const std::vector<uint32_t> src = RunsOfSlots(n, 0, 24, rng);
    const std::vector<uint32_t> dst = RunsOfSlots(n, 2 * n, 40, rng);
    std::vector<uint32_t> hbm_of(n);
    std::iota(hbm_of.begin(), hbm_of.end(), 0u);
    std::shuffle(hbm_of.begin(), hbm_of.end(), rng);
    MoveBatch h2d, d2h;
    std::memset(Ptr(*dram, SlotId{2 * n}), 0xA5, 2 * uint64_t{n} * slot);  // poison every destination candidate
    for (uint32_t i = 0; i < n; ++i) {
      FillRandom(Ptr(*dram, SlotId{src[i]}), slot, 900 * ragged + i);
      // Ragged: the slot in 1..3 segments at random 16-byte boundaries (adjacent to each other).
      std::vector<uint64_t> cuts{0, slot};
      if (ragged) {
        for (uint64_t k = rng() % 3; k > 0; --k) cuts.push_back(16 * (1 + rng() % (slot / 16 - 1)));
        std::sort(cuts.begin(), cuts.end());
        cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
      }
      for (size_t k = 0; k + 1 < cuts.size(); ++k) {
        const uint64_t off = cuts[k], bytes = cuts[k + 1] - cuts[k];
        h2d.segments.push_back({SlotId{src[i]}, SlotId{hbm_of[i]}, off, off, bytes});
        d2h.segments.push_back({SlotId{hbm_of[i]}, SlotId{dst[i]}, off, off, bytes});
      }
    }
    up_engine += EngineBytes(h2d, *dram, true, o.engine_run_bytes);
    down_engine += EngineBytes(d2h, *dram, false, o.engine_run_bytes);
    ASSERT_GT(up_engine, 0u);
    ASSERT_LT(up_engine, 2 * uint64_t{n} * slot) << "the batch must also have scattered blocks";
    std::vector<std::byte> device;
    RoundTripThroughHbm(**up, **down, std::move(h2d), std::move(d2h), hbm_base, uint64_t{n} * slot, &device);
    if (HasFatalFailure()) return;
    std::vector<std::byte> want(slot);
    for (uint32_t i = 0; i < n; ++i) {
      FillRandom(want.data(), slot, 900 * ragged + i);
      ASSERT_EQ(std::memcmp(device.data() + uint64_t{hbm_of[i]} * slot, want.data(), slot), 0)
          << "ragged " << ragged << ", HBM block " << i;
      ASSERT_EQ(std::memcmp(Ptr(*dram, SlotId{dst[i]}), want.data(), slot), 0) << "ragged " << ragged << ", DRAM block " << i;
    }
    // Nothing written outside the destination slots (the unused half of the range).
    std::vector<bool> is_dst(4 * n, false);
    for (uint32_t d : dst) is_dst[d] = true;
    for (uint32_t s = 2 * n; s < 4 * n; ++s) {
      if (is_dst[s]) continue;
      const std::byte* p = Ptr(*dram, SlotId{s});
      ASSERT_TRUE(std::all_of(p, p + slot, [](std::byte b) { return b == std::byte{0xA5}; }))
          << "slot " << s << " is no destination and was written";
    }
  }
  EXPECT_EQ((*up)->stats().engine_bytes, up_engine);
  EXPECT_EQ((*down)->stats().engine_bytes, down_engine);
  EXPECT_EQ((*up)->stats().errors + (*down)->stats().errors, 0u);
}

// With engine_run_bytes = 0 the same runs go by the kernels: nothing by the engines.
TEST_P(GpuMoverEngineTest, RunsGoByTheKernelsWhenTheEnginesAreOff) {
  const uint64_t slot = 65536;
  const uint32_t n = 64;
  auto dram = PinnedDram(slot, 2 * n);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = slot, .slot_count = n});
  ASSERT_TRUE(hbm.ok());
  GpuMoverOptions o = Options();
  o.engine_run_bytes = 0;
  auto up = GpuMover::Create(dram.get(), hbm->get(), o);
  auto down = GpuMover::Create(hbm->get(), dram.get(), o);
  ASSERT_TRUE(up.ok() && down.ok());
  MoveBatch h2d, d2h;
  for (uint32_t i = 0; i < n; ++i) {
    FillRandom(Ptr(*dram, SlotId{i}), slot, 77 + i);
    std::memset(Ptr(*dram, SlotId{n + i}), 0, slot);
    h2d.segments.push_back({SlotId{i}, SlotId{n - 1 - i}, 0, 0, slot});
    d2h.segments.push_back({SlotId{n - 1 - i}, SlotId{n + i}, 0, 0, slot});
  }
  d2h.wait_for.push_back((*up)->Submit(std::move(h2d)));
  ASSERT_TRUE((*down)->Submit(std::move(d2h)).Wait().ok());
  for (uint32_t i = 0; i < n; ++i) {
    ASSERT_EQ(std::memcmp(Ptr(*dram, SlotId{n + i}), Ptr(*dram, SlotId{i}), slot), 0) << i;
  }
  EXPECT_EQ((*up)->stats().engine_bytes, 0u);
  EXPECT_EQ((*down)->stats().engine_bytes, 0u);
}

// Many batches in flight both ways, each H2D reading runs and each D2H writing one run, the
// 2-buffer ring reused by every batch; HBM quarters reused only behind their consumers.
TEST_P(GpuMoverEngineTest, ForcedOverlapOfRunBatchesHasNoMismatch) {
  const uint64_t bytes = 4096;
  const uint32_t per_batch = 1024, hbm_slots = 4 * per_batch;
  auto dram = PinnedDram(bytes, 2 * hbm_slots);
  ASSERT_NE(dram, nullptr);
  auto hbm = GpuHbmTier::Create({.device = 0, .slot_bytes = bytes, .slot_count = hbm_slots});
  ASSERT_TRUE(hbm.ok());
  auto up = GpuMover::Create(dram.get(), hbm->get(), Options());
  auto down = GpuMover::Create(hbm->get(), dram.get(), Options());
  ASSERT_TRUE(up.ok() && down.ok());
  for (uint32_t i = 0; i < hbm_slots; ++i) FillRandom(Ptr(*dram, SlotId{i}), bytes, 3000 + i);
  std::mt19937_64 rng(5);
  std::vector<Fence> consumer(4);
  std::vector<std::pair<Fence, std::vector<std::pair<uint32_t, uint32_t>>>> checks;
  uint64_t mismatches = 0;
  auto check = [&](size_t c) {
    ASSERT_TRUE(checks[c].first.Wait().ok());
    for (auto [s, d] : checks[c].second) {
      mismatches += std::memcmp(Ptr(*dram, SlotId{s}), Ptr(*dram, SlotId{d}), bytes) != 0;
    }
  };
  for (uint32_t round = 0; round < 200; ++round) {
    const uint32_t quarter = round % 4;
    MoveBatch h2d, d2h;
    std::vector<std::pair<uint32_t, uint32_t>> pairs;
    h2d.wait_for.push_back(consumer[quarter]);
    for (uint32_t i = 0; i < per_batch;) {
      const uint32_t len = std::min<uint32_t>(1 + rng() % 48, per_batch - i);  // up to 192 KiB runs
      const uint32_t start = rng() % (hbm_slots - len);
      for (uint32_t k = 0; k < len; ++k, ++i) {
        const uint32_t hbm_slot = quarter * per_batch + i, dst = hbm_slots + quarter * per_batch + i;
        h2d.segments.push_back({SlotId{start + k}, SlotId{hbm_slot}, 0, 0, bytes});
        d2h.segments.push_back({SlotId{hbm_slot}, SlotId{dst}, 0, 0, bytes});
        pairs.emplace_back(start + k, dst);
      }
    }
    d2h.wait_for.push_back((*up)->Submit(std::move(h2d)));
    if (checks.size() >= 4) check(checks.size() - 4);
    Fence f = (*down)->Submit(std::move(d2h));
    consumer[quarter] = f;
    checks.emplace_back(f, std::move(pairs));
  }
  for (size_t c = checks.size() - 4; c < checks.size(); ++c) check(c);
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT((*up)->stats().engine_bytes, 0u);
  EXPECT_EQ((*down)->stats().engine_bytes, (*down)->stats().bytes) << "every D2H batch is one run";
}

INSTANTIATE_TEST_SUITE_P(D2hModes, GpuMoverEngineTest, ::testing::Values(D2hMode::kKernel, D2hMode::kCpuAssisted),
                         [](const auto& p) { return std::string(D2hModeName(p.param)); });

TEST(GpuMoverEngineOptionsTest, EngineOptionsAreValidated) {
  GpuMoverOptions o;
  EXPECT_EQ(o.engine_run_bytes, uint64_t{128} << 10);
  EXPECT_TRUE(o.Validate().ok());
  o.engine_run_bytes = 4096;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.engine_run_bytes = 0;  // off: the piece options are not looked at
  o.engine_pieces = 1;
  EXPECT_TRUE(o.Validate().ok());
  o.engine_run_bytes = 64 << 10;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.engine_pieces = 2;
  o.engine_piece_bytes = 512 << 10;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.engine_piece_bytes = 1 << 20;
  o.chunk_bytes = 2 << 20;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument) << "a chunk must fit in a piece";
  o.chunk_bytes = 64 << 10;
  EXPECT_TRUE(o.Validate().ok());
  o.engine_streams = 3;
  EXPECT_EQ(o.Validate().code(), StatusCode::kInvalidArgument);
  o.engine_streams = 1;
  EXPECT_TRUE(o.Validate().ok());
}

}  // namespace
}  // namespace kvtier
