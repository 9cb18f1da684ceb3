// What the Quest selection GPU tests share (quest_select_gpu_test.cc, quest_topk_gpu_test.cc):
// a batch case (requests of different lengths, Llama-like heads), its random int8 bounds,
// scales, queries and slots, and the selection parameters the cases use.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <span>
#include <vector>

#include "quest_select.cuh"
#include "reference/quest_select.h"
#include "reference/sparse_attention.h"

namespace kvtier::kernels::quest_gpu_test {

struct Case {
  uint32_t q_heads, kv_heads, d;
  std::vector<uint32_t> blocks;  // per request
  QuestSelectParams params;
  QuestQueryType query_type = QuestQueryType::kFloat32;
};

// Readable, deterministic parameter text (ctest shows it; the default prints raw bytes,
// pointers included).
inline void PrintTo(const Case& c, std::ostream* os) {
  *os << c.q_heads << "q/" << c.kv_heads << "kv d" << c.d << " blocks";
  for (uint32_t b : c.blocks) *os << ' ' << b;
  *os << " budget " << c.params.budget_tokens << " sinks " << c.params.sink_blocks
      << (c.params.combine == GqaCombine::kMax ? " max" : " sum") << " query type " << static_cast<int>(c.query_type);
}

struct Batch {
  std::vector<uint32_t> block_offsets{0};
  std::vector<int8_t> bounds;
  std::vector<float> scales;
  std::vector<float> queries;       // fp32 values (what the reference sees)
  std::vector<uint16_t> queries16;  // the same values as bf16/fp16 bits, for 16-bit query types
  std::vector<uint32_t> slots;
};

inline Batch Build(const Case& c, uint32_t seed) {
  Batch b;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const auto requests = static_cast<uint32_t>(c.blocks.size());
  for (uint32_t r = 0; r < requests; ++r) {
    const uint32_t n = c.blocks[r];
    b.block_offsets.push_back(b.block_offsets.back() + n);
    std::vector<float> bounds(size_t{c.kv_heads} * n * 2 * c.d);
    for (size_t s = 0; s < size_t{c.kv_heads} * n; ++s) {
      const float spread = 0.2f + std::fabs(nd(rng));  // slices of different scales
      for (uint32_t i = 0; i < c.d; ++i) {
        const float mid = spread * nd(rng), half = 0.5f * spread * std::fabs(nd(rng));
        bounds[(s * 2) * c.d + i] = mid - half;
        bounds[(s * 2 + 1) * c.d + i] = mid + half;
      }
    }
    const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d, .blocks = n};
    std::vector<int8_t> q(bounds.size());
    std::vector<float> scales(size_t{c.kv_heads} * n);
    QuantizeQuestBounds(shape, bounds, q, scales);
    b.bounds.insert(b.bounds.end(), q.begin(), q.end());
    b.scales.insert(b.scales.end(), scales.begin(), scales.end());
  }
  b.queries.resize(size_t{requests} * c.q_heads * c.d);
  for (float& x : b.queries) {
    x = nd(rng) + 0.3f;
    if (c.query_type != QuestQueryType::kFloat32) {
      const HalfType t = c.query_type == QuestQueryType::kBf16 ? HalfType::kBf16 : HalfType::kFp16;
      b.queries16.push_back(FloatToHalf(t, x));
      x = HalfToFloat(t, b.queries16.back());
    }
  }
  b.slots.resize(b.scales.size());
  std::iota(b.slots.begin(), b.slots.end(), 1000u);
  std::shuffle(b.slots.begin(), b.slots.end(), rng);
  return b;
}

inline QuestSelectParams P(uint32_t budget, uint32_t sinks, GqaCombine combine) {
  return {.budget_tokens = budget, .block_tokens = 16, .sink_blocks = sinks, .min_blocks = 3, .combine = combine};
}

inline constexpr GqaCombine kSum = GqaCombine::kSum;
inline constexpr GqaCombine kMax = GqaCombine::kMax;

// Σ_g Σ_i |q_gi| · scale · max(|m_q,i|, |M_q,i|) for slice `s` of `bounds` (int8 codes) and KV
// head h's `group` queries of `queries`: the magnitude of the summed terms, which scales the
// tolerance of a score against the CPU reference.
inline double BoundMagnitude(std::span<const float> queries, std::span<const int8_t> bounds, float scale, size_t s,
                             uint32_t h, uint32_t group, uint32_t d) {
  double mag = 0;
  for (uint32_t g = 0; g < group; ++g) {
    for (uint32_t i = 0; i < d; ++i) {
      const int m = std::max(std::abs(int(bounds[s * 2 * d + i])), std::abs(int(bounds[s * 2 * d + d + i])));
      mag += std::fabs(queries[(size_t{h} * group + g) * d + i]) * scale * m;
    }
  }
  return mag;
}

// Both NaN, or the same bits.
inline bool SameScore(float x, float y) {
  return (std::isnan(x) && std::isnan(y)) || std::memcmp(&x, &y, sizeof x) == 0;
}

}  // namespace kvtier::kernels::quest_gpu_test
