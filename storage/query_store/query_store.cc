// QueryStore: options, open/close, ingest, erase, get, stats. Lookups live in
// query_store_lookup.cc, the ANN index's persistence in query_store_index.cc.
#include "query_store/query_store.h"

#include <fmt/format.h>
#include <rocksdb/cache.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/sst_file_manager.h>
#include <rocksdb/table.h>

#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <unordered_map>
#include <unordered_set>

#include "query_store/query_store_impl.h"
#include "query_store/vector_math.h"

namespace kvtier {

using namespace query_store;  // NOLINT(google-build-using-namespace): this module's own helpers

namespace {

constexpr size_t kMaxIdBytes = 1024;

// RocksDB's own log lines go to kvtier's logger, not to a LOG file in the store: a LOG
// file shares the store's disk, and RocksDB 7.8 aborts (an assert in Debian's build) when
// it writes to its LOG again after that file hit ENOSPC.
class RocksLogBridge final : public rocksdb::Logger {
 public:
  explicit RocksLogBridge(kvtier::Logger* log) : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL), log_(log) {}
  using rocksdb::Logger::Logv;
  void Logv(const char* format, va_list ap) override { Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap); }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buf[1024];
    std::vsnprintf(buf, sizeof(buf), format, ap);
    log_->Log(level >= rocksdb::InfoLogLevel::ERROR_LEVEL ? LogLevel::kError : LogLevel::kWarning, "rocksdb: {}", buf);
  }

 private:
  kvtier::Logger* log_;
};
constexpr size_t kMaxTextBytes = size_t(64) << 20;

}  // namespace

Status QueryStoreOptions::Validate() const {
  if (dir.empty()) return Status::InvalidArgument("query store: dir is empty");
  if (dim > 65536) return Status::InvalidArgument(fmt::format("query store: dim = {} is over 65536", dim));
  if (!(dedup_threshold > -1.0f) || std::isnan(dedup_threshold)) {
    return Status::InvalidArgument(fmt::format("query store: dedup_threshold = {}", dedup_threshold));
  }
  if (hnsw_m < 2 || hnsw_m > 128) return Status::InvalidArgument(fmt::format("query store: hnsw_m = {} (2..128)", hnsw_m));
  if (hnsw_ef_construction == 0 || hnsw_ef_search == 0 || dedup_ef_search == 0) {
    return Status::InvalidArgument("query store: hnsw ef values must be >= 1");
  }
  if (index_threads == 0 || index_threads > 256) return Status::InvalidArgument("query store: index_threads must be 1..256");
  if (lookup_threads == 0 || lookup_threads > 256) return Status::InvalidArgument("query store: lookup_threads must be 1..256");
  if (hit_flush_every == 0) return Status::InvalidArgument("query store: hit_flush_every = 0");
  if (write_buffer_bytes < (uint64_t(64) << 10)) return Status::InvalidArgument("query store: write_buffer_bytes < 64 KiB");
  return Status::Ok();
}

Status LookupOptions::Validate() const {
  if (std::isnan(threshold) || threshold > 1.0f) {
    return Status::InvalidArgument(fmt::format("lookup threshold {} is not in [-1, 1]", threshold));
  }
  if (k == 0 || k > 1024) return Status::InvalidArgument(fmt::format("lookup k = {} is not in [1, 1024]", k));
  return Status::Ok();
}

Status ValidateEntry(const QueryEntry& e, uint32_t dim) {
  if (e.id.empty() || e.id.size() > kMaxIdBytes) {
    return Status::InvalidArgument(fmt::format("id of {} bytes (must be 1..{})", e.id.size(), kMaxIdBytes));
  }
  if (e.embedding.size() != dim) {
    return Status::InvalidArgument(fmt::format("embedding has {} values, the store's dimension is {}", e.embedding.size(), dim));
  }
  double sum = 0;
  for (size_t i = 0; i < e.embedding.size(); ++i) {
    if (!std::isfinite(e.embedding[i])) {
      return Status::InvalidArgument(fmt::format("embedding[{}] is {}", i, e.embedding[i]));
    }
    sum += double(e.embedding[i]) * double(e.embedding[i]);
  }
  if (!(sum > 0) || !std::isfinite(sum)) return Status::InvalidArgument("embedding has norm 0 or overflows");
  if (e.query.size() > kMaxTextBytes || e.response.size() > kMaxTextBytes || e.source.size() > kMaxTextBytes ||
      e.prefix.tokens.size() > kMaxTextBytes / sizeof(int32_t)) {
    return Status::InvalidArgument("a field is over 64 MiB");
  }
  return Status::Ok();
}

std::string_view IngestOutcomeName(IngestOutcome o) {
  switch (o) {
    case IngestOutcome::kInserted: return "inserted";
    case IngestOutcome::kReplaced: return "replaced";
    case IngestOutcome::kDuplicate: return "duplicate";
  }
  return "?";
}

std::string_view IndexOriginName(QueryStoreStats::IndexOrigin o) {
  switch (o) {
    case QueryStoreStats::IndexOrigin::kCreated: return "created";
    case QueryStoreStats::IndexOrigin::kLoaded: return "loaded";
    case QueryStoreStats::IndexOrigin::kCaughtUp: return "caught-up";
    case QueryStoreStats::IndexOrigin::kRebuilt: return "rebuilt";
  }
  return "?";
}

namespace query_store {

Status FromRocks(const rocksdb::Status& s, std::string_view context) {
  if (s.ok()) return Status::Ok();
  std::string m = fmt::format("{}: rocksdb: {}", context, s.ToString());
  if (s.IsNoSpace() || s.subcode() == rocksdb::Status::kSpaceLimit) return Status::NoSpace(std::move(m));
  if (s.IsNotFound()) return Status::NotFound(std::move(m));
  if (s.IsCorruption()) return Status::DataLoss(std::move(m));
  if (s.IsInvalidArgument()) return Status::InvalidArgument(std::move(m));
  if (s.IsBusy() || s.IsTryAgain() || s.IsTimedOut()) return Status::Unavailable(std::move(m));
  if (s.IsIOError()) return Status::IoError(std::move(m));
  if (s.IsNotSupported()) return Status::Unimplemented(std::move(m));
  return Status::Internal(std::move(m));
}

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

uint64_t DirectoryBytes(const std::filesystem::path& dir) {
  uint64_t total = 0;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec); !ec && it != std::filesystem::end(it);
       it.increment(ec)) {
    std::error_code fec;
    if (it->is_regular_file(fec)) total += it->file_size(fec);
  }
  return total;
}

}  // namespace query_store

// --- Impl: open / close --------------------------------------------------------------------

QueryStore::Impl::Impl(QueryStoreOptions o)
    : options(std::move(o)), log(options.logger ? options.logger : StderrLogger::Default()),
      db_dir(options.dir / "db"), ann_dir(options.dir / "ann") {}

Status QueryStore::Impl::OpenDb() {
  std::error_code ec;
  const bool exists = std::filesystem::exists(db_dir / "CURRENT", ec);
  if (options.mode == OpenMode::kOpenExisting && !exists) {
    return Status::NotFound(fmt::format("no query store at {}", options.dir.string()));
  }
  if (options.mode == OpenMode::kCreateNew && exists) {
    return Status::AlreadyExists(fmt::format("a query store already exists at {}", options.dir.string()));
  }
  std::filesystem::create_directories(db_dir, ec);
  if (!ec) std::filesystem::create_directories(ann_dir, ec);
  if (ec) return Status::FromErrno(ec.value(), fmt::format("creating {}", options.dir.string()));

  rocksdb::DBOptions dbo;
  dbo.create_if_missing = true;
  dbo.create_missing_column_families = true;
  dbo.paranoid_checks = true;
  dbo.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  dbo.max_background_jobs = 2;
  // The metadata family is written by every batch but its memtable never fills, so without
  // a cap it would pin every WAL file; this forces the flushes that let old WALs go.
  dbo.max_total_wal_size = 4 * options.write_buffer_bytes;
  dbo.info_log_level = rocksdb::InfoLogLevel::WARN_LEVEL;
  dbo.info_log = std::make_shared<RocksLogBridge>(log);
  if (options.max_disk_bytes > 0) {
    std::shared_ptr<rocksdb::SstFileManager> sfm(rocksdb::NewSstFileManager(rocksdb::Env::Default()));
    sfm->SetMaxAllowedSpaceUsage(options.max_disk_bytes);
    dbo.sst_file_manager = std::move(sfm);
  }
  rocksdb::BlockBasedTableOptions table;
  table.checksum = rocksdb::kXXH3;
  table.format_version = 5;  // the newest this RocksDB (7.8) writes
  table.block_cache = rocksdb::NewLRUCache(options.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  table.cache_index_and_filter_blocks = false;  // keep them resident: first lookups after open stay fast
  rocksdb::ColumnFamilyOptions base;
  base.write_buffer_size = options.write_buffer_bytes;
  base.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  for (size_t i = 0; i < kCfCount; ++i) {
    rocksdb::ColumnFamilyOptions cfo = base;
    if (i == kVectors) cfo.compression = rocksdb::kNoCompression;  // float mantissas do not compress
    descs.emplace_back(std::string(kCfNames[i]), cfo);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  KVT_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(dbo, db_dir.string(), descs, &handles, &raw),
                                fmt::format("opening {}", db_dir.string())));
  db.reset(raw);
  for (size_t i = 0; i < kCfCount; ++i) cfs[i] = handles[i];
  return FromRocks(db->GetDbIdentity(db_identity), "reading the DB identity");
}

Status QueryStore::Impl::InitMeta() {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string> version, GetValue(kMeta, kMetaFormatVersion));
  if (!version) {
    if (options.dim == 0) return Status::InvalidArgument(fmt::format("creating {}: dim is required", options.dir.string()));
    dim = options.dim;
    rocksdb::WriteBatch batch;
    auto put = [&](std::string_view k, uint64_t v) { (void)batch.Put(cf(kMeta), k, EncodeU64(kCfMeta, k, v)); };
    put(kMetaFormatVersion, kFormatVersion);
    put(kMetaDim, dim);
    put(kMetaCreated, static_cast<uint64_t>(NowUnixMs()));
    PutMeta(batch);
    return Write(batch, Durability::kSync);
  }
  KVT_ASSIGN_OR_RETURN(uint64_t v, DecodeU64(kCfMeta, kMetaFormatVersion, *version));
  if (v != kFormatVersion) {
    return Status::FailedPrecondition(fmt::format("{} has format version {}; this build reads {}", options.dir.string(), v, kFormatVersion));
  }
  auto read = [&](std::string_view k, uint64_t* out) -> Status {
    KVT_ASSIGN_OR_RETURN(std::optional<std::string> raw, GetValue(kMeta, k));
    if (!raw) return Status::DataLoss(fmt::format("metadata '{}' is missing", k));
    KVT_ASSIGN_OR_RETURN(*out, DecodeU64(kCfMeta, k, *raw));
    return Status::Ok();
  };
  uint64_t stored_dim = 0;
  KVT_RETURN_IF_ERROR(read(kMetaDim, &stored_dim));
  KVT_RETURN_IF_ERROR(read(kMetaNextLabel, &next_label));
  KVT_RETURN_IF_ERROR(read(kMetaEpoch, &epoch));
  KVT_RETURN_IF_ERROR(read(kMetaLive, &live));
  KVT_RETURN_IF_ERROR(read(kMetaDuplicates, &duplicates_total));
  if (options.dim != 0 && options.dim != stored_dim) {
    return Status::InvalidArgument(fmt::format("{} has dimension {}, not {}", options.dir.string(), stored_dim, options.dim));
  }
  dim = static_cast<uint32_t>(stored_dim);
  return Status::Ok();
}

Status QueryStore::Impl::LoadHits() {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kHits)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
    KVT_ASSIGN_OR_RETURN(HitRecord rec, DecodeHits(label, it->value().ToStringView()));
    hits[label] = HitState{rec, false};
  }
  return FromRocks(it->status(), "reading hit counts");
}

Status QueryStore::Impl::CloseNow() {
  Status first;
  auto keep = [&](Status s) {
    if (first.ok() && !s.ok()) first = std::move(s);
  };
  if (pool) pool->Shutdown();
  {
    std::lock_guard lock(write_mu);
    if (db && write_error.ok()) keep(FlushHitsNow());
    if (db && index && write_error.ok() && options.save_index_on_close && (saved_epoch != epoch || saved_payload.empty())) {
      keep(SaveIndexLocked());
    }
  }
  if (db && write_error.ok()) {
    // A clean close leaves no WAL to replay: reopening is faster and the WAL's space is freed.
    std::vector<rocksdb::ColumnFamilyHandle*> all(cfs.begin(), cfs.end());
    keep(FromRocks(db->Flush(rocksdb::FlushOptions(), all), "flushing memtables"));
  }
  if (db) {
    for (auto*& h : cfs) {
      if (h) keep(FromRocks(db->DestroyColumnFamilyHandle(h), "closing a column family"));
      h = nullptr;
    }
    keep(FromRocks(db->Close(), "closing RocksDB"));
    db.reset();
  }
  index.reset();
  return first;
}

// --- Impl: helpers ----------------------------------------------------------------------------

Result<std::optional<std::string>> QueryStore::Impl::GetValue(Cf c, std::string_view key) const {
  std::string value;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), cf(c), key, &value);
  if (s.IsNotFound()) return std::optional<std::string>();
  KVT_RETURN_IF_ERROR(FromRocks(s, fmt::format("reading {}", kCfNames[c])));
  return std::optional<std::string>(std::move(value));
}

Result<EntryRecord> QueryStore::Impl::GetEntry(uint64_t label) const {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string> v, GetValue(kEntries, LabelKey(label)));
  if (!v) return Status::NotFound(fmt::format("label {} has no entry", label));
  return DecodeEntry(label, *v);
}

Result<std::optional<uint64_t>> QueryStore::Impl::GetLabel(std::string_view id) const {
  KVT_ASSIGN_OR_RETURN(std::optional<std::string> v, GetValue(kIds, id));
  if (!v) return std::optional<uint64_t>();
  KVT_ASSIGN_OR_RETURN(uint64_t label, DecodeIdValue(id, *v));
  return std::optional<uint64_t>(label);
}

void QueryStore::Impl::PutMeta(rocksdb::WriteBatch& batch) const {
  auto put = [&](std::string_view k, uint64_t v) { (void)batch.Put(cf(kMeta), k, EncodeU64(kCfMeta, k, v)); };
  put(kMetaNextLabel, next_label);
  put(kMetaEpoch, epoch);
  put(kMetaLive, live);
  put(kMetaDuplicates, duplicates_total);
}

Status QueryStore::Impl::Write(rocksdb::WriteBatch& batch, Durability durability) {
  if (!write_error.ok()) return write_error;
  rocksdb::WriteOptions wo;
  wo.sync = durability == Durability::kSync;
  Status s = FromRocks(db->Write(wo, &batch), "writing");
  if (!s.ok() && (s.code() == StatusCode::kNoSpace || s.code() == StatusCode::kIoError)) {
    // A failed WAL or flush write leaves RocksDB with a background error; its in-process
    // recovery (Resume) reuses the failed WAL writer, which RocksDB 7.8 does not survive.
    // So the store turns read-only (lookups keep working) until it is reopened.
    write_error = Status(s.code(), fmt::format("{} (the store is read-only until it is reopened)", s.message()));
    log->Log(LogLevel::kError, "query store {}: {}", options.dir.string(), write_error.ToString());
  }
  return s;
}

// --- QueryStore ---------------------------------------------------------------------------------

QueryStore::QueryStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

QueryStore::~QueryStore() {
  if (!impl_->closed.load(std::memory_order_acquire)) {
    if (Status s = Close(); !s.ok()) impl_->log->Log(LogLevel::kError, "query store: closing: {}", s.ToString());
  }
}

Result<std::unique_ptr<QueryStore>> QueryStore::Open(QueryStoreOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  auto impl = std::make_unique<Impl>(std::move(options));
  KVT_RETURN_IF_ERROR(impl->OpenDb());
  Status s = impl->InitMeta();
  if (s.ok()) s = impl->LoadHits();
  if (s.ok()) s = impl->OpenIndex();
  if (!s.ok()) {
    impl->options.save_index_on_close = false;
    (void)impl->CloseNow();
    return s;
  }
  impl->pool = std::make_unique<WorkerPool>(impl->options.lookup_threads);
  return std::unique_ptr<QueryStore>(new QueryStore(std::move(impl)));
}

Status QueryStore::Close() {
  if (impl_->closed.exchange(true, std::memory_order_acq_rel)) return Status::FailedPrecondition("query store is closed");
  return impl_->CloseNow();
}

uint32_t QueryStore::dim() const { return impl_->dim; }

Status QueryStore::SaveIndex() {
  if (impl_->closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  std::lock_guard lock(impl_->write_mu);
  return impl_->SaveIndexLocked();
}

Status QueryStore::FlushHits() {
  if (impl_->closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  std::lock_guard lock(impl_->write_mu);
  return impl_->FlushHitsNow();
}

Status QueryStore::Verify() {
  if (impl_->closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  std::lock_guard lock(impl_->write_mu);
  return impl_->VerifyAll();
}

Status QueryStore::Erase(std::string_view id) {
  Impl& s = *impl_;
  if (s.closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  std::lock_guard lock(s.write_mu);
  KVT_ASSIGN_OR_RETURN(std::optional<uint64_t> label, s.GetLabel(id));
  if (!label) return Status::NotFound(fmt::format("no entry with id '{}'", id));
  const std::string key = LabelKey(*label);
  rocksdb::WriteBatch batch;
  (void)batch.Delete(s.cf(kIds), id);
  (void)batch.Delete(s.cf(kEntries), key);
  (void)batch.Delete(s.cf(kVectors), key);
  (void)batch.Delete(s.cf(kHits), key);
  (void)batch.Put(s.cf(kErased), key, "");
  s.live -= 1;
  s.epoch += 1;
  s.PutMeta(batch);
  if (Status w = s.Write(batch, s.options.durability); !w.ok()) {
    s.live += 1;
    s.epoch -= 1;
    return w;
  }
  KVT_RETURN_IF_ERROR(s.index->Remove(*label));
  {
    std::lock_guard hl(s.hits_mu);
    s.hits.erase(*label);
  }
  s.changed_since_save += 1;
  s.n_erased.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

Result<StoredEntry> QueryStore::Get(std::string_view id) {
  Impl& s = *impl_;
  if (s.closed.load(std::memory_order_acquire)) return Status::FailedPrecondition("query store is closed");
  KVT_ASSIGN_OR_RETURN(std::optional<uint64_t> label, s.GetLabel(id));
  if (!label) return Status::NotFound(fmt::format("no entry with id '{}'", id));
  KVT_ASSIGN_OR_RETURN(EntryRecord rec, s.GetEntry(*label));
  KVT_ASSIGN_OR_RETURN(std::optional<std::string> vec, s.GetValue(kVectors, LabelKey(*label)));
  if (!vec) return Status::DataLoss(fmt::format("entry '{}' has no vector", id));
  StoredEntry out;
  out.entry.embedding.resize(s.dim);
  KVT_RETURN_IF_ERROR(DecodeVector(*label, *vec, s.dim, out.entry.embedding.data(), &out.embedding_norm));
  out.entry.id = std::move(rec.id);
  out.entry.query = std::move(rec.query);
  out.entry.response = std::move(rec.response);
  out.entry.source = std::move(rec.source);
  out.entry.prefix.tokens = std::move(rec.prefix_tokens);
  out.entry.prefix.chain = rec.prefix_chain;
  out.created_unix_ms = rec.created_unix_ms;
  std::lock_guard hl(s.hits_mu);
  if (auto it = s.hits.find(*label); it != s.hits.end()) {
    out.hit_count = it->second.rec.count;
    out.last_hit_unix_ms = it->second.rec.last_hit_unix_ms;
  }
  return out;
}

QueryStoreStats QueryStore::Stats() const {
  const Impl& s = *impl_;
  QueryStoreStats st;
  st.dim = s.dim;
  {
    std::lock_guard lock(impl_->write_mu);
    st.entries = s.live;
    st.duplicates_total = s.duplicates_total;
    st.epoch = s.epoch;
    st.index_epoch_saved = s.saved_epoch;
  }
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  st.inserted = get(s.n_inserted);
  st.replaced = get(s.n_replaced);
  st.duplicates = get(s.n_duplicates);
  st.erased = get(s.n_erased);
  st.lookups = get(s.n_lookups);
  st.hits = get(s.n_hits);
  st.misses = get(s.n_misses);
  st.cancelled = get(s.n_cancelled);
  st.exact_searches = get(s.n_exact);
  st.index_saves = get(s.n_saves);
  st.index_origin = s.index_origin;
  st.index_origin_reason = s.index_origin_reason;
  st.index_caught_up = s.index_caught_up;
  st.index_open_seconds = s.index_open_seconds;
  if (s.index) {
    st.index_live = s.index->live();
    st.index_deleted_nodes = s.index->deleted();
  }
  st.db_bytes = DirectoryBytes(s.db_dir);
  st.index_bytes = DirectoryBytes(s.ann_dir);
  return st;
}

}  // namespace kvtier
