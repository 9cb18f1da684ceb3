#include <algorithm>

#include "copy_blocks.cuh"

namespace kvtier::kernels {
namespace internal {
cudaError_t LaunchBulkCopyBlocks(const DeviceCopyDescriptor* descriptors, uint32_t count, const CopyLaunch& launch,
                                 cudaStream_t stream);  // copy_blocks_bulk.cu
}  // namespace internal
namespace {

constexpr int kThreads = 256;

// Streaming (evict-first) accesses keep a multi-GiB copy from churning L2 for nothing.
template <bool kStreaming>
__device__ __forceinline__ uint4 Load(const uint4* p) {
  if constexpr (kStreaming) return __ldcs(p);
  else return *p;
}
template <bool kStreaming>
__device__ __forceinline__ void Store(uint4* p, const uint4& v) {
  if constexpr (kStreaming) __stcs(p, v);
  else *p = v;
}

template <int kUnroll, bool kStreaming>
__global__ void __launch_bounds__(kThreads) RaggedCopyKernel(const DeviceCopyDescriptor* __restrict__ descriptors,
                                                            uint32_t count) {
  const uint32_t lane = threadIdx.x & 31u;
  const uint32_t warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const uint32_t warps = (gridDim.x * blockDim.x) >> 5;
  for (uint32_t d = warp; d < count; d += warps) {
    const DeviceCopyDescriptor desc = descriptors[d];
    const uint4* __restrict__ src = reinterpret_cast<const uint4*>(desc.src);
    uint4* __restrict__ dst = reinterpret_cast<uint4*>(desc.dst);
    const uint64_t words = desc.bytes >> 4;
    uint64_t i = lane;
    for (; i + 32u * (kUnroll - 1) < words; i += 32u * kUnroll) {
      uint4 v[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) v[u] = Load<kStreaming>(src + i + 32u * u);
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) Store<kStreaming>(dst + i + 32u * u, v[u]);
    }
    for (; i < words; i += 32u) Store<kStreaming>(dst + i, Load<kStreaming>(src + i));
  }
}

// Word w of the batch is word (w % words_per) of descriptor (w / words_per). With
// `shift` >= 0 the division is a shift (power-of-two sizes, the common case).
template <int kUnroll, bool kStreaming>
__global__ void __launch_bounds__(kThreads) UniformCopyKernel(const DeviceCopyDescriptor* __restrict__ descriptors,
                                                             uint64_t total_words, uint64_t words_per, int shift) {
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  uint64_t w = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  auto locate = [&](uint64_t word, const uint4*& s, uint4*& d) {
    const uint64_t desc = shift >= 0 ? (word >> shift) : (word / words_per);
    const uint64_t off = word - desc * words_per;
    s = reinterpret_cast<const uint4*>(__ldg(&descriptors[desc].src)) + off;
    d = reinterpret_cast<uint4*>(__ldg(&descriptors[desc].dst)) + off;
  };
  for (; w + stride * (kUnroll - 1) < total_words; w += stride * kUnroll) {
    uint4 v[kUnroll];
    uint4* dst[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const uint4* s;
      locate(w + stride * u, s, dst[u]);
      v[u] = Load<kStreaming>(s);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) Store<kStreaming>(dst[u], v[u]);
  }
  for (; w < total_words; w += stride) {
    const uint4* s;
    uint4* d;
    locate(w, s, d);
    Store<kStreaming>(d, Load<kStreaming>(s));
  }
}

// Word w of the piece is staging word w and word (w % words_per) of slot (w / words_per); the
// slot list is read from the parameter bank (warp-uniform for parts of >= 512 B).
template <int kUnroll, bool kToStaging>
__global__ void __launch_bounds__(kThreads) StagedCopyKernel(const __grid_constant__ StagedParts parts, int shift) {
  const uint64_t words_per = parts.part_bytes >> 4;
  const uint64_t total_words = words_per * parts.count;
  const uint64_t stride = uint64_t{gridDim.x} * blockDim.x;
  uint4* staging = reinterpret_cast<uint4*>(parts.staging);
  auto slot_word = [&](uint64_t word) {
    const uint64_t part = shift >= 0 ? (word >> shift) : (word / words_per);
    return reinterpret_cast<uint4*>(parts.slots[part]) + (word - part * words_per);
  };
  uint64_t w = uint64_t{blockIdx.x} * blockDim.x + threadIdx.x;
  for (; w + stride * (kUnroll - 1) < total_words; w += stride * kUnroll) {
    uint4 v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) v[u] = kToStaging ? *slot_word(w + stride * u) : staging[w + stride * u];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      if (kToStaging) staging[w + stride * u] = v[u];
      else *slot_word(w + stride * u) = v[u];
    }
  }
  for (; w < total_words; w += stride) {
    if (kToStaging) staging[w] = *slot_word(w);
    else *slot_word(w) = staging[w];
  }
}

// The grid of a copy launch: `launch.ctas`, or sized to `work` (warps' worth of items, as
// CopyBlocksCtas counts them) on the current device with the launch's cap per SM.
cudaError_t ResolveCtas(const CopyLaunch& launch, uint64_t work, uint32_t* ctas) {
  *ctas = launch.ctas;
  if (*ctas != 0) return cudaSuccess;
  int device = 0, sms = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e != cudaSuccess) return e;
  *ctas = CopyBlocksCtas(static_cast<uint32_t>(std::min<uint64_t>(work, UINT32_MAX)), sms,
                         launch.ctas_per_sm == 0 ? kCopyBlocksDefaultCtasPerSm : launch.ctas_per_sm);
  return cudaSuccess;
}

// A flat kernel over `words` 16-byte words: 8 warp-items per 256 words (one word per thread).
uint64_t FlatWork(uint64_t words) { return (words + 255) / 256 * 8; }

}  // namespace

cudaError_t LaunchStagedCopy(const StagedParts& parts, bool to_staging, const CopyLaunch& launch, cudaStream_t stream) {
  if (parts.count == 0) return cudaSuccess;
  if (parts.count > kStagedMaxParts || parts.part_bytes == 0 || parts.part_bytes % 16 != 0 ||
      parts.staging % 16 != 0 || (launch.unroll != 4 && launch.unroll != 8) || launch.ctas_per_sm > 8) {
    return cudaErrorInvalidValue;
  }
  uint32_t ctas = 0;
  if (cudaError_t e = ResolveCtas(launch, FlatWork(uint64_t{parts.count} * parts.part_bytes / 16), &ctas);
      e != cudaSuccess) {
    return e;
  }
  const uint64_t words_per = parts.part_bytes / 16;
  const int shift = (words_per & (words_per - 1)) == 0 ? __builtin_ctzll(words_per) : -1;
  auto go = [&](auto kernel) { kernel<<<ctas, kThreads, 0, stream>>>(parts, shift); };
  if (launch.unroll == 8) {
    to_staging ? go(StagedCopyKernel<8, true>) : go(StagedCopyKernel<8, false>);
  } else {
    to_staging ? go(StagedCopyKernel<4, true>) : go(StagedCopyKernel<4, false>);
  }
  return cudaGetLastError();
}

uint32_t CopyBlocksCtas(uint32_t count, int sm_count, uint32_t per_sm) {
  const uint32_t warps_per_cta = kThreads / 32;
  const uint32_t wanted = (count + warps_per_cta - 1) / warps_per_cta;
  const uint32_t cap = static_cast<uint32_t>(std::max(1, sm_count)) * std::max(1u, per_sm);
  return std::max(1u, std::min(wanted, cap));
}

cudaError_t LaunchCopyBlocks(const DeviceCopyDescriptor* descriptors, uint32_t count, const CopyLaunch& launch,
                             cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  if (launch.bulk_chunk != 0) return internal::LaunchBulkCopyBlocks(descriptors, count, launch, stream);
  if (launch.unroll != 4 && launch.unroll != 8) return cudaErrorInvalidValue;
  if (launch.uniform_bytes != 0 && launch.uniform_bytes % 16 != 0) return cudaErrorInvalidValue;
  if (launch.ctas_per_sm > 8) return cudaErrorInvalidValue;
  // The uniform kernel spreads one block over many warps: size it by words, not blocks.
  uint32_t ctas = 0;
  const uint64_t work = launch.uniform_bytes ? FlatWork(uint64_t{count} * launch.uniform_bytes / 16) : count;
  if (cudaError_t e = ResolveCtas(launch, work, &ctas); e != cudaSuccess) return e;
  if (launch.uniform_bytes != 0) {
    const uint64_t words_per = launch.uniform_bytes / 16;
    const int shift = (words_per & (words_per - 1)) == 0 ? __builtin_ctzll(words_per) : -1;
    const uint64_t total = words_per * count;
    auto go = [&](auto kernel) { kernel<<<ctas, kThreads, 0, stream>>>(descriptors, total, words_per, shift); };
    if (launch.unroll == 8) {
      launch.streaming ? go(UniformCopyKernel<8, true>) : go(UniformCopyKernel<8, false>);
    } else {
      launch.streaming ? go(UniformCopyKernel<4, true>) : go(UniformCopyKernel<4, false>);
    }
  } else {
    auto go = [&](auto kernel) { kernel<<<ctas, kThreads, 0, stream>>>(descriptors, count); };
    if (launch.unroll == 8) {
      launch.streaming ? go(RaggedCopyKernel<8, true>) : go(RaggedCopyKernel<8, false>);
    } else {
      launch.streaming ? go(RaggedCopyKernel<4, true>) : go(RaggedCopyKernel<4, false>);
    }
  }
  return cudaGetLastError();
}

}  // namespace kvtier::kernels
