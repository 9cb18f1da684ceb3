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

void EncodeFields(const SlotHeader& h, std::span<std::byte> s) {
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
}  // namespace

// XXH3-64 over the header's first kChecksummedHeaderBytes bytes as they are, then the payload
// (the run-time chosen vector path: the same value as libxxhash's XXH3_64bits).
static uint64_t ChecksumOf(std::span<const std::byte> header_bytes, std::span<const std::byte> payload) {
  return Xxh3_64Concat(header_bytes.data(), kChecksummedHeaderBytes, payload.data(), payload.size());
}

uint64_t SlotChecksum(const SlotHeader& h, std::span<const std::byte> payload) {
  std::byte fields[kChecksummedHeaderBytes];
  EncodeFields(h, fields);
  return ChecksumOf(fields, payload);
}

void EncodeSlotHeader(const SlotHeader& h, std::span<std::byte> sector) {
  KVT_CHECK(sector.size() >= kSectorBytes);
  std::memset(sector.data(), 0, kSectorBytes);
  EncodeFields(h, sector);
  Put<uint64_t>(sector, kChecksummedHeaderBytes, h.checksum);
}

Result<SlotHeader> DecodeSlotHeader(std::span<const std::byte> s) {
  if (s.size() < kSectorBytes) return Status::DataLoss("slot header shorter than a sector");
  if (Get<uint64_t>(s, 0) != kSlotMagic) return Status::DataLoss("slot header: bad magic");
  if (const auto v = Get<uint32_t>(s, 8); v != kFormatVersion) {
    return Status::DataLoss(fmt::format("slot header: format version {} (this build reads {})", v, kFormatVersion));
  }
  SlotHeader h;
  std::memcpy(h.key.chain.bytes.data(), s.data() + 16, 32);
  h.key.layer = LayerId{Get<uint32_t>(s, 48)};
  h.generation = Get<uint64_t>(s, 56);
  h.payload_bytes = Get<uint64_t>(s, 64);
  h.slot_offset = Get<uint64_t>(s, 72);
  h.checksum = Get<uint64_t>(s, kChecksummedHeaderBytes);
  return h;
}

Status VerifySlot(std::span<const std::byte> sector, std::span<const std::byte> payload, const SlotExpectation& want) {
  KVT_ASSIGN_OR_RETURN(SlotHeader h, DecodeSlotHeader(sector));
  if (h.slot_offset != want.slot_offset) {
    return Status::DataLoss(fmt::format("misplaced block: header says offset {}, read at {}", h.slot_offset, want.slot_offset));
  }
  if (h.generation != want.generation) {
    return Status::DataLoss(fmt::format("stale block: generation {}, expected {}", h.generation, want.generation));
  }
  if (h.payload_bytes != want.payload_bytes || h.payload_bytes > payload.size()) {
    return Status::DataLoss(fmt::format("payload of {} B, expected {}", h.payload_bytes, want.payload_bytes));
  }
  if (want.key != nullptr && !(h.key == *want.key)) {
    return Status::DataLoss(fmt::format("block {} found where {} was expected", h.key.ToString(), want.key->ToString()));
  }
  // Over the bytes as read, not re-encoded fields: a flip in the flags or a reserved zero
  // field must fail too.
  if (ChecksumOf(sector, payload.first(h.payload_bytes)) != h.checksum) {
    return Status::DataLoss(fmt::format("checksum mismatch (torn or corrupted block) at offset {}", want.slot_offset));
  }
  return Status();
}

void EncodeSlabHeader(const SlabGeometry& g, std::span<std::byte> sector) {
  KVT_CHECK(sector.size() >= kSectorBytes);
  std::memset(sector.data(), 0, kSectorBytes);
  Put<uint64_t>(sector, 0, kSlabMagic);
  Put<uint32_t>(sector, 8, kFormatVersion);
  Put<uint64_t>(sector, 16, g.slot_bytes);
  Put<uint32_t>(sector, 24, g.slot_count);
  Put<uint64_t>(sector, 32, Xxh3_64(sector.data(), 32));
}

Result<SlabGeometry> DecodeSlabHeader(std::span<const std::byte> s) {
  if (Get<uint64_t>(s, 0) != kSlabMagic) return Status::DataLoss("not a kvtier slab (bad magic)");
  if (Get<uint64_t>(s, 32) != Xxh3_64(s.data(), 32)) return Status::DataLoss("slab header checksum mismatch");
  if (const auto v = Get<uint32_t>(s, 8); v != kFormatVersion) {
    return Status::DataLoss(fmt::format("slab format version {} (this build reads {})", v, kFormatVersion));
  }
  return SlabGeometry{Get<uint64_t>(s, 16), Get<uint32_t>(s, 24)};
}

}  // namespace kvtier::nvme
