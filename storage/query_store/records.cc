#include "query_store/records.h"

#include <fmt/format.h>
#define XXH_STATIC_LINKING_ONLY  // XXH3_state_t on the stack
#include <xxhash.h>

#include <bit>
#include <cstring>

namespace kvtier::query_store {
namespace {

static_assert(std::endian::native == std::endian::little, "the encodings assume a little-endian host");

constexpr uint8_t kEntryVersion = 1;
constexpr uint8_t kVectorVersion = 1;
constexpr size_t kChecksumBytes = 8;

uint64_t Seed(std::string_view cf, std::string_view key) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, cf.data(), cf.size());
  const uint8_t separator = 0;  // "ab"+"c" and "a"+"bc" must differ
  XXH3_64bits_update(&state, &separator, 1);
  XXH3_64bits_update(&state, key.data(), key.size());
  return XXH3_64bits_digest(&state);
}

template <class T>
void Put(std::string& out, T v) {
  char buf[sizeof(T)];
  std::memcpy(buf, &v, sizeof(T));
  out.append(buf, sizeof(T));
}

void PutBytes(std::string& out, std::string_view s) {
  Put<uint32_t>(out, static_cast<uint32_t>(s.size()));
  out.append(s);
}

// A bounds-checked reader: every Get fails (instead of reading past the end) once the
// payload is exhausted, so a malformed record is an error, never a crash.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  template <class T>
  bool Get(T* v) {
    if (s_.size() < sizeof(T)) return false;
    std::memcpy(v, s_.data(), sizeof(T));
    s_.remove_prefix(sizeof(T));
    return true;
  }
  bool GetBytes(std::string* v) {
    uint32_t n = 0;
    if (!Get(&n) || s_.size() < n) return false;
    v->assign(s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }
  bool GetRaw(void* dst, size_t n) {
    if (n == 0) return true;  // dst may be the null data() of an empty vector
    if (s_.size() < n) return false;
    std::memcpy(dst, s_.data(), n);
    s_.remove_prefix(n);
    return true;
  }
  bool done() const { return s_.empty(); }
  size_t left() const { return s_.size(); }

 private:
  std::string_view s_;
};

Status Malformed(std::string_view what, uint64_t label) {
  return Status::DataLoss(fmt::format("malformed {} record for label {}", what, label));
}

}  // namespace

std::string Seal(std::string_view cf, std::string_view key, std::string payload) {
  const uint64_t sum = XXH3_64bits_withSeed(payload.data(), payload.size(), Seed(cf, key));
  Put(payload, sum);
  return payload;
}

Result<std::string_view> Unseal(std::string_view cf, std::string_view key, std::string_view value) {
  if (value.size() < kChecksumBytes) {
    return Status::DataLoss(fmt::format("{} value of {} B is shorter than its checksum", cf, value.size()));
  }
  const std::string_view payload = value.substr(0, value.size() - kChecksumBytes);
  uint64_t stored = 0;
  std::memcpy(&stored, value.data() + payload.size(), kChecksumBytes);
  if (XXH3_64bits_withSeed(payload.data(), payload.size(), Seed(cf, key)) != stored) {
    return Status::DataLoss(fmt::format("checksum mismatch in column family {}", cf));
  }
  return payload;
}

std::string LabelKey(uint64_t label) {
  const uint64_t be = __builtin_bswap64(label);
  return std::string(reinterpret_cast<const char*>(&be), sizeof(be));
}

Result<uint64_t> ParseLabelKey(std::string_view key) {
  if (key.size() != sizeof(uint64_t)) return Status::DataLoss(fmt::format("label key of {} B", key.size()));
  uint64_t be = 0;
  std::memcpy(&be, key.data(), sizeof(be));
  return __builtin_bswap64(be);
}

std::string EncodeU64(std::string_view cf, std::string_view key, uint64_t v) {
  std::string p;
  Put(p, v);
  return Seal(cf, key, std::move(p));
}

Result<uint64_t> DecodeU64(std::string_view cf, std::string_view key, std::string_view value) {
  KVT_ASSIGN_OR_RETURN(std::string_view p, Unseal(cf, key, value));
  uint64_t v = 0;
  if (p.size() != sizeof(v)) return Status::DataLoss(fmt::format("{}/{}: {} B where 8 were expected", cf, key, p.size()));
  std::memcpy(&v, p.data(), sizeof(v));
  return v;
}

std::string EncodeEntry(uint64_t label, const EntryRecord& e) {
  std::string p;
  p.reserve(64 + e.id.size() + e.query.size() + e.response.size() + e.source.size() + 4 * e.prefix_tokens.size());
  Put(p, kEntryVersion);
  PutBytes(p, e.id);
  Put(p, e.created_unix_ms);
  PutBytes(p, e.query);
  PutBytes(p, e.response);
  PutBytes(p, e.source);
  Put<uint32_t>(p, static_cast<uint32_t>(e.prefix_tokens.size()));
  p.append(reinterpret_cast<const char*>(e.prefix_tokens.data()), e.prefix_tokens.size() * sizeof(int32_t));
  Put<uint8_t>(p, e.prefix_chain ? 1 : 0);
  if (e.prefix_chain) p.append(reinterpret_cast<const char*>(e.prefix_chain->bytes.data()), 32);
  return Seal(kCfEntries, LabelKey(label), std::move(p));
}

Result<EntryRecord> DecodeEntry(uint64_t label, std::string_view value) {
  KVT_ASSIGN_OR_RETURN(std::string_view p, Unseal(kCfEntries, LabelKey(label), value));
  Reader r(p);
  EntryRecord e;
  uint8_t version = 0, has_chain = 0;
  uint32_t tokens = 0;
  if (!r.Get(&version) || version != kEntryVersion) return Malformed("entry (version)", label);
  if (!r.GetBytes(&e.id) || !r.Get(&e.created_unix_ms) || !r.GetBytes(&e.query) || !r.GetBytes(&e.response) ||
      !r.GetBytes(&e.source) || !r.Get(&tokens) || r.left() < size_t(tokens) * sizeof(int32_t)) {
    return Malformed("entry", label);
  }
  e.prefix_tokens.resize(tokens);
  if (!r.GetRaw(e.prefix_tokens.data(), size_t(tokens) * sizeof(int32_t)) || !r.Get(&has_chain) || has_chain > 1) {
    return Malformed("entry (prefix)", label);
  }
  if (has_chain) {
    ChainHash c;
    if (!r.GetRaw(c.bytes.data(), c.bytes.size())) return Malformed("entry (chain)", label);
    e.prefix_chain = c;
  }
  if (!r.done()) return Malformed("entry (trailing bytes)", label);
  return e;
}

std::string EncodeVector(uint64_t label, float norm, std::span<const float> unit) {
  std::string p;
  p.reserve(16 + unit.size_bytes());
  Put(p, kVectorVersion);
  Put<uint32_t>(p, static_cast<uint32_t>(unit.size()));
  Put(p, norm);
  p.append(reinterpret_cast<const char*>(unit.data()), unit.size_bytes());
  return Seal(kCfVectors, LabelKey(label), std::move(p));
}

Status DecodeVector(uint64_t label, std::string_view value, uint32_t dim, float* out, float* norm) {
  KVT_ASSIGN_OR_RETURN(std::string_view p, Unseal(kCfVectors, LabelKey(label), value));
  Reader r(p);
  uint8_t version = 0;
  uint32_t d = 0;
  if (!r.Get(&version) || version != kVectorVersion || !r.Get(&d) || d != dim || !r.Get(norm) ||
      r.left() != size_t(dim) * sizeof(float) || !r.GetRaw(out, size_t(dim) * sizeof(float))) {
    return Malformed("vector", label);
  }
  return Status::Ok();
}

std::string EncodeIdValue(std::string_view id, uint64_t label) {
  std::string p;
  Put(p, label);
  return Seal(kCfIds, id, std::move(p));
}

Result<uint64_t> DecodeIdValue(std::string_view id, std::string_view value) {
  return DecodeU64(kCfIds, id, value);
}

std::string EncodeHits(uint64_t label, const HitRecord& h) {
  std::string p;
  Put(p, h.count);
  Put(p, h.last_hit_unix_ms);
  return Seal(kCfHits, LabelKey(label), std::move(p));
}

Result<HitRecord> DecodeHits(uint64_t label, std::string_view value) {
  KVT_ASSIGN_OR_RETURN(std::string_view p, Unseal(kCfHits, LabelKey(label), value));
  Reader r(p);
  HitRecord h;
  if (!r.Get(&h.count) || !r.Get(&h.last_hit_unix_ms) || !r.done()) return Malformed("hits", label);
  return h;
}

}  // namespace kvtier::query_store
