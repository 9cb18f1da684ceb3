// The demo's payloads written and checked on the GPU, where the engine's kernels would.
#include <cuda_runtime.h>

#include <mutex>
#include <string>
#include <vector>

#include "payload.h"
#include "payload_writer.h"

namespace kvtier::cli {
namespace {

__device__ __forceinline__ uint64_t DeviceSplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// One CTA per block: word i of block b is SplitMix64(seed_b + i), as payload.h on the CPU.
__global__ void FillKernel(const uint64_t* seeds, uint64_t* const* blocks, uint64_t words) {
  const uint64_t seed = seeds[blockIdx.x];
  uint64_t* dst = blocks[blockIdx.x];
  for (uint64_t i = threadIdx.x; i < words; i += blockDim.x) dst[i] = DeviceSplitMix64(seed + i);
}

__global__ void CheckKernel(const uint64_t* seeds, const uint64_t* const* blocks, uint64_t words,
                            unsigned long long* wrong_blocks) {
  __shared__ int bad;
  if (threadIdx.x == 0) bad = 0;
  __syncthreads();
  const uint64_t seed = seeds[blockIdx.x];
  const uint64_t* src = blocks[blockIdx.x];
  for (uint64_t i = threadIdx.x; i < words; i += blockDim.x) {
    if (src[i] != DeviceSplitMix64(seed + i)) bad = 1;
  }
  __syncthreads();
  if (threadIdx.x == 0 && bad) atomicAdd(wrong_blocks, 1ull);
}

Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status();
  return Status::IoError(std::string(what) + ": " + cudaGetErrorString(e));
}

class CudaPayloadWriter final : public PayloadWriter {
 public:
  explicit CudaPayloadWriter(int device) : device_(device) {}

  Status Fill(std::span<const BlockKey> keys, std::span<std::byte* const> blocks, uint64_t bytes) override {
    return Run(keys, blocks, bytes, nullptr);
  }
  Result<uint64_t> CountWrong(std::span<const BlockKey> keys, std::span<std::byte* const> blocks,
                              uint64_t bytes) override {
    uint64_t wrong = 0;
    KVT_RETURN_IF_ERROR(Run(keys, blocks, bytes, &wrong));
    return wrong;
  }

 private:
  Status Run(std::span<const BlockKey> keys, std::span<std::byte* const> blocks, uint64_t bytes, uint64_t* wrong) {
    if (keys.empty()) return Status();
    std::lock_guard lock(mu_);  // one launch at a time through the shared scratch buffers
    KVT_RETURN_IF_ERROR(Check(cudaSetDevice(device_), "cudaSetDevice"));
    std::vector<uint64_t> seeds(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) seeds[i] = PayloadSeed(keys[i]);
    const size_t n = keys.size();
    if (n > capacity_) {
      cudaFree(seeds_);
      cudaFree(ptrs_);
      KVT_RETURN_IF_ERROR(Check(cudaMalloc(&seeds_, n * 8), "cudaMalloc"));
      KVT_RETURN_IF_ERROR(Check(cudaMalloc(&ptrs_, n * 8), "cudaMalloc"));
      if (counter_ == nullptr) KVT_RETURN_IF_ERROR(Check(cudaMalloc(&counter_, 8), "cudaMalloc"));
      capacity_ = n;
    }
    if (counter_ == nullptr) KVT_RETURN_IF_ERROR(Check(cudaMalloc(&counter_, 8), "cudaMalloc"));
    KVT_RETURN_IF_ERROR(Check(cudaMemcpy(seeds_, seeds.data(), n * 8, cudaMemcpyHostToDevice), "seeds"));
    KVT_RETURN_IF_ERROR(Check(cudaMemcpy(ptrs_, blocks.data(), n * 8, cudaMemcpyHostToDevice), "pointers"));
    const uint64_t words = bytes / 8;
    if (wrong == nullptr) {
      FillKernel<<<static_cast<unsigned>(n), 256>>>(seeds_, reinterpret_cast<uint64_t* const*>(ptrs_), words);
    } else {
      KVT_RETURN_IF_ERROR(Check(cudaMemset(counter_, 0, 8), "cudaMemset"));
      CheckKernel<<<static_cast<unsigned>(n), 256>>>(seeds_, reinterpret_cast<const uint64_t* const*>(ptrs_), words,
                                                     counter_);
    }
    KVT_RETURN_IF_ERROR(Check(cudaGetLastError(), "payload kernel launch"));
    KVT_RETURN_IF_ERROR(Check(cudaDeviceSynchronize(), "payload kernel"));
    if (wrong != nullptr) {
      unsigned long long w = 0;
      KVT_RETURN_IF_ERROR(Check(cudaMemcpy(&w, counter_, 8, cudaMemcpyDeviceToHost), "counter"));
      *wrong = w;
    }
    return Status();
  }

  int device_;
  std::mutex mu_;
  uint64_t* seeds_ = nullptr;
  void* ptrs_ = nullptr;
  unsigned long long* counter_ = nullptr;
  size_t capacity_ = 0;
};

}  // namespace

Result<std::unique_ptr<PayloadWriter>> MakeCudaPayloadWriter(int device) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n <= device) {
    (void)cudaGetLastError();
    return Status::Unavailable("no CUDA device");
  }
  return std::unique_ptr<PayloadWriter>(new CudaPayloadWriter(device));
}

}  // namespace kvtier::cli
