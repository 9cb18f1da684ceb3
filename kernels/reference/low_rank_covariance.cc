// Why subspace iteration rather than a full eigen-solve for small ranks: a full Jacobi solve
// of a 128×128 matrix is ~10 sweeps × 8128 rotations × O(d) — tens of ms per query head,
// i.e. seconds per refresh for a 32-layer model. The dominant r-dimensional subspace of a
// covariance is found by a few products Σ̄·Q (d²·(r+8) each), and only the small projected
// matrix needs Jacobi.
#include "reference/low_rank_covariance.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

namespace kvtier::kernels {
namespace {

constexpr uint32_t kOversample = 8;
constexpr int kPowerSteps = 4;

// One Jacobi rotation zeroing a[p][q] of the symmetric n×n `a`, applied to `v`'s columns.
void Rotate(std::vector<double>& a, std::vector<double>& v, size_t n, size_t p, size_t q) {
  const double apq = a[p * n + q];
  if (apq == 0.0) return;
  const double theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
  const double t = (theta >= 0 ? 1.0 : -1.0) / (std::abs(theta) + std::sqrt(theta * theta + 1.0));
  const double c = 1.0 / std::sqrt(t * t + 1.0), s = t * c;
  for (size_t k = 0; k < n; ++k) {  // A ← A J (columns p, q)
    const double akp = a[k * n + p], akq = a[k * n + q];
    a[k * n + p] = c * akp - s * akq;
    a[k * n + q] = s * akp + c * akq;
  }
  for (size_t k = 0; k < n; ++k) {  // A ← Jᵀ A (rows p, q)
    const double apk = a[p * n + k], aqk = a[q * n + k];
    a[p * n + k] = c * apk - s * aqk;
    a[q * n + k] = s * apk + c * aqk;
  }
  a[p * n + q] = a[q * n + p] = 0.0;  // exact zero, not rounding noise
  for (size_t k = 0; k < n; ++k) {  // V ← V J
    const double vkp = v[k * n + p], vkq = v[k * n + q];
    v[k * n + p] = c * vkp - s * vkq;
    v[k * n + q] = s * vkp + c * vkq;
  }
}

// Orthonormalises the b columns of the d×b matrix `y` (row major) in place by modified
// Gram–Schmidt, twice; a column that vanishes (a rank-deficient Σ̄) is replaced by a basis
// vector, so the result is always an orthonormal basis of b dimensions (b <= d).
void Orthonormalise(std::vector<double>& y, size_t d, size_t b) {
  size_t next_basis = 0;
  for (size_t j = 0; j < b; ++j) {
    double original = 0;
    for (size_t i = 0; i < d; ++i) original += y[i * b + j] * y[i * b + j];
    original = std::sqrt(original);
    for (int attempt = 0;; ++attempt) {
      for (int pass = 0; pass < 2; ++pass) {
        for (size_t k = 0; k < j; ++k) {
          double dot = 0;
          for (size_t i = 0; i < d; ++i) dot += y[i * b + k] * y[i * b + j];
          for (size_t i = 0; i < d; ++i) y[i * b + j] -= dot * y[i * b + k];
        }
      }
      double norm = 0;
      for (size_t i = 0; i < d; ++i) norm += y[i * b + j] * y[i * b + j];
      norm = std::sqrt(norm);
      if (norm > 1e-10 * original && norm > 1e-300) {
        for (size_t i = 0; i < d; ++i) y[i * b + j] /= norm;
        break;
      }
      // Degenerate: restart the column from the next canonical basis vector (at most d tries;
      // since j < b <= d some basis vector is outside the span of the previous columns).
      for (size_t i = 0; i < d; ++i) y[i * b + j] = 0.0;
      y[(next_basis++ % d) * b + j] = 1.0;
      original = 1.0;
      if (attempt > static_cast<int>(d)) break;  // unreachable for b <= d; avoids an endless loop
    }
  }
}

// y (d×b) = s (d×d) · x (d×b), all row major.
void Multiply(const std::vector<double>& s, const std::vector<double>& x, std::vector<double>& y, size_t d, size_t b) {
  std::fill(y.begin(), y.end(), 0.0);
  for (size_t i = 0; i < d; ++i)
    for (size_t k = 0; k < d; ++k) {
      const double sik = s[i * d + k];
      for (size_t j = 0; j < b; ++j) y[i * b + j] += sik * x[k * b + j];
    }
}

// The top `rank` eigenpairs of the d×d symmetric `s`: values (descending) and vectors (rows).
void TopEigenpairs(const std::vector<double>& s, size_t d, size_t rank, std::vector<double>& values,
                   std::vector<double>& vectors) {
  const size_t b = rank + kOversample;
  if (b >= d) {
    std::vector<double> all_values(d), all_vectors(d * d);
    SymmetricEigen(static_cast<uint32_t>(d), s, all_values, all_vectors);
    values.assign(all_values.begin(), all_values.begin() + static_cast<ptrdiff_t>(rank));
    vectors.assign(all_vectors.begin(), all_vectors.begin() + static_cast<ptrdiff_t>(rank * d));
    return;
  }
  std::mt19937_64 rng(0x5eedc0de);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> q(d * b), y(d * b);
  for (double& x : q) x = nd(rng);
  for (int step = 0; step <= kPowerSteps; ++step) {
    Multiply(s, q, y, d, b);
    Orthonormalise(y, d, b);
    q.swap(y);
  }
  // Rayleigh–Ritz: B = Qᵀ S Q (b×b), B = W Θ Wᵀ, u_j = Q w_j.
  Multiply(s, q, y, d, b);
  std::vector<double> small(b * b, 0.0);
  for (size_t i = 0; i < b; ++i)
    for (size_t j = 0; j < b; ++j) {
      double acc = 0;
      for (size_t k = 0; k < d; ++k) acc += q[k * b + i] * y[k * b + j];
      small[i * b + j] = acc;
    }
  std::vector<double> theta(b), w(b * b);
  SymmetricEigen(static_cast<uint32_t>(b), small, theta, w);
  values.assign(theta.begin(), theta.begin() + static_cast<ptrdiff_t>(rank));
  vectors.assign(rank * d, 0.0);
  for (size_t j = 0; j < rank; ++j)
    for (size_t i = 0; i < d; ++i) {
      double acc = 0;
      for (size_t k = 0; k < b; ++k) acc += q[i * b + k] * w[j * b + k];
      vectors[j * d + i] = acc;
    }
}

}  // namespace

void SymmetricEigen(uint32_t n, std::span<const double> a_in, std::span<double> eigenvalues,
                    std::span<double> eigenvectors) {
  const size_t m = n;
  std::vector<double> a(m * m), v(m * m, 0.0);
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < m; ++j) a[i * m + j] = 0.5 * (a_in[i * m + j] + a_in[j * m + i]);
  for (size_t i = 0; i < m; ++i) v[i * m + i] = 1.0;
  double norm = 0;
  for (double x : a) norm += x * x;
  for (int sweep = 0; sweep < 64 && norm > 0; ++sweep) {
    double off = 0;
    for (size_t p = 0; p < m; ++p)
      for (size_t q = p + 1; q < m; ++q) off += 2 * a[p * m + q] * a[p * m + q];
    if (off <= 1e-30 * norm) break;  // off-diagonal mass below (1e-15)² of the total
    for (size_t p = 0; p + 1 < m; ++p)
      for (size_t q = p + 1; q < m; ++q) Rotate(a, v, m, p, q);
  }
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) { return a[x * m + x] > a[y * m + y]; });
  for (size_t j = 0; j < m; ++j) {
    eigenvalues[j] = a[order[j] * m + order[j]];
    for (size_t i = 0; i < m; ++i) eigenvectors[j * m + i] = v[i * m + order[j]];  // column → row
  }
}

void LowRankCovariance(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cov,
                       std::span<float> factors, std::span<float> residual) {
  const size_t d = head_dim, r = std::min(rank, head_dim);
  std::vector<double> s(d * d), values, vectors;
  for (uint32_t h = 0; h < q_heads; ++h) {
    for (size_t k = 0; k < d * d; ++k) s[k] = cov[h * d * d + k];
    TopEigenpairs(s, d, r, values, vectors);
    float* w = &factors[h * r * d];
    for (size_t j = 0; j < r; ++j) {
      const double scale = std::sqrt(std::max(values[j], 0.0));
      for (size_t i = 0; i < d; ++i) w[j * d + i] = static_cast<float>(scale * vectors[j * d + i]);
    }
    for (size_t i = 0; i < d; ++i) {  // from the stored (fp32) factors, so ρ complements them
      double explained = 0;
      for (size_t j = 0; j < r; ++j) explained += static_cast<double>(w[j * d + i]) * w[j * d + i];
      residual[h * d + i] = static_cast<float>(std::max(s[i * d + i] - explained, 0.0));
    }
  }
}

void PairResidual(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cov,
                  std::span<const float> factors, std::span<float> pair_residual) {
  const size_t d = head_dim, half = d / 2, r = std::min(rank, head_dim);
  for (size_t h = 0; h < q_heads; ++h) {
    const float* f = &factors[h * r * d];
    for (size_t i = 0; i < half; ++i) {
      double explained = 0;
      for (size_t j = 0; j < r; ++j) explained += static_cast<double>(f[j * d + i]) * f[j * d + i + half];
      pair_residual[h * half + i] = static_cast<float>(cov[h * d * d + i * d + i + half] - explained);
    }
  }
}

void RotateLowRankCovariance(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cbar,
                             std::span<const float> sbar, std::span<const float> factors,
                             std::span<const float> residual, std::span<const float> pair_residual,
                             std::span<float> factors_out, std::span<float> residual_out) {
  const size_t d = head_dim, half = d / 2, r = std::min(rank, head_dim);
  for (size_t h = 0; h < q_heads; ++h) {
    for (size_t j = 0; j < r; ++j) {  // w_j = R̄ f_j (rotate-half pairs, as RotateQueryMoments)
      const float* f = &factors[(h * r + j) * d];
      float* w = &factors_out[(h * r + j) * d];
      for (size_t i = 0; i < half; ++i) {
        const double c = cbar[i], s = sbar[i], lo = f[i], hi = f[i + half];
        w[i] = static_cast<float>(c * lo - s * hi);
        w[i + half] = static_cast<float>(c * hi + s * lo);
      }
    }
    for (size_t i = 0; i < half; ++i) {  // diag of B [[ρ_lo, e], [e, ρ_hi]] Bᵀ, B = [[c, −s], [s, c]]
      const double c = cbar[i], s = sbar[i], e = pair_residual[h * half + i];
      const double lo = residual[h * d + i], hi = residual[h * d + i + half];
      residual_out[h * d + i] = static_cast<float>(std::max(c * c * lo - 2 * c * s * e + s * s * hi, 0.0));
      residual_out[h * d + i + half] = static_cast<float>(std::max(s * s * lo + 2 * c * s * e + c * c * hi, 0.0));
    }
  }
}

}  // namespace kvtier::kernels
