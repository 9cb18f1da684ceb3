#include "slot_format.h"

#include <fmt/format.h>

#include <cstring>

#include "xxh3_dispatch.h"

namespace kvtier::nvme {

namespace {
template <class T>
void Put(std::span<std::byte> s, size_t at, T v) {
  std::memcpy(s.data() + at, &v, sizeof(T));  // little-endian hosts only (x86-64, arm64)
}
template <class T>
T Get(std::span<const std::byte> s, size_t at) {
  T v;
  std::memcpy(&v, s.data() + at, sizeof(T));
  return v;
}

constexpr size_t kChecksumAt = kChecksummedHeaderBytes;        // u64 slot checksum
constexpr size_t kRecordChecksumAt = kChecksumAt + 8;          // u64 XXH3 of record bytes [0, 88)
constexpr size_t kSlabChecksummed = 48;                        // file header bytes under its checksum
constexpr size_t kV1SlabChecksummed = 32;                      // version 1 kept its checksum at 32

// XXH3-64 of the whole record but its own 8 bytes: a flip anywhere in it, the zero tail
// included, is caught.
uint64_t RecordChecksum(std::span<const std::byte> record) {
  return Xxh3_64Concat(record.data(), kRecordChecksumAt, record.data() + kRecordUsedBytes,
                       record.size() - kRecordUsedBytes);
}
}  // namespace

void EncodeChecksumFields(const SlotHeader& h, std::span<std::byte, kChecksummedHeaderBytes> s) {
  std::memset(s.data(), 0, kChecksummedHeaderBytes);
  Put<uint64_t>(s, 0, kSlotMagic);
  Put<uint32_t>(s, 8, kFormatVersion);
  Put<uint32_t>(s, 12, 0);  // flags, none defined
  std::memcpy(s.data() + 16, h.key.chain.bytes.data(), 32);
  Put<uint32_t>(s, 48, h.key.layer.value());
  Put<uint64_t>(s, 56, h.generation);
  Put<uint64_t>(s, 64, h.payload_bytes);
  Put<uint64_t>(s, 72, h.slot_offset);
}

// XXH3-64 over the 80 encoded fields, then the payload (the run-time chosen vector path:
// the same value as libxxhash's XXH3_64bits of the concatenation).
uint64_t SlotChecksum(const SlotHeader& h, std::span<const std::byte> payload) {
  std::byte fields[kChecksummedHeaderBytes];
  EncodeChecksumFields(h, fields);
  return Xxh3_64Concat(fields, kChecksummedHeaderBytes, payload.data(), payload.size());
}

void EncodeSlotRecord(const SlotHeader& h, std::span<std::byte> record) {
  KVT_CHECK(record.size() >= kRecordUsedBytes);
  std::memset(record.data(), 0, record.size());
  EncodeChecksumFields(h, record.first<kChecksummedHeaderBytes>());
  Put<uint64_t>(record, kChecksumAt, h.checksum);
  Put<uint64_t>(record, kRecordChecksumAt, RecordChecksum(record));
}

Result<SlotHeader> DecodeSlotRecord(std::span<const std::byte> s) {
  if (s.size() < kRecordUsedBytes) return Status::DataLoss("header record shorter than its fields");
  if (Get<uint64_t>(s, 0) != kSlotMagic) return Status::DataLoss("header record: bad magic (never written, or damaged)");
  if (const auto v = Get<uint32_t>(s, 8); v != kFormatVersion) {
    return Status::DataLoss(fmt::format("header record: format version {} (this build reads {})", v, kFormatVersion));
  }
  if (Get<uint64_t>(s, kRecordChecksumAt) != RecordChecksum(s)) {
    return Status::DataLoss("header record: checksum mismatch (torn or damaged record)");
  }
  SlotHeader h;
  std::memcpy(h.key.chain.bytes.data(), s.data() + 16, 32);
  h.key.layer = LayerId{Get<uint32_t>(s, 48)};
  h.generation = Get<uint64_t>(s, 56);
  h.payload_bytes = Get<uint64_t>(s, 64);
  h.slot_offset = Get<uint64_t>(s, 72);
  h.checksum = Get<uint64_t>(s, kChecksumAt);
  return h;
}

Status VerifyPayload(std::span<const std::byte> payload, const SlotExpectation& want) {
  if (want.payload_bytes > payload.size()) {
    return Status::DataLoss(fmt::format("payload of {} B expected, {} B read", want.payload_bytes, payload.size()));
  }
  SlotHeader h;
  if (want.key != nullptr) h.key = *want.key;
  h.generation = want.generation;
  h.payload_bytes = want.payload_bytes;
  h.slot_offset = want.slot_offset;
  if (SlotChecksum(h, payload.first(want.payload_bytes)) != want.checksum) {
    // Without the header record the cause cannot be told apart; fsck reads the record too.
    return Status::DataLoss(fmt::format(
        "checksum mismatch at offset {} (torn, corrupted, stale, swapped or misplaced block)", want.slot_offset));
  }
  return Status();
}

Status CheckRecord(const SlotHeader& h, const SlotExpectation& want) {
  if (h.slot_offset != want.slot_offset) {
    return Status::DataLoss(fmt::format("misplaced record: names offset {}, slot is at {}", h.slot_offset, want.slot_offset));
  }
  if (h.generation != want.generation) {
    return Status::DataLoss(fmt::format("stale record: generation {}, index says {}", h.generation, want.generation));
  }
  if (h.payload_bytes != want.payload_bytes) {
    return Status::DataLoss(fmt::format("record says {} B, index says {}", h.payload_bytes, want.payload_bytes));
  }
  const BlockKey zero{};
  const BlockKey& key = want.key != nullptr ? *want.key : zero;
  if (!(h.key == key)) {
    return Status::DataLoss(fmt::format("record names block {}, index says {}", h.key.ToString(), key.ToString()));
  }
  if (h.checksum != want.checksum) {
    return Status::DataLoss(fmt::format("record checksum {:016x}, index says {:016x}", h.checksum, want.checksum));
  }
  return Status();
}

void EncodeSlabHeader(const SlabGeometry& g, std::span<std::byte> sector) {
  KVT_CHECK(sector.size() >= kSectorBytes);
  std::memset(sector.data(), 0, kSectorBytes);
  Put<uint64_t>(sector, 0, kSlabMagic);
  Put<uint32_t>(sector, 8, kFormatVersion);
  Put<uint32_t>(sector, 12, static_cast<uint32_t>(g.record_bytes));
  Put<uint64_t>(sector, 16, g.slot_bytes);
  Put<uint32_t>(sector, 24, g.slot_count);
  Put<uint64_t>(sector, 32, g.slots_offset());
  Put<uint64_t>(sector, 40, g.stride());
  Put<uint64_t>(sector, kSlabChecksummed, Xxh3_64(sector.data(), kSlabChecksummed));
}

Result<SlabGeometry> DecodeSlabHeader(std::span<const std::byte> s) {
  if (s.size() < kSectorBytes) return Status::DataLoss("slab file header shorter than a sector");
  if (Get<uint64_t>(s, 0) != kSlabMagic) return Status::DataLoss("not a kvtier slab (bad magic)");
  const auto version = Get<uint32_t>(s, 8);
  // Version 2 kept this header layout (its records in a region of their own); version 1 kept
  // its checksum at 32. Either way: refused, named, and nothing written.
  const auto other_version = [&] {
    return Status::FailedPrecondition(fmt::format(
        "slab format version {}; this build reads only version {}: remove the tier directory (its blocks "
        "become misses) or open it with an older kvtier",
        version, kFormatVersion));
  };
  if (Get<uint64_t>(s, kSlabChecksummed) != Xxh3_64(s.data(), kSlabChecksummed)) {
    if (version != kFormatVersion && Get<uint64_t>(s, kV1SlabChecksummed) == Xxh3_64(s.data(), kV1SlabChecksummed)) {
      return other_version();
    }
    return Status::DataLoss("slab header checksum mismatch");
  }
  if (version != kFormatVersion) return other_version();
  const SlabGeometry g{Get<uint64_t>(s, 16), Get<uint32_t>(s, 24)};
  if (g.slot_bytes == 0 || g.slot_bytes % kSectorBytes != 0 || g.slot_count == 0 ||
      Get<uint32_t>(s, 12) != kRecordBytes || Get<uint64_t>(s, 32) != g.slots_offset() ||
      Get<uint64_t>(s, 40) != g.stride()) {
    return Status::DataLoss(fmt::format("slab header: inconsistent geometry ({} slots of {} B, records of {} B)",
                                        g.slot_count, g.slot_bytes, Get<uint32_t>(s, 12)));
  }
  return g;
}

}  // namespace kvtier::nvme
