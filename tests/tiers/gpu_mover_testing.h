// Helpers of the GPU tier and mover tests (gpu_tier_test, gpu_mover_engine_test): a DRAM tier
// pinned with the device, slot addresses, fresh random bytes.
#pragma once

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "cuda_host_pinner.h"
#include "cuda_util.h"
#include "host_tier.h"
#include "kvtier/mover.h"

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

// Poisons the HBM range [hbm_base, + hbm_bytes) with 0x5A, runs `h2d` and then `d2h` (which
// waits for it), and copies the HBM range as the copies left it to `device`.
inline void RoundTripThroughHbm(Mover& up, Mover& down, MoveBatch h2d, MoveBatch d2h, std::byte* hbm_base,
                                uint64_t hbm_bytes, std::vector<std::byte>* device) {
  ASSERT_EQ(cudaMemset(hbm_base, 0x5A, hbm_bytes), cudaSuccess);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  d2h.wait_for.push_back(up.Submit(std::move(h2d)));
  ASSERT_TRUE(down.Submit(std::move(d2h)).Wait().ok());
  device->resize(hbm_bytes);
  ASSERT_EQ(cudaMemcpy(device->data(), hbm_base, hbm_bytes, cudaMemcpyDeviceToHost), cudaSuccess);
}

}  // namespace kvtier::gpu_testing
