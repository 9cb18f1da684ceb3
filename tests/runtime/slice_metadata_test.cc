// SliceMetadata: token-by-token appends give the same bounds as one bulk append and as a
// direct min/max; the partial block is covered; the compact form is the reference's
// quantisation of the fp32 bounds; bytes are what the header says; bad input changes nothing.
#include "kvtier/slice_metadata.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "reference/quest_select.h"

namespace kvtier {
namespace {

constexpr uint32_t kKv = 3, kDim = 8, kBt = 4;

SliceMetadataOptions Options(bool exact) {
  return {.layers = 2, .kv_heads = kKv, .head_dim = kDim, .block_tokens = kBt, .keep_exact_bounds = exact};
}

std::vector<float> RandomKeys(uint32_t tokens, uint64_t seed) {  // [tokens][kv][d]
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 2.0f);
  std::vector<float> k(size_t{tokens} * kKv * kDim);
  for (float& x : k) x = nd(rng);
  return k;
}

// Direct min/max of block b of head h over keys [tokens][kv][d].
std::vector<float> DirectBounds(const std::vector<float>& keys, uint32_t tokens, uint32_t h, uint32_t b) {
  std::vector<float> out(2 * kDim);
  for (uint32_t i = 0; i < kDim; ++i) {
    float lo = std::numeric_limits<float>::infinity(), hi = -lo;
    for (uint32_t t = b * kBt; t < std::min(tokens, (b + 1) * kBt); ++t) {
      lo = std::min(lo, keys[(size_t{t} * kKv + h) * kDim + i]);
      hi = std::max(hi, keys[(size_t{t} * kKv + h) * kDim + i]);
    }
    out[i] = lo;
    out[kDim + i] = hi;
  }
  return out;
}

TEST(SliceMetadataTest, TokenByTokenEqualsBulkEqualsDirectMinMax) {
  const uint32_t tokens = 23;  // 5 full blocks and a partial one of 3 tokens
  const auto keys = RandomKeys(tokens, 1);
  auto one = SliceMetadata::Create(Options(true));
  auto bulk = SliceMetadata::Create(Options(true));
  ASSERT_TRUE(one.ok() && bulk.ok());
  for (uint32_t t = 0; t < tokens; ++t) {
    ASSERT_TRUE(one->Append(LayerId{1}, std::span(keys).subspan(size_t{t} * kKv * kDim, kKv * kDim), 1).ok());
  }
  ASSERT_TRUE(bulk->Append(LayerId{1}, keys, tokens).ok());
  EXPECT_EQ(one->tokens(LayerId{1}), tokens);
  EXPECT_EQ(one->blocks(LayerId{1}), 6u);
  EXPECT_EQ(one->blocks(LayerId{0}), 0u);
  for (uint32_t h = 0; h < kKv; ++h) {
    auto a = one->Bounds(LayerId{1}, h);
    auto b = bulk->Bounds(LayerId{1}, h);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(a->blocks, 6u);
    EXPECT_TRUE(std::equal(a->exact.begin(), a->exact.end(), b->exact.begin(), b->exact.end()));
    EXPECT_TRUE(std::equal(a->compact.begin(), a->compact.end(), b->compact.begin(), b->compact.end()));
    EXPECT_TRUE(std::equal(a->scales.begin(), a->scales.end(), b->scales.begin(), b->scales.end()));
    for (uint32_t blk = 0; blk < 6; ++blk) {
      const auto want = DirectBounds(keys, tokens, h, blk);
      EXPECT_TRUE(std::equal(want.begin(), want.end(), a->exact.begin() + blk * 2 * kDim)) << "block " << blk;
      // The compact slot is the reference's quantisation of exactly these bounds.
      std::vector<int8_t> q(2 * kDim);
      float scale = 0;
      kernels::QuantizeQuestBounds({.q_heads = 1, .kv_heads = 1, .head_dim = kDim, .blocks = 1}, want, q,
                                   std::span(&scale, 1));
      EXPECT_EQ(scale, a->scales[blk]);
      EXPECT_TRUE(std::equal(q.begin(), q.end(), a->compact.begin() + blk * 2 * kDim));
    }
    const auto partial = one->PartialBounds(LayerId{1}, h);
    const auto want = DirectBounds(keys, tokens, h, 5);
    EXPECT_TRUE(std::equal(partial.begin(), partial.end(), want.begin(), want.end()));
  }
}

TEST(SliceMetadataTest, HeadMajorAndChunkedAppendsAgree) {
  const uint32_t tokens = 18;
  const auto keys = RandomKeys(tokens, 2);  // [tokens][kv][d]
  std::vector<float> head_major(keys.size());
  for (uint32_t t = 0; t < tokens; ++t)
    for (uint32_t h = 0; h < kKv; ++h)
      std::copy_n(&keys[(size_t{t} * kKv + h) * kDim], kDim, &head_major[(size_t{h} * tokens + t) * kDim]);
  auto a = SliceMetadata::Create(Options(true));
  auto b = SliceMetadata::Create(Options(true));
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(a->Append(LayerId{0}, head_major, tokens, KeyLayout::kHeadMajor).ok());
  const uint32_t chunks[] = {3, 7, 1, 7};  // crosses block edges mid-chunk
  uint32_t at = 0;
  for (uint32_t n : chunks) {
    ASSERT_TRUE(b->Append(LayerId{0}, std::span(keys).subspan(size_t{at} * kKv * kDim, size_t{n} * kKv * kDim), n).ok());
    at += n;
  }
  for (uint32_t h = 0; h < kKv; ++h) {
    auto x = a->Bounds(LayerId{0}, h);
    auto y = b->Bounds(LayerId{0}, h);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_TRUE(std::equal(x->exact.begin(), x->exact.end(), y->exact.begin(), y->exact.end()));
    EXPECT_TRUE(std::equal(x->compact.begin(), x->compact.end(), y->compact.begin(), y->compact.end()));
  }
}

TEST(SliceMetadataTest, PartialBlockIsRefreshedOnEveryAppend) {
  auto m = SliceMetadata::Create(Options(false));
  ASSERT_TRUE(m.ok());
  std::vector<float> key(kKv * kDim, 1.0f);
  ASSERT_TRUE(m->Append(LayerId{0}, key, 1).ok());
  auto v = m->Bounds(LayerId{0}, 0);
  ASSERT_TRUE(v.ok());
  ASSERT_EQ(v->blocks, 1u);
  EXPECT_TRUE(v->exact.empty());
  EXPECT_GE(v->scales[0] * v->compact[kDim], 1.0f);  // max covers 1
  std::fill(key.begin(), key.end(), 5.0f);
  ASSERT_TRUE(m->Append(LayerId{0}, key, 1).ok());
  v = m->Bounds(LayerId{0}, 0);
  ASSERT_TRUE(v.ok());
  EXPECT_GE(v->scales[0] * v->compact[kDim], 5.0f);
  EXPECT_LE(v->scales[0] * v->compact[0], 1.0f);
  ASSERT_TRUE(m->Append(LayerId{0}, std::vector<float>(2 * kKv * kDim, 0.0f), 2).ok());  // fills block 0
  EXPECT_TRUE(m->PartialBounds(LayerId{0}, 0).empty());
  EXPECT_EQ(m->blocks(LayerId{0}), 1u);
}

TEST(SliceMetadataTest, BytesCountCompactExactAndRunning) {
  for (bool exact : {false, true}) {
    auto m = SliceMetadata::Create(Options(exact));
    ASSERT_TRUE(m.ok());
    const uint64_t running = 2ull * kKv * 8 * kDim;  // 2 layers x kv heads x 8·d
    EXPECT_EQ(m->bytes().value(), running);
    ASSERT_TRUE(m->Append(LayerId{0}, RandomKeys(9, 3), 9).ok());  // 3 blocks in layer 0
    const uint64_t per_slice = 2 * kDim + 4 + (exact ? 8 * kDim : 0);
    EXPECT_EQ(m->bytes().value(), running + 3 * kKv * per_slice);
  }
}

TEST(SliceMetadataTest, RefusesBadInputAndChangesNothing) {
  EXPECT_FALSE(SliceMetadata::Create({.layers = 0, .kv_heads = 1, .head_dim = 8}).ok());
  EXPECT_FALSE(SliceMetadata::Create({.layers = 1, .kv_heads = 1, .head_dim = 8, .block_tokens = 0}).ok());
  EXPECT_FALSE(SliceMetadata::Create({.layers = 1, .kv_heads = 1, .head_dim = 2048}).ok());
  auto m = SliceMetadata::Create(Options(false));
  ASSERT_TRUE(m.ok());
  auto keys = RandomKeys(5, 4);
  EXPECT_EQ(m->Append(LayerId{2}, keys, 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m->Append(LayerId{0}, keys, 4).code(), StatusCode::kInvalidArgument);
  keys[17] = std::numeric_limits<float>::infinity();
  EXPECT_EQ(m->Append(LayerId{0}, keys, 5).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(m->tokens(LayerId{0}), 0u);
  EXPECT_FALSE(m->Bounds(LayerId{0}, kKv).ok());
  EXPECT_FALSE(m->Bounds(LayerId{5}, 0).ok());
}

}  // namespace
}  // namespace kvtier
