#include "copy_blocks.h"

#include <cstring>

namespace kvtier::kernels {

void CopyBlocksReference(std::span<const CopyDescriptor> descriptors) {
  for (const CopyDescriptor& d : descriptors) std::memcpy(d.dst, d.src, d.bytes);
}

}  // namespace kvtier::kernels
