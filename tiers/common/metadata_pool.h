// MetadataPool: the metadata budget of a tier (Tier::ReserveMetadata) — first-fit ranges of
// one memory region, aligned, adjacent free ranges merged on release. The tier owns the
// memory; the pool only hands out addresses inside it. Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "kvtier/status.h"
#include "kvtier/tier.h"

namespace kvtier {

class MetadataPool {
 public:
  // `base` (device `device`) holds `bytes`; ranges are aligned to `alignment` (a power of
  // two, and `base` is aligned to it). bytes == 0: a tier without a metadata budget.
  MetadataPool(std::string tier_name, MemoryAddress base, uint64_t bytes, uint64_t alignment);

  // kExhausted naming the tier, the request and what is left (bytes == 0 is kInvalidArgument).
  Result<MetadataArena> Reserve(uint64_t bytes);
  // Aborts on an arena this pool did not hand out (or released twice).
  void Release(const MetadataArena& arena);
  uint64_t used_bytes() const;
  uint64_t capacity_bytes() const { return capacity_; }
  // Fills usage->metadata_bytes / metadata_capacity_bytes.
  void AddTo(TierUsage* usage) const;

 private:
  std::string name_;
  MemoryAddress base_;
  uint64_t capacity_, alignment_;
  mutable std::mutex mu_;
  std::map<uint64_t, uint64_t> free_;  // offset -> bytes, disjoint, never adjacent
  std::map<uint64_t, uint64_t> held_;  // offset -> bytes (rounded up to the alignment)
  uint64_t used_ = 0;
};

}  // namespace kvtier
