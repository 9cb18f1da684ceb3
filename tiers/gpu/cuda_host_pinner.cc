#include "cuda_host_pinner.h"

#include <cuda_runtime.h>
#include <fmt/format.h>

namespace kvtier {

namespace {
Status FromCuda(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return Status();
  const StatusCode code = e == cudaErrorMemoryAllocation ? StatusCode::kExhausted
                          : e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver ? StatusCode::kUnavailable
                                                                                         : StatusCode::kIoError;
  return Status(code, fmt::format("{}: {} ({})", what, cudaGetErrorString(e), static_cast<int>(e)));
}
}  // namespace

int CudaDeviceCount() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

Result<std::shared_ptr<CudaHostPinner>> CudaHostPinner::Create() {
  if (CudaDeviceCount() == 0) return Status::Unavailable("no CUDA device is visible");
  return std::make_shared<CudaHostPinner>();
}

Status CudaHostPinner::Pin(void* ptr, size_t bytes) {
  return FromCuda(cudaHostRegister(ptr, bytes, cudaHostRegisterPortable | cudaHostRegisterMapped),
                  fmt::format("cudaHostRegister of {} B", bytes));
}

void CudaHostPinner::Unpin(void* ptr, size_t /*bytes*/) noexcept { (void)cudaHostUnregister(ptr); }

}  // namespace kvtier
