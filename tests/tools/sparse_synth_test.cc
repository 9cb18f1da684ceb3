// The synthetic sparse-attention generator (tools/kvtier/sparse_synth.h): deterministic in
// its seed, the planted structure is where it says, and the true attention mass is a
// distribution that the sink and the needles dominate.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "sparse_synth.h"

namespace kvtier::synth {
namespace {

SparseSynthOptions Small() {
  return {.kv_heads = 2, .group = 2, .tokens = 4096, .head_dim = 64, .steps = 3, .seed = 7};
}

TEST(SparseSynthTest, SameSeedSameSequenceOtherSeedDiffers) {
  auto a = GenerateSparseSequence(Small());
  auto b = GenerateSparseSequence(Small());
  ASSERT_TRUE(a.ok()) << a.status().message();
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(a->keys, b->keys);
  EXPECT_EQ(a->queries, b->queries);
  SparseSynthOptions o = Small();
  o.seed = 8;
  auto c = GenerateSparseSequence(o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->keys, c->keys);
}

TEST(SparseSynthTest, MoreStepsKeepTheKeysAndExtendTheTrace) {
  auto a = GenerateSparseSequence(Small());
  SparseSynthOptions o = Small();
  o.steps = 6;
  auto b = GenerateSparseSequence(o);
  auto q = GenerateDriftingQueries(o);
  ASSERT_TRUE(a.ok() && b.ok() && q.ok());
  EXPECT_EQ(a->keys, b->keys);
  EXPECT_TRUE(std::equal(a->queries.begin(), a->queries.end(), b->queries.begin()));
  EXPECT_EQ(*q, b->queries);
  EXPECT_EQ(a->needles.size(), 2u * Small().needle_clusters);
}

TEST(SparseSynthTest, ShapesAndDriftingQueries) {
  auto s = GenerateSparseSequence(Small());
  ASSERT_TRUE(s.ok());
  const SparseSynthOptions o = Small();
  EXPECT_EQ(s->keys.size(), size_t{o.kv_heads} * o.tokens * o.head_dim);
  EXPECT_EQ(s->values.size(), s->keys.size());
  EXPECT_EQ(s->queries.size(), size_t{o.steps} * o.q_heads() * o.head_dim);
  auto q0 = s->StepQueries(0), q1 = s->StepQueries(1);
  double dot = 0, n0 = 0, n1 = 0;
  for (size_t i = 0; i < o.head_dim; ++i) {
    dot += q0[i] * q1[i];
    n0 += q0[i] * q0[i];
    n1 += q1[i] * q1[i];
  }
  EXPECT_NEAR(std::sqrt(n0), o.query_scale * std::sqrt(double(o.head_dim)), 1e-3);
  const double cosine = dot / std::sqrt(n0 * n1);
  EXPECT_GT(cosine, 0.9);  // one step of drift moves the query a little
  EXPECT_LT(cosine, 1.0 - 1e-6);
}

TEST(SparseSynthTest, NeedlesAndSinkCarryTheTopAttention) {
  auto s = GenerateSparseSequence(Small());
  ASSERT_TRUE(s.ok());
  const SparseSynthOptions o = Small();
  std::vector<double> mass(size_t{o.kv_heads} * o.tokens);
  TrueTokenMass(o.kv_heads, o.q_heads(), o.head_dim, o.tokens, s->keys, s->StepQueries(0), mass);
  const uint32_t blocks = o.tokens / 16;
  std::vector<double> block(size_t{o.kv_heads} * blocks);
  TrueBlockMass(o.kv_heads, o.tokens, 16, mass, block);
  for (uint32_t h = 0; h < o.kv_heads; ++h) {
    const double* m = &mass[size_t{h} * o.tokens];
    EXPECT_NEAR(std::accumulate(m, m + o.tokens, 0.0), 1.0, 1e-9);
    EXPECT_NEAR(std::accumulate(&block[size_t{h} * blocks], &block[size_t{h + 1} * blocks], 0.0), 1.0, 1e-9);
    const double median = [&] {
      std::vector<double> v(m, m + o.tokens);
      std::nth_element(v.begin(), v.begin() + v.size() / 2, v.end());
      return v[v.size() / 2];
    }();
    EXPECT_GT(m[0], 100 * median) << "sink";
    for (const NeedleCluster& n : s->needles) {
      if (n.kv_head != h) continue;
      EXPECT_GT(m[n.first_token], 20 * median) << "needle at " << n.first_token;
    }
  }
}

TEST(SparseSynthTest, RejectsBadOptions) {
  SparseSynthOptions o = Small();
  o.tokens = 100;
  EXPECT_FALSE(GenerateSparseSequence(o).ok());
  o = Small();
  o.ar_rho = 1.0f;
  EXPECT_FALSE(o.Validate().ok());
  o = Small();
  o.kv_heads = 0;
  EXPECT_FALSE(o.Validate().ok());
}

}  // namespace
}  // namespace kvtier::synth
