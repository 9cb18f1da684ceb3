// The run-time dispatched XXH3 (tiers/nvme/xxh3_dispatch.h) against libxxhash itself: every
// vector path this CPU has must give libxxhash's XXH3_64bits value, one-shot and over two
// concatenated pieces, at every length class of XXH3 (0, 1-3, 4-8, 9-16, 17-128, 129-240,
// > 240 with partial stripes and blocks) and at unaligned addresses. The slot checksum's
// on-disk value depends on this.
#include <gtest/gtest.h>

#define XXH_STATIC_LINKING_ONLY
#include <xxhash.h>

#include <cstring>
#include <random>
#include <vector>

#include "slot_format.h"
#include "xxh3_dispatch.h"

namespace kvtier::nvme {
namespace {

constexpr size_t kLengths[] = {0,   1,   2,   3,   4,   8,    9,    16,   17,    31,    64,    128,    129,
                               200, 240, 241, 255, 256, 1023, 1024, 4095, 4096, 16384, 65536, 65537, 262147};

std::vector<std::byte> RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::byte> v(n);
  for (auto& b : v) b = std::byte(rng());
  return v;
}

uint64_t LibraryConcat(const void* a, size_t a_len, const void* b, size_t b_len) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  XXH3_64bits_update(&state, a, a_len);
  XXH3_64bits_update(&state, b, b_len);
  return XXH3_64bits_digest(&state);
}

TEST(NvmeXxh3, TheBaselineIsAlwaysThereAndTheActivePathIsSupported) {
  EXPECT_TRUE(Xxh3PathSupported(Xxh3Path::kBaseline));
  EXPECT_TRUE(Xxh3PathSupported(ActiveXxh3Path()));
  for (Xxh3Path p : kAllXxh3Paths) {
    if (!Xxh3PathSupported(p)) continue;
    // Each path's file was compiled to the vector code it claims (its flags were applied).
    if (p == Xxh3Path::kAvx2) {
      EXPECT_EQ(Xxh3PathName(p), "avx2");
    }
    if (p == Xxh3Path::kAvx512) {
      EXPECT_EQ(Xxh3PathName(p), "avx512");
    }
    RecordProperty(std::string(Xxh3PathName(p)), "supported");
  }
  RecordProperty("active", std::string(Xxh3PathName(ActiveXxh3Path())));
}

TEST(NvmeXxh3, EveryPathEqualsLibxxhashAtEveryLengthAndAlignment) {
  int paths = 0;
  for (Xxh3Path p : kAllXxh3Paths) {
    if (!Xxh3PathSupported(p)) continue;
    ++paths;
    SCOPED_TRACE(std::string(Xxh3PathName(p)));
    for (size_t len : kLengths) {
      const std::vector<std::byte> buf = RandomBytes(len + 64, len * 7919 + 1);
      for (size_t misalign : {0, 1, 3, 7, 8, 13, 32, 63}) {
        const std::byte* data = buf.data() + misalign;
        ASSERT_EQ(Xxh3_64On(p, data, len), XXH3_64bits(data, len)) << "len " << len << " misalign " << misalign;
      }
    }
  }
  EXPECT_GE(paths, 1);
}

TEST(NvmeXxh3, ConcatenationEqualsTheLibraryOnTheJoinedBytesOnEveryPath) {
  std::mt19937_64 rng(42);
  for (Xxh3Path p : kAllXxh3Paths) {
    if (!Xxh3PathSupported(p)) continue;
    SCOPED_TRACE(std::string(Xxh3PathName(p)));
    for (size_t a_len : {size_t{0}, size_t{1}, size_t{3}, size_t{80}, size_t{240}, size_t{241}, size_t{4096}}) {
      for (size_t b_len : kLengths) {
        const std::vector<std::byte> joined = RandomBytes(a_len + b_len + 16, a_len * 131 + b_len);
        const size_t misalign = rng() % 16;
        const std::byte* a = joined.data() + misalign;
        const std::byte* b = a + a_len;
        const uint64_t want = XXH3_64bits(a, a_len + b_len);
        ASSERT_EQ(LibraryConcat(a, a_len, b, b_len), want);  // the library agrees with itself
        ASSERT_EQ(Xxh3_64ConcatOn(p, a, a_len, b, b_len), want) << "a " << a_len << " b " << b_len;
        // Pieces in separate buffers (b not right after a).
        const std::vector<std::byte> b_copy(b, b + b_len);
        ASSERT_EQ(Xxh3_64ConcatOn(p, a, a_len, b_copy.data(), b_len), want) << "a " << a_len << " b " << b_len;
      }
    }
  }
}

TEST(NvmeXxh3, TheActivePathIsTheDefaultEntryPoint) {
  const std::vector<std::byte> buf = RandomBytes(65536 + 80, 7);
  EXPECT_EQ(Xxh3_64(buf.data(), buf.size()), XXH3_64bits(buf.data(), buf.size()));
  EXPECT_EQ(Xxh3_64Concat(buf.data(), 80, buf.data() + 80, 65536), XXH3_64bits(buf.data(), buf.size()));
}

// The slot checksum is what format version 2 defines: libxxhash's XXH3-64 of the 80 encoded
// checksum fields (which open the header record) followed by the payload; a reader rebuilds
// those fields from the index alone.
TEST(NvmeXxh3, SlotChecksumIsLibxxhashOverHeaderFieldsThenPayload) {
  SlotHeader h;
  h.key.chain.bytes[0] = 0x5a;
  h.key.layer = LayerId{3};
  h.generation = 12345;
  h.payload_bytes = 65536 - 100;
  h.slot_offset = 1 << 20;
  const std::vector<std::byte> payload = RandomBytes(h.payload_bytes, 9);
  std::vector<std::byte> record(512);
  EncodeSlotRecord(h, record);  // checksum field 0: it lies after the checksummed bytes
  std::vector<std::byte> joined(record.begin(), record.begin() + kChecksummedHeaderBytes);
  joined.insert(joined.end(), payload.begin(), payload.end());
  const uint64_t want = XXH3_64bits(joined.data(), joined.size());
  EXPECT_EQ(SlotChecksum(h, payload), want);
  h.checksum = want;
  EncodeSlotRecord(h, record);
  const SlotExpectation expect{.generation = h.generation, .payload_bytes = h.payload_bytes,
                               .slot_offset = h.slot_offset, .checksum = want, .key = &h.key};
  EXPECT_TRUE(VerifyPayload(payload, expect).ok());
  auto decoded = DecodeSlotRecord(record);
  ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
  EXPECT_TRUE(CheckRecord(*decoded, expect).ok());
}

}  // namespace
}  // namespace kvtier::nvme
