// The bulk copy kernel (CopyLaunch::bulk_chunk > 0; contract in copy_blocks.cuh): one warp per
// CTA, lane 0 drives the Tensor Memory Accelerator.
//
//   chunk c:  load   global -> stage c % stages   (cp.async.bulk ... mbarrier::complete_tx)
//             wait   the stage's mbarrier, phase (c / stages) & 1
//             store  stage -> global               (cp.async.bulk ... bulk_group)
//
// A stage is refilled once the bulk store out of it has read it (cp.async.bulk.wait_group.read:
// after committing store c, wait until at most one group — store c — is still reading, then
// reuse the stage of chunk c - 1). So stages - 1 loads stay in flight behind the store. The
// warp's 32 lanes each hold one of the CTA's next 32 descriptors (CTA b takes descriptors b,
// b + grid, ...) and hand them to lane 0 by shuffles: one descriptor round trip per 32.
#include <algorithm>

#include "bulk_copy.cuh"
#include "copy_blocks.cuh"

namespace kvtier::kernels::internal {
namespace {

constexpr uint32_t kBulkThreads = 32;

// This CTA's descriptors, 32 at a time in the warp's registers, cut into chunks.
struct ChunkSource {
  const DeviceCopyDescriptor* descriptors;
  uint32_t count, chunk, lane;
  uint64_t batch_first;  // descriptor index held by lane 0
  uint32_t current = 0;  // lane holding the descriptor being cut
  uint64_t offset = 0;   // bytes of it already handed out
  DeviceCopyDescriptor mine{};

  __device__ void LoadBatch() {
    const uint64_t d = batch_first + uint64_t{lane} * gridDim.x;
    mine = d < count ? descriptors[d] : DeviceCopyDescriptor{};
  }
  // The next chunk, or false when the CTA's descriptors are done. Warp-uniform.
  __device__ bool Next(uint64_t* src, uint64_t* dst, uint32_t* bytes) {
    for (;;) {
      if (batch_first + uint64_t{current} * gridDim.x >= count) return false;
      const uint64_t total = __shfl_sync(0xffffffffu, mine.bytes, current);
      if (offset < total) {
        *src = __shfl_sync(0xffffffffu, mine.src, current) + offset;
        *dst = __shfl_sync(0xffffffffu, mine.dst, current) + offset;
        *bytes = static_cast<uint32_t>(min(uint64_t{chunk}, total - offset));
        offset += *bytes;
        return true;
      }
      offset = 0;
      if (++current == 32) {
        current = 0;
        batch_first += uint64_t{32} * gridDim.x;
        LoadBatch();
      }
    }
  }
};

__global__ void __launch_bounds__(kBulkThreads) BulkCopyKernel(const DeviceCopyDescriptor* __restrict__ descriptors,
                                                              uint32_t count, uint32_t chunk, uint32_t stages) {
  extern __shared__ __align__(128) unsigned char ring[];
  __shared__ __align__(8) uint64_t full[kBulkMaxStages];
  __shared__ uint64_t stage_dst[kBulkMaxStages];
  __shared__ uint32_t stage_bytes[kBulkMaxStages];
  const uint32_t lane = threadIdx.x;
  if (lane == 0) {
    for (uint32_t s = 0; s < stages; ++s) bulk::BarrierInit(&full[s]);
    bulk::BarrierInitFence();
  }
  __syncwarp();
  ChunkSource source{descriptors, count, chunk, lane, blockIdx.x};
  source.LoadBatch();

  uint32_t issued = 0, stored = 0;
  auto issue = [&]() -> bool {
    uint64_t src, dst;
    uint32_t bytes;
    if (!source.Next(&src, &dst, &bytes)) return false;
    if (lane == 0) {
      const uint32_t s = issued % stages;
      stage_dst[s] = dst;
      stage_bytes[s] = bytes;
      bulk::BarrierExpectBytes(&full[s], bytes);
      bulk::Load(ring + uint64_t{s} * chunk, reinterpret_cast<const void*>(src), bytes, &full[s]);
    }
    ++issued;
    return true;
  };
  bool more = true;
  for (uint32_t s = 0; s < stages && more; ++s) more = issue();
  while (stored < issued) {
    const uint32_t s = stored % stages;
    if (lane == 0) {
      bulk::BarrierWait(&full[s], (stored / stages) & 1u);
      bulk::Store(reinterpret_cast<void*>(stage_dst[s]), ring + uint64_t{s} * chunk, stage_bytes[s]);
      bulk::WaitRead<1>();  // the previous chunk's stage is free again
    }
    __syncwarp();
    ++stored;
    if (more && stored >= 2) more = issue();
  }
  if (lane == 0) bulk::WaitAll();  // every store written before the kernel ends
}

}  // namespace

cudaError_t LaunchBulkCopyBlocks(const DeviceCopyDescriptor* descriptors, uint32_t count, const CopyLaunch& launch,
                                 cudaStream_t stream) {
  if (launch.bulk_chunk == 0 || launch.bulk_chunk % 16 != 0 || launch.bulk_chunk > kBulkMaxChunk ||
      launch.bulk_stages < 2 || launch.bulk_stages > kBulkMaxStages || launch.ctas_per_sm > 8) {
    return cudaErrorInvalidValue;
  }
  int device = 0, smem_optin = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (e != cudaSuccess) return e;
  const uint64_t ring = uint64_t{launch.bulk_chunk} * launch.bulk_stages;
  if (ring > static_cast<uint64_t>(smem_optin)) return cudaErrorInvalidValue;
  // Static shared memory (barriers, stage table) plus the ring: opt in above the default 48 KiB.
  static_assert(kBulkMaxStages * (8 + 8 + 4) < 1024);
  if (ring + 1024 > 48 * 1024) {
    e = cudaFuncSetAttribute(BulkCopyKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(ring));
    if (e != cudaSuccess) return e;
  }
  const uint32_t ctas = launch.ctas != 0 ? launch.ctas : std::min(count, kBulkDefaultCtas);
  BulkCopyKernel<<<ctas, kBulkThreads, ring, stream>>>(descriptors, count, launch.bulk_chunk, launch.bulk_stages);
  return cudaGetLastError();
}

}  // namespace kvtier::kernels::internal
