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

// Factoring the pre-RoPE Σ instead (docs/scoring.md "Factor once, rotate per refresh"):
// Σ̄ = R̄ Σ R̄ᵀ and only R̄ moves with the position, so with Σ ≈ F Fᵀ + E (F = V Λ^½ from
// LowRankCovariance of the pre-RoPE cov, E the residual) the per-refresh factors are
// W = R̄ F — O(r·d) — and ρ̄ = diag(R̄ E R̄ᵀ). R̄ E R̄ᵀ is not diagonal even for a diagonal E
// (R̄ mixes each rotate-half pair i, i + d/2), so E is kept as the 2×2 pair blocks of the
// residual — ρ₀ (LowRankCovariance's residual) and the pair covariances e_i below — and
// ρ̄ is the exact diagonal of R̄ E_pairs R̄ᵀ: every variance Σ̄_ii is kept, as in the direct
// factoring. Dropped: the off-diagonal of R̄ E_pairs R̄ᵀ (one pair cross term per i) and E's
// entries outside the pair blocks. Exact when r covers the rank of Σ. The top-r subspace of
// Σ is not that of Σ̄ (R̄ damps high-frequency pairs), so a rank may capture less of Σ̄
// than the direct factoring: `kvtier bench score` reports both.

// e [q_heads][d/2]: e_i = Σ_{i,i+d/2} − Σ_j f_j[i] f_j[i+d/2] for the pre-RoPE cov and its
// factors [q_heads][rank][d] (from LowRankCovariance of that cov). Once per statistics update.
void PairResidual(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cov,
                  std::span<const float> factors, std::span<float> pair_residual);

// Per refresh: factors_out [q_heads][rank][d] = R̄ f_j, residual_out [q_heads][d] = diag(R̄ E R̄ᵀ)
// (clamped at 0) from the pre-RoPE factors, ρ₀ (residual) and e (PairResidual); R̄ from
// AveragedRope's cbar, sbar. The outputs are what LowRankCovariance of Σ̄ would give the
// scorer (ExpectedAttentionTokenScoresLowRank, the CUDA kernel's cov_factors / cov_residual).
void RotateLowRankCovariance(uint32_t q_heads, uint32_t head_dim, uint32_t rank, std::span<const float> cbar,
                             std::span<const float> sbar, std::span<const float> factors,
                             std::span<const float> residual, std::span<const float> pair_residual,
                             std::span<float> factors_out, std::span<float> residual_out);

}  // namespace kvtier::kernels
