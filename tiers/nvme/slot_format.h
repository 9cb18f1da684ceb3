// The on-disk format of an NVMe slab (format version 1; docs/formats.md is the reference).
//
//   file header   4096 B at offset 0: magic "KVTSLAB1", version, slot_bytes, slot_count
//   slot i        at 4096 + i * (4096 + slot_bytes):
//                   slot header  4096 B (SlotHeader below, then zeros)
//                   payload      slot_bytes (the block, then padding to a 4 KiB multiple)
//
// The slot checksum is XXH3-64 over the first 80 header bytes (which hold the key, the
// generation and the payload's own file offset) followed by the payload's first
// payload_bytes bytes: a torn, bit-flipped, stale (old generation) or misplaced (other
// offset) block fails verification. All integers are little-endian.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/block_key.h"
#include "kvtier/status.h"

namespace kvtier::nvme {

inline constexpr uint64_t kSectorBytes = 4096;
inline constexpr uint64_t kSlabMagic = 0x31424c4153545648ull;  // "HVTSLAB1" read little-endian
inline constexpr uint64_t kSlotMagic = 0x31544f4c53545648ull;  // "HVTSLOT1"
inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kChecksummedHeaderBytes = 80;

struct SlabGeometry {
  uint64_t slot_bytes = 0;  // payload bytes per slot, a multiple of 4096
  uint32_t slot_count = 0;
  uint64_t stride() const { return kSectorBytes + slot_bytes; }
  uint64_t header_offset(uint32_t slot) const { return kSectorBytes + uint64_t{slot} * stride(); }
  uint64_t payload_offset(uint32_t slot) const { return header_offset(slot) + kSectorBytes; }
  uint64_t file_bytes() const { return kSectorBytes + uint64_t{slot_count} * stride(); }
};

struct SlotHeader {
  BlockKey key;               // all zero for a block written without a key
  uint64_t generation = 0;    // unique per write of any slot of this slab
  uint64_t payload_bytes = 0;
  uint64_t slot_offset = 0;   // file offset of the payload
  uint64_t checksum = 0;
};

// Encodes `h` (checksum included) into a 4096-byte sector.
void EncodeSlotHeader(const SlotHeader& h, std::span<std::byte> sector);
// Decodes a sector; kDataLoss on a bad magic or an unknown version.
Result<SlotHeader> DecodeSlotHeader(std::span<const std::byte> sector);
// The checksum of header `h` (its checksum field ignored) and `payload`.
uint64_t SlotChecksum(const SlotHeader& h, std::span<const std::byte> payload);

// What a reader expects of a slot; nullptr key = any key.
struct SlotExpectation {
  uint64_t generation = 0;
  uint64_t payload_bytes = 0;
  uint64_t slot_offset = 0;
  const BlockKey* key = nullptr;
};
// Verifies a slot read from disk (header sector + payload). kDataLoss says which check failed.
Status VerifySlot(std::span<const std::byte> sector, std::span<const std::byte> payload, const SlotExpectation& want);

void EncodeSlabHeader(const SlabGeometry& g, std::span<std::byte> sector);
Result<SlabGeometry> DecodeSlabHeader(std::span<const std::byte> sector);

}  // namespace kvtier::nvme
