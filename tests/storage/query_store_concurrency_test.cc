// Concurrent lookups, ingests and erases on one store: no errors, every acknowledged and
// not erased entry is found afterwards, and the data and index agree (Verify).
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "query_store/query_store.h"
#include "query_store_testing.h"

namespace kvtier {
namespace {

using testing::MakeEntry;
using testing::RandomUnit;
using testing::SmallOptions;
using testing::TempDir;

constexpr uint32_t kDim = 48;

TEST(QueryStoreConcurrencyTest, LookupsIngestsAndErasesRunTogether) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path(), kDim);
  o.exact_search_max_entries = 256;  // cross from exact to ANN search while running
  o.durability = Durability::kBuffered;
  o.index_save_every = 1500;         // saves happen under load too
  o.lookup_threads = 2;
  auto opened = QueryStore::Open(o);
  ASSERT_TRUE(opened.ok()) << opened.status().ToString();
  QueryStore& store = **opened;

  constexpr uint64_t kPerWriter = 2000;
  std::atomic<uint64_t> written[2] = {0, 0};  // per writer: entries acknowledged
  std::atomic<bool> writers_done{false};
  std::atomic<uint64_t> lookups{0}, errors{0};
  std::vector<std::thread> threads;
  for (int w = 0; w < 2; ++w) {
    threads.emplace_back([&, w] {
      const uint64_t base = uint64_t(w) * 1'000'000;
      for (uint64_t i = 0; i < kPerWriter; i += 50) {
        std::vector<QueryEntry> batch;
        for (uint64_t k = i; k < i + 50; ++k) batch.push_back(MakeEntry(base + k, kDim));
        if (!store.Ingest(batch).ok()) errors.fetch_add(1);
        written[w].store(i + 50, std::memory_order_release);
      }
    });
  }
  for (int r = 0; r < 2; ++r) {
    threads.emplace_back([&, r] {
      uint64_t seed = r;
      while (!writers_done.load(std::memory_order_acquire)) {
        const int w = static_cast<int>(seed % 2);
        const uint64_t n = written[w].load(std::memory_order_acquire);
        if (n == 0) continue;
        const uint64_t id = uint64_t(w) * 1'000'000 + (seed * 7919) % n;
        ++seed;
        if (r == 1 && seed % 2 == 0) {  // the async path as well
          LookupHandle h = store.LookupAsync(RandomUnit(kDim, id), LookupOptions{.threshold = 0.99f});
          if (!h.Wait().ok()) errors.fetch_add(1);
        } else {
          auto res = store.Lookup(RandomUnit(kDim, id), LookupOptions{.threshold = 0.99f});
          if (!res.ok()) errors.fetch_add(1);
          // An acknowledged entry is found unless the eraser took it (ids ending in 7).
          else if (!res->hit() && id % 10 != 7) errors.fetch_add(1);
        }
        lookups.fetch_add(1);
      }
    });
  }
  std::thread eraser([&] {
    uint64_t next = 7;
    while (!writers_done.load(std::memory_order_acquire)) {
      if (next < written[0].load(std::memory_order_acquire)) {
        Status s = store.Erase("q" + std::to_string(next));
        if (!s.ok()) errors.fetch_add(1);
        next += 10;
      } else {
        std::this_thread::yield();
      }
    }
  });
  threads[0].join();
  threads[1].join();
  writers_done.store(true, std::memory_order_release);
  for (size_t i = 2; i < threads.size(); ++i) threads[i].join();
  eraser.join();

  EXPECT_EQ(errors.load(), 0u);
  EXPECT_GT(lookups.load(), 100u);
  ASSERT_TRUE(store.Verify().ok()) << store.Verify().ToString();
  const uint64_t erased = store.Stats().erased;
  EXPECT_EQ(store.Stats().entries, 2 * kPerWriter - erased);
  for (uint64_t k = 0; k < kPerWriter; k += 13) {
    auto r = store.Lookup(RandomUnit(kDim, 1'000'000 + k), LookupOptions{.threshold = 0.99f});
    ASSERT_TRUE(r.ok());
    EXPECT_TRUE(r->hit()) << k;
  }
}

}  // namespace
}  // namespace kvtier
