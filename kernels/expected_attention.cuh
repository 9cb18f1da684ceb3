// The Expected Attention block scorer on the GPU: the numbers of the CPU reference
// (kernels/reference/expected_attention.h, which documents the formulas) for one layer of
// one sequence, over device-resident fp32 views. The caller rotates the query moments
// (RotateQueryMoments: O(d²) per head, done once per refresh on the host) and owns every
// buffer, the workspace included.
//
// Four launches on `stream`, no host synchronisation, no allocation:
//   1. logits   grid (tiles of 64 keys, KV heads): the tile's keys are read once into shared
//               memory and serve every query head of the group: μ̄ᵀk/√d, plus kᵀΣ̄k/(2d) as a
//               register-tiled (K_tile · Σ̄) ⊙ K_tile row sum (Σ̄ streamed in 32-row chunks);
//   2. softmax  per query head: max and Σexp over the non-sink keys;
//   3. score    one warp per (KV head, block): group-mean weight, + ε, × ‖v‖ (coalesced),
//               summed over the block's non-sink tokens; the head's best token score kept;
//   4. sinks    blocks holding sink tokens add (best + 1) per sink token (kvpress rule).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

#include "reference/expected_attention.h"

namespace kvtier::kernels {

struct ExpectedAttentionDeviceArgs {
  ExpectedAttentionShape shape;  // head_dim ∈ {16, 32, 64, 128}
  float epsilon = 0.0f;
  bool use_covariance = true;
  bool use_value_norm = true;
  const float* keys = nullptr;          // [kv_heads][tokens][d], device
  const float* values = nullptr;        // [kv_heads][tokens][d], device (unused without value norm)
  const float* rotated_mean = nullptr;  // [q_heads][d], device
  const float* rotated_cov = nullptr;   // [q_heads][d][d], device (unused without covariance)
  void* workspace = nullptr;            // ExpectedAttentionWorkspaceBytes(shape), device, 16-B aligned
  float* block_scores = nullptr;        // [kv_heads][blocks], device (output)
};

// Device bytes of scratch one launch needs: logits [q_heads][tokens] and a few per-head sums.
size_t ExpectedAttentionWorkspaceBytes(const ExpectedAttentionShape& shape);

// Enqueues the scorer on `stream`. cudaErrorInvalidValue for an unsupported head_dim, a
// q_heads that is not a multiple of kv_heads, zero tokens or blocks, or a null pointer;
// otherwise the launch error, if any.
cudaError_t LaunchExpectedAttention(const ExpectedAttentionDeviceArgs& args, cudaStream_t stream);

}  // namespace kvtier::kernels
