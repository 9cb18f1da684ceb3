// The read-bound checksum's CPU reference (kernels/reference/read_bound.h): the XOR of the
// little-endian 64-bit words of the ranges and the listed slots.
#include <gtest/gtest.h>

#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include "reference/read_bound.h"

namespace kvtier::kernels {
namespace {

std::vector<std::byte> Words(const std::vector<uint64_t>& words) {
  std::vector<std::byte> v(words.size() * 8);
  std::memcpy(v.data(), words.data(), v.size());
  return v;
}

TEST(ReadBoundReference, XorsEveryWordOfTheRangesAndTheListedSlots) {
  const std::vector<std::byte> r0 = Words({0x1, 0x10}), r1 = Words({0x100});
  // Three slots of two words; slot 1 listed twice (cancels), slot 2 once, slot 0 never.
  const std::vector<std::byte> arena = Words({0xA000, 0xB000, 0x1000000, 0x2000000, 0x30000000, 0x40000000});
  const std::span<const std::byte> ranges[2] = {r0, r1};
  const std::vector<uint32_t> slots{1, 2, 1};
  EXPECT_EQ(ReadBoundReference(ranges, arena.data(), slots, 16), 0x111u ^ 0x30000000u ^ 0x40000000u);
  EXPECT_EQ(ReadBoundReference({}, arena.data(), std::vector<uint32_t>{0}, 16), 0xA000u ^ 0xB000u);
  EXPECT_EQ(ReadBoundReference(ranges, nullptr, {}, 16), 0x111u);
}

TEST(ReadBoundReference, WordsAreLittleEndian) {
  std::vector<std::byte> bytes(8);
  bytes[0] = std::byte{0x01};
  bytes[7] = std::byte{0x80};
  const std::span<const std::byte> ranges[1] = {bytes};
  EXPECT_EQ(ReadBoundReference(ranges, nullptr, {}, 8), 0x8000000000000001ull);
}

}  // namespace
}  // namespace kvtier::kernels
