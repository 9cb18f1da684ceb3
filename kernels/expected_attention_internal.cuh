// Shared between expected_attention.cu (the launcher and the score pass after the logits),
// expected_attention_mma.cu (the cp.async-ring tensor-core logits pass) and
// expected_attention_stream.cu (the streaming logits pass): the workspace layout, the
// logits-pass entry points and the one tensor-core instruction they share. Not part of the
// public API.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "expected_attention.cuh"

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

// D += A·B, m16n8k16, fp32 accumulate (PTX ISA fragment layouts: A row-major, B column-major).
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __nv_bfloat16) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ void Mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, __half) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

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
