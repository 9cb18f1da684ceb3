// Disk full: on a size-limited tmpfs, ingest fails with kNoSpace (a clear error), nothing
// of the failed batch is stored, the store stays readable (and read-only) until it is
// reopened; once space is freed and it is reopened, every acknowledged entry is there,
// verifies, and writes work again.
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <fstream>

#include "query_store/query_store.h"
#include "query_store_testing.h"

namespace kvtier {
namespace {

using testing::RandomUnit;
using testing::TempDir;

constexpr uint32_t kDim = 128;

class TmpfsMount {
 public:
  explicit TmpfsMount(const std::filesystem::path& at, const char* size) : at_(at) {
    std::filesystem::create_directories(at_);
    const std::string opts = std::string("size=") + size;
    if (::mount("tmpfs", at_.c_str(), "tmpfs", 0, opts.c_str()) == 0) {
      mounted_ = true;
    } else {
      error_ = std::strerror(errno);
    }
  }
  ~TmpfsMount() {
    if (mounted_) ::umount2(at_.c_str(), MNT_DETACH);
  }
  bool mounted() const { return mounted_; }
  const std::string& error() const { return error_; }

 private:
  std::filesystem::path at_;
  bool mounted_ = false;
  std::string error_;
};

QueryEntry BigEntry(uint64_t i) {
  QueryEntry e = testing::MakeEntry(i, kDim);
  e.embedding = RandomUnit(kDim, i);
  e.response.assign(16 << 10, static_cast<char>('a' + i % 26));  // compressible, but large
  for (size_t k = 0; k < e.response.size(); k += 7) e.response[k] = static_cast<char>('0' + (i * k) % 10);
  return e;
}

uint64_t FreeBytes(const std::filesystem::path& p) {
  struct statvfs st {};
  return ::statvfs(p.c_str(), &st) == 0 ? uint64_t(st.f_bavail) * st.f_frsize : 0;
}

TEST(QueryStoreDiskFullTest, FullDiskIsACleanErrorAndTheStoreStaysReadable) {
  TempDir outer;
  const std::filesystem::path mnt = outer.path() / "small";
  TmpfsMount fs(mnt, "48m");
  if (!fs.mounted()) GTEST_SKIP() << "cannot mount a size-limited tmpfs here (" << fs.error() << "): needs root/CAP_SYS_ADMIN";

  QueryStoreOptions o;
  o.dir = mnt / "store";
  o.dim = kDim;
  o.write_buffer_bytes = 1 << 20;
  o.block_cache_bytes = 1 << 20;
  auto store = QueryStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  // Leave about 6 MiB free, then write until it runs out.
  {
    std::ofstream filler(mnt / "filler", std::ios::binary);
    const std::string chunk(1 << 20, 'x');
    while (FreeBytes(mnt) > (6u << 20)) filler.write(chunk.data(), chunk.size());
  }
  uint64_t acked = 0;
  Status failure;
  for (uint64_t round = 0; round < 400 && failure.ok(); ++round) {
    std::vector<QueryEntry> batch;
    for (uint64_t i = 0; i < 16; ++i) batch.push_back(BigEntry(acked + i));
    auto r = (*store)->Ingest(batch);
    if (r.ok()) {
      acked += batch.size();
    } else {
      failure = r.status();
    }
  }
  ASSERT_FALSE(failure.ok()) << "the disk never filled";
  EXPECT_EQ(failure.code(), StatusCode::kNoSpace) << failure.ToString();
  ASSERT_GT(acked, 0u);
  // Readable: every acknowledged entry is served; the failed batch left nothing behind.
  EXPECT_EQ((*store)->Stats().entries, acked);
  for (uint64_t i = 0; i < acked; i += 7) {
    auto got = (*store)->Get("q" + std::to_string(i));
    ASSERT_TRUE(got.ok()) << got.status().ToString();
    EXPECT_EQ(got->entry.response, BigEntry(i).response);
  }
  EXPECT_EQ((*store)->Get("q" + std::to_string(acked)).status().code(), StatusCode::kNotFound);
  auto hit = (*store)->Lookup(RandomUnit(kDim, 0), LookupOptions{.threshold = 0.99f});
  ASSERT_TRUE(hit.ok()) << hit.status().ToString();
  EXPECT_TRUE(hit->hit());

  // Read-only until reopened: later writes fail the same way, without touching the disk.
  std::vector<QueryEntry> more = {BigEntry(100000)};
  EXPECT_EQ((*store)->Ingest(more).status().code(), StatusCode::kNoSpace);
  EXPECT_EQ((*store)->Erase("q0").code(), StatusCode::kNoSpace);
  // Closing reports RocksDB's complaint about the WAL it could not sync, and closes.
  Status closed = (*store)->Close();
  EXPECT_TRUE(closed.ok() || closed.code() == StatusCode::kIoError || closed.code() == StatusCode::kNoSpace)
      << closed.ToString();

  // Space comes back: reopened, every acknowledged entry is there, verified, and the
  // store takes writes again.
  std::filesystem::remove(mnt / "filler");
  store = QueryStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->Stats().entries, acked);
  EXPECT_TRUE((*store)->Verify().ok()) << (*store)->Verify().ToString();
  auto again = (*store)->Ingest(more);
  EXPECT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ((*store)->Stats().entries, acked + 1);
}

}  // namespace
}  // namespace kvtier
