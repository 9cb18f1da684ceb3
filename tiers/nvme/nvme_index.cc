#include "nvme_index.h"

#include <fmt/format.h>
#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <cstring>

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

rocksdb::WriteOptions Write(IndexSync sync) {
  rocksdb::WriteOptions w;
  w.sync = sync == IndexSync::kSync;
  return w;
}
}  // namespace

struct NvmeIndex::Impl {
  std::unique_ptr<rocksdb::DB> db;
};

NvmeIndex::NvmeIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NvmeIndex::~NvmeIndex() = default;

Result<std::unique_ptr<NvmeIndex>> NvmeIndex::Open(const std::string& path) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.paranoid_checks = true;
  options.max_open_files = 64;
  rocksdb::DB* raw = nullptr;
  KVT_RETURN_IF_ERROR(FromRocks(rocksdb::DB::Open(options, path, &raw), fmt::format("open {}", path)));
  auto impl = std::make_unique<Impl>();
  impl->db.reset(raw);
  return std::unique_ptr<NvmeIndex>(new NvmeIndex(std::move(impl)));
}

Status NvmeIndex::Put(std::span<const IndexRecord> records, IndexSync sync) {
  rocksdb::WriteBatch batch;
  for (const IndexRecord& r : records) {
    KVT_RETURN_IF_ERROR(FromRocks(batch.Put(EncodeKey(r.key), EncodeValue(r)), "batch put"));
  }
  return FromRocks(impl_->db->Write(Write(sync), &batch), "put");
}

Status NvmeIndex::Delete(std::span<const BlockKey> keys, IndexSync sync) {
  rocksdb::WriteBatch batch;
  for (const BlockKey& k : keys) KVT_RETURN_IF_ERROR(FromRocks(batch.Delete(EncodeKey(k)), "batch delete"));
  return FromRocks(impl_->db->Write(Write(sync), &batch), "delete");
}

Result<std::vector<IndexRecord>> NvmeIndex::LoadAll(uint64_t* bad) const {
  std::vector<IndexRecord> out;
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
  return FromRocks(impl_->db->Put(Write(sync), kCounterKey, v), "put counter");
}

}  // namespace kvtier::nvme
