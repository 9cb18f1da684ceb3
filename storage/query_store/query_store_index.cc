// The ANN index's life: load it at open (checked against the manifest and the store's
// epoch), catch a stale one up from RocksDB, rebuild a missing or bad one, save it with an
// atomic replace, and verify the whole store.
#include <fmt/format.h>

#include <chrono>
#include <unordered_map>

#include "query_store/index_manifest.h"
#include "query_store/query_store_impl.h"

namespace kvtier {

using namespace query_store;  // NOLINT(google-build-using-namespace)

namespace {

constexpr size_t kScanBatch = 1024;

AnnParams ParamsOf(const QueryStoreOptions& o, uint32_t dim) {
  return AnnParams{.dim = dim, .m = o.hnsw_m, .ef_construction = o.hnsw_ef_construction, .ef_search = o.hnsw_ef_search,
                   .threads = o.index_threads};
}

// Adds every vector of the `vectors` column family from label `first` on.
Result<uint64_t> AddVectorsFrom(QueryStore::Impl& s, uint64_t first) {
  std::unique_ptr<rocksdb::Iterator> it(s.db->NewIterator(rocksdb::ReadOptions(), s.cf(kVectors)));
  std::vector<uint64_t> labels;
  std::vector<float> vectors;
  uint64_t added = 0;
  auto flush = [&]() -> Status {
    KVT_RETURN_IF_ERROR(s.index->Add(labels, vectors));
    added += labels.size();
    labels.clear();
    vectors.clear();
    return Status::Ok();
  };
  for (it->Seek(LabelKey(first)); it->Valid(); it->Next()) {
    KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
    labels.push_back(label);
    vectors.resize(labels.size() * s.dim);
    float norm = 0;
    KVT_RETURN_IF_ERROR(DecodeVector(label, it->value().ToStringView(), s.dim, vectors.data() + (labels.size() - 1) * s.dim, &norm));
    if (labels.size() == kScanBatch) KVT_RETURN_IF_ERROR(flush());
  }
  KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning vectors"));
  KVT_RETURN_IF_ERROR(flush());
  return added;
}

}  // namespace

Status QueryStore::Impl::RebuildIndex(std::string reason) {
  log->Log(LogLevel::kWarning, "query store {}: rebuilding the ANN index of {} entries ({})", options.dir.string(), live, reason);
  KVT_ASSIGN_OR_RETURN(index, AnnIndex::Create(ParamsOf(options, dim), live + 1024));
  KVT_ASSIGN_OR_RETURN(uint64_t added, AddVectorsFrom(*this, 0));
  if (added != live) {
    return Status::DataLoss(fmt::format("{} vectors stored, metadata says {} live entries", added, live));
  }
  index_origin = QueryStoreStats::IndexOrigin::kRebuilt;
  index_origin_reason = std::move(reason);
  saved_epoch = 0;
  saved_payload.clear();
  changed_since_save = live;
  return Status::Ok();
}

Status QueryStore::Impl::OpenIndex() {
  const auto t0 = std::chrono::steady_clock::now();
  auto done = [&](Status st) {
    index_open_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return st;
  };
  Result<IndexManifest> m = ReadManifest(ann_dir);
  if (!m.ok()) {
    if (m.status().code() == StatusCode::kNotFound && next_label == 0) {
      KVT_ASSIGN_OR_RETURN(index, AnnIndex::Create(ParamsOf(options, dim), 1024));
      index_origin = QueryStoreStats::IndexOrigin::kCreated;
      return done(Status::Ok());
    }
    return done(RebuildIndex(m.status().code() == StatusCode::kNotFound ? "no saved index" : m.status().ToString()));
  }
  if (m->dim != dim || m->db_identity != db_identity) return done(RebuildIndex("the saved index belongs to another store"));
  if (m->element_bytes != 2) return done(RebuildIndex(fmt::format("the saved index has {}-byte elements", m->element_bytes)));
  if (m->epoch > epoch || m->next_label > next_label) {
    return done(RebuildIndex(fmt::format("the saved index (epoch {}) is newer than the data (epoch {})", m->epoch, epoch)));
  }
  const std::filesystem::path payload = ann_dir / m->payload;
  Result<FileDigest> digest = DigestFile(payload);
  if (!digest.ok()) return done(RebuildIndex(digest.status().ToString()));
  if (digest->bytes != m->payload_bytes || digest->xxh3 != m->payload_xxh3) {
    return done(RebuildIndex(fmt::format("{} fails its checksum", m->payload)));
  }
  const size_t headroom = (live > m->live ? live - m->live : 0) + 1024;
  Result<std::unique_ptr<AnnIndex>> loaded = AnnIndex::Load(ParamsOf(options, dim), payload, headroom);
  if (!loaded.ok()) return done(RebuildIndex(loaded.status().ToString()));
  index = std::move(loaded).value();
  saved_epoch = m->epoch;
  saved_payload = m->payload;
  if (m->epoch == epoch) {
    if (index->live() != live) return done(RebuildIndex(fmt::format("index holds {} entries, the data {}", index->live(), live)));
    index_origin = QueryStoreStats::IndexOrigin::kLoaded;
    return done(Status::Ok());
  }
  // Stale: labels are assigned in order and never reused, so what changed since the save
  // is every vector from the saved next_label on, plus the erasures logged since.
  Result<uint64_t> added = AddVectorsFrom(*this, m->next_label);
  if (!added.ok()) return done(RebuildIndex(added.status().ToString()));
  uint64_t removed = 0;
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kErased)));
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    Result<uint64_t> label = ParseLabelKey(it->key().ToStringView());
    if (!label.ok()) return done(RebuildIndex(label.status().ToString()));
    if (index->Contains(*label)) {
      KVT_RETURN_IF_ERROR(index->Remove(*label));
      ++removed;
    }
  }
  if (!it->status().ok()) return done(RebuildIndex(it->status().ToString()));
  if (index->live() != live) {
    return done(RebuildIndex(fmt::format("after catching up the index holds {} entries, the data {}", index->live(), live)));
  }
  index_origin = QueryStoreStats::IndexOrigin::kCaughtUp;
  index_origin_reason = fmt::format("saved at epoch {}, data at epoch {}", m->epoch, epoch);
  index_caught_up = *added + removed;
  changed_since_save = index_caught_up;
  log->Log(LogLevel::kInfo, "query store {}: ANN index caught up (+{} -{})", options.dir.string(), *added, removed);
  return done(Status::Ok());
}

Status QueryStore::Impl::SaveIndexLocked() {
  if (!saved_payload.empty() && saved_epoch == epoch) return Status::Ok();  // nothing changed
  if (!write_error.ok()) return write_error;
  // The manifest will claim `epoch`: make the data durable up to it first, so a crash can
  // never leave an index that is newer than the data.
  KVT_RETURN_IF_ERROR(FromRocks(db->FlushWAL(/*sync=*/true), "syncing the WAL"));
  const std::string name = fmt::format("hnsw-{:016x}.bin", epoch);
  const std::filesystem::path payload = ann_dir / name;
  if (Status st = index->Save(payload); !st.ok()) {
    std::error_code ec;
    std::filesystem::remove(payload, ec);
    return std::move(st).Annotate("saving the ANN index");
  }
  Result<FileDigest> digest = DigestFile(payload);
  if (!digest.ok()) return digest.status();
  IndexManifest m;
  m.dim = dim;
  m.m = options.hnsw_m;
  m.ef_construction = options.hnsw_ef_construction;
  m.db_identity = db_identity;
  m.epoch = epoch;
  m.next_label = next_label;
  m.live = index->live();
  m.payload = name;
  m.payload_bytes = digest->bytes;
  m.payload_xxh3 = digest->xxh3;
  KVT_RETURN_IF_ERROR(WriteManifest(ann_dir, m));
  // The new index is current: older payloads and the erasure log it includes can go.
  std::error_code ec;
  for (const auto& f : std::filesystem::directory_iterator(ann_dir, ec)) {
    const std::string fname = f.path().filename().string();
    if (fname != name && fname.starts_with("hnsw-")) std::filesystem::remove(f.path(), ec);
  }
  rocksdb::WriteBatch prune;
  (void)prune.DeleteRange(cf(kErased), LabelKey(0), LabelKey(next_label));
  if (Status w = Write(prune, Durability::kBuffered); !w.ok()) {
    log->Log(LogLevel::kWarning, "query store: pruning the erasure log: {}", w.ToString());
  }
  saved_epoch = epoch;
  saved_payload = name;
  changed_since_save = 0;
  n_saves.fetch_add(1, std::memory_order_relaxed);
  return Status::Ok();
}

Status QueryStore::Impl::VerifyAll() {
  std::unordered_map<uint64_t, std::string> ids;  // label -> id
  {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kIds)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      const std::string id = it->key().ToString();
      KVT_ASSIGN_OR_RETURN(uint64_t label, DecodeIdValue(id, it->value().ToStringView()));
      if (label >= next_label) return Status::DataLoss(fmt::format("id '{}' has label {} >= next_label {}", id, label, next_label));
      if (!ids.emplace(label, id).second) return Status::DataLoss(fmt::format("label {} has two ids", label));
    }
    KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning ids"));
  }
  if (ids.size() != live) return Status::DataLoss(fmt::format("{} ids, metadata says {} live", ids.size(), live));
  uint64_t entries = 0, vectors = 0;
  {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kEntries)));
    for (it->SeekToFirst(); it->Valid(); it->Next(), ++entries) {
      KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
      KVT_ASSIGN_OR_RETURN(EntryRecord rec, DecodeEntry(label, it->value().ToStringView()));
      auto found = ids.find(label);
      if (found == ids.end() || found->second != rec.id) {
        return Status::DataLoss(fmt::format("entry at label {} ('{}') is not the one its id maps to", label, rec.id));
      }
    }
    KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning entries"));
  }
  {
    std::vector<float> v(dim);
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kVectors)));
    for (it->SeekToFirst(); it->Valid(); it->Next(), ++vectors) {
      KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
      float norm = 0;
      KVT_RETURN_IF_ERROR(DecodeVector(label, it->value().ToStringView(), dim, v.data(), &norm));
      if (!ids.contains(label)) return Status::DataLoss(fmt::format("vector at label {} has no entry", label));
      if (!index->Contains(label)) return Status::DataLoss(fmt::format("label {} is stored but not in the ANN index", label));
    }
    KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning vectors"));
  }
  if (entries != live || vectors != live) {
    return Status::DataLoss(fmt::format("{} entries and {} vectors, metadata says {} live", entries, vectors, live));
  }
  if (index->live() != live) return Status::DataLoss(fmt::format("ANN index holds {} entries, the data {}", index->live(), live));
  {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf(kHits)));
    for (it->SeekToFirst(); it->Valid(); it->Next()) {
      KVT_ASSIGN_OR_RETURN(uint64_t label, ParseLabelKey(it->key().ToStringView()));
      KVT_RETURN_IF_ERROR(DecodeHits(label, it->value().ToStringView()).status());
      if (!ids.contains(label)) return Status::DataLoss(fmt::format("hit counts for label {} without an entry", label));
    }
    KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scanning hits"));
  }
  return Status::Ok();
}

}  // namespace kvtier
