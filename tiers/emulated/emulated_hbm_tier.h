// EmulatedHbmTier: the HBM stand-in for machines without a GPU. Same contract as the GPU
// tier (fixed slots, fenced reuse, device-addressable memory), held in host memory, so
// every policy and test runs in CI.
//
// Thread-safe.
#pragma once

#include <memory>

#include "kvtier/tier.h"
#include "memory_region.h"
#include "slot_pool.h"

namespace kvtier {

// The device id the emulated tier reports in its addresses.
inline constexpr DeviceId kEmulatedDevice{-2};

struct EmulatedHbmOptions {
  uint64_t slot_bytes = 0;
  uint32_t slot_count = 0;
  Status Validate() const;
};

class EmulatedHbmTier final : public Tier {
 public:
  static Result<std::unique_ptr<EmulatedHbmTier>> Create(const EmulatedHbmOptions& options);

  std::string_view name() const override { return "emulated-hbm"; }
  const TierCaps& caps() const override { return caps_; }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override { return slots_.Reserve(count, "hbm"); }
  void Release(std::span<const SlotId> slots, Fence last_use) override { slots_.Release(slots, last_use); }
  Location Locate(SlotId slot) const override;
  TierUsage usage() const override { return slots_.usage(); }

 private:
  EmulatedHbmTier(MemoryRegion region, TierCaps caps);
  MemoryRegion region_;
  TierCaps caps_;
  SlotPool slots_;
};

}  // namespace kvtier
