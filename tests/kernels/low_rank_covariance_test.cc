// The host eigen-solver and low-rank covariance factors (kernels/reference/low_rank_covariance.h)
// on random symmetric positive semi-definite matrices: reconstruction, orthonormality and
// order of the eigenpairs; the subspace-iteration path against the full solve; the residual
// keeping the diagonal; exactness when the rank covers the matrix. The factor-once path
// (PairResidual + RotateLowRankCovariance) against R̄ Σ R̄ᵀ from RotateQueryMoments.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "reference/expected_attention.h"
#include "reference/low_rank_covariance.h"

namespace kvtier::kernels {
namespace {

using Mat = std::vector<double>;

// X Xᵀ / cols for a d×cols Gaussian X: PSD of rank min(d, cols).
Mat RandomPsd(uint32_t d, uint32_t cols, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> nd(0.0, 1.0);
  Mat x(size_t{d} * cols), a(size_t{d} * d, 0.0);
  for (double& v : x) v = nd(rng);
  for (uint32_t i = 0; i < d; ++i)
    for (uint32_t j = 0; j < d; ++j)
      for (uint32_t k = 0; k < cols; ++k) a[i * d + j] += x[i * cols + k] * x[j * cols + k] / cols;
  return a;
}

// Q diag(λ) Qᵀ with a random orthonormal Q and the given spectrum.
Mat WithSpectrum(const std::vector<double>& lambda, uint32_t seed) {
  const uint32_t d = static_cast<uint32_t>(lambda.size());
  Mat any = RandomPsd(d, d, seed), values(d), q(size_t{d} * d);
  SymmetricEigen(d, any, values, q);  // rows of q: an orthonormal basis
  Mat a(size_t{d} * d, 0.0);
  for (uint32_t j = 0; j < d; ++j)
    for (uint32_t r = 0; r < d; ++r)
      for (uint32_t c = 0; c < d; ++c) a[r * d + c] += lambda[j] * q[j * d + r] * q[j * d + c];
  return a;
}

double FrobeniusNorm(const Mat& a) {
  double s = 0;
  for (double x : a) s += x * x;
  return std::sqrt(s);
}

TEST(SymmetricEigen, ReconstructsRandomPsdMatricesWithOrthonormalVectorsInDescendingOrder) {
  for (auto [d, cols, seed] : {std::tuple{8u, 8u, 1u}, std::tuple{64u, 128u, 2u}, std::tuple{128u, 128u, 3u},
                               std::tuple{64u, 5u, 4u}}) {  // the last one has rank 5
    SCOPED_TRACE(::testing::Message() << "d=" << d << " cols=" << cols);
    const Mat a = RandomPsd(d, cols, seed);
    Mat values(d), u(size_t{d} * d);
    SymmetricEigen(d, a, values, u);
    Mat rebuilt(size_t{d} * d, 0.0), gram(size_t{d} * d, 0.0);
    for (uint32_t j = 0; j < d; ++j)
      for (uint32_t r = 0; r < d; ++r)
        for (uint32_t c = 0; c < d; ++c) {
          rebuilt[r * d + c] += values[j] * u[j * d + r] * u[j * d + c];
          gram[j * d + r] += u[j * d + c] * u[r * d + c];
        }
    Mat diff(a.size());
    for (size_t k = 0; k < a.size(); ++k) diff[k] = rebuilt[k] - a[k];
    EXPECT_LE(FrobeniusNorm(diff), 1e-10 * FrobeniusNorm(a));
    for (uint32_t j = 0; j < d; ++j)
      for (uint32_t r = 0; r < d; ++r) ASSERT_NEAR(gram[j * d + r], j == r ? 1.0 : 0.0, 1e-10) << j << "," << r;
    for (uint32_t j = 0; j + 1 < d; ++j) EXPECT_GE(values[j], values[j + 1]);
    if (cols < d) {
      EXPECT_NEAR(values[cols], 0.0, 1e-10 * values[0]);
    }
    EXPECT_GE(values[d - 1], -1e-10 * values[0]);  // PSD up to rounding
  }
}

TEST(SymmetricEigen, DiagonalAndZeroMatricesAreTheirOwnDecomposition) {
  const Mat diag = {3, 0, 0, 0, 1, 0, 0, 0, 2};
  Mat values(3), u(9);
  SymmetricEigen(3, diag, values, u);
  EXPECT_EQ(values, (Mat{3, 2, 1}));
  const Mat zero(16, 0.0);
  Mat zv(4), zu(16);
  SymmetricEigen(4, zero, zv, zu);
  for (double v : zv) EXPECT_EQ(v, 0.0);
}

// The factors' outer products Σ_j w_j w_jᵀ (d×d).
Mat OuterSum(const std::vector<float>& w, uint32_t rank, uint32_t d) {
  Mat a(size_t{d} * d, 0.0);
  for (uint32_t j = 0; j < rank; ++j)
    for (uint32_t r = 0; r < d; ++r)
      for (uint32_t c = 0; c < d; ++c) a[r * d + c] += double(w[j * d + r]) * w[j * d + c];
  return a;
}

TEST(LowRankCovariance, SubspaceIterationFindsTheDominantEigenpairs) {
  // A decaying spectrum (0.8^j): the rank-r part of the subspace iteration (r + 8 < d)
  // matches the truncation of the full solve.
  const uint32_t d = 128;
  std::vector<double> lambda(d);
  for (uint32_t j = 0; j < d; ++j) lambda[j] = 4.0 * std::pow(0.8, j);
  const Mat a = WithSpectrum(lambda, 7);
  std::vector<float> cov(a.begin(), a.end());
  for (uint32_t rank : {4u, 16u, 32u}) {
    SCOPED_TRACE(::testing::Message() << "rank=" << rank);
    std::vector<float> w(size_t{rank} * d), rho(d);
    LowRankCovariance(1, d, rank, cov, w, rho);
    Mat values(d), u(size_t{d} * d), truncated(size_t{d} * d, 0.0);
    SymmetricEigen(d, a, values, u);
    for (uint32_t j = 0; j < rank; ++j)
      for (uint32_t r = 0; r < d; ++r)
        for (uint32_t c = 0; c < d; ++c) truncated[r * d + c] += values[j] * u[j * d + r] * u[j * d + c];
    Mat got = OuterSum(w, rank, d), diff(got.size());
    for (size_t k = 0; k < got.size(); ++k) diff[k] = got[k] - truncated[k];
    EXPECT_LE(FrobeniusNorm(diff), 1e-4 * FrobeniusNorm(truncated));  // 5 power steps: ~(λ_{r+9}/λ_r)⁵
    for (uint32_t j = 0; j < rank; ++j) {  // ‖w_j‖² = λ_j
      double n2 = 0;
      for (uint32_t i = 0; i < d; ++i) n2 += double(w[j * d + i]) * w[j * d + i];
      EXPECT_NEAR(n2, lambda[j], 1e-5 * lambda[0]);
    }
  }
}

TEST(LowRankCovariance, ResidualKeepsTheDiagonalAndIsNonNegative) {
  const uint32_t d = 64, heads = 3;
  std::vector<float> cov;
  for (uint32_t h = 0; h < heads; ++h) {
    const Mat a = RandomPsd(d, 40 + 20 * h, 20 + h);
    cov.insert(cov.end(), a.begin(), a.end());
  }
  for (uint32_t rank : {1u, 8u, 30u, 64u}) {
    std::vector<float> w(size_t{heads} * rank * d), rho(size_t{heads} * d);
    LowRankCovariance(heads, d, rank, cov, w, rho);
    for (uint32_t h = 0; h < heads; ++h) {
      const std::vector<float> wh(w.begin() + h * rank * d, w.begin() + (h + 1) * rank * d);
      const Mat outer = OuterSum(wh, rank, d);
      for (uint32_t i = 0; i < d; ++i) {
        EXPECT_GE(rho[h * d + i], 0.0f);
        const double sii = cov[(h * d + i) * d + i];
        EXPECT_NEAR(outer[i * d + i] + rho[h * d + i], sii, 1e-5 * sii) << "h=" << h << " i=" << i << " r=" << rank;
      }
    }
  }
}

TEST(LowRankCovariance, ARankCoveringTheMatrixIsExact) {
  // Rank 20 PSD, rank 24 (subspace path: 24 + 8 < 64) and rank 64 (full solve): Σ_j w_j w_jᵀ
  // reproduces the matrix and the residual vanishes.
  const uint32_t d = 64;
  const Mat a = RandomPsd(d, 20, 31);
  std::vector<float> cov(a.begin(), a.end());
  for (uint32_t rank : {24u, 64u}) {
    std::vector<float> w(size_t{rank} * d), rho(d);
    LowRankCovariance(1, d, rank, cov, w, rho);
    Mat got = OuterSum(w, rank, d), diff(got.size());
    for (size_t k = 0; k < got.size(); ++k) diff[k] = got[k] - cov[k];
    EXPECT_LE(FrobeniusNorm(diff), 1e-6 * FrobeniusNorm(a)) << "rank=" << rank;
    for (float x : rho) EXPECT_LE(x, 1e-6 * a[0]);
  }
}

TEST(LowRankCovariance, IsDeterministic) {
  const Mat a = RandomPsd(32, 32, 41);
  std::vector<float> cov(a.begin(), a.end()), w1(8 * 32), w2(8 * 32), r1(32), r2(32);
  LowRankCovariance(1, 32, 8, cov, w1, r1);
  LowRankCovariance(1, 32, 8, cov, w2, r2);
  EXPECT_EQ(w1, w2);
  EXPECT_EQ(r1, r2);
}

// The factor-once path for `heads` copies of pre-RoPE covariances `covs` (d×d each) at one
// position: returns {Σ̄ = R̄ΣR̄ᵀ (RotateQueryMoments), W Wᵀ + diag(ρ̄)} per head, and W.
struct Rotated {
  std::vector<Mat> exact, approx;
  std::vector<float> w, f;
  std::vector<float> cbar, sbar;
};
Rotated FactorThenRotate(const std::vector<Mat>& covs, uint32_t d, uint32_t rank, uint64_t position) {
  const auto heads = static_cast<uint32_t>(covs.size());
  Rotated out;
  std::vector<float> cov(size_t{heads} * d * d), mean(size_t{heads} * d, 0.0f), rmean(mean.size()), rcov(cov.size());
  for (uint32_t h = 0; h < heads; ++h)
    for (size_t k = 0; k < size_t{d} * d; ++k) cov[h * size_t{d} * d + k] = static_cast<float>(covs[h][k]);
  out.cbar.resize(d / 2);
  out.sbar.resize(d / 2);
  AveragedRope(d, {.position = position, .future = 512, .rope_theta = 10000}, out.cbar, out.sbar);
  RotateQueryMoments(heads, d, out.cbar, out.sbar, mean, cov, rmean, rcov);
  out.f.resize(size_t{heads} * rank * d);
  out.w.resize(out.f.size());
  std::vector<float> rho0(size_t{heads} * d), e(size_t{heads} * d / 2), rho(size_t{heads} * d);
  LowRankCovariance(heads, d, rank, cov, out.f, rho0);
  PairResidual(heads, d, rank, cov, out.f, e);
  RotateLowRankCovariance(heads, d, rank, out.cbar, out.sbar, out.f, rho0, e, out.w, rho);
  for (uint32_t h = 0; h < heads; ++h) {
    Mat ex(size_t{d} * d), ap(size_t{d} * d, 0.0);
    for (size_t k = 0; k < ex.size(); ++k) ex[k] = rcov[h * size_t{d} * d + k];
    for (uint32_t j = 0; j < rank; ++j)
      for (uint32_t r = 0; r < d; ++r)
        for (uint32_t c = 0; c < d; ++c)
          ap[r * d + c] += double(out.w[(size_t{h} * rank + j) * d + r]) * out.w[(size_t{h} * rank + j) * d + c];
    for (uint32_t i = 0; i < d; ++i) ap[i * d + i] += rho[h * size_t{d} + i];
    out.exact.push_back(ex);
    out.approx.push_back(ap);
  }
  return out;
}

TEST(RotateLowRankCovariance, FactorsAreTheRotatedPreRopeFactors) {
  const uint32_t d = 32, rank = 8;
  const Rotated r = FactorThenRotate({RandomPsd(d, 40, 71)}, d, rank, 1000);
  for (uint32_t j = 0; j < rank; ++j)
    for (uint32_t i = 0; i < d / 2; ++i) {
      const double lo = r.f[j * d + i], hi = r.f[j * d + i + d / 2], c = r.cbar[i], s = r.sbar[i];
      EXPECT_NEAR(r.w[j * d + i], c * lo - s * hi, 1e-6) << j << "," << i;
      EXPECT_NEAR(r.w[j * d + i + d / 2], c * hi + s * lo, 1e-6) << j << "," << i;
    }
}

TEST(RotateLowRankCovariance, KeepsEveryVarianceOfTheRotatedCovariance) {
  // Full-rank Σ, ranks well below d: the off-diagonal is approximate, the diagonal is not.
  for (uint32_t rank : {1u, 4u, 16u}) {
    for (uint64_t position : {0ull, 777ull, 100000ull}) {
      SCOPED_TRACE(::testing::Message() << "rank=" << rank << " position=" << position);
      const uint32_t d = 64;
      const Rotated r = FactorThenRotate({RandomPsd(d, 64, 73), WithSpectrum(std::vector<double>(d, 1.0), 79)}, d,
                                         rank, position);
      for (size_t h = 0; h < r.exact.size(); ++h) {
        double scale = 0;
        for (uint32_t i = 0; i < d; ++i) scale = std::max(scale, r.exact[h][i * d + i]);
        for (uint32_t i = 0; i < d; ++i) {
          EXPECT_NEAR(r.approx[h][i * d + i], r.exact[h][i * d + i], 1e-5 * scale) << "head " << h << " i " << i;
        }
      }
    }
  }
}

TEST(RotateLowRankCovariance, ARankCoveringTheCovarianceIsExactAfterRotation) {
  // rank(Σ) = 10 <= 16, and a full-rank Σ at r = d: W Wᵀ + diag(ρ̄) = R̄ Σ R̄ᵀ.
  for (auto [d, cols, rank] : {std::tuple{64u, 10u, 16u}, std::tuple{32u, 32u, 32u}}) {
    SCOPED_TRACE(::testing::Message() << "d=" << d << " rank(Σ)=" << cols << " r=" << rank);
    const Rotated r = FactorThenRotate({RandomPsd(d, cols, 83)}, d, rank, 4321);
    double err = 0, norm = 0;
    for (size_t k = 0; k < r.exact[0].size(); ++k) {
      err += std::pow(r.approx[0][k] - r.exact[0][k], 2);
      norm += std::pow(r.exact[0][k], 2);
    }
    EXPECT_LE(std::sqrt(err), 1e-5 * std::sqrt(norm));
  }
}

}  // namespace
}  // namespace kvtier::kernels
