// QuestSelector: which blocks a decode step attends to (Quest, Tang et al. ICML 2024;
// docs/sparse.md). Per KV head and block the bound
//     U = Σ_i max(q_i·m_i, q_i·M_i)          (m, M: the block's per-channel key min / max)
// is computed for every query head of the KV head's GQA group and combined (sum or max);
// the first `sink_blocks` blocks and the current (last, possibly partial) block are always
// selected, the rest of the budget goes to the highest bounds (ties to the lower block).
// Layers below `dense_layers` attend densely: every block is selected.
//
// The arithmetic is kernels/reference/quest_select.h (the CUDA kernel computes the same);
// this class is its binding layer: it checks shapes and options once and runs the reference
// per KV head over a SliceMetadata's bounds.
//
// Threading: immutable after Create; Select is const and thread-safe (scratch is local),
// as long as the SliceMetadata it reads is not appended to meanwhile.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/slice_metadata.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

// How the query heads of one GQA group combine their bounds (docs/sparse.md measures both).
enum class GqaCombine : uint8_t {
  kSum = 0,  // Σ over the group (the group's total attention logit bound)
  kMax = 1,  // the largest bound of the group (default: finds every planted needle, docs/sparse.md)
};

struct QuestSelectorOptions {
  uint32_t budget_tokens = 2048;  // selected blocks per KV head = budget_tokens / block_tokens,
                                  // forced blocks included (>= block_tokens)
  uint32_t block_tokens = 16;     // must equal the SliceMetadata's
  uint32_t sink_blocks = 1;       // always selected, from block 0 (covers 16 sink tokens)
  uint32_t min_blocks = 3;        // never fewer blocks than this (Quest's evaluation)
  uint32_t dense_layers = 2;      // layers [0, dense_layers) select every block (Quest §3.4)
  GqaCombine combine = GqaCombine::kMax;
  bool use_compact_metadata = true;  // int8 + scale bounds (what lives in HBM); false: fp32
                                     // bounds (needs SliceMetadataOptions::keep_exact_bounds)

  Status Validate() const;  // kInvalidArgument naming the field
};

// One layer's selection for one decode step.
struct Selection {
  LayerId layer{0};
  uint32_t kv_heads = 0;
  uint32_t blocks = 0;    // blocks of the sequence in this layer
  uint32_t per_head = 0;  // selected blocks per KV head (== blocks for a dense layer)
  bool dense = false;     // a dense layer, or a budget covering every block
  std::vector<uint32_t> indices{};  // [kv_heads][per_head], each row ascending

  std::span<const uint32_t> Head(uint32_t kv_head) const {
    return std::span<const uint32_t>(indices).subspan(size_t{kv_head} * per_head, per_head);
  }
};

class QuestSelector {
 public:
  static Result<QuestSelector> Create(QuestSelectorOptions options);

  // `queries`: this step's queries of `layer`, [q_heads][head_dim] fp32 (the head dim and
  // KV heads are the metadata's; q_heads = queries.size() / head_dim must be a positive
  // multiple of kv_heads). kInvalidArgument for a layer out of range, a size that does not
  // fit, a non-finite query, or a block size other than the metadata's;
  // kFailedPrecondition for fp32 bounds the metadata does not keep. A layer without tokens
  // gives an empty selection.
  Result<Selection> Select(LayerId layer, std::span<const float> queries, const SliceMetadata& metadata) const;
  // The same into `out`, reusing its storage (the decode loop's form).
  Status SelectInto(LayerId layer, std::span<const float> queries, const SliceMetadata& metadata,
                    Selection* out) const;

  // Blocks selected per KV head for a layer of `blocks` blocks (all of them when dense).
  uint32_t BlocksPerHead(LayerId layer, uint32_t blocks) const;
  const QuestSelectorOptions& options() const { return options_; }

 private:
  explicit QuestSelector(QuestSelectorOptions options) : options_(options) {}
  QuestSelectorOptions options_;
};

}  // namespace kvtier
