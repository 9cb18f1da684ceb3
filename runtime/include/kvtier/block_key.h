// Block identity: BlockKey = (chain, layer), where the chain is a keyed 256-bit hash.
//
//   chain_0 = H_k(namespace_digest, tokens[0 .. block_tokens))
//   chain_i = H_k(chain_{i-1},      tokens[i*bt .. (i+1)*bt))
//
// H_k is keyed BLAKE2b-256 (libsodium) whose key is the tenant's secret, so two tenants
// with identical tokens never share a key. The namespace digest covers everything that
// changes KV bytes (NamespaceSpec). Every hashed field is written as tag + length + bytes,
// so no two different field lists encode to the same input.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "kvtier/geometry.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

// A 256-bit digest.
struct ChainHash {
  std::array<uint8_t, 32> bytes{};
  friend bool operator==(const ChainHash&, const ChainHash&) = default;
  friend auto operator<=>(const ChainHash&, const ChainHash&) = default;
  // The first 8 bytes; uniformly distributed, used for sharding and hash tables (never
  // alone as identity).
  uint64_t prefix64() const {
    uint64_t v;
    std::memcpy(&v, bytes.data(), sizeof(v));
    return v;
  }
  std::string ToHex() const;  // 64 hex digits
};

struct BlockKey {
  ChainHash chain;
  LayerId layer;
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
  friend auto operator<=>(const BlockKey&, const BlockKey&) = default;
  uint64_t hash64() const { return chain.prefix64() ^ (0x9E3779B97F4A7C15ull * (layer.value() + 1)); }
  std::string ToString() const;  // "1a2b3c4d5e6f7a8b/L3" (a short prefix, for logs)
};

// The tenant's 32-byte secret: the key of H. Derived by the daemon or the engine from an
// authenticated identity, never taken from a request.
struct TenantSecret {
  std::array<uint8_t, 32> bytes{};
  // BLAKE2b of the text: a fast hash, not a password KDF. Give it a high-entropy secret
  // (e.g. from the daemon's key file), never a human password.
  static TenantSecret FromPassphrase(std::string_view passphrase);
  static TenantSecret Random();
};

// RoPE settings that change K bytes.
struct RopeSpec {
  double theta = 10000.0;
  std::string scaling{};  // e.g. "llama3:factor=8,low=1,high=4,orig=8192"; empty = none
  friend bool operator==(const RopeSpec&, const RopeSpec&) = default;
};

// Everything that changes the bytes of a block, besides the tokens.
struct NamespaceSpec {
  std::string model_fingerprint{};  // weights id + revision, e.g. "meta-llama/Llama-3-8B@8cde5ca"
  std::string tokenizer_id{};
  KvGeometry geometry{};
  std::string kv_codec = "none";  // lossless layout name or quantiser id
  RopeSpec rope{};
  uint32_t tp_rank = 0, tp_size = 1;
  uint32_t pp_rank = 0, pp_size = 1;
  std::string lora_id{};  // empty = base model
  uint32_t format_version = 1;

  Status Validate() const;
};

// Derives chain hashes for one (tenant, namespace). Thread-safe (immutable after Create).
class KeyDeriver {
 public:
  static Result<KeyDeriver> Create(const TenantSecret& tenant, const NamespaceSpec& ns);

  const ChainHash& namespace_digest() const { return namespace_digest_; }
  uint32_t block_tokens() const { return block_tokens_; }
  uint32_t layers() const { return layers_; }

  // The chain of the block after `parent` (the namespace digest for the first block).
  // `tokens.size()` must equal block_tokens().
  Result<ChainHash> Next(const ChainHash& parent, std::span<const int32_t> tokens) const;

  // One chain hash per *full* block of `tokens` (a partial tail block has no identity yet).
  std::vector<ChainHash> Chain(std::span<const int32_t> tokens) const;
  // Continues a chain: hashes of the full blocks of `tokens` after `parent`.
  std::vector<ChainHash> ChainFrom(const ChainHash& parent, std::span<const int32_t> tokens) const;

  // The keys of `chains` for every layer, block-major: (c0,L0), (c0,L1), ..., (c1,L0), ...
  std::vector<BlockKey> Keys(std::span<const ChainHash> chains) const;

 private:
  KeyDeriver() = default;
  std::array<uint8_t, 32> secret_{};
  ChainHash namespace_digest_;
  uint32_t block_tokens_ = 0;
  uint32_t layers_ = 0;
};

}  // namespace kvtier

template <>
struct std::hash<kvtier::BlockKey> {
  size_t operator()(const kvtier::BlockKey& k) const noexcept { return k.hash64(); }
};
