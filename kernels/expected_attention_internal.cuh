// Shared between expected_attention.cu (the launcher and the score pass after the logits),
// expected_attention_mma.cu (the cp.async-ring tensor-core logits pass) and
// expected_attention_stream.cu (the streaming logits pass): the workspace layout, the
// logits-pass entry points (the tensor-core instruction is kernels/mma.cuh's). Not part of the
// public API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "expected_attention.cuh"
#include "mma.cuh"

namespace kvtier::kernels::detail {

constexpr uint32_t kTileKeys = 64;  // keys per logits tile (ring and SIMT kernels)

inline uint32_t Tiles(const ExpectedAttentionShape& s) { return (s.tokens + kTileKeys - 1) / kTileKeys; }

struct WorkspaceLayout {
  size_t logits = 0;    // float [q_heads][tokens]
  size_t vnorm = 0;     // float [kv_heads][tokens]: ‖v‖₂ per token
  size_t partials = 0;  // float2 [q_heads][<= tiles]: (max, Σexp) of a part of the keys
  size_t best = 0;      // uint32 [2]: bits of the best non-sink token score (scores >= 0), and
                        // the score pass's CTA ticket; zeroed by every logits pass
  size_t total = 0;

  explicit WorkspaceLayout(const ExpectedAttentionShape& s) {
    auto up = [](size_t x) { return (x + 15) / 16 * 16; };
    vnorm = up(logits + sizeof(float) * size_t{s.q_heads} * s.tokens);
    partials = up(vnorm + sizeof(float) * size_t{s.kv_heads} * s.tokens);
    best = up(partials + 2 * sizeof(float) * size_t{s.q_heads} * Tiles(s));
    total = up(best + 2 * sizeof(uint32_t));
  }
};

using mma::Mma;  // kernels/mma.cuh

// Every logits pass writes logits (non-sink tokens) and `*partial_count` <= Tiles(shape)
// softmax partials per query head, and zeroes the two words at `best` (WorkspaceLayout) for
// the score pass. Arguments already checked.

// True when the streaming pass (expected_attention_stream.cu) runs: bf16/fp16 keys, the
// low-rank or mean-only term, logits_pass kAuto.
bool UseStreamLogits(const ExpectedAttentionDeviceArgs& args);

// The streaming pass: keys only (the caller computes ‖v‖ first when it is not precomputed).
cudaError_t LaunchStreamLogits(const ExpectedAttentionDeviceArgs& args, float* logits, float2* partials,
                               uint32_t* best, uint32_t* partial_count, cudaStream_t stream);

// The cp.async-ring tensor-core pass (expected_attention_mma.cu) for every case but fp32 keys
// with the exact covariance term; also writes ‖v‖ when the value norm is on and not precomputed.
cudaError_t LaunchMmaLogits(const ExpectedAttentionDeviceArgs& args, float* logits, float* vnorm, float2* partials,
                            uint32_t* best, uint32_t* partial_count, cudaStream_t stream);

}  // namespace kvtier::kernels::detail
