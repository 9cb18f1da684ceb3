// The block copy kernels behind FlashH2D (gather: pinned DRAM slots -> HBM slots, reading
// host memory through UVA) and FlashD2H (scatter: HBM slots -> pinned DRAM slots through
// UVA). One launch copies a whole batch of descriptors with 16-byte accesses and several
// independent loads in flight per thread.
//
// Two shapes:
//   uniform  every descriptor has the same size (a batch of whole blocks or slices): the
//            batch is one flat array of 16-byte words; thread t copies words t, t + stride,
//            ... so loads from many blocks are in flight at once (no per-block bubble);
//   ragged   any sizes: one warp per descriptor in a grid-stride loop.
// and two ways to move the bytes:
//   loads    16-byte loads and stores issued by every thread (the shapes above);
//   bulk     (CopyLaunch::bulk_chunk > 0) one warp per CTA moves chunks through a ring of
//            shared-memory stages with the Tensor Memory Accelerator's bulk copies
//            (cp.async.bulk: global -> shared on an mbarrier, shared -> global in bulk
//            groups), several chunks in flight per CTA; descriptors are dealt to CTAs
//            round-robin and cut into chunks of at most bulk_chunk bytes. Few threads keep
//            many bytes in flight, so it needs a fraction of the SMs.
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

struct CopyLaunch {
  uint32_t ctas = 0;        // blocks of 256 threads; 0 = CopyBlocksCtas(count, SMs, ctas_per_sm)
  uint32_t ctas_per_sm = 0;  // with ctas = 0: at most this many blocks per SM (1..8); 0 = 4
  uint32_t unroll = 4;      // 16-byte loads in flight per thread: 4 or 8
  uint64_t uniform_bytes = 0;  // > 0: every descriptor has exactly this size (uniform kernel)
  bool streaming = false;      // evict-first loads and stores (__ldcs / __stcs)
  // > 0: the bulk kernel, chunks of at most this many bytes (a multiple of 16, <= 64 KiB);
  // `ctas` then counts blocks of one warp, 0 = min(descriptors, kBulkDefaultCtas);
  // `ctas_per_sm`, `unroll` and `streaming` do not apply.
  uint32_t bulk_chunk = 0;
  uint32_t bulk_stages = 4;  // shared-memory stages per CTA (2..8): stages - 1 loads in flight
};
inline constexpr uint32_t kBulkMaxChunk = 64 << 10;
inline constexpr uint32_t kBulkMaxStages = 8;
// 16 one-warp CTAs of 4 x 16 KiB stages keep ~768 KiB in flight: an H100 PCIe Gen5 link at its
// SM-issued ceiling either way (docs/benchmarks.md, "Bulk copies").
inline constexpr uint32_t kBulkDefaultCtas = 16;

// Launches the copy of `count` descriptors read from `descriptors` (device memory) on
// `stream`. Returns the launch error, if any (cudaErrorInvalidValue for a bad unroll, bulk
// chunk or stage count, or a bulk ring larger than the device's shared memory per block).
cudaError_t LaunchCopyBlocks(const DeviceCopyDescriptor* descriptors, uint32_t count, const CopyLaunch& launch,
                             cudaStream_t stream);

// The movers' copy-engine path (tiers/gpu/gpu_mover.h): a piece of `count` equal parts of
// `part_bytes`, back to back in a staging buffer, part i's other end at slots[i] (an HBM slot).
// The slot list travels in the launch's parameters (a __grid_constant__ struct of < 32 KiB),
// so a piece needs no descriptor upload, and so no small host-to-device copy that would
// queue behind the copy engines' large ones.
inline constexpr uint32_t kStagedMaxParts = 3968;
struct StagedParts {
  uint64_t staging = 0;     // 16-byte aligned
  uint64_t part_bytes = 0;  // a multiple of 16
  uint32_t count = 0;       // <= kStagedMaxParts
  uint32_t reserved = 0;
  uint64_t slots[kStagedMaxParts];  // 16-byte aligned
};
// to_staging: slots[i] -> staging + i * part_bytes (pack); else staging -> slots[i] (unpack).
// cudaErrorInvalidValue for a bad count, size or unroll. CPU reference: StagedCopyReference.
cudaError_t LaunchStagedCopy(const StagedParts& parts, bool to_staging, const CopyLaunch& launch, cudaStream_t stream);

// Blocks to launch for `count` descriptors on a device with `sm_count` multiprocessors:
// enough warps for the work, at most `per_sm` blocks per SM (default 4 = 1024 threads) — so a
// gather and a scatter launched on two streams share the device instead of queueing behind
// each other.
inline constexpr uint32_t kCopyBlocksDefaultCtasPerSm = 4;
uint32_t CopyBlocksCtas(uint32_t count, int sm_count, uint32_t per_sm = kCopyBlocksDefaultCtasPerSm);

}  // namespace kvtier::kernels
