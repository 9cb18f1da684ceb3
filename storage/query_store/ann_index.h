// AnnIndex: the query store's in-memory vector index over unit vectors, cosine similarity
// (= inner product). An HNSW graph (hnswlib) for approximate search plus an exact scan
// over the same stored vectors, so exact search needs no second copy. The graph holds each
// vector as IEEE halves (the float32 originals stay in RocksDB); graph navigation compares
// halves, and every reported similarity is float32 query x half vector, identical between
// Search and ExactSearch (within ~1e-3 of the float32 similarity). The only file that
// includes hnswlib (its header defines non-inline functions).
//
// Thread-safety: Search, ExactSearch, Contains, live, Save may run concurrently with each
// other (shared lock). Add and Remove take the lock exclusively, a few points at a time so
// that searches interleave with a long Add; callers serialise Add/Remove among themselves.
// hnswlib reports failures by exception: they are caught here and returned as Status.
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
  uint32_t threads = 2;            // inserts run on this many threads
};

struct Neighbor {
  uint64_t label = 0;
  float similarity = 0;  // cosine, in [-1, 1]
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
  Status Add(std::span<const uint64_t> labels, std::span<const float> vectors);
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
