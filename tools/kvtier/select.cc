// `kvtier select`: Quest block selection (runtime QuestSelector over SliceMetadata, i.e. the
// code a decode step runs) on .npy files, for evaluation against other implementations.
// Keys are one layer's cache; every step's queries are selected against all of it.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

#include "commands.h"
#include "kvtier/quest_selector.h"
#include "kvtier/slice_metadata.h"
#include "npy.h"

namespace kvtier::cli {
namespace {

struct SelectOptions {
  std::string keys, queries;
  uint32_t block_tokens = 16;
  int64_t budget = -1;
  uint32_t sink_blocks = 1;
  uint32_t min_blocks = 3;
  std::string gqa = "max";
  std::string metadata = "compact";
  bool json = false;
};

std::string ShapeOf(const NpyArray& a) {
  std::string s;
  for (size_t i = 0; i < a.shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", a.shape[i]);
  return "[" + s + "]";
}

// Flags first (no file is read for a bad flag), then the files.
Status CheckFlags(const SelectOptions& o) {
  if (o.gqa != "sum" && o.gqa != "max") return Status::InvalidArgument(fmt::format("--gqa {} is neither sum nor max", o.gqa));
  if (o.metadata != "compact" && o.metadata != "exact") {
    return Status::InvalidArgument(fmt::format("--metadata {} is neither compact nor exact", o.metadata));
  }
  if (o.block_tokens == 0) return Status::InvalidArgument("--block-tokens must be >= 1");
  if (o.budget < o.block_tokens || o.budget > (int64_t{1} << 31)) {
    return Status::InvalidArgument(
        fmt::format("--budget {} must be at least one block ({} tokens) and at most 2^31", o.budget, o.block_tokens));
  }
  return Status::Ok();
}

Status CheckShapes(const SelectOptions& o, const NpyArray& k, const NpyArray& q) {
  if (k.shape.size() != 3) {
    return Status::InvalidArgument(fmt::format("{}: keys must be [kv_heads, tokens, dim], got shape {}", o.keys, ShapeOf(k)));
  }
  if (q.shape.size() != 3) {
    return Status::InvalidArgument(
        fmt::format("{}: queries must be [steps, q_heads, dim], got shape {}", o.queries, ShapeOf(q)));
  }
  const uint64_t kv = k.shape[0], tokens = k.shape[1], d = k.shape[2], steps = q.shape[0], qh = q.shape[1];
  if (kv == 0 || tokens == 0 || d == 0) return Status::InvalidArgument(fmt::format("{}: empty keys, shape {}", o.keys, ShapeOf(k)));
  if (d > 1024) return Status::InvalidArgument(fmt::format("{}: head dim {} > 1024", o.keys, d));
  if (steps == 0) return Status::InvalidArgument(fmt::format("{}: no query steps (shape {})", o.queries, ShapeOf(q)));
  if (q.shape[2] != d) {
    return Status::InvalidArgument(
        fmt::format("{}: query dim {} differs from the key dim {} of {}", o.queries, q.shape[2], d, o.keys));
  }
  if (qh < kv) {
    return Status::InvalidArgument(
        fmt::format("{}: {} query heads are fewer than the {} KV heads of {}", o.queries, qh, kv, o.keys));
  }
  if (qh % kv != 0) {
    return Status::InvalidArgument(
        fmt::format("{}: {} query heads are not a multiple of the {} KV heads of {}", o.queries, qh, kv, o.keys));
  }
  if (tokens > (uint64_t{1} << 31) || kv > 4096 || qh > 4096) return Status::InvalidArgument("arrays too large");
  return Status::Ok();
}

Status RunSelect(const SelectOptions& o) {
  KVT_RETURN_IF_ERROR(CheckFlags(o));
  KVT_ASSIGN_OR_RETURN(NpyArray k, ReadNpyFloat32(o.keys));
  KVT_ASSIGN_OR_RETURN(NpyArray q, ReadNpyFloat32(o.queries));
  KVT_RETURN_IF_ERROR(CheckShapes(o, k, q));
  const auto kv = static_cast<uint32_t>(k.shape[0]), tokens = static_cast<uint32_t>(k.shape[1]);
  const auto d = static_cast<uint32_t>(k.shape[2]), steps = static_cast<uint32_t>(q.shape[0]);
  const bool exact = o.metadata == "exact";
  KVT_ASSIGN_OR_RETURN(SliceMetadata meta, SliceMetadata::Create({.layers = 1, .kv_heads = kv, .head_dim = d,
                                                                  .block_tokens = o.block_tokens,
                                                                  .keep_exact_bounds = exact}));
  KVT_RETURN_IF_ERROR(meta.Append(LayerId{0}, k.data, tokens, KeyLayout::kHeadMajor));
  QuestSelectorOptions so{.budget_tokens = static_cast<uint32_t>(o.budget), .block_tokens = o.block_tokens,
                          .sink_blocks = o.sink_blocks, .min_blocks = o.min_blocks, .dense_layers = 0,
                          .combine = o.gqa == "max" ? GqaCombine::kMax : GqaCombine::kSum,
                          .use_compact_metadata = !exact};
  KVT_ASSIGN_OR_RETURN(QuestSelector selector, QuestSelector::Create(so));
  const size_t step_floats = q.data.size() / steps;
  Selection sel;
  for (uint32_t s = 0; s < steps; ++s) {
    auto queries = std::span<const float>(q.data).subspan(size_t{s} * step_floats, step_floats);
    KVT_RETURN_IF_ERROR(selector.SelectInto(LayerId{0}, queries, meta, &sel));
    for (uint32_t h = 0; h < kv; ++h) {
      auto row = sel.Head(h);
      if (o.json) {
        nlohmann::ordered_json line{{"step", s}, {"kv_head", h}, {"blocks", std::vector<uint32_t>(row.begin(), row.end())}};
        fmt::print("{}\n", line.dump());
      } else {
        fmt::print("step {} kv_head {}: {} of {} blocks:", s, h, row.size(), sel.blocks);
        for (uint32_t b : row) fmt::print(" {}", b);
        fmt::print("\n");
      }
    }
  }
  return Status::Ok();
}

}  // namespace

void AddSelectCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<SelectOptions>();
  CLI::App* cmd = app.add_subcommand("select", "Quest block selection per step and KV head from .npy files (CPU)");
  cmd->add_option("--keys", o->keys, "float32 [kv_heads, tokens, dim], keys as cached (after RoPE)")->required();
  cmd->add_option("--queries", o->queries, "float32 [steps, q_heads, dim], q_heads a multiple of kv_heads")->required();
  cmd->add_option("--block-tokens", o->block_tokens, "tokens per block")->capture_default_str();
  cmd->add_option("--budget", o->budget, "token budget: budget / block-tokens blocks per KV head, forced ones included")
      ->required();
  cmd->add_option("--sink-blocks", o->sink_blocks, "first blocks always selected")->capture_default_str();
  cmd->add_option("--min-blocks", o->min_blocks, "never fewer blocks per KV head")->capture_default_str();
  cmd->add_option("--gqa", o->gqa, "combine the bounds of a GQA group: sum or max")->capture_default_str();
  cmd->add_option("--metadata", o->metadata, "bounds: compact (int8 + scale, as in HBM) or exact (fp32)")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "one JSON line per step and KV head: {\"step\": s, \"kv_head\": h, \"blocks\": [...]}");
  cmd->callback([o, exit_code] {
    if (Status s = RunSelect(*o); !s.ok()) {
      fmt::print(stderr, "kvtier select: {}\n", s.message());
      *exit_code = 2;
    }
  });
}

}  // namespace kvtier::cli
