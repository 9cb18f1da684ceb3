#include <algorithm>

#include "kvtier/eviction_policy.h"

namespace kvtier {

void LruPolicy::ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) {
  auto older = [](const EvictionCandidate& a, const EvictionCandidate& b) {
    if (a.last_access != b.last_access) return a.last_access < b.last_access;
    return a.has_lower_copy > b.has_lower_copy;  // leaving for free beats a copy
  };
  if (count >= candidates.size()) {
    std::sort(candidates.begin(), candidates.end(), older);
    return;
  }
  std::partial_sort(candidates.begin(), candidates.begin() + static_cast<ptrdiff_t>(count), candidates.end(), older);
}

std::unique_ptr<EvictionPolicy> MakeLruPolicy() { return std::make_unique<LruPolicy>(); }

}  // namespace kvtier
