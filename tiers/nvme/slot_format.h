// The on-disk format of an NVMe slab (format version 3; docs/formats.md is the reference).
//
//   file header   4096 B at offset 0: magic "HVTSLAB1", version 3, record bytes (4096),
//                 slot_bytes, slot_count, the first slot's offset, the slot stride, an XXH3-64
//                 of the fields
//   slots         at 4096, back to back, each kRecordBytes + slot_bytes: the slot's header
//                 record (one 4 KiB sector, SlotHeader below), then its payload (the block,
//                 then padding up to a 4 KiB multiple). A write of a block is ONE request of
//                 record + payload; a read is one plain request of the payload alone, the
//                 same request fio makes.
//
// The slot checksum is XXH3-64 over the record's first 80 bytes (magic, version, key,
// generation, length and the payload's own file offset) followed by the payload's first
// payload_bytes bytes. The index keeps (generation, checksum, length) per key, so a reader
// rebuilds those 80 bytes from the index (EncodeChecksumFields) and checks the payload
// alone: a torn, bit-flipped, stale (other generation), swapped or misplaced (other offset,
// other key) payload fails. The header record is read only by fsck (and is what an index
// rebuild would use). All integers are little-endian.
//
// Format versions 1 (a header sector per payload, read with it) and 2 (header records in a
// region of their own, a second request per write) are refused at open with a
// kFailedPrecondition that names the version.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "kvtier/block_key.h"
#include "kvtier/status.h"

namespace kvtier::nvme {

inline constexpr uint64_t kSectorBytes = 4096;       // file header; record; payload size unit
inline constexpr uint64_t kSlabMagic = 0x31424c4153545648ull;  // "HVTSLAB1" read little-endian
inline constexpr uint64_t kSlotMagic = 0x33544f4c53545648ull;  // "HVTSLOT3"
inline constexpr uint32_t kFormatVersion = 3;
inline constexpr size_t kChecksummedHeaderBytes = 80;
inline constexpr size_t kRecordUsedBytes = 96;        // fields of a header record; the rest is zero
inline constexpr uint64_t kRecordBytes = kSectorBytes;  // a slot's header record: one sector

struct SlabGeometry {
  uint64_t slot_bytes = 0;     // payload bytes per slot, a multiple of 4096
  uint32_t slot_count = 0;
  static constexpr uint64_t record_bytes = kRecordBytes;

  // Slot i is [record_offset(i), record_offset(i) + stride()): record, then payload.
  uint64_t stride() const { return kRecordBytes + slot_bytes; }
  uint64_t slots_offset() const { return kSectorBytes; }
  uint64_t record_offset(uint32_t slot) const { return slots_offset() + uint64_t{slot} * stride(); }
  uint64_t payload_offset(uint32_t slot) const { return record_offset(slot) + kRecordBytes; }
  uint64_t file_bytes() const { return slots_offset() + uint64_t{slot_count} * stride(); }
  bool operator==(const SlabGeometry&) const = default;
};

struct SlotHeader {
  BlockKey key;               // all zero for a block written without a key
  uint64_t generation = 0;    // unique per write of any slot of this slab
  uint64_t payload_bytes = 0;
  uint64_t slot_offset = 0;   // file offset of the payload
  uint64_t checksum = 0;
};

// The 80 checksummed bytes of `h` (magic, version, flags 0, key, generation, length, offset).
void EncodeChecksumFields(const SlotHeader& h, std::span<std::byte, kChecksummedHeaderBytes> out);
// The checksum of header `h` (its checksum field ignored) and `payload`.
uint64_t SlotChecksum(const SlotHeader& h, std::span<const std::byte> payload);

// Encodes `h` (checksum included) as a header record; `record` (kRecordBytes; tests may pass
// any size of at least kRecordUsedBytes) is zeroed first.
void EncodeSlotRecord(const SlotHeader& h, std::span<std::byte> record);
// Decodes a header record; kDataLoss on a bad magic, version or record checksum.
Result<SlotHeader> DecodeSlotRecord(std::span<const std::byte> record);

// What a reader expects of a slot, from the index (or the tier's state).
struct SlotExpectation {
  uint64_t generation = 0;
  uint64_t payload_bytes = 0;
  uint64_t slot_offset = 0;
  uint64_t checksum = 0;
  const BlockKey* key = nullptr;  // nullptr = the all-zero key (a block written without one)
};
// Verifies a payload read from disk (at least want.payload_bytes bytes) against the
// expectation: kDataLoss when the checksum over the expected fields and the payload differs.
Status VerifyPayload(std::span<const std::byte> payload, const SlotExpectation& want);
// fsck: checks a decoded header record against the expectation (offset, generation, length,
// key, checksum); kDataLoss says which field differs.
Status CheckRecord(const SlotHeader& record, const SlotExpectation& want);

void EncodeSlabHeader(const SlabGeometry& g, std::span<std::byte> sector);
// kFailedPrecondition for a slab of another format version (versions 1 and 2 included, named
// in the message); kDataLoss for a damaged or foreign file header.
Result<SlabGeometry> DecodeSlabHeader(std::span<const std::byte> sector);

}  // namespace kvtier::nvme
