// Tier: a place that holds fixed-size slots. A tier owns capacity and addresses; it never
// moves bytes (movers do, see mover.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
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
  // A persistent tier: the blocks it recovered at open, each with its slot, handed over
  // once (later calls return nothing). The slots are reserved and now the caller's, who
  // releases them like any other. TierManager::Create adopts them. Others hold none.
  virtual std::vector<std::pair<BlockKey, SlotId>> TakeRecovered() { return {}; }
};

}  // namespace kvtier
