// Kill during ingest, with an oracle: a child process ingests and reports each
// acknowledged prefix through a pipe; it is SIGKILLed at a random moment; the store is
// reopened and must hold exactly the entries e0..e(m-1) for some m >= the acknowledged
// count (a prefix, no holes, nothing acknowledged lost), each byte-exact, with the ANN
// index matching the data (Verify). Cycles alternate sync and buffered durability (a
// process kill loses nothing in either: the WAL is in the page cache) and periodic index
// saves, so reopening exercises loading, catching up and replacing the index.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>

#include "query_store_crash_oracle.h"

namespace kvtier {
namespace {

using testing::CrashEntry;
using testing::kCrashDim;
using testing::TempDir;

struct Child {
  pid_t pid = -1;
  int out = -1;  // read end of its stdout
};

Child Spawn(const std::string& dir, uint64_t first, uint64_t seed, const char* durability, uint64_t save_every) {
  int fds[2];
  if (::pipe(fds) != 0) return {};
  const std::string a_first = std::to_string(first), a_seed = std::to_string(seed), a_save = std::to_string(save_every);
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::dup2(fds[1], STDOUT_FILENO);
    ::close(fds[0]);
    ::close(fds[1]);
    ::execl(KVTIER_QS_CRASH_CHILD, KVTIER_QS_CRASH_CHILD, dir.c_str(), a_first.c_str(), a_seed.c_str(), durability,
            a_save.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  ::close(fds[1]);
  ::fcntl(fds[0], F_SETFL, O_NONBLOCK);
  return Child{pid, fds[0]};
}

// Reads every complete line the child wrote; returns the last acknowledged count.
uint64_t Drain(int fd, std::string& buf, uint64_t acked) {
  char tmp[4096];
  for (;;) {
    const ssize_t n = ::read(fd, tmp, sizeof(tmp));
    if (n <= 0) break;
    buf.append(tmp, static_cast<size_t>(n));
  }
  size_t nl;
  while ((nl = buf.find('\n')) != std::string::npos) {
    acked = std::stoull(buf.substr(0, nl));
    buf.erase(0, nl + 1);
  }
  return acked;
}

int Cycles() {
  const char* env = std::getenv("KVTIER_QS_CRASH_CYCLES");  // the nightly run asks for more
  return env ? std::atoi(env) : 8;
}

TEST(QueryStoreCrashTest, KilledIngestLeavesAVerifiedPrefixOfTheAcknowledgedEntries) {
  TempDir dir;
  std::mt19937_64 rng(20261127);
  uint64_t present = 0;  // entries e0..e(present-1) are in the store
  const int cycles = Cycles();
  for (int cycle = 0; cycle < cycles; ++cycle) {
    if (cycle > 0 && cycle % 25 == 0) {  // long runs start over now and then: checks stay cheap
      std::filesystem::remove_all(dir.path());
      std::filesystem::create_directories(dir.path());
      present = 0;
    }
    const char* durability = cycle % 2 == 0 ? "sync" : "buffered";
    const uint64_t save_every = cycle % 3 == 0 ? 0 : 64 + rng() % 256;
    Child c = Spawn(dir.path().string(), present, rng(), durability, save_every);
    ASSERT_GT(c.pid, 0);
    std::string buf;
    uint64_t acked = present;
    // Let it ingest for a random while (at least one acknowledgement), then kill it.
    const auto kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(50 + rng() % 600);
    const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while ((std::chrono::steady_clock::now() < kill_at || acked == present) && std::chrono::steady_clock::now() < give_up) {
      acked = Drain(c.out, buf, acked);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    ::kill(c.pid, SIGKILL);
    int status = 0;
    ::waitpid(c.pid, &status, 0);
    acked = Drain(c.out, buf, acked);
    ::close(c.out);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the child exited on its own (status " << status << ")";
    ASSERT_GT(acked, present) << "cycle " << cycle << ": nothing was acknowledged";

    QueryStoreOptions o;
    o.dir = dir.path();
    o.mode = OpenMode::kOpenExisting;
    o.write_buffer_bytes = 1 << 20;
    o.save_index_on_close = cycle % 2 == 0;  // sometimes leave the child a stale index
    auto store = QueryStore::Open(o);
    ASSERT_TRUE(store.ok()) << "cycle " << cycle << ": " << store.status().ToString();
    ASSERT_TRUE((*store)->Verify().ok()) << "cycle " << cycle << ": " << (*store)->Verify().ToString();
    const uint64_t m = (*store)->Stats().entries;
    EXPECT_GE(m, acked) << "cycle " << cycle << " (" << durability << "): acknowledged entries were lost";
    EXPECT_LE(m, acked + 32) << "more entries than were ever written";
    for (uint64_t i = 0; i < m + 2; ++i) {  // exactly e0..e(m-1): a prefix, no holes
      auto got = (*store)->Get("e" + std::to_string(i));
      if (i >= m) {
        EXPECT_EQ(got.status().code(), StatusCode::kNotFound) << "e" << i << " lies beyond the prefix";
        continue;
      }
      ASSERT_TRUE(got.ok()) << "cycle " << cycle << ": hole at e" << i << ": " << got.status().ToString();
      const QueryEntry want = CrashEntry(i);
      ASSERT_EQ(got->entry.response, want.response) << "e" << i;
      ASSERT_EQ(got->entry.query, want.query) << "e" << i;
      for (uint32_t k = 0; k < kCrashDim; ++k) ASSERT_NEAR(got->entry.embedding[k], want.embedding[k], 1e-6f);
    }
    auto hit = (*store)->Lookup(CrashEntry(m - 1).embedding, LookupOptions{.threshold = 0.999f});
    ASSERT_TRUE(hit.ok() && hit->hit());
    EXPECT_EQ(hit->matches[0].id, "e" + std::to_string(m - 1));
    present = m;
  }
}

}  // namespace
}  // namespace kvtier
