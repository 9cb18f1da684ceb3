// The read-bound kernel (read_bound.cuh): a checksum over a step's bytes, nothing else.
#include <cooperative_groups.h>
#include <cuda/atomic>

#include <algorithm>
#include <mutex>

#include "read_bound.cuh"

namespace kvtier::kernels {
namespace {

constexpr uint32_t kThreads = 512;
constexpr uint32_t kWarps = kThreads / 32;
constexpr uint32_t kUnroll = 8;  // 16-byte loads in flight per thread
constexpr uint32_t kMaxCtasPerSm = 4;

__device__ __forceinline__ uint64_t Fold(uint4 v) {
  return ((uint64_t{v.y} << 32) | v.x) ^ ((uint64_t{v.w} << 32) | v.z);
}

// Words [0, words) of `p`, this thread's share of a stride, kUnroll loads in flight. kL2: load
// through L2 only (words other CTAs of this launch wrote).
template <bool kL2 = false>
__device__ uint64_t ReadRange(const uint4* p, uint64_t words, uint64_t first, uint64_t stride) {
  auto load = [](const uint4* q) { return kL2 ? __ldcg(q) : *q; };
  uint64_t acc = 0, i = first;
  for (; i + (kUnroll - 1) * stride < words; i += kUnroll * stride) {
    uint4 v[kUnroll];
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u) v[u] = load(p + i + u * stride);
#pragma unroll
    for (uint32_t u = 0; u < kUnroll; ++u) acc ^= Fold(v[u]);
  }
  for (; i < words; i += stride) acc ^= Fold(load(p + i));
  return acc;
}

// Thread 0 of each CTA arrives; the last one resets the count and opens the next generation.
// The generation is read before arriving, so it is the one this launch's barrier closes.
__device__ void GridBarrier(uint32_t* state) {
  __syncthreads();
  if (threadIdx.x == 0) {
    cuda::atomic_ref<uint32_t, cuda::thread_scope_device> count(state[0]), generation(state[1]);
    const uint32_t g = generation.load(cuda::memory_order_relaxed);
    if (count.fetch_add(1, cuda::memory_order_acq_rel) == gridDim.x - 1) {
      count.store(0, cuda::memory_order_relaxed);
      generation.fetch_add(1, cuda::memory_order_release);
    } else {
      while (generation.load(cuda::memory_order_acquire) == g) {
      }
    }
  }
  __syncthreads();
}

// A partial of `words` 16-byte words: the checksum `x`, then zeros (the CTA's threads).
__device__ void WritePartial(uint4* dst, uint32_t words, uint64_t x) {
  for (uint32_t w = threadIdx.x; w < words; w += kThreads) {
    dst[w] = w == 0 ? make_uint4(uint32_t(x), uint32_t(x >> 32), 0, 0) : make_uint4(0, 0, 0, 0);
  }
}

// The XOR of `acc` over the CTA (every thread gets it). Ends with a barrier, so it may be
// called again.
__device__ uint64_t CtaXor(uint64_t acc) {
  for (int off = 16; off > 0; off /= 2) acc ^= __shfl_xor_sync(0xffffffffu, acc, off);
  __shared__ uint64_t warp_acc[kWarps];
  __syncthreads();  // a previous call's readers are done
  if (threadIdx.x % 32 == 0) warp_acc[threadIdx.x / 32] = acc;
  __syncthreads();
  uint64_t cta = 0;
  for (uint32_t w = 0; w < kWarps; ++w) cta ^= warp_acc[w];
  return cta;
}

__global__ void __launch_bounds__(kThreads) ReadBoundKernel(const ReadBoundArgs a) {
  const uint64_t tid = uint64_t{blockIdx.x} * kThreads + threadIdx.x, stride = uint64_t{gridDim.x} * kThreads;
  uint64_t acc = 0;
  for (int r = 0; r < 2; ++r) {
    if (a.first_bytes[r] == 0) continue;
    acc ^= ReadRange(static_cast<const uint4*>(a.first[r]), a.first_bytes[r] / 16, tid, stride);
  }
  if (a.programmatic_dependent_launch) cudaGridDependencySynchronize();
  if (a.barrier != nullptr) {
    if (a.barrier_probe != nullptr && threadIdx.x == 0) atomicAdd(&a.barrier_probe[0], 1u);
    GridBarrier(a.barrier);
    if (a.barrier_probe != nullptr && threadIdx.x == 0 && atomicAdd(&a.barrier_probe[0], 0u) % gridDim.x != 0) {
      atomicExch(&a.barrier_probe[1], 1u);
    }
  }
  cudaTriggerProgrammaticLaunchCompletion();  // a PDL successor may start (none: no effect)
  // One warp per slot: each lane's words lane, lane + 32, ... in runs of kUnroll loads. With
  // rows, this CTA reads only its row's slots, with the row's other CTAs.
  uint32_t row = 0, unit = blockIdx.x, units = gridDim.x, first_slot = 0, end_slot = a.count;
  if (a.rows > 0) {  // the launch runs rows · ctas-per-row CTAs
    units = gridDim.x / a.rows;
    row = blockIdx.x / units;
    unit = blockIdx.x % units;
    first_slot = row * (a.count / a.rows);
    end_slot = first_slot + a.count / a.rows;
  }
  const uint32_t lane = threadIdx.x % 32, warps = units * kWarps, slot_words = a.slot_bytes / 16;
  const auto* arena = static_cast<const uint4*>(a.arena);
  for (uint32_t s = first_slot + unit * kWarps + threadIdx.x / 32; s < end_slot; s += warps) {
    const uint4* slot = arena + uint64_t{a.slots[s]} * slot_words;
    for (uint32_t base = lane; base < slot_words; base += 32 * kUnroll) {
      uint4 v[kUnroll];
#pragma unroll
      for (uint32_t u = 0; u < kUnroll; ++u) {
        const uint32_t w = base + u * 32;
        v[u] = w < slot_words ? slot[w] : make_uint4(0, 0, 0, 0);
      }
#pragma unroll
      for (uint32_t u = 0; u < kUnroll; ++u) acc ^= Fold(v[u]);
    }
  }
  uint64_t cta = CtaXor(acc);
  if (a.rows == 0) {
    if (threadIdx.x == 0) atomicXor(a.sink, static_cast<unsigned long long>(cta));
    return;
  }
  const uint32_t partial_words = a.partial_bytes / 16;
  if (a.cluster > 1) {
    // The cluster's CTAs put their partials in their shared memory; its first CTA reads them
    // all (distributed shared memory) and stands for the cluster from here on.
    namespace cg = cooperative_groups;
    extern __shared__ uint4 shared_partial[];
    cg::cluster_group cluster = cg::this_cluster();
    WritePartial(shared_partial, partial_words, cta);
    cluster.sync();
    const bool leader = cluster.block_rank() == 0;
    if (leader) {
      uint64_t x = 0;
      for (uint32_t w = threadIdx.x; w < a.cluster * partial_words; w += kThreads) {
        x ^= Fold(*cluster.map_shared_rank(shared_partial + w % partial_words, w / partial_words));
      }
      cta = CtaXor(x);
    }
    cluster.sync();  // the peers' shared memory stays until the leader has read it
    if (!leader) return;
    unit /= a.cluster;
    units /= a.cluster;
    if (units == 1) {  // the row is one cluster: merged
      if (threadIdx.x == 0) atomicXor(a.sink, static_cast<unsigned long long>(cta));
      return;
    }
  }
  // Split-K: write this CTA's partial, count it; the row's last CTA merges the row's partials.
  uint4* const row_partials = static_cast<uint4*>(a.partials) + uint64_t{row} * units * partial_words;
  uint4* const mine = row_partials + uint64_t{unit} * partial_words;
  WritePartial(mine, partial_words, cta);
  __threadfence();
  __syncthreads();
  __shared__ bool last;
  if (threadIdx.x == 0) last = atomicAdd(&a.row_counters[row], 1u) == units - 1;
  __syncthreads();
  if (!last) return;
  __threadfence();
  const uint64_t merged = CtaXor(ReadRange<true>(row_partials, uint64_t{units} * partial_words, threadIdx.x, kThreads));
  if (threadIdx.x == 0) {
    a.row_counters[row] = 0;
    atomicXor(a.sink, static_cast<unsigned long long>(merged));
  }
}

bool Aligned(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Clusters of 16 CTAs are a non-portable size: the kernel must opt in (once per process).
cudaError_t AllowLargeClusters() {
  static std::once_flag once;
  static cudaError_t result = cudaSuccess;
  std::call_once(once, [] {
    result = cudaFuncSetAttribute(ReadBoundKernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
  });
  return result;
}

}  // namespace

cudaError_t ReadBoundCtas(uint32_t* ctas) {
  static std::mutex mu;
  static int cached_device = -1;
  static uint32_t cached = 0;
  int device = 0;
  if (cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) return e;
  std::lock_guard lock(mu);
  if (device != cached_device) {  // the occupancy query is the current device's
    int sms = 0, per_sm = 0;
    cudaError_t e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (e != cudaSuccess) return e;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, ReadBoundKernel, kThreads, 0);
    if (e != cudaSuccess) return e;
    cached = static_cast<uint32_t>(std::max(sms, 1)) * std::clamp<uint32_t>(per_sm, 1, kMaxCtasPerSm);
    cached_device = device;
  }
  *ctas = cached;
  return cudaSuccess;
}

cudaError_t LaunchReadBound(const ReadBoundArgs& a, cudaStream_t stream) {
  if (a.sink == nullptr) return cudaErrorInvalidValue;
  for (int r = 0; r < 2; ++r) {
    if (a.first_bytes[r] > 0 && (a.first[r] == nullptr || !Aligned(a.first[r]) || a.first_bytes[r] % 16 != 0)) {
      return cudaErrorInvalidValue;
    }
  }
  if (a.count > 0 && (a.arena == nullptr || a.slots == nullptr || !Aligned(a.arena) || a.slot_bytes == 0 ||
                      a.slot_bytes % 16 != 0)) {
    return cudaErrorInvalidValue;
  }
  uint32_t ctas = 0;
  if (cudaError_t e = ReadBoundCtas(&ctas); e != cudaSuccess) return e;
  const uint32_t cluster = a.cluster;
  if (cluster != 0 && (a.rows == 0 || a.barrier != nullptr || cluster > 16 || (cluster & (cluster - 1)) != 0 ||
                       cluster == 1 || a.partial_bytes > kReadBoundMaxClusterPartial)) {
    return cudaErrorInvalidValue;
  }
  if (a.ctas_per_row != 0 && a.rows == 0) return cudaErrorInvalidValue;
  if (a.rows > 0) {
    if (a.count % a.rows != 0 || a.partials == nullptr || !Aligned(a.partials) || a.partial_bytes == 0 ||
        a.partial_bytes % 16 != 0 || a.row_counters == nullptr) {
      return cudaErrorInvalidValue;
    }
    const uint32_t step = std::max(cluster, 1u);
    const uint32_t per_row = a.ctas_per_row != 0 ? a.ctas_per_row : std::max(ctas / a.rows / step * step, step);
    const uint64_t grid = uint64_t{a.rows} * per_row;
    if (per_row % step != 0 || grid > 0x7fffffffu || (a.barrier != nullptr && grid > ctas)) {
      return cudaErrorInvalidValue;
    }
    ctas = static_cast<uint32_t>(grid);
  }
  if (cluster > 8) {
    if (cudaError_t e = AllowLargeClusters(); e != cudaSuccess) return e;
  }
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (a.programmatic_dependent_launch) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (cluster != 0) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n++].val.clusterDim = {cluster, 1, 1};
  }
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = dim3(ctas);
  cfg.blockDim = dim3(kThreads);
  cfg.dynamicSmemBytes = cluster != 0 ? a.partial_bytes : 0;
  cfg.stream = stream;
  cfg.attrs = attr;
  cfg.numAttrs = n;
  return cudaLaunchKernelEx(&cfg, ReadBoundKernel, a);
}

}  // namespace kvtier::kernels
