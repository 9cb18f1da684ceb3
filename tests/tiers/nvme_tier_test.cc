// The NVMe tier and its io_uring movers on a real slab: random blocks round-trip, restart
// keeps them, injected corruption (bit flips, swapped slots, stale generations) is always
// detected and dropped, I/O errors never publish or load a block.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <numeric>
#include <ostream>
#include <set>

#include "tiers/nvme_testing.h"

namespace kvtier {
// ctest names the parameterised cases by this, not by the enum's raw byte.
static void PrintTo(NvmeSlotIo io, std::ostream* os) { *os << (io == NvmeSlotIo::kVectored ? "vectored" : "fixed-pair"); }
}  // namespace kvtier

namespace kvtier::testing {
namespace {

constexpr uint64_t kBlock = 16384 + 512;  // not a 4 KiB multiple: exercises padding

std::vector<uint64_t> Ids(uint64_t first, size_t n) {
  std::vector<uint64_t> v(n);
  std::iota(v.begin(), v.end(), first);
  return v;
}

// Raw access to the slab (buffered fd), for corruption.
std::vector<std::byte> ReadRaw(const std::string& dir, uint64_t offset, size_t n) {
  std::vector<std::byte> b(n);
  const int fd = ::open((dir + "/slab.kvt").c_str(), O_RDONLY);
  EXPECT_EQ(::pread(fd, b.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  ::close(fd);
  return b;
}
void WriteRaw(const std::string& dir, uint64_t offset, std::span<const std::byte> b) {
  const int fd = ::open((dir + "/slab.kvt").c_str(), O_WRONLY);
  EXPECT_EQ(::pwrite(fd, b.data(), b.size(), static_cast<off_t>(offset)), static_cast<ssize_t>(b.size()));
  EXPECT_EQ(::fsync(fd), 0);
  ::close(fd);
}

TEST(NvmeTier, RandomBlocksRoundTripThroughTheMovers) {
  TempDir dir;
  auto rig = NvmeRig::Open(dir.str(), kBlock, 128, 128);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  const uint64_t base = std::random_device{}();
  const auto ids = Ids(base, 100);
  auto slots = rig->Write(ids);
  ASSERT_TRUE(slots.ok()) << slots.status().ToString();
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    ASSERT_TRUE(rig->ReadAndCheck((*slots)[i], ids[i], 0, &match).ok());
    EXPECT_TRUE(match) << i;
    auto found = rig->nvme->Find(KeyOf(ids[i]));
    ASSERT_TRUE(found.ok());
    EXPECT_EQ(*found, (*slots)[i]);
  }
  EXPECT_EQ(rig->nvme->stats().published, ids.size());
  EXPECT_EQ(rig->down->stats().bytes, ids.size() * kBlock);
  EXPECT_EQ(rig->up->stats().errors, 0u);
  // A partial-slot segment is refused before any I/O.
  MoveBatch bad;
  bad.segments.push_back({SlotId{0}, (*slots)[0], 0, 4096, 4096});
  EXPECT_EQ(rig->down->Submit(std::move(bad)).Wait().code(), StatusCode::kInvalidArgument);
}

TEST(NvmeTier, CloseAndReopenKeepsEveryBlock) {
  TempDir dir;
  const uint64_t base = std::random_device{}();
  const auto ids = Ids(base, 40);
  std::vector<SlotId> slots;
  for (NvmeMode mode : {NvmeMode::kCache, NvmeMode::kDurable}) {
    {
      auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64, mode);
      ASSERT_TRUE(rig.ok()) << rig.status().ToString();
      for (const auto& r : rig->nvme->TakeRecovered()) rig->nvme->Release({&r.second, 1}, Fence());
      auto w = rig->Write(ids, static_cast<uint64_t>(mode));
      ASSERT_TRUE(w.ok()) << w.status().ToString();
      slots = *w;
    }
    auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64, mode);
    ASSERT_TRUE(rig.ok()) << rig.status().ToString();
    const auto rec = rig->nvme->TakeRecovered();
    ASSERT_EQ(rec.size(), ids.size());
    EXPECT_EQ(rig->nvme->usage().reserved_slots, ids.size());  // adopted slots are not reusable
    for (size_t i = 0; i < ids.size(); ++i) {
      auto s = rig->nvme->Find(KeyOf(ids[i]));
      ASSERT_TRUE(s.ok());
      EXPECT_EQ(*s, slots[i]);
      bool match = false;
      ASSERT_TRUE(rig->ReadAndCheck(*s, ids[i], static_cast<uint64_t>(mode), &match).ok());
      EXPECT_TRUE(match);
    }
  }
}

// Many single-block batches in flight at once (as the TierManager issues them): in both
// modes every one is acknowledged, published (the completions of one reap pass share an
// index WriteBatch; durable: one fdatasync covers every batch written before it) and
// survives a reopen byte-exact.
TEST(NvmeTier, ConcurrentSingleBlockBatchesArePublishedTogetherAndSurviveReopen) {
  constexpr size_t kBatches = 96;
  for (NvmeMode mode : {NvmeMode::kCache, NvmeMode::kDurable}) {
    TempDir dir;
    const uint64_t base = std::random_device{}();
    const auto ids = Ids(base, kBatches);
    std::vector<SlotId> dst;
    {
      NvmeMoverOptions mo;
      mo.queue_depth = 16;
      auto rig = NvmeRig::Open(dir.str(), kBlock, kBatches, kBatches, mode, mo);
      ASSERT_TRUE(rig.ok()) << rig.status().ToString();
      auto src = rig->dram->Reserve(kBatches);
      auto d = rig->nvme->Reserve(kBatches);
      ASSERT_TRUE(src.ok() && d.ok());
      dst = *d;
      std::vector<Fence> fences;
      for (size_t i = 0; i < kBatches; ++i) {
        FillPayload({rig->DramSlot((*src)[i]), kBlock}, ids[i], 7);
        MoveBatch b;
        b.segments.push_back({(*src)[i], dst[i], 0, 0, kBlock});
        b.keys.push_back(KeyOf(ids[i]));
        fences.push_back(rig->down->Submit(std::move(b)));
      }
      for (size_t i = 0; i < kBatches; ++i) ASSERT_TRUE(fences[i].Wait().ok()) << i;
      const NvmeTierStats st = rig->nvme->stats();
      EXPECT_EQ(st.published, kBatches);
      EXPECT_GE(st.index_puts, 1u);
      EXPECT_LE(st.index_puts, kBatches);
      EXPECT_EQ(rig->down->stats().batches, kBatches);
      EXPECT_EQ(rig->down->stats().errors, 0u);
    }
    auto rig = NvmeRig::Open(dir.str(), kBlock, 4, kBatches, mode);
    ASSERT_TRUE(rig.ok()) << rig.status().ToString();
    ASSERT_EQ(rig->nvme->TakeRecovered().size(), kBatches);
    for (size_t i = 0; i < kBatches; ++i) {
      auto s = rig->nvme->Find(KeyOf(ids[i]));
      ASSERT_TRUE(s.ok()) << i;
      EXPECT_EQ(*s, dst[i]);
      bool match = false;
      ASSERT_TRUE(rig->ReadAndCheck(*s, ids[i], 7, &match).ok()) << i;
      EXPECT_TRUE(match) << i;
    }
  }
}

TEST(NvmeTier, ReopenWithADeletedIndexDropsEveryOldBlock) {
  TempDir dir;
  const auto ids = Ids(std::random_device{}(), 20);
  {
    auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 32);
    ASSERT_TRUE(rig.ok());
    ASSERT_TRUE(rig->Write(ids).ok());
  }
  std::filesystem::remove_all(dir.str() + "/index");
  auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 32);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  EXPECT_TRUE(rig->nvme->TakeRecovered().empty());
  EXPECT_EQ(rig->nvme->usage().free_slots, 32u);
  EXPECT_EQ(rig->nvme->Find(KeyOf(ids[0])).status().code(), StatusCode::kNotFound);
  // A slot that was never written this run is never served, whatever is on disk.
  bool match = false;
  EXPECT_EQ(rig->ReadAndCheck(SlotId{0}, ids[0], 0, &match).code(), StatusCode::kDataLoss);
  // And a reopen with another geometry is refused, not misread.
  rig = NvmeRig::Open(dir.str(), kBlock * 2, 16, 32);
  EXPECT_EQ(rig.status().code(), StatusCode::kInvalidArgument);
}

TEST(NvmeTier, InjectedCorruptionIsDetectedDroppedAndCountedExactly) {
  TempDir dir;
  std::mt19937_64 rng(std::random_device{}());
  const auto ids = Ids(rng(), 60);
  std::vector<SlotId> slots;
  uint64_t stale_id = 0;
  std::vector<std::byte> stale_image;
  SlotId stale_slot;
  nvme::SlabGeometry g;
  {
    auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64);
    ASSERT_TRUE(rig.ok());
    auto w = rig->Write(ids);
    ASSERT_TRUE(w.ok());
    slots = *w;
    g = rig->nvme->geometry();
    // Stale: keep an image of a slot, rewrite the block in place, then put the image back.
    stale_id = ids[59];
    stale_slot = slots[59];
    stale_image = ReadRaw(dir.str(), g.header_offset(stale_slot.value()), g.stride());
    auto src = rig->dram->Reserve(1);
    ASSERT_TRUE(src.ok());
    FillPayload({rig->DramSlot((*src)[0]), kBlock}, stale_id, 1);
    rig->nvme->Bind(stale_slot, KeyOf(stale_id));
    MoveBatch b;
    b.segments.push_back({(*src)[0], stale_slot, 0, 0, kBlock});
    ASSERT_TRUE(rig->down->Submit(std::move(b)).Wait().ok());
    rig->dram->Release(*src, Fence());
  }
  WriteRaw(dir.str(), g.header_offset(stale_slot.value()), stale_image);
  // Bit flips in payloads and headers of 10 blocks (one bit each, random position).
  std::set<size_t> flipped;
  while (flipped.size() < 10) flipped.insert(rng() % 50);
  for (size_t i : flipped) {
    const bool header = (rng() % 4) == 0;
    const uint64_t at = header ? g.header_offset(slots[i].value()) + rng() % 88
                               : g.payload_offset(slots[i].value()) + rng() % kBlock;
    auto byte = ReadRaw(dir.str(), at, 1);
    byte[0] ^= std::byte(1u << (rng() % 8));
    WriteRaw(dir.str(), at, byte);
  }
  // Swapped slots: blocks 50 and 51 trade places (both headers and payloads).
  auto a = ReadRaw(dir.str(), g.header_offset(slots[50].value()), g.stride());
  auto b = ReadRaw(dir.str(), g.header_offset(slots[51].value()), g.stride());
  WriteRaw(dir.str(), g.header_offset(slots[50].value()), b);
  WriteRaw(dir.str(), g.header_offset(slots[51].value()), a);
  const uint64_t injected = flipped.size() + 2 + 1;

  auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64);
  ASSERT_TRUE(rig.ok());
  ASSERT_EQ(rig->nvme->TakeRecovered().size(), ids.size());
  // fsck without dropping reports exactly the injected blocks.
  auto report = rig->nvme->Fsck(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->checked, ids.size());
  EXPECT_EQ(report->bad, injected);
  uint64_t served_wrong = 0, detected = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    Status s = rig->ReadAndCheck(slots[i], ids[i], i == 59 ? 1 : 0, &match);
    if (s.ok()) {
      served_wrong += match ? 0 : 1;
    } else {
      EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
      ++detected;
      EXPECT_EQ(rig->nvme->Find(KeyOf(ids[i])).status().code(), StatusCode::kNotFound);  // dropped
    }
  }
  EXPECT_EQ(served_wrong, 0u);
  EXPECT_EQ(detected, injected);
  EXPECT_EQ(rig->nvme->stats().data_loss, 2 * injected);  // fsck's count + the reads'
}

// Both ways a block moves (one readv/writev of header + payload, or two fixed-buffer
// requests) under the same faults.
class NvmeSlotIoTest : public ::testing::TestWithParam<NvmeSlotIo> {};

TEST_P(NvmeSlotIoTest, FailedOrShortWritesAndFailedReadsAreNeverPublishedOrLoaded) {
  TempDir dir;
  const bool vectored = GetParam() == NvmeSlotIo::kVectored;
  constexpr uint32_t kPayload = (kBlock + 4095) / 4096 * 4096;
  // A whole block's request: header + payload (vectored), or the payload of a pair.
  const uint32_t full = vectored ? 4096 + kPayload : kPayload;
  // 0 none, 1 EIO on payload writes, 2 short (half) transfers, 3 EIO on reads, 4 short inside
  // the header sector (2 KiB), 5 short writes whose remainder then fails with EIO
  std::atomic<int> mode{0};
  std::atomic<int> shorts{0};
  NvmeMoverOptions mo;
  mo.slot_io = GetParam();
  mo.fault = [&](const IoRequest& r, int res) {
    const int m = mode.load();
    const bool write = r.op == IoOp::kWrite || r.op == IoOp::kWritev;
    const bool read = r.op == IoOp::kRead || r.op == IoOp::kReadv;
    const bool whole = r.length == full && res == static_cast<int>(r.length);
    if (m == 1 && (r.op == IoOp::kWritev || (r.op == IoOp::kWrite && r.buffer_index == 0))) return -EIO;
    if (m == 2 && res > 4096 && r.length == static_cast<uint32_t>(res)) return ++shorts, res / 2;
    if (m == 3 && read) return -EIO;
    if (m == 4 && whole) return ++shorts, 2048;
    if (m == 5 && write && r.length > 4096) return whole ? (++shorts, res / 2) : -EIO;
    return res;
  };
  auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64, NvmeMode::kCache, mo);
  ASSERT_TRUE(rig.ok());
  const auto ids = Ids(std::random_device{}(), 8);
  mode = 1;
  auto w = rig->Write(ids);
  EXPECT_EQ(w.status().code(), StatusCode::kIoError);
  EXPECT_EQ(rig->nvme->stats().published, 0u);
  EXPECT_EQ(rig->nvme->Find(KeyOf(ids[0])).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(rig->nvme->usage().reserved_slots, 0u);
  mode = 5;  // a short write whose remainder fails: not published either
  w = rig->Write(ids);
  EXPECT_EQ(w.status().code(), StatusCode::kIoError);
  EXPECT_GT(shorts.exchange(0), 0);
  EXPECT_EQ(rig->nvme->stats().published, 0u);
  EXPECT_EQ(rig->nvme->Find(KeyOf(ids[0])).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(rig->nvme->usage().reserved_slots, 0u);
  for (const int m : {2, 4}) {  // short transfers are finished, not reported done early
    mode = m;
    const auto some = Ids(ids.back() + 1 + 100 * static_cast<uint64_t>(m), 8);
    w = rig->Write(some);
    ASSERT_TRUE(w.ok()) << "mode " << m << ": " << w.status().ToString();
    for (size_t i = 0; i < some.size(); ++i) {
      bool match = false;
      ASSERT_TRUE(rig->ReadAndCheck((*w)[i], some[i], 0, &match).ok()) << "mode " << m;
      EXPECT_TRUE(match) << "mode " << m;
    }
    EXPECT_GT(shorts.exchange(0), 0) << "mode " << m << " never cut a transfer";
    mode = 0;
    for (size_t i = 0; i < some.size(); ++i) {  // and what is on disk is whole
      bool match = false;
      ASSERT_TRUE(rig->ReadAndCheck((*w)[i], some[i], 0, &match).ok()) << "mode " << m;
      EXPECT_TRUE(match) << "mode " << m;
    }
  }
  mode = 3;
  bool match = false;
  EXPECT_EQ(rig->ReadAndCheck((*w)[0], ids.back() + 401, 0, &match).code(), StatusCode::kIoError);
  mode = 0;  // the block was not loaded, but it is still on disk and reads again
  ASSERT_TRUE(rig->ReadAndCheck((*w)[0], ids.back() + 401, 0, &match).ok());
  EXPECT_TRUE(match);
}

INSTANTIATE_TEST_SUITE_P(SlotIo, NvmeSlotIoTest, ::testing::Values(NvmeSlotIo::kVectored, NvmeSlotIo::kFixedPair),
                         [](const ::testing::TestParamInfo<NvmeSlotIo>& p) {
                           return std::string(p.param == NvmeSlotIo::kVectored ? "Vectored" : "FixedPair");
                         });

}  // namespace
}  // namespace kvtier::testing
