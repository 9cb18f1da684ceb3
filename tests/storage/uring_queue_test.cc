// UringQueue and the file helpers against a real file in the temp directory (O_DIRECT when
// the filesystem allows it): round trips with random data, short transfers resubmitted,
// errors converted, a full queue refused without blocking.
#include <gtest/gtest.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
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
