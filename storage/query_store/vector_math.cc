#include "query_store/vector_math.h"

#include <fmt/format.h>
#include <immintrin.h>

#include <cmath>
#include <cstring>

namespace kvtier::query_store {
namespace {

// Each kernel keeps several independent accumulators so the FMA latency is hidden; the
// tail is handled with masked loads (AVX-512) or a scalar loop.
__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
         acc3 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  if (i < n) {
    const auto mask = static_cast<__mmask16>((1u << (n - i)) - 1u);
    acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, a + i), _mm512_maskz_loadu_ps(mask, b + i), acc1);
  }
  // A store and a scalar sum: GCC 12's _mm512_reduce_add_ps trips -Wuninitialized.
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3)));
  float total = 0;
  for (float x : lanes) total += x;
  return total;
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, size_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  const __m256 sum = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps(sum, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  float total = _mm_cvtss_f32(s);
  for (; i < n; ++i) total += a[i] * b[i];
  return total;
}

// Half-precision kernels: convert 16 (AVX-512) or 8 (F16C) halves to floats, then FMA.
// GCC 12 warns inside its own avx512fintrin.h (`_mm512_undefined_ps` as a mask source), a
// known false positive; silenced for these kernels only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
__attribute__((target("avx512f"))) inline __m512 Load16Halves(const uint16_t* p) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((target("avx2,f16c"))) inline __m256 Load8Halves(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

__attribute__((target("avx512f"))) float DotHalfAvx512(const uint16_t* a, const uint16_t* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(Load16Halves(a + i), Load16Halves(b + i), acc0);
    acc1 = _mm512_fmadd_ps(Load16Halves(a + i + 16), Load16Halves(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(Load16Halves(a + i), Load16Halves(b + i), acc0);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(acc0, acc1));
  float total = 0;
  for (float x : lanes) total += x;
  for (; i < n; ++i) total += HalfToFloat(a[i]) * HalfToFloat(b[i]);
  return total;
}

__attribute__((target("avx512f"))) float DotMixedAvx512(const float* a, const uint16_t* b, size_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), Load16Halves(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), Load16Halves(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), Load16Halves(b + i), acc0);
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, _mm512_add_ps(acc0, acc1));
  float total = 0;
  for (float x : lanes) total += x;
  for (; i < n; ++i) total += a[i] * HalfToFloat(b[i]);
  return total;
}

__attribute__((target("avx2,fma,f16c"))) float DotHalfAvx2(const uint16_t* a, const uint16_t* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(Load8Halves(a + i), Load8Halves(b + i), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float total = 0;
  for (float x : lanes) total += x;
  for (; i < n; ++i) total += HalfToFloat(a[i]) * HalfToFloat(b[i]);
  return total;
}

__attribute__((target("avx2,fma,f16c"))) float DotMixedAvx2(const float* a, const uint16_t* b, size_t n) {
  __m256 acc = _mm256_setzero_ps();
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), Load8Halves(b + i), acc);
  }
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float total = 0;
  for (float x : lanes) total += x;
  for (; i < n; ++i) total += a[i] * HalfToFloat(b[i]);
  return total;
}

__attribute__((target("avx512f"))) void ToHalfAvx512(const float* in, uint16_t* out, size_t n) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) out[i] = FloatToHalf(in[i]);
}

#pragma GCC diagnostic pop

struct Choice {
  DotFn fn;
  DotHalfFn half;
  DotMixedFn mixed;
  std::string_view name;
};

Choice Choose() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return {DotAvx512, DotHalfAvx512, DotMixedAvx512, "avx512f"};
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    return {DotAvx2, DotHalfAvx2, DotMixedAvx2, "avx2+fma+f16c"};
  }
  return {DotScalar, DotHalfScalar, DotMixedScalar, "scalar"};
}

const Choice& Chosen() {
  static const Choice choice = Choose();  // thread-safe static initialisation
  return choice;
}

}  // namespace

float DotScalar(const float* a, const float* b, size_t n) {
  float total = 0;
  for (size_t i = 0; i < n; ++i) total += a[i] * b[i];
  return total;
}

float DotHalfScalar(const uint16_t* a, const uint16_t* b, size_t n) {
  float total = 0;
  for (size_t i = 0; i < n; ++i) total += HalfToFloat(a[i]) * HalfToFloat(b[i]);
  return total;
}

float DotMixedScalar(const float* a, const uint16_t* b, size_t n) {
  float total = 0;
  for (size_t i = 0; i < n; ++i) total += a[i] * HalfToFloat(b[i]);
  return total;
}

uint16_t FloatToHalf(float f) {
  uint32_t x;
  std::memcpy(&x, &f, sizeof(x));
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t abs = x & 0x7FFFFFFFu;
  if (abs >= 0x7F800000u) return static_cast<uint16_t>(sign | 0x7C00u | (abs > 0x7F800000u ? 0x200u : 0u));  // inf, nan
  if (abs >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds past the largest half
  if (abs < 0x33000001u) return static_cast<uint16_t>(sign);           // rounds to zero
  int exp = static_cast<int>(abs >> 23) - 127 + 15;
  uint32_t mant = (abs & 0x7FFFFFu) | 0x800000u;                       // with the implicit 1
  int shift = 13;
  if (exp <= 0) {  // subnormal half
    shift += 1 - exp;
    exp = 0;
  }
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u), half_way = 1u << (shift - 1);
  if (rem > half_way || (rem == half_way && (h & 1u))) ++h;  // round to nearest even
  if (exp == 0) return static_cast<uint16_t>(sign | h);       // a carry into the exponent is right
  return static_cast<uint16_t>(sign | ((uint32_t(exp) << 10) + (h & 0x3FFu) + ((h >> 11) << 10)));
}

float HalfToFloat(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu, mant = h & 0x3FFu;
  uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      uint32_t m = mant;
      do {
        ++e;
        m <<= 1;
      } while ((m & 0x400u) == 0);
      x = sign | (uint32_t(127 - 15 - e) << 23) | ((m & 0x3FFu) << 13);
    }
  } else if (exp == 0x1F) {
    x = sign | 0x7F800000u | (mant << 13);
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, sizeof(f));
  return f;
}

void ToHalf(std::span<const float> in, uint16_t* out) {
  static const bool avx512 = __builtin_cpu_supports("avx512f");
  if (avx512) {
    ToHalfAvx512(in.data(), out, in.size());
    return;
  }
  for (size_t i = 0; i < in.size(); ++i) out[i] = FloatToHalf(in[i]);
}

DotHalfFn BestDotHalf() { return Chosen().half; }
DotMixedFn BestDotMixed() { return Chosen().mixed; }
DotFn BestDot() { return Chosen().fn; }
std::string_view BestDotName() { return Chosen().name; }

Result<float> Normalize(std::span<float> v) {
  double sum = 0;  // double: a 4096-d sum of squares in float loses digits
  for (size_t i = 0; i < v.size(); ++i) {
    if (!std::isfinite(v[i])) return Status::InvalidArgument(fmt::format("element {} is {}", i, v[i]));
    sum += double(v[i]) * double(v[i]);
  }
  const double norm = std::sqrt(sum);
  if (!(norm > 0) || !std::isfinite(norm)) return Status::InvalidArgument("the vector has norm 0 or overflows");
  const double inv = 1.0 / norm;
  for (float& x : v) x = static_cast<float>(x * inv);
  return static_cast<float>(norm);
}

}  // namespace kvtier::query_store
