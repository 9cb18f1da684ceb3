// Blocks the TierManager demotes to NVMe survive a restart: a new TierManager over the same
// directory adopts them (Tier::TakeRecovered) and serves them byte-exact; a block that fails
// verification after a crash (torn or corrupt) is a miss from then on, never wrong bytes.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

#include "kvtier/tier_manager.h"
#include "registry.h"
#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

constexpr KvGeometry kGeometry{.layers = 2, .kv_heads = 2, .head_dim = 64, .block_tokens = 16, .dtype = DType::kBF16};

TierConfig Config(const std::string& dir) {
  TierConfig c;
  c.geometry = kGeometry;
  c.dram_bytes = 1 << 20;  // 128 blocks of 8 KiB
  c.hbm = HbmBackend::kNone;
  c.allow_unpinned_dram = true;
  c.nvme_dir = dir;
  c.nvme_bytes = 4 << 20;  // 512 blocks
  c.logger = QuietNvmeLogger::Get();
  return c;
}

std::unique_ptr<TierManager> Manager(const std::string& dir) {
  auto set = BuildTiers(Config(dir));
  EXPECT_TRUE(set.ok()) << set.status().ToString();
  if (!set.ok()) return nullptr;
  TierManagerOptions o;
  o.geometry = kGeometry;
  o.logger = QuietNvmeLogger::Get();
  auto tm = TierManager::Create(o, std::move(set).value());
  EXPECT_TRUE(tm.ok()) << tm.status().ToString();
  return tm.ok() ? std::move(tm).value() : nullptr;
}

std::vector<ChainHash> Chains(uint64_t seed, size_t n) {
  std::vector<ChainHash> out;
  for (size_t i = 0; i < n; ++i) out.push_back(KeyOf(seed + i).chain);
  return out;
}
// Block-major keys: chain i, layer l is block 2i + l; its payload id is seed + 2i + l.
std::vector<BlockKey> Keys(const std::vector<ChainHash>& chains) {
  std::vector<BlockKey> out;
  for (const ChainHash& c : chains) {
    for (uint32_t l = 0; l < kGeometry.layers; ++l) out.push_back(BlockKey{c, LayerId{l}});
  }
  return out;
}

template <class F>
Status Retry(TierManager& tm, F&& f) {
  Status s = f();
  for (int tries = 0; !s.ok() && s.code() == StatusCode::kExhausted && tries < 200; ++tries) {
    tm.DemoteNow();
    std::this_thread::sleep_for(std::chrono::milliseconds(2));  // demotion copies are asynchronous
    s = f();
  }
  return s;
}

// Writes every key (payload id seed + i) through DRAM, then copies all of them to NVMe.
void WriteAllToNvme(TierManager& tm, const std::vector<BlockKey>& keys, uint64_t seed) {
  const uint64_t block = kGeometry.block_bytes();
  for (size_t i = 0; i < keys.size(); i += 16) {
    std::span<const BlockKey> chunk(keys.data() + i, std::min<size_t>(16, keys.size() - i));
    Result<PinSet> pins = Status::Exhausted("");
    ASSERT_TRUE(Retry(tm, [&] {
                  pins = tm.Allocate(chunk, TierKind::kDram);
                  return pins.status();
                }).ok())
        << pins.status().ToString();
    std::vector<std::byte*> ptrs;
    ASSERT_TRUE(tm.BlockTable(*pins, TierKind::kDram, &ptrs).ok());
    for (size_t j = 0; j < ptrs.size(); ++j) FillPayload({ptrs[j], block}, seed + i + j, 3);
    ASSERT_TRUE(tm.Commit(*pins, Fence()).ok());
    ASSERT_TRUE(tm.Release(*pins).ok());
  }
  for (size_t i = 0; i < keys.size(); i += 16) {
    std::span<const BlockKey> chunk(keys.data() + i, std::min<size_t>(16, keys.size() - i));
    PinSet pins = tm.MatchKeys(chunk);
    ASSERT_EQ(pins.size(), chunk.size());
    Status s = Retry(tm, [&] { return tm.Offload(pins, TierKind::kNvme).Wait(); });
    ASSERT_TRUE(s.ok()) << s.ToString();
  }
}

// Onboards `pins` into DRAM and compares block j with payload id ids[j].
void ExpectBytes(TierManager& tm, PinSet& pins, std::span<const uint64_t> ids) {
  Status s = Retry(tm, [&] { return tm.Onboard(pins, TierKind::kDram).Wait(); });
  ASSERT_TRUE(s.ok()) << s.ToString();
  std::vector<std::byte*> ptrs;
  ASSERT_TRUE(tm.BlockTable(pins, TierKind::kDram, &ptrs).ok());
  std::vector<std::byte> want(kGeometry.block_bytes());
  for (size_t j = 0; j < ptrs.size(); ++j) {
    FillPayload(want, ids[j], 3);
    EXPECT_EQ(std::memcmp(want.data(), ptrs[j], want.size()), 0) << "block " << ids[j];
  }
}

TEST(NvmeRestart, DemotedBlocksSurviveARestartAndMatchByteExact) {
  TempDir dir;
  const uint64_t seed = std::random_device{}();
  const auto chains = Chains(seed, 150);  // 300 blocks: > 2x DRAM, so most were demoted
  const auto keys = Keys(chains);
  {
    auto tm = Manager(dir.str());
    ASSERT_NE(tm, nullptr);
    WriteAllToNvme(*tm, keys, seed);
    if (HasFatalFailure()) return;
    EXPECT_GT(tm->Stats().tiers[TierIndex(TierKind::kDram)].demoted_blocks, 0u);
  }
  auto tm = Manager(dir.str());
  ASSERT_NE(tm, nullptr);
  EXPECT_EQ(tm->Stats().recovered_blocks, keys.size());
  {
    PrefixMatch m = tm->MatchPrefix(chains);
    EXPECT_EQ(m.blocks, chains.size());
    EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kNvme)], chains.size());
    EXPECT_EQ(m.blocks_at_or_above[TierIndex(TierKind::kDram)], 0u);
  }
  for (size_t i = 0; i < keys.size(); i += 16) {
    std::span<const BlockKey> chunk(keys.data() + i, std::min<size_t>(16, keys.size() - i));
    PinSet pins = tm->MatchKeys(chunk);
    ASSERT_EQ(pins.size(), chunk.size());
    std::vector<uint64_t> ids;
    for (size_t j = 0; j < chunk.size(); ++j) ids.push_back(seed + i + j);
    ExpectBytes(*tm, pins, ids);
    if (HasFatalFailure()) return;
  }
  // A block adopted and then dropped is gone from the next restart too.
  ASSERT_TRUE(tm->Drop({keys.data(), 2}).ok());
  tm.reset();
  tm = Manager(dir.str());
  ASSERT_NE(tm, nullptr);
  EXPECT_EQ(tm->Stats().recovered_blocks, keys.size() - 2);
  EXPECT_EQ(tm->MatchKeys({keys.data(), 2}).size(), 0u);
}

TEST(NvmeRestart, AfterACrashADoubtfulBlockIsAMissNeverWrongBytes) {
  TempDir dir;
  const uint64_t seed = std::random_device{}();
  const auto keys = Keys(Chains(seed, 24));
  {
    auto tm = Manager(dir.str());
    ASSERT_NE(tm, nullptr);
    WriteAllToNvme(*tm, keys, seed);
    if (HasFatalFailure()) return;
  }
  // What a crash leaves (cache mode): torn or half-written slots. Damage the payloads of
  // every third block on disk, as a torn write would.
  std::vector<bool> bad(keys.size());
  {
    const TierConfig c = Config(dir.str());
    auto nvme = NvmeTier::Open({.dir = dir.str(), .slot_bytes = kGeometry.block_bytes(),
                                .slot_count = static_cast<uint32_t>(c.nvme_bytes / kGeometry.block_bytes()),
                                .mode = NvmeMode::kCache, .direct_io = DirectIo::kPreferred,
                                .logger = QuietNvmeLogger::Get()});
    ASSERT_TRUE(nvme.ok()) << nvme.status().ToString();
    const auto recovered = (*nvme)->TakeRecovered();
    ASSERT_EQ(recovered.size(), keys.size());
    const int fd = ::open((dir.str() + "/slab.kvt").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0);
    for (const auto& [key, slot] : recovered) {
      const size_t i = static_cast<size_t>(std::find(keys.begin(), keys.end(), key) - keys.begin());
      ASSERT_LT(i, keys.size());
      if (i % 3 != 0) continue;
      bad[i] = true;
      const std::byte junk[512] = {std::byte{0x5a}};
      ASSERT_EQ(::pwrite(fd, junk, sizeof(junk), static_cast<off_t>((*nvme)->geometry().payload_offset(slot.value()) + 1024)),
                static_cast<ssize_t>(sizeof(junk)));
    }
    ::close(fd);
  }  // closing the tier keeps its index
  auto tm = Manager(dir.str());
  ASSERT_NE(tm, nullptr);
  ASSERT_EQ(tm->Stats().recovered_blocks, keys.size());
  size_t misses = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    PinSet pins = tm->MatchKeys({&keys[i], 1});
    ASSERT_EQ(pins.size(), 1u) << "block " << i << " is indexed until it is read";
    if (!bad[i]) {
      const uint64_t id = seed + i;
      ExpectBytes(*tm, pins, {&id, 1});
      continue;
    }
    const Status s = tm->Onboard(pins, TierKind::kDram).Wait();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
    std::vector<std::byte*> ptrs;
    EXPECT_FALSE(tm->BlockTable(pins, TierKind::kDram, &ptrs).ok()) << "a failed onboard left the block loaded";
    ASSERT_TRUE(tm->Release(pins).ok());
    EXPECT_EQ(tm->MatchKeys({&keys[i], 1}).size(), 0u) << "a doubtful block still matches";
    ++misses;
  }
  EXPECT_EQ(misses, keys.size() / 3);
  // The dropped blocks are gone from the index too; the good ones come back once more.
  tm.reset();
  tm = Manager(dir.str());
  ASSERT_NE(tm, nullptr);
  EXPECT_EQ(tm->Stats().recovered_blocks, keys.size() - misses);
}

}  // namespace
}  // namespace kvtier::testing
