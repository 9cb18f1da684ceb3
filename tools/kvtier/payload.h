// Self-verifying block payloads for the demo and the benchmarks: the bytes of a block are a
// pure function of its key, so any block read back can be checked without keeping a copy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kvtier/block_key.h"

namespace kvtier::cli {

inline uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

inline uint64_t PayloadSeed(const BlockKey& key) {
  uint64_t a, b;
  std::memcpy(&a, key.chain.bytes.data() + 8, 8);
  std::memcpy(&b, key.chain.bytes.data() + 16, 8);
  return SplitMix64(a ^ SplitMix64(b + key.layer.value()));
}

// Fills `bytes` (a multiple of 8) with the payload of `key`.
inline void FillPayload(const BlockKey& key, std::byte* dst, uint64_t bytes) {
  const uint64_t seed = PayloadSeed(key);
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    const uint64_t w = SplitMix64(seed + i);
    std::memcpy(dst + 8 * i, &w, 8);
  }
}

// True when `src` holds exactly the payload of `key`.
inline bool CheckPayload(const BlockKey& key, const std::byte* src, uint64_t bytes) {
  const uint64_t seed = PayloadSeed(key);
  for (uint64_t i = 0; i < bytes / 8; ++i) {
    uint64_t w;
    std::memcpy(&w, src + 8 * i, 8);
    if (w != SplitMix64(seed + i)) return false;
  }
  return true;
}

}  // namespace kvtier::cli
