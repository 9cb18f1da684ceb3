// Chain hashing with keyed BLAKE2b-256 (libsodium crypto_generichash).
//
// Every field goes into the hash as  tag (u16 LE) | length (u64 LE) | bytes,  so a field
// boundary can never be moved to make two different field lists collide, and the first
// field of every hash is a domain tag, so a namespace digest and a block chain are never
// inputs of each other's form.
#include "kvtier/block_key.h"

#include <fmt/format.h>
#include <sodium.h>

#include <cstring>
#include <string_view>

namespace kvtier {
namespace {

enum class FieldTag : uint16_t {
  kDomain = 1,
  kModel = 2,
  kTokenizer = 3,
  kLayers = 4,
  kKvHeads = 5,
  kHeadDim = 6,
  kBlockTokens = 7,
  kDType = 8,
  kCodec = 9,
  kRopeTheta = 10,
  kRopeScaling = 11,
  kTpRank = 12,
  kTpSize = 13,
  kPpRank = 14,
  kPpSize = 15,
  kLora = 16,
  kFormatVersion = 17,
  kParent = 18,
  kTokens = 19,
};

constexpr std::string_view kNamespaceDomain = "kvtier/namespace/v1";
constexpr std::string_view kBlockDomain = "kvtier/block/v1";

void EnsureSodium() {
  // sodium_init is thread-safe and idempotent; -1 means the library cannot work at all.
  static const int rc = sodium_init();
  KVT_CHECK_MSG(rc >= 0, "libsodium failed to initialise");
}

class Hasher {
 public:
  explicit Hasher(const std::array<uint8_t, 32>& key) {
    crypto_generichash_init(&state_, key.data(), key.size(), 32);
  }
  void Field(FieldTag tag, const void* data, uint64_t len) {
    uint8_t header[10];
    const uint16_t t = static_cast<uint16_t>(tag);
    for (int i = 0; i < 2; ++i) header[i] = static_cast<uint8_t>(t >> (8 * i));
    for (int i = 0; i < 8; ++i) header[2 + i] = static_cast<uint8_t>(len >> (8 * i));
    crypto_generichash_update(&state_, header, sizeof(header));
    if (len > 0) crypto_generichash_update(&state_, static_cast<const uint8_t*>(data), len);
  }
  void Field(FieldTag tag, std::string_view s) { Field(tag, s.data(), s.size()); }
  void Field(FieldTag tag, uint64_t v) {
    uint8_t le[8];
    for (int i = 0; i < 8; ++i) le[i] = static_cast<uint8_t>(v >> (8 * i));
    Field(tag, le, sizeof(le));
  }
  ChainHash Finish() {
    ChainHash h;
    crypto_generichash_final(&state_, h.bytes.data(), h.bytes.size());
    return h;
  }

 private:
  crypto_generichash_state state_;
};

}  // namespace

std::string ChainHash::ToHex() const {
  std::string s(64, '0');
  static constexpr char kDigits[] = "0123456789abcdef";
  for (size_t i = 0; i < bytes.size(); ++i) {
    s[2 * i] = kDigits[bytes[i] >> 4];
    s[2 * i + 1] = kDigits[bytes[i] & 15];
  }
  return s;
}

std::string BlockKey::ToString() const { return fmt::format("{}/L{}", chain.ToHex().substr(0, 16), layer.value()); }

TenantSecret TenantSecret::FromPassphrase(std::string_view passphrase) {
  EnsureSodium();
  TenantSecret s;
  static constexpr std::string_view kContext = "kvtier/tenant-secret/v1";
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, s.bytes.size());
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(kContext.data()), kContext.size());
  crypto_generichash_update(&st, reinterpret_cast<const uint8_t*>(passphrase.data()), passphrase.size());
  crypto_generichash_final(&st, s.bytes.data(), s.bytes.size());
  return s;
}

TenantSecret TenantSecret::Random() {
  EnsureSodium();
  TenantSecret s;
  randombytes_buf(s.bytes.data(), s.bytes.size());
  return s;
}

Status NamespaceSpec::Validate() const {
  if (model_fingerprint.empty()) {
    return Status::InvalidArgument("namespace: model_fingerprint is empty (name the weights and revision)");
  }
  KVT_RETURN_IF_ERROR(geometry.Validate());
  if (tp_size == 0 || tp_rank >= tp_size) {
    return Status::InvalidArgument(fmt::format("namespace: tp_rank {} is not below tp_size {}", tp_rank, tp_size));
  }
  if (pp_size == 0 || pp_rank >= pp_size) {
    return Status::InvalidArgument(fmt::format("namespace: pp_rank {} is not below pp_size {}", pp_rank, pp_size));
  }
  if (!(rope.theta > 0.0)) {
    return Status::InvalidArgument(fmt::format("namespace: rope theta {} is not positive", rope.theta));
  }
  return Status();
}

Result<KeyDeriver> KeyDeriver::Create(const TenantSecret& tenant, const NamespaceSpec& ns) {
  KVT_RETURN_IF_ERROR(ns.Validate());
  EnsureSodium();
  KeyDeriver d;
  d.secret_ = tenant.bytes;
  d.block_tokens_ = ns.geometry.block_tokens;
  d.layers_ = ns.geometry.layers;

  Hasher h(d.secret_);
  h.Field(FieldTag::kDomain, kNamespaceDomain);
  h.Field(FieldTag::kModel, ns.model_fingerprint);
  h.Field(FieldTag::kTokenizer, ns.tokenizer_id);
  h.Field(FieldTag::kLayers, ns.geometry.layers);
  h.Field(FieldTag::kKvHeads, ns.geometry.kv_heads);
  h.Field(FieldTag::kHeadDim, ns.geometry.head_dim);
  h.Field(FieldTag::kBlockTokens, ns.geometry.block_tokens);
  h.Field(FieldTag::kDType, static_cast<uint64_t>(ns.geometry.dtype));
  h.Field(FieldTag::kCodec, ns.kv_codec);
  uint64_t theta_bits;
  static_assert(sizeof(theta_bits) == sizeof(ns.rope.theta));
  std::memcpy(&theta_bits, &ns.rope.theta, sizeof(theta_bits));
  h.Field(FieldTag::kRopeTheta, theta_bits);
  h.Field(FieldTag::kRopeScaling, ns.rope.scaling);
  h.Field(FieldTag::kTpRank, ns.tp_rank);
  h.Field(FieldTag::kTpSize, ns.tp_size);
  h.Field(FieldTag::kPpRank, ns.pp_rank);
  h.Field(FieldTag::kPpSize, ns.pp_size);
  h.Field(FieldTag::kLora, ns.lora_id);
  h.Field(FieldTag::kFormatVersion, ns.format_version);
  d.namespace_digest_ = h.Finish();
  return d;
}

Result<ChainHash> KeyDeriver::Next(const ChainHash& parent, std::span<const int32_t> tokens) const {
  if (tokens.size() != block_tokens_) {
    return Status::InvalidArgument(
        fmt::format("a block holds {} tokens, {} were given", block_tokens_, tokens.size()));
  }
  Hasher h(secret_);
  h.Field(FieldTag::kDomain, kBlockDomain);
  h.Field(FieldTag::kParent, parent.bytes.data(), parent.bytes.size());
  // Tokens as little-endian int32, so the digest does not depend on the host. The buffer
  // holds the largest block KvGeometry::Validate accepts.
  static_assert(KvGeometry::kMaxBlockTokens == 4096);
  uint8_t le[4 * KvGeometry::kMaxBlockTokens];
  for (size_t i = 0; i < tokens.size(); ++i) {
    const uint32_t v = static_cast<uint32_t>(tokens[i]);
    for (int b = 0; b < 4; ++b) le[4 * i + b] = static_cast<uint8_t>(v >> (8 * b));
  }
  h.Field(FieldTag::kTokens, le, 4 * tokens.size());
  return h.Finish();
}

std::vector<ChainHash> KeyDeriver::ChainFrom(const ChainHash& parent, std::span<const int32_t> tokens) const {
  std::vector<ChainHash> out;
  out.reserve(tokens.size() / block_tokens_);
  ChainHash prev = parent;
  for (size_t off = 0; off + block_tokens_ <= tokens.size(); off += block_tokens_) {
    prev = *Next(prev, tokens.subspan(off, block_tokens_));  // size checked by the loop bound
    out.push_back(prev);
  }
  return out;
}

std::vector<ChainHash> KeyDeriver::Chain(std::span<const int32_t> tokens) const {
  return ChainFrom(namespace_digest_, tokens);
}

std::vector<BlockKey> KeyDeriver::Keys(std::span<const ChainHash> chains) const {
  std::vector<BlockKey> keys;
  keys.reserve(chains.size() * layers_);
  for (const ChainHash& c : chains) {
    for (uint32_t l = 0; l < layers_; ++l) keys.push_back(BlockKey{c, LayerId{l}});
  }
  return keys;
}

}  // namespace kvtier
