// The reference accumulates the bound in double and rounds once to fp32: it is the yardstick
// of the CUDA kernel. Because rounding is monotone, a dequantised bound that is ≥ the exact
// one channel by channel gives a score that is ≥ the exact score after rounding too — the
// property the compact form promises.
#include "reference/quest_select.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace kvtier::kernels {
namespace {

// Σ_i max(q_i·lo_i, q_i·hi_i) = Σ_i q_i·(q_i ≥ 0 ? hi_i : lo_i) since lo ≤ hi.
double Bound(const float* q, const float* lo, const float* hi, uint32_t d) {
  double s = 0;
  for (uint32_t i = 0; i < d; ++i) {
    const double a = double(q[i]) * lo[i], b = double(q[i]) * hi[i];
    s += std::max(a, b);
  }
  return s;
}

double Combine(GqaCombine combine, double acc, double bound, uint32_t g) {
  if (g == 0) return bound;
  return combine == GqaCombine::kSum ? acc + bound : std::max(acc, bound);
}

// The scale of one slice: the smallest fp32 with 127·scale ≥ max|bound| (see the header).
float SliceScale(const float* lo, const float* hi, uint32_t d) {
  float peak = 0;
  for (uint32_t i = 0; i < d; ++i) peak = std::max({peak, std::fabs(lo[i]), std::fabs(hi[i])});
  if (peak == 0.0f) return 1.0f;
  float scale = peak / 127.0f;
  while (scale * 127.0f < peak) scale = std::nextafter(scale, std::numeric_limits<float>::infinity());
  return scale;
}

int8_t QuantizeDown(float x, float scale) {
  float v = std::floor(x / scale);
  if (v * scale > x) v -= 1.0f;  // the quotient rounded up to an integer
  return static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
}

int8_t QuantizeUp(float x, float scale) {
  float v = std::ceil(x / scale);
  if (v * scale < x) v += 1.0f;
  return static_cast<int8_t>(std::clamp(v, -127.0f, 127.0f));
}

}  // namespace

uint32_t QuestBudgetBlocks(const QuestShape& shape, const QuestSelectParams& params) {
  const uint32_t by_budget = params.block_tokens == 0 ? 0 : params.budget_tokens / params.block_tokens;
  return std::min(shape.blocks, std::max({params.min_blocks, by_budget, params.sink_blocks + 1}));
}

void QuantizeQuestBounds(const QuestShape& shape, std::span<const float> bounds, std::span<int8_t> q,
                         std::span<float> scales) {
  const uint32_t d = shape.head_dim;
  const size_t slices = size_t{shape.kv_heads} * shape.blocks;
  for (size_t s = 0; s < slices; ++s) {
    const float* lo = &bounds[s * 2 * d];
    const float* hi = lo + d;
    const float scale = SliceScale(lo, hi, d);
    scales[s] = scale;
    int8_t* qlo = &q[s * 2 * d];
    int8_t* qhi = qlo + d;
    for (uint32_t i = 0; i < d; ++i) {
      qlo[i] = QuantizeDown(lo[i], scale);
      qhi[i] = QuantizeUp(hi[i], scale);
    }
  }
}

void QuestScores(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                 std::span<const float> bounds, std::span<float> scores) {
  const uint32_t d = shape.head_dim, group = shape.group();
  for (uint32_t h = 0; h < shape.kv_heads; ++h) {
    for (uint32_t b = 0; b < shape.blocks; ++b) {
      const float* lo = &bounds[(size_t{h} * shape.blocks + b) * 2 * d];
      double acc = 0;
      for (uint32_t g = 0; g < group; ++g) {
        acc = Combine(combine, acc, Bound(&queries[(size_t{h} * group + g) * d], lo, lo + d, d), g);
      }
      scores[size_t{h} * shape.blocks + b] = static_cast<float>(acc);
    }
  }
}

void QuestScoresQuantized(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                          std::span<const int8_t> q, std::span<const float> scales, std::span<float> scores) {
  const uint32_t d = shape.head_dim, group = shape.group();
  std::vector<float> lo(d), hi(d);
  for (uint32_t h = 0; h < shape.kv_heads; ++h) {
    for (uint32_t b = 0; b < shape.blocks; ++b) {
      const size_t slice = size_t{h} * shape.blocks + b;
      const float scale = scales[slice];
      for (uint32_t i = 0; i < d; ++i) {  // fp32 products: the values QuantizeQuestBounds checked
        lo[i] = scale * static_cast<float>(q[slice * 2 * d + i]);
        hi[i] = scale * static_cast<float>(q[slice * 2 * d + d + i]);
      }
      double acc = 0;
      for (uint32_t g = 0; g < group; ++g) {
        acc = Combine(combine, acc, Bound(&queries[(size_t{h} * group + g) * d], lo.data(), hi.data(), d), g);
      }
      scores[slice] = static_cast<float>(acc);
    }
  }
}

int QuestFixedPointExponent(std::span<const float> w) {
  float peak = 0;
  for (float x : w) {
    if (!std::isfinite(x)) return kQuestNonFinite;
    peak = std::max(peak, std::fabs(x));
  }
  return peak == 0.0f ? 0 : std::ilogb(peak) + 1;
}

namespace {

uint32_t Columns(const QuestShape& shape, GqaCombine combine) {
  return combine == GqaCombine::kSum ? 1 : shape.group();
}

// Column c of KV head h: its 2d weights w (min bounds, then max bounds) and its exponent
// (kQuestNonFinite if a query value it uses is not finite).
int ColumnWeights(const QuestShape& shape, GqaCombine combine, std::span<const float> queries, uint32_t h, uint32_t c,
                  std::vector<float>& w) {
  const uint32_t d = shape.head_dim, group = shape.group();
  const float* qh = &queries[size_t{h} * group * d];
  w.resize(2 * size_t{d});
  bool finite = true;
  for (uint32_t i = 0; i < d; ++i) {
    if (combine == GqaCombine::kSum) {
      float pos = 0.0f, neg = 0.0f;  // fp32, in g order (as the kernels stage them)
      for (uint32_t g = 0; g < group; ++g) {
        const float x = qh[size_t{g} * d + i];
        finite = finite && std::isfinite(x);
        pos += std::max(x, 0.0f);
        neg += std::min(x, 0.0f);
      }
      w[i] = neg;
      w[d + i] = pos;
    } else {
      const float x = qh[size_t{c} * d + i];
      finite = finite && std::isfinite(x);
      w[i] = std::min(x, 0.0f);
      w[d + i] = std::max(x, 0.0f);
    }
  }
  return finite ? QuestFixedPointExponent(w) : kQuestNonFinite;
}

}  // namespace

double QuestFixedPointQuantum(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                              uint32_t h) {
  std::vector<float> w;
  double sum = 0;
  for (uint32_t c = 0; c < Columns(shape, combine); ++c) {
    const int e = ColumnWeights(shape, combine, queries, h, c, w);
    if (e == kQuestNonFinite) return std::numeric_limits<double>::infinity();
    sum += std::ldexp(1.0, e - (kQuestFixedPointBits + 1));
  }
  return sum;
}

void QuestScoresFixedPoint(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                           std::span<const int8_t> q, std::span<const float> scales, std::span<float> scores) {
  const uint32_t d = shape.head_dim;
  const uint32_t columns = Columns(shape, combine);
  std::vector<float> w(2 * size_t{d});
  std::vector<int32_t> weights(size_t{columns} * 2 * d);
  std::vector<int> exponents(columns);
  for (uint32_t h = 0; h < shape.kv_heads; ++h) {
    for (uint32_t c = 0; c < columns; ++c) {
      const int e = ColumnWeights(shape, combine, queries, h, c, w);
      exponents[c] = e;
      for (uint32_t j = 0; j < 2 * d; ++j) {
        weights[size_t{c} * 2 * d + j] =
            e == kQuestNonFinite ? 0 : static_cast<int32_t>(std::nearbyint(std::ldexp(w[j], kQuestFixedPointBits - e)));
      }
    }
    for (uint32_t b = 0; b < shape.blocks; ++b) {
      const size_t slice = size_t{h} * shape.blocks + b;
      const int8_t* bytes = &q[slice * 2 * d];
      float best = -std::numeric_limits<float>::infinity();
      bool nan = false;
      for (uint32_t c = 0; c < columns; ++c) {
        if (exponents[c] == kQuestNonFinite) {
          nan = true;
          continue;
        }
        int64_t s = 0;
        for (uint32_t j = 0; j < 2 * d; ++j) s += int64_t{weights[size_t{c} * 2 * d + j]} * bytes[j];
        best = std::max(best, std::ldexp(static_cast<float>(s), exponents[c] - kQuestFixedPointBits));
      }
      scores[slice] = nan ? std::numeric_limits<float>::quiet_NaN() : best * scales[slice];
    }
  }
}

void QuestSelectTopK(const QuestShape& shape, const QuestSelectParams& params, std::span<const float> scores,
                     std::span<uint32_t> selected) {
  const uint32_t blocks = shape.blocks, k = QuestBudgetBlocks(shape, params);
  if (blocks == 0) return;
  const uint32_t sinks = std::min(params.sink_blocks, blocks);
  std::vector<uint32_t> candidates;
  candidates.reserve(blocks);
  for (uint32_t h = 0; h < shape.kv_heads; ++h) {
    uint32_t* out = &selected[size_t{h} * k];
    if (k >= blocks) {
      std::iota(out, out + k, 0u);
      continue;
    }
    const float* s = &scores[size_t{h} * blocks];
    // NaN ranks last, so the order stays a strict weak order; ties go to the lower index.
    auto key = [s](uint32_t b) { return std::isnan(s[b]) ? -std::numeric_limits<float>::infinity() : s[b]; };
    auto better = [&key](uint32_t a, uint32_t b) { return key(a) > key(b) || (key(a) == key(b) && a < b); };
    uint32_t n = 0;
    for (uint32_t b = 0; b < sinks; ++b) out[n++] = b;
    if (blocks - 1 >= sinks) out[n++] = blocks - 1;
    candidates.clear();
    for (uint32_t b = sinks; b + 1 < blocks; ++b) candidates.push_back(b);
    const uint32_t rest = k - n;  // k ≥ sinks + 1 and k < blocks, so rest ≤ candidates
    std::nth_element(candidates.begin(), candidates.begin() + rest, candidates.end(), better);
    std::copy(candidates.begin(), candidates.begin() + rest, out + n);
    std::sort(out, out + k);
  }
}

}  // namespace kvtier::kernels
