#include "cuda_util.h"

#include <fmt/format.h>

namespace kvtier {

Status FromCuda(cudaError_t error, std::string_view what) {
  if (error == cudaSuccess) return Status();
  StatusCode code = StatusCode::kIoError;
  switch (error) {
    case cudaErrorMemoryAllocation: code = StatusCode::kExhausted; break;
    case cudaErrorNoDevice: case cudaErrorInsufficientDriver: case cudaErrorDevicesUnavailable:
      code = StatusCode::kUnavailable; break;
    case cudaErrorInvalidValue: case cudaErrorInvalidDevice: case cudaErrorInvalidDevicePointer:
      code = StatusCode::kInvalidArgument; break;
    default: break;
  }
  return Status(code, fmt::format("{}: {} ({})", what, cudaGetErrorString(error), static_cast<int>(error)));
}

DeviceGuard::DeviceGuard(int device) {
  if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
  if (previous_ != device) (void)cudaSetDevice(device);
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

Result<DeviceBuffer> DeviceBuffer::Allocate(int device, size_t bytes) {
  DeviceGuard guard(device);
  void* p = nullptr;
  KVT_RETURN_IF_CUDA_ERROR(cudaMalloc(&p, bytes), fmt::format("cudaMalloc of {} B on device {}", bytes, device));
  return DeviceBuffer(p, device, bytes);
}

void DeviceBuffer::Free::operator()(void* p) const noexcept {
  DeviceGuard guard(device);
  if (const cudaError_t e = cudaFree(p); e != cudaSuccess && e != cudaErrorCudartUnloading) {
    CheckFailed(__FILE__, __LINE__, "cudaFree", cudaGetErrorString(e));
  }
}

Result<PinnedBuffer> PinnedBuffer::Allocate(size_t bytes) {
  void* p = nullptr;
  KVT_RETURN_IF_CUDA_ERROR(cudaHostAlloc(&p, bytes, cudaHostAllocPortable | cudaHostAllocMapped),
                           fmt::format("cudaHostAlloc of {} B", bytes));
  return PinnedBuffer(p, bytes);
}

void PinnedBuffer::Free::operator()(void* p) const noexcept { (void)cudaFreeHost(p); }

Result<CudaStream> CudaStream::Create(int device) {
  DeviceGuard guard(device);
  cudaStream_t s = nullptr;
  KVT_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking), "cudaStreamCreate");
  CudaStream out;
  out.s_.reset(s);
  return out;
}

void CudaStream::Destroy::operator()(cudaStream_t s) const noexcept { (void)cudaStreamDestroy(s); }

Result<CudaEvent> CudaEvent::Create(int device) {
  DeviceGuard guard(device);
  cudaEvent_t e = nullptr;
  KVT_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "cudaEventCreate");
  CudaEvent out;
  out.e_.reset(e);
  return out;
}

void CudaEvent::Destroy::operator()(cudaEvent_t e) const noexcept { (void)cudaEventDestroy(e); }

}  // namespace kvtier
