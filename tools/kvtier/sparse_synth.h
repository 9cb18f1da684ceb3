// A synthetic sparse-attention workload (docs/sparse.md; ../shared/reference/papers.md §0.2):
// keys with the structure Quest relies on and queries that drift from step to step, so the
// sparse path (selection quality, HBM slice cache, working-set admission) can be measured
// without model weights.
//
// Per KV head h, token t, channel i (all fp32):
//   key[h][t] = bias_h + x_t                                   background
//     bias_h: `outlier_channels` random channels at +outlier_bias, 0 elsewhere
//     x_t = ρ·x_{t-1} + √(1-ρ²)·ε_t, ε ~ N(0, I)               AR(1): blocks are locally coherent
//   + needle_strength·√d·û_h    for the planted needle tokens (clusters of
//                                `needle_tokens` consecutive tokens, `needle_clusters` per head)
//   + sink_strength·√d·û_h      at token 0 (the attention sink)
//   + recency_strength·√d·û_h·(t-(L-R))/R   on the last R = recency_tokens tokens
// where û_h is the unit direction of KV head h's initial query. Values are N(0, 1).
//
// Queries (pre-scaled: logits are q·k/√d): per KV head a base vector b_h(0) ~ N(0, I); each
// step b_h(s+1) = normalise(b_h(s) + drift·N(0, I)) to norm √d (a random walk on the
// sphere). Query head g of the group of h: q = query_scale·normalise(b_h + group_spread·o_g)
// ·√d, o_g ~ N(0, I) fixed per query head (the group's heads are correlated, not equal).
//
// Everything is deterministic in `seed` (std::mt19937_64; the key and query streams use
// independent engines, so adding steps does not change the keys). Arrays are C order:
// keys/values [kv_heads][tokens][head_dim], queries [steps][q_heads][head_dim].
// Thread-safety: free functions over caller-owned data; SyntheticSequence is a plain value.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::synth {

struct SparseSynthOptions {
  uint32_t kv_heads = 8;
  uint32_t group = 4;               // q_heads = group · kv_heads
  uint32_t tokens = 32768;          // L
  uint32_t head_dim = 128;          // d
  uint32_t steps = 8;               // decode steps of drifting queries
  uint64_t seed = 1;
  uint32_t outlier_channels = 4;    // channels with a constant bias
  float outlier_bias = 3.0f;
  float ar_rho = 0.8f;              // AR(1) correlation between neighbouring tokens
  uint32_t needle_clusters = 8;     // per KV head
  uint32_t needle_tokens = 4;       // consecutive tokens per cluster
  // Strengths are not given in papers.md §0.2; these defaults put the oracle-page mass recall
  // at 0.75 (256 tokens) .. 0.80 (4096), near §0.2's 0.76 .. 0.84 (docs/sparse.md).
  float needle_strength = 1.1f;     // needle key gets this · √d along û (logit ≈ query_scale · this · √d)
  float sink_strength = 1.5f;
  uint32_t recency_tokens = 64;
  float recency_strength = 0.15f;   // at the last token; linear ramp over recency_tokens
  float query_scale = 0.7f;         // ‖q‖ = query_scale · √d
  float drift = 0.1f;               // per-channel std of one random-walk step (base norm √d)
  float group_spread = 0.5f;        // per-channel std of a query head's fixed offset in its group

  uint32_t q_heads() const { return group * kv_heads; }
  // kInvalidArgument: a zero dim, tokens too small for the sink, needles and recent tokens
  // (tokens >= 2·recency_tokens + 64·needle_clusters·needle_tokens + 16), outlier_channels >
  // head_dim, ρ outside [0, 1), a negative strength.
  Status Validate() const;
};

struct NeedleCluster {
  uint32_t kv_head = 0;
  uint32_t first_token = 0;  // tokens [first_token, first_token + needle_tokens)
  uint32_t tokens = 0;
};

struct SyntheticSequence {
  SparseSynthOptions options;
  std::vector<float> keys;     // [kv_heads][tokens][head_dim]
  std::vector<float> values;   // [kv_heads][tokens][head_dim]
  std::vector<float> queries;  // [steps][q_heads][head_dim]
  std::vector<NeedleCluster> needles;  // sorted by (kv_head, first_token); never overlapping

  // The queries of one step, [q_heads][head_dim].
  std::span<const float> StepQueries(uint32_t step) const;
};

Result<SyntheticSequence> GenerateSparseSequence(const SparseSynthOptions& options);

// Queries only (a longer drift trace over the same heads, e.g. for working-set studies):
// [steps][q_heads][head_dim], the same stream GenerateSparseSequence uses.
Result<std::vector<float>> GenerateDriftingQueries(const SparseSynthOptions& options);

// True attention of one step's queries [q_heads][d] over keys [kv_heads][tokens][d]:
// softmax over all tokens with scale 1/√d per query head, then the mean over the GQA group.
// token_mass: [kv_heads][tokens] (rows sum to 1). block_mass: [kv_heads][blocks], the
// token mass summed per block of `block_tokens` (the last block may be partial).
void TrueTokenMass(uint32_t kv_heads, uint32_t q_heads, uint32_t head_dim, uint32_t tokens,
                   std::span<const float> keys, std::span<const float> queries, std::span<double> token_mass);
void TrueBlockMass(uint32_t kv_heads, uint32_t tokens, uint32_t block_tokens, std::span<const double> token_mass,
                   std::span<double> block_mass);

}  // namespace kvtier::synth
