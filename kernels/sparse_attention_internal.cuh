// Internal to the sparse attention kernels (sparse_attention.cu, sparse_attention_staged.cu):
// the staged variant's launch and device limits. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "sparse_attention.cuh"

namespace kvtier::kernels::attention_internal {

// Fixed shared memory of a staged CTA (slot ids, warp and CTA merge buffers).
size_t StagedStaticSmemBytes(uint32_t head_dim, uint32_t heads);

// The limits PlanStagedSparseAttention needs, for the staged instance of (shape, type,
// heads): all zero where there is none (head_dim, heads > 4, before sm_90).
cudaError_t StagedLimitsForDevice(const SparseAttentionShape& shape, HalfType type, uint32_t heads, int device,
                                  SparseAttentionStagedLimits* limits);

// Launches a staged plan (plan.cluster != 0).
cudaError_t LaunchStaged(const SparseAttentionDeviceArgs& a, const SparseAttentionPlan& plan, cudaStream_t stream);

}  // namespace kvtier::kernels::attention_internal
