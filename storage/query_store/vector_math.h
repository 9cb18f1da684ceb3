// Float32 vector kernels for the query store: dot product (dispatched at run time to
// AVX-512F, AVX2+FMA or a scalar loop, so one binary is fast on every x86-64) and L2
// normalisation. Pure functions; thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "kvtier/status.h"

namespace kvtier::query_store {

using DotFn = float (*)(const float* a, const float* b, size_t n);
// The ANN graph keeps its copy of each vector in IEEE half precision (the float32 original
// stays in RocksDB): half the memory and memory traffic per distance.
using DotHalfFn = float (*)(const uint16_t* a, const uint16_t* b, size_t n);
using DotMixedFn = float (*)(const float* a, const uint16_t* b, size_t n);

// The fastest dot-product kernel this CPU runs (chosen once, on first use).
DotFn BestDot();
std::string_view BestDotName();  // "avx512f", "avx2+fma" or "scalar"
DotHalfFn BestDotHalf();
DotMixedFn BestDotMixed();
// The portable references, for tests.
float DotScalar(const float* a, const float* b, size_t n);
float DotHalfScalar(const uint16_t* a, const uint16_t* b, size_t n);
float DotMixedScalar(const float* a, const uint16_t* b, size_t n);

// float32 <-> IEEE half (round to nearest even; out-of-range values become infinities,
// which unit vectors never produce).
uint16_t FloatToHalf(float f);
float HalfToFloat(uint16_t h);
void ToHalf(std::span<const float> in, uint16_t* out);

inline float Dot(std::span<const float> a, std::span<const float> b) { return BestDot()(a.data(), b.data(), a.size()); }

// Scales `v` to unit L2 norm in place and returns its original norm. kInvalidArgument if
// an element is NaN or infinite, or the norm is zero (a direction is undefined).
Result<float> Normalize(std::span<float> v);

}  // namespace kvtier::query_store
