// The Quest CPU reference (kernels/reference/quest_select.h) against an independent,
// straightforward implementation written here: bounds as min/max loops over the keys, the
// criticality in its sign form Σ q_i·(q_i ≥ 0 ? M_i : m_i), and top-k as a full sort of
// every block with the forced ones first. Fresh random data per case; outputs are poisoned
// (NaN / sentinel) before each call so an unwritten entry fails.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "reference/quest_select.h"

namespace kvtier::kernels {
namespace {

constexpr float kPoison = std::numeric_limits<float>::quiet_NaN();

struct Problem {
  QuestShape shape;
  uint32_t tokens = 0, block_tokens = 0;
  std::vector<float> keys;     // [kv][tokens][d]
  std::vector<float> queries;  // [q_heads][d]
  std::vector<float> bounds;   // [kv][blocks][2][d]
};

// Min/max per channel over each block's keys, written as plainly as possible.
std::vector<float> BoundsOf(const std::vector<float>& keys, uint32_t kv, uint32_t tokens, uint32_t d, uint32_t bt) {
  const uint32_t blocks = (tokens + bt - 1) / bt;
  std::vector<float> out(size_t{kv} * blocks * 2 * d);
  for (uint32_t h = 0; h < kv; ++h)
    for (uint32_t b = 0; b < blocks; ++b)
      for (uint32_t i = 0; i < d; ++i) {
        float lo = std::numeric_limits<float>::infinity(), hi = -lo;
        for (uint32_t t = b * bt; t < std::min(tokens, (b + 1) * bt); ++t) {
          lo = std::min(lo, keys[(size_t{h} * tokens + t) * d + i]);
          hi = std::max(hi, keys[(size_t{h} * tokens + t) * d + i]);
        }
        out[((size_t{h} * blocks + b) * 2) * d + i] = lo;
        out[((size_t{h} * blocks + b) * 2 + 1) * d + i] = hi;
      }
  return out;
}

Problem Random(uint32_t q_heads, uint32_t kv, uint32_t d, uint32_t tokens, uint32_t bt, uint64_t seed) {
  Problem p;
  p.tokens = tokens;
  p.block_tokens = bt;
  p.shape = {.q_heads = q_heads, .kv_heads = kv, .head_dim = d, .blocks = (tokens + bt - 1) / bt};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> scale(0.1f, 4.0f);
  p.keys.resize(size_t{kv} * tokens * d);
  for (float& x : p.keys) x = nd(rng) * scale(rng);
  p.queries.resize(size_t{q_heads} * d);
  for (float& x : p.queries) x = nd(rng);
  p.bounds = BoundsOf(p.keys, kv, tokens, d, bt);
  return p;
}

// The independent criticality.
std::vector<double> NaiveScores(const Problem& p, GqaCombine combine) {
  const auto& s = p.shape;
  const uint32_t d = s.head_dim, group = s.q_heads / s.kv_heads;
  std::vector<double> out(size_t{s.kv_heads} * s.blocks);
  for (uint32_t h = 0; h < s.kv_heads; ++h)
    for (uint32_t b = 0; b < s.blocks; ++b) {
      std::vector<double> per_head;
      for (uint32_t g = 0; g < group; ++g) {
        const float* q = &p.queries[(size_t{h} * group + g) * d];
        double u = 0;
        for (uint32_t i = 0; i < d; ++i) {
          const float lo = p.bounds[((size_t{h} * s.blocks + b) * 2) * d + i];
          const float hi = p.bounds[((size_t{h} * s.blocks + b) * 2 + 1) * d + i];
          u += double(q[i]) * (q[i] >= 0 ? hi : lo);
        }
        per_head.push_back(u);
      }
      out[size_t{h} * s.blocks + b] = combine == GqaCombine::kSum
                                          ? std::accumulate(per_head.begin(), per_head.end(), 0.0)
                                          : *std::max_element(per_head.begin(), per_head.end());
    }
  return out;
}

// The independent selection: sort every block by (forced, score desc, index asc).
std::vector<uint32_t> NaiveSelect(const QuestShape& s, const QuestSelectParams& p, const std::vector<float>& scores,
                                  uint32_t h, uint32_t k) {
  std::vector<uint32_t> order(s.blocks);
  std::iota(order.begin(), order.end(), 0u);
  auto forced = [&](uint32_t b) { return b < p.sink_blocks || b + 1 == s.blocks; };
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    if (forced(a) != forced(b)) return forced(a);
    return scores[size_t{h} * s.blocks + a] > scores[size_t{h} * s.blocks + b];
  });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

TEST(QuestSelectReferenceTest, ScoresMatchTheSignFormOfTheBound) {
  for (uint64_t seed : {1, 2, 3}) {
    for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
      Problem p = Random(8, 2, 64, 1000 + 37 * seed, 16, seed);  // the last block is partial
      std::vector<float> scores(size_t{p.shape.kv_heads} * p.shape.blocks, kPoison);
      QuestScores(p.shape, combine, p.queries, p.bounds, scores);
      const auto want = NaiveScores(p, combine);
      for (size_t i = 0; i < scores.size(); ++i) {
        ASSERT_LE(std::fabs(scores[i] - want[i]), 1e-5 * std::max(1.0, std::fabs(want[i]))) << i;
      }
    }
  }
}

TEST(QuestSelectReferenceTest, BoundIsAtLeastEveryRealKeysDotProduct) {
  Problem p = Random(3, 3, 32, 517, 16, 11);  // group 1: the score is one head's bound
  std::vector<float> scores(size_t{p.shape.kv_heads} * p.shape.blocks, kPoison);
  QuestScores(p.shape, GqaCombine::kSum, p.queries, p.bounds, scores);
  const uint32_t d = p.shape.head_dim;
  for (uint32_t h = 0; h < p.shape.kv_heads; ++h)
    for (uint32_t t = 0; t < p.tokens; ++t) {
      double dot = 0;
      for (uint32_t i = 0; i < d; ++i) dot += double(p.queries[h * d + i]) * p.keys[(size_t{h} * p.tokens + t) * d + i];
      const float bound = scores[size_t{h} * p.shape.blocks + t / p.block_tokens];
      ASSERT_GE(double(bound), dot - 1e-6 * std::max(1.0, std::fabs(dot))) << "head " << h << " token " << t;
    }
}

// Bounds built to stress the rounding: values at the peak, tiny ones, exact zeros, huge.
std::vector<float> AdversarialBounds(const QuestShape& s, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_int_distribution<int> kind(0, 5);
  std::vector<float> b(size_t{s.kv_heads} * s.blocks * 2 * s.head_dim);
  for (size_t slice = 0; slice < size_t{s.kv_heads} * s.blocks; ++slice) {
    const float mag = std::pow(10.0f, float(kind(rng)) - 3.0f);  // 1e-3 .. 1e2
    for (uint32_t i = 0; i < s.head_dim; ++i) {
      float lo = nd(rng) * mag, hi = nd(rng) * mag;
      if (lo > hi) std::swap(lo, hi);
      switch (kind(rng)) {
        case 0: lo = hi = 0.0f; break;
        case 1: hi = lo; break;
        case 2: lo = -3 * mag; hi = 3 * mag; break;  // likely the peak of the slice
        default: break;
      }
      b[slice * 2 * s.head_dim + i] = lo;
      b[slice * 2 * s.head_dim + s.head_dim + i] = hi;
    }
  }
  for (size_t i = 0; i < 2 * s.head_dim; ++i) b[i] = 0.0f;  // one all-zero slice
  return b;
}

TEST(QuestSelectReferenceTest, QuantizedBoundsCoverTheExactOnesChannelByChannel) {
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    QuestShape s{.q_heads = 4, .kv_heads = 2, .head_dim = 64, .blocks = 50};
    auto bounds = AdversarialBounds(s, seed);
    std::vector<int8_t> q(bounds.size(), int8_t{-128});
    std::vector<float> scales(size_t{s.kv_heads} * s.blocks, kPoison);
    QuantizeQuestBounds(s, bounds, q, scales);
    EXPECT_EQ(scales[0], 1.0f) << "all-zero slice";
    for (size_t slice = 0; slice < scales.size(); ++slice) {
      float peak = 0;
      for (uint32_t i = 0; i < 2 * s.head_dim; ++i) peak = std::max(peak, std::fabs(bounds[slice * 2 * s.head_dim + i]));
      ASSERT_TRUE(std::isfinite(scales[slice]) && scales[slice] > 0);
      if (peak > 0) {
        ASSERT_LE(scales[slice], peak / 127.0f * (1 + 1e-6f)) << "scale is max/127 up to rounding";
      }
      for (uint32_t i = 0; i < s.head_dim; ++i) {
        const size_t lo = slice * 2 * s.head_dim + i, hi = lo + s.head_dim;
        ASSERT_GE(q[lo], -127);
        ASSERT_LE(q[hi], 127);
        ASSERT_LE(scales[slice] * float(q[lo]), bounds[lo]) << slice << "/" << i;
        ASSERT_GE(scales[slice] * float(q[hi]), bounds[hi]) << slice << "/" << i;
        ASSERT_LE(scales[slice] * float(q[hi]) - bounds[hi], scales[slice] * 1.0001f) << "at most one step loose";
      }
    }
  }
}

TEST(QuestSelectReferenceTest, QuantizedScoreIsNeverBelowTheExactScore) {
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
      Problem p = Random(8, 2, 128, 1600, 16, 100 + seed);
      if (seed % 2 == 0) p.bounds = AdversarialBounds(p.shape, seed);
      std::vector<int8_t> q(p.bounds.size());
      std::vector<float> scales(size_t{p.shape.kv_heads} * p.shape.blocks);
      QuantizeQuestBounds(p.shape, p.bounds, q, scales);
      std::vector<float> exact(scales.size(), kPoison), quant(scales.size(), kPoison);
      QuestScores(p.shape, combine, p.queries, p.bounds, exact);
      QuestScoresQuantized(p.shape, combine, p.queries, q, scales, quant);
      for (size_t i = 0; i < exact.size(); ++i) ASSERT_GE(quant[i], exact[i]) << i;
    }
  }
}

TEST(QuestSelectReferenceTest, TopKMatchesTheNaiveSortAndKeepsTheInvariants) {
  for (uint64_t seed = 1; seed <= 12; ++seed) {
    std::mt19937_64 rng(seed);
    const uint32_t blocks = 1 + rng() % 300;
    QuestShape s{.q_heads = 4, .kv_heads = 2, .head_dim = 8, .blocks = blocks};
    QuestSelectParams params{.budget_tokens = uint32_t(16 * (rng() % 64)), .block_tokens = 16,
                             .sink_blocks = uint32_t(rng() % 4), .min_blocks = 3};
    std::vector<float> scores(size_t{s.kv_heads} * blocks);
    std::uniform_int_distribution<int> coarse(0, 20);  // many ties
    for (float& x : scores) x = float(coarse(rng));
    const uint32_t k = QuestBudgetBlocks(s, params);
    EXPECT_EQ(k, std::min(blocks, std::max({3u, params.budget_tokens / 16, params.sink_blocks + 1})));
    std::vector<uint32_t> sel(size_t{s.kv_heads} * k, 0xdeadbeef);
    QuestSelectTopK(s, params, scores, sel);
    for (uint32_t h = 0; h < s.kv_heads; ++h) {
      std::vector<uint32_t> row(sel.begin() + h * k, sel.begin() + (h + 1) * k);
      EXPECT_EQ(row, NaiveSelect(s, params, scores, h, k)) << "seed " << seed << " head " << h;
      EXPECT_TRUE(std::is_sorted(row.begin(), row.end()));
      EXPECT_EQ(std::adjacent_find(row.begin(), row.end()), row.end()) << "duplicates";
      EXPECT_TRUE(std::binary_search(row.begin(), row.end(), blocks - 1)) << "current block";
      for (uint32_t b = 0; b < std::min(params.sink_blocks, blocks); ++b) EXPECT_TRUE(std::binary_search(row.begin(), row.end(), b));
    }
  }
}

TEST(QuestSelectReferenceTest, TiesGoToTheLowerBlockAndTheResultIsDeterministic) {
  QuestShape s{.q_heads = 1, .kv_heads = 1, .head_dim = 8, .blocks = 20};
  QuestSelectParams params{.budget_tokens = 5 * 16, .block_tokens = 16, .sink_blocks = 1};
  std::vector<float> scores(20, 1.0f);
  scores[12] = 2.0f;
  std::vector<uint32_t> a(5), b(5);
  QuestSelectTopK(s, params, scores, a);
  QuestSelectTopK(s, params, scores, b);
  EXPECT_EQ(a, (std::vector<uint32_t>{0, 1, 2, 12, 19}));
  EXPECT_EQ(a, b);
  scores[3] = std::numeric_limits<float>::quiet_NaN();  // NaN ranks last
  QuestSelectTopK(s, params, scores, a);
  EXPECT_EQ(a, (std::vector<uint32_t>{0, 1, 2, 12, 19}));
  scores.assign(20, 1.0f);
  scores[3] = std::numeric_limits<float>::quiet_NaN();
  QuestSelectTopK(s, params, scores, a);
  EXPECT_EQ(a, (std::vector<uint32_t>{0, 1, 2, 4, 19}));
}

TEST(QuestSelectReferenceTest, BudgetAtLeastTheSequenceSelectsEveryBlock) {
  for (uint32_t blocks : {1u, 2u, 3u, 7u}) {
    QuestShape s{.q_heads = 2, .kv_heads = 2, .head_dim = 4, .blocks = blocks};
    QuestSelectParams params{.budget_tokens = 2048, .block_tokens = 16, .sink_blocks = 2};
    const uint32_t k = QuestBudgetBlocks(s, params);
    ASSERT_EQ(k, blocks);
    std::vector<float> scores(2 * blocks, 0.5f);
    std::vector<uint32_t> sel(2 * k, 0xdeadbeef), want(k);
    QuestSelectTopK(s, params, scores, sel);
    std::iota(want.begin(), want.end(), 0u);
    EXPECT_EQ(std::vector<uint32_t>(sel.begin(), sel.begin() + k), want);
    EXPECT_EQ(std::vector<uint32_t>(sel.begin() + k, sel.end()), want);
  }
}

TEST(QuestSelectReferenceTest, SinksAndTheCurrentBlockWinOverHigherScores) {
  QuestShape s{.q_heads = 1, .kv_heads = 1, .head_dim = 4, .blocks = 100};
  QuestSelectParams params{.budget_tokens = 64, .block_tokens = 16, .sink_blocks = 2, .min_blocks = 3};
  std::vector<float> scores(100);
  for (uint32_t b = 0; b < 100; ++b) scores[b] = float(b % 50);
  scores[0] = scores[1] = -1e30f;
  scores[99] = -1e30f;
  std::vector<uint32_t> sel(4);
  QuestSelectTopK(s, params, scores, sel);
  EXPECT_EQ(sel, (std::vector<uint32_t>{0, 1, 49, 99}));
}

// ---- The fixed-point form (QuestScoresFixedPoint: what the tensor-core kernel computes). ----

TEST(QuestSelectReferenceTest, FixedPointExponentBracketsThePeak) {
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{0.0f, -0.0f}), 0);
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{1.0f}), 1);  // 2^0 ≤ 1 < 2^1
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{0.75f, -0.5f}), 0);
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{0.1f, -3.0f}), 2);
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{1e-3f}), -9);  // 2^-10 ≤ 1e-3 < 2^-9
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{1.0f, std::numeric_limits<float>::quiet_NaN()}),
            kQuestNonFinite);
  EXPECT_EQ(QuestFixedPointExponent(std::vector<float>{-std::numeric_limits<float>::infinity()}), kQuestNonFinite);
}

TEST(QuestSelectReferenceTest, FixedPointQuantumSumsTheColumnsHalfSteps) {
  const QuestShape s{.q_heads = 4, .kv_heads = 2, .head_dim = 2, .blocks = 1};
  // KV head 0: heads (1, -0.5) and (0.25, 0); KV head 1: (3, 0) and (0, 0).
  std::vector<float> q{1.0f, -0.5f, 0.25f, 0.0f, 3.0f, 0.0f, 0.0f, 0.0f};
  EXPECT_EQ(QuestFixedPointQuantum(s, GqaCombine::kMax, q, 0), std::ldexp(1.0, 1 - 23) + std::ldexp(1.0, -1 - 23));
  EXPECT_EQ(QuestFixedPointQuantum(s, GqaCombine::kMax, q, 1), std::ldexp(1.0, 2 - 23) + std::ldexp(1.0, 0 - 23));
  // kSum: one column, P = (1.25, 0), N = (0, -0.5): E = 1.
  EXPECT_EQ(QuestFixedPointQuantum(s, GqaCombine::kSum, q, 0), std::ldexp(1.0, 1 - 23));
  q[1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(std::isinf(QuestFixedPointQuantum(s, GqaCombine::kSum, q, 0)));
}

// Queries on a coarse grid (small integers): the rounding to fixed point is exact, every sum
// is an integer below 2^24, so the fixed-point score equals the double reference's bit for
// bit — which pins the sign split, the limbs and the exponent without a tolerance.
TEST(QuestSelectReferenceTest, FixedPointIsExactForQueriesOnItsGrid) {
  for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
    for (uint32_t d : {64u, 128u}) {
      const QuestShape s{.q_heads = 8, .kv_heads = 2, .head_dim = d, .blocks = 300};
      std::mt19937_64 rng(d + static_cast<int>(combine));
      std::vector<float> queries(size_t{s.q_heads} * d);
      for (float& x : queries) x = static_cast<float>(static_cast<int>(rng() % 17) - 8);
      std::vector<int8_t> q(size_t{s.kv_heads} * s.blocks * 2 * d);
      for (size_t slice = 0; slice < size_t{s.kv_heads} * s.blocks; ++slice) {
        for (uint32_t i = 0; i < d; ++i) {  // min ≤ max, as QuantizeQuestBounds gives them
          const int x = static_cast<int>(rng() % 255) - 127, y = static_cast<int>(rng() % 255) - 127;
          q[slice * 2 * d + i] = static_cast<int8_t>(std::min(x, y));
          q[slice * 2 * d + d + i] = static_cast<int8_t>(std::max(x, y));
        }
      }
      std::vector<float> scales(size_t{s.kv_heads} * s.blocks, 1.0f);
      std::vector<float> ref(scales.size(), kPoison), fixed(scales.size(), kPoison);
      QuestScoresQuantized(s, combine, queries, q, scales, ref);
      QuestScoresFixedPoint(s, combine, queries, q, scales, fixed);
      for (size_t i = 0; i < ref.size(); ++i) ASSERT_EQ(fixed[i], ref[i]) << "slice " << i << " d " << d;
    }
  }
}

// Random and adversarial queries (one large component, the rest 10^-4 of it: the rounding
// error of the small ones is the whole difference): |fixed − quantized| stays within the fp32
// term of the kernels' tolerance plus the documented Σ 2^(E − 23)·scale·Σ|b_j|.
TEST(QuestSelectReferenceTest, FixedPointStaysWithinItsBoundOfTheQuantizedScores) {
  for (uint64_t seed = 1; seed <= 6; ++seed) {
    for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
      Problem p = Random(12, 3, 128, 1000, 16, 300 + seed);
      const QuestShape& s = p.shape;
      const uint32_t d = s.head_dim, group = s.group();
      if (seed % 2 == 0) {
        std::mt19937_64 rng(seed);
        for (float& x : p.queries) x = (rng() % 2 ? 1e-4f : -1e-4f) * static_cast<float>(rng() % 1000) / 999.0f;
        for (uint32_t g = 0; g < s.q_heads; ++g) p.queries[size_t{g} * d + g % d] = g % 2 ? 1.0f : -1.0f;
      }
      std::vector<int8_t> q(p.bounds.size());
      std::vector<float> scales(size_t{s.kv_heads} * s.blocks);
      QuantizeQuestBounds(s, p.bounds, q, scales);
      std::vector<float> ref(scales.size(), kPoison), fixed(scales.size(), kPoison);
      QuestScoresQuantized(s, combine, p.queries, q, scales, ref);
      QuestScoresFixedPoint(s, combine, p.queries, q, scales, fixed);
      double worst = 0;
      for (uint32_t h = 0; h < s.kv_heads; ++h) {
        const double quantum = QuestFixedPointQuantum(s, combine, p.queries, h);
        for (uint32_t b = 0; b < s.blocks; ++b) {
          const size_t slice = size_t{h} * s.blocks + b;
          double mag = 0, bytes = 0;
          for (uint32_t i = 0; i < d; ++i) {
            const int lo = q[slice * 2 * d + i], hi = q[slice * 2 * d + d + i];
            bytes += std::abs(lo) + std::abs(hi);
            for (uint32_t g = 0; g < group; ++g) {
              mag += std::fabs(p.queries[(size_t{h} * group + g) * d + i]) * std::max(std::abs(lo), std::abs(hi));
            }
          }
          const double tol = (1e-5 * mag + quantum * bytes) * scales[slice] + 1e-30;
          const double diff = std::fabs(double(fixed[slice]) - ref[slice]);
          ASSERT_LE(diff, tol) << "seed " << seed << " slice " << slice;
          worst = std::max(worst, diff / tol);
        }
      }
      EXPECT_GT(worst, 0.0) << "the fixed point never differed: the test would not notice a wrong bound";
    }
  }
}

TEST(QuestSelectReferenceTest, FixedPointScoresOfANonFiniteQueryAreNanAndRankLast) {
  const QuestShape s{.q_heads = 4, .kv_heads = 2, .head_dim = 64, .blocks = 40};
  Problem p = Random(4, 2, 64, 40 * 16, 16, 77);
  std::vector<int8_t> q(p.bounds.size());
  std::vector<float> scales(size_t{s.kv_heads} * s.blocks);
  QuantizeQuestBounds(s, p.bounds, q, scales);
  p.queries[1 * 64 + 5] = std::numeric_limits<float>::quiet_NaN();   // KV head 0, query head 1
  p.queries[3 * 64 + 9] = std::numeric_limits<float>::infinity();    // KV head 1, query head 3
  for (GqaCombine combine : {GqaCombine::kSum, GqaCombine::kMax}) {
    std::vector<float> fixed(scales.size(), 0.0f);
    QuestScoresFixedPoint(s, combine, p.queries, q, scales, fixed);
    for (float x : fixed) ASSERT_TRUE(std::isnan(x));
    const QuestSelectParams params{.budget_tokens = 64, .block_tokens = 16, .sink_blocks = 1, .combine = combine};
    std::vector<uint32_t> sel(size_t{s.kv_heads} * QuestBudgetBlocks(s, params), 0xAAAAAAAAu);
    QuestSelectTopK(s, params, fixed, sel);  // every score NaN: ties on -inf, the lowest blocks
    EXPECT_EQ(std::vector<uint32_t>(sel.begin(), sel.begin() + 4), (std::vector<uint32_t>{0, 1, 2, 39}));
  }
}

}  // namespace
}  // namespace kvtier::kernels
