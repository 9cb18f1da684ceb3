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

}  // namespace kvtier::kernels
