// Helpers shared by the GPU benchmarks of the `kvtier` CLI (bench decode, bench score --gpu):
// a CUDA-call check that returns a Status through the project's one converter (FromCuda in
// tiers/gpu/cuda_util.h), a raw device allocation freed at scope exit, and the median of
// repeated timings. CUDA builds only.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "cuda_util.h"

// Returns FromCuda(error, "<the expression>") from the enclosing function on a CUDA error.
#define KVT_CUDA_OR_RETURN(expr) KVT_RETURN_IF_CUDA_ERROR(expr, #expr)

namespace kvtier::cli {

// cudaMalloc'd bytes (set p with cudaMalloc(&m.p, ...)); cudaFree'd at scope exit.
struct DeviceMem {
  void* p = nullptr;
  DeviceMem() = default;
  DeviceMem(const DeviceMem&) = delete;
  DeviceMem& operator=(const DeviceMem&) = delete;
  ~DeviceMem() { cudaFree(p); }
  template <class T>
  T* as() const { return static_cast<T*>(p); }
};

// The upper median (v[n/2] after sorting) of a non-empty sample.
inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace kvtier::cli
