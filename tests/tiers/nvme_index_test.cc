// NvmeIndex on its own: its vector memtable keeps RocksDB's semantics (last write of a key
// wins, deletes hide, the counter round-trips) while the entries live in the memtable, after
// a reopen (WAL replayed and flushed into a table file) and across both; and an unsynced
// (cache-mode) write acknowledged before a SIGKILL is still there after the reopen (the WAL
// stays on in cache mode: a process crash loses no index entry).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <random>

#include "nvme_index.h"
#include "tiers/nvme_testing.h"

namespace kvtier::testing {
namespace {

using nvme::IndexRecord;
using nvme::IndexSync;
using nvme::NvmeIndex;

BlockKey Key(uint32_t i) {
  BlockKey k;
  uint64_t z = (i + 1) * 0x9E3779B97F4A7C15ull;
  for (size_t w = 0; w < 4; ++w) {
    z ^= z >> 29;
    z *= 0xBF58476D1CE4E5B9ull;
    std::memcpy(k.chain.bytes.data() + 8 * w, &z, 8);
  }
  k.layer = LayerId{i % 3};
  return k;
}

using Oracle = std::map<BlockKey, IndexRecord>;

void ExpectMatches(const NvmeIndex& index, const Oracle& want, const char* when) {
  uint64_t bad = 0;
  auto all = index.LoadAll(&bad);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  EXPECT_EQ(bad, 0u) << when;
  ASSERT_EQ(all->size(), want.size()) << when;
  for (const IndexRecord& r : *all) {
    auto it = want.find(r.key);
    ASSERT_NE(it, want.end()) << when << ": " << r.key.ToString() << " should be gone";
    EXPECT_EQ(r.slot, it->second.slot) << when;
    EXPECT_EQ(r.generation, it->second.generation) << when;
    EXPECT_EQ(r.checksum, it->second.checksum) << when;
    EXPECT_EQ(r.payload_bytes, it->second.payload_bytes) << when;
  }
}

// Rounds of 16-record batches overwriting 1500 keys, every 7th key of a round deleted.
void WriteRounds(NvmeIndex& index, Oracle& want, uint32_t rounds, uint64_t* generation, std::mt19937_64& rng) {
  for (uint32_t round = 0; round < rounds; ++round) {
    std::vector<IndexRecord> batch;
    for (uint32_t i = 0; i < 1500; ++i) {
      IndexRecord r{Key(i), SlotId{static_cast<uint32_t>(rng() % 4096)}, ++*generation, rng(), 4096 + rng() % 60000};
      batch.push_back(r);
      want[r.key] = r;
      if (batch.size() == 16) {
        ASSERT_TRUE(index.Put(batch, IndexSync::kNone).ok());
        batch.clear();
      }
    }
    ASSERT_TRUE(index.Put(batch, IndexSync::kNone).ok());
    std::vector<BlockKey> gone;
    for (uint32_t i = round; i < 1500; i += 7) {
      gone.push_back(Key(i));
      want.erase(Key(i));
    }
    ASSERT_TRUE(index.Delete(gone, IndexSync::kNone).ok());
  }
}

TEST(NvmeIndex, OverwritesDeletesAndTheCounterHoldInTheMemtableAndAcrossReopens) {
  TempDir dir;
  const std::string path = dir.str() + "/index";
  Oracle want;
  uint64_t generation = 0;
  std::mt19937_64 rng(7);
  {
    auto index = NvmeIndex::Open(path);
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    WriteRounds(**index, want, 4, &generation, rng);
    ExpectMatches(**index, want, "memtable only");
    ASSERT_TRUE((*index)->PutCounter(1234, IndexSync::kNone).ok());
    ASSERT_TRUE((*index)->PutCounter(5678, IndexSync::kNone).ok());
    EXPECT_EQ((*index)->GetCounter().value(), 5678u);
  }
  {
    auto index = NvmeIndex::Open(path);  // replays the WAL
    ASSERT_TRUE(index.ok()) << index.status().ToString();
    ExpectMatches(**index, want, "after the first reopen");
    EXPECT_EQ((*index)->GetCounter().value(), 5678u);
    WriteRounds(**index, want, 3, &generation, rng);  // now in the memtable over older table entries
    ExpectMatches(**index, want, "table file + memtable");
    ASSERT_TRUE((*index)->PutCounter(91011, IndexSync::kSync).ok());
  }
  auto index = NvmeIndex::Open(path);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  ExpectMatches(**index, want, "after the second reopen");
  EXPECT_EQ((*index)->GetCounter().value(), 91011u);
}

TEST(NvmeIndex, UnsyncedWritesAcknowledgedBeforeASigkillSurviveTheReopen) {
  TempDir dir;
  const std::string path = dir.str() + "/index";
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    ::close(fds[0]);
    auto index = NvmeIndex::Open(path);
    if (!index.ok()) ::_exit(3);
    for (uint32_t i = 0;; ++i) {
      const IndexRecord r{Key(i), SlotId{i}, i + 1, i * 31ull, 4096};
      if (!(*index)->Put({&r, 1}, IndexSync::kNone).ok()) ::_exit(4);
      if (::write(fds[1], &i, sizeof(i)) != sizeof(i)) ::_exit(5);  // acknowledged
    }
  }
  ::close(fds[1]);
  uint32_t acked = 0, got = 0;
  bool any = false;
  while (got < 3000 && ::read(fds[0], &acked, sizeof(acked)) == sizeof(acked)) {
    any = true;
    ++got;
  }
  ASSERT_EQ(::kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ::close(fds[0]);
  ASSERT_TRUE(any) << "the child acknowledged nothing (exit status " << status << ")";
  ASSERT_TRUE(WIFSIGNALED(status)) << "the child exited on its own: " << status;
  auto index = NvmeIndex::Open(path);
  ASSERT_TRUE(index.ok()) << index.status().ToString();
  uint64_t bad = 0;
  auto all = index->get()->LoadAll(&bad);
  ASSERT_TRUE(all.ok()) << all.status().ToString();
  std::map<BlockKey, IndexRecord> found;
  for (const IndexRecord& r : *all) found[r.key] = r;
  for (uint32_t i = 0; i <= acked; ++i) {
    auto it = found.find(Key(i));
    ASSERT_NE(it, found.end()) << "acknowledged entry " << i << " of " << acked << " lost by a process crash";
    EXPECT_EQ(it->second.slot, SlotId{i});
    EXPECT_EQ(it->second.generation, i + 1);
  }
}

}  // namespace
}  // namespace kvtier::testing
