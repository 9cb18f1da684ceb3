#include "reference/read_bound.h"

#include <cstring>

namespace kvtier::kernels {
namespace {

uint64_t Fold(const std::byte* p, size_t bytes) {
  uint64_t acc = 0;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    uint64_t w = 0;
    std::memcpy(&w, p + i, 8);
    acc ^= w;
  }
  return acc;
}

}  // namespace

uint64_t ReadBoundReference(std::span<const std::span<const std::byte>> ranges, const std::byte* arena,
                            std::span<const uint32_t> slots, uint32_t slot_bytes) {
  uint64_t acc = 0;
  for (std::span<const std::byte> r : ranges) acc ^= Fold(r.data(), r.size());
  for (uint32_t s : slots) acc ^= Fold(arena + size_t{s} * slot_bytes, slot_bytes);
  return acc;
}

}  // namespace kvtier::kernels
