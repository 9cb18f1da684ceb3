// UringQueue and the file helpers against a real file in the temp directory (O_DIRECT when
// the filesystem allows it): round trips with random data, short transfers resubmitted,
// errors converted, a full queue refused without blocking; vectored requests (readv/writev)
// put their pieces at the right file offsets and finish short transfers across pieces.
#include <gtest/gtest.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <vector>

#include "file.h"
#include "uring_queue.h"

namespace kvtier {
namespace {

class UringQueueTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}();
    RecordProperty("seed", std::to_string(seed_));
    dir_ = std::filesystem::temp_directory_path() / ("kvtier_uring_" + std::to_string(::getpid()) + "_" + std::to_string(seed_));
    std::filesystem::create_directories(dir_);
    auto f = OpenForBlockIo((dir_ / "f").string(), DirectIo::kPreferred, nullptr);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    file_ = std::move(f).value();
    ASSERT_TRUE(Preallocate(file_.fd.get(), kFileBytes).ok());
    auto b = AlignedBuffer::Allocate(2 * kFileBytes);
    ASSERT_TRUE(b.ok());
    buf_ = std::move(b).value();
    std::mt19937_64 rng(seed_);
    for (size_t i = 0; i < kFileBytes; i += 8) {
      const uint64_t w = rng();
      std::memcpy(buf_.data() + i, &w, 8);
    }
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Writes the first half of buf_ to the file and reads it back into the second half.
  void RoundTrip(UringQueue& q, int buffer_index) {
    constexpr uint32_t kChunk = 16384;
    std::vector<Status> results(2 * kFileBytes / kChunk);
    auto run = [&](IoOp op, std::byte* base) {
      for (uint32_t i = 0; i < kFileBytes / kChunk; ++i) {
        IoRequest r{op, file_.fd.get(), uint64_t{i} * kChunk, base + uint64_t{i} * kChunk, kChunk, buffer_index, i};
        while (true) {
          Status s = q.Prep(r);
          if (s.ok()) break;
          ASSERT_EQ(s.code(), StatusCode::kUnavailable);
          ASSERT_TRUE(q.Submit().ok());
          ASSERT_TRUE(q.Reap(1, [&](uint64_t tag, Status st) { results[tag] = st; }).ok());
        }
      }
      ASSERT_TRUE(q.Submit().ok());
      while (q.in_flight() > 0) ASSERT_TRUE(q.Reap(1, [&](uint64_t tag, Status st) { results[tag] = st; }).ok());
    };
    run(IoOp::kWrite, buf_.data());
    for (const Status& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
    run(IoOp::kRead, buf_.data() + kFileBytes);
    for (const Status& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
    EXPECT_EQ(std::memcmp(buf_.data(), buf_.data() + kFileBytes, kFileBytes), 0);
  }

  static constexpr size_t kFileBytes = 1 << 20;
  uint32_t seed_ = 0;
  std::filesystem::path dir_;
  OpenedFile file_;
  AlignedBuffer buf_;
};

TEST_F(UringQueueTest, RandomBytesRoundTripThroughRegisteredBuffers) {
  auto q = UringQueue::Create({.queue_depth = 8});
  ASSERT_TRUE(q.ok()) << q.status().ToString();
  iovec iov{buf_.data(), buf_.size()};
  ASSERT_TRUE(q->RegisterBuffers({&iov, 1}).ok());
  RoundTrip(*q, 0);
  EXPECT_EQ(q->counters().errors, 0u);
}

TEST_F(UringQueueTest, ShortTransfersAreResubmittedForTheRemainder) {
  auto q = UringQueue::Create({.queue_depth = 4});
  ASSERT_TRUE(q.ok());
  // Every first completion of a request reports half its length: the queue must finish the
  // rest (the data would be wrong otherwise, the second half never written or read).
  int shorts = 0;
  q->set_fault([&](const IoRequest& r, int res) {
    if (res > 0 && r.length == 16384 && (shorts++ % 2) == 0) return res / 2;
    return res;
  });
  RoundTrip(*q, -1);
  EXPECT_GT(q->counters().short_resubmits, 0u);
}

TEST_F(UringQueueTest, NegativeResultsBecomeStatusesAndTheQueueKeepsWorking) {
  auto q = UringQueue::Create({.queue_depth = 4});
  ASSERT_TRUE(q.ok());
  q->set_fault([](const IoRequest& r, int res) { return r.tag == 1 ? -EIO : r.tag == 2 ? -ENOSPC : res; });
  std::vector<Status> st(3);
  for (uint64_t t = 0; t < 3; ++t) {
    ASSERT_TRUE(q->Prep({IoOp::kWrite, file_.fd.get(), t * 4096, buf_.data() + t * 4096, 4096, -1, t}).ok());
  }
  ASSERT_TRUE(q->Submit().ok());
  while (q->in_flight() > 0) ASSERT_TRUE(q->Reap(1, [&](uint64_t tag, Status s) { st[tag] = s; }).ok());
  EXPECT_TRUE(st[0].ok());
  EXPECT_EQ(st[1].code(), StatusCode::kIoError);
  EXPECT_EQ(st[2].code(), StatusCode::kNoSpace);
  EXPECT_EQ(q->counters().errors, 2u);
  q->set_fault(nullptr);
  RoundTrip(*q, -1);
}

// Each 16 KiB chunk c of the file is written with one writev of two pieces, the chunk's last
// 4 KiB of buf_ first, then its first 12 KiB (so a piece put at the wrong offset shows), and
// read back with one readv of the same shape. `cut(tag, length)` may shorten a first
// completion (0: leave it); the caller's iovec array is scribbled over right after Prep.
void VectoredRoundTrip(UringQueue& q, std::byte* src, std::byte* dst, int fd, size_t bytes,
                       const std::function<uint32_t(uint64_t, uint32_t)>& cut) {
  constexpr uint32_t kChunk = 16384, kHead = 4096;
  std::vector<Status> results(bytes / kChunk);
  std::vector<bool> cut_once(bytes / kChunk, false);
  q.set_fault([&](const IoRequest& r, int res) {
    if (res != static_cast<int>(r.length) || r.length != kChunk || cut_once[r.tag]) return res;
    cut_once[r.tag] = true;
    const uint32_t n = cut(r.tag, r.length);
    return n == 0 ? res : static_cast<int>(n);
  });
  auto run = [&](IoOp op, std::byte* base) {
    std::fill(cut_once.begin(), cut_once.end(), false);
    for (uint32_t i = 0; i < bytes / kChunk; ++i) {
      std::byte* chunk = base + uint64_t{i} * kChunk;
      iovec iov[2] = {{chunk + kChunk - kHead, kHead}, {chunk, kChunk - kHead}};
      IoRequest r{.op = op, .fd = fd, .offset = uint64_t{i} * kChunk, .tag = i, .iov = iov};
      while (true) {
        Status s = q.Prep(r);
        if (s.ok()) break;
        ASSERT_EQ(s.code(), StatusCode::kUnavailable);
        ASSERT_TRUE(q.Submit().ok());
        ASSERT_TRUE(q.Reap(1, [&](uint64_t tag, Status st) { results[tag] = st; }).ok());
      }
      iov[0] = iov[1] = iovec{nullptr, 0};  // the queue keeps its own copy
    }
    ASSERT_TRUE(q.Submit().ok());
    while (q.in_flight() > 0) ASSERT_TRUE(q.Reap(1, [&](uint64_t tag, Status st) { results[tag] = st; }).ok());
  };
  run(IoOp::kWritev, src);
  for (const Status& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
  run(IoOp::kReadv, dst);
  for (const Status& s : results) ASSERT_TRUE(s.ok()) << s.ToString();
  q.set_fault(nullptr);
  EXPECT_EQ(std::memcmp(src, dst, bytes), 0) << "readv did not return what writev wrote";
  // The file itself, read plainly: chunk c holds src's last 4 KiB of c, then its first 12 KiB.
  for (uint32_t i = 0; i < bytes / kChunk; ++i) {
    ASSERT_TRUE(q.Prep({IoOp::kRead, fd, uint64_t{i} * kChunk, dst + uint64_t{i} * kChunk, kChunk, -1, i}).ok());
    ASSERT_TRUE(q.Submit().ok());
    while (q.in_flight() > 0) ASSERT_TRUE(q.Reap(1, [&](uint64_t, Status st) { ASSERT_TRUE(st.ok()); }).ok());
    const std::byte* c = src + uint64_t{i} * kChunk;
    const std::byte* f = dst + uint64_t{i} * kChunk;
    ASSERT_EQ(std::memcmp(f, c + kChunk - kHead, kHead), 0) << "chunk " << i << ": first piece misplaced";
    ASSERT_EQ(std::memcmp(f + kHead, c, kChunk - kHead), 0) << "chunk " << i << ": second piece misplaced";
  }
}

TEST_F(UringQueueTest, VectoredPiecesLandAtTheirFileOffsets) {
  auto q = UringQueue::Create({.queue_depth = 8});
  ASSERT_TRUE(q.ok());
  constexpr size_t kBytes = kFileBytes / 2;
  VectoredRoundTrip(*q, buf_.data(), buf_.data() + kFileBytes, file_.fd.get(), kBytes,
                    [](uint64_t, uint32_t) { return 0u; });
  EXPECT_EQ(q->counters().short_resubmits, 0u);
  EXPECT_EQ(q->counters().errors, 0u);
}

TEST_F(UringQueueTest, ShortVectoredTransfersAreResubmittedAcrossThePieces) {
  auto q = UringQueue::Create({.queue_depth = 8});
  ASSERT_TRUE(q.ok());
  // Cut inside the first piece, exactly at its end, and inside the second (multiples of 512,
  // so the remainder stays valid for O_DIRECT).
  constexpr uint32_t kCuts[] = {2048, 4096, 4096 + 4608};
  constexpr size_t kBytes = kFileBytes / 2;
  VectoredRoundTrip(*q, buf_.data(), buf_.data() + kFileBytes, file_.fd.get(), kBytes,
                    [&](uint64_t tag, uint32_t) { return kCuts[tag % 3]; });
  EXPECT_EQ(q->counters().short_resubmits, 2 * kBytes / 16384);  // every request, both directions
  EXPECT_EQ(q->counters().errors, 0u);
}

TEST_F(UringQueueTest, VectoredErrorsBecomeStatusesAndBadPieceCountsAreRefused) {
  auto q = UringQueue::Create({.queue_depth = 4});
  ASSERT_TRUE(q.ok());
  iovec none[1] = {};
  iovec too_many[kMaxIovecs + 1] = {};
  for (auto& v : too_many) v = {buf_.data(), 4096};
  EXPECT_EQ(q->Prep({.op = IoOp::kWritev, .fd = file_.fd.get(), .iov = std::span<const iovec>(none, 0)}).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(q->Prep({.op = IoOp::kWritev, .fd = file_.fd.get(), .iov = too_many}).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(q->in_flight(), 0u);
  q->set_fault([](const IoRequest& r, int res) { return r.tag == 1 ? -EIO : res; });
  Status st[2];
  for (uint64_t t = 0; t < 2; ++t) {
    iovec iov[2] = {{buf_.data(), 4096}, {buf_.data() + 8192, 8192}};
    ASSERT_TRUE(q->Prep({.op = t == 0 ? IoOp::kWritev : IoOp::kReadv, .fd = file_.fd.get(), .offset = t * 65536,
                         .tag = t, .iov = iov}).ok());
  }
  ASSERT_TRUE(q->Submit().ok());
  while (q->in_flight() > 0) ASSERT_TRUE(q->Reap(1, [&](uint64_t tag, Status s) { st[tag] = s; }).ok());
  EXPECT_TRUE(st[0].ok()) << st[0].ToString();
  EXPECT_EQ(st[1].code(), StatusCode::kIoError);
  EXPECT_NE(st[1].message().find("readv"), std::string::npos) << st[1].ToString();
  EXPECT_EQ(q->counters().errors, 1u);
}

TEST_F(UringQueueTest, FullQueueRefusesWithoutBlocking) {
  auto q = UringQueue::Create({.queue_depth = 2});
  ASSERT_TRUE(q.ok());
  for (uint64_t t = 0; t < 2; ++t) ASSERT_TRUE(q->Prep({IoOp::kRead, file_.fd.get(), 0, buf_.data(), 4096, -1, t}).ok());
  EXPECT_EQ(q->Prep({IoOp::kRead, file_.fd.get(), 0, buf_.data(), 4096, -1, 9}).code(), StatusCode::kUnavailable);
  ASSERT_TRUE(q->Submit().ok());
  uint32_t done = 0;
  while (q->in_flight() > 0) done += q->Reap(1, [](uint64_t, Status s) { EXPECT_TRUE(s.ok()); }).value();
  EXPECT_EQ(done, 2u);
}

TEST(DirectIoPolicy, RequiredFailsWhereO_DirectIsRefusedAndPreferredFallsBackCounted) {
  // /dev/shm is tmpfs on Linux, which refuses O_DIRECT with EINVAL.
  const std::string path = "/dev/shm/kvtier_direct_" + std::to_string(::getpid());
  if (!std::filesystem::exists("/dev/shm")) GTEST_SKIP() << "no /dev/shm";
  auto probe = OpenForBlockIo(path, DirectIo::kRequired, nullptr);
  if (probe.ok()) {
    std::filesystem::remove(path);
    GTEST_SKIP() << "/dev/shm accepts O_DIRECT on this kernel";
  }
  EXPECT_EQ(probe.status().code(), StatusCode::kInvalidArgument);
  const uint64_t before = DirectIoFallbacks();
  auto f = OpenForBlockIo(path, DirectIo::kPreferred, nullptr);
  ASSERT_TRUE(f.ok());
  EXPECT_FALSE(f->direct);
  EXPECT_EQ(DirectIoFallbacks(), before + 1);
  auto off = OpenForBlockIo(path, DirectIo::kOff, nullptr);
  ASSERT_TRUE(off.ok());
  EXPECT_EQ(DirectIoFallbacks(), before + 1);  // kOff is a choice, not a fallback
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace kvtier

namespace kvtier {
namespace {

// Reap stops after max_complete completions and leaves the rest in the completion queue for
// the next call (the caller submits the work those completions freed first).
TEST_F(UringQueueTest, ReapStopsAfterMaxCompleteAndKeepsTheRestForTheNextCall) {
  auto q = UringQueue::Create({.queue_depth = 8});
  ASSERT_TRUE(q.ok());
  for (uint64_t t = 0; t < 8; ++t) {
    ASSERT_TRUE(q->Prep({IoOp::kRead, file_.fd.get(), t * 4096, buf_.data() + t * 4096, 4096, -1, t}).ok());
  }
  ASSERT_TRUE(q->Submit().ok());
  std::vector<int> seen(8, 0);
  auto done = [&](uint64_t tag, Status s) {
    EXPECT_TRUE(s.ok()) << s.ToString();
    ++seen[tag];
  };
  uint32_t total = 0;
  while (q->in_flight() > 0) {
    const uint32_t n = q->Reap(1, done, 3).value();
    EXPECT_GE(n, 1u);
    EXPECT_LE(n, 3u);  // the old Reap handled every ready completion in one call
    total += n;
  }
  EXPECT_EQ(total, 8u);
  for (int c : seen) EXPECT_EQ(c, 1);
  EXPECT_EQ(q->counters().completed, 8u);
  EXPECT_GE(q->counters().reap_calls, 3u);
  EXPECT_GE(q->counters().submit_calls, 1u);
}

// PreallocateWrittenZeroes either makes the whole range zeroed, allocated and of the asked
// size (where the kernel, filesystem and device offer FALLOC_FL_WRITE_ZEROES), or says it is
// not offered and leaves the file untouched; either way the data written before is gone or
// kept, never half.
TEST(Preallocation, WrittenZeroesEitherZeroesTheRangeOrLeavesTheFileUntouched) {
  const auto dir = std::filesystem::temp_directory_path() / ("kvtier_wz_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto f = OpenForBlockIo((dir / "f").string(), DirectIo::kOff, nullptr);
  ASSERT_TRUE(f.ok()) << f.status().ToString();
  const int fd = f->fd.get();
  std::vector<char> junk(8192);
  std::mt19937_64 rng(std::random_device{}());
  for (char& c : junk) c = static_cast<char>(rng() | 1);  // never zero
  ASSERT_EQ(::pwrite(fd, junk.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
  constexpr uint64_t kBytes = 1 << 20;
  auto done = PreallocateWrittenZeroes(fd, kBytes);
  ASSERT_TRUE(done.ok()) << done.status().ToString();
  std::vector<char> back(kBytes);
  if (*done) {
    EXPECT_EQ(std::filesystem::file_size(dir / "f"), kBytes);
    ASSERT_EQ(::pread(fd, back.data(), back.size(), 0), static_cast<ssize_t>(kBytes));
    EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](char c) { return c == 0; }));
  } else {
    EXPECT_EQ(std::filesystem::file_size(dir / "f"), junk.size()) << "a refused FALLOC_FL_WRITE_ZEROES changed the file";
    ASSERT_EQ(::pread(fd, back.data(), junk.size(), 0), static_cast<ssize_t>(junk.size()));
    EXPECT_EQ(std::memcmp(back.data(), junk.data(), junk.size()), 0);
    // ... and plain preallocation still works.
    EXPECT_TRUE(Preallocate(fd, kBytes).ok());
    EXPECT_EQ(std::filesystem::file_size(dir / "f"), kBytes);
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace kvtier
