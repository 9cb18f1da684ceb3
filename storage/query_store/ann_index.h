// AnnIndex: the query store's in-memory vector index over unit vectors, cosine similarity
// (= inner product). An HNSW graph (hnswlib) for approximate search plus an exact scan
// over the same stored vectors, so exact search needs no second copy. The graph holds each
// vector as IEEE halves (the float32 originals stay in RocksDB); graph navigation compares
// halves, and every reported similarity is float32 query x half vector, identical between
// Search and ExactSearch (within ~1e-3 of the float32 similarity). The only file that
// includes hnswlib (its header defines non-inline functions).
//
// Searching and inserting are kvtier's own code over hnswlib's data structures (the saved
// file stays hnswlib 0.6's format): the query stays float32 (float x half kernel), and the
// vectors of the next candidates are prefetched whole while one distance is computed, since
// a graph search is a chain of cache misses (each vector spans 13 cache lines). Inserts
// link through hnswlib's mutuallyConnectNewElement; points drawn above layer 0 (1/M of
// them) go through hnswlib's addPoint.
//
// Thread-safety: Search, ExactSearch, PlanInserts, Contains, live, Save may run concurrently
// with each other (shared lock). Add and Remove take the lock exclusively, a few points at a
// time so that searches interleave with a long Add; callers serialise Add/Remove among
// themselves. hnswlib reports failures by exception: they are caught here and returned as
// Status.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::query_store {

struct AnnParams {
  uint32_t dim = 0;
  uint32_t m = 16;                 // graph degree (layer 0 has 2*m)
  uint32_t ef_construction = 64;   // candidate list size while inserting
  uint32_t ef_search = 128;        // candidate list size while searching (>= k is enforced)
  // 1: inserts run one after another, each reusing its PlanInserts search (deterministic:
  // the same inserts into the same index give the same graph). > 1: inserts run on this many
  // threads, each searching the graph itself (hnswlib's per-node locks), and PlanInserts and
  // SearchMany spread over them; the graph then depends on the interleaving.
  uint32_t threads = 1;
};

struct Neighbor {
  uint64_t label = 0;
  float similarity = 0;  // cosine, in [-1, 1]
};

// What an insert's own neighbour search finds for each of a batch of vectors, made before
// the batch is inserted: ingest deduplicates from it, and Add reuses it as the insert's
// candidate list instead of searching again.
struct InsertPlan {
  struct Candidate {
    float similarity = 0;
    uint32_t node = 0;   // hnswlib's internal id
    uint64_t label = 0;
  };
  uint64_t version = 0;  // the index's change count when it was made: Add checks it
  std::vector<std::vector<Candidate>> rows;  // per vector: the most similar live vectors, best first
};

class AnnIndex {
 public:
  // An empty index with room for `capacity` vectors (it grows as needed).
  static Result<std::unique_ptr<AnnIndex>> Create(const AnnParams& params, size_t capacity);
  // Loads a payload written by Save. `headroom` extra vectors fit before the first resize.
  // kDataLoss if the file does not parse or does not match `params.dim`.
  static Result<std::unique_ptr<AnnIndex>> Load(const AnnParams& params, const std::filesystem::path& file,
                                                size_t headroom);
  ~AnnIndex();

  // Writes the index to `file` (truncating), fsyncs it, and checks its size: a short write
  // (ENOSPC included, which hnswlib does not report) is kNoSpace / kIoError.
  Status Save(const std::filesystem::path& file) const;

  // Inserts unit vectors `vectors` (labels.size() x dim, row-major). A label already
  // present is an error (kAlreadyExists); labels are never reused by the store.
  // With `plan` (made by PlanInserts on this index with nothing added or removed since;
  // otherwise it is ignored) labels[i]'s vector is plan->rows[plan_rows[i]]'s: with
  // params.threads == 1 the first kPlanWindow inserts of the call take that row, merged with
  // the exact similarities to the earlier vectors of the call, as their candidate list; the
  // rest search the graph (which then holds the earlier ones).
  static constexpr size_t kPlanWindow = 512;
  Status Add(std::span<const uint64_t> labels, std::span<const float> vectors, const InsertPlan* plan = nullptr,
             std::span<const size_t> plan_rows = {});
  // Marks `label` deleted: it is never returned again. kNotFound if absent or deleted.
  Status Remove(uint64_t label);

  // The `k` most similar live vectors to unit vector `query`, most similar first.
  // Approximate; `ef` = 0 uses params.ef_search.
  std::vector<Neighbor> Search(std::span<const float> query, uint32_t k, uint32_t ef = 0) const;
  // The same, exact (a scan of every live vector).
  std::vector<Neighbor> ExactSearch(std::span<const float> query, uint32_t k) const;
  // Searches `queries` (n x dim) on params.threads threads; one result list per query.
  enum class Mode : uint8_t { kApproximate, kExact };
  std::vector<std::vector<Neighbor>> SearchMany(std::span<const float> queries, uint32_t k, uint32_t ef,
                                                Mode mode) const;

  // For each of `vectors` (n x dim unit vectors) the `ef` most similar live vectors, best
  // first, found as an insert finds its neighbours: the HNSW search with candidate list ef
  // (kApproximate) or a scan (kExact). Similarities are those Search reports.
  InsertPlan PlanInserts(std::span<const float> vectors, uint32_t ef, Mode mode) const;

  bool Contains(uint64_t label) const;  // live (present and not deleted)
  size_t live() const;
  size_t deleted() const;
  std::vector<uint64_t> LiveLabels() const;  // unordered
  const AnnParams& params() const { return params_; }

  struct Graph;  // hnswlib state (ann_index.cc)

 private:
  AnnIndex(const AnnParams& params, std::unique_ptr<Graph> graph);
  AnnParams params_;
  std::unique_ptr<Graph> graph_;
};

}  // namespace kvtier::query_store
