// Shared between expected_attention.cu (the launcher and the passes after the logits) and
// expected_attention_mma.cu (the tensor-core logits pass): the workspace layout and the
// logits-pass entry point. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "expected_attention.cuh"

namespace kvtier::kernels::detail {

constexpr uint32_t kTileKeys = 64;  // keys per logits tile (both logits kernels)

inline uint32_t Tiles(const ExpectedAttentionShape& s) { return (s.tokens + kTileKeys - 1) / kTileKeys; }

struct WorkspaceLayout {
  size_t logits = 0;    // float [q_heads][tokens]
  size_t vnorm = 0;     // float [kv_heads][tokens]: ‖v‖₂ per token
  size_t partials = 0;  // float2 [q_heads][<= tiles]: (max, Σexp) of a part of the keys
  size_t stats = 0;     // float2 [q_heads]: (max, Σexp) over every non-sink key
  size_t best = 0;      // uint32: bits of the best non-sink token score (scores >= 0)
  size_t total = 0;

  explicit WorkspaceLayout(const ExpectedAttentionShape& s) {
    auto up = [](size_t x) { return (x + 15) / 16 * 16; };
    vnorm = up(logits + sizeof(float) * size_t{s.q_heads} * s.tokens);
    partials = up(vnorm + sizeof(float) * size_t{s.kv_heads} * s.tokens);
    stats = up(partials + 2 * sizeof(float) * size_t{s.q_heads} * Tiles(s));
    best = up(stats + 2 * sizeof(float) * s.q_heads);
    total = up(best + sizeof(uint32_t));
  }
};

// The tensor-core logits pass (expected_attention_mma.cu) for every case but fp32 keys with
// the exact covariance term: writes logits (non-sink tokens), ‖v‖ (with the value norm) and
// `*partial_count` <= Tiles(shape) softmax partials per query head. Arguments already checked.
cudaError_t LaunchMmaLogits(const ExpectedAttentionDeviceArgs& args, float* logits, float* vnorm, float2* partials,
                            uint32_t* partial_count, cudaStream_t stream);

}  // namespace kvtier::kernels::detail
