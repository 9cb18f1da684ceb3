// CopyBlocksReference: the CPU reference every gather/scatter kernel is compared against.
#include "reference/copy_blocks.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace kvtier::kernels {
namespace {

constexpr std::byte kPoison{0xe7};

class CopyBlocksReferenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    seed_ = std::random_device{}() | (uint64_t{std::random_device{}()} << 32);
    RecordProperty("seed", std::to_string(seed_));
    rng_.seed(seed_);
  }
  void FillRandom(std::vector<std::byte>& v) {
    for (std::byte& b : v) b = static_cast<std::byte>(rng_() & 0xff);
  }
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

TEST_F(CopyBlocksReferenceTest, CopiesScatteredDescriptorsExactlyAndNothingElse) {
  // A source pool and a destination pool cut into 16 B-aligned extents of random sizes; a
  // random subset of destination extents is filled from random source extents.
  constexpr size_t kPool = 1 << 20;
  std::vector<std::byte> src(kPool), dst(kPool, kPoison);
  FillRandom(src);
  std::vector<CopyDescriptor> descs;
  std::vector<std::pair<size_t, size_t>> written;  // [begin, end) in dst
  size_t at = 0;
  while (true) {
    const size_t bytes = 16 * (1 + rng_() % 1024);
    if (at + bytes > kPool) break;
    if (rng_() % 3 != 0) {
      const size_t from = 16 * (rng_() % ((kPool - bytes) / 16 + 1));
      descs.push_back({src.data() + from, dst.data() + at, bytes});
      written.emplace_back(at, at + bytes);
    }
    at += bytes + 16 * (rng_() % 4);
  }
  ASSERT_GT(descs.size(), 10u);
  CopyBlocksReference(descs);
  for (const CopyDescriptor& d : descs) {
    ASSERT_EQ(std::memcmp(d.dst, d.src, d.bytes), 0) << "seed " << seed_;
  }
  size_t cursor = 0;
  written.emplace_back(kPool, kPool);
  for (const auto& [begin, end] : written) {
    for (size_t i = cursor; i < begin; ++i) {
      ASSERT_EQ(dst[i], kPoison) << "byte " << i << " outside every descriptor was written (seed " << seed_ << ")";
    }
    cursor = end;
  }
}

TEST_F(CopyBlocksReferenceTest, CopiesEveryBlockSizeFrom16BTo256KiB) {
  for (size_t bytes = 16; bytes <= (256u << 10); bytes *= 2) {
    for (size_t size : {bytes, bytes + 16, bytes * 3 / 2 / 16 * 16}) {
      SCOPED_TRACE(size);
      std::vector<std::byte> src(size), dst(size + 64, kPoison);
      FillRandom(src);
      const CopyDescriptor d{src.data(), dst.data() + 32, size};
      CopyBlocksReference(std::span(&d, 1));
      EXPECT_EQ(std::memcmp(dst.data() + 32, src.data(), size), 0);
      EXPECT_TRUE(std::all_of(dst.begin(), dst.begin() + 32, [](std::byte b) { return b == kPoison; }));
      EXPECT_TRUE(std::all_of(dst.end() - 32, dst.end(), [](std::byte b) { return b == kPoison; }));
    }
  }
}

TEST_F(CopyBlocksReferenceTest, LaterDescriptorsWinWhenDestinationsRepeat) {
  // "In order": two descriptors with the same destination leave the second's bytes.
  std::vector<std::byte> a(4096), b(4096), dst(4096, kPoison);
  FillRandom(a);
  FillRandom(b);
  const std::vector<CopyDescriptor> descs = {{a.data(), dst.data(), 4096}, {b.data(), dst.data(), 4096}};
  CopyBlocksReference(descs);
  EXPECT_EQ(dst, b);
}

TEST_F(CopyBlocksReferenceTest, NoDescriptorsTouchesNothing) {
  CopyBlocksReference({});
  // An empty view of a real descriptor list: the descriptor behind it must not run.
  std::vector<std::byte> src(256), dst(256, kPoison);
  FillRandom(src);
  const std::vector<CopyDescriptor> descs = {{src.data(), dst.data(), 256}};
  CopyBlocksReference(std::span(descs).first(0));
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](std::byte b) { return b == kPoison; }));
}

TEST_F(CopyBlocksReferenceTest, ZeroByteDescriptorCopiesNothing) {
  std::vector<std::byte> src(64), dst(64, kPoison);
  FillRandom(src);
  const CopyDescriptor d{src.data(), dst.data(), 0};
  CopyBlocksReference(std::span(&d, 1));
  EXPECT_TRUE(std::all_of(dst.begin(), dst.end(), [](std::byte b) { return b == kPoison; }));
}

TEST_F(CopyBlocksReferenceTest, StagedPackThenUnpackMovesEveryPartToItsPlace) {
  constexpr uint64_t kPart = 48;
  std::vector<std::byte> pool(8 * kPart), staging(3 * kPart, kPoison), out(8 * kPart, kPoison);
  FillRandom(pool);
  // Pack slots 5, 0, 3 (in that order), then unpack into slots 1, 7, 2 of `out`.
  std::vector<std::byte*> from = {pool.data() + 5 * kPart, pool.data(), pool.data() + 3 * kPart};
  StagedCopyReference(staging.data(), kPart, from, true);
  for (size_t i = 0; i < from.size(); ++i) {
    EXPECT_EQ(std::memcmp(staging.data() + i * kPart, from[i], kPart), 0) << "part " << i;
  }
  std::vector<std::byte*> to = {out.data() + kPart, out.data() + 7 * kPart, out.data() + 2 * kPart};
  StagedCopyReference(staging.data(), kPart, to, false);
  for (size_t i = 0; i < to.size(); ++i) EXPECT_EQ(std::memcmp(to[i], from[i], kPart), 0) << "part " << i;
  for (size_t slot : {0u, 3u, 4u, 5u, 6u}) {
    EXPECT_TRUE(std::all_of(out.begin() + static_cast<ptrdiff_t>(slot * kPart),
                            out.begin() + static_cast<ptrdiff_t>((slot + 1) * kPart), [](std::byte b) { return b == kPoison; }))
        << "slot " << slot << " is no destination";
  }
}

}  // namespace
}  // namespace kvtier::kernels
