// The NVMe tier and its io_uring movers on a real slab (format version 2): random blocks
// round-trip, restart keeps them, a read is one payload request and a write a payload and a
// header record request, injected corruption (bit flips, swapped slots, stale generations)
// is always detected and dropped, I/O errors never publish or load a block, a version 1
// slab is refused.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <mutex>
#include <numeric>
#include <ostream>
#include <set>
#include <thread>

#include "xxh3_dispatch.h"

#include "tiers/nvme_testing.h"

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

// Corruption injected into the v2 layout. Payload damage (bit flips, two slots' payloads
// and records swapped, a stale payload + record put back over a newer write) is caught by
// the read, which checks the payload against the index alone, and by fsck. Header record
// damage alone (bit flips anywhere in the record) does not change what a read serves (the
// payload still verifies), and fsck finds every one.
TEST(NvmeTier, InjectedCorruptionIsDetectedDroppedAndCountedExactly) {
  TempDir dir;
  std::mt19937_64 rng(std::random_device{}());
  const auto ids = Ids(rng(), 60);
  std::vector<SlotId> slots;
  uint64_t stale_id = 0;
  std::vector<std::byte> stale_payload, stale_record;
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
    stale_payload = ReadRaw(dir.str(), g.payload_offset(stale_slot.value()), g.slot_bytes);
    stale_record = ReadRaw(dir.str(), g.record_offset(stale_slot.value()), g.record_bytes);
    auto src = rig->dram->Reserve(1);
    ASSERT_TRUE(src.ok());
    FillPayload({rig->DramSlot((*src)[0]), kBlock}, stale_id, 1);
    rig->nvme->Bind(stale_slot, KeyOf(stale_id));
    MoveBatch b;
    b.segments.push_back({(*src)[0], stale_slot, 0, 0, kBlock});
    ASSERT_TRUE(rig->down->Submit(std::move(b)).Wait().ok());
    rig->dram->Release(*src, Fence());
  }
  WriteRaw(dir.str(), g.payload_offset(stale_slot.value()), stale_payload);
  WriteRaw(dir.str(), g.record_offset(stale_slot.value()), stale_record);
  auto flip = [&](uint64_t at) {
    auto byte = ReadRaw(dir.str(), at, 1);
    byte[0] ^= std::byte(1u << (rng() % 8));
    WriteRaw(dir.str(), at, byte);
  };
  // Bit flips in the payloads of 10 blocks and, separately, in the header records of 6 others
  // (one bit each, anywhere in the payload's bytes or in the whole record).
  std::set<size_t> payload_flipped, record_flipped;
  while (payload_flipped.size() < 10) payload_flipped.insert(rng() % 50);
  while (record_flipped.size() < 6) {
    if (const size_t i = rng() % 50; payload_flipped.count(i) == 0) record_flipped.insert(i);
  }
  for (size_t i : payload_flipped) flip(g.payload_offset(slots[i].value()) + rng() % kBlock);
  for (size_t i : record_flipped) flip(g.record_offset(slots[i].value()) + rng() % g.record_bytes);
  // Swapped slots: blocks 50 and 51 trade places (payloads and records).
  for (const bool record : {false, true}) {
    const auto at = [&](size_t i) { return record ? g.record_offset(slots[i].value()) : g.payload_offset(slots[i].value()); };
    const size_t n = record ? g.record_bytes : g.slot_bytes;
    auto a = ReadRaw(dir.str(), at(50), n);
    auto b = ReadRaw(dir.str(), at(51), n);
    WriteRaw(dir.str(), at(50), b);
    WriteRaw(dir.str(), at(51), a);
  }
  const uint64_t bad_payloads = payload_flipped.size() + 2 + 1;
  const uint64_t bad_records = record_flipped.size() + 2 + 1;

  auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64);
  ASSERT_TRUE(rig.ok());
  ASSERT_EQ(rig->nvme->TakeRecovered().size(), ids.size());
  // fsck without dropping reports exactly the injected blocks, each kind counted.
  auto report = rig->nvme->Fsck(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->checked, ids.size());
  EXPECT_EQ(report->bad_payloads, bad_payloads);
  EXPECT_EQ(report->bad_records, bad_records);
  EXPECT_EQ(report->bad, bad_payloads + record_flipped.size());
  EXPECT_EQ(report->dropped, 0u);
  uint64_t served_wrong = 0, detected = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    Status s = rig->ReadAndCheck(slots[i], ids[i], i == 59 ? 1 : 0, &match);
    if (s.ok()) {
      served_wrong += match ? 0 : 1;
    } else {
      EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
      EXPECT_EQ(record_flipped.count(i), 0u) << "a block with a good payload was not served: " << s.ToString();
      ++detected;
      EXPECT_EQ(rig->nvme->Find(KeyOf(ids[i])).status().code(), StatusCode::kNotFound);  // dropped
    }
  }
  EXPECT_EQ(served_wrong, 0u);
  EXPECT_EQ(detected, bad_payloads);
  EXPECT_EQ(rig->nvme->stats().data_loss, report->bad + bad_payloads);  // fsck's count + the reads'
  // fsck --drop then finds the record-only damage (the payloads were dropped by the reads).
  report = rig->nvme->Fsck(true);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->checked, ids.size() - bad_payloads);
  EXPECT_EQ(report->bad, record_flipped.size());
  EXPECT_EQ(report->bad_payloads, 0u);
  EXPECT_EQ(report->dropped, record_flipped.size());
  for (size_t i : record_flipped) EXPECT_EQ(rig->nvme->Find(KeyOf(ids[i])).status().code(), StatusCode::kNotFound);
  report = rig->nvme->Fsck(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->bad, 0u);
}

// The request shapes of format version 3: a read is exactly one fixed-buffer read of the
// payload (what fio does); a write is exactly one vectored request, the header record then
// the payload, at the slot's record offset.
TEST(NvmeTier, AReadIsOneFixedPayloadRequestAndAWriteOneRecordAndPayloadRequest) {
  TempDir dir;
  struct Seen {
    IoRequest request;
    std::vector<size_t> pieces;  // iov lengths (the request's iov is the queue's own storage)
  };
  std::mutex mu;
  std::vector<Seen> seen;
  NvmeMoverOptions mo;
  mo.fault = [&](const IoRequest& r, int res) {
    std::lock_guard lock(mu);
    Seen s{r, {}};
    for (const iovec& v : r.iov) s.pieces.push_back(v.iov_len);
    s.request.iov = {};
    seen.push_back(std::move(s));
    return res;
  };
  auto rig = NvmeRig::Open(dir.str(), kBlock, 8, 8, NvmeMode::kCache, mo);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  const nvme::SlabGeometry g = rig->nvme->geometry();
  EXPECT_EQ(g.record_bytes, 4096u);
  EXPECT_EQ(g.payload_offset(0), g.record_offset(0) + g.record_bytes);
  EXPECT_EQ(g.record_offset(1), g.payload_offset(0) + g.slot_bytes);
  EXPECT_EQ(g.payload_offset(g.slot_count - 1) + g.slot_bytes, g.file_bytes());
  const auto ids = Ids(std::random_device{}(), 1);
  auto w = rig->Write(ids);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  const uint32_t slot = (*w)[0].value();
  {
    std::lock_guard lock(mu);
    ASSERT_EQ(seen.size(), 1u);
    const IoRequest& r = seen[0].request;
    EXPECT_EQ(r.op, IoOp::kWritev);
    EXPECT_EQ(r.offset, g.record_offset(slot));
    EXPECT_EQ(r.length, g.record_bytes + g.slot_bytes);
    EXPECT_EQ(seen[0].pieces, (std::vector<size_t>{g.record_bytes, g.slot_bytes}));
    seen.clear();
  }
  bool match = false;
  ASSERT_TRUE(rig->ReadAndCheck((*w)[0], ids[0], 0, &match).ok());
  EXPECT_TRUE(match);
  std::lock_guard lock(mu);
  ASSERT_EQ(seen.size(), 1u);
  const IoRequest& r = seen[0].request;
  EXPECT_EQ(r.op, IoOp::kRead);
  EXPECT_EQ(r.buffer_index, 0);  // the DRAM pool
  EXPECT_EQ(r.offset, g.payload_offset(slot));
  EXPECT_EQ(r.length, g.slot_bytes);
}

// The I/O thread handles at most queue depth / 8 completions per reap pass before it
// submits the blocks they let start: completions that arrive while it is busy wait for the
// next pass instead of holding back every new submission (the old loop drained the whole
// completion queue, and at qd 32 settled into submit-32 / reap-32 lockstep). The stage
// timing accounts for every block.
TEST(NvmeTier, TheIoThreadSubmitsBetweenSmallReapPassesAndTimesEveryStage) {
  TempDir dir;
  constexpr uint32_t kBlocks = 64;
  NvmeMoverOptions mo;
  mo.queue_depth = 16;  // reap passes of at most 2
  // A slow completion (on the I/O thread) lets every other in-flight read finish meanwhile.
  mo.fault = [](const IoRequest& r, int res) {
    if (r.op == IoOp::kRead) std::this_thread::sleep_for(std::chrono::microseconds(100));
    return res;
  };
  auto rig = NvmeRig::Open(dir.str(), kBlock, kBlocks, kBlocks, NvmeMode::kCache, mo);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  const auto ids = Ids(std::random_device{}(), kBlocks);
  auto w = rig->Write(ids);
  ASSERT_TRUE(w.ok()) << w.status().ToString();
  auto dst = rig->dram->Reserve(kBlocks);
  ASSERT_TRUE(dst.ok());
  const NvmeMoverBreakdown before = rig->up->breakdown();
  std::vector<Fence> fences;
  for (uint32_t i = 0; i < kBlocks; ++i) {
    MoveBatch b;
    b.segments.push_back({(*w)[i], (*dst)[i], 0, 0, kBlock});
    b.keys.push_back(KeyOf(ids[i]));
    fences.push_back(rig->up->Submit(std::move(b)));
  }
  for (uint32_t i = 0; i < kBlocks; ++i) ASSERT_TRUE(fences[i].Wait().ok()) << i;
  std::vector<std::byte> want(kBlock);
  for (uint32_t i = 0; i < kBlocks; ++i) {
    FillPayload(want, ids[i], 0);
    EXPECT_EQ(std::memcmp(rig->DramSlot((*dst)[i]), want.data(), kBlock), 0) << i;
  }
  // The I/O thread adds a pass's counts (and a fence's callback time) after the fence has
  // signaled: wait for them to settle.
  NvmeMoverBreakdown b = rig->up->breakdown().Since(before);
  for (int i = 0; i < 2000 && (b.reaped < kBlocks || b.stages[NvmeMoverBreakdown::kCallbacks].total() < kBlocks); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
    b = rig->up->breakdown().Since(before);
  }
  EXPECT_EQ(b.reaped, kBlocks);
  ASSERT_GT(b.passes, 0u);
  EXPECT_LE(double(b.reaped) / double(b.passes), 2.0) << b.reaped << " completions in " << b.passes << " passes";
  EXPECT_GE(b.reap_calls, kBlocks / 2);
  for (size_t st = 0; st < NvmeMoverBreakdown::kStages; ++st) {
    EXPECT_EQ(b.stages[st].total(), kBlocks) << NvmeMoverBreakdown::StageName(st);
  }
  // The fault hook's sleep lies between submit and reap: the device stage holds it.
  EXPECT_GE(b.stages[NvmeMoverBreakdown::kDevice].MeanUs(), 90.0);
  EXPECT_GE(b.stages[NvmeMoverBreakdown::kTotal].MeanUs(), b.stages[NvmeMoverBreakdown::kDevice].MeanUs());
  rig->dram->Release(*dst, Fence());
}

// Slabs of format versions 1 (a 4 KiB header sector before each payload, read with it) and 2
// (header records in a region of their own) are refused with a Status that names the
// version; so is a newer version; nothing is written to the file.
TEST(NvmeTier, SlabsOfOtherFormatVersionsAreRefusedNamingTheVersion) {
  for (const uint32_t version : {1u, 2u, 4u}) {
    TempDir dir;
    std::vector<std::byte> header(4096);
    const uint64_t magic = nvme::kSlabMagic, slot_bytes = 20480;
    const uint32_t slot_count = 8;
    std::memcpy(header.data(), &magic, 8);
    std::memcpy(header.data() + 8, &version, 4);
    std::memcpy(header.data() + 16, &slot_bytes, 8);
    std::memcpy(header.data() + 24, &slot_count, 4);
    if (version == 1) {
      const uint64_t sum = nvme::Xxh3_64(header.data(), 32);  // version 1: XXH3 of [0, 32) at 32
      std::memcpy(header.data() + 32, &sum, 8);
    } else {
      // Version 2's layout: 512 B records from 4096, payloads from 1 MiB; XXH3 of [0, 48) at 48.
      const uint32_t record_bytes = 512;
      const uint64_t records = 4096, payloads = 1 << 20;
      std::memcpy(header.data() + 12, &record_bytes, 4);
      std::memcpy(header.data() + 32, &records, 8);
      std::memcpy(header.data() + 40, &payloads, 8);
      const uint64_t sum = nvme::Xxh3_64(header.data(), 48);
      std::memcpy(header.data() + 48, &sum, 8);
    }
    {
      const int fd = ::open((dir.str() + "/slab.kvt").c_str(), O_WRONLY | O_CREAT, 0600);
      ASSERT_GE(fd, 0);
      ASSERT_EQ(::pwrite(fd, header.data(), header.size(), 0), 4096);
      ::close(fd);
    }
    auto rig = NvmeRig::Open(dir.str(), kBlock, 8, slot_count);
    ASSERT_FALSE(rig.ok());
    EXPECT_EQ(rig.status().code(), StatusCode::kFailedPrecondition) << rig.status().ToString();
    EXPECT_NE(rig.status().ToString().find("format version " + std::to_string(version)), std::string::npos)
        << rig.status().ToString();
    EXPECT_EQ(ReadRaw(dir.str(), 0, 4096), header) << "the refused slab was modified";
  }
}

// Faults on a write's one request (header record + payload) and on reads.
TEST(NvmeTier, FailedOrShortWritesAndFailedReadsAreNeverPublishedOrLoaded) {
  TempDir dir;
  constexpr uint32_t kPayload = (kBlock + 4095) / 4096 * 4096;
  constexpr uint32_t kWrite = nvme::kRecordBytes + kPayload;
  // 0 none, 1 EIO on writes, 2 short (half) transfers, 3 EIO on reads, 4 short inside a
  // write's record and inside a read's first 4 KiB (2 KiB), 5 short writes whose remainder
  // then fails with EIO, 6 short writes that end exactly where the payload starts, then a
  // short remainder inside the payload's first 4 KiB
  std::atomic<int> mode{0};
  std::atomic<int> shorts{0};
  NvmeMoverOptions mo;
  mo.fault = [&](const IoRequest& r, int res) {
    const int m = mode.load();
    const bool write = r.op == IoOp::kWritev;
    const bool whole = res == static_cast<int>(r.length);
    if (m == 1 && write) return -EIO;
    if (m == 2 && res > 4096 && whole) return ++shorts, res / 2;
    if (m == 3 && r.op == IoOp::kRead) return -EIO;
    if (m == 4 && whole && (r.length == kWrite || r.length == kPayload)) return ++shorts, 2048;
    if (m == 5 && write) return r.length == kWrite && whole ? (++shorts, res / 2) : -EIO;
    if (m == 6 && write && whole && r.length == kWrite) return ++shorts, 4096;
    if (m == 6 && write && whole && r.length == kPayload) return ++shorts, 2048;
    return res;
  };
  auto rig = NvmeRig::Open(dir.str(), kBlock, 64, 64, NvmeMode::kCache, mo);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  const auto ids = Ids(std::random_device{}(), 8);
  for (const int m : {1, 5}) {  // a failed write: nothing published
    mode = m;
    auto w = rig->Write(ids);
    EXPECT_EQ(w.status().code(), StatusCode::kIoError) << "mode " << m;
    if (m == 5) {
      EXPECT_GT(shorts.exchange(0), 0);
    }
    EXPECT_EQ(rig->nvme->stats().published, 0u) << "mode " << m;
    EXPECT_EQ(rig->nvme->Find(KeyOf(ids[0])).status().code(), StatusCode::kNotFound) << "mode " << m;
    EXPECT_EQ(rig->nvme->usage().reserved_slots, 0u) << "mode " << m;
  }
  Result<std::vector<SlotId>> w = Status::Internal("not written");
  std::vector<uint64_t> some;
  for (const int m : {2, 4, 6}) {  // short transfers are finished, not reported done early
    mode = m;
    some = Ids(ids.back() + 1 + 100 * static_cast<uint64_t>(m), 8);
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
  // The records of short-written blocks are whole too: fsck agrees with the index.
  auto report = rig->nvme->Fsck(false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(report->checked, 24u);
  EXPECT_EQ(report->bad, 0u) << (report->problems.empty() ? "" : report->problems[0]);
  mode = 3;
  bool match = false;
  EXPECT_EQ(rig->ReadAndCheck((*w)[0], some[0], 0, &match).code(), StatusCode::kIoError);
  mode = 0;  // the block was not loaded, but it is still on disk and reads again
  ASSERT_TRUE(rig->ReadAndCheck((*w)[0], some[0], 0, &match).ok());
  EXPECT_TRUE(match);
}

}  // namespace
}  // namespace kvtier::testing
