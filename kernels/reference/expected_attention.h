// CPU reference of the Expected Attention scorer (Devoto et al., arXiv 2510.00636; the
// formulas of NVIDIA/kvpress `expected_attention_press.py`). The CUDA kernel
// (kernels/expected_attention.cuh) computes the same numbers and is tested against this.
//
// Given the statistics of recent pre-RoPE queries of one layer (per query head: mean μ and
// covariance Σ) and the cached keys/values of one sequence (keys after RoPE):
//
//   1. RoPE averaged over the next T positions P .. P+T-1 (Llama "rotate-half" form):
//        R̄ = (1/T) Σ_j R_{P+j},  R_p = diag(cos pθ) + diag(sin pθ)·J,  J x = [-x₂, x₁]
//      μ̄ = R̄ μ,  Σ̄ = R̄ Σ R̄ᵀ   (R̄ is not a rotation: it low-passes the statistics).
//   2. Per query head h and key i (sinks excluded): logit = μ̄ᵀk_i/√d + k_iᵀΣ̄k_i/(2d);
//      softmax over the keys of the sequence.
//   3. Mean over the GQA group of each KV head (query head h reads KV head h / group).
//   4. Token score = (â_i + ε) · ‖v_i‖₂ (or â_i + ε without the value norm).
//   5. Sink tokens (the first `sink_tokens`) get the kvpress score max + 1, the max over every
//      non-sink token of every KV head (kvpress pads with `scores.max() + 1`), so they rank
//      above every other token. Block score = sum of its tokens' scores (a partial last block
//      sums the tokens it has).
//
// All arrays are fp32, C order, dense. Functions run on the calling thread and allocate
// only their own scratch; inputs are borrowed. Shapes are the caller's to check (the
// binding layers — kvtier score, the runtime — do it once).
#pragma once

#include <cstdint>
#include <span>

namespace kvtier::kernels {

struct ExpectedAttentionShape {
  uint32_t q_heads = 0;      // a multiple of kv_heads
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;     // even
  uint32_t tokens = 0;       // cached tokens of the sequence
  uint32_t block_tokens = 16;
  uint32_t sink_tokens = 4;  // the first tokens, always kept, excluded from the softmax

  uint32_t group() const { return q_heads / kv_heads; }
  uint32_t blocks() const { return (tokens + block_tokens - 1) / block_tokens; }
};

// The default covariance_rank of the scorer's options (ExpectedAttentionParams, the CUDA
// ExpectedAttentionDeviceArgs): docs/scoring.md "Default". Exact stays available as
// covariance_rank = 0.
inline constexpr uint32_t kDefaultCovarianceRank = 16;

struct ExpectedAttentionParams {
  uint64_t position = 0;      // P: the position of the next token
  uint32_t future = 512;      // T: positions averaged over
  double rope_theta = 10000;  // RoPE base
  float epsilon = 0.0f;       // ε added to the attention weight before the value norm
  bool use_covariance = true; // the kᵀΣ̄k/(2d) term
  bool use_value_norm = true; // multiply by ‖v‖₂
  // 0: the exact kᵀΣ̄k. 1 <= r < d: Σ̄ ≈ Σ_{j<r} λ_j u_j u_jᵀ + diag(ρ) (LowRankCovariance,
  // reference/low_rank_covariance.h), d·r + d multiply-adds per key instead of d². r >= d:
  // the exact term (EffectiveCovarianceRank below). Default kDefaultCovarianceRank (16):
  // rank 16 at head_dim >= 32, the exact term at head_dim <= 16. docs/scoring.md gives the
  // quality and the GPU speed of each rank.
  uint32_t covariance_rank = kDefaultCovarianceRank;
};

// The covariance term a requested rank gives at this head_dim: 0 (the exact kᵀΣ̄k) for 0 and
// for any r >= head_dim (the low-rank form would be exact up to rounding and cost d·r + d >= d²
// per key: nothing to gain), else r. The CPU reference entry points that take Σ̄ apply it.
constexpr uint32_t EffectiveCovarianceRank(uint32_t requested, uint32_t head_dim) {
  return requested >= head_dim ? 0 : requested;
}

// The same for the CUDA scorer, which takes ranks that are multiples of 8 (<= head_dim): r
// rounded up to a multiple of 8, then 0 (exact) where that reaches head_dim. The default 16
// gives 16 at head_dim 32, 64 and 128 and 0 at head_dim 16. What an engine sets as
// ExpectedAttentionDeviceArgs::covariance_rank, and the rank it factors Σ̄ to (or, for 0, the
// Σ̄ it passes as rotated_cov).
constexpr uint32_t DeviceCovarianceRank(uint32_t requested, uint32_t head_dim) {
  const uint64_t rounded = (uint64_t{requested} + 7) / 8 * 8;
  return rounded >= head_dim ? 0 : static_cast<uint32_t>(rounded);
}

// c̄[i] = mean_j cos((P+j)·θ_i), s̄[i] = mean_j sin((P+j)·θ_i), θ_i = theta^(-2i/d), for
// i < d/2. `cbar` and `sbar` hold head_dim / 2 floats each.
void AveragedRope(uint32_t head_dim, const ExpectedAttentionParams& params, std::span<float> cbar,
                  std::span<float> sbar);

// Mean [q_heads][d] and covariance [q_heads][d][d] (population, 1/n) of `queries`
// [n][q_heads][d]. n must be >= 1.
void QueryMoments(std::span<const float> queries, uint32_t n, uint32_t q_heads, uint32_t head_dim,
                  std::span<float> mean, std::span<float> cov);

// μ̄ = R̄ μ and Σ̄ = R̄ Σ R̄ᵀ for every query head; R̄ from AveragedRope. O(d²) per head
// (R̄ has two non-zeros per row). Outputs have the shapes of the inputs.
void RotateQueryMoments(uint32_t q_heads, uint32_t head_dim, std::span<const float> cbar,
                        std::span<const float> sbar, std::span<const float> mean, std::span<const float> cov,
                        std::span<float> mean_out, std::span<float> cov_out);

// Steps 2–4 from rotated moments: token scores [kv_heads][tokens]. keys and values are
// [kv_heads][tokens][d]; sinks get max + 1 (step 5). With EffectiveCovarianceRank(params.
// covariance_rank, d) > 0 (the default: 16 at d >= 32) the rotated covariance is first
// factored (LowRankCovariance) and the low-rank form below used; with 0 the exact term.
void ExpectedAttentionTokenScores(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                  std::span<const float> keys, std::span<const float> values,
                                  std::span<const float> rotated_mean, std::span<const float> rotated_cov,
                                  std::span<float> token_scores);

// Steps 2–4 with a factored covariance: kᵀΣ̄k is replaced by Σ_j (w_jᵀk)² + Σ_i ρ_i k_i²,
// rank = min(max(params.covariance_rank, 1), d), factors [q_heads][rank][d] and residual
// [q_heads][d] from LowRankCovariance (the same fp32 arrays the CUDA kernel is given). Set
// params.covariance_rank to the rank of the factors (the default is 16). Any rank up to d
// is used as given here (rank d: exact up to rounding).
void ExpectedAttentionTokenScoresLowRank(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                         std::span<const float> keys, std::span<const float> values,
                                         std::span<const float> rotated_mean, std::span<const float> factors,
                                         std::span<const float> residual, std::span<float> token_scores);

// ‖v‖₂ of every row of `values` [rows][head_dim] (accumulated in double, rounded to fp32):
// the `value_norms` [kv_heads][tokens] an engine precomputes once per cached token (the CUDA
// LaunchValueNorms computes the same in fp32).
void ValueNorms(uint32_t rows, uint32_t head_dim, std::span<const float> values, std::span<float> norms);

// Steps 2–4 with precomputed value norms [kv_heads][tokens] in place of the values (unread
// without params.use_value_norm): the same numbers as the `values` forms, up to the fp32
// rounding of each norm.
void ExpectedAttentionTokenScoresWithNorms(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                           std::span<const float> keys, std::span<const float> value_norms,
                                           std::span<const float> rotated_mean, std::span<const float> rotated_cov,
                                           std::span<float> token_scores);
void ExpectedAttentionTokenScoresLowRankWithNorms(const ExpectedAttentionShape& shape,
                                                  const ExpectedAttentionParams& params, std::span<const float> keys,
                                                  std::span<const float> value_norms,
                                                  std::span<const float> rotated_mean, std::span<const float> factors,
                                                  std::span<const float> residual, std::span<float> token_scores);

// Block scores [kv_heads][blocks] = sums of token scores [kv_heads][tokens].
void SumBlockScores(const ExpectedAttentionShape& shape, std::span<const float> token_scores,
                    std::span<float> block_scores);

// The whole pipeline from raw moments (mean [q_heads][d], cov [q_heads][d][d], pre-RoPE):
// block scores [kv_heads][blocks] (low-rank when EffectiveCovarianceRank(params.
// covariance_rank, d) > 0: by default rank 16 at d >= 32; covariance_rank = 0 for exact).
void ExpectedAttentionBlockScores(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                  std::span<const float> keys, std::span<const float> values,
                                  std::span<const float> mean, std::span<const float> cov,
                                  std::span<float> block_scores);

}  // namespace kvtier::kernels
