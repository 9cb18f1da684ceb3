// Format version 2 of the NVMe slab (tiers/nvme/slot_format.h) without I/O: the payload check
// a read makes from the index alone catches every change of payload, key, generation, offset
// and length; a header record catches a flip anywhere in it; the file header round-trips,
// refuses version 1 by name and rejects damage; the regions never overlap.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "slot_format.h"
#include "xxh3_dispatch.h"

namespace kvtier::nvme {
namespace {

struct Block {
  BlockKey key;
  SlotHeader header;
  std::vector<std::byte> payload;
  SlotExpectation want() const {
    return {.generation = header.generation, .payload_bytes = header.payload_bytes, .slot_offset = header.slot_offset,
            .checksum = header.checksum, .key = &key};
  }
};

Block MakeBlock(uint64_t seed, uint64_t bytes) {
  std::mt19937_64 rng(seed);
  Block b;
  for (auto& x : b.key.chain.bytes) x = static_cast<uint8_t>(rng());
  b.key.layer = LayerId{static_cast<uint32_t>(rng() % 80)};
  b.payload.resize((bytes + 4095) / 4096 * 4096);
  for (size_t i = 0; i < bytes; ++i) b.payload[i] = std::byte(rng());
  b.header.key = b.key;
  b.header.generation = rng();
  b.header.payload_bytes = bytes;
  b.header.slot_offset = (1 << 20) + 7 * 20480;
  b.header.checksum = SlotChecksum(b.header, {b.payload.data(), bytes});
  return b;
}

TEST(NvmeSlotFormat, APayloadVerifiesAgainstTheIndexAloneAndEveryChangeFails) {
  const Block b = MakeBlock(1, 16384 + 512);
  EXPECT_TRUE(VerifyPayload(b.payload, b.want()).ok());
  std::mt19937_64 rng(2);
  for (int i = 0; i < 200; ++i) {  // one flipped bit anywhere in the payload's bytes
    std::vector<std::byte> p = b.payload;
    p[rng() % b.header.payload_bytes] ^= std::byte(1u << (rng() % 8));
    EXPECT_EQ(VerifyPayload(p, b.want()).code(), StatusCode::kDataLoss);
  }
  // The padding after the block is not part of it.
  std::vector<std::byte> padded = b.payload;
  padded.back() ^= std::byte{1};
  EXPECT_TRUE(VerifyPayload(padded, b.want()).ok());
  SlotExpectation w = b.want();
  w.generation += 1;  // stale
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  w = b.want();
  w.slot_offset += 20480;  // misplaced (another slot's payload)
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  w = b.want();
  w.payload_bytes -= 512;
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  w.payload_bytes = b.payload.size() + 1;  // longer than what was read
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  BlockKey other = b.key;
  other.layer = LayerId{other.layer.value() + 1};
  w = b.want();
  w.key = &other;  // another key
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  w.key = nullptr;  // the all-zero key of an unbound block
  EXPECT_EQ(VerifyPayload(b.payload, w).code(), StatusCode::kDataLoss);
  // And another block's payload at this block's place.
  const Block c = MakeBlock(3, 16384 + 512);
  EXPECT_EQ(VerifyPayload(c.payload, b.want()).code(), StatusCode::kDataLoss);
}

TEST(NvmeSlotFormat, AHeaderRecordRoundTripsAndAFlipAnywhereInItIsCaught) {
  const Block b = MakeBlock(4, 65536);
  for (const uint64_t record_bytes : {kRecordBytes, uint64_t{512}}) {  // the format's, and a smaller buffer
    std::vector<std::byte> record(record_bytes);
    EncodeSlotRecord(b.header, record);
    auto h = DecodeSlotRecord(record);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_TRUE(CheckRecord(*h, b.want()).ok());
    for (size_t at = 0; at < record_bytes; at += (at < 128 ? 1 : 61)) {
      std::vector<std::byte> r = record;
      r[at] ^= std::byte{0x10};
      EXPECT_EQ(DecodeSlotRecord(r).status().code(), StatusCode::kDataLoss) << "flip at byte " << at;
    }
    SlotExpectation w = b.want();
    w.generation -= 1;
    EXPECT_EQ(CheckRecord(*h, w).code(), StatusCode::kDataLoss);
    w = b.want();
    w.checksum ^= 1;
    EXPECT_EQ(CheckRecord(*h, w).code(), StatusCode::kDataLoss);
    w = b.want();
    w.slot_offset += 4096;
    EXPECT_EQ(CheckRecord(*h, w).code(), StatusCode::kDataLoss);
  }
  std::vector<std::byte> zeros(512);  // a never-written record
  EXPECT_EQ(DecodeSlotRecord(zeros).status().code(), StatusCode::kDataLoss);
}

TEST(NvmeSlotFormat, TheFileHeaderRoundTripsAndRefusesOtherVersions) {
  const SlabGeometry g{20480, 1000};
  std::vector<std::byte> sector(kSectorBytes);
  EncodeSlabHeader(g, sector);
  auto back = DecodeSlabHeader(sector);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, g);
  for (size_t at = 0; at < 56; ++at) {  // every byte under the checksum, and the checksum
    std::vector<std::byte> s = sector;
    s[at] ^= std::byte{0x01};
    EXPECT_FALSE(DecodeSlabHeader(s).ok()) << "flip at byte " << at;
  }
  // A version 1 header (its checksum over [0, 32) at 32) is refused by name.
  std::vector<std::byte> v1(kSectorBytes);
  const uint32_t one = 1;
  std::memcpy(v1.data(), sector.data(), 32);
  std::memcpy(v1.data() + 8, &one, 4);
  std::memset(v1.data() + 12, 0, 4);
  const uint64_t sum = Xxh3_64(v1.data(), 32);
  std::memcpy(v1.data() + 32, &sum, 8);
  auto r = DecodeSlabHeader(v1);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().ToString().find("format version 1"), std::string::npos) << r.status().ToString();
  // A version 2 header (this header's layout, records in a region of their own) is refused by name.
  std::vector<std::byte> v2 = sector;
  const uint32_t two = 2, record_bytes = 512;
  const uint64_t records = kSectorBytes, payloads = 1 << 20;
  std::memcpy(v2.data() + 8, &two, 4);
  std::memcpy(v2.data() + 12, &record_bytes, 4);
  std::memcpy(v2.data() + 32, &records, 8);
  std::memcpy(v2.data() + 40, &payloads, 8);
  const uint64_t sum2 = Xxh3_64(v2.data(), 48);
  std::memcpy(v2.data() + 48, &sum2, 8);
  r = DecodeSlabHeader(v2);
  EXPECT_EQ(r.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(r.status().ToString().find("format version 2"), std::string::npos) << r.status().ToString();
  // A version 3 header whose geometry fields disagree (intact checksum) is damage, not a version.
  std::vector<std::byte> bad = sector;
  const uint64_t stride = g.stride() + 4096;
  std::memcpy(bad.data() + 40, &stride, 8);
  const uint64_t sum3 = Xxh3_64(bad.data(), 48);
  std::memcpy(bad.data() + 48, &sum3, 8);
  EXPECT_EQ(DecodeSlabHeader(bad).status().code(), StatusCode::kDataLoss);
}

TEST(NvmeSlotFormat, SlotsAreRecordThenPayloadAlignedAndNeverOverlap) {
  for (const uint64_t slot_bytes : {uint64_t{4096}, uint64_t{16384}, uint64_t{65536}, uint64_t{2} << 20}) {
    for (const uint32_t slots : {1u, 2047u, 65536u}) {
      const SlabGeometry g{slot_bytes, slots};
      EXPECT_EQ(g.record_offset(0), kSectorBytes);  // right after the file header
      EXPECT_EQ(g.stride(), kRecordBytes + slot_bytes);
      for (const uint32_t i : {0u, slots / 2, slots - 1}) {
        EXPECT_EQ(g.record_offset(i) % kSectorBytes, 0u);
        EXPECT_EQ(g.payload_offset(i), g.record_offset(i) + kRecordBytes);  // one request writes both
        if (i + 1 < slots) {
          EXPECT_EQ(g.record_offset(i + 1), g.payload_offset(i) + slot_bytes);
        }
      }
      EXPECT_EQ(g.payload_offset(slots - 1) + g.slot_bytes, g.file_bytes());
    }
  }
}

}  // namespace
}  // namespace kvtier::nvme
