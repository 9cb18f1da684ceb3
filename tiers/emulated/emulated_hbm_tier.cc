#include "emulated_hbm_tier.h"

#include <fmt/format.h>

namespace kvtier {

namespace {
constexpr uint64_t kAlign = 256;  // cudaMalloc's alignment
}

Status EmulatedHbmOptions::Validate() const {
  if (slot_bytes == 0 || slot_bytes % 16 != 0) {
    return Status::InvalidArgument(fmt::format("emulated hbm: slot_bytes {} is not a positive multiple of 16", slot_bytes));
  }
  if (slot_count == 0) return Status::InvalidArgument("emulated hbm: slot_count is 0");
  if (slot_bytes * slot_count / slot_count != slot_bytes || slot_bytes * slot_count > (1ull << 44) ||
      metadata_bytes > (1ull << 44)) {
    return Status::InvalidArgument(fmt::format("emulated hbm: {} slots of {} B are absurd", slot_count, slot_bytes));
  }
  return Status();
}

Result<std::unique_ptr<EmulatedHbmTier>> EmulatedHbmTier::Create(const EmulatedHbmOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  const uint64_t slot = (options.slot_bytes + kAlign - 1) / kAlign * kAlign;
  const uint64_t metadata = (options.metadata_bytes + kAlign - 1) / kAlign * kAlign;
  KVT_ASSIGN_OR_RETURN(MemoryRegion region, MemoryRegion::Map(slot * options.slot_count + metadata));
  TierCaps caps;
  caps.kind = TierKind::kHbm;
  caps.slot_bytes = slot;
  caps.slot_count = options.slot_count;
  caps.alignment = kAlign;
  caps.device_addressable = true;
  caps.persistent = false;
  return std::unique_ptr<EmulatedHbmTier>(new EmulatedHbmTier(std::move(region), caps, metadata));
}

EmulatedHbmTier::EmulatedHbmTier(MemoryRegion region, TierCaps caps, uint64_t metadata_bytes)
    : region_(std::move(region)),
      caps_(caps),
      slots_(caps.slot_count),
      metadata_("emulated-hbm", MemoryAddress{kEmulatedDevice, region_.data() + caps.slot_bytes * caps.slot_count},
                metadata_bytes, kAlign) {}

TierUsage EmulatedHbmTier::usage() const {
  TierUsage u = slots_.usage();
  metadata_.AddTo(&u);
  return u;
}

Location EmulatedHbmTier::Locate(SlotId slot) const {
  KVT_CHECK_MSG(slot.value() < caps_.slot_count, fmt::format("hbm slot {} out of range", slot.value()));
  return MemoryAddress{kEmulatedDevice, region_.data() + static_cast<uint64_t>(slot.value()) * caps_.slot_bytes};
}

}  // namespace kvtier
