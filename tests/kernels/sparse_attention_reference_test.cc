// The sparse decode attention CPU reference (kernels/reference/sparse_attention.h) against an
// independent, straightforward implementation written here: gather the listed tokens, all
// scores, max, Σexp, weighted sum of values — two passes in double. Also: the 16-bit float
// conversions (exhaustive round trips, nearest-value property, rounding edge cases), and
// attention over a Quest selection of every block equals dense attention. Random data;
// relative error <= 1e-4 (the reference accumulates in fp32).
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <numeric>
#include <ostream>
#include <random>
#include <vector>

#include "reference/quest_select.h"
#include "reference/sparse_attention.h"

namespace kvtier::kernels {
namespace {

TEST(HalfConversion, EveryFiniteValueRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto x = static_cast<uint16_t>(h);
    const float f16 = Fp16ToFloat(x), b16 = Bf16ToFloat(x);
    if (std::isnan(f16)) {
      EXPECT_TRUE(std::isnan(Fp16ToFloat(FloatToFp16(f16)))) << h;
    } else {
      EXPECT_EQ(FloatToFp16(f16), x) << h;
    }
    if (std::isnan(b16)) {
      EXPECT_TRUE(std::isnan(Bf16ToFloat(FloatToBf16(b16)))) << h;
    } else {
      EXPECT_EQ(FloatToBf16(b16), x) << h;
    }
  }
}

TEST(HalfConversion, KnownValuesAndTiesToEven) {
  EXPECT_EQ(Fp16ToFloat(0x3c00), 1.0f);
  EXPECT_EQ(Fp16ToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(Fp16ToFloat(0x7bff), 65504.0f);
  EXPECT_EQ(Bf16ToFloat(0x3f80), 1.0f);
  EXPECT_EQ(FloatToFp16(1.0f + std::ldexp(1.0f, -11)), 0x3c00);      // tie → even (down)
  EXPECT_EQ(FloatToFp16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);  // tie → even (up)
  EXPECT_EQ(FloatToFp16(65519.0f), 0x7bff);
  EXPECT_EQ(FloatToFp16(65520.0f), 0x7c00);
  EXPECT_EQ(FloatToFp16(-65520.0f), 0xfc00);
  EXPECT_EQ(FloatToFp16(std::ldexp(1.0f, -25)), 0x0000);      // tie between 0 and the least subnormal
  EXPECT_EQ(FloatToFp16(3 * std::ldexp(1.0f, -25)), 0x0002);  // tie → even
  EXPECT_EQ(FloatToFp16(std::ldexp(1023.5f, -24)), 0x0400);   // rounds up into the least normal
  EXPECT_EQ(FloatToBf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);
  EXPECT_EQ(FloatToBf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_EQ(FloatToBf16(-2.0f), 0xc000);
}

// The conversion returns a nearest representable value (checked against both neighbours).
TEST(HalfConversion, RandomFloatsRoundToANearestValue) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> ex(-30, 17);
  std::uniform_real_distribution<float> mant(1.0f, 2.0f);
  for (int i = 0; i < 200000; ++i) {
    const float f = std::ldexp(mant(rng), ex(rng)) * (i % 2 ? -1.0f : 1.0f);
    for (HalfType t : {HalfType::kBf16, HalfType::kFp16}) {
      const uint16_t h = FloatToHalf(t, f);
      const float got = HalfToFloat(t, h);
      if (std::isinf(got)) {
        ASSERT_GE(std::fabs(f), 65504.0f) << f;
        continue;
      }
      const double err = std::fabs(double(got) - f);
      for (int step : {-1, 1}) {
        const auto n = static_cast<uint16_t>(h + step);
        const float other = HalfToFloat(t, n);
        if (std::isnan(other) || ((n ^ h) & 0x8000) != 0) continue;  // wrapped past the sign or into NaN
        ASSERT_LE(err, std::fabs(double(other) - f)) << f << " type " << int(t);
      }
    }
  }
}

struct Problem {
  SparseAttentionShape shape;
  HalfType type = HalfType::kBf16;
  std::vector<uint16_t> arena, queries;
  std::vector<uint32_t> offsets, slots, last;
};

uint16_t RandomHalf(HalfType t, std::mt19937& rng, float sigma) {
  std::normal_distribution<float> nd(0.0f, sigma);
  return FloatToHalf(t, nd(rng));
}

// Requests of `blocks[r]` blocks (the last partial with `tail[r]` tokens); each KV head's
// slices at random slots of the arena; the page list of a row is every block in order.
Problem DenseProblem(uint32_t q_heads, uint32_t kv_heads, uint32_t d, uint32_t bt, std::vector<uint32_t> blocks,
                     std::vector<uint32_t> tail, HalfType type, uint32_t seed) {
  Problem p;
  p.type = type;
  const auto requests = static_cast<uint32_t>(blocks.size());
  p.shape = {.requests = requests, .q_heads = q_heads, .kv_heads = kv_heads, .head_dim = d, .block_tokens = bt,
             .slot_bytes = uint64_t{2} * bt * d * 2 + 64};  // a padded slot stride
  std::mt19937 rng(seed);
  const uint32_t total = std::accumulate(blocks.begin(), blocks.end(), 0u) * kv_heads;
  std::vector<uint32_t> perm(total + 3);  // a few spare slots never listed
  std::iota(perm.begin(), perm.end(), 0u);
  std::shuffle(perm.begin(), perm.end(), rng);
  p.arena.resize(perm.size() * p.shape.slot_elems());
  for (uint16_t& x : p.arena) x = RandomHalf(type, rng, 1.0f);
  p.queries.resize(size_t{requests} * q_heads * d);
  for (uint16_t& x : p.queries) x = RandomHalf(type, rng, 2.0f);  // spread the softmax a little
  uint32_t next = 0;
  p.offsets.push_back(0);
  for (uint32_t r = 0; r < requests; ++r) {
    for (uint32_t h = 0; h < kv_heads; ++h) {
      for (uint32_t b = 0; b < blocks[r]; ++b) p.slots.push_back(perm[next++]);
      p.offsets.push_back(static_cast<uint32_t>(p.slots.size()));
      p.last.push_back(tail[r]);
    }
  }
  return p;
}

// The independent version: double throughout, two passes.
std::vector<double> Naive(const Problem& p) {
  const auto& s = p.shape;
  const uint32_t d = s.head_dim, g = s.group();
  std::vector<double> out(size_t{s.requests} * s.q_heads * d, 0.0);
  auto half = [&](uint16_t x) { return static_cast<double>(HalfToFloat(p.type, x)); };
  for (uint32_t r = 0; r < s.requests; ++r) {
    for (uint32_t qh = 0; qh < s.q_heads; ++qh) {
      const uint32_t row = r * s.kv_heads + qh / g;
      std::vector<const uint16_t*> keys, values;
      for (uint32_t i = p.offsets[row]; i < p.offsets[row + 1]; ++i) {
        const size_t base = size_t{p.slots[i]} * s.slot_elems();
        const uint32_t n = i + 1 == p.offsets[row + 1] ? p.last[row] : s.block_tokens;
        for (uint32_t t = 0; t < n; ++t) {
          keys.push_back(&p.arena[base + size_t{t} * d]);
          values.push_back(&p.arena[base + (size_t{s.block_tokens} + t) * d]);
        }
      }
      std::vector<double> score(keys.size());
      for (size_t t = 0; t < keys.size(); ++t) {
        double dot = 0;
        for (uint32_t i = 0; i < d; ++i) dot += half(p.queries[(size_t{r} * s.q_heads + qh) * d + i]) * half(keys[t][i]);
        score[t] = dot / std::sqrt(double(d));
      }
      const double mx = *std::max_element(score.begin(), score.end());
      double sum = 0;
      for (double& x : score) sum += (x = std::exp(x - mx));
      for (size_t t = 0; t < keys.size(); ++t)
        for (uint32_t i = 0; i < d; ++i) out[(size_t{r} * s.q_heads + qh) * d + i] += score[t] / sum * half(values[t][i]);
    }
  }
  return out;
}

std::vector<float> Reference(const Problem& p) {
  std::vector<float> out(size_t{p.shape.requests} * p.shape.q_heads * p.shape.head_dim, std::nanf(""));
  SparseAttention(p.shape, p.type, p.arena, p.queries, {.offsets = p.offsets, .slots = p.slots, .last_page_tokens = p.last},
                  out);
  return out;
}

void ExpectClose(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (double x : want) scale = std::max(scale, std::fabs(x));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - want[i]), 1e-4 * scale + 1e-4 * std::fabs(want[i])) << "element " << i;
  }
}

struct Shape {
  uint32_t q_heads, kv_heads, d, bt;
  std::vector<uint32_t> blocks, tail;
};

// Readable, deterministic parameter text (the default prints raw bytes, pointers included).
void PrintTo(const Shape& c, std::ostream* os) {
  *os << c.q_heads << "q/" << c.kv_heads << "kv d" << c.d << " bt" << c.bt << " blocks";
  for (uint32_t b : c.blocks) *os << ' ' << b;
  *os << " tail";
  for (uint32_t t : c.tail) *os << ' ' << t;
}

class SparseAttentionReference : public ::testing::TestWithParam<Shape> {};

TEST_P(SparseAttentionReference, MatchesTwoPassSoftmax) {
  const Shape& c = GetParam();
  for (HalfType t : {HalfType::kBf16, HalfType::kFp16}) {
    const Problem p = DenseProblem(c.q_heads, c.kv_heads, c.d, c.bt, c.blocks, c.tail, t, 11 + c.d + int(t));
    ExpectClose(Reference(p), Naive(p));
  }
}

INSTANTIATE_TEST_SUITE_P(Shapes, SparseAttentionReference,
                         ::testing::Values(Shape{4, 1, 64, 16, {1}, {1}},            // one token
                                           Shape{8, 2, 128, 16, {1}, {16}},          // one full block
                                           Shape{32, 8, 128, 16, {9}, {5}},          // Llama-3-8B group 4
                                           Shape{8, 1, 64, 8, {3, 1, 6}, {8, 2, 7}},  // batch 3, group 8
                                           Shape{2, 2, 128, 32, {4, 2}, {17, 32}}));  // group 1

// A sparse page list (a subset of each row's blocks, in ascending order) is the attention
// over exactly those tokens: compare with the naive version on the same lists.
TEST(SparseAttentionReference, SubsetOfPagesMatchesTwoPassSoftmax) {
  Problem p = DenseProblem(16, 4, 128, 16, {40, 25}, {3, 16}, HalfType::kBf16, 5);
  std::mt19937 rng(9);
  std::vector<uint32_t> offsets{0}, slots, last;
  for (uint32_t row = 0; row + 1 < p.offsets.size(); ++row) {
    const uint32_t b = p.offsets[row], e = p.offsets[row + 1];
    for (uint32_t i = b; i + 1 < e; ++i) {
      if (rng() % 3 == 0) slots.push_back(p.slots[i]);
    }
    slots.push_back(p.slots[e - 1]);  // the partial block, as selection forces it
    offsets.push_back(static_cast<uint32_t>(slots.size()));
    last.push_back(p.last[row]);
  }
  p.offsets = offsets;
  p.slots = slots;
  p.last = last;
  ExpectClose(Reference(p), Naive(p));
}

// Quest selection with a budget of every block lists every block; attention over that list is
// dense attention, bit for bit.
TEST(SparseAttentionReference, SelectingEveryBlockEqualsDense) {
  const uint32_t q_heads = 32, kv_heads = 8, d = 128, bt = 16, blocks = 37;
  const Problem dense = DenseProblem(q_heads, kv_heads, d, bt, {blocks}, {9}, HalfType::kBf16, 21);
  const QuestShape qs{.q_heads = q_heads, .kv_heads = kv_heads, .head_dim = d, .blocks = blocks};
  const QuestSelectParams params{.budget_tokens = blocks * bt, .block_tokens = bt, .sink_blocks = 1};
  ASSERT_EQ(QuestBudgetBlocks(qs, params), blocks);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  std::vector<float> scores(size_t{kv_heads} * blocks);
  for (float& x : scores) x = nd(rng);
  std::vector<uint32_t> selected(size_t{kv_heads} * blocks);
  QuestSelectTopK(qs, params, scores, selected);
  Problem sparse = dense;
  sparse.slots.clear();
  for (uint32_t h = 0; h < kv_heads; ++h) {
    for (uint32_t i = 0; i < blocks; ++i) sparse.slots.push_back(dense.slots[h * blocks + selected[h * blocks + i]]);
  }
  EXPECT_EQ(sparse.slots, dense.slots);
  const std::vector<float> a = Reference(dense), b = Reference(sparse);
  for (size_t i = 0; i < a.size(); ++i) ASSERT_EQ(std::bit_cast<uint32_t>(a[i]), std::bit_cast<uint32_t>(b[i])) << i;
}

}  // namespace
}  // namespace kvtier::kernels
