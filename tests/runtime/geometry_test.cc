// KvGeometry: validation, sizes, and the head-major block layout (kvtier/geometry.h).
#include "kvtier/geometry.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <set>
#include <string>
#include <string_view>

namespace kvtier {
namespace {

constexpr DType kAllDTypes[] = {DType::kF16, DType::kBF16, DType::kF32, DType::kFp8E4M3, DType::kFp8E5M2};

// Expects `g` to be rejected with kInvalidArgument and a message that contains `needle`.
void ExpectRejected(const KvGeometry& g, std::string_view needle) {
  const Status s = g.Validate();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
  EXPECT_NE(s.message().find(needle), std::string_view::npos)
      << "message '" << s.message() << "' does not name '" << needle << "'";
}

// ---------------------------------------------------------------------------------------
// Validate

TEST(GeometryTest, Llama3_8BIsValid) { EXPECT_TRUE(KvGeometry::Llama3_8B().Validate().ok()); }

TEST(GeometryTest, DefaultConstructedIsInvalid) {
  EXPECT_EQ(KvGeometry{}.Validate().code(), StatusCode::kInvalidArgument);
}

TEST(GeometryTest, ValidateRejectsEachZeroFieldAndNamesIt) {
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.layers = 0;
    ExpectRejected(g, "layers");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.kv_heads = 0;
    ExpectRejected(g, "kv_heads");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.head_dim = 0;
    ExpectRejected(g, "head_dim");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.block_tokens = 0;
    ExpectRejected(g, "block_tokens");
  }
}

TEST(GeometryTest, ValidateRejectsAbsurdlyLargeFieldsAndNamesThem) {
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.layers = 1u << 20;
    ExpectRejected(g, "layers");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.kv_heads = UINT32_MAX;
    ExpectRejected(g, "kv_heads");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.head_dim = 1u << 16;
    ExpectRejected(g, "head_dim");
  }
  {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.block_tokens = 1u << 20;
    ExpectRejected(g, "block_tokens");
  }
}

TEST(GeometryTest, ValidateRejectsAnUnknownDType) {
  KvGeometry g = KvGeometry::Llama3_8B();
  g.dtype = static_cast<DType>(0);
  ExpectRejected(g, "dtype");
  g.dtype = static_cast<DType>(200);
  ExpectRejected(g, "dtype");
}

TEST(GeometryTest, ValidateRejectsSliceBytesNotAMultipleOf16) {
  // fp8, 1 token, 4 dims: a slice is 2 x 1 x 4 x 1 = 8 B.
  KvGeometry g{.layers = 1, .kv_heads = 1, .head_dim = 4, .block_tokens = 1, .dtype = DType::kFp8E4M3};
  ASSERT_EQ(g.slice_bytes(), 8u);
  ExpectRejected(g, "multiple of 16");
  // 2 x 3 tokens x 4 dims x 1 B = 24 B: still not a multiple.
  g.block_tokens = 3;
  ExpectRejected(g, "multiple of 16");
  // 2 x 1 x 4 x 2 B (bf16) = 16 B: accepted.
  g.block_tokens = 1;
  g.dtype = DType::kBF16;
  ASSERT_EQ(g.slice_bytes(), 16u);
  EXPECT_TRUE(g.Validate().ok()) << g.Validate().ToString();
}

TEST(GeometryTest, ValidateAcceptsExactly64MiBBlocksAndRejectsLarger) {
  // 2 x 16 x 1024 x 2 B = 64 KiB slices; 1024 heads = 64 MiB.
  KvGeometry g{.layers = 1, .kv_heads = 1024, .head_dim = 1024, .block_tokens = 16, .dtype = DType::kBF16};
  ASSERT_EQ(g.block_bytes(), 64ull << 20);
  EXPECT_TRUE(g.Validate().ok()) << g.Validate().ToString();
  g.dtype = DType::kF32;  // 128 MiB
  ExpectRejected(g, "block");
  g.dtype = DType::kBF16;
  g.block_tokens = 17;  // 68 MiB, every field within its own bound
  ExpectRejected(g, "block");
}

TEST(GeometryTest, ValidateAcceptsEveryDTypeForLlamaShape) {
  for (DType d : kAllDTypes) {
    KvGeometry g = KvGeometry::Llama3_8B();
    g.dtype = d;
    EXPECT_TRUE(g.Validate().ok()) << DTypeName(d) << ": " << g.Validate().ToString();
  }
}

// ---------------------------------------------------------------------------------------
// Sizes

TEST(GeometryTest, Llama3_8BSizes) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  EXPECT_EQ(g.layers, 32u);
  EXPECT_EQ(g.kv_heads, 8u);
  EXPECT_EQ(g.head_dim, 128u);
  EXPECT_EQ(g.block_tokens, 16u);
  EXPECT_EQ(g.dtype, DType::kBF16);
  EXPECT_EQ(g.slice_bytes(), 8u << 10);
  EXPECT_EQ(g.block_bytes(), 64u << 10);
  // 2 (K,V) x 32 layers x 8 heads x 128 dims x 2 B.
  EXPECT_EQ(g.bytes_per_token(), 128u << 10);
}

TEST(GeometryTest, DTypeBytes) {
  EXPECT_EQ(DTypeBytes(DType::kF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kBF16), 2u);
  EXPECT_EQ(DTypeBytes(DType::kF32), 4u);
  EXPECT_EQ(DTypeBytes(DType::kFp8E4M3), 1u);
  EXPECT_EQ(DTypeBytes(DType::kFp8E5M2), 1u);
}

TEST(GeometryTest, SizesScaleWithDType) {
  KvGeometry g = KvGeometry::Llama3_8B();
  g.dtype = DType::kF32;
  EXPECT_EQ(g.block_bytes(), 128u << 10);
  g.dtype = DType::kFp8E5M2;
  EXPECT_EQ(g.block_bytes(), 32u << 10);
  EXPECT_EQ(g.bytes_per_token(), 64u << 10);
}

TEST(GeometryTest, EqualityComparesEveryField) {
  const KvGeometry base = KvGeometry::Llama3_8B();
  EXPECT_EQ(base, KvGeometry::Llama3_8B());
  KvGeometry g = base;
  g.layers = 33;
  EXPECT_NE(g, base);
  g = base;
  g.kv_heads = 4;
  EXPECT_NE(g, base);
  g = base;
  g.head_dim = 64;
  EXPECT_NE(g, base);
  g = base;
  g.block_tokens = 32;
  EXPECT_NE(g, base);
  g = base;
  g.dtype = DType::kF16;
  EXPECT_NE(g, base);
}

// ---------------------------------------------------------------------------------------
// Layout: [head][K|V][token][dim]

TEST(GeometryTest, OffsetOfTheFirstElementIsZero) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  EXPECT_EQ(g.Offset(0, KvPart::kKey, 0, 0), 0u);
  EXPECT_EQ(g.SliceOffset(0), 0u);
}

TEST(GeometryTest, ConsecutiveDimsAreOneElementApart) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  const uint64_t e = DTypeBytes(g.dtype);
  for (uint32_t d = 0; d + 1 < g.head_dim; ++d) {
    EXPECT_EQ(g.Offset(3, KvPart::kValue, 5, d + 1) - g.Offset(3, KvPart::kValue, 5, d), e);
  }
}

TEST(GeometryTest, NextTokenFollowsTheLastDimOfThePreviousToken) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  const uint64_t e = DTypeBytes(g.dtype);
  for (uint32_t t = 0; t + 1 < g.block_tokens; ++t) {
    EXPECT_EQ(g.Offset(1, KvPart::kKey, t + 1, 0), g.Offset(1, KvPart::kKey, t, g.head_dim - 1) + e);
  }
}

TEST(GeometryTest, ValueFollowsKeyInsideTheSlice) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  const uint64_t e = DTypeBytes(g.dtype);
  for (uint32_t h = 0; h < g.kv_heads; ++h) {
    const uint64_t last_key = g.Offset(h, KvPart::kKey, g.block_tokens - 1, g.head_dim - 1);
    const uint64_t first_value = g.Offset(h, KvPart::kValue, 0, 0);
    EXPECT_EQ(first_value, last_key + e);
    EXPECT_EQ(first_value - g.SliceOffset(h), g.slice_bytes() / 2);  // K is the first half
  }
}

TEST(GeometryTest, NextHeadStartsRightAfterTheLastValueOfThePreviousHead) {
  const KvGeometry g = KvGeometry::Llama3_8B();
  const uint64_t e = DTypeBytes(g.dtype);
  for (uint32_t h = 0; h + 1 < g.kv_heads; ++h) {
    const uint64_t last_value = g.Offset(h, KvPart::kValue, g.block_tokens - 1, g.head_dim - 1);
    EXPECT_EQ(g.Offset(h + 1, KvPart::kKey, 0, 0), last_value + e);
    EXPECT_EQ(g.SliceOffset(h + 1), g.Offset(h + 1, KvPart::kKey, 0, 0));
    EXPECT_EQ(g.SliceOffset(h + 1), (h + 1) * g.slice_bytes());
  }
  // The last element of the block ends exactly at block_bytes().
  EXPECT_EQ(g.Offset(g.kv_heads - 1, KvPart::kValue, g.block_tokens - 1, g.head_dim - 1) + e, g.block_bytes());
}

// Walking every element in [head][part][token][dim] order visits each element offset of the
// block exactly once, in increasing order: the layout is dense, and each slice is one run.
TEST(GeometryTest, LayoutIsDenseAndHeadMajorForEveryDType) {
  for (DType d : kAllDTypes) {
    SCOPED_TRACE(DTypeName(d));
    const KvGeometry g{.layers = 2, .kv_heads = 3, .head_dim = 8, .block_tokens = 4, .dtype = d};
    ASSERT_TRUE(g.Validate().ok()) << g.Validate().ToString();
    const uint64_t e = DTypeBytes(d);
    uint64_t expected = 0;
    for (uint32_t h = 0; h < g.kv_heads; ++h) {
      EXPECT_EQ(g.SliceOffset(h), expected);
      for (KvPart part : {KvPart::kKey, KvPart::kValue}) {
        for (uint32_t t = 0; t < g.block_tokens; ++t) {
          for (uint32_t dim = 0; dim < g.head_dim; ++dim) {
            ASSERT_EQ(g.Offset(h, part, t, dim), expected)
                << "h=" << h << " part=" << static_cast<int>(part) << " t=" << t << " dim=" << dim;
            expected += e;
          }
        }
      }
      EXPECT_EQ(expected, g.SliceOffset(h) + g.slice_bytes());
    }
    EXPECT_EQ(expected, g.block_bytes());
  }
}

TEST(GeometryTest, LargestAllowedBlockEndsExactlyAtBlockBytes) {
  const KvGeometry g{.layers = 1, .kv_heads = 1024, .head_dim = 1024, .block_tokens = 16, .dtype = DType::kBF16};
  ASSERT_TRUE(g.Validate().ok());
  const uint64_t e = DTypeBytes(g.dtype);
  EXPECT_EQ(g.Offset(g.kv_heads - 1, KvPart::kValue, g.block_tokens - 1, g.head_dim - 1) + e, g.block_bytes());
  EXPECT_EQ(g.SliceOffset(1023), 1023ull * g.slice_bytes());
}

// ---------------------------------------------------------------------------------------
// DType names

TEST(GeometryTest, DTypeNamesRoundTripThroughParse) {
  std::set<std::string_view> names;
  for (DType d : kAllDTypes) {
    const std::string_view name = DTypeName(d);
    EXPECT_TRUE(names.insert(name).second) << "duplicate name " << name;
    const Result<DType> parsed = ParseDType(name);
    ASSERT_TRUE(parsed.ok()) << name << ": " << parsed.status().ToString();
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(DTypeName(DType::kBF16), "bf16");
  EXPECT_EQ(DTypeName(DType::kFp8E4M3), "fp8e4m3");
}

TEST(GeometryTest, ParseDTypeRejectsUnknownNames) {
  for (std::string_view name : {"", "int8", "bf", "bf16 ", " f16", "f16x", "fp8", "float32"}) {
    const Result<DType> r = ParseDType(name);
    EXPECT_FALSE(r.ok()) << "'" << name << "' was accepted";
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
}

TEST(GeometryTest, ParseDTypeErrorQuotesTheNameAndListsTheChoices) {
  const Result<DType> r = ParseDType("int4");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("int4"), std::string_view::npos);
  EXPECT_NE(r.status().message().find("bf16"), std::string_view::npos);
}

}  // namespace
}  // namespace kvtier
