// The reference accumulates in double: it is the yardstick the CUDA kernel (fp32) and the
// runtime are measured against, so its own rounding should be negligible.
#include "reference/expected_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "reference/low_rank_covariance.h"

namespace kvtier::kernels {

void AveragedRope(uint32_t head_dim, const ExpectedAttentionParams& params, std::span<float> cbar,
                  std::span<float> sbar) {
  const uint32_t half = head_dim / 2;
  const uint32_t future = std::max<uint32_t>(params.future, 1);
  for (uint32_t i = 0; i < half; ++i) {
    const double freq = std::pow(params.rope_theta, -2.0 * i / head_dim);
    double c = 0, s = 0;
    for (uint32_t j = 0; j < future; ++j) {
      // fmod keeps the angle small: p·θ can reach 1e6 rad at long contexts.
      const double angle = std::fmod(static_cast<double>(params.position + j) * freq, 2 * M_PI);
      c += std::cos(angle);
      s += std::sin(angle);
    }
    cbar[i] = static_cast<float>(c / future);
    sbar[i] = static_cast<float>(s / future);
  }
}

void QueryMoments(std::span<const float> queries, uint32_t n, uint32_t q_heads, uint32_t head_dim,
                  std::span<float> mean, std::span<float> cov) {
  const size_t d = head_dim;
  std::vector<double> mu(d), c(d * d);
  for (uint32_t h = 0; h < q_heads; ++h) {
    std::fill(mu.begin(), mu.end(), 0.0);
    std::fill(c.begin(), c.end(), 0.0);
    for (uint32_t s = 0; s < n; ++s) {
      const float* q = &queries[(size_t{s} * q_heads + h) * d];
      for (size_t i = 0; i < d; ++i) mu[i] += q[i];
    }
    for (size_t i = 0; i < d; ++i) mu[i] /= n;
    for (uint32_t s = 0; s < n; ++s) {
      const float* q = &queries[(size_t{s} * q_heads + h) * d];
      for (size_t i = 0; i < d; ++i) {
        const double di = q[i] - mu[i];
        for (size_t j = 0; j < d; ++j) c[i * d + j] += di * (q[j] - mu[j]);
      }
    }
    for (size_t i = 0; i < d; ++i) mean[h * d + i] = static_cast<float>(mu[i]);
    for (size_t k = 0; k < d * d; ++k) cov[h * d * d + k] = static_cast<float>(c[k] / n);
  }
}

namespace {

// y = R̄ x for one vector of length 2·half (rotate-half pairs i, i + half).
void ApplyRbar(uint32_t half, std::span<const float> cbar, std::span<const float> sbar, const double* x, size_t stride,
               double* y, size_t ystride) {
  for (uint32_t i = 0; i < half; ++i) {
    const double lo = x[i * stride], hi = x[(i + half) * stride];
    y[i * ystride] = cbar[i] * lo - sbar[i] * hi;
    y[(i + half) * ystride] = cbar[i] * hi + sbar[i] * lo;
  }
}

}  // namespace

void RotateQueryMoments(uint32_t q_heads, uint32_t head_dim, std::span<const float> cbar,
                        std::span<const float> sbar, std::span<const float> mean, std::span<const float> cov,
                        std::span<float> mean_out, std::span<float> cov_out) {
  const size_t d = head_dim;
  const uint32_t half = head_dim / 2;
  std::vector<double> x(d * d), a(d * d), b(d * d);
  for (uint32_t h = 0; h < q_heads; ++h) {
    for (size_t i = 0; i < d; ++i) x[i] = mean[h * d + i];
    ApplyRbar(half, cbar, sbar, x.data(), 1, a.data(), 1);
    for (size_t i = 0; i < d; ++i) mean_out[h * d + i] = static_cast<float>(a[i]);

    for (size_t k = 0; k < d * d; ++k) x[k] = cov[h * d * d + k];
    for (size_t col = 0; col < d; ++col) ApplyRbar(half, cbar, sbar, &x[col], d, &a[col], d);  // A = R̄Σ
    for (size_t row = 0; row < d; ++row) ApplyRbar(half, cbar, sbar, &a[row * d], 1, &b[row * d], 1);  // A R̄ᵀ
    for (size_t k = 0; k < d * d; ++k) cov_out[h * d * d + k] = static_cast<float>(b[k]);
  }
}

namespace {

// Steps 2–4 for any form of the covariance term: quad(qh, k) returns kᵀΣ̄k (or its
// approximation) in double.
// Steps 2–4 for any form of the covariance term and of the value norm: quad(qh, k) returns
// kᵀΣ̄k (or its approximation) and norm(row) ‖v‖₂ of row kv·tokens + t, both in double.
template <class Quad, class Norm>
void TokenScores(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                 std::span<const float> keys, Norm norm_of, std::span<const float> rotated_mean, Quad quad,
                 std::span<float> token_scores) {
  const size_t d = shape.head_dim, n = shape.tokens;
  const uint32_t group = shape.group();
  const uint32_t sinks = std::min(shape.sink_tokens, shape.tokens);
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> logits(n), weight(n);
  double best = 0;  // over every non-sink token of every head (kvpress: scores.max() + 1)
  for (uint32_t kv = 0; kv < shape.kv_heads; ++kv) {
    const float* k_head = &keys[kv * n * d];
    std::fill(weight.begin(), weight.end(), 0.0);
    for (uint32_t g = 0; g < group; ++g) {
      const uint32_t qh = kv * group + g;
      const float* mu = &rotated_mean[qh * d];
      double max_logit = -std::numeric_limits<double>::infinity();
      for (size_t t = sinks; t < n; ++t) {
        const float* k = &k_head[t * d];
        double lin = 0;
        for (size_t i = 0; i < d; ++i) lin += static_cast<double>(mu[i]) * k[i];
        const double q = params.use_covariance ? quad(qh, k) : 0.0;
        logits[t] = lin * inv_sqrt_d + q / (2.0 * d);
        max_logit = std::max(max_logit, logits[t]);
      }
      double sum = 0;
      for (size_t t = sinks; t < n; ++t) sum += std::exp(logits[t] - max_logit);
      for (size_t t = sinks; t < n; ++t) weight[t] += std::exp(logits[t] - max_logit) / sum / group;
    }
    float* out = &token_scores[kv * n];
    for (size_t t = sinks; t < n; ++t) {
      const double norm = params.use_value_norm ? norm_of(kv * n + t) : 1.0;
      const double score = (weight[t] + params.epsilon) * norm;
      out[t] = static_cast<float>(score);
      best = std::max(best, score);
    }
  }
  for (uint32_t kv = 0; kv < shape.kv_heads; ++kv) {
    for (size_t t = 0; t < sinks; ++t) token_scores[kv * n + t] = static_cast<float>(best + 1.0);
  }
}

double RowNorm(std::span<const float> values, size_t d, size_t row) {
  const float* v = &values[row * d];
  double s = 0;
  for (size_t i = 0; i < d; ++i) s += static_cast<double>(v[i]) * v[i];
  return std::sqrt(s);
}

// ‖v‖ from the values themselves, or from precomputed norms.
auto FromValues(std::span<const float> values, size_t d) {
  return [values, d](size_t row) { return RowNorm(values, d, row); };
}
auto FromNorms(std::span<const float> norms) {
  return [norms](size_t row) { return static_cast<double>(norms[row]); };
}

auto ExactQuad(std::span<const float> rotated_cov, size_t d) {
  return [rotated_cov, d](uint32_t qh, const float* k) {
    const float* sigma = &rotated_cov[qh * d * d];
    double q = 0;
    for (size_t i = 0; i < d; ++i) {
      double row = 0;
      for (size_t j = 0; j < d; ++j) row += static_cast<double>(sigma[i * d + j]) * k[j];
      q += row * k[i];
    }
    return q;
  };
}

auto LowRankQuad(std::span<const float> factors, std::span<const float> residual, size_t d, size_t r) {
  return [factors, residual, d, r](uint32_t qh, const float* k) {
    const float* w = &factors[qh * r * d];
    const float* rho = &residual[qh * d];
    double q = 0;
    for (size_t j = 0; j < r; ++j) {
      double p = 0;
      for (size_t i = 0; i < d; ++i) p += static_cast<double>(w[j * d + i]) * k[i];
      q += p * p;
    }
    for (size_t i = 0; i < d; ++i) q += static_cast<double>(rho[i]) * k[i] * k[i];
    return q;
  };
}

size_t LowRankOf(const ExpectedAttentionParams& params, size_t d) {
  return std::min<size_t>(std::max<uint32_t>(params.covariance_rank, 1), d);
}

// The exact entry points: factor first when a rank is asked for.
template <class Norm>
void ExactOrFactored(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                     std::span<const float> keys, Norm norm_of, std::span<const float> rotated_mean,
                     std::span<const float> rotated_cov, std::span<float> token_scores) {
  const size_t d = shape.head_dim;
  const uint32_t r = EffectiveCovarianceRank(params.covariance_rank, shape.head_dim);
  if (params.use_covariance && r > 0) {
    std::vector<float> factors(size_t{shape.q_heads} * r * d), residual(size_t{shape.q_heads} * d);
    LowRankCovariance(shape.q_heads, shape.head_dim, r, rotated_cov, factors, residual);
    TokenScores(shape, params, keys, norm_of, rotated_mean, LowRankQuad(factors, residual, d, r), token_scores);
    return;
  }
  TokenScores(shape, params, keys, norm_of, rotated_mean, ExactQuad(rotated_cov, d), token_scores);
}

}  // namespace

void ValueNorms(uint32_t rows, uint32_t head_dim, std::span<const float> values, std::span<float> norms) {
  for (size_t r = 0; r < rows; ++r) norms[r] = static_cast<float>(RowNorm(values, head_dim, r));
}

void ExpectedAttentionTokenScores(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                  std::span<const float> keys, std::span<const float> values,
                                  std::span<const float> rotated_mean, std::span<const float> rotated_cov,
                                  std::span<float> token_scores) {
  ExactOrFactored(shape, params, keys, FromValues(values, shape.head_dim), rotated_mean, rotated_cov, token_scores);
}

void ExpectedAttentionTokenScoresWithNorms(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                           std::span<const float> keys, std::span<const float> value_norms,
                                           std::span<const float> rotated_mean, std::span<const float> rotated_cov,
                                           std::span<float> token_scores) {
  ExactOrFactored(shape, params, keys, FromNorms(value_norms), rotated_mean, rotated_cov, token_scores);
}

void ExpectedAttentionTokenScoresLowRank(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                         std::span<const float> keys, std::span<const float> values,
                                         std::span<const float> rotated_mean, std::span<const float> factors,
                                         std::span<const float> residual, std::span<float> token_scores) {
  const size_t d = shape.head_dim;
  TokenScores(shape, params, keys, FromValues(values, d), rotated_mean,
              LowRankQuad(factors, residual, d, LowRankOf(params, d)), token_scores);
}

void ExpectedAttentionTokenScoresLowRankWithNorms(const ExpectedAttentionShape& shape,
                                                  const ExpectedAttentionParams& params, std::span<const float> keys,
                                                  std::span<const float> value_norms,
                                                  std::span<const float> rotated_mean, std::span<const float> factors,
                                                  std::span<const float> residual, std::span<float> token_scores) {
  const size_t d = shape.head_dim;
  TokenScores(shape, params, keys, FromNorms(value_norms), rotated_mean,
              LowRankQuad(factors, residual, d, LowRankOf(params, d)), token_scores);
}

void SumBlockScores(const ExpectedAttentionShape& shape, std::span<const float> token_scores,
                    std::span<float> block_scores) {
  const uint32_t blocks = shape.blocks();
  for (uint32_t kv = 0; kv < shape.kv_heads; ++kv) {
    for (uint32_t b = 0; b < blocks; ++b) {
      const uint32_t end = std::min(shape.tokens, (b + 1) * shape.block_tokens);
      double s = 0;
      for (uint32_t t = b * shape.block_tokens; t < end; ++t) s += token_scores[size_t{kv} * shape.tokens + t];
      block_scores[size_t{kv} * blocks + b] = static_cast<float>(s);
    }
  }
}

void ExpectedAttentionBlockScores(const ExpectedAttentionShape& shape, const ExpectedAttentionParams& params,
                                  std::span<const float> keys, std::span<const float> values,
                                  std::span<const float> mean, std::span<const float> cov,
                                  std::span<float> block_scores) {
  const size_t d = shape.head_dim;
  std::vector<float> cbar(d / 2), sbar(d / 2), rmean(mean.size()), rcov(cov.size());
  std::vector<float> token(size_t{shape.kv_heads} * shape.tokens);
  AveragedRope(shape.head_dim, params, cbar, sbar);
  RotateQueryMoments(shape.q_heads, shape.head_dim, cbar, sbar, mean, cov, rmean, rcov);
  ExpectedAttentionTokenScores(shape, params, keys, values, rmean, rcov, token);
  SumBlockScores(shape, token, block_scores);
}

}  // namespace kvtier::kernels
