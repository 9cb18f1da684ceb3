#include "nvme_index.h"

#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/memtablerep.h>
#include <rocksdb/write_batch.h>

#include <chrono>
#include <cstdarg>
#include <cstring>
#include <mutex>
#include <shared_mutex>

namespace kvtier::nvme {

namespace {
// Keys: 'b' + chain (32 B) + layer (4 B). The counter: 'm' + "next_generation".
constexpr size_t kKeyBytes = 37;
constexpr size_t kValueBytes = 4 + 8 + 8 + 8;
const std::string kCounterKey = "mnext_generation";

std::string EncodeKey(const BlockKey& k) {
  std::string s(kKeyBytes, '\0');
  s[0] = 'b';
  std::memcpy(s.data() + 1, k.chain.bytes.data(), 32);
  const uint32_t layer = k.layer.value();
  std::memcpy(s.data() + 33, &layer, 4);
  return s;
}

std::string EncodeValue(const IndexRecord& r) {
  std::string s(kValueBytes, '\0');
  const uint32_t slot = r.slot.value();
  std::memcpy(s.data(), &slot, 4);
  std::memcpy(s.data() + 4, &r.generation, 8);
  std::memcpy(s.data() + 12, &r.checksum, 8);
  std::memcpy(s.data() + 20, &r.payload_bytes, 8);
  return s;
}

Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return Status();
  if (s.IsNoSpace()) return Status::NoSpace(fmt::format("nvme index {}: {}", what, s.ToString()));
  if (s.IsCorruption()) return Status::DataLoss(fmt::format("nvme index {}: {}", what, s.ToString()));
  if (s.IsIOError()) return Status::IoError(fmt::format("nvme index {}: {}", what, s.ToString()));
  return Status::Internal(fmt::format("nvme index {}: {}", what, s.ToString()));
}

rocksdb::WriteOptions WriteOpts(IndexSync sync) {
  rocksdb::WriteOptions w;
  w.sync = sync == IndexSync::kSync;
  return w;
}
}  // namespace

// RocksDB's info log goes nowhere. Its default (a LOG file in the index directory) shares
// the disk: once a LOG write failed on a full disk, RocksDB 7.8 aborts on the next log
// line (WritableFileWriter::AssertFalseAndGetStatusForPrevError), which its error handler
// writes as soon as a WAL write fails. Errors reach the caller as Status instead.
class NoInfoLog final : public rocksdb::Logger {
 public:
  NoInfoLog() : rocksdb::Logger(rocksdb::InfoLogLevel::HEADER_LEVEL) {}
  using rocksdb::Logger::Logv;
  void Logv(const char*, va_list) override {}
};

Result<std::unique_ptr<rocksdb::DB>> OpenDb(const std::string& path) {
  rocksdb::Options options;
  options.info_log = std::make_shared<NoInfoLog>();
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.max_open_files = 64;
  // The memtable is a vector (appends), not the default skip list. The index is written on
  // every published block and read only at open (LoadAll, GetCounter), which suits a vector
  // memtable: an insert is an append, while a read or a flush sorts a copy. With the skip list,
  // each insert walked a list that grows with every overwrite of the same key (~5 us a key at
  // 500k entries, 8x the vector's cost in a 16-key-batch microbenchmark). That walk ran on the
  // writing mover's I/O thread. Vector memtables cannot take concurrent inserts, so RocksDB
  // serializes writers (they already were: one writing I/O thread plus Release's deletes).
  // The WAL and the sync policy are unchanged (docs/formats.md).
  options.memtable_factory = std::make_shared<rocksdb::VectorRepFactory>();
  options.allow_concurrent_memtable_write = false;
  rocksdb::DB* raw = nullptr;
  KVT_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(options, path, &raw), fmt::format("open {}", path)));
  return std::unique_ptr<rocksdb::DB>(raw);
}

using SteadyClock = std::chrono::steady_clock;

struct NvmeIndex::Impl {
  std::string path;
  // Shared by every use of `db`; exclusive while the handle is replaced.
  mutable std::shared_mutex mu;
  std::unique_ptr<rocksdb::DB> db;  // null after a reopen failed (until one succeeds)
  // Set by a failed write (kNoSpace / kIoError), under mu (exclusive) or by the writer that
  // failed (then under `error_mu`). While set, writes are refused without touching `db`:
  // RocksDB 7.8 aborts (WritableFileWriter assertion) on a write after a failed WAL write,
  // and its Resume() reuses that WAL writer.
  std::mutex error_mu;
  Status write_error;
  SteadyClock::time_point last_reopen{};
  uint64_t reopens = 0;

  bool failed() {
    std::lock_guard lock(error_mu);
    return !write_error.ok();
  }
  Status Refusal() {
    std::lock_guard lock(error_mu);
    return Status(write_error.code(),
                  fmt::format("nvme index {}: writes refused since a failed write ({}); retried by reopening the index "
                              "at most every {} ms",
                              path, write_error.message(), kReopenInterval.count()));
  }
  // Healthy, or a reopen (at most one per kReopenInterval) made it healthy again.
  Status Recover() {
    if (!failed()) return Status();
    std::unique_lock lock(mu);
    if (!failed()) return Status();  // another writer reopened it
    const auto now = SteadyClock::now();
    if (now - last_reopen < kReopenInterval) return Refusal();
    last_reopen = now;
    db.reset();  // closes the failed handle (no further writes through it)
    auto fresh = OpenDb(path);
    if (!fresh.ok()) {
      Status r = Refusal();
      return Status(r.code(), fmt::format("{}; reopen failed: {}", r.message(), fresh.status().message()));
    }
    db = std::move(fresh).value();
    ++reopens;
    std::lock_guard e(error_mu);
    write_error = Status();
    return Status();
  }
  Status Write(rocksdb::WriteBatch* batch, IndexSync sync, std::string_view what) {
    KVT_RETURN_IF_ERROR(Recover());
    std::shared_lock lock(mu);
    if (failed() || db == nullptr) return Refusal();
    Status s = FromRocks(db->Write(WriteOpts(sync), batch), what);
    if (!s.ok() && (s.code() == StatusCode::kNoSpace || s.code() == StatusCode::kIoError)) {
      std::lock_guard e(error_mu);
      if (write_error.ok()) write_error = s;
    }
    return s;
  }
};

NvmeIndex::NvmeIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NvmeIndex::~NvmeIndex() = default;

Result<std::unique_ptr<NvmeIndex>> NvmeIndex::Open(const std::string& path) {
  auto impl = std::make_unique<Impl>();
  impl->path = path;
  KVT_ASSIGN_OR_RETURN(impl->db, OpenDb(path));
  return std::unique_ptr<NvmeIndex>(new NvmeIndex(std::move(impl)));
}

Status NvmeIndex::Put(std::span<const IndexRecord> records, IndexSync sync) {
  rocksdb::WriteBatch batch;
  for (const IndexRecord& r : records) {
    KVT_RETURN_IF_ERROR(FromRocks(batch.Put(EncodeKey(r.key), EncodeValue(r)), "batch put"));
  }
  return impl_->Write(&batch, sync, "put");
}

Status NvmeIndex::Delete(std::span<const BlockKey> keys, IndexSync sync) {
  rocksdb::WriteBatch batch;
  for (const BlockKey& k : keys) KVT_RETURN_IF_ERROR(FromRocks(batch.Delete(EncodeKey(k)), "batch delete"));
  return impl_->Write(&batch, sync, "delete");
}

bool NvmeIndex::writable() const { return !impl_->failed(); }

uint64_t NvmeIndex::reopens() const {
  std::shared_lock lock(impl_->mu);
  return impl_->reopens;
}

Result<std::vector<IndexRecord>> NvmeIndex::LoadAll(uint64_t* bad) const {
  std::vector<IndexRecord> out;
  std::shared_lock lock(impl_->mu);
  if (impl_->db == nullptr) return Status::Unavailable(fmt::format("nvme index {}: closed after a failed reopen", impl_->path));
  std::unique_ptr<rocksdb::Iterator> it(impl_->db->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("b"); it->Valid() && it->key().starts_with("b"); it->Next()) {
    if (it->key().size() != kKeyBytes || it->value().size() != kValueBytes) {
      ++*bad;
      continue;
    }
    IndexRecord r;
    std::memcpy(r.key.chain.bytes.data(), it->key().data() + 1, 32);
    uint32_t layer = 0, slot = 0;
    std::memcpy(&layer, it->key().data() + 33, 4);
    r.key.layer = LayerId{layer};
    std::memcpy(&slot, it->value().data(), 4);
    r.slot = SlotId{slot};
    std::memcpy(&r.generation, it->value().data() + 4, 8);
    std::memcpy(&r.checksum, it->value().data() + 12, 8);
    std::memcpy(&r.payload_bytes, it->value().data() + 20, 8);
    out.push_back(r);
  }
  KVT_RETURN_IF_ERROR(FromRocks(it->status(), "scan"));
  return out;
}

Result<uint64_t> NvmeIndex::GetCounter() const {
  std::string v;
  std::shared_lock lock(impl_->mu);
  if (impl_->db == nullptr) return Status::Unavailable(fmt::format("nvme index {}: closed after a failed reopen", impl_->path));
  rocksdb::Status s = impl_->db->Get(rocksdb::ReadOptions(), kCounterKey, &v);
  if (s.IsNotFound()) return uint64_t{0};
  KVT_RETURN_IF_ERROR(FromRocks(s, "get counter"));
  if (v.size() != 8) return Status::DataLoss("nvme index: malformed generation counter");
  uint64_t x;
  std::memcpy(&x, v.data(), 8);
  return x;
}

Status NvmeIndex::PutCounter(uint64_t value, IndexSync sync) {
  std::string v(8, '\0');
  std::memcpy(v.data(), &value, 8);
  rocksdb::WriteBatch batch;
  KVT_RETURN_IF_ERROR(FromRocks(batch.Put(kCounterKey, v), "batch put counter"));
  return impl_->Write(&batch, sync, "put counter");
}

}  // namespace kvtier::nvme
