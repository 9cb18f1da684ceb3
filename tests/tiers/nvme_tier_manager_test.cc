// The NVMe tier inside a TierManager built by the registry: blocks overflow DRAM, are
// demoted to NVMe through the io_uring mover, and onboard back with their exact bytes.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kvtier/tier_manager.h"
#include "registry.h"
#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

TEST(NvmeTierManager, BlocksDemotedToNvmeOnboardWithTheirBytes) {
  TempDir dir;
  TierConfig c;
  c.geometry = KvGeometry{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};
  c.dram_bytes = 1 << 20;  // 128 blocks of 8 KiB
  c.hbm = HbmBackend::kNone;
  c.allow_unpinned_dram = true;
  c.nvme_dir = dir.str();
  c.nvme_bytes = 8 << 20;
  c.logger = QuietNvmeLogger::Get();
  TierSetInfo info;
  auto set = BuildTiers(c, &info);
  ASSERT_TRUE(set.ok()) << set.status().ToString();
  EXPECT_NE(info.nvme, "none");
  TierManagerOptions o;
  o.geometry = c.geometry;
  o.logger = QuietNvmeLogger::Get();
  auto tm = TierManager::Create(o, std::move(set).value());
  ASSERT_TRUE(tm.ok()) << tm.status().ToString();
  const uint64_t block = c.geometry.block_bytes();
  const uint64_t seed = std::random_device{}();
  constexpr size_t kBlocks = 400;  // > 3x DRAM
  std::vector<BlockKey> keys;
  for (size_t i = 0; i < kBlocks; ++i) keys.push_back(KeyOf(seed + i));
  for (size_t i = 0; i < kBlocks; i += 16) {
    std::span<const BlockKey> chunk(keys.data() + i, 16);
    Result<PinSet> pins = (*tm)->Allocate(chunk, TierKind::kDram);
    for (int tries = 0; !pins.ok() && pins.status().code() == StatusCode::kExhausted && tries < 200; ++tries) {
      (*tm)->DemoteNow();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // demotion copies are asynchronous
      pins = (*tm)->Allocate(chunk, TierKind::kDram);
    }
    ASSERT_TRUE(pins.ok()) << pins.status().ToString() << "\n" << (*tm)->Stats().ToText();
    std::vector<std::byte*> ptrs;
    ASSERT_TRUE((*tm)->BlockTable(*pins, TierKind::kDram, &ptrs).ok());
    for (size_t j = 0; j < ptrs.size(); ++j) FillPayload({ptrs[j], block}, seed + i + j, 7);
    ASSERT_TRUE((*tm)->Commit(*pins, Fence()).ok());
    ASSERT_TRUE((*tm)->Release(*pins).ok());
  }
  (*tm)->DemoteNow();
  const RuntimeStats st = (*tm)->Stats();
  (void)st;
  // Every block is still somewhere; onboard in chunks that fit DRAM and compare bytes.
  size_t on_nvme_before = 0, checked = 0;
  for (size_t i = 0; i < kBlocks; i += 16) {
    std::span<const BlockKey> chunk(keys.data() + i, 16);
    PinSet pins = (*tm)->MatchKeys(chunk);
    ASSERT_EQ(pins.size(), chunk.size()) << "block " << i + pins.size() << " was lost";
    for (size_t j = 0; j < pins.size(); ++j) {
      auto loc = (*tm)->Locate(pins, j, TierKind::kDram);
      if (!loc.ok()) ++on_nvme_before;
    }
    Status s = (*tm)->Onboard(pins, TierKind::kDram).Wait();
    for (int tries = 0; !s.ok() && s.code() == StatusCode::kExhausted && tries < 200; ++tries) {
      (*tm)->DemoteNow();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      s = (*tm)->Onboard(pins, TierKind::kDram).Wait();
    }
    ASSERT_TRUE(s.ok()) << s.ToString();
    std::vector<std::byte*> ptrs;
    ASSERT_TRUE((*tm)->BlockTable(pins, TierKind::kDram, &ptrs).ok());
    std::vector<std::byte> want(block);
    for (size_t j = 0; j < ptrs.size(); ++j) {
      FillPayload(want, seed + i + j, 7);
      EXPECT_EQ(std::memcmp(want.data(), ptrs[j], block), 0) << "block " << i + j;
      ++checked;
    }
    ASSERT_TRUE((*tm)->Release(pins).ok());
  }
  EXPECT_EQ(checked, kBlocks);
  EXPECT_GT(on_nvme_before, kBlocks / 2) << "blocks should have been demoted to NVMe";
}

}  // namespace
}  // namespace kvtier::testing
