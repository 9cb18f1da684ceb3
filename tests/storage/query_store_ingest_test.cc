// Ingest's one-search-per-entry path: the insert's own neighbour search (made before the
// write) is what deduplication reads and what the sequential insert links from. Checked on
// stores big enough for the HNSW path, with sequential (index_threads = 1, the default) and
// parallel inserts: near-copies are caught against an exact oracle, the graph finds what an
// exact scan finds, sequential inserts are deterministic, and a stale plan is not used.
#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <set>

#include "query_store/ann_index.h"
#include "query_store/query_store.h"
#include "query_store/vector_math.h"
#include "query_store_testing.h"

namespace kvtier {
namespace {

using testing::MakeEntry;
using testing::Near;
using testing::RandomUnit;
using testing::SmallOptions;
using testing::TempDir;

constexpr uint32_t kDim = 48;

std::unique_ptr<QueryStore> OpenOrDie(const QueryStoreOptions& o) {
  auto s = QueryStore::Open(o);
  EXPECT_TRUE(s.ok()) << s.status().ToString();
  return s.ok() ? std::move(s).value() : nullptr;
}

// Entries of a few tight clusters, so that a graph search has real neighbours to find.
QueryEntry Clustered(uint64_t i) {
  QueryEntry e = MakeEntry(i, kDim);
  e.embedding = Near(RandomUnit(kDim, 1000 + i % 40), 0.9f, i);
  return e;
}

std::vector<QueryEntry> ClusteredEntries(uint64_t first, uint64_t count) {
  std::vector<QueryEntry> v;
  for (uint64_t i = first; i < first + count; ++i) v.push_back(Clustered(i));
  return v;
}

QueryStoreOptions HnswOptions(const std::filesystem::path& dir, uint32_t threads) {
  QueryStoreOptions o = SmallOptions(dir, kDim);
  o.exact_search_max_entries = 0;  // the HNSW path from the first entry on
  o.index_threads = threads;
  return o;
}

class IngestSearchTest : public ::testing::TestWithParam<uint32_t> {};

// Probes at similarities around the threshold to stored entries: each one whose best exact
// similarity clears 0.99 (with a margin for the half-precision graph vectors) is a
// duplicate, each one clearly below is stored.
TEST_P(IngestSearchTest, NearCopiesAreCaughtAgainstAnExactOracle) {
  TempDir dir;
  auto store = OpenOrDie(HnswOptions(dir.path(), GetParam()));
  for (uint64_t b = 0; b < 3000; b += 256) ASSERT_TRUE(store->Ingest(ClusteredEntries(b, std::min<uint64_t>(256, 3000 - b))).ok());
  std::vector<QueryEntry> probes;
  for (uint64_t p = 0; p < 200; ++p) {
    QueryEntry e = MakeEntry(100000 + p, kDim);
    const float noise = p % 4 == 0 ? 0.05f : p % 4 == 1 ? 0.12f : p % 4 == 2 ? 0.16f : 0.3f;  // ~0.999, 0.993, 0.987, 0.96
    e.embedding = Near(Clustered((p * 37) % 3000).embedding, noise, 5000 + p);
    probes.push_back(std::move(e));
  }
  std::vector<float> best(probes.size());
  LookupOptions exact;
  exact.threshold = -1.0f;
  exact.mode = SearchMode::kExact;
  for (size_t p = 0; p < probes.size(); ++p) {
    auto r = store->Lookup(probes[p].embedding, exact);
    ASSERT_TRUE(r.ok());
    best[p] = r->matches.at(0).similarity;
  }
  // One probe per batch position class: in the first window of the plan and beyond it.
  auto r = store->Ingest(probes);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  int caught = 0, near_threshold = 0;
  for (size_t p = 0; p < probes.size(); ++p) {
    if (best[p] >= 0.992f) {
      EXPECT_EQ((*r)[p].outcome, IngestOutcome::kDuplicate) << p << " best " << best[p];
      EXPECT_GE((*r)[p].similarity, 0.99f);
      caught += (*r)[p].outcome == IngestOutcome::kDuplicate ? 1 : 0;
    } else if (best[p] < 0.988f) {
      // Stored, unless it copies an earlier probe of the same batch.
      if ((*r)[p].outcome == IngestOutcome::kDuplicate) {
        EXPECT_TRUE((*r)[p].duplicate_of.starts_with("q1000")) << p << " " << (*r)[p].duplicate_of;
      }
    } else {
      ++near_threshold;
    }
  }
  EXPECT_GE(caught, 80);  // the 0.05 and most of the 0.12 probes
  EXPECT_LT(near_threshold, 60);
  ASSERT_TRUE(store->Verify().ok());
}

// A batch that copies itself: each later copy is a duplicate of the first, whether the
// batch fits the plan's window or not.
TEST_P(IngestSearchTest, NearCopiesInsideALargeBatchAreCaught) {
  TempDir dir;
  auto store = OpenOrDie(HnswOptions(dir.path(), GetParam()));
  ASSERT_TRUE(store->Ingest(ClusteredEntries(0, 1000)).ok());
  std::vector<QueryEntry> batch = ClusteredEntries(1000, 700);  // > AnnIndex::kPlanWindow
  for (uint64_t i = 0; i < 50; ++i) {
    QueryEntry e = MakeEntry(9000 + i, kDim);
    e.embedding = Near(batch[i * 13].embedding, 0.05f, 77 + i);
    batch.push_back(std::move(e));
  }
  auto r = store->Ingest(batch);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  for (uint64_t i = 0; i < 50; ++i) {
    EXPECT_EQ((*r)[700 + i].outcome, IngestOutcome::kDuplicate) << i;
    EXPECT_EQ((*r)[700 + i].duplicate_of, batch[i * 13].id) << i;
  }
  EXPECT_EQ(store->Stats().entries, 1700u);
  ASSERT_TRUE(store->Verify().ok());
}

// The graph built from reused searches (and from the window's exact in-batch candidates)
// finds what the exact scan finds.
TEST_P(IngestSearchTest, GraphAgreesWithTheExactScan) {
  TempDir dir;
  auto store = OpenOrDie(HnswOptions(dir.path(), GetParam()));
  ASSERT_TRUE(store->Ingest(ClusteredEntries(0, 1500)).ok());  // one call past the window
  for (uint64_t b = 1500; b < 4000; b += 250) ASSERT_TRUE(store->Ingest(ClusteredEntries(b, 250)).ok());
  LookupOptions approx;
  approx.threshold = -1.0f;
  LookupOptions exact = approx;
  exact.mode = SearchMode::kExact;
  int agree = 0;
  for (uint64_t q = 0; q < 300; ++q) {
    const std::vector<float> v = Near(Clustered(q * 11).embedding, 0.3f, q);
    auto a = store->Lookup(v, approx);
    auto e = store->Lookup(v, exact);
    ASSERT_TRUE(a.ok() && e.ok());
    ASSERT_FALSE(a->exact);
    agree += a->matches.at(0).id == e->matches.at(0).id || a->matches.at(0).similarity >= e->matches.at(0).similarity;
  }
  EXPECT_GE(agree, 294);  // recall@1 >= 0.98
  ASSERT_TRUE(store->Verify().ok());
}

INSTANTIATE_TEST_SUITE_P(Threads, IngestSearchTest, ::testing::Values(1u, 2u),
                         [](const ::testing::TestParamInfo<uint32_t>& i) { return i.param == 1 ? "Sequential" : "Parallel"; });

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string SavedPayload(const std::filesystem::path& dir) {
  for (const auto& f : std::filesystem::directory_iterator(dir / "ann")) {
    if (f.path().filename().string().starts_with("hnsw-")) return ReadFile(f.path());
  }
  return {};
}

TEST(IngestSearchTest, SequentialInsertsAreDeterministic) {
  TempDir a, b;
  for (const TempDir* d : {&a, &b}) {
    auto store = OpenOrDie(HnswOptions(d->path(), 1));
    for (uint64_t i = 0; i < 2000; i += 200) ASSERT_TRUE(store->Ingest(ClusteredEntries(i, 200)).ok());
    ASSERT_TRUE(store->Close().ok());
  }
  const std::string pa = SavedPayload(a.path()), pb = SavedPayload(b.path());
  ASSERT_FALSE(pa.empty());
  EXPECT_TRUE(pa == pb) << "the two graphs differ";
}

// AnnIndex directly: a plan made before another change to the index is not used (Add
// searches instead), and the result is still a sound graph.
TEST(AnnIndexPlanTest, AStalePlanIsIgnored) {
  using query_store::AnnIndex;
  using query_store::AnnParams;
  auto idx = AnnIndex::Create(AnnParams{.dim = kDim}, 16);
  ASSERT_TRUE(idx.ok());
  AnnIndex& index = **idx;
  std::vector<uint64_t> labels;
  std::vector<float> vectors;
  for (uint64_t i = 0; i < 500; ++i) {
    labels.push_back(i);
    const std::vector<float> v = Clustered(i).embedding;
    vectors.insert(vectors.end(), v.begin(), v.end());
  }
  ASSERT_TRUE(index.Add(labels, vectors).ok());
  std::vector<uint64_t> more_labels;
  std::vector<float> more;
  for (uint64_t i = 500; i < 600; ++i) {
    more_labels.push_back(i);
    const std::vector<float> v = Clustered(i).embedding;
    more.insert(more.end(), v.begin(), v.end());
  }
  const query_store::InsertPlan plan = index.PlanInserts(more, 64, AnnIndex::Mode::kApproximate);
  ASSERT_EQ(plan.rows.size(), 100u);
  EXPECT_EQ(plan.rows[0].size(), 64u);
  EXPECT_TRUE(std::is_sorted(plan.rows[0].begin(), plan.rows[0].end(),
                             [](const auto& x, const auto& y) { return x.similarity > y.similarity; }));
  ASSERT_TRUE(index.Remove(3).ok());  // the plan is stale from here on
  std::vector<size_t> rows(100);
  for (size_t i = 0; i < rows.size(); ++i) rows[i] = i;
  ASSERT_TRUE(index.Add(more_labels, more, &plan, rows).ok());
  EXPECT_EQ(index.live(), 599u);
  for (uint64_t i = 500; i < 600; ++i) {
    const std::vector<float> v = Clustered(i).embedding;
    const auto found = index.Search(v, 1);
    ASSERT_EQ(found.size(), 1u);
    EXPECT_EQ(found[0].label, i);
    EXPECT_NEAR(found[0].similarity, 1.0f, 2e-3f);
  }
  // A wrong number of plan rows is refused.
  EXPECT_EQ(index.Add(std::vector<uint64_t>{700}, std::span<const float>(more.data(), kDim), &plan, {}).code(),
            StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
