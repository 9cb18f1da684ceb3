// MemcpyMover between the emulated HBM tier and the DRAM pool, in both directions: bytes
// land exactly where the segments say and nowhere else, bad segments are refused before
// anything moves, fences order the copies, and the mover drains before it goes away.
#include "memcpy_mover.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "emulated_hbm_tier.h"
#include "host_tier.h"
#include "kvtier/logger.h"

namespace kvtier {

// Prints status codes by name in assertion failures.
inline void PrintTo(StatusCode code, std::ostream* os) { *os << StatusCodeName(code); }

namespace {

using namespace std::chrono_literals;

constexpr uint64_t kSlotBytes = 512 * 1024;
constexpr uint32_t kSlotCount = 16;
constexpr std::byte kPoison{0xa5};

class QuietLogger final : public Logger {
 public:
  void Write(LogLevel, std::string_view) override {}
};

void FillRandom(std::span<std::byte> out, std::mt19937_64& rng) {
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(out.data() + i, &w, 8);
  }
  const uint64_t tail = rng();
  std::memcpy(out.data() + i, &tail, out.size() - i);
}

std::byte* Ptr(const Tier& tier, SlotId slot) { return std::get<MemoryAddress>(tier.Locate(slot)).ptr; }

std::span<std::byte> SlotBytes(const Tier& tier, SlotId slot) {
  return {Ptr(tier, slot), tier.caps().slot_bytes};
}

void Poison(const Tier& tier, SlotId slot) {
  std::memset(Ptr(tier, slot), static_cast<int>(kPoison), tier.caps().slot_bytes);
}

// The first offset in [begin, end) whose byte is not the poison, or `end`.
size_t FirstUnpoisoned(std::span<const std::byte> bytes, size_t begin, size_t end) {
  for (size_t i = begin; i < end; ++i) {
    if (bytes[i] != kPoison) return i;
  }
  return end;
}

bool AllPoisoned(const Tier& tier, SlotId slot) {
  const auto b = SlotBytes(tier, slot);
  return FirstUnpoisoned(b, 0, b.size()) == b.size();
}

enum class Direction { kDramToHbm, kHbmToDram };

void PrintTo(Direction d, std::ostream* os) { *os << (d == Direction::kDramToHbm ? "dram->hbm" : "hbm->dram"); }

std::string DirectionName(const ::testing::TestParamInfo<Direction>& info) {
  return info.param == Direction::kDramToHbm ? "DramToHbm" : "HbmToDram";
}

class MemcpyMoverTest : public ::testing::TestWithParam<Direction> {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    RecordProperty("seed", std::to_string(seed_));
    rng_.seed(seed_);

    auto hbm = EmulatedHbmTier::Create({.slot_bytes = kSlotBytes, .slot_count = kSlotCount});
    ASSERT_TRUE(hbm.ok()) << hbm.status().ToString();
    hbm_ = std::move(hbm).value();
    HostTierOptions host;
    host.slot_bytes = kSlotBytes;
    host.slot_count = kSlotCount;
    host.pinning = PinningPolicy::kAllowUnpinned;
    host.touch_threads = 2;
    host.logger = &logger_;
    auto dram = HostTier::Create(host);
    ASSERT_TRUE(dram.ok()) << dram.status().ToString();
    dram_ = std::move(dram).value();

    const bool up = GetParam() == Direction::kDramToHbm;
    src_ = up ? static_cast<Tier*>(dram_.get()) : static_cast<Tier*>(hbm_.get());
    dst_ = up ? static_cast<Tier*>(hbm_.get()) : static_cast<Tier*>(dram_.get());
    ASSERT_EQ(src_->caps().slot_bytes, kSlotBytes);
    ASSERT_EQ(dst_->caps().slot_bytes, kSlotBytes);
    auto forward = MemcpyMover::Create(src_, dst_, {.threads = 2});
    ASSERT_TRUE(forward.ok()) << forward.status().ToString();
    forward_ = std::move(forward).value();
    auto backward = MemcpyMover::Create(dst_, src_, {.threads = 2});
    ASSERT_TRUE(backward.ok()) << backward.status().ToString();
    backward_ = std::move(backward).value();

    auto s = src_->Reserve(kSlotCount);
    auto d = dst_->Reserve(kSlotCount);
    ASSERT_TRUE(s.ok() && d.ok());
    src_slots_ = std::move(s).value();
    dst_slots_ = std::move(d).value();
    // Every source slot holds fresh random bytes; every destination slot is poisoned.
    for (SlotId slot : src_slots_) FillRandom(SlotBytes(*src_, slot), rng_);
    for (SlotId slot : dst_slots_) Poison(*dst_, slot);
  }

  void TearDown() override {
    forward_.reset();  // the movers drain before the tiers go
    backward_.reset();
    if (src_ && !src_slots_.empty()) src_->Release(src_slots_, Fence());
    if (dst_ && !dst_slots_.empty()) dst_->Release(dst_slots_, Fence());
  }

  // A multiple of 16 in [0, limit].
  uint64_t RandomOffset(uint64_t limit) { return (rng_() % (limit / 16 + 1)) * 16; }

  // Checks that `dst` holds exactly the segments' source bytes and poison everywhere else
  // (segments within one batch must not overlap in the destination).
  void ExpectLanded(const std::vector<CopySegment>& segments, const Tier& src, const Tier& dst,
                    std::span<const SlotId> dst_slots) {
    for (SlotId d : dst_slots) {
      std::vector<std::pair<uint64_t, uint64_t>> covered;  // [begin, end) in this slot
      for (const CopySegment& c : segments) {
        if (c.dst != d) continue;
        covered.emplace_back(c.dst_offset, c.dst_offset + c.bytes);
        EXPECT_EQ(std::memcmp(Ptr(dst, d) + c.dst_offset, Ptr(src, c.src) + c.src_offset, c.bytes), 0)
            << c.bytes << " B from slot " << c.src.value() << "+" << c.src_offset << " to slot " << d.value() << "+"
            << c.dst_offset << " differ";
      }
      std::sort(covered.begin(), covered.end());
      const auto bytes = SlotBytes(dst, d);
      uint64_t at = 0;
      covered.emplace_back(bytes.size(), bytes.size());
      for (const auto& [begin, end] : covered) {
        const size_t bad = FirstUnpoisoned(bytes, at, begin);
        EXPECT_EQ(bad, begin) << "slot " << d.value() << " byte " << bad << " outside every segment was written";
        at = std::max(at, end);
      }
    }
  }

  Status SubmitAndWait(Mover& mover, std::vector<CopySegment> segments, std::vector<Fence> wait_for = {}) {
    return mover.Submit(MoveBatch{.segments = std::move(segments), .wait_for = std::move(wait_for)}).Wait();
  }

  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
  QuietLogger logger_;
  std::unique_ptr<EmulatedHbmTier> hbm_;
  std::unique_ptr<HostTier> dram_;
  Tier* src_ = nullptr;
  Tier* dst_ = nullptr;
  std::unique_ptr<MemcpyMover> forward_;
  std::unique_ptr<MemcpyMover> backward_;
  std::vector<SlotId> src_slots_;
  std::vector<SlotId> dst_slots_;
};

INSTANTIATE_TEST_SUITE_P(BothDirections, MemcpyMoverTest,
                         ::testing::Values(Direction::kDramToHbm, Direction::kHbmToDram), DirectionName);

TEST_P(MemcpyMoverTest, NamesItsTiersAndDirection) {
  EXPECT_EQ(forward_->source(), src_->kind());
  EXPECT_EQ(forward_->destination(), dst_->kind());
  EXPECT_EQ(backward_->source(), dst_->kind());
  EXPECT_EQ(forward_->name(),
            std::string("memcpy ") + std::string(TierName(src_->kind())) + "->" + std::string(TierName(dst_->kind())));
}

TEST_P(MemcpyMoverTest, RoundTripIsBitExactForEveryBlockSizeAndOffset) {
  std::vector<uint64_t> sizes = {16, 32, 48, 64, 112, 256, 1008, 4096, 4112, 8192, 16384, 65536, 65552, 131072, 262144};
  for (int i = 0; i < 8; ++i) sizes.push_back(16 * (1 + rng_() % (262144 / 16)));
  const SlotId origin = src_slots_[0];
  const SlotId staging = dst_slots_[0];
  const SlotId back = src_slots_[1];
  for (const uint64_t bytes : sizes) {
    SCOPED_TRACE(::testing::Message() << bytes << " B, seed " << seed_);
    FillRandom(SlotBytes(*src_, origin), rng_);
    Poison(*dst_, staging);
    Poison(*src_, back);
    const CopySegment there{.src = origin, .dst = staging, .src_offset = RandomOffset(kSlotBytes - bytes),
                            .dst_offset = RandomOffset(kSlotBytes - bytes), .bytes = bytes};
    ASSERT_TRUE(SubmitAndWait(*forward_, {there}).ok());
    ExpectLanded({there}, *src_, *dst_, std::span(&staging, 1));

    const CopySegment home{.src = staging, .dst = back, .src_offset = there.dst_offset,
                           .dst_offset = RandomOffset(kSlotBytes - bytes), .bytes = bytes};
    ASSERT_TRUE(SubmitAndWait(*backward_, {home}).ok());
    ExpectLanded({home}, *dst_, *src_, std::span(&back, 1));
    EXPECT_EQ(std::memcmp(Ptr(*src_, back) + home.dst_offset, Ptr(*src_, origin) + there.src_offset, bytes), 0);
    if (HasFailure()) return;
  }
}

TEST_P(MemcpyMoverTest, ScatteredSlicesInOneBatchLandExactly) {
  // Every destination slot is cut into 8 KiB slices; a random half of them is filled from
  // random slices of random source slots, in random order.
  constexpr uint64_t kSlice = 8192;
  constexpr uint64_t kPerSlot = kSlotBytes / kSlice;
  std::vector<uint64_t> targets(kSlotCount * kPerSlot);
  std::iota(targets.begin(), targets.end(), 0);
  std::shuffle(targets.begin(), targets.end(), rng_);
  targets.resize(targets.size() / 2);
  std::vector<CopySegment> segments;
  for (uint64_t t : targets) {
    segments.push_back({.src = src_slots_[rng_() % kSlotCount], .dst = dst_slots_[t / kPerSlot],
                        .src_offset = (rng_() % kPerSlot) * kSlice, .dst_offset = (t % kPerSlot) * kSlice,
                        .bytes = kSlice});
  }
  ASSERT_TRUE(SubmitAndWait(*forward_, segments).ok());
  ExpectLanded(segments, *src_, *dst_, dst_slots_);

  // Segments of mixed sizes packed back to back into one slot.
  Poison(*dst_, dst_slots_[3]);
  std::vector<CopySegment> packed;
  uint64_t at = 0;
  while (true) {
    const uint64_t bytes = 16 * (1 + rng_() % 2048);
    if (at + bytes > kSlotBytes) break;
    packed.push_back({.src = src_slots_[rng_() % kSlotCount], .dst = dst_slots_[3],
                      .src_offset = RandomOffset(kSlotBytes - bytes), .dst_offset = at, .bytes = bytes});
    at += bytes + 16 * (rng_() % 3);  // sometimes a gap that must stay poisoned
  }
  ASSERT_TRUE(SubmitAndWait(*forward_, packed).ok());
  ExpectLanded(packed, *src_, *dst_, std::span(dst_slots_).subspan(3, 1));
}

TEST_P(MemcpyMoverTest, BatchesSubmittedInOrderLandInOrder) {
  const SlotId d = dst_slots_[0];
  std::vector<Fence> fences;
  for (uint32_t i = 0; i < 8; ++i) {
    fences.push_back(forward_->Submit(
        {.segments = {{.src = src_slots_[i], .dst = d, .src_offset = 0, .dst_offset = 0, .bytes = kSlotBytes}},
         .wait_for = {}}));
  }
  for (const Fence& f : fences) ASSERT_TRUE(f.Wait().ok());
  EXPECT_EQ(std::memcmp(Ptr(*dst_, d), Ptr(*src_, src_slots_[7]), kSlotBytes), 0) << "the last batch must win";
}

TEST_P(MemcpyMoverTest, InvalidSegmentsFailTheBatchBeforeAnythingMoves) {
  const SlotId s = src_slots_[0];
  const SlotId d = dst_slots_[0];
  const CopySegment valid{.src = s, .dst = d, .src_offset = 0, .dst_offset = 0, .bytes = 4096};
  struct Case {
    const char* what;
    CopySegment segment;
  };
  const std::vector<Case> cases = {
      {"source slot out of range", {.src = SlotId{kSlotCount}, .dst = d, .bytes = 16}},
      {"destination slot out of range", {.src = s, .dst = SlotId{kSlotCount}, .bytes = 16}},
      {"no slot at all", {.src = kNoSlot, .dst = d, .bytes = 16}},
      {"zero bytes", {.src = s, .dst = d, .src_offset = 0, .dst_offset = 0, .bytes = 0}},
      {"source offset overruns the slot", {.src = s, .dst = d, .src_offset = kSlotBytes - 16, .bytes = 32}},
      {"destination offset overruns the slot", {.src = s, .dst = d, .dst_offset = kSlotBytes, .bytes = 16}},
      {"more bytes than a slot", {.src = s, .dst = d, .bytes = kSlotBytes + 16}},
      {"offset that wraps around", {.src = s, .dst = d, .src_offset = UINT64_MAX - 15, .bytes = 32}},
      {"bytes that wrap around", {.src = s, .dst = d, .dst_offset = 32, .bytes = UINT64_MAX - 15}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    // The valid segment comes first: it must not be copied either.
    const Fence f = forward_->Submit({.segments = {valid, c.segment}, .wait_for = {}});
    EXPECT_TRUE(f.ready()) << "refused at submit, not later";
    const Status st = f.Wait();
    EXPECT_EQ(st.code(), StatusCode::kInvalidArgument) << st.ToString();
    EXPECT_TRUE(st.message().find("segment 1") != std::string_view::npos) << st.ToString();
  }
  // Drain: a later valid batch to another slot completes after anything queued before it.
  const CopySegment other{.src = s, .dst = dst_slots_[1], .src_offset = 0, .dst_offset = 0, .bytes = 16};
  ASSERT_TRUE(SubmitAndWait(*forward_, {other}).ok());
  EXPECT_TRUE(AllPoisoned(*dst_, d)) << "a refused batch moved bytes";
  const MoverStats st = forward_->stats();
  EXPECT_EQ(st.errors, cases.size());
  EXPECT_EQ(st.batches, 1u);
  EXPECT_EQ(st.bytes, 16u);
}

TEST_P(MemcpyMoverTest, CopyWaitsForEveryWaitForFence) {
  const CopySegment seg{.src = src_slots_[2], .dst = dst_slots_[2], .src_offset = 4096, .dst_offset = 8192,
                        .bytes = 65536};
  auto [producer, producer_done] = Fence::Make();
  auto [last_reader, reader_done] = Fence::Make();
  const Fence copied = forward_->Submit({.segments = {seg}, .wait_for = {producer, last_reader, Fence()}});
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(copied.ready());
  EXPECT_TRUE(AllPoisoned(*dst_, dst_slots_[2])) << "bytes moved before the producer signaled";
  producer_done.Signal(Status());
  std::this_thread::sleep_for(30ms);
  EXPECT_FALSE(copied.ready());
  EXPECT_TRUE(AllPoisoned(*dst_, dst_slots_[2])) << "bytes moved before the last reader signaled";
  // Signaled from another thread, as a real producer would.
  std::thread([s = std::move(reader_done)]() mutable { s.Signal(Status()); }).join();
  ASSERT_TRUE(copied.Wait().ok());
  ExpectLanded({seg}, *src_, *dst_, std::span(dst_slots_).subspan(2, 1));
}

TEST_P(MemcpyMoverTest, WaitingBatchDoesNotHoldUpLaterBatches) {
  const CopySegment blocked{.src = src_slots_[0], .dst = dst_slots_[0], .bytes = 4096};
  const CopySegment free_to_go{.src = src_slots_[1], .dst = dst_slots_[1], .bytes = 4096};
  auto [producer, producer_done] = Fence::Make();
  const Fence first = forward_->Submit({.segments = {blocked}, .wait_for = {producer}});
  ASSERT_TRUE(SubmitAndWait(*forward_, {free_to_go}).ok());
  EXPECT_FALSE(first.ready());
  EXPECT_TRUE(AllPoisoned(*dst_, dst_slots_[0]));
  producer_done.Signal(Status());
  ASSERT_TRUE(first.Wait().ok());
  ExpectLanded({blocked}, *src_, *dst_, std::span(dst_slots_).first(1));
}

TEST_P(MemcpyMoverTest, FailedWaitForFenceFailsTheBatchAndCopiesNothing) {
  const CopySegment seg{.src = src_slots_[4], .dst = dst_slots_[4], .bytes = kSlotBytes};
  // A fence that fails while the batch waits.
  {
    auto [producer, producer_done] = Fence::Make();
    auto [reader, reader_done] = Fence::Make();
    const Fence f = forward_->Submit({.segments = {seg}, .wait_for = {producer, reader}});
    producer_done.Signal(Status::IoError("producer's copy failed"));
    reader_done.Signal(Status());
    const Status st = f.Wait();
    EXPECT_EQ(st.code(), StatusCode::kIoError) << st.ToString();
    EXPECT_NE(st.message().find("producer's copy failed"), std::string_view::npos) << st.ToString();
  }
  // A fence that had failed before the submit.
  {
    const Fence f = forward_->Submit({.segments = {seg}, .wait_for = {Fence(), Fence::Failed(Status::DataLoss("x"))}});
    EXPECT_EQ(f.Wait().code(), StatusCode::kDataLoss);
  }
  // A producer that went away without signaling.
  {
    Fence f;
    {
      auto [producer, producer_done] = Fence::Make();
      f = forward_->Submit({.segments = {seg}, .wait_for = {producer}});
    }
    EXPECT_EQ(f.Wait().code(), StatusCode::kCancelled);
  }
  ASSERT_TRUE(SubmitAndWait(*forward_, {{.src = src_slots_[0], .dst = dst_slots_[0], .bytes = 16}}).ok());
  EXPECT_TRUE(AllPoisoned(*dst_, dst_slots_[4])) << "a batch whose fence failed copied bytes";
  const MoverStats st = forward_->stats();
  EXPECT_EQ(st.errors, 3u);
  EXPECT_EQ(st.batches, 1u);
  EXPECT_EQ(st.bytes, 16u);
}

TEST_P(MemcpyMoverTest, StatsCountBytesBatchesSegmentsAndErrors) {
  const MoverStats before = forward_->stats();
  EXPECT_EQ(before.bytes, 0u);
  EXPECT_EQ(before.batches, 0u);
  EXPECT_EQ(before.segments, 0u);
  EXPECT_EQ(before.errors, 0u);
  EXPECT_EQ(before.latency.total(), 0u);

  uint64_t bytes = 0, segments = 0;
  constexpr int kBatches = 12;
  for (int b = 0; b < kBatches; ++b) {
    std::vector<CopySegment> batch;
    const uint32_t n = 1 + static_cast<uint32_t>(rng_() % 5);
    for (uint32_t i = 0; i < n; ++i) {
      const uint64_t len = 16 * (1 + rng_() % 256);
      batch.push_back({.src = src_slots_[i], .dst = dst_slots_[i], .src_offset = 0, .dst_offset = 0, .bytes = len});
      bytes += len;
    }
    segments += n;
    ASSERT_TRUE(SubmitAndWait(*forward_, batch).ok());
  }
  EXPECT_FALSE(SubmitAndWait(*forward_, {{.src = src_slots_[0], .dst = dst_slots_[0], .bytes = 0}}).ok());
  EXPECT_FALSE(SubmitAndWait(*forward_, {{.src = src_slots_[0], .dst = dst_slots_[0], .bytes = 16}},
                             {Fence::Failed(Status::IoError("x"))})
                   .ok());

  const MoverStats st = forward_->stats();
  EXPECT_EQ(st.name, forward_->name());
  EXPECT_EQ(st.source, src_->kind());
  EXPECT_EQ(st.destination, dst_->kind());
  EXPECT_EQ(st.bytes, bytes);
  EXPECT_EQ(st.batches, uint64_t{kBatches});
  EXPECT_EQ(st.segments, segments);
  EXPECT_EQ(st.errors, 2u);
  EXPECT_EQ(st.latency.total(), uint64_t{kBatches});
  EXPECT_GT(st.busy_ns, 0u);
  EXPECT_GT(st.gbps(), 0.0);
  // The other direction's mover saw none of it.
  EXPECT_EQ(backward_->stats().batches, 0u);
}

TEST_P(MemcpyMoverTest, DestructionWaitsForOutstandingBatches) {
  const CopySegment seg{.src = src_slots_[5], .dst = dst_slots_[5], .bytes = kSlotBytes};
  auto [producer, producer_done] = Fence::Make();
  const Fence gated = forward_->Submit({.segments = {seg}, .wait_for = {producer}});
  // Queue a lot of work behind it as well.
  std::vector<Fence> bulk;
  for (uint32_t i = 6; i < kSlotCount; ++i) {
    bulk.push_back(forward_->Submit(
        {.segments = {{.src = src_slots_[i], .dst = dst_slots_[i], .bytes = kSlotBytes}}, .wait_for = {}}));
  }
  std::atomic<bool> destroyed{false};
  std::thread destroyer([&] {
    forward_.reset();
    destroyed.store(true);
  });
  std::this_thread::sleep_for(50ms);
  EXPECT_FALSE(destroyed.load()) << "the mover went away with a batch still waiting";
  EXPECT_FALSE(gated.ready());
  producer_done.Signal(Status());
  destroyer.join();
  EXPECT_TRUE(destroyed.load());
  ASSERT_TRUE(gated.ready());
  EXPECT_TRUE(gated.Wait().ok());
  for (const Fence& f : bulk) {
    ASSERT_TRUE(f.ready());
    EXPECT_TRUE(f.Wait().ok());
  }
  std::vector<CopySegment> all;
  for (uint32_t i = 5; i < kSlotCount; ++i) {
    all.push_back({.src = src_slots_[i], .dst = dst_slots_[i], .bytes = kSlotBytes});
  }
  ExpectLanded(all, *src_, *dst_, std::span(dst_slots_).subspan(5));
}

TEST_P(MemcpyMoverTest, ConcurrentSubmitsFromSeveralThreadsAllLand) {
  // Each thread owns 4 destination slots and copies pieces of random size and source into
  // quarter-slot lanes of them; every batch is checked as soon as its fence signals.
  constexpr int kThreads = 4;
  constexpr int kBatchesPerThread = 60;
  constexpr uint64_t kLane = kSlotBytes / 4;
  std::atomic<int> failures{0};
  auto worker = [&](int t) {
    std::mt19937_64 rng(seed_ + static_cast<uint64_t>(t));
    for (int b = 0; b < kBatchesPerThread; ++b) {
      const SlotId d = dst_slots_[static_cast<size_t>(t) * 4 + rng() % 4];
      const uint64_t bytes = 16 * (1 + rng() % (kLane / 16));
      const CopySegment seg{.src = src_slots_[rng() % kSlotCount], .dst = d,
                            .src_offset = 16 * (rng() % ((kSlotBytes - bytes) / 16 + 1)),
                            .dst_offset = (rng() % 4) * kLane, .bytes = bytes};
      if (!forward_->Submit({.segments = {seg}, .wait_for = {}}).Wait().ok()) failures.fetch_add(1);
      if (std::memcmp(Ptr(*dst_, seg.dst) + seg.dst_offset, Ptr(*src_, seg.src) + seg.src_offset, bytes) != 0) {
        failures.fetch_add(1);
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(forward_->stats().batches, uint64_t{kThreads * kBatchesPerThread});
  EXPECT_EQ(forward_->stats().errors, 0u);
}

TEST_P(MemcpyMoverTest, ManyBatchesInFlightFromSeveralThreadsAllLand) {
  // Every thread fills its own destination slots with many small segments submitted
  // without waiting; all fences are awaited at the end and the slots compared whole.
  constexpr int kThreads = 4;
  constexpr uint64_t kPiece = 4096;
  std::atomic<int> failures{0};
  auto worker = [&](int t) {
    std::vector<Fence> fences;
    for (uint32_t k = 0; k < 4; ++k) {
      const SlotId d = dst_slots_[static_cast<size_t>(t) * 4 + k];
      const SlotId s = src_slots_[static_cast<size_t>(t) * 4 + k];
      for (uint64_t off = 0; off < kSlotBytes; off += kPiece) {
        const CopySegment piece{.src = s, .dst = d, .src_offset = off, .dst_offset = off, .bytes = kPiece};
        fences.push_back(forward_->Submit({.segments = {piece}, .wait_for = {}}));
      }
    }
    for (const Fence& f : fences) {
      if (!f.Wait().ok()) failures.fetch_add(1);
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  for (auto& t : threads) t.join();
  EXPECT_EQ(failures.load(), 0);
  for (uint32_t i = 0; i < kSlotCount; ++i) {
    EXPECT_EQ(std::memcmp(Ptr(*dst_, dst_slots_[i]), Ptr(*src_, src_slots_[i]), kSlotBytes), 0) << "slot " << i;
  }
  EXPECT_EQ(forward_->stats().segments, kSlotCount * (kSlotBytes / kPiece));
}

// --- MemcpyMover::Create ----------------------------------------------------------------

TEST(MemcpyMoverCreateTest, RejectsNullSameTierAndBadThreadCounts) {
  auto a = EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 4});
  auto b = EmulatedHbmTier::Create({.slot_bytes = 4096, .slot_count = 4});
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(MemcpyMover::Create(nullptr, b->get(), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MemcpyMover::Create(a->get(), nullptr, {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MemcpyMover::Create(a->get(), a->get(), {}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MemcpyMover::Create(a->get(), b->get(), {.threads = 0}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(MemcpyMover::Create(a->get(), b->get(), {.threads = 257}).status().code(), StatusCode::kInvalidArgument);
  EXPECT_TRUE(MemcpyMover::Create(a->get(), b->get(), {.threads = 1}).ok());
}

}  // namespace
}  // namespace kvtier
