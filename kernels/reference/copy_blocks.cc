#include "copy_blocks.h"

#include <cstring>

namespace kvtier::kernels {

void CopyBlocksReference(std::span<const CopyDescriptor> descriptors) {
  for (const CopyDescriptor& d : descriptors) std::memcpy(d.dst, d.src, d.bytes);
}

void StagedCopyReference(std::byte* staging, uint64_t part_bytes, std::span<std::byte* const> slots, bool to_staging) {
  for (size_t i = 0; i < slots.size(); ++i) {
    std::byte* s = staging + i * part_bytes;
    if (to_staging) std::memcpy(s, slots[i], part_bytes);
    else std::memcpy(slots[i], s, part_bytes);
  }
}

}  // namespace kvtier::kernels
