// GpuHbmTier: the HBM tier. One cudaMalloc arena of fixed slots (blocks in dense mode,
// slices in sparse mode); a slot is reused only once the fence of its last use signals.
// Thread-safe.
#pragma once

#include <memory>

#include "cuda_util.h"
#include "kvtier/tier.h"
#include "metadata_pool.h"
#include "slot_pool.h"

namespace kvtier {

struct GpuHbmOptions {
  int device = 0;
  uint64_t slot_bytes = 0;  // a multiple of 16; rounded up to 256 (cudaMalloc alignment)
  uint32_t slot_count = 0;
  // Bytes for metadata arenas (ReserveMetadata: the Quest slice metadata), allocated with
  // the slots and counted apart from them in usage(); rounded up to 256. 0: none.
  uint64_t metadata_bytes = 0;
  Status Validate() const;
};

class GpuHbmTier final : public Tier {
 public:
  static Result<std::unique_ptr<GpuHbmTier>> Create(const GpuHbmOptions& options);

  std::string_view name() const override { return "gpu-hbm"; }
  const TierCaps& caps() const override { return caps_; }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override { return slots_.Reserve(count, "hbm"); }
  void Release(std::span<const SlotId> slots, Fence last_use) override { slots_.Release(slots, last_use); }
  Location Locate(SlotId slot) const override;
  TierUsage usage() const override;
  Result<MetadataArena> ReserveMetadata(uint64_t bytes) override { return metadata_.Reserve(bytes); }
  void ReleaseMetadata(const MetadataArena& arena) override { metadata_.Release(arena); }
  int device() const { return device_; }

 private:
  GpuHbmTier(int device, DeviceBuffer arena, TierCaps caps, uint64_t metadata_bytes);
  int device_;
  DeviceBuffer arena_;
  TierCaps caps_;
  SlotPool slots_;
  MetadataPool metadata_;
};

}  // namespace kvtier
