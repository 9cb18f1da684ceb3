// LookupAsync beside "inference": results, completion fences, cancellation from either
// side, and handles that outlive or are dropped before their lookup.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>

#include "query_store/query_store.h"
#include "query_store_testing.h"

namespace kvtier {
namespace {

using testing::MakeEntry;
using testing::RandomUnit;
using testing::SmallOptions;
using testing::TempDir;

constexpr uint32_t kDim = 64;

class QueryStoreAsyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto s = QueryStore::Open(SmallOptions(dir_.path(), kDim));
    ASSERT_TRUE(s.ok()) << s.status().ToString();
    store_ = std::move(s).value();
    std::vector<QueryEntry> es;
    for (uint64_t i = 0; i < 1500; ++i) es.push_back(MakeEntry(i, kDim));
    ASSERT_TRUE(store_->Ingest(es).ok());
  }
  LookupOptions Opts() const {
    LookupOptions o;
    o.threshold = 0.95f;
    return o;
  }
  TempDir dir_;
  std::unique_ptr<QueryStore> store_;
};

TEST_F(QueryStoreAsyncTest, AsyncLookupReturnsWhatTheSyncLookupReturns) {
  LookupHandle h = store_->LookupAsync(RandomUnit(kDim, 42), Opts());
  auto r = h.Wait();
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ASSERT_TRUE(r->hit());
  EXPECT_EQ(r->matches[0].id, "q42");
  EXPECT_TRUE(h.ready());
  EXPECT_EQ(h.Wait().status().code(), StatusCode::kFailedPrecondition);  // taken once
}

TEST_F(QueryStoreAsyncTest, CancelledTokenStopsTheLookupWithoutCountingAHit) {
  CancelSource inference_done;
  inference_done.Cancel();  // inference finished first
  LookupHandle h = store_->LookupAsync(RandomUnit(kDim, 42), Opts(), inference_done.token());
  EXPECT_EQ(h.Wait().status().code(), StatusCode::kCancelled);
  const QueryStoreStats st = store_->Stats();
  EXPECT_EQ(st.hits, 0u);
  EXPECT_EQ(st.cancelled, 1u);
  EXPECT_EQ(store_->Get("q42")->hit_count, 0u);
}

TEST_F(QueryStoreAsyncTest, AHitStopsInferenceThroughTheFence) {
  CancelSource stop_inference;
  std::atomic<int> steps{0};
  std::thread inference([&] {  // a stand-in for decoding: runs until told to stop (or 5 s)
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!stop_inference.cancelled() && std::chrono::steady_clock::now() < deadline) {
      steps.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  });
  LookupHandle h = store_->LookupAsync(RandomUnit(kDim, 7), Opts());
  h.fence().OnReady([&](const Status& s) {
    if (s.ok()) stop_inference.Cancel();  // hit or miss decided; the engine checks which
  });
  auto r = h.Wait();
  inference.join();
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(r->hit());
  EXPECT_TRUE(stop_inference.cancelled());
  EXPECT_LT(steps.load(), 4000);  // stopped well before the 5 s deadline
}

TEST_F(QueryStoreAsyncTest, HandleCancelAndDropCompleteEveryQueuedLookup) {
  std::vector<LookupHandle> handles;
  LookupOptions exact = Opts();
  exact.mode = SearchMode::kExact;  // slow enough for a queue to build up on one thread
  // Far more queued work than the cancel loop below takes, so some are still queued.
  for (uint64_t i = 0; i < 1000; ++i) handles.push_back(store_->LookupAsync(RandomUnit(kDim, i % 1500), exact));
  for (auto& h : handles) h.Cancel();
  int ok = 0, cancelled = 0;
  for (auto& h : handles) {
    auto r = h.Wait();
    if (r.ok()) ++ok;
    else if (r.status().code() == StatusCode::kCancelled) ++cancelled;
    else ADD_FAILURE() << r.status().ToString();
  }
  EXPECT_EQ(ok + cancelled, 1000);
  EXPECT_GT(cancelled, 0);
  { LookupHandle dropped = store_->LookupAsync(RandomUnit(kDim, 3), Opts()); }  // cancels and waits
  SUCCEED();
}

TEST_F(QueryStoreAsyncTest, CloseFinishesPendingLookupsAndLaterOnesFail) {
  std::vector<LookupHandle> handles;
  for (uint64_t i = 0; i < 50; ++i) handles.push_back(store_->LookupAsync(RandomUnit(kDim, i), Opts()));
  ASSERT_TRUE(store_->Close().ok());
  for (auto& h : handles) {
    EXPECT_TRUE(h.ready());
    auto r = h.Wait();
    EXPECT_TRUE(r.ok() || r.status().code() == StatusCode::kCancelled) << r.status().ToString();
  }
  LookupHandle late = store_->LookupAsync(RandomUnit(kDim, 1), Opts());
  EXPECT_EQ(late.Wait().status().code(), StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace kvtier
