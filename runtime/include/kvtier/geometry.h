// KvGeometry: the shape of one model's KV cache (one TP shard), and the byte layout of a
// block in every tier.
//
// Layout of a block: head-major `[head][K|V][token][dim]`, so one slice (one KV head: K then
// V) is one contiguous run of slice_bytes(), and a block is one run of block_bytes().
#pragma once

#include <cstdint>
#include <string_view>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

enum class DType : uint8_t { kF16 = 1, kBF16 = 2, kF32 = 3, kFp8E4M3 = 4, kFp8E5M2 = 5 };
uint32_t DTypeBytes(DType d);
std::string_view DTypeName(DType d);        // "f16", "bf16", "f32", "fp8e4m3", "fp8e5m2"
Result<DType> ParseDType(std::string_view name);

enum class KvPart : uint8_t { kKey = 0, kValue = 1 };

struct KvGeometry {
  uint32_t layers = 0;
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t block_tokens = 0;
  DType dtype = DType::kBF16;

  static constexpr uint32_t kMaxBlockTokens = 4096;

  // Llama-3-8B: 32 layers, 8 KV heads, d=128, 16-token blocks, bf16 (64 KiB blocks).
  static KvGeometry Llama3_8B();

  // Every field non-zero and within sane bounds, slice bytes a multiple of 16 (the movers
  // copy 16-byte words), block bytes at most 64 MiB. Says which field is wrong.
  Status Validate() const;

  uint64_t slice_bytes() const { return 2ull * block_tokens * head_dim * DTypeBytes(dtype); }
  uint64_t block_bytes() const { return kv_heads * slice_bytes(); }
  // Bytes of KV per token over all layers.
  uint64_t bytes_per_token() const { return block_bytes() * layers / block_tokens; }

  // Byte offset of element (head, part, token, dim) inside a block.
  uint64_t Offset(uint32_t head, KvPart part, uint32_t token, uint32_t dim) const {
    const uint64_t e = DTypeBytes(dtype);
    return head * slice_bytes() + static_cast<uint64_t>(part) * block_tokens * head_dim * e +
           (static_cast<uint64_t>(token) * head_dim + dim) * e;
  }
  uint64_t SliceOffset(uint32_t head) const { return head * slice_bytes(); }

  friend bool operator==(const KvGeometry&, const KvGeometry&) = default;
};

}  // namespace kvtier
