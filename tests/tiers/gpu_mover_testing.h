// Helpers of the GPU tier and mover tests (gpu_tier_test, gpu_mover_engine_test): a DRAM tier
// pinned with the device, slot addresses, fresh random bytes.
#pragma once

#include <cstring>
#include <memory>
#include <random>

#include "cuda_host_pinner.h"
#include "cuda_util.h"
#include "host_tier.h"

namespace kvtier::gpu_testing {

inline bool HaveDevice() { return CudaDeviceCount() > 0; }

// A DRAM tier of `slots` slots of `slot_bytes`, registered with the device; null if that fails.
inline std::unique_ptr<HostTier> PinnedDram(uint64_t slot_bytes, uint32_t slots) {
  auto pinner = CudaHostPinner::Create();
  if (!pinner.ok()) return nullptr;
  HostTierOptions o;
  o.slot_bytes = slot_bytes;
  o.slot_count = slots;
  o.pinner = *pinner;
  auto t = HostTier::Create(o);
  return t.ok() ? std::move(t).value() : nullptr;
}

inline std::byte* Ptr(const Tier& t, SlotId s) { return std::get<MemoryAddress>(t.Locate(s)).ptr; }

// Random words from `seed` (the same seed gives the same bytes; never all zeros).
inline void FillRandom(std::byte* p, uint64_t bytes, uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (uint64_t i = 0; i + 8 <= bytes; i += 8) {
    const uint64_t w = rng();
    std::memcpy(p + i, &w, 8);
  }
}

}  // namespace kvtier::gpu_testing
