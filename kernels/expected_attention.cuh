// The Expected Attention block scorer on the GPU: the numbers of the CPU reference
// (kernels/reference/expected_attention.h, which documents the formulas) for one layer of
// one sequence, over device-resident views. Keys and values are [kv_heads][tokens][d] in
// fp32, bf16 or fp16 (what an engine caches); the statistics are fp32. The caller rotates
// the query moments (RotateQueryMoments: O(d²) per head, once per refresh on the host),
// factors Σ̄ for the low-rank option (LowRankCovariance, reference/low_rank_covariance.h)
// and owns every buffer, the workspace included.
//
// Launches on `stream`, no host synchronisation, no allocation:
//   1. logits   one pass over the keys: per key and query head μ̄ᵀk/√d + kᵀΣ̄k/(2d), plus
//               softmax partials (max, Σexp) per query head. Three forms:
//               - streaming (bf16/fp16 keys with the low-rank or mean-only term; the
//                 default for them): every warp streams its own 16-key m-tiles from global
//                 memory into registers (the next one in flight while the current one is
//                 computed; no shared-memory key staging, no CTA barrier in the loop) and
//                 computes K·Wᵀ for the factor rows of all of the CTA's query heads with
//                 mma.sync m16n8k16 (A fragments straight from the loaded registers), the
//                 linear and diagonal terms in fp32 from the same registers. ‖v‖, when not
//                 precomputed, comes from LaunchValueNorms first (one pass over the values);
//               - cp.async ring on tensor cores (bf16/fp16 keys with the exact term; fp32
//                 keys with the low-rank or mean-only term; every case but fp32-exact with
//                 LogitsPass::kRing): key tiles of 64 streamed into shared memory, read once
//                 for every query head of the GQA group; exact: K_tile·Σ̄ with mma.sync (Σ̄
//                 in bf16/fp16, fp32 accumulate), then the row-wise dot with K (and μ̄) in
//                 fp32; ‖v‖ in the same pass when not precomputed;
//               - fp32 keys with the exact term: fp32 SIMT register tiling (K_tile·Σ̄) ⊙ K_tile,
//                 then separate softmax-partial and value-norm passes.
//   2. score    one launch: each CTA merges the softmax partials of the heads it needs,
//               then per (KV head, block): group-mean weight, + ε, × ‖v‖, summed over the
//               block's non-sink tokens; the best token score over every head kept; the
//               last CTA to finish adds (best + 1) per sink token to the blocks holding
//               sinks (kvpress rule).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "reference/expected_attention.h"

namespace kvtier::kernels {

// Element type of the keys and values.
enum class KvDType : uint32_t { kFp32, kBf16, kFp16 };

// Which logits pass runs (tuning and benchmarks: the scores agree within rounding, not bit
// for bit, because the two passes sum in different orders).
enum class LogitsPass : uint32_t {
  kAuto,  // streaming for bf16/fp16 keys with the low-rank or mean-only term; else kRing,
          // or fp32 SIMT for fp32 keys with the exact term
  kRing,  // the cp.async-ring tensor-core pass (fp32 keys with the exact term: SIMT as ever)
};

struct ExpectedAttentionDeviceArgs {
  ExpectedAttentionShape shape;  // head_dim ∈ {16, 32, 64, 128}
  float epsilon = 0.0f;
  bool use_covariance = true;
  bool use_value_norm = true;
  KvDType kv_dtype = KvDType::kFp32;  // of keys and values
  // 0: the exact kᵀΣ̄k from rotated_cov. r > 0 (a multiple of 8, <= head_dim): the low-rank
  // form Σ_j (w_jᵀk)² + Σ_i ρ_i k_i² from cov_factors and cov_residual (LowRankCovariance).
  // Default kDefaultCovarianceRank (16, docs/scoring.md "Default"): the caller passes rank-16
  // factors. Set DeviceCovarianceRank(requested, head_dim) (reference/expected_attention.h):
  // 16 at head_dim 32/64/128, 0 (exact: pass rotated_cov) at head_dim 16. The launch takes
  // the value as given (rank == head_dim is accepted: low-rank of full rank, exact up to
  // rounding). With bf16/fp16 keys a rank > 0 or the mean term alone runs the streaming
  // pass; with value_norms also set it reads only the keys (the measured configuration).
  uint32_t covariance_rank = kDefaultCovarianceRank;
  const void* keys = nullptr;           // [kv_heads][tokens][d] of kv_dtype, device, 16-B aligned
  const void* values = nullptr;         // same shape and type (unused without value norm or with value_norms)
  // Optional, device, [kv_heads][tokens] fp32: ‖v‖₂ per token, precomputed when the tokens
  // were cached (LaunchValueNorms). With the value norm on and this set, `values` is not read
  // (may be null) and the scorer reads only the keys: half the bytes for bf16 K/V.
  const float* value_norms = nullptr;
  const float* rotated_mean = nullptr;  // [q_heads][d], device
  const float* rotated_cov = nullptr;   // [q_heads][d][d], device (exact covariance term only)
  const float* cov_factors = nullptr;   // [q_heads][rank][d], device (low-rank only): w_j = √λ_j u_j
  const float* cov_residual = nullptr;  // [q_heads][d], device (low-rank only): ρ
  void* workspace = nullptr;            // ExpectedAttentionWorkspaceBytes(shape), device, 16-B aligned
  float* block_scores = nullptr;        // [kv_heads][blocks], device (output)
  LogitsPass logits_pass = LogitsPass::kAuto;
  // cp.async-ring logits pass only (the streaming pass ignores it): key tiles in the cp.async ring (2: double buffering, one
  // tile in flight per CTA; up to 4: three in flight). 0 (default): the deepest ring that fits
  // shared memory without losing CTAs per SM. Other values are for tuning and benchmarks
  // (`kvtier bench score --gpu` times 2 against the default); a depth that does not fit is
  // lowered to one that does. The result does not depend on it (same arithmetic, same order).
  uint32_t logits_stages = 0;
};

// ‖v‖₂ of every token of `heads` KV heads × `tokens` tokens (ExpectedAttentionDeviceArgs::
// value_norms). A value never changes once cached, so an engine computes its norms once, when
// it writes a block (tokens = block_tokens, `norms` pointing at the block's first token in the
// sequence's [kv_heads][tokens] array, norms_head_stride = the sequence's token capacity), or
// for a whole sequence at once (strides = tokens·head_dim and tokens).
struct ValueNormsArgs {
  KvDType dtype = KvDType::kBf16;
  uint32_t head_dim = 0;  // 16, 32, 64 or 128
  uint32_t heads = 0;
  uint32_t tokens = 0;
  const void* values = nullptr;   // token t of head h at values + h·values_head_stride + t·head_dim (elements), 16-B aligned
  size_t values_head_stride = 0;  // elements; a multiple of 16 bytes
  float* norms = nullptr;         // norms[h·norms_head_stride + t], device
  size_t norms_head_stride = 0;   // floats
};

// Enqueues the norms on `stream` (one pass over the values, fp32 accumulation, no allocation,
// no host synchronisation). cudaErrorInvalidValue for an unsupported head_dim or dtype, zero
// heads or tokens, null pointers, a values pointer or head stride that is not 16-B aligned;
// otherwise the launch error, if any. Thread-safe.
cudaError_t LaunchValueNorms(const ValueNormsArgs& args, cudaStream_t stream);

// Device bytes of scratch one launch needs: logits [q_heads][tokens], ‖v‖ [kv_heads][tokens],
// softmax partials [q_heads][tiles of 64 keys] and two counters (~4·(q + kv)·tokens B).
size_t ExpectedAttentionWorkspaceBytes(const ExpectedAttentionShape& shape);

// Enqueues the scorer on `stream`. cudaErrorInvalidValue for an unsupported head_dim or
// kv_dtype, a q_heads that is not a multiple of kv_heads, zero tokens or blocks, a rank that
// is not a multiple of 8 in [8, head_dim], logits_stages other than 0, 2, 3 or 4, an unknown
// logits_pass, a null pointer the options need (values only when
// the value norm is on and value_norms is null), keys/values not 16-B aligned or value_norms
// not 4-B aligned; otherwise the launch error, if any. Thread-safe (no state); the launch
// sets the tensor-core kernel's shared-memory attribute on the current device.
cudaError_t LaunchExpectedAttention(const ExpectedAttentionDeviceArgs& args, cudaStream_t stream);

}  // namespace kvtier::kernels
