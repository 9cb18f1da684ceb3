// EmulatedHbmTier: the HBM stand-in for machines without a GPU. Same contract as the GPU
// tier (fixed slots, fenced reuse, device-addressable memory), held in host memory, so
// every policy and test runs in CI.
//
// Thread-safe.
#pragma once

#include <memory>

#include "kvtier/tier.h"
#include "memory_region.h"
#include "metadata_pool.h"
#include "slot_pool.h"

namespace kvtier {

// The device id the emulated tier reports in its addresses.
inline constexpr DeviceId kEmulatedDevice{-2};

struct EmulatedHbmOptions {
  uint64_t slot_bytes = 0;
  uint32_t slot_count = 0;
  // Bytes for metadata arenas (ReserveMetadata: the Quest slice metadata), allocated with
  // the slots and counted apart from them in usage(); rounded up to 256. 0: none.
  uint64_t metadata_bytes = 0;
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
  TierUsage usage() const override;
  Result<MetadataArena> ReserveMetadata(uint64_t bytes) override { return metadata_.Reserve(bytes); }
  void ReleaseMetadata(const MetadataArena& arena) override { metadata_.Release(arena); }

 private:
  EmulatedHbmTier(MemoryRegion region, TierCaps caps, uint64_t metadata_bytes);
  MemoryRegion region_;
  TierCaps caps_;
  SlotPool slots_;
  MetadataPool metadata_;
};

}  // namespace kvtier
