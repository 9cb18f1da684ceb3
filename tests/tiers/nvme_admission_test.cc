// Admission into the NVMe tier (AdmissionOptions): only blocks reused at least N times, and
// a drive-write budget per day; refused blocks are dropped instead and counted.
#include <gtest/gtest.h>

#include <random>
#include <thread>
#include <vector>

#include "kvtier/clock.h"
#include "kvtier/tier_manager.h"
#include "registry.h"
#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

constexpr KvGeometry kGeometry{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};

std::unique_ptr<TierManager> Manager(const std::string& dir, AdmissionOptions admission, Clock* clock = nullptr) {
  TierConfig c;
  c.geometry = kGeometry;
  c.dram_bytes = 1 << 20;  // 128 blocks of 8 KiB
  c.hbm = HbmBackend::kNone;
  c.allow_unpinned_dram = true;
  c.nvme_dir = dir;
  c.nvme_bytes = 4 << 20;
  c.logger = QuietNvmeLogger::Get();
  auto set = BuildTiers(c);
  EXPECT_TRUE(set.ok()) << set.status().ToString();
  if (!set.ok()) return nullptr;
  TierManagerOptions o;
  o.geometry = kGeometry;
  o.logger = QuietNvmeLogger::Get();
  o.admission = admission;
  o.clock = clock;
  auto tm = TierManager::Create(o, std::move(set).value());
  EXPECT_TRUE(tm.ok()) << tm.status().ToString();
  return tm.ok() ? std::move(tm).value() : nullptr;
}

// Allocates, fills and commits `keys` in DRAM (waiting for demotion when it is full).
void Write(TierManager& tm, const std::vector<BlockKey>& keys) {
  for (size_t i = 0; i < keys.size(); i += 8) {  // 8 < the room above the high watermark
    std::span<const BlockKey> chunk(keys.data() + i, std::min<size_t>(8, keys.size() - i));
    Result<PinSet> pins = tm.Allocate(chunk, TierKind::kDram);
    for (int tries = 0; !pins.ok() && pins.status().code() == StatusCode::kExhausted && tries < 200; ++tries) {
      tm.DemoteNow();
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      pins = tm.Allocate(chunk, TierKind::kDram);
    }
    ASSERT_TRUE(pins.ok()) << pins.status().ToString();
    ASSERT_TRUE(tm.Commit(*pins, Fence()).ok());
    ASSERT_TRUE(tm.Release(*pins).ok());
  }
  tm.DemoteNow();
}

std::vector<BlockKey> Keys(uint64_t seed, size_t n) {
  std::vector<BlockKey> out;
  for (size_t i = 0; i < n; ++i) out.push_back(KeyOf(seed + i));
  return out;
}

size_t Matching(TierManager& tm, const std::vector<BlockKey>& keys) {
  size_t n = 0;
  for (const BlockKey& k : keys) n += tm.MatchKeys({&k, 1}).size();
  return n;
}

TEST(NvmeAdmission, OnlyBlocksReusedEnoughTimesGoToNvme) {
  TempDir dir;
  auto tm = Manager(dir.str(), {.min_uses = 2, .write_budget_bytes_per_day = 0});
  ASSERT_NE(tm, nullptr);
  const uint64_t seed = std::random_device{}();
  const auto hot = Keys(seed, 48), cold = Keys(seed + 1000, 300);
  Write(*tm, hot);
  for (int use = 0; use < 2; ++use) ASSERT_EQ(Matching(*tm, hot), hot.size());
  Write(*tm, cold);
  for (int i = 0; i < 3; ++i) tm->DemoteNow();
  const TierStats nvme = tm->Stats().tiers[TierIndex(TierKind::kNvme)];
  EXPECT_GT(nvme.refused_reuse, 0u) << tm->Stats().ToText();
  EXPECT_LE(nvme.admitted_bytes, hot.size() * kGeometry.block_bytes()) << "a block used fewer than 2 times was admitted";
  EXPECT_EQ(Matching(*tm, hot), hot.size()) << "a reused block was dropped";
  EXPECT_LT(Matching(*tm, cold), cold.size()) << "refused blocks are dropped, not kept";
  EXPECT_NE(tm->Stats().ToText().find("nvme admission"), std::string::npos);
}

TEST(NvmeAdmission, TheWriteBudgetCapsBytesPerDay) {
  TempDir dir;
  ManualClock clock;
  const uint64_t budget = 20 * kGeometry.block_bytes();
  auto tm = Manager(dir.str(), {.min_uses = 0, .write_budget_bytes_per_day = budget}, &clock);
  ASSERT_NE(tm, nullptr);
  const uint64_t seed = std::random_device{}();
  Write(*tm, Keys(seed, 300));
  TierStats nvme = tm->Stats().tiers[TierIndex(TierKind::kNvme)];
  EXPECT_EQ(nvme.admitted_bytes, budget);
  EXPECT_GT(nvme.refused_budget, 0u);
  EXPECT_EQ(nvme.refused_reuse, 0u);
  clock.Advance(86'400'000'000'000ull);  // a day later the budget is back
  Write(*tm, Keys(seed + 1000, 200));
  nvme = tm->Stats().tiers[TierIndex(TierKind::kNvme)];
  EXPECT_EQ(nvme.admitted_bytes, 2 * budget);
}

}  // namespace
}  // namespace kvtier::testing
