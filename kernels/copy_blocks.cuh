// The block copy kernel behind FlashH2D (gather: pinned DRAM slots -> HBM slots, reading
// host memory through UVA) and FlashD2H (scatter: HBM slots -> pinned DRAM slots through
// UVA). One launch copies a whole batch of descriptors; each warp takes descriptors in a
// grid-stride loop and moves 16-byte words with several loads in flight per thread.
// CPU reference: kernels/reference/copy_blocks.h (tests compare the two).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace kvtier::kernels {

// One contiguous copy. Both pointers 16-byte aligned and device-accessible (device memory or
// host memory registered with the device); bytes a multiple of 16.
struct alignas(16) DeviceCopyDescriptor {
  uint64_t src = 0;
  uint64_t dst = 0;
  uint64_t bytes = 0;
  uint64_t reserved = 0;
};

// Launches the copy of `count` descriptors read from `descriptors` (device memory) on
// `stream`, with `ctas` blocks of 256 threads (0 = enough to fill the device). Returns the
// launch error, if any.
cudaError_t LaunchCopyBlocks(const DeviceCopyDescriptor* descriptors, uint32_t count, uint32_t ctas,
                             cudaStream_t stream);

// Blocks to launch for `count` descriptors on a device with `sm_count` multiprocessors.
uint32_t CopyBlocksCtas(uint32_t count, int sm_count);

}  // namespace kvtier::kernels
