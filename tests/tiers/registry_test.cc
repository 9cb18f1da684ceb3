// The registry: BuildTiers assembles the tiers and movers a TierConfig asks for.
#include "registry.h"

#include <gtest/gtest.h>

#include <cstring>
#include <ostream>
#include <random>
#include <string>

#include "emulated_hbm_tier.h"
#include "host_tier.h"

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

namespace {

class QuietLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
};

bool Contains(std::string_view haystack, std::string_view needle) {
  return haystack.find(needle) != std::string_view::npos;
}
bool StartsWith(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

// 2 layers, 2 KV heads, d=64, 16-token blocks, bf16: 4 KiB slices, 8 KiB blocks.
KvGeometry SmallGeometry() {
  return KvGeometry{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};
}

TierConfig SmallConfig(QuietLogger* logger, HbmBackend hbm) {
  TierConfig c;
  c.geometry = SmallGeometry();
  c.hbm_bytes = 1 << 20;
  c.dram_bytes = 2 << 20;
  c.hbm = hbm;
  c.allow_unpinned_dram = true;
  c.copy_threads = 2;
  c.logger = logger;
  return c;
}

const Mover* FindMover(const TierSet& set, TierKind from, TierKind to) {
  for (const auto& m : set.movers) {
    if (m->source() == from && m->destination() == to) return m.get();
  }
  return nullptr;
}

TEST(RegistryTest, EmulatedHbmBuildsBothTiersAndAMoverEachWay) {
  QuietLogger logger;
  TierSetInfo info;
  auto built = BuildTiers(SmallConfig(&logger, HbmBackend::kEmulated), &info);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  TierSet& set = *built;
  const uint64_t block = SmallGeometry().block_bytes();
  ASSERT_EQ(block, 8192u);

  Tier* hbm = set.tiers[TierIndex(TierKind::kHbm)].get();
  Tier* dram = set.tiers[TierIndex(TierKind::kDram)].get();
  ASSERT_NE(hbm, nullptr);
  ASSERT_NE(dram, nullptr);
  EXPECT_EQ(set.tiers[TierIndex(TierKind::kNvme)], nullptr);
  EXPECT_EQ(hbm->kind(), TierKind::kHbm);
  EXPECT_EQ(hbm->name(), "emulated-hbm");
  EXPECT_EQ(hbm->caps().slot_bytes, block);
  EXPECT_EQ(hbm->caps().slot_count, 128u);
  EXPECT_EQ(dram->kind(), TierKind::kDram);
  EXPECT_EQ(dram->name(), "host-dram");
  EXPECT_EQ(dram->caps().slot_bytes, block);
  EXPECT_EQ(dram->caps().slot_count, 256u);

  ASSERT_EQ(set.movers.size(), 2u);
  EXPECT_NE(FindMover(set, TierKind::kDram, TierKind::kHbm), nullptr);
  EXPECT_NE(FindMover(set, TierKind::kHbm, TierKind::kDram), nullptr);

  EXPECT_TRUE(StartsWith(info.hbm, "emulated-hbm")) << info.hbm;
  EXPECT_TRUE(Contains(info.hbm, "128 slots")) << info.hbm;
  EXPECT_TRUE(Contains(info.hbm, "1.0 MiB")) << info.hbm;
  EXPECT_TRUE(StartsWith(info.dram, "host-dram")) << info.dram;
  EXPECT_TRUE(Contains(info.dram, "256 slots")) << info.dram;
  EXPECT_TRUE(Contains(info.dram, "2.0 MiB")) << info.dram;
  EXPECT_EQ(info.nvme, "none");
  const auto* host = dynamic_cast<const HostTier*>(dram);
  ASSERT_NE(host, nullptr);
  EXPECT_EQ(info.dram_pinned, host->info().pinned);
  EXPECT_TRUE(Contains(info.dram, info.dram_pinned ? "pinned by " + host->info().pinner : "NOT pinned")) << info.dram;
}

TEST(RegistryTest, BuiltMoversCarryABlockThereAndBack) {
  QuietLogger logger;
  auto built = BuildTiers(SmallConfig(&logger, HbmBackend::kEmulated));
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  TierSet& set = *built;
  Tier& hbm = *set.tiers[TierIndex(TierKind::kHbm)];
  Tier& dram = *set.tiers[TierIndex(TierKind::kDram)];
  Mover* up = nullptr;
  Mover* down = nullptr;
  for (auto& m : set.movers) (m->source() == TierKind::kDram ? up : down) = m.get();
  ASSERT_TRUE(up && down);
  const uint64_t block = SmallGeometry().block_bytes();

  auto d = dram.Reserve(2);
  auto h = hbm.Reserve(1);
  ASSERT_TRUE(d.ok() && h.ok());
  auto ptr = [](const Tier& t, SlotId s) { return std::get<MemoryAddress>(t.Locate(s)).ptr; };
  std::mt19937_64 rng(std::random_device{}());
  for (uint64_t i = 0; i < block; i += 8) {
    const uint64_t w = rng();
    std::memcpy(ptr(dram, (*d)[0]) + i, &w, 8);
  }
  std::memset(ptr(hbm, (*h)[0]), 0xa5, block);
  std::memset(ptr(dram, (*d)[1]), 0x5a, block);
  const CopySegment onboard{.src = (*d)[0], .dst = (*h)[0], .bytes = block};
  const CopySegment offload{.src = (*h)[0], .dst = (*d)[1], .bytes = block};
  ASSERT_TRUE(up->Submit({.segments = {onboard}, .wait_for = {}}).Wait().ok());
  ASSERT_TRUE(down->Submit({.segments = {offload}, .wait_for = {}}).Wait().ok());
  EXPECT_EQ(std::memcmp(ptr(dram, (*d)[1]), ptr(dram, (*d)[0]), block), 0);
  dram.Release(*d, Fence());
  hbm.Release(*h, Fence());
}

TEST(RegistryTest, NoHbmBuildsOnlyTheDramPool) {
  QuietLogger logger;
  TierSetInfo info;
  TierConfig config = SmallConfig(&logger, HbmBackend::kNone);
  config.hbm_bytes = 0;  // not needed without an HBM tier
  auto built = BuildTiers(config, &info);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  EXPECT_EQ(built->tiers[TierIndex(TierKind::kHbm)], nullptr);
  ASSERT_NE(built->tiers[TierIndex(TierKind::kDram)], nullptr);
  EXPECT_EQ(built->tiers[TierIndex(TierKind::kNvme)], nullptr);
  EXPECT_TRUE(built->movers.empty());
  EXPECT_EQ(info.hbm, "none");
  EXPECT_TRUE(StartsWith(info.dram, "host-dram")) << info.dram;
  EXPECT_EQ(info.nvme, "none");
}

TEST(RegistryTest, AutoBackendGivesAnHbmTierEvenWithoutAGpu) {
  QuietLogger logger;
  TierSetInfo info;
  auto built = BuildTiers(SmallConfig(&logger, HbmBackend::kAuto), &info);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  ASSERT_NE(built->tiers[TierIndex(TierKind::kHbm)], nullptr);
  EXPECT_EQ(built->movers.size(), 2u);
  EXPECT_NE(info.hbm, "none");
  if (DescribeBuild() == "cuda: not built") {
    EXPECT_EQ(built->tiers[TierIndex(TierKind::kHbm)]->name(), "emulated-hbm");
  }
}

TEST(RegistryTest, BlocksSmallerThanAPageGetPageSizedDramSlots) {
  QuietLogger logger;
  TierConfig config = SmallConfig(&logger, HbmBackend::kEmulated);
  config.geometry = KvGeometry{.layers = 1, .kv_heads = 1, .head_dim = 8, .block_tokens = 16, .dtype = DType::kBF16};
  ASSERT_EQ(config.geometry.block_bytes(), 512u);
  config.dram_bytes = 3 * 4096 + 100;
  config.hbm_bytes = 10 * 512;
  auto built = BuildTiers(config);
  ASSERT_TRUE(built.ok()) << built.status().ToString();
  const TierCaps& dram = built->tiers[TierIndex(TierKind::kDram)]->caps();
  EXPECT_EQ(dram.slot_bytes, 4096u);
  EXPECT_EQ(dram.slot_count, 3u);
  const TierCaps& hbm = built->tiers[TierIndex(TierKind::kHbm)]->caps();
  EXPECT_EQ(hbm.slot_bytes, 512u);
  EXPECT_EQ(hbm.slot_count, 10u);
}

TEST(RegistryTest, BuildWithoutAnInfoStructWorks) {
  QuietLogger logger;
  auto built = BuildTiers(SmallConfig(&logger, HbmBackend::kEmulated), nullptr);
  EXPECT_TRUE(built.ok()) << built.status().ToString();
}

TEST(TierConfigTest, DefaultsWithAValidGeometryValidate) {
  TierConfig c;
  c.geometry = KvGeometry::Llama3_8B();
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().ToString();
}

TEST(TierConfigTest, ValidateRejectsBadGeometry) {
  TierConfig c;
  c.geometry = SmallGeometry();
  c.geometry.layers = 0;
  Status s = c.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "layers")) << s.ToString();
  c.geometry = SmallGeometry();
  // 2 x 1 token x 3 dims x 1 B = 6 B slices: not a multiple of the movers' 16 B word.
  c.geometry.head_dim = 3;
  c.geometry.block_tokens = 1;
  c.geometry.dtype = DType::kFp8E4M3;
  s = c.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "multiple of 16")) << s.ToString();
  QuietLogger logger;
  TierConfig bad = SmallConfig(&logger, HbmBackend::kEmulated);
  bad.geometry.kv_heads = 0;
  EXPECT_EQ(BuildTiers(bad).status().code(), StatusCode::kInvalidArgument);
}

TEST(TierConfigTest, ValidateRejectsCapacitiesSmallerThanABlock) {
  TierConfig c;
  c.geometry = SmallGeometry();
  const uint64_t block = c.geometry.block_bytes();
  c.dram_bytes = block - 1;
  Status s = c.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "dram_bytes")) << s.ToString();
  c.dram_bytes = block;
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().ToString();

  c.hbm_bytes = block - 1;
  s = c.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(Contains(s.message(), "hbm_bytes")) << s.ToString();
  c.hbm = HbmBackend::kNone;  // no HBM tier: its capacity does not matter
  EXPECT_TRUE(c.Validate().ok()) << c.Validate().ToString();
}

TEST(TierConfigTest, ValidateRejectsZeroCopyThreads) {
  TierConfig c;
  c.geometry = SmallGeometry();
  c.copy_threads = 0;
  EXPECT_EQ(c.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(TierConfigTest, CapacityThatHoldsABlockButNoPageSizedSlotIsRejected) {
  // 512 B blocks live in 4 KiB DRAM slots: 1 KiB of DRAM holds a block but not a slot.
  QuietLogger logger;
  TierConfig c = SmallConfig(&logger, HbmBackend::kNone);
  c.geometry = KvGeometry{.layers = 1, .kv_heads = 1, .head_dim = 8, .block_tokens = 16, .dtype = DType::kBF16};
  c.dram_bytes = 1024;
  EXPECT_EQ(c.Validate().code(), StatusCode::kInvalidArgument) << c.Validate().ToString();
  EXPECT_EQ(BuildTiers(c).status().code(), StatusCode::kInvalidArgument);
}

TEST(TierConfigTest, CapacityWhoseSlotCountOverflowsIsRejectedNotTruncated) {
  // 2^32 + 1 slots of 4 KiB would wrap to a 1-slot pool if the count were truncated.
  QuietLogger logger;
  TierConfig c = SmallConfig(&logger, HbmBackend::kNone);
  c.geometry = KvGeometry{.layers = 1, .kv_heads = 1, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};
  ASSERT_EQ(c.geometry.block_bytes(), 4096u);
  c.dram_bytes = ((1ull << 32) + 1) * 4096;
  EXPECT_EQ(c.Validate().code(), StatusCode::kInvalidArgument) << c.Validate().ToString();
  auto built = BuildTiers(c);
  EXPECT_FALSE(built.ok()) << "built a pool of " << built->tiers[TierIndex(TierKind::kDram)]->caps().slot_count
                           << " slots for 16 TiB";

  c.dram_bytes = 2 << 20;
  c.hbm = HbmBackend::kEmulated;
  c.geometry.head_dim = 8;  // 512 B blocks, 512 B HBM slots
  c.hbm_bytes = ((1ull << 32) + 1) * 512;
  EXPECT_EQ(c.Validate().code(), StatusCode::kInvalidArgument) << c.Validate().ToString();
  EXPECT_FALSE(BuildTiers(c).ok());
}

TEST(RegistryTest, DescribeBuildSaysWhetherCudaIsThere) {
  const std::string d = DescribeBuild();
  EXPECT_FALSE(d.empty());
  EXPECT_TRUE(StartsWith(d, "cuda: ")) << d;
}

}  // namespace
}  // namespace kvtier
