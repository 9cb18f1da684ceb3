// Append checks everything before it changes anything, so a refused call leaves the
// metadata as it was. The running bounds of the partial block are kept in fp32 and the
// compact slot is rewritten from them (not min/max'ed in int8), so quantisation error never
// accumulates over a block's tokens.
#include "kvtier/slice_metadata.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "reference/quest_select.h"

namespace kvtier {

Status SliceMetadataOptions::Validate() const {
  if (layers == 0 || kv_heads == 0 || head_dim == 0 || block_tokens == 0) {
    return Status::InvalidArgument(fmt::format(
        "slice metadata: layers={} kv_heads={} head_dim={} block_tokens={} (all must be >= 1)", layers, kv_heads,
        head_dim, block_tokens));
  }
  if (head_dim > 1024) return Status::InvalidArgument(fmt::format("slice metadata: head_dim={} > 1024", head_dim));
  if (uint64_t{layers} * kv_heads > (uint64_t{1} << 24)) {
    return Status::InvalidArgument(fmt::format("slice metadata: {} layers x {} kv_heads is too many", layers, kv_heads));
  }
  return Status::Ok();
}

Result<SliceMetadata> SliceMetadata::Create(SliceMetadataOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return SliceMetadata(options);
}

SliceMetadata::SliceMetadata(SliceMetadataOptions options)
    : options_(options), heads_(size_t{options.layers} * options.kv_heads), tokens_(options.layers, 0) {
  for (Head& h : heads_) h.running.assign(2 * size_t{options.head_dim}, 0.0f);
}

void SliceMetadata::SealBlock(Head& head, uint32_t block) {
  const size_t d = options_.head_dim;
  kernels::QuestShape one{.q_heads = 1, .kv_heads = 1, .head_dim = options_.head_dim, .blocks = 1};
  kernels::QuantizeQuestBounds(one, head.running, std::span(head.compact).subspan(block * 2 * d, 2 * d),
                               std::span(head.scales).subspan(block, 1));
  if (options_.keep_exact_bounds) {
    std::copy(head.running.begin(), head.running.end(), head.exact.begin() + static_cast<ptrdiff_t>(block * 2 * d));
  }
}

Status SliceMetadata::Append(LayerId layer, std::span<const float> keys, uint32_t tokens, KeyLayout layout) {
  const uint32_t l = layer.value(), kv = options_.kv_heads, d = options_.head_dim, bt = options_.block_tokens;
  if (l >= options_.layers) {
    return Status::InvalidArgument(fmt::format("slice metadata: layer {} of {}", l, options_.layers));
  }
  const size_t want = size_t{tokens} * kv * d;
  if (keys.size() != want) {
    return Status::InvalidArgument(fmt::format("slice metadata: {} key floats for {} tokens x {} kv heads x {} dims = {}",
                                               keys.size(), tokens, kv, d, want));
  }
  const uint64_t start = tokens_[l], end = start + tokens;
  if ((end + bt - 1) / bt > std::numeric_limits<uint32_t>::max()) {
    return Status::InvalidArgument(fmt::format("slice metadata: layer {} would exceed 2^32 - 1 blocks", l));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (!std::isfinite(keys[i])) return Status::InvalidArgument(fmt::format("slice metadata: key value {} is not finite", i));
  }
  if (tokens == 0) return Status::Ok();
  const size_t blocks_after = (end + bt - 1) / bt;
  for (uint32_t h = 0; h < kv; ++h) {
    Head& head = At(l, h);
    head.compact.resize(blocks_after * 2 * d);
    head.scales.resize(blocks_after);
    if (options_.keep_exact_bounds) head.exact.resize(blocks_after * 2 * d);
    float* lo = head.running.data();
    float* hi = lo + d;
    for (uint32_t t = 0; t < tokens; ++t) {
      const uint64_t pos = start + t;
      const float* k = layout == KeyLayout::kTokenMajor ? &keys[(size_t{t} * kv + h) * d] : &keys[(size_t{h} * tokens + t) * d];
      if (pos % bt == 0) {  // a new block starts with this key
        std::copy(k, k + d, lo);
        std::copy(k, k + d, hi);
      } else {
        for (uint32_t i = 0; i < d; ++i) {
          lo[i] = std::min(lo[i], k[i]);
          hi[i] = std::max(hi[i], k[i]);
        }
      }
      if (pos % bt == bt - 1) SealBlock(head, static_cast<uint32_t>(pos / bt));
    }
    if (end % bt != 0) SealBlock(head, static_cast<uint32_t>(end / bt));  // the partial block, on demand
  }
  tokens_[l] = end;
  return Status::Ok();
}

Result<SliceBoundsView> SliceMetadata::Bounds(LayerId layer, uint32_t kv_head) const {
  if (layer.value() >= options_.layers || kv_head >= options_.kv_heads) {
    return Status::InvalidArgument(fmt::format("slice metadata: (layer {}, kv head {}) out of range ({} layers, {} kv heads)",
                                               layer.value(), kv_head, options_.layers, options_.kv_heads));
  }
  const Head& head = At(layer.value(), kv_head);
  return SliceBoundsView{.blocks = blocks(layer), .compact = head.compact, .scales = head.scales, .exact = head.exact};
}

std::span<const float> SliceMetadata::PartialBounds(LayerId layer, uint32_t kv_head) const {
  if (layer.value() >= options_.layers || kv_head >= options_.kv_heads) return {};
  if (tokens_[layer.value()] % options_.block_tokens == 0) return {};
  return At(layer.value(), kv_head).running;
}

uint64_t SliceMetadata::tokens(LayerId layer) const {
  return layer.value() < options_.layers ? tokens_[layer.value()] : 0;
}

uint32_t SliceMetadata::blocks(LayerId layer) const {
  return static_cast<uint32_t>((tokens(layer) + options_.block_tokens - 1) / options_.block_tokens);
}

Bytes SliceMetadata::bytes() const {
  uint64_t n = 0;
  for (const Head& h : heads_) {
    n += h.compact.size() + sizeof(float) * (h.scales.size() + h.exact.size() + h.running.size());
  }
  return Bytes{n};
}

}  // namespace kvtier
