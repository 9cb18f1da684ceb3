// CPU reference of the block gather/scatter kernels: copy a list of (source, destination,
// bytes) descriptors. The CUDA gather (DRAM -> HBM) and scatter (HBM -> DRAM) kernels take
// the same descriptor list and are tested against this function.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kvtier::kernels {

struct CopyDescriptor {
  const std::byte* src = nullptr;
  std::byte* dst = nullptr;
  uint64_t bytes = 0;
};

// Copies every descriptor, in order, on the calling thread. Descriptors must not overlap.
void CopyBlocksReference(std::span<const CopyDescriptor> descriptors);

// The staged copy of the movers' copy-engine path (LaunchStagedCopy): part i of `part_bytes`
// between staging + i * part_bytes and slots[i]; to_staging packs, else unpacks.
void StagedCopyReference(std::byte* staging, uint64_t part_bytes, std::span<std::byte* const> slots, bool to_staging);

}  // namespace kvtier::kernels
