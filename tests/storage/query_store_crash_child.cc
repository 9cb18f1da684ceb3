// The process the kill-during-ingest test SIGKILLs: ingests entries e<first>, e<first+1>,
// ... in batches of random size, and after each acknowledged Ingest prints the number of
// the next entry (everything below it is acknowledged) on stdout, flushed, one per line.
// Usage: query_store_crash_child DIR FIRST SEED sync|buffered SAVE_EVERY
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>

#include "query_store/query_store.h"
#include "query_store_crash_oracle.h"

int main(int argc, char** argv) {
  if (argc != 6) {
    std::fprintf(stderr, "usage: %s DIR FIRST SEED sync|buffered SAVE_EVERY\n", argv[0]);
    return 2;
  }
  kvtier::QueryStoreOptions o;
  o.dir = argv[1];
  o.dim = kvtier::testing::kCrashDim;
  o.durability = std::string(argv[4]) == "sync" ? kvtier::Durability::kSync : kvtier::Durability::kBuffered;
  o.index_save_every = std::strtoull(argv[5], nullptr, 10);
  o.write_buffer_bytes = 1 << 20;
  auto store = kvtier::QueryStore::Open(o);
  if (!store.ok()) {
    std::fprintf(stderr, "child: open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  uint64_t next = std::strtoull(argv[2], nullptr, 10);
  std::mt19937_64 rng(std::strtoull(argv[3], nullptr, 10));
  for (;;) {
    std::vector<kvtier::QueryEntry> batch;
    const uint64_t n = 1 + rng() % 32;
    for (uint64_t i = 0; i < n; ++i) batch.push_back(kvtier::testing::CrashEntry(next + i));
    auto r = (*store)->Ingest(batch);
    if (!r.ok()) {
      std::fprintf(stderr, "child: ingest: %s\n", r.status().ToString().c_str());
      return 1;
    }
    next += n;
    std::printf("%llu\n", static_cast<unsigned long long>(next));
    std::fflush(stdout);
  }
}
