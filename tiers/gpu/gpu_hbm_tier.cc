#include "gpu_hbm_tier.h"

#include <fmt/format.h>

namespace kvtier {

namespace {
constexpr uint64_t kAlign = 256;
}

Status GpuHbmOptions::Validate() const {
  if (device < 0) return Status::InvalidArgument(fmt::format("gpu hbm: device {} is invalid", device));
  if (slot_bytes == 0 || slot_bytes % 16 != 0) {
    return Status::InvalidArgument(fmt::format("gpu hbm: slot_bytes {} is not a positive multiple of 16", slot_bytes));
  }
  if (slot_count == 0) return Status::InvalidArgument("gpu hbm: slot_count is 0");
  return Status();
}

Result<std::unique_ptr<GpuHbmTier>> GpuHbmTier::Create(const GpuHbmOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  const uint64_t slot = (options.slot_bytes + kAlign - 1) / kAlign * kAlign;
  const uint64_t metadata = (options.metadata_bytes + kAlign - 1) / kAlign * kAlign;
  KVT_ASSIGN_OR_RETURN(DeviceBuffer arena, DeviceBuffer::Allocate(options.device, slot * options.slot_count + metadata));
  TierCaps caps;
  caps.kind = TierKind::kHbm;
  caps.slot_bytes = slot;
  caps.slot_count = options.slot_count;
  caps.alignment = kAlign;
  caps.device_addressable = true;
  return std::unique_ptr<GpuHbmTier>(new GpuHbmTier(options.device, std::move(arena), caps, metadata));
}

GpuHbmTier::GpuHbmTier(int device, DeviceBuffer arena, TierCaps caps, uint64_t metadata_bytes)
    : device_(device),
      arena_(std::move(arena)),
      caps_(caps),
      slots_(caps.slot_count),
      metadata_("gpu-hbm", MemoryAddress{DeviceId{device}, arena_.data() + caps.slot_bytes * caps.slot_count},
                metadata_bytes, kAlign) {}

TierUsage GpuHbmTier::usage() const {
  TierUsage u = slots_.usage();
  metadata_.AddTo(&u);
  return u;
}

Location GpuHbmTier::Locate(SlotId slot) const {
  KVT_CHECK_MSG(slot.value() < caps_.slot_count, fmt::format("hbm slot {} out of range", slot.value()));
  return MemoryAddress{DeviceId{device_}, arena_.data() + static_cast<uint64_t>(slot.value()) * caps_.slot_bytes};
}

}  // namespace kvtier
