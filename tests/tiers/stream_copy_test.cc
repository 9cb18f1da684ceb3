// StreamCopier: every streaming path this CPU supports copies exactly like memcpy — random
// sizes (odd ones, 16-byte multiples up to 2 MiB), random source and destination alignments,
// poisoned destinations checked for bytes written outside the range.
#include "stream_copy.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

namespace kvtier {
namespace {

constexpr std::byte kPoison{0xA5};
constexpr size_t kGuard = 256;  // poisoned bytes either side of each destination

std::vector<HostCopyPath> SupportedPaths() {
  std::vector<HostCopyPath> out;
  for (HostCopyPath p : {HostCopyPath::kMemcpy, HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
    if (HostCopyPathSupported(p)) out.push_back(p);
  }
  return out;
}

class StreamCopyTest : public ::testing::TestWithParam<HostCopyPath> {};

// Copies `bytes` from src + src_align to dst + dst_align and checks every byte of the
// destination buffer: the range equals the source, everything else is still poison.
void CheckOne(const StreamCopier& c, const std::vector<std::byte>& src, std::vector<std::byte>& dst, size_t bytes,
              size_t src_align, size_t dst_align) {
  std::memset(dst.data(), static_cast<int>(kPoison), dst.size());
  const size_t at = kGuard + dst_align;
  c.Copy(dst.data() + at, src.data() + src_align, bytes);
  ASSERT_EQ(std::memcmp(dst.data() + at, src.data() + src_align, bytes), 0)
      << HostCopyPathName(c.path()) << " " << bytes << " B, alignments " << src_align << " -> " << dst_align;
  for (size_t i = 0; i < at; ++i) ASSERT_EQ(dst[i], kPoison) << "wrote before the range, " << bytes << " B";
  for (size_t i = at + bytes; i < at + bytes + kGuard; ++i) ASSERT_EQ(dst[i], kPoison) << "wrote past the range, " << bytes << " B";
}

TEST_P(StreamCopyTest, MatchesMemcpyForRandomSizesAndAlignments) {
  auto copier = StreamCopier::For(GetParam());
  ASSERT_TRUE(copier.ok()) << copier.status().ToString();
  EXPECT_EQ(copier->path(), GetParam());
  constexpr size_t kMax = 2u << 20;
  std::vector<std::byte> src(kMax + 128), dst(kMax + 128 + 2 * kGuard);
  std::mt19937_64 rng(42);
  for (size_t i = 0; i < src.size(); i += 8) {
    const uint64_t w = rng();
    std::memcpy(src.data() + i, &w, std::min<size_t>(8, src.size() - i));
  }
  std::vector<size_t> sizes = {0, 1, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 257, 511, 4096, 16384, 65536, kMax};
  for (int i = 0; i < 120; ++i) sizes.push_back(rng() % kMax + 1);           // odd and even
  for (int i = 0; i < 60; ++i) sizes.push_back((rng() % (kMax / 16) + 1) * 16);  // 16-byte multiples
  for (int i = 0; i < 60; ++i) sizes.push_back(rng() % 2048);                 // around the memcpy cut-off
  for (size_t bytes : sizes) {
    const size_t src_align = rng() % 128, dst_align = rng() % 128;
    CheckOne(*copier, src, dst, bytes, src_align, dst_align);
    if (HasFatalFailure()) return;
    CheckOne(*copier, src, dst, bytes, 0, 0);  // both 64-byte-aligned-ish (vector data)
    if (HasFatalFailure()) return;
  }
}

TEST_P(StreamCopyTest, UnfencedCopiesFollowedByOneFenceAreComplete) {
  auto copier = StreamCopier::For(GetParam());
  ASSERT_TRUE(copier.ok());
  constexpr size_t kBlock = 16384, kBlocks = 64;
  std::vector<std::byte> src(kBlock * kBlocks), dst(kBlock * kBlocks * 2, kPoison);
  std::mt19937_64 rng(7);
  for (auto& b : src) b = std::byte(rng());
  for (size_t i = 0; i < kBlocks; ++i) copier->CopyUnfenced(dst.data() + (kBlocks - 1 - i) * 2 * kBlock, src.data() + i * kBlock, kBlock);
  copier->Fence();
  for (size_t i = 0; i < kBlocks; ++i) {
    ASSERT_EQ(std::memcmp(dst.data() + (kBlocks - 1 - i) * 2 * kBlock, src.data() + i * kBlock, kBlock), 0) << i;
    for (size_t j = 0; j < kBlock; ++j) ASSERT_EQ(dst[(kBlocks - 1 - i) * 2 * kBlock + kBlock + j], kPoison);
  }
}

INSTANTIATE_TEST_SUITE_P(SupportedPaths, StreamCopyTest, ::testing::ValuesIn(SupportedPaths()),
                         [](const auto& p) { return std::string(HostCopyPathName(p.param)); });

TEST(StreamCopierTest, AutoResolvesToTheWidestSupportedPath) {
  auto c = StreamCopier::For(HostCopyPath::kAuto);
  ASSERT_TRUE(c.ok());
  const HostCopyPath want = HostCopyPathSupported(HostCopyPath::kAvx512) ? HostCopyPath::kAvx512
                            : HostCopyPathSupported(HostCopyPath::kAvx2) ? HostCopyPath::kAvx2
                                                                         : HostCopyPath::kMemcpy;
  EXPECT_EQ(c->path(), want);
  EXPECT_EQ(StreamCopier().path(), HostCopyPath::kMemcpy);
}

TEST(StreamCopierTest, UnsupportedPathIsRefusedWithAClearError) {
  for (HostCopyPath p : {HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
    if (HostCopyPathSupported(p)) continue;
    auto c = StreamCopier::For(p);
    ASSERT_FALSE(c.ok());
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find("does not support"), std::string::npos);
  }
}

TEST(StreamCopierTest, NamesRoundTripAndUnknownNamesAreRejected) {
  for (HostCopyPath p : {HostCopyPath::kAuto, HostCopyPath::kMemcpy, HostCopyPath::kAvx2, HostCopyPath::kAvx512}) {
    auto parsed = ParseHostCopyPath(HostCopyPathName(p));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, p);
  }
  EXPECT_EQ(ParseHostCopyPath("sse").status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier
