// Internal: the state behind QueryStore (RocksDB handles, the ANN index, counters). Only
// the query store's .cc files include this (it pulls in RocksDB).
#pragma once

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <array>
#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "query_store/ann_index.h"
#include "query_store/query_store.h"
#include "query_store/records.h"
#include "query_store/worker_pool.h"

namespace kvtier {

namespace query_store {

// Column family slots, in the order they are opened.
enum Cf : size_t { kMeta = 0, kEntries, kIds, kVectors, kHits, kErased, kCfCount };
inline constexpr std::array<std::string_view, kCfCount> kCfNames = {kCfMeta, kCfEntries, kCfIds,
                                                                    kCfVectors, kCfHits, kCfErased};

// The one converter from RocksDB's Status.
Status FromRocks(const rocksdb::Status& s, std::string_view context);

int64_t NowUnixMs();
// Sum of the sizes of the regular files under `dir` (what the store costs on disk).
uint64_t DirectoryBytes(const std::filesystem::path& dir);

}  // namespace query_store

struct QueryStore::Impl {
  explicit Impl(QueryStoreOptions o);

  // --- open / close (query_store.cc) ---
  Status OpenDb();
  Status InitMeta();
  Status LoadHits();
  Status CloseNow();

  // --- the ANN index (query_store_index.cc) ---
  Status OpenIndex();
  Status RebuildIndex(std::string reason);
  Status SaveIndexLocked();  // write_mu held
  Status VerifyAll();

  // --- lookups (query_store_lookup.cc) ---
  Result<LookupResult> DoLookup(std::span<const float> embedding, const LookupOptions& o, const CancelToken& a,
                                const CancelToken& b);
  void RecordHit(uint64_t label);
  Status FlushHitsNow();

  // --- helpers ---
  rocksdb::ColumnFamilyHandle* cf(query_store::Cf c) const { return cfs[c]; }
  Result<std::optional<std::string>> GetValue(query_store::Cf c, std::string_view key) const;
  Result<query_store::EntryRecord> GetEntry(uint64_t label) const;
  Result<std::optional<uint64_t>> GetLabel(std::string_view id) const;
  void PutMeta(rocksdb::WriteBatch& batch) const;  // next_label, epoch, live, duplicates
  Status Write(rocksdb::WriteBatch& batch, Durability durability);

  QueryStoreOptions options;
  Logger* log;
  std::filesystem::path db_dir, ann_dir;
  std::unique_ptr<rocksdb::DB> db;
  std::array<rocksdb::ColumnFamilyHandle*, query_store::kCfCount> cfs{};
  std::string db_identity;
  uint32_t dim = 0;
  std::unique_ptr<query_store::AnnIndex> index;
  bool open = false;

  // Writer state, guarded by write_mu (Ingest, Erase, SaveIndex, Close).
  std::mutex write_mu;
  uint64_t next_label = 0, epoch = 0, live = 0, duplicates_total = 0;
  uint64_t saved_epoch = 0;        // the epoch of the saved index (manifest); 0 = none
  uint64_t changed_since_save = 0;
  std::string saved_payload;       // its payload file name
  Status write_error;              // set by a failed write: the store is read-only from then on

  // Hit counts: persisted base + in-memory changes, guarded by hits_mu.
  struct HitState {
    query_store::HitRecord rec;
    bool dirty = false;
  };
  std::mutex hits_mu;
  std::unordered_map<uint64_t, HitState> hits;
  uint32_t unflushed_hits = 0;

  // Counters since open. relaxed: statistics only, nothing is ordered by them.
  std::atomic<uint64_t> n_inserted{0}, n_replaced{0}, n_duplicates{0}, n_erased{0};
  std::atomic<uint64_t> n_lookups{0}, n_hits{0}, n_misses{0}, n_cancelled{0}, n_exact{0}, n_saves{0};
  QueryStoreStats::IndexOrigin index_origin = QueryStoreStats::IndexOrigin::kCreated;
  std::string index_origin_reason;
  uint64_t index_caught_up = 0;
  double index_open_seconds = 0;

  std::unique_ptr<query_store::WorkerPool> pool;
  std::atomic<bool> closed{false};  // release on Close; acquire by LookupAsync
};

}  // namespace kvtier
