// The Expected Attention CPU reference (kernels/reference/expected_attention.h) against an
// independent, straightforward implementation of the same formulas written here with dense
// matrices: explicit RoPE rotation matrices averaged entry by entry, R̄ Σ R̄ᵀ as two dense
// products, logits, softmax, GQA mean, value norm, sinks, block sums. Random fp32 tensors;
// relative error <= 1e-3.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <utility>
#include <vector>

#include "reference/expected_attention.h"
#include "reference/low_rank_covariance.h"

namespace kvtier::kernels {
namespace {

using Mat = std::vector<double>;  // d×d, row major

// The rotate-half RoPE matrix of position p, built entry by entry.
Mat RopeMatrix(uint32_t d, double p, double theta) {
  Mat r(size_t{d} * d, 0.0);
  const uint32_t h = d / 2;
  for (uint32_t i = 0; i < h; ++i) {
    const double a = p * std::pow(theta, -2.0 * i / d);
    r[i * d + i] = std::cos(a);
    r[i * d + i + h] = -std::sin(a);
    r[(i + h) * d + i + h] = std::cos(a);
    r[(i + h) * d + i] = std::sin(a);
  }
  return r;
}

Mat MeanRope(uint32_t d, uint64_t position, uint32_t future, double theta) {
  Mat m(size_t{d} * d, 0.0);
  for (uint32_t j = 0; j < future; ++j) {
    Mat r = RopeMatrix(d, static_cast<double>(position + j), theta);
    for (size_t k = 0; k < m.size(); ++k) m[k] += r[k] / future;
  }
  return m;
}

Mat MatMul(const Mat& a, const Mat& b, uint32_t d, bool transpose_b) {
  Mat c(size_t{d} * d, 0.0);
  for (uint32_t i = 0; i < d; ++i)
    for (uint32_t j = 0; j < d; ++j)
      for (uint32_t k = 0; k < d; ++k) c[i * d + j] += a[i * d + k] * (transpose_b ? b[j * d + k] : b[k * d + j]);
  return c;
}

struct Problem {
  ExpectedAttentionShape shape;
  ExpectedAttentionParams params;
  std::vector<float> keys, values, queries;
  uint32_t n_queries = 0;
};

Problem RandomProblem(uint32_t q_heads, uint32_t kv_heads, uint32_t d, uint32_t tokens, uint32_t seed) {
  Problem p;
  p.shape = {.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = d, .tokens = tokens, .block_tokens = 4,
             .sink_tokens = 2};
  // The exact covariance term (not the default rank 16): it is what the straightforward
  // implementation computes. Tests of the low-rank form and of the default set the rank.
  p.params = {.position = tokens + 3, .future = 64, .rope_theta = 10000, .epsilon = 0.02f, .covariance_rank = 0};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  p.keys.resize(size_t{kv_heads} * tokens * d);
  p.values.resize(p.keys.size());
  for (float& x : p.keys) x = nd(rng);
  for (float& x : p.values) x = nd(rng);
  p.n_queries = 24;
  p.queries.resize(size_t{p.n_queries} * q_heads * d);
  // Queries with a per-head offset, so heads differ and the mean term matters.
  for (size_t i = 0; i < p.queries.size(); ++i) p.queries[i] = nd(rng) + 0.5f * static_cast<float>((i / d) % 3);
  return p;
}

// The independent implementation: block scores [kv][blocks].
std::vector<double> Straightforward(const Problem& p) {
  const auto& s = p.shape;
  const uint32_t d = s.head_dim, n = s.tokens, group = s.q_heads / s.kv_heads;
  const Mat rbar = MeanRope(d, p.params.position, p.params.future, p.params.rope_theta);
  std::vector<double> token(size_t{s.kv_heads} * n, 0.0);
  double best = 0;
  for (uint32_t kv = 0; kv < s.kv_heads; ++kv) {
    std::vector<double> attn(n, 0.0);
    for (uint32_t qh = 0; qh < s.q_heads; ++qh) {
      if (qh / group != kv) continue;
      std::vector<double> mu(d, 0.0);
      Mat cov(size_t{d} * d, 0.0);
      for (uint32_t q = 0; q < p.n_queries; ++q)
        for (uint32_t i = 0; i < d; ++i) mu[i] += p.queries[(size_t{q} * s.q_heads + qh) * d + i] / p.n_queries;
      for (uint32_t q = 0; q < p.n_queries; ++q) {
        const float* x = &p.queries[(size_t{q} * s.q_heads + qh) * d];
        for (uint32_t i = 0; i < d; ++i)
          for (uint32_t j = 0; j < d; ++j) cov[i * d + j] += (x[i] - mu[i]) * (x[j] - mu[j]) / p.n_queries;
      }
      std::vector<double> mu_bar(d, 0.0);
      for (uint32_t i = 0; i < d; ++i)
        for (uint32_t j = 0; j < d; ++j) mu_bar[i] += rbar[i * d + j] * mu[j];
      const Mat cov_bar = MatMul(MatMul(rbar, cov, d, false), rbar, d, true);
      std::vector<double> z(n, 0.0);
      double zsum = 0;
      for (uint32_t t = s.sink_tokens; t < n; ++t) {
        const float* k = &p.keys[(size_t{kv} * n + t) * d];
        double lin = 0, quad = 0;
        for (uint32_t i = 0; i < d; ++i) lin += mu_bar[i] * k[i];
        for (uint32_t i = 0; i < d; ++i)
          for (uint32_t j = 0; j < d; ++j) quad += k[i] * cov_bar[i * d + j] * k[j];
        z[t] = std::exp(lin / std::sqrt(double(d)) + quad / (2.0 * d));
        zsum += z[t];
      }
      for (uint32_t t = s.sink_tokens; t < n; ++t) attn[t] += z[t] / zsum / group;
    }
    for (uint32_t t = s.sink_tokens; t < n; ++t) {
      double norm = 0;
      for (uint32_t i = 0; i < d; ++i) norm += std::pow(p.values[(size_t{kv} * n + t) * d + i], 2);
      token[kv * n + t] = (attn[t] + p.params.epsilon) * std::sqrt(norm);
      best = std::max(best, token[kv * n + t]);
    }
  }
  for (uint32_t kv = 0; kv < s.kv_heads; ++kv)
    for (uint32_t t = 0; t < s.sink_tokens; ++t) token[kv * n + t] = best + 1;  // kvpress: global max + 1
  std::vector<double> blocks(size_t{s.kv_heads} * s.blocks(), 0.0);
  for (uint32_t kv = 0; kv < s.kv_heads; ++kv)
    for (uint32_t t = 0; t < n; ++t) blocks[kv * s.blocks() + t / s.block_tokens] += token[kv * n + t];
  return blocks;
}

std::vector<float> Reference(const Problem& p) {
  const auto& s = p.shape;
  std::vector<float> mean(size_t{s.q_heads} * s.head_dim), cov(mean.size() * s.head_dim);
  QueryMoments(p.queries, p.n_queries, s.q_heads, s.head_dim, mean, cov);
  std::vector<float> out(size_t{s.kv_heads} * s.blocks());
  ExpectedAttentionBlockScores(s, p.params, p.keys, p.values, mean, cov, out);
  return out;
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(std::abs(got[i] - want[i]), 1e-3 * std::abs(want[i]) + 1e-9) << "block score " << i;
  }
}

TEST(ExpectedAttentionReference, AveragedRopeIsTheMeanOfTheRotationMatrices) {
  for (uint32_t d : {8u, 64u}) {
    for (uint64_t position : {0ull, 1000ull, 131072ull}) {
      ExpectedAttentionParams params{.position = position, .future = 512, .rope_theta = 500000};
      std::vector<float> c(d / 2), s(d / 2);
      AveragedRope(d, params, c, s);
      const Mat m = MeanRope(d, position, 512, 500000);
      for (uint32_t i = 0; i < d / 2; ++i) {
        EXPECT_NEAR(c[i], m[i * d + i], 1e-5) << "d=" << d << " P=" << position << " i=" << i;
        EXPECT_NEAR(s[i], m[(i + d / 2) * d + i], 1e-5);
        EXPECT_NEAR(-s[i], m[i * d + i + d / 2], 1e-5);
      }
    }
  }
}

TEST(ExpectedAttentionReference, RotatedMomentsMatchDenseProducts) {
  const uint32_t d = 16;
  Problem p = RandomProblem(2, 1, d, 8, 7);
  std::vector<float> mean(2 * d), cov(2 * d * d), rm(2 * d), rc(2 * d * d), c(d / 2), s(d / 2);
  QueryMoments(p.queries, p.n_queries, 2, d, mean, cov);
  AveragedRope(d, p.params, c, s);
  RotateQueryMoments(2, d, c, s, mean, cov, rm, rc);
  const Mat rbar = MeanRope(d, p.params.position, p.params.future, p.params.rope_theta);
  for (uint32_t h = 0; h < 2; ++h) {
    Mat cv(cov.begin() + h * d * d, cov.begin() + (h + 1) * d * d);
    const Mat want = MatMul(MatMul(rbar, cv, d, false), rbar, d, true);
    for (uint32_t k = 0; k < d * d; ++k) EXPECT_NEAR(rc[h * d * d + k], want[k], 1e-4 * (1 + std::abs(want[k])));
  }
}

TEST(ExpectedAttentionReference, MatchesStraightforwardImplementationWithGqaAndSinks) {
  for (auto [q, kv, d, tokens, seed] : {std::tuple{8u, 2u, 32u, 37u, 1u}, std::tuple{4u, 4u, 16u, 16u, 2u},
                                        std::tuple{6u, 1u, 64u, 50u, 3u}}) {
    SCOPED_TRACE(::testing::Message() << "q=" << q << " kv=" << kv << " d=" << d << " tokens=" << tokens);
    Problem p = RandomProblem(q, kv, d, tokens, seed);
    ExpectClose(Reference(p), Straightforward(p));
  }
}

TEST(ExpectedAttentionReference, GqaAveragesTheGroupNotOtherHeads) {
  // Changing the queries of KV head 1's group leaves KV head 0's scores unchanged (no sinks:
  // their score is the max over every head).
  Problem p = RandomProblem(4, 2, 16, 20, 5);
  p.shape.sink_tokens = 0;
  const std::vector<float> before = Reference(p);
  for (uint32_t s = 0; s < p.n_queries; ++s)
    for (uint32_t h = 2; h < 4; ++h)
      for (uint32_t i = 0; i < 16; ++i) p.queries[(size_t{s} * 4 + h) * 16 + i] *= 3.0f;
  const std::vector<float> after = Reference(p);
  const uint32_t blocks = p.shape.blocks();
  for (uint32_t b = 0; b < blocks; ++b) EXPECT_EQ(before[b], after[b]);
  bool changed = false;
  for (uint32_t b = 0; b < blocks; ++b) changed |= before[blocks + b] != after[blocks + b];
  EXPECT_TRUE(changed);
}

TEST(ExpectedAttentionReference, SinkTokensOutscoreEveryOtherTokenOfEveryHead) {
  Problem p = RandomProblem(4, 2, 16, 30, 9);
  p.shape.block_tokens = 1;  // block score = token score
  const std::vector<float> s = Reference(p);  // [2 kv heads][30 tokens]
  float best_other = 0;
  for (uint32_t kv = 0; kv < 2; ++kv)
    for (uint32_t t = p.shape.sink_tokens; t < 30; ++t) best_other = std::max(best_other, s[kv * 30 + t]);
  for (uint32_t kv = 0; kv < 2; ++kv)
    for (uint32_t t = 0; t < p.shape.sink_tokens; ++t) EXPECT_FLOAT_EQ(s[kv * 30 + t], best_other + 1);
}

TEST(ExpectedAttentionReference, PartialLastBlockSumsItsTokens) {
  Problem p = RandomProblem(2, 1, 16, 10, 11);  // 4-token blocks: 4 + 4 + 2
  p.shape.block_tokens = 1;
  const std::vector<float> token = Reference(p);
  p.shape.block_tokens = 4;
  const std::vector<float> block = Reference(p);
  ASSERT_EQ(block.size(), 3u);
  EXPECT_NEAR(block[2], token[8] + token[9], 1e-6);
}

TEST(ExpectedAttentionReference, WithoutCovarianceOrValueNormTheTermsDrop) {
  Problem p = RandomProblem(2, 1, 16, 12, 13);
  p.params.use_value_norm = false;
  p.params.epsilon = 0;
  p.shape.block_tokens = 1;
  p.shape.sink_tokens = 0;
  const std::vector<float> s = Reference(p);
  double total = 0;
  for (float x : s) total += x;
  EXPECT_NEAR(total, 1.0, 1e-5);  // softmax weights, averaged over the group, sum to one
}

void ExpectRelativelyClose(const std::vector<float>& got, const std::vector<float>& want, double rel) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_LE(std::abs(got[i] - want[i]), rel * std::abs(want[i]) + 1e-12) << "block score " << i;
  }
}

// Token scores [kv_heads][tokens] from the rotated moments: the entry point that takes Σ̄
// (factors internally when EffectiveCovarianceRank > 0), or, with `factor_rank` > 0,
// LowRankCovariance of that rank and the low-rank entry point.
std::vector<float> TokenScoresOf(const Problem& p, uint32_t factor_rank = 0) {
  const auto& s = p.shape;
  const size_t d = s.head_dim;
  std::vector<float> mean(size_t{s.q_heads} * d), cov(mean.size() * d), rm(mean.size()), rc(cov.size());
  std::vector<float> cb(d / 2), sb(d / 2), token(size_t{s.kv_heads} * s.tokens);
  QueryMoments(p.queries, p.n_queries, s.q_heads, s.head_dim, mean, cov);
  AveragedRope(s.head_dim, p.params, cb, sb);
  RotateQueryMoments(s.q_heads, s.head_dim, cb, sb, mean, cov, rm, rc);
  if (factor_rank == 0) {
    ExpectedAttentionTokenScores(s, p.params, p.keys, p.values, rm, rc, token);
  } else {
    std::vector<float> f(size_t{s.q_heads} * factor_rank * d), r(size_t{s.q_heads} * d);
    LowRankCovariance(s.q_heads, s.head_dim, factor_rank, rc, f, r);
    ExpectedAttentionParams params = p.params;
    params.covariance_rank = factor_rank;
    ExpectedAttentionTokenScoresLowRank(s, params, p.keys, p.values, rm, f, r, token);
  }
  return token;
}

double MaxRelativeDifference(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max<double>(m, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return m;
}

TEST(ExpectedAttentionReference, LowRankCovarianceOfFullRankEqualsExact) {
  for (auto [q, kv, d, tokens, seed] : {std::tuple{8u, 2u, 32u, 37u, 1u}, std::tuple{6u, 1u, 64u, 50u, 3u}}) {
    SCOPED_TRACE(::testing::Message() << "q=" << q << " kv=" << kv << " d=" << d);
    Problem p = RandomProblem(q, kv, d, tokens, seed);
    const std::vector<float> exact = TokenScoresOf(p);
    // Factors of rank d through the low-rank form: exact up to rounding.
    ExpectRelativelyClose(TokenScoresOf(p, d), exact, 1e-4);
    // covariance_rank >= d through the Σ̄ entry points is the exact term itself.
    for (uint32_t rank : {d, d + 5}) {
      p.params.covariance_rank = rank;
      EXPECT_EQ(TokenScoresOf(p), exact) << "rank " << rank;
      EXPECT_EQ(Reference(p), [&] {
        Problem e = p;
        e.params.covariance_rank = 0;
        return Reference(e);
      }()) << "rank " << rank;
    }
  }
}

TEST(ExpectedAttentionReference, DefaultCovarianceRankIsSixteenAsDocumented) {
  // docs/scoring.md "Default": rank 16; exact where 16 >= head_dim; on the GPU multiples of 8.
  EXPECT_EQ(kDefaultCovarianceRank, 16u);
  EXPECT_EQ(ExpectedAttentionParams{}.covariance_rank, 16u);
  for (auto [requested, d, want] : {std::tuple{16u, 128u, 16u}, std::tuple{16u, 64u, 16u}, std::tuple{16u, 32u, 16u},
                                    std::tuple{16u, 16u, 0u}, std::tuple{16u, 8u, 0u}, std::tuple{0u, 128u, 0u},
                                    std::tuple{4u, 128u, 4u}, std::tuple{127u, 128u, 127u},
                                    std::tuple{128u, 128u, 0u}, std::tuple{500u, 128u, 0u}}) {
    EXPECT_EQ(EffectiveCovarianceRank(requested, d), want) << "requested " << requested << " d " << d;
  }
  for (auto [requested, d, want] : {std::tuple{16u, 128u, 16u}, std::tuple{16u, 64u, 16u}, std::tuple{16u, 32u, 16u},
                                    std::tuple{16u, 16u, 0u}, std::tuple{0u, 128u, 0u}, std::tuple{4u, 128u, 8u},
                                    std::tuple{12u, 64u, 16u}, std::tuple{57u, 128u, 64u},
                                    std::tuple{60u, 64u, 0u}, std::tuple{64u, 64u, 0u}, std::tuple{9u, 16u, 0u},
                                    std::tuple{0xFFFFFFFFu, 128u, 0u}}) {
    const uint32_t got = DeviceCovarianceRank(requested, d);
    EXPECT_EQ(got, want) << "requested " << requested << " d " << d;
    EXPECT_TRUE(got == 0 || (got % 8 == 0 && got < d)) << "not a GPU rank: " << got;  // what the launch accepts
  }

  // Default options score with rank 16 at d = 64 (24 queries: Σ̄ has rank 23, so rank 16
  // truncates): the same bits as factors of rank 16, and not the exact scores.
  Problem p = RandomProblem(4, 2, 64, 40, 37);
  const ExpectedAttentionParams explicit_exact = p.params;
  p.params = {.position = explicit_exact.position, .future = explicit_exact.future,
              .rope_theta = explicit_exact.rope_theta, .epsilon = explicit_exact.epsilon};  // rank left default
  const std::vector<float> by_default = TokenScoresOf(p);
  EXPECT_EQ(by_default, TokenScoresOf(p, 16));
  Problem e = p;
  e.params.covariance_rank = 0;
  const std::vector<float> exact = TokenScoresOf(e);
  EXPECT_GT(MaxRelativeDifference(by_default, exact), 1e-3);
  ExpectRelativelyClose(by_default, exact, 0.2);  // an approximation of it, not another score
  // The block-score pipeline follows the same default.
  const std::vector<float> blocks_default = Reference(p);
  EXPECT_NE(blocks_default, Reference(e));

  // d = 16: the default is the exact term, bit for bit.
  Problem small = RandomProblem(4, 2, 16, 30, 41);
  const std::vector<float> small_exact = TokenScoresOf(small);
  small.params.covariance_rank = ExpectedAttentionParams{}.covariance_rank;
  EXPECT_EQ(TokenScoresOf(small), small_exact);
  EXPECT_EQ(Reference(small), [&] {
    Problem x = small;
    x.params.covariance_rank = 0;
    return Reference(x);
  }());
}

TEST(ExpectedAttentionReference, LowRankCoveringTheCovarianceRankEqualsExact) {
  // 24 queries: Σ (and Σ̄) has rank <= 23, so rank 24 of d = 64 (the subspace-iteration
  // path) loses nothing; rank 4 does change the scores.
  Problem p = RandomProblem(4, 2, 64, 40, 17);
  const std::vector<float> exact = Reference(p);
  p.params.covariance_rank = 24;
  ExpectRelativelyClose(Reference(p), exact, 1e-4);
  p.params.covariance_rank = 4;
  const std::vector<float> low = Reference(p);
  double max_rel = 0;
  for (size_t i = 0; i < low.size(); ++i) max_rel = std::max<double>(max_rel, std::abs(low[i] - exact[i]) / exact[i]);
  EXPECT_GT(max_rel, 1e-3);
}

TEST(ExpectedAttentionReference, CovarianceRankIsIgnoredWithoutTheCovarianceTerm) {
  Problem p = RandomProblem(4, 2, 16, 20, 19);
  p.params.use_covariance = false;
  const std::vector<float> mean_only = Reference(p);
  p.params.covariance_rank = 4;
  EXPECT_EQ(Reference(p), mean_only);
}

TEST(ExpectedAttentionReference, ValueNormsAreTheRowNorms) {
  Problem p = RandomProblem(2, 2, 32, 9, 23);
  const uint32_t rows = p.shape.kv_heads * p.shape.tokens;
  std::vector<float> norms(rows);
  ValueNorms(rows, 32, p.values, norms);
  for (uint32_t r = 0; r < rows; ++r) {
    double s = 0;
    for (uint32_t i = 0; i < 32; ++i) s += std::pow(double(p.values[size_t{r} * 32 + i]), 2);
    EXPECT_NEAR(norms[r], std::sqrt(s), 1e-6 * std::sqrt(s)) << "row " << r;
  }
}

TEST(ExpectedAttentionReference, PrecomputedValueNormsGiveTheScoresOfTheValues) {
  // The WithNorms forms against the values forms, for
  // the exact term, the factored exact entry point, the low-rank form and the mean alone.
  for (auto [rank, cov] : {std::pair{0u, true}, std::pair{8u, true}, std::pair{0u, false}}) {
    SCOPED_TRACE(::testing::Message() << "rank=" << rank << " cov=" << cov);
    Problem p = RandomProblem(8, 2, 32, 37, 29);
    p.params.covariance_rank = rank;
    p.params.use_covariance = cov;
    const auto& s = p.shape;
    const size_t d = s.head_dim;
    std::vector<float> mean(size_t{s.q_heads} * d), covm(mean.size() * d), rm(mean.size()), rc(covm.size());
    std::vector<float> cb(d / 2), sb(d / 2), norms(size_t{s.kv_heads} * s.tokens);
    QueryMoments(p.queries, p.n_queries, s.q_heads, s.head_dim, mean, covm);
    AveragedRope(s.head_dim, p.params, cb, sb);
    RotateQueryMoments(s.q_heads, s.head_dim, cb, sb, mean, covm, rm, rc);
    ValueNorms(s.kv_heads * s.tokens, s.head_dim, p.values, norms);
    std::vector<float> from_values(norms.size()), from_norms(norms.size());
    ExpectedAttentionTokenScores(s, p.params, p.keys, p.values, rm, rc, from_values);
    ExpectedAttentionTokenScoresWithNorms(s, p.params, p.keys, norms, rm, rc, from_norms);
    ExpectRelativelyClose(from_norms, from_values, 1e-6);
    if (rank > 0) {
      std::vector<float> f(size_t{s.q_heads} * rank * d), r(size_t{s.q_heads} * d);
      LowRankCovariance(s.q_heads, s.head_dim, rank, rc, f, r);
      ExpectedAttentionTokenScoresLowRank(s, p.params, p.keys, p.values, rm, f, r, from_values);
      ExpectedAttentionTokenScoresLowRankWithNorms(s, p.params, p.keys, norms, rm, f, r, from_norms);
      ExpectRelativelyClose(from_norms, from_values, 1e-6);
    }
  }
  // Without the value norm the norms are not read.
  Problem p = RandomProblem(2, 1, 16, 12, 31);
  p.params.use_value_norm = false;
  const auto& s = p.shape;
  std::vector<float> rm(size_t{s.q_heads} * 16, 0.1f), rc(rm.size() * 16, 0.0f), a(s.tokens), b(s.tokens);
  ExpectedAttentionTokenScores(s, p.params, p.keys, p.values, rm, rc, a);
  ExpectedAttentionTokenScoresWithNorms(s, p.params, p.keys, {}, rm, rc, b);
  EXPECT_EQ(a, b);
}

}  // namespace
}  // namespace kvtier::kernels
