// The selector runs the reference once per KV head: a (layer, head)'s bounds are contiguous
// in SliceMetadata and a head's GQA group is contiguous in the queries, so each call is a
// one-KV-head problem without copying the metadata.
#include "kvtier/quest_selector.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "reference/quest_select.h"

namespace kvtier {
namespace {

kernels::GqaCombine ToKernel(GqaCombine c) {
  return c == GqaCombine::kMax ? kernels::GqaCombine::kMax : kernels::GqaCombine::kSum;
}

}  // namespace

Status QuestSelectorOptions::Validate() const {
  if (block_tokens == 0) return Status::InvalidArgument("quest selector: block_tokens = 0 (must be >= 1)");
  if (budget_tokens < block_tokens) {
    return Status::InvalidArgument(fmt::format(
        "quest selector: budget_tokens = {} is less than one block of {} tokens", budget_tokens, block_tokens));
  }
  if (combine != GqaCombine::kSum && combine != GqaCombine::kMax) {
    return Status::InvalidArgument("quest selector: combine is neither sum nor max");
  }
  if (uint64_t{sink_blocks} + 1 > std::max(budget_tokens / block_tokens, min_blocks)) {
    return Status::InvalidArgument(fmt::format(
        "quest selector: sink_blocks = {} plus the current block exceed the budget of {} blocks (min_blocks {})",
        sink_blocks, budget_tokens / block_tokens, min_blocks));
  }
  return Status::Ok();
}

Result<QuestSelector> QuestSelector::Create(QuestSelectorOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return QuestSelector(options);
}

uint32_t QuestSelector::BlocksPerHead(LayerId layer, uint32_t blocks) const {
  if (layer.value() < options_.dense_layers) return blocks;
  kernels::QuestShape shape{.q_heads = 1, .kv_heads = 1, .head_dim = 1, .blocks = blocks};
  kernels::QuestSelectParams params{.budget_tokens = options_.budget_tokens, .block_tokens = options_.block_tokens,
                                    .sink_blocks = options_.sink_blocks, .min_blocks = options_.min_blocks};
  return kernels::QuestBudgetBlocks(shape, params);
}

Result<Selection> QuestSelector::Select(LayerId layer, std::span<const float> queries,
                                        const SliceMetadata& metadata) const {
  Selection out;
  KVT_RETURN_IF_ERROR(SelectInto(layer, queries, metadata, &out));
  return out;
}

Status QuestSelector::SelectInto(LayerId layer, std::span<const float> queries, const SliceMetadata& metadata,
                                 Selection* out) const {
  const SliceMetadataOptions& m = metadata.options();
  if (layer.value() >= m.layers) {
    return Status::InvalidArgument(fmt::format("quest selector: layer {} of {}", layer.value(), m.layers));
  }
  if (m.block_tokens != options_.block_tokens) {
    return Status::InvalidArgument(fmt::format("quest selector: block_tokens {} but the metadata's blocks have {}",
                                               options_.block_tokens, m.block_tokens));
  }
  const size_t d = m.head_dim;
  if (queries.empty() || queries.size() % d != 0 || (queries.size() / d) % m.kv_heads != 0) {
    return Status::InvalidArgument(fmt::format(
        "quest selector: {} query floats are not q_heads x {} dims with q_heads a multiple of {} kv heads",
        queries.size(), d, m.kv_heads));
  }
  for (size_t i = 0; i < queries.size(); ++i) {
    if (!std::isfinite(queries[i])) return Status::InvalidArgument(fmt::format("quest selector: query value {} is not finite", i));
  }
  if (!options_.use_compact_metadata && !m.keep_exact_bounds) {
    return Status::FailedPrecondition("quest selector: fp32 bounds asked for, the metadata keeps only compact ones");
  }
  const uint32_t blocks = metadata.blocks(layer), per_head = BlocksPerHead(layer, blocks);
  const uint32_t group = static_cast<uint32_t>(queries.size() / d / m.kv_heads);
  out->layer = layer;
  out->kv_heads = m.kv_heads;
  out->blocks = blocks;
  out->per_head = per_head;
  out->dense = per_head == blocks;
  out->indices.resize(size_t{m.kv_heads} * per_head);
  if (out->dense) {
    for (uint32_t h = 0; h < m.kv_heads; ++h) {
      std::iota(out->indices.begin() + static_cast<ptrdiff_t>(size_t{h} * per_head),
                out->indices.begin() + static_cast<ptrdiff_t>(size_t{h + 1} * per_head), 0u);
    }
    return Status::Ok();
  }
  kernels::QuestShape shape{.q_heads = group, .kv_heads = 1, .head_dim = m.head_dim, .blocks = blocks};
  kernels::QuestSelectParams params{.budget_tokens = options_.budget_tokens, .block_tokens = options_.block_tokens,
                                    .sink_blocks = options_.sink_blocks, .min_blocks = options_.min_blocks,
                                    .combine = ToKernel(options_.combine)};
  std::vector<float> scores(blocks);
  for (uint32_t h = 0; h < m.kv_heads; ++h) {
    KVT_ASSIGN_OR_RETURN(SliceBoundsView view, metadata.Bounds(layer, h));
    auto q = queries.subspan(size_t{h} * group * d, size_t{group} * d);
    if (options_.use_compact_metadata) {
      kernels::QuestScoresQuantized(shape, params.combine, q, view.compact, view.scales, scores);
    } else {
      kernels::QuestScores(shape, params.combine, q, view.exact, scores);
    }
    kernels::QuestSelectTopK(shape, params, scores, std::span(out->indices).subspan(size_t{h} * per_head, per_head));
  }
  return Status::Ok();
}

}  // namespace kvtier
