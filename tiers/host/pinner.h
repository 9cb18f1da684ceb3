// MemoryPinner: how the DRAM pool is pinned. MlockPinner here; CudaHostPinner
// (cudaHostRegister, so the GPU can read the pool through UVA) lives in tiers/gpu.
#pragma once

#include <cstddef>
#include <memory>
#include <string_view>

#include "kvtier/status.h"

namespace kvtier {

class MemoryPinner {  // thread-safe
 public:
  virtual ~MemoryPinner() = default;
  virtual std::string_view name() const = 0;
  // True when the pinned pages count against RLIMIT_MEMLOCK (mlock does; the CUDA
  // driver's registration does not).
  virtual bool counts_against_memlock() const = 0;
  // True when a GPU can address the pinned pages directly (registered with the device).
  virtual bool device_addressable() const = 0;
  virtual Status Pin(void* ptr, size_t bytes) = 0;
  virtual void Unpin(void* ptr, size_t bytes) noexcept = 0;
};

class MlockPinner final : public MemoryPinner {
 public:
  std::string_view name() const override { return "mlock"; }
  bool counts_against_memlock() const override { return true; }
  bool device_addressable() const override { return false; }
  Status Pin(void* ptr, size_t bytes) override;
  void Unpin(void* ptr, size_t bytes) noexcept override;
};

}  // namespace kvtier
