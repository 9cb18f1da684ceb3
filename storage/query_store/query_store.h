// QueryStore: the precomputed query store (StorInfer). Query -> response pairs with their
// embeddings, kept in RocksDB, searched by cosine similarity through an ANN index that is
// persisted next to the data. A serving engine runs LookupAsync beside inference: a hit
// (similarity >= threshold) returns the stored response and the engine stops inference; a
// miss costs nothing, and the engine cancels the lookup when inference wins. Entries may
// reference KV prefixes; ResidencyHints turns the hit counts of those entries into a
// budgeted keep-warm hint list for kvtier's eviction policies (KeepWarmHints).
//
// Durability: every Ingest/Erase is one atomic RocksDB write batch with the WAL on;
// with Durability::kSync it is fsynced before the call returns. After any crash the store
// holds a prefix of the acknowledged writes (with kSync: all of them), every stored value
// verifies against its checksum, and the ANN index is brought back in line with the data
// when the store opens (loaded, caught up, or rebuilt). docs/query_store.md has the layout.
//
// Thread-safety: every method may be called from any thread, except that Close (and the
// destructor) must not race other calls. Ingest and Erase are serialised among themselves
// (deduplication needs a stable view); lookups run concurrently with each other and with
// writers. Errors are Status values, never exceptions. After a failed write (kNoSpace,
// kIoError) the store is read-only until reopened; lookups keep working.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/keep_warm_policy.h"
#include "kvtier/logger.h"
#include "kvtier/status.h"
#include "query_store/cancellation.h"

namespace kvtier {

enum class Durability : uint8_t {
  kSync,      // each write is fsynced before it is acknowledged (survives power loss)
  kBuffered,  // WAL written to the OS before acknowledging (survives a process kill only)
};

enum class OpenMode : uint8_t { kOpenOrCreate, kOpenExisting, kCreateNew };

struct QueryStoreOptions {
  std::filesystem::path dir;  // the store: dir/db (RocksDB) and dir/ann (the ANN index)
  OpenMode mode = OpenMode::kOpenOrCreate;
  // Embedding dimension. Required to create; when opening, 0 takes the stored one and any
  // other value must match it.
  uint32_t dim = 0;
  Durability durability = Durability::kSync;
  // Ingest skips an entry whose similarity to a stored entry (or an earlier one of the
  // same batch) with another id is >= this. > 1 disables deduplication.
  float dedup_threshold = 0.99f;
  // Stores with at most this many live entries are searched exactly (a scan).
  uint32_t exact_search_max_entries = 2048;
  // HNSW parameters: graph degree, candidate lists for insert and search.
  uint32_t hnsw_m = 16;
  uint32_t hnsw_ef_construction = 64;
  uint32_t hnsw_ef_search = 128;
  // Ingest's deduplication reads the insert's own neighbour search (candidate list
  // hnsw_ef_construction); a larger value here widens that search.
  uint32_t dedup_ef_search = 32;
  // ANN inserts (ingest, rebuilds, catch-up) run on this many threads. 1: one after
  // another, each reusing ingest's search as its candidate list (the cheapest per entry;
  // deterministic). > 1: in parallel, each insert searching the graph itself (for machines
  // with cores to spare: more CPU per entry, more entries per second).
  uint32_t index_threads = 1;
  uint32_t lookup_threads = 1;    // threads serving LookupAsync
  // Save the ANN index (atomic replace) after this many entries changed since the last
  // save; 0 = only on Close and SaveIndex. A stale saved index is caught up at open.
  uint64_t index_save_every = 0;
  bool save_index_on_close = true;
  // Hit counts are kept in memory and written (unsynced: they are statistics) after this
  // many hits, on FlushHits, ResidencyHints and Close.
  uint32_t hit_flush_every = 1024;
  // RocksDB sizing (bytes).
  uint64_t block_cache_bytes = uint64_t(64) << 20;
  uint64_t write_buffer_bytes = uint64_t(32) << 20;
  // Refuse writes (kNoSpace) once RocksDB's files reach this size; 0 = no limit.
  uint64_t max_disk_bytes = 0;
  Logger* logger = nullptr;  // null = StderrLogger::Default()

  Status Validate() const;
};

// A KV prefix an entry refers to: its token ids and/or the chain hash of its last full
// block (see block_key.h). Token ids let ResidencyHints derive every block of the prefix.
struct PrefixRef {
  std::vector<int32_t> tokens;
  std::optional<ChainHash> chain;
  bool empty() const { return tokens.empty() && !chain; }
};

struct QueryEntry {
  std::string id;  // 1..1024 bytes, unique in the store
  std::string query;
  std::string response;
  std::vector<float> embedding;  // exactly dim() finite values, norm > 0 (stored normalised)
  PrefixRef prefix;
  std::string source;  // e.g. the knowledge-base chunk it was generated from
};

// Checks one entry against a store of dimension `dim`, without storing anything.
Status ValidateEntry(const QueryEntry& entry, uint32_t dim);

struct StoredEntry {
  QueryEntry entry;  // embedding normalised to unit length
  float embedding_norm = 0;  // the norm it was ingested with
  int64_t created_unix_ms = 0;
  uint64_t hit_count = 0;
  int64_t last_hit_unix_ms = 0;  // 0 = never hit
};

enum class IngestOutcome : uint8_t {
  kInserted,   // a new id
  kReplaced,   // an existing id, now with this content
  kDuplicate,  // a near-copy of another entry: nothing stored
};
std::string_view IngestOutcomeName(IngestOutcome outcome);

struct IngestResult {
  IngestOutcome outcome = IngestOutcome::kInserted;
  std::string duplicate_of;  // kDuplicate: the id of the entry it copies
  float similarity = 0;      // kDuplicate: the similarity to it
};

enum class SearchMode : uint8_t { kAuto, kApproximate, kExact };

struct LookupOptions {
  float threshold = 0.9f;  // a match needs similarity >= threshold (cosine, in [-1, 1])
  uint32_t k = 1;          // at most k matches, best first
  SearchMode mode = SearchMode::kAuto;  // kAuto: exact for small stores, else approximate
  uint32_t ef = 0;         // approximate search candidate list; 0 = options.hnsw_ef_search
  Status Validate() const;
};

struct Match {
  std::string id;
  float similarity = 0;
  std::string query;
  std::string response;
  PrefixRef prefix;
};

struct LookupResult {
  std::vector<Match> matches;  // similarity >= threshold, best first; empty = a miss
  bool exact = false;          // the search was an exact scan
  bool hit() const { return !matches.empty(); }
};

// The handle of one LookupAsync. Move-only. Destroying it cancels the lookup and waits
// for it, so no lookup outlives its handle's owner's interest.
class LookupHandle {
 public:
  LookupHandle() = default;
  LookupHandle(LookupHandle&&) noexcept = default;
  LookupHandle& operator=(LookupHandle&& other) noexcept;
  LookupHandle(const LookupHandle&) = delete;
  LookupHandle& operator=(const LookupHandle&) = delete;
  ~LookupHandle();

  // Signals when the lookup has finished: OK (hit or miss), kCancelled, or an error.
  // Fence::OnReady lets an engine stop inference the moment a hit arrives.
  Fence fence() const;
  bool ready() const;
  void Cancel();  // the lookup stops at its next check and completes with kCancelled
  // Blocks until done and returns the result (once; later calls give kFailedPrecondition).
  Result<LookupResult> Wait();

  struct State;

 private:
  friend class QueryStore;
  explicit LookupHandle(std::shared_ptr<State> state) : state_(std::move(state)) {}
  std::shared_ptr<State> state_;
};

struct QueryStoreStats {
  uint32_t dim = 0;
  uint64_t entries = 0;              // live entries
  uint64_t duplicates_total = 0;     // near-copies skipped over the store's life
  // Since open:
  uint64_t inserted = 0, replaced = 0, duplicates = 0, erased = 0;
  uint64_t lookups = 0, hits = 0, misses = 0, cancelled = 0, exact_searches = 0;
  // The ANN index: how open obtained it, and its state.
  enum class IndexOrigin : uint8_t { kCreated, kLoaded, kCaughtUp, kRebuilt } index_origin = IndexOrigin::kCreated;
  std::string index_origin_reason;   // why it was rebuilt or caught up
  uint64_t index_caught_up = 0;      // entries added/removed while catching up at open
  uint64_t index_live = 0, index_deleted_nodes = 0;
  uint64_t index_saves = 0;
  uint64_t index_epoch_saved = 0, epoch = 0;
  double index_open_seconds = 0;
  // On disk (bytes): RocksDB's directory and the ANN directory.
  uint64_t db_bytes = 0, index_bytes = 0;
};
std::string_view IndexOriginName(QueryStoreStats::IndexOrigin origin);

struct ResidencyHintOptions {
  // Derives the chain of every full block of an entry's prefix tokens (the tenant and
  // namespace of the engine that will reuse them). Null: only stored chain keys are used.
  const KeyDeriver* deriver = nullptr;
  uint32_t max_chains = 4096;  // the budget: the heaviest chains are kept
  // An entry's weight is hit_count + base_weight; entries of weight <= 0 give no hint.
  double base_weight = 0;
};

class QueryStore {
 public:
  static Result<std::unique_ptr<QueryStore>> Open(QueryStoreOptions options);
  // Close()s if still open (errors are logged).
  ~QueryStore();
  QueryStore(const QueryStore&) = delete;
  QueryStore& operator=(const QueryStore&) = delete;

  // Finishes or cancels pending async lookups, writes hit counts, saves the ANN index if
  // it changed (save_index_on_close) and closes RocksDB. Later calls fail with
  // kFailedPrecondition. Idempotent in effect: a second Close returns that error.
  Status Close();

  // Stores `entries` in one atomic write (all or nothing), then indexes them. Every entry
  // is validated first: kInvalidArgument names the first bad one and nothing is stored.
  // kNoSpace when the disk (or max_disk_bytes) is full; the store stays readable. One
  // IngestResult per entry, in order. A repeated id inside `entries`: the later one wins.
  Result<std::vector<IngestResult>> Ingest(std::span<const QueryEntry> entries);

  // The best matches of `embedding` (dim() values; normalised here).
  Result<LookupResult> Lookup(std::span<const float> embedding, const LookupOptions& options);
  // The same on the store's lookup threads. `cancel` (or the handle's Cancel) stops it.
  LookupHandle LookupAsync(std::vector<float> embedding, LookupOptions options, CancelToken cancel = {});

  // Removes an entry. kNotFound if the id is unknown.
  Status Erase(std::string_view id);
  Result<StoredEntry> Get(std::string_view id);

  // Budgeted keep-warm hints from the entries that reference KV prefixes, weighted by hit
  // counts; heaviest first. Feed them to KeepWarmHints::Set.
  Result<std::vector<ResidencyHint>> ResidencyHints(const ResidencyHintOptions& options);

  // Persists the ANN index now (atomic replace; see index_manifest.h).
  Status SaveIndex();
  Status FlushHits();
  // Reads everything back: every value verifies its checksum, ids/entries/vectors agree,
  // the metadata counts match, and the ANN index holds exactly the live labels.
  // kDataLoss names the first inconsistency.
  Status Verify();

  QueryStoreStats Stats() const;
  uint32_t dim() const;

  struct Impl;

 private:
  explicit QueryStore(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
