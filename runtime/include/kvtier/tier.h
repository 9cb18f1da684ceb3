// Tier: a place that holds fixed-size slots. A tier owns capacity and addresses; it never
// moves bytes (movers do, see mover.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

struct TierCaps {
  TierKind kind = TierKind::kDram;
  uint64_t slot_bytes = 0;        // every slot has exactly this many bytes
  uint32_t slot_count = 0;
  uint32_t alignment = 0;         // of every slot's address or file offset
  bool device_addressable = false;  // a GPU kernel can read/write slots through a pointer
  bool persistent = false;        // contents survive a restart
};

// Where a slot's bytes are: memory (host or device) or a file extent.
struct MemoryAddress {
  DeviceId device = kHostDevice;
  std::byte* ptr = nullptr;
};
struct FileExtent {
  int fd = -1;
  uint64_t offset = 0;
};
using Location = std::variant<MemoryAddress, FileExtent>;

struct TierUsage {
  uint32_t free_slots = 0;          // reservable now
  uint32_t fenced_slots = 0;        // released, waiting for their last use to complete
  uint32_t reserved_slots = 0;      // held by a caller
  // Metadata arenas (ReserveMetadata): bytes held now, and the tier's metadata budget.
  uint64_t metadata_bytes = 0;
  uint64_t metadata_capacity_bytes = 0;
};

// Bytes of a tier's memory held for metadata rather than slots (the Quest slice metadata
// on the HBM tier, docs/sparse.md). `address` is aligned to the tier's caps().alignment.
struct MetadataArena {
  MemoryAddress address{};
  uint64_t bytes = 0;
};

// Implementations are thread-safe.
class Tier {
 public:
  virtual ~Tier() = default;
  virtual std::string_view name() const = 0;  // e.g. "emulated-hbm", "host-dram"
  virtual const TierCaps& caps() const = 0;
  TierKind kind() const { return caps().kind; }

  // All-or-nothing: exactly `count` slots, or kExhausted and nothing reserved.
  virtual Result<std::vector<SlotId>> Reserve(uint32_t count) = 0;
  // The slots become reservable again once `last_use` signals (whatever its status: a
  // failed copy no longer touches the slot). Releasing a slot that is not reserved is a
  // bug and aborts.
  virtual void Release(std::span<const SlotId> slots, Fence last_use) = 0;
  // The address of a reserved slot.
  virtual Location Locate(SlotId slot) const = 0;
  virtual TierUsage usage() const = 0;
  // Metadata arenas come from a budget of their own (the HBM tiers' `metadata_bytes`
  // option, allocated next to the slots), reported in usage() and the tier statistics.
  // kExhausted, naming the tier and the bytes, when `bytes` does not fit in what is left
  // (always for a tier without a metadata budget, the default). Releasing is immediate: the
  // caller makes sure nothing still reads the arena (e.g. synchronises its stream) first;
  // releasing an arena this tier did not hand out aborts.
  virtual Result<MetadataArena> ReserveMetadata(uint64_t bytes);
  virtual void ReleaseMetadata(const MetadataArena& arena);
  // A persistent tier: the blocks it recovered at open, each with its slot, handed over
  // once (later calls return nothing). The slots are reserved and now the caller's, who
  // releases them like any other. TierManager::Create adopts them. Others hold none.
  virtual std::vector<std::pair<BlockKey, SlotId>> TakeRecovered() { return {}; }
};

inline Result<MetadataArena> Tier::ReserveMetadata(uint64_t bytes) {
  return Status::Exhausted(std::string(name()) + ": no metadata budget for " + std::to_string(bytes) + " B");
}
inline void Tier::ReleaseMetadata(const MetadataArena&) {
  KVT_CHECK_MSG(false, std::string(name()) + ": released a metadata arena it never handed out");
}

}  // namespace kvtier
