// Helpers shared by the GPU kernel tests: a CUDA-call assertion and the device check every
// GPU test uses to GTEST_SKIP on machines without a GPU.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#define ASSERT_CUDA(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

namespace kvtier::testing {

inline bool HaveCudaDevice() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return n > 0;
}

}  // namespace kvtier::testing
