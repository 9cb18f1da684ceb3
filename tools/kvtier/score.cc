// `kvtier score`: the Expected Attention scorer (kernels/reference/expected_attention.h) on
// .npy files, for evaluation against other implementations (e.g. kvpress) and for looking
// at what the demotion policy would see. CPU reference, the exact covariance term unless
// --covariance-rank asks for the low-rank one; one JSON line per KV head.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <string>

#include "commands.h"
#include "npy.h"
#include "reference/expected_attention.h"

namespace kvtier::cli {
namespace {

struct ScoreOptions {
  std::string keys, values, queries;
  int64_t position = -1;
  uint32_t block_tokens = 16;
  uint32_t future = 512;
  double rope_theta = 10000;
  uint32_t sink_tokens = 4;
  float epsilon = 0.02f;
  // 0 (exact) here, unlike the scorer's options (kernels::kDefaultCovarianceRank = 16): this
  // command is for comparing with other implementations (kvpress computes the exact term).
  uint32_t covariance_rank = 0;
  bool json = false;
};

Status CheckShapes(const ScoreOptions& o, const NpyArray& k, const NpyArray& v, const NpyArray& q) {
  auto shape = [](const NpyArray& a) {
    std::string s;
    for (size_t i = 0; i < a.shape.size(); ++i) s += fmt::format("{}{}", i ? ", " : "", a.shape[i]);
    return "[" + s + "]";
  };
  if (k.shape.size() != 3) {
    return Status::InvalidArgument(fmt::format("{}: keys must be [kv_heads, tokens, dim], got shape {}", o.keys, shape(k)));
  }
  if (v.shape != k.shape) {
    return Status::InvalidArgument(
        fmt::format("{}: values have shape {}, the keys {} have {}", o.values, shape(v), o.keys, shape(k)));
  }
  if (q.shape.size() != 3) {
    return Status::InvalidArgument(fmt::format("{}: queries must be [n, q_heads, dim], got shape {}", o.queries, shape(q)));
  }
  const uint64_t kv = k.shape[0], tokens = k.shape[1], d = k.shape[2], n = q.shape[0], qh = q.shape[1];
  if (kv == 0 || tokens == 0 || d == 0) return Status::InvalidArgument(fmt::format("{}: empty keys, shape {}", o.keys, shape(k)));
  if (d % 2 != 0 || d > 1024) {
    return Status::InvalidArgument(fmt::format("{}: head dim {} must be even and <= 1024 (rotate-half RoPE)", o.keys, d));
  }
  if (n == 0) return Status::InvalidArgument(fmt::format("{}: no queries (shape {})", o.queries, shape(q)));
  if (q.shape[2] != d) {
    return Status::InvalidArgument(fmt::format("{}: query dim {} differs from the key dim {} of {}", o.queries, q.shape[2], d, o.keys));
  }
  if (qh == 0 || qh % kv != 0) {
    return Status::InvalidArgument(
        fmt::format("{}: {} query heads are not a multiple of the {} KV heads of {}", o.queries, qh, kv, o.keys));
  }
  if (tokens > (uint64_t{1} << 31) || kv > 4096 || qh > 4096) return Status::InvalidArgument("arrays too large");
  if (o.position < 0 || static_cast<uint64_t>(o.position) < tokens) {
    return Status::InvalidArgument(fmt::format(
        "--position {} is before the end of the {} cached tokens (P is the position of the next token)", o.position, tokens));
  }
  if (o.block_tokens == 0 || o.future == 0) return Status::InvalidArgument("--block-tokens and --future must be >= 1");
  if (!(o.rope_theta > 0)) return Status::InvalidArgument(fmt::format("--rope-theta {} must be > 0", o.rope_theta));
  if (!(o.epsilon >= 0)) return Status::InvalidArgument(fmt::format("--epsilon {} must be >= 0", o.epsilon));
  return Status::Ok();
}

Status RunScore(const ScoreOptions& o) {
  KVT_ASSIGN_OR_RETURN(NpyArray k, ReadNpyFloat32(o.keys));
  KVT_ASSIGN_OR_RETURN(NpyArray v, ReadNpyFloat32(o.values));
  KVT_ASSIGN_OR_RETURN(NpyArray q, ReadNpyFloat32(o.queries));
  KVT_RETURN_IF_ERROR(CheckShapes(o, k, v, q));
  using namespace kernels;
  ExpectedAttentionShape s{.q_heads = static_cast<uint32_t>(q.shape[1]), .kv_heads = static_cast<uint32_t>(k.shape[0]),
                           .head_dim = static_cast<uint32_t>(k.shape[2]), .tokens = static_cast<uint32_t>(k.shape[1]),
                           .block_tokens = o.block_tokens, .sink_tokens = o.sink_tokens};
  ExpectedAttentionParams p{.position = static_cast<uint64_t>(o.position), .future = o.future,
                            .rope_theta = o.rope_theta, .epsilon = o.epsilon, .covariance_rank = o.covariance_rank};
  const auto n = static_cast<uint32_t>(q.shape[0]);
  std::vector<float> mean(size_t{s.q_heads} * s.head_dim), cov(mean.size() * s.head_dim);
  QueryMoments(q.data, n, s.q_heads, s.head_dim, mean, cov);
  std::vector<float> blocks(size_t{s.kv_heads} * s.blocks());
  ExpectedAttentionBlockScores(s, p, k.data, v.data, mean, cov, blocks);
  for (uint32_t h = 0; h < s.kv_heads; ++h) {
    std::vector<float> row(blocks.begin() + static_cast<ptrdiff_t>(size_t{h} * s.blocks()),
                           blocks.begin() + static_cast<ptrdiff_t>(size_t{h + 1} * s.blocks()));
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"kv_head", h}, {"block_scores", row}}.dump());
    } else {
      fmt::print("kv_head {}: {} blocks:", h, row.size());
      for (float x : row) fmt::print(" {:.6g}", x);
      fmt::print("\n");
    }
  }
  return Status::Ok();
}

}  // namespace

void AddScoreCommand(CLI::App& app, int* exit_code) {
  auto o = std::make_shared<ScoreOptions>();
  CLI::App* cmd = app.add_subcommand("score", "Expected Attention block scores of one layer from .npy files (CPU reference)");
  cmd->add_option("--keys", o->keys, "float32 [kv_heads, tokens, dim], keys after RoPE (rotate-half)")->required();
  cmd->add_option("--values", o->values, "float32 [kv_heads, tokens, dim]")->required();
  cmd->add_option("--queries", o->queries, "float32 [n, q_heads, dim], recent queries before RoPE")->required();
  cmd->add_option("--position", o->position, "position of the next token (>= tokens)")->required();
  cmd->add_option("--block-tokens", o->block_tokens, "tokens per block")->capture_default_str();
  cmd->add_option("--future", o->future, "future positions RoPE is averaged over")->capture_default_str();
  cmd->add_option("--rope-theta", o->rope_theta, "RoPE base")->capture_default_str();
  cmd->add_option("--sink-tokens", o->sink_tokens, "first tokens always kept (score max + 1)")->capture_default_str();
  cmd->add_option("--epsilon", o->epsilon, "added to the attention weight before the value norm")->capture_default_str();
  cmd->add_option("--covariance-rank", o->covariance_rank,
                  "0: the exact covariance term; r: low-rank (r dominant eigenpairs + diagonal; r >= dim: exact). "
                  "The runtime/GPU scorer's default is 16")
      ->capture_default_str();
  cmd->add_flag("--json", o->json, "one JSON line per KV head: {\"kv_head\": h, \"block_scores\": [...]}");
  cmd->callback([o, exit_code] {
    if (Status s = RunScore(*o); !s.ok()) {
      fmt::print(stderr, "kvtier score: {}\n", s.message());
      *exit_code = 2;
    }
  });
}

}  // namespace kvtier::cli
