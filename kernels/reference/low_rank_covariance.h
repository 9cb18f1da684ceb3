// Low-rank approximation of the rotated query covariance Σ̄ for the Expected Attention
// scorer (kernels/reference/expected_attention.h, docs/scoring.md "Low-rank covariance").
//
// The exact covariance term kᵀΣ̄k costs d² multiply-adds per key and query head; with Σ̄
// (symmetric positive semi-definite) approximated as
//
//     Σ̄ ≈ Σ_{j<r} λ_j u_j u_jᵀ + diag(ρ),   w_j = √λ_j · u_j,   ρ_i = max(0, Σ̄_ii − Σ_j w_j[i]²)
//
// (the r largest eigenpairs, plus the diagonal of what they leave out, so the trace and
// every variance Σ̄_ii is kept), it becomes kᵀΣ̄k ≈ Σ_j (w_jᵀk)² + Σ_i ρ_i k_i²: d·r + d
// multiply-adds, a skinny GEMM K·Wᵀ on the GPU. With r = d it is exact (up to rounding).
//
// The factorisation runs on the host once per refresh (per layer and query head), in
// double: for r + 8 < d a randomized subspace iteration (a seeded Gaussian start, 4 power
// steps, re-orthonormalised each time) gives an orthonormal basis Q of the dominant
// subspace and the Rayleigh–Ritz pairs of QᵀΣ̄Q (a Jacobi solve of an (r+8)² matrix);
// otherwise a full Jacobi solve of Σ̄. Deterministic: the same Σ̄ gives the same factors.
//
// Functions run on the calling thread and allocate only their own scratch; inputs are
// borrowed; shapes are the caller's to check.
#pragma once

#include <cstdint>
#include <span>

namespace kvtier::kernels {

// Eigen-decomposition of the symmetric n×n matrix `a` (row major; only its symmetric part
// (a + aᵀ)/2 is used) by cyclic Jacobi rotations, in double. `eigenvalues` (n) come out in
// descending order; row j of `eigenvectors` (n×n, row major) is the unit eigenvector of
// eigenvalue j. O(n³) per sweep, ~10 sweeps: meant for n ≤ ~128.
void SymmetricEigen(uint32_t n, std::span<const double> a, std::span<double> eigenvalues,
                    std::span<double> eigenvectors);

// Low-rank factors of every query head's Σ̄: cov [q_heads][d][d] (the rotated covariance)
// → factors [q_heads][rank][d] (row j = w_j = √λ_j u_j, λ descending, λ < 0 from rounding
// clamped to 0) and residual [q_heads][d] (ρ above). 1 <= rank <= head_dim.
void LowRankCovariance(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cov,
                       std::span<float> factors, std::span<float> residual);

}  // namespace kvtier::kernels
