// Disk full, on a size-limited tmpfs mounted for the test (needs root; skipped otherwise):
// a slab that does not fit fails to open with kNoSpace (preallocation); on a full
// filesystem the index write fails with kNoSpace (or kIoError), the block is not published,
// further writes are refused with that status, blocks written before keep reading back
// byte-exact, and once space returns the index reopens and writes work again (also across
// a reopen of the tier).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <chrono>
#include <random>
#include <thread>
#include <vector>

#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

inline std::string DebugDf(const std::string& d) {
  std::string out;
  for (auto& e : std::filesystem::recursive_directory_iterator(d)) {
    if (e.is_regular_file()) out += e.path().string() + " " + std::to_string(e.file_size()) + "\n";
  }
  return out;
}

class SmallTmpfs {
 public:
  explicit SmallTmpfs(const std::string& dir, const char* size) : dir_(dir) {
    const std::string opts = std::string("size=") + size;
    if (::geteuid() != 0) {
      why_ = "not root: cannot mount a size-limited tmpfs";
    } else if (::mount("tmpfs", dir.c_str(), "tmpfs", 0, opts.c_str()) != 0) {
      why_ = std::string("mount tmpfs: ") + std::strerror(errno);
    } else {
      mounted_ = true;
    }
  }
  ~SmallTmpfs() {
    if (mounted_) (void)::umount2(dir_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& why() const { return why_; }

 private:
  std::string dir_;
  std::string why_;
  bool mounted_ = false;
};

TEST(NvmeDiskFull, ASlabThatDoesNotFitFailsToOpenWithNoSpace) {
  TempDir dir;
  SmallTmpfs fs(dir.str(), "2m");
  if (!fs.mounted()) GTEST_SKIP() << fs.why();
  auto tier = NvmeTier::Open({.dir = dir.str() + "/t", .slot_bytes = 8192, .slot_count = 1024, .mode = NvmeMode::kCache,
                              .direct_io = DirectIo::kPreferred, .logger = QuietNvmeLogger::Get()});
  ASSERT_FALSE(tier.ok());
  EXPECT_EQ(tier.status().code(), StatusCode::kNoSpace) << tier.status().ToString();
}

TEST(NvmeDiskFull, OnAFullFilesystemWritesSayNoSpaceReadsKeepWorkingAndWritesResume) {
  TempDir dir;
  SmallTmpfs fs(dir.str(), "8m");
  if (!fs.mounted()) GTEST_SKIP() << fs.why();
  constexpr uint64_t kBlock = 8192;
  auto rig = NvmeRig::Open(dir.str() + "/t", kBlock, 16, 128);  // ~2 MiB slab
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  const uint64_t base = std::random_device{}();
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 16; ++i) ids.push_back(base + i);
  auto before = rig->Write(ids);
  ASSERT_TRUE(before.ok()) << before.status().ToString();
  // Fill the filesystem.
  const std::string filler = dir.str() + "/filler";
  {
    const int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(1 << 12, 'x');
    while (::write(fd, junk.data(), junk.size()) > 0) {
    }
    EXPECT_EQ(errno, ENOSPC);
    ::close(fd);
  }
  // The slab is preallocated, so the slot writes succeed; the index's WAL runs out of space
  // (not at once: RocksDB preallocated WAL pages while there was room). Every failure is a clear kNoSpace
  // (or kIoError) and publishes nothing; no write aborts the process.
  size_t no_space = 0;
  uint64_t next = base + 1000;
  std::vector<uint64_t> failed_ids;
  for (int round = 0; round < 20000 && no_space < 3; ++round) {
    std::vector<uint64_t> more;
    for (uint64_t i = 0; i < 16; ++i) more.push_back(next++);
    auto w = rig->Write(more);
    if (w.ok()) {  // the WAL's last page had room (or a reopen found some): free the slots
      rig->nvme->Release(*w, Fence());
      continue;
    }
    EXPECT_TRUE(w.status().code() == StatusCode::kNoSpace || w.status().code() == StatusCode::kIoError)
        << w.status().ToString();
    ++no_space;
    failed_ids.insert(failed_ids.end(), more.begin(), more.end());
    std::this_thread::sleep_for(nvme::kReopenInterval + std::chrono::milliseconds(20));  // a reopen is tried, and fails
  }
  ASSERT_GT(no_space, 0u) << "the index never ran out of space; " << DebugDf(dir.str());
  // A block whose write failed was not published.
  for (uint64_t id : failed_ids) EXPECT_FALSE(rig->nvme->Find(KeyOf(id)).ok()) << "block " << id << " was published";
  // Reads keep working: every block written before the disk filled is served byte-exact.
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    ASSERT_TRUE(rig->ReadAndCheck((*before)[i], ids[i], 0, &match).ok());
    EXPECT_TRUE(match);
  }
  // Space returns: after the reopen interval the next write reopens the index and succeeds.
  ASSERT_EQ(::unlink(filler.c_str()), 0);
  std::this_thread::sleep_for(nvme::kReopenInterval + std::chrono::milliseconds(20));
  std::vector<uint64_t> after_ids;
  for (uint64_t i = 0; i < 16; ++i) after_ids.push_back(next++);
  auto after = rig->Write(after_ids, 3);
  ASSERT_TRUE(after.ok()) << after.status().ToString();
  EXPECT_GE(rig->nvme->stats().index_reopens, 1u);
  for (size_t i = 0; i < after_ids.size(); ++i) {
    bool match = false;
    ASSERT_TRUE(rig->ReadAndCheck((*after)[i], after_ids[i], 3, &match).ok());
    EXPECT_TRUE(match);
    EXPECT_TRUE(rig->nvme->Find(KeyOf(after_ids[i])).ok());
  }
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    ASSERT_TRUE(rig->ReadAndCheck((*before)[i], ids[i], 0, &match).ok());
    EXPECT_TRUE(match);
  }
  RecordProperty("writes_no_space", static_cast<int>(no_space));
}

// After the disk filled and space returned, a reopened tier still holds every block that
// was published (before the disk filled and after it was freed).
TEST(NvmeDiskFull, BlocksPublishedAroundADiskFullSurviveAReopen) {
  TempDir dir;
  SmallTmpfs fs(dir.str(), "8m");
  if (!fs.mounted()) GTEST_SKIP() << fs.why();
  constexpr uint64_t kBlock = 8192;
  const uint64_t base = std::random_device{}();
  std::vector<uint64_t> ids;
  for (uint64_t i = 0; i < 8; ++i) ids.push_back(base + i);
  const std::string filler = dir.str() + "/filler";
  std::vector<uint64_t> later;
  {
    auto rig = NvmeRig::Open(dir.str() + "/t", kBlock, 16, 128);
    ASSERT_TRUE(rig.ok()) << rig.status().ToString();
    ASSERT_TRUE(rig->Write(ids).ok());
    const int fd = ::open(filler.c_str(), O_WRONLY | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(1 << 12, 'x');
    while (::write(fd, junk.data(), junk.size()) > 0) {
    }
    ::close(fd);
    uint64_t next = base + 100;
    bool failed = false;
    for (int round = 0; round < 20000 && !failed; ++round) {
      std::vector<uint64_t> more;
      for (uint64_t i = 0; i < 16; ++i) more.push_back(next++);
      auto w = rig->Write(more);
      failed = !w.ok();
      if (w.ok()) rig->nvme->Release(*w, Fence());
    }
    ASSERT_TRUE(failed);
    ASSERT_EQ(::unlink(filler.c_str()), 0);
    std::this_thread::sleep_for(nvme::kReopenInterval + std::chrono::milliseconds(20));
    for (uint64_t i = 0; i < 8; ++i) later.push_back(next++);
    ASSERT_TRUE(rig->Write(later, 0).ok());
  }
  auto rig = NvmeRig::Open(dir.str() + "/t", kBlock, 16, 128);
  ASSERT_TRUE(rig.ok()) << rig.status().ToString();
  for (const std::vector<uint64_t>* set : {&ids, &later}) {
    for (uint64_t id : *set) {
      auto slot = rig->nvme->Find(KeyOf(id));
      ASSERT_TRUE(slot.ok()) << slot.status().ToString();
      bool match = false;
      ASSERT_TRUE(rig->ReadAndCheck(*slot, id, 0, &match).ok());
      EXPECT_TRUE(match) << "block " << id;
    }
  }
}

}  // namespace
}  // namespace kvtier::testing
