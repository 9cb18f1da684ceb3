// Quest slice metadata of one sequence (docs/sparse.md): per (layer, KV head, block) the
// per-channel minimum and maximum of the block's keys (keys as cached, after RoPE), which
// QuestSelector turns into an upper bound of q·k per block.
//
// Updates follow Quest's Alg. 1: while a block fills, fp32 running min/max; when it fills,
// its compact form — int8 per channel + one fp32 scale (kernels/reference/quest_select.h,
// QuantizeQuestBounds) — is written and the block is never touched again. The partial
// (last) block's compact form is refreshed at the end of every Append, so Bounds() always
// covers every block, the partial one included. With `keep_exact_bounds` the fp32 bounds of
// every block are kept as well (evaluation, QuestSelectorOptions::use_compact_metadata =
// false).
//
// Bytes (bytes()): per slice 2·d + 4 (compact) plus 8·d when exact bounds are kept, and per
// (layer, KV head) 8·d for the running bounds of the partial block. At d = 128, 16-token
// bf16 blocks (8 KiB of K+V per slice) the compact form is 260 B = 3.2%.
//
// Threading: externally synchronized — one engine thread appends; const calls may run
// concurrently with each other but not with Append. Views returned by Bounds() stay valid
// until the next Append to that layer.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

// How the keys handed to Append are laid out (both C order, fp32).
enum class KeyLayout : uint8_t {
  kTokenMajor = 0,  // [tokens][kv_heads][head_dim] (what an engine produces per step)
  kHeadMajor = 1,   // [kv_heads][tokens][head_dim] (a layer's cache, `kvtier select` files)
};

struct SliceMetadataOptions {
  uint32_t layers = 0;           // >= 1
  uint32_t kv_heads = 0;         // >= 1
  uint32_t head_dim = 0;         // 1 .. 1024
  uint32_t block_tokens = 16;    // tokens per block (Quest's page size), >= 1
  bool keep_exact_bounds = false;  // also keep fp32 bounds of every block (4× the bytes)

  Status Validate() const;  // kInvalidArgument naming the field
};

// The bounds of one (layer, KV head) over every block, the partial one last.
struct SliceBoundsView {
  uint32_t blocks = 0;
  std::span<const int8_t> compact{};  // [blocks][2][head_dim]: min then max, int8
  std::span<const float> scales{};    // [blocks]
  std::span<const float> exact{};     // [blocks][2][head_dim] fp32; empty unless keep_exact_bounds
};

class SliceMetadata {
 public:
  static Result<SliceMetadata> Create(SliceMetadataOptions options);

  // Folds `tokens` new keys of `layer` into the bounds. keys.size() must be
  // tokens · kv_heads · head_dim. kInvalidArgument (nothing changed) for a layer out of
  // range, a wrong size, a non-finite key, or a layer that would exceed 2^32 - 1 blocks.
  Status Append(LayerId layer, std::span<const float> keys, uint32_t tokens,
                KeyLayout layout = KeyLayout::kTokenMajor);

  // Bounds of every block of (layer, kv_head). kInvalidArgument for an index out of range.
  Result<SliceBoundsView> Bounds(LayerId layer, uint32_t kv_head) const;
  // fp32 running min [d] then max [d] of the partial block of (layer, kv_head); empty when
  // the layer has no tokens or its last block is full.
  std::span<const float> PartialBounds(LayerId layer, uint32_t kv_head) const;

  uint64_t tokens(LayerId layer) const;  // appended to `layer` (0 for a layer out of range)
  uint32_t blocks(LayerId layer) const;  // ceil(tokens / block_tokens)
  Bytes bytes() const;                   // metadata held, as counted above
  const SliceMetadataOptions& options() const { return options_; }

 private:
  struct Head {
    std::vector<int8_t> compact;  // [blocks][2][d]
    std::vector<float> scales;    // [blocks]
    std::vector<float> exact;     // [blocks][2][d] when kept
    std::vector<float> running;   // [2][d]: the partial block
  };
  explicit SliceMetadata(SliceMetadataOptions options);
  Head& At(uint32_t layer, uint32_t kv_head) { return heads_[size_t{layer} * options_.kv_heads + kv_head]; }
  const Head& At(uint32_t layer, uint32_t kv_head) const { return heads_[size_t{layer} * options_.kv_heads + kv_head]; }
  void SealBlock(Head& head, uint32_t block);  // running → compact (and exact) of `block`

  SliceMetadataOptions options_;
  std::vector<Head> heads_;       // [layers][kv_heads]
  std::vector<uint64_t> tokens_;  // per layer
};

}  // namespace kvtier
