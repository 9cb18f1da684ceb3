// `kvtier bench decode`: sparse (Quest) vs dense decode attention on the GPU, Llama-3-8B
// shapes, one layer (decode_bench_gpu.cc on CUDA builds; decode_bench_nocuda.cc elsewhere
// says why it cannot run). The measured quantities are defined in docs/sparse.md#kernels.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::cli {

// Launch-shape overrides of the default rows (round 9; 0 = the default choice). The score
// fields are kernels::QuestScoreShape's, the attention fields
// kernels::SparseAttentionPlanOverrides' (applied to the streamed plan: with any of them set,
// the `attention` row and the sparse steps run the streamed kernel even where the default
// would be the staged one). Invalid values make the bench exit 2 with what is wrong.
struct DecodeBenchOverrides {
  uint32_t score_tiles_per_cta = 0;
  uint32_t score_stages = 0;
  uint32_t score_slices_per_thread = 0;
  // kernels::QuestScorePreset of the same rows: "r9w" (the default rule), "r8" (round 8's
  // default) or "r9" (a round-9 candidate that lost). The score fields above, if any is set,
  // replace the default rule; with "r8" or "r9" they are invalid.
  std::string score_preset = "r9w";
  uint32_t attention_heads_per_cta = 0;
  uint32_t attention_chunk_pages = 0;
  uint32_t attention_splits = 0;
  uint32_t attention_tile_loads = 0;
  // kernels::SparseAttentionRule of every attention plan (dense, sparse, streamed): "default"
  // or "r9d" (kRound9Dense, a candidate for dense-length rows at small batch: docs/sparse.md,
  // round 9d). The `dense_r9d` row runs r9d in every run anyway.
  std::string attention_rule = "default";
};

struct DecodeBenchOptions {
  std::vector<uint32_t> contexts{32768, 131072};  // tokens per request
  std::vector<uint32_t> batches{1, 8};            // requests
  uint32_t budget = 2048;                         // Quest token budget (forced blocks included)
  uint32_t q_heads = 32;                          // Llama-3-8B: 32 q / 8 KV heads, d = 128, bf16
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t block_tokens = 16;
  uint32_t iterations = 20;  // back-to-back steps per timed repetition
  uint32_t repeats = 7;      // median of these, after one warm-up repetition
  uint32_t layers = 0;       // KV copies cycled through so L2 cannot hold a step's bytes; 0 = auto
  int device = 0;
  bool json = false;
  DecodeBenchOverrides overrides{};
  // After each point's rows: the score and attention launches over a grid of launch shapes,
  // each checked against the default's output, then the sparse step as a graph for the
  // fastest few of each (and the rules r9w, r8, r9), the fastest matching graph kept
  // (docs/sparse.md, `kvtier bench decode`).
  bool sweep = false;
};

// kUnavailable without a device, kUnimplemented without CUDA.
Status RunDecodeBench(const DecodeBenchOptions& options);

}  // namespace kvtier::cli
