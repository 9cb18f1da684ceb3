// EvictionPolicy: orders the victims of one tier. Pluggable per tier (LRU by default).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "kvtier/block_key.h"
#include "kvtier/types.h"

namespace kvtier {

// What the TierManager knows of an unpinned block that could leave a tier.
struct EvictionCandidate {
  BlockKey key;
  Tick last_access;          // the last match or commit of this block
  uint32_t access_count = 0; // matches since the block was written
  bool has_lower_copy = false;  // leaving costs no copy (a clean copy exists below)
};

// Called by the TierManager's demotion thread only (externally synchronized).
class EvictionPolicy {
 public:
  virtual ~EvictionPolicy() = default;
  virtual std::string_view name() const = 0;
  // Reorders `candidates` so that the first min(count, size) are the blocks to evict,
  // best victim first.
  virtual void ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) = 0;
  // What the demotion thread calls: orders as ChooseVictims and returns how many of the
  // first `count` may leave this pass (<= count). A policy that must keep some blocks in
  // this tier (protected spans) returns fewer; the default lets all `count` go.
  virtual size_t SelectVictims(std::span<EvictionCandidate> candidates, size_t count) {
    ChooseVictims(candidates, count);
    return count < candidates.size() ? count : candidates.size();
  }
};

// Least recently used first; among equals, the one with a clean copy below first.
class LruPolicy final : public EvictionPolicy {
 public:
  std::string_view name() const override { return "lru"; }
  void ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) override;
};

std::unique_ptr<EvictionPolicy> MakeLruPolicy();

}  // namespace kvtier
