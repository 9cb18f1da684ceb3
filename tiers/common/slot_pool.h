// SlotPool: the slot bookkeeping every tier shares. Reserve is all-or-nothing; a released
// slot returns to the free slots only once the fence of its last use signals.
//
// Free slots are kept as extents of adjacent slots. Reserve(n) returns one ascending run of n
// adjacent slots when a free extent that long exists (the smallest such extent, lowest first
// among equals); otherwise runs from the longest extents, longest first, each ascending.
// Released slots merge with free neighbours. So slots reserved together stay adjacent, which
// lets the GPU movers copy them with one copy-engine transfer per run.
// Thread-safe.
#pragma once

#include <memory>
#include <span>
#include <string_view>
#include <vector>

#include "kvtier/fence.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"

namespace kvtier {

class SlotPool {
 public:
  explicit SlotPool(uint32_t slot_count);

  uint32_t slot_count() const;
  // Exactly `count` slots or kExhausted (naming `tier_name`) with nothing reserved.
  Result<std::vector<SlotId>> Reserve(uint32_t count, std::string_view tier_name);
  // Aborts on a slot that is out of range or not reserved: that is a caller bug.
  void Release(std::span<const SlotId> slots, Fence last_use);
  bool IsReserved(SlotId slot) const;
  TierUsage usage() const;

 private:
  struct State;
  std::shared_ptr<State> state_;  // shared with pending fence callbacks
};

}  // namespace kvtier
