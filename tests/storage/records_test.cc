// The query store's value encodings (checksummed, bound to column family and key), the
// dispatched dot-product kernel, and the ANN index manifest.
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <random>

#include "query_store/index_manifest.h"
#include "query_store/records.h"
#include "query_store/vector_math.h"
#include "query_store_testing.h"

namespace kvtier::query_store {
namespace {

TEST(RecordsTest, EntryRoundTripsAndAnyFlippedBitIsDataLoss) {
  EntryRecord e{"id-1", "what is kv?", "keys and values", "chunk-3", {5, 6, 7}, std::nullopt, 1234};
  ChainHash c;
  c.bytes[7] = 9;
  e.prefix_chain = c;
  const std::string v = EncodeEntry(42, e);
  auto back = DecodeEntry(42, v);
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->id, e.id);
  EXPECT_EQ(back->response, e.response);
  EXPECT_EQ(back->prefix_tokens, e.prefix_tokens);
  EXPECT_EQ(back->prefix_chain, e.prefix_chain);
  EXPECT_EQ(back->created_unix_ms, 1234);
  for (size_t byte = 0; byte < v.size(); ++byte) {
    std::string bad = v;
    bad[byte] = static_cast<char>(bad[byte] ^ 0x04);
    EXPECT_EQ(DecodeEntry(42, bad).status().code(), StatusCode::kDataLoss) << byte;
  }
  EXPECT_EQ(DecodeEntry(42, v.substr(0, v.size() - 1)).status().code(), StatusCode::kDataLoss);
}

TEST(RecordsTest, AValidValueUnderAnotherKeyOrFamilyIsDataLoss) {
  const std::string v = EncodeEntry(1, EntryRecord{"a", "q", "r", "", {}, std::nullopt, 0});
  EXPECT_EQ(DecodeEntry(2, v).status().code(), StatusCode::kDataLoss);  // misplaced record
  const std::string n = EncodeU64(kCfMeta, kMetaLive, 7);
  EXPECT_EQ(*DecodeU64(kCfMeta, kMetaLive, n), 7u);
  EXPECT_EQ(DecodeU64(kCfMeta, kMetaEpoch, n).status().code(), StatusCode::kDataLoss);
  EXPECT_EQ(DecodeU64(kCfIds, kMetaLive, n).status().code(), StatusCode::kDataLoss);
}

TEST(RecordsTest, VectorRoundTripsAndRejectsAnotherDimension) {
  const std::vector<float> u = testing::RandomUnit(16, 3);
  const std::string v = EncodeVector(9, 2.5f, u);
  std::vector<float> out(16);
  float norm = 0;
  ASSERT_TRUE(DecodeVector(9, v, 16, out.data(), &norm).ok());
  EXPECT_EQ(out, u);
  EXPECT_EQ(norm, 2.5f);
  std::vector<float> big(17);
  EXPECT_EQ(DecodeVector(9, v, 17, big.data(), &norm).code(), StatusCode::kDataLoss);
}

TEST(RecordsTest, LabelKeysSortInLabelOrder) {
  EXPECT_LT(LabelKey(255), LabelKey(256));
  EXPECT_LT(LabelKey(1), LabelKey(uint64_t(1) << 40));
  EXPECT_EQ(*ParseLabelKey(LabelKey(123456789)), 123456789u);
  EXPECT_EQ(ParseLabelKey("short").status().code(), StatusCode::kDataLoss);
}

TEST(VectorMathTest, DispatchedDotMatchesTheScalarReference) {
  for (size_t n : {1, 7, 16, 17, 33, 64, 100, 383, 384, 1000}) {
    const std::vector<float> a = testing::RandomUnit(static_cast<uint32_t>(n), n), b = testing::RandomUnit(static_cast<uint32_t>(n), n + 1);
    EXPECT_NEAR(BestDot()(a.data(), b.data(), n), DotScalar(a.data(), b.data(), n), 1e-5f) << n << " " << BestDotName();
  }
}

TEST(VectorMathTest, EveryHalfRoundTripsThroughFloat) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const auto half = static_cast<uint16_t>(h);
    const float f = HalfToFloat(half);
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalf(f), half) << std::hex << h;
  }
}

TEST(VectorMathTest, FloatToHalfRoundsToNearest) {
  EXPECT_EQ(FloatToHalf(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7BFF);
  EXPECT_EQ(FloatToHalf(1e6f), 0x7C00);       // overflow: infinity
  EXPECT_EQ(FloatToHalf(1.0f + 1.0f / 4096), 0x3C00);  // a quarter ulp rounds down
  EXPECT_EQ(FloatToHalf(1.0f + 3.0f / 2048), 0x3C02);  // a tie rounds to even
  EXPECT_EQ(FloatToHalf(6.0e-8f), 0x0001);    // the smallest subnormal
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  for (int i = 0; i < 100000; ++i) {
    const float f = u(rng);
    EXPECT_NEAR(HalfToFloat(FloatToHalf(f)), f, std::fabs(f) / 2048 + 3e-8f);
  }
}

TEST(VectorMathTest, HalfKernelsMatchTheirScalarReferences) {
  for (size_t n : {1, 9, 16, 17, 31, 48, 383, 384, 1000}) {
    const std::vector<float> a = testing::RandomUnit(static_cast<uint32_t>(n), n), b = testing::RandomUnit(static_cast<uint32_t>(n), n + 5);
    std::vector<uint16_t> ha(n), hb(n);
    ToHalf(a, ha.data());
    ToHalf(b, hb.data());
    EXPECT_NEAR(BestDotHalf()(ha.data(), hb.data(), n), DotHalfScalar(ha.data(), hb.data(), n), 1e-5f) << n;
    EXPECT_NEAR(BestDotMixed()(a.data(), hb.data(), n), DotMixedScalar(a.data(), hb.data(), n), 1e-5f) << n;
    EXPECT_NEAR(DotMixedScalar(a.data(), hb.data(), n), DotScalar(a.data(), b.data(), n), 2e-3f) << n;
    for (size_t i = 0; i < n; ++i) ASSERT_EQ(hb[i], FloatToHalf(b[i])) << i;  // the vector path rounds alike
  }
}

TEST(VectorMathTest, NormalizeReturnsTheNormAndRejectsZeroAndNan) {
  std::vector<float> v = {3.0f, 4.0f};
  EXPECT_FLOAT_EQ(*Normalize(v), 5.0f);
  EXPECT_FLOAT_EQ(v[0], 0.6f);
  std::vector<float> zero = {0.0f, 0.0f};
  EXPECT_EQ(Normalize(zero).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> nan = {1.0f, std::nanf("")};
  EXPECT_EQ(Normalize(nan).status().code(), StatusCode::kInvalidArgument);
}

TEST(IndexManifestTest, RoundTripsAndDetectsDamage) {
  testing::TempDir dir;
  EXPECT_EQ(ReadManifest(dir.path()).status().code(), StatusCode::kNotFound);
  IndexManifest m;
  m.dim = 384;
  m.m = 16;
  m.ef_construction = 100;
  m.db_identity = "abc-123";
  m.epoch = 77;
  m.next_label = 1000;
  m.live = 990;
  m.payload = "hnsw-000000000000004d.bin";
  m.payload_bytes = 12345;
  m.payload_xxh3 = 0xDEADBEEF;
  ASSERT_TRUE(WriteManifest(dir.path(), m).ok());
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "INDEX.tmp"));
  auto back = ReadManifest(dir.path());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(back->epoch, 77u);
  EXPECT_EQ(back->db_identity, "abc-123");
  EXPECT_EQ(back->payload, m.payload);
  EXPECT_EQ(back->payload_xxh3, 0xDEADBEEFu);
  std::string text;
  {
    std::ifstream in(dir.path() / "INDEX");
    text.assign(std::istreambuf_iterator<char>(in), {});
  }
  text.replace(text.find("epoch=4d"), 8, "epoch=4e");  // one changed field
  { std::ofstream(dir.path() / "INDEX") << text; }
  EXPECT_EQ(ReadManifest(dir.path()).status().code(), StatusCode::kDataLoss);
  { std::ofstream(dir.path() / "INDEX") << text.substr(0, text.size() / 2); }  // torn
  EXPECT_EQ(ReadManifest(dir.path()).status().code(), StatusCode::kDataLoss);
}

}  // namespace
}  // namespace kvtier::query_store
