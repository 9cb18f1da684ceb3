// The reference follows the kernel's algorithm (one pass, online softmax, fp32) so that a
// difference between the two points at a bug, not at a different rounding recipe; the
// reference test checks it against an independent two-pass softmax in double.
#include "reference/sparse_attention.h"

#include <bit>
#include <cmath>
#include <limits>

namespace kvtier::kernels {

float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

uint16_t FloatToBf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even; may carry into the exponent (→ inf)
  return static_cast<uint16_t>(u >> 16);
}

float Fp16ToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {  // zero or subnormal: mant · 2^-24, exact in float
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign != 0 ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

uint16_t FloatToFp16(float f) {
  const uint32_t bits = std::bit_cast<uint32_t>(f);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t u = bits & 0x7fffffffu;
  if (u > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);  // NaN
  if (u >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // ≥ 65520 rounds to inf
  if (u < 0x38800000u) {  // below 2^-14: subnormal half; x·2^24 is exact, rint rounds to even
    const float scaled = std::bit_cast<float>(u) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  const uint32_t r = u + 0xfffu + ((u >> 13) & 1u);  // round to nearest even at bit 13
  return static_cast<uint16_t>(sign | ((r - (112u << 23)) >> 13));
}

void SparseAttention(const SparseAttentionShape& s, HalfType type, std::span<const uint16_t> arena,
                     std::span<const uint16_t> queries, const PageListsView& pages, std::span<float> out) {
  const uint32_t d = s.head_dim, group = s.group();
  const float scale = 1.0f / std::sqrt(static_cast<float>(d));
  const uint64_t v_offset = uint64_t{s.block_tokens} * d;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  for (uint32_t r = 0; r < s.requests; ++r) {
    for (uint32_t h = 0; h < s.kv_heads; ++h) {
      const uint32_t row = r * s.kv_heads + h;
      const uint32_t begin = pages.offsets[row], end = pages.offsets[row + 1];
      for (uint32_t g = 0; g < group; ++g) {
        const uint32_t qh = h * group + g;
        const uint16_t* q = &queries[(size_t{r} * s.q_heads + qh) * d];
        // The head's output doubles as the accumulator.
        const std::span<float> acc = out.subspan((size_t{r} * s.q_heads + qh) * d, d);
        for (float& x : acc) x = 0.0f;
        float m = kNegInf, l = 0.0f;
        for (uint32_t p = begin; p < end; ++p) {
          const uint16_t* slice = &arena[pages.slots[p] * s.slot_elems()];
          const uint32_t valid = p + 1 == end ? pages.last_page_tokens[row] : s.block_tokens;
          for (uint32_t t = 0; t < valid; ++t) {
            const uint16_t* k = slice + size_t{t} * d;
            const uint16_t* v = slice + v_offset + size_t{t} * d;
            float dot = 0.0f;
            for (uint32_t i = 0; i < d; ++i) dot += HalfToFloat(type, q[i]) * HalfToFloat(type, k[i]);
            const float score = dot * scale;
            if (score > m) {  // new running max: rescale what was accumulated (exp(-inf) = 0 at the start)
              const float alpha = std::exp(m - score);
              l *= alpha;
              for (float& x : acc) x *= alpha;
              m = score;
            }
            const float w = std::exp(score - m);
            l += w;
            for (uint32_t i = 0; i < d; ++i) acc[i] += w * HalfToFloat(type, v[i]);
          }
        }
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        for (float& x : acc) x *= inv;
      }
    }
  }
}

}  // namespace kvtier::kernels
