// CUDA resources as move-only RAII types, and the one converter from cudaError_t to Status.
// Internal to tiers/gpu (and its tests and tools): includes <cuda_runtime.h>.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string_view>

#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

// cudaErrorMemoryAllocation -> kExhausted; no device / driver -> kUnavailable; invalid
// values -> kInvalidArgument; everything else -> kIoError (a failed transfer).
Status FromCuda(cudaError_t error, std::string_view what);

#define KVT_RETURN_IF_CUDA_ERROR(expr, what)                              \
  do {                                                                   \
    const cudaError_t kvt_cuda_error_ = (expr);                          \
    if (kvt_cuda_error_ != cudaSuccess) return ::kvtier::FromCuda(kvt_cuda_error_, what); \
  } while (0)

// Makes `device` current for the scope of the guard, restoring the previous one after.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// cudaMalloc'd device memory; freed exactly once.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  static Result<DeviceBuffer> Allocate(int device, size_t bytes);  // OOM -> kExhausted
  std::byte* data() const { return static_cast<std::byte*>(ptr_.get()); }
  size_t size() const { return ptr_ ? size_ : 0; }

 private:
  struct Free {
    int device;  // no default member initializer: it would make Free not default-constructible here
    void operator()(void* p) const noexcept;
  };
  DeviceBuffer(void* p, int device, size_t n) : ptr_(p, Free{device}), size_(n) {}
  std::unique_ptr<void, Free> ptr_;
  size_t size_ = 0;
};

// cudaHostAlloc'd pinned, mapped host memory (staging buffers, descriptor rings).
class PinnedBuffer {
 public:
  PinnedBuffer() = default;
  static Result<PinnedBuffer> Allocate(size_t bytes);
  std::byte* data() const { return static_cast<std::byte*>(ptr_.get()); }
  size_t size() const { return ptr_ ? size_ : 0; }

 private:
  struct Free {
    void operator()(void* p) const noexcept;
  };
  PinnedBuffer(void* p, size_t n) : ptr_(p), size_(n) {}
  std::unique_ptr<void, Free> ptr_;
  size_t size_ = 0;
};

class CudaStream {
 public:
  CudaStream() = default;
  static Result<CudaStream> Create(int device);  // non-blocking w.r.t. the legacy stream
  cudaStream_t get() const { return s_.get(); }

 private:
  struct Destroy {
    void operator()(cudaStream_t s) const noexcept;
  };
  std::unique_ptr<CUstream_st, Destroy> s_;
};

class CudaEvent {
 public:
  CudaEvent() = default;
  static Result<CudaEvent> Create(int device);  // timing disabled: cheapest to record/wait
  cudaEvent_t get() const { return e_.get(); }

 private:
  struct Destroy {
    void operator()(cudaEvent_t e) const noexcept;
  };
  std::unique_ptr<CUevent_st, Destroy> e_;
};

}  // namespace kvtier
