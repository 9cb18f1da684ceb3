// QueryStore: round trips, thresholds, deduplication, replace/erase, persistence across
// reopen, and the ANN index being loaded, caught up or rebuilt as the files demand.
#include "query_store/query_store.h"

#include <gtest/gtest.h>

#include <fstream>

#include "query_store_testing.h"

namespace kvtier {
namespace {

using testing::MakeEntry;
using testing::Near;
using testing::RandomUnit;
using testing::SmallOptions;
using testing::TempDir;

constexpr uint32_t kDim = 32;

std::unique_ptr<QueryStore> OpenOrDie(const QueryStoreOptions& o) {
  auto s = QueryStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

std::vector<QueryEntry> Entries(uint64_t first, uint64_t count, uint32_t dim = kDim) {
  std::vector<QueryEntry> v;
  for (uint64_t i = first; i < first + count; ++i) v.push_back(MakeEntry(i, dim));
  return v;
}

LookupOptions Threshold(float t, uint32_t k = 1) {
  LookupOptions o;
  o.threshold = t;
  o.k = k;
  return o;
}

TEST(QueryStoreTest, IngestedEntryRoundTripsThroughGetAndLookup) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  QueryEntry e = MakeEntry(7, kDim);
  e.prefix.tokens = {1, 2, 3, 4};
  ChainHash c;
  c.bytes[0] = 0xAB;
  e.prefix.chain = c;
  for (float& x : e.embedding) x *= 3.0f;  // any norm: stored normalised
  auto r = store->Ingest(std::span(&e, 1));
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)[0].outcome, IngestOutcome::kInserted);

  auto got = store->Get("q7");
  ASSERT_TRUE(got.ok()) << got.status().ToString();
  EXPECT_EQ(got->entry.query, e.query);
  EXPECT_EQ(got->entry.response, e.response);
  EXPECT_EQ(got->entry.source, e.source);
  EXPECT_EQ(got->entry.prefix.tokens, e.prefix.tokens);
  EXPECT_EQ(got->entry.prefix.chain, e.prefix.chain);
  EXPECT_NEAR(got->embedding_norm, 3.0f, 1e-4f);
  EXPECT_NEAR(got->entry.embedding[0] * 3.0f, e.embedding[0], 1e-5f);

  auto hit = store->Lookup(e.embedding, Threshold(0.99f));
  ASSERT_TRUE(hit.ok());
  ASSERT_TRUE(hit->hit());
  EXPECT_EQ(hit->matches[0].id, "q7");
  EXPECT_EQ(hit->matches[0].response, e.response);
  EXPECT_NEAR(hit->matches[0].similarity, 1.0f, 1e-3f);  // the graph keeps halves
  EXPECT_EQ(store->Get("q7")->hit_count, 1u);
}

TEST(QueryStoreTest, ThresholdSeparatesHitsFromMisses) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  ASSERT_TRUE(store->Ingest(Entries(0, 50)).ok());
  const std::vector<float> close = Near(RandomUnit(kDim, 10), 0.3f, 99);  // similarity ~0.96
  auto r = store->Lookup(close, Threshold(0.9f));
  ASSERT_TRUE(r.ok());
  ASSERT_TRUE(r->hit());
  EXPECT_EQ(r->matches[0].id, "q10");
  EXPECT_GT(r->matches[0].similarity, 0.9f);
  auto strict = store->Lookup(close, Threshold(0.995f));
  ASSERT_TRUE(strict.ok());
  EXPECT_FALSE(strict->hit());
  auto unrelated = store->Lookup(RandomUnit(kDim, 123456), Threshold(0.9f));
  ASSERT_TRUE(unrelated.ok());
  EXPECT_FALSE(unrelated->hit());
  const QueryStoreStats st = store->Stats();
  EXPECT_EQ(st.hits, 1u);
  EXPECT_EQ(st.misses, 2u);
}

TEST(QueryStoreTest, TopKIsOrderedBestFirstAndCutAtTheThreshold) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  const std::vector<float> base = RandomUnit(kDim, 5);
  std::vector<QueryEntry> es;
  for (int i = 0; i < 4; ++i) {
    QueryEntry e = MakeEntry(100 + i, kDim);
    e.embedding = Near(base, 0.2f + 0.3f * i, 1000 + i);  // decreasing similarity to base
    es.push_back(e);
  }
  ASSERT_TRUE(store->Ingest(es).ok());
  auto r = store->Lookup(base, Threshold(0.5f, 3));
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->matches.size(), 3u);
  EXPECT_EQ(r->matches[0].id, "q100");
  EXPECT_GE(r->matches[0].similarity, r->matches[1].similarity);
  EXPECT_GE(r->matches[1].similarity, r->matches[2].similarity);
}

TEST(QueryStoreTest, NearCopiesAreDeduplicatedAndCounted) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  ASSERT_TRUE(store->Ingest(Entries(0, 20)).ok());
  QueryEntry copy = MakeEntry(500, kDim);
  copy.embedding = Near(RandomUnit(kDim, 3), 0.05f, 7);  // similarity ~0.999 to q3
  QueryEntry twin_a = MakeEntry(501, kDim), twin_b = MakeEntry(502, kDim);
  twin_b.embedding = Near(twin_a.embedding, 0.05f, 8);  // near-copies inside one batch
  QueryEntry fresh = MakeEntry(503, kDim);
  std::vector<QueryEntry> batch = {copy, twin_a, twin_b, fresh};
  auto r = store->Ingest(batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ((*r)[0].outcome, IngestOutcome::kDuplicate);
  EXPECT_EQ((*r)[0].duplicate_of, "q3");
  EXPECT_GE((*r)[0].similarity, 0.99f);
  EXPECT_EQ((*r)[1].outcome, IngestOutcome::kInserted);
  EXPECT_EQ((*r)[2].outcome, IngestOutcome::kDuplicate);
  EXPECT_EQ((*r)[2].duplicate_of, "q501");
  EXPECT_EQ((*r)[3].outcome, IngestOutcome::kInserted);
  EXPECT_EQ(store->Get("q500").status().code(), StatusCode::kNotFound);
  const QueryStoreStats st = store->Stats();
  EXPECT_EQ(st.entries, 22u);
  EXPECT_EQ(st.duplicates, 2u);
  EXPECT_EQ(st.duplicates_total, 2u);
}

TEST(QueryStoreTest, DeduplicationCanBeDisabled) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  o.dedup_threshold = 2.0f;
  auto store = OpenOrDie(o);
  QueryEntry a = MakeEntry(1, kDim), b = MakeEntry(2, kDim);
  b.embedding = a.embedding;
  std::vector<QueryEntry> batch = {a, b};
  auto r = store->Ingest(batch);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[1].outcome, IngestOutcome::kInserted);
  EXPECT_EQ(store->Stats().entries, 2u);
}

TEST(QueryStoreTest, SameIdReplacesTheEntryAndTheLaterCopyInABatchWins) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  ASSERT_TRUE(store->Ingest(Entries(0, 5)).ok());
  QueryEntry v2 = MakeEntry(2, kDim);
  v2.response = "new answer";
  v2.embedding = RandomUnit(kDim, 777);
  auto r = store->Ingest(std::span(&v2, 1));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((*r)[0].outcome, IngestOutcome::kReplaced);
  EXPECT_EQ(store->Get("q2")->entry.response, "new answer");
  auto old = store->Lookup(RandomUnit(kDim, 2), Threshold(0.99f));
  ASSERT_TRUE(old.ok());
  EXPECT_FALSE(old->hit());  // the old embedding is gone from the index
  EXPECT_EQ(store->Lookup(v2.embedding, Threshold(0.99f))->matches.at(0).id, "q2");

  QueryEntry x1 = MakeEntry(9, kDim), x2 = MakeEntry(9, kDim);
  x2.response = "second";
  x2.embedding = RandomUnit(kDim, 888);
  std::vector<QueryEntry> batch = {x1, x2};
  auto rb = store->Ingest(batch);
  ASSERT_TRUE(rb.ok());
  EXPECT_EQ((*rb)[0].outcome, IngestOutcome::kDuplicate);
  EXPECT_EQ((*rb)[1].outcome, IngestOutcome::kInserted);
  EXPECT_EQ(store->Get("q9")->entry.response, "second");
  EXPECT_EQ(store->Stats().entries, 6u);
  EXPECT_TRUE(store->Verify().ok()) << store->Verify().ToString();
}

TEST(QueryStoreTest, EraseRemovesFromDataAndIndex) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  ASSERT_TRUE(store->Ingest(Entries(0, 10)).ok());
  ASSERT_TRUE(store->Erase("q4").ok());
  EXPECT_EQ(store->Erase("q4").code(), StatusCode::kNotFound);
  EXPECT_EQ(store->Get("q4").status().code(), StatusCode::kNotFound);
  EXPECT_FALSE(store->Lookup(RandomUnit(kDim, 4), Threshold(0.99f))->hit());
  EXPECT_EQ(store->Stats().entries, 9u);
  EXPECT_TRUE(store->Verify().ok());
}

TEST(QueryStoreTest, InvalidEntriesAreRejectedWithNothingStored) {
  TempDir dir;
  auto store = OpenOrDie(SmallOptions(dir.path()));
  std::vector<QueryEntry> batch = Entries(0, 3);
  batch[1].embedding[5] = std::nanf("");
  auto r = store->Ingest(batch);
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("entry 1"), std::string_view::npos) << r.status().ToString();
  batch = Entries(0, 3);
  batch[2].embedding.pop_back();
  EXPECT_EQ(store->Ingest(batch).status().code(), StatusCode::kInvalidArgument);
  batch = Entries(0, 3);
  batch[0].id.clear();
  EXPECT_EQ(store->Ingest(batch).status().code(), StatusCode::kInvalidArgument);
  batch = Entries(0, 3);
  std::fill(batch[0].embedding.begin(), batch[0].embedding.end(), 0.0f);
  EXPECT_EQ(store->Ingest(batch).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Stats().entries, 0u);
  EXPECT_EQ(store->Lookup(std::vector<float>(kDim + 1, 1.0f), Threshold(0.5f)).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(store->Lookup(RandomUnit(kDim, 1), Threshold(1.5f)).status().code(), StatusCode::kInvalidArgument);
}

TEST(QueryStoreTest, OptionsAreValidatedAtOpen) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  o.dim = 0;
  EXPECT_EQ(QueryStore::Open(o).status().code(), StatusCode::kInvalidArgument);  // creating needs a dim
  o = SmallOptions(dir.path());
  o.hnsw_m = 1;
  EXPECT_EQ(QueryStore::Open(o).status().code(), StatusCode::kInvalidArgument);
  o = SmallOptions(dir.path() / "absent");
  o.mode = OpenMode::kOpenExisting;
  EXPECT_EQ(QueryStore::Open(o).status().code(), StatusCode::kNotFound);
}

TEST(QueryStoreTest, EntriesAndDimensionPersistAcrossReopenWithTheIndexLoaded) {
  TempDir dir;
  {
    auto store = OpenOrDie(SmallOptions(dir.path()));
    ASSERT_TRUE(store->Ingest(Entries(0, 300)).ok());
    ASSERT_TRUE(store->Lookup(RandomUnit(kDim, 1), Threshold(0.99f))->hit());
    ASSERT_TRUE(store->Close().ok());
    EXPECT_EQ(store->Close().code(), StatusCode::kFailedPrecondition);
  }
  QueryStoreOptions o = SmallOptions(dir.path(), 0);  // dim 0: take the stored one
  o.mode = OpenMode::kOpenExisting;
  o.exact_search_max_entries = 0;  // force the ANN path
  auto store = OpenOrDie(o);
  EXPECT_EQ(store->dim(), kDim);
  const QueryStoreStats st = store->Stats();
  EXPECT_EQ(st.entries, 300u);
  EXPECT_EQ(st.index_origin, QueryStoreStats::IndexOrigin::kLoaded);
  EXPECT_EQ(store->Get("q1")->hit_count, 1u);  // hit counts persist
  for (uint64_t i = 0; i < 300; i += 17) {
    auto r = store->Lookup(RandomUnit(kDim, i), Threshold(0.99f));
    ASSERT_TRUE(r.ok());
    ASSERT_TRUE(r->hit()) << i;
    EXPECT_FALSE(r->exact);
    EXPECT_EQ(r->matches[0].id, "q" + std::to_string(i));
  }
  EXPECT_TRUE(store->Verify().ok()) << store->Verify().ToString();
  store.reset();
  QueryStoreOptions other = SmallOptions(dir.path(), kDim + 1);
  EXPECT_EQ(QueryStore::Open(other).status().code(), StatusCode::kInvalidArgument);
}

TEST(QueryStoreTest, StaleSavedIndexIsCaughtUpAtOpen) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  o.save_index_on_close = false;  // as if killed: the saved index stays stale
  {
    auto store = OpenOrDie(o);
    ASSERT_TRUE(store->Ingest(Entries(0, 100)).ok());
    ASSERT_TRUE(store->SaveIndex().ok());
    ASSERT_TRUE(store->Ingest(Entries(100, 50)).ok());  // after the save
    ASSERT_TRUE(store->Erase("q5").ok());               // erased after the save
    QueryEntry v2 = MakeEntry(6, kDim);
    v2.embedding = RandomUnit(kDim, 4242);
    ASSERT_TRUE(store->Ingest(std::span(&v2, 1)).ok());  // replaced after the save
  }
  auto store = OpenOrDie(o);
  const QueryStoreStats st = store->Stats();
  EXPECT_EQ(st.entries, 149u);
  EXPECT_EQ(st.index_origin, QueryStoreStats::IndexOrigin::kCaughtUp) << st.index_origin_reason;
  EXPECT_TRUE(store->Verify().ok()) << store->Verify().ToString();
  EXPECT_FALSE(store->Lookup(RandomUnit(kDim, 5), Threshold(0.99f))->hit());
  EXPECT_FALSE(store->Lookup(RandomUnit(kDim, 6), Threshold(0.99f))->hit());
  EXPECT_EQ(store->Lookup(RandomUnit(kDim, 4242), Threshold(0.99f))->matches.at(0).id, "q6");
  EXPECT_EQ(store->Lookup(RandomUnit(kDim, 140), Threshold(0.99f))->matches.at(0).id, "q140");
}

TEST(QueryStoreTest, IndexSavedBeforeLaterWritesIsCaughtUpNotRebuilt) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  o.save_index_on_close = false;
  {
    auto store = OpenOrDie(o);
    ASSERT_TRUE(store->Ingest(Entries(0, 100)).ok());
    ASSERT_TRUE(store->SaveIndex().ok());
    ASSERT_TRUE(store->Ingest(Entries(100, 40)).ok());
    ASSERT_TRUE(store->Erase("q7").ok());
  }
  auto store = OpenOrDie(o);
  const QueryStoreStats st = store->Stats();
  EXPECT_EQ(st.index_origin, QueryStoreStats::IndexOrigin::kCaughtUp) << st.index_origin_reason;
  EXPECT_EQ(st.index_caught_up, 41u);  // 40 added, 1 removed
  EXPECT_TRUE(store->Verify().ok()) << store->Verify().ToString();
}

void CorruptFile(const std::filesystem::path& p, size_t offset) {
  std::fstream f(p, std::ios::in | std::ios::out | std::ios::binary);
  f.seekg(static_cast<std::streamoff>(offset));
  char c = 0;
  f.get(c);
  f.seekp(static_cast<std::streamoff>(offset));
  f.put(static_cast<char>(c ^ 0x10));
}

std::filesystem::path Payload(const std::filesystem::path& dir) {
  for (const auto& f : std::filesystem::directory_iterator(dir / "ann")) {
    if (f.path().filename().string().starts_with("hnsw-")) return f.path();
  }
  return {};
}

TEST(QueryStoreTest, MissingOrCorruptIndexIsRebuiltFromTheData) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  { ASSERT_TRUE(OpenOrDie(o)->Ingest(Entries(0, 120)).ok()); }

  CorruptFile(Payload(dir.path()), 200);  // a bit flip inside the payload
  {
    auto store = OpenOrDie(o);
    EXPECT_EQ(store->Stats().index_origin, QueryStoreStats::IndexOrigin::kRebuilt);
    EXPECT_NE(store->Stats().index_origin_reason.find("checksum"), std::string::npos) << store->Stats().index_origin_reason;
    EXPECT_TRUE(store->Verify().ok());
  }
  CorruptFile(dir.path() / "ann" / "INDEX", 5);  // a bit flip in the manifest
  {
    auto store = OpenOrDie(o);
    EXPECT_EQ(store->Stats().index_origin, QueryStoreStats::IndexOrigin::kRebuilt);
    EXPECT_TRUE(store->Verify().ok());
  }
  std::filesystem::remove_all(dir.path() / "ann");
  std::filesystem::create_directories(dir.path() / "ann");
  auto store = OpenOrDie(o);
  EXPECT_EQ(store->Stats().index_origin, QueryStoreStats::IndexOrigin::kRebuilt);
  EXPECT_EQ(store->Lookup(RandomUnit(kDim, 77), Threshold(0.99f))->matches.at(0).id, "q77");
  EXPECT_TRUE(store->Verify().ok());
}

TEST(QueryStoreTest, ApproximateAndExactSearchAgreeOnStoredEntries) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path(), 64);
  o.exact_search_max_entries = 0;
  auto store = OpenOrDie(o);
  for (uint64_t b = 0; b < 3000; b += 500) ASSERT_TRUE(store->Ingest(Entries(b, 500, 64)).ok());
  LookupOptions approx = Threshold(-1.0f);
  LookupOptions exact = approx;
  exact.mode = SearchMode::kExact;
  int agree = 0;
  for (uint64_t q = 0; q < 200; ++q) {
    const std::vector<float> v = Near(RandomUnit(64, q * 13), 0.4f, q);
    auto a = store->Lookup(v, approx);
    auto e = store->Lookup(v, exact);
    ASSERT_TRUE(a.ok() && e.ok());
    EXPECT_TRUE(e->exact);
    agree += a->matches.at(0).id == e->matches.at(0).id ? 1 : 0;
  }
  EXPECT_GE(agree, 196);  // recall@1 >= 0.98 on this easy set
}

TEST(QueryStoreTest, PeriodicIndexSaveKeepsTheManifestCurrent) {
  TempDir dir;
  QueryStoreOptions o = SmallOptions(dir.path());
  o.index_save_every = 100;
  o.save_index_on_close = false;
  {
    auto store = OpenOrDie(o);
    for (uint64_t b = 0; b < 250; b += 50) ASSERT_TRUE(store->Ingest(Entries(b, 50)).ok());
    EXPECT_EQ(store->Stats().index_saves, 2u);
  }
  auto store = OpenOrDie(o);
  EXPECT_EQ(store->Stats().index_origin, QueryStoreStats::IndexOrigin::kCaughtUp);
  EXPECT_EQ(store->Stats().index_caught_up, 50u);
  EXPECT_TRUE(store->Verify().ok());
}

}  // namespace
}  // namespace kvtier
