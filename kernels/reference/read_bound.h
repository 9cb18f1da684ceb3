// CPU reference of the read-bound kernel (kernels/read_bound.cuh): the XOR of every 64-bit
// word (little-endian) of the phase-1 ranges and of the listed slots, the checksum the kernel
// folds its loads into.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace kvtier::kernels {

// `ranges`: the phase-1 bytes (each a multiple of 8 bytes long); slot i is
// arena[slots[i] · slot_bytes, + slot_bytes) (slot_bytes a multiple of 8).
uint64_t ReadBoundReference(std::span<const std::span<const std::byte>> ranges, const std::byte* arena,
                            std::span<const uint32_t> slots, uint32_t slot_bytes);

}  // namespace kvtier::kernels
