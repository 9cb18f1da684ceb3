// CudaHostPinner: pins the DRAM pool with cudaHostRegister (portable, mapped), so every GPU
// kernel can read and write its slots through UVA. Built only when CUDA is (KVTIER_HAVE_CUDA).
#pragma once

#include <memory>

#include "pinner.h"

namespace kvtier {

class CudaHostPinner final : public MemoryPinner {
 public:
  // kUnavailable when no CUDA device is visible (then use MlockPinner).
  static Result<std::shared_ptr<CudaHostPinner>> Create();
  std::string_view name() const override { return "cuda-host-register"; }
  bool counts_against_memlock() const override { return false; }
  bool device_addressable() const override { return true; }
  Status Pin(void* ptr, size_t bytes) override;
  void Unpin(void* ptr, size_t bytes) noexcept override;
};

// Number of visible CUDA devices (0 when none, or when the driver is missing).
int CudaDeviceCount();

}  // namespace kvtier
