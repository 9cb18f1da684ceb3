// The GPU half of `kvtier bench score` (score_bench_gpu.cc on CUDA builds; elsewhere
// score_bench_nocuda.cc says why it cannot run).
#pragma once

#include <cstdint>
#include <vector>

#include "kvtier/status.h"

namespace kvtier::cli {

struct GpuScoreBenchOptions {
  uint32_t tokens = 131072;  // one sequence
  uint32_t layers = 32;      // Llama-3-8B: 32 layers, 32 query heads, 8 KV heads, d = 128
  uint32_t q_heads = 32;
  uint32_t kv_heads = 8;
  uint32_t head_dim = 128;
  uint32_t block_tokens = 16;
  uint32_t refresh_interval = 512;  // decode steps between refreshes, for the amortised cost
  uint32_t repeats = 5;             // median of
  std::vector<uint32_t> ranks = {8, 16, 32};  // low-rank rows (multiples of 8, <= head_dim)
  int device = 0;
  bool json = false;
};

// Prints the GPU scorer's time for all layers (exact fp32, exact bf16, low-rank bf16 at each
// rank, mean only) next to a device-to-device copy of the same key bytes in the same run. kUnavailable without a device, kUnimplemented without CUDA.
Status RunGpuScoreBench(const GpuScoreBenchOptions& options);

}  // namespace kvtier::cli
