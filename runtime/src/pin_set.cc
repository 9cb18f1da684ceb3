// PinSet: move-only ownership of pins; every way it lets go of them goes through
// TierManager::Unpin.
#include <algorithm>
#include <utility>

#include "kvtier/tier_manager.h"
#include "tier_manager_impl.h"

namespace kvtier {

using internal::Entry;

PinSet::PinSet(PinSet&& other) noexcept
    : owner_(std::exchange(other.owner_, nullptr)), entries_(std::move(other.entries_)) {
  other.entries_.clear();
}

PinSet& PinSet::operator=(PinSet&& other) noexcept {
  if (this != &other) {
    if (owner_ != nullptr && !entries_.empty()) owner_->Unpin(entries_);
    owner_ = std::exchange(other.owner_, nullptr);
    entries_ = std::move(other.entries_);
    other.entries_.clear();
  }
  return *this;
}

PinSet::~PinSet() {
  if (owner_ != nullptr && !entries_.empty()) owner_->Unpin(entries_);
}

const BlockKey& PinSet::key(size_t i) const { return entries_.at(i)->key; }

PinSet PinSet::Split(size_t begin, size_t end) {
  end = std::min(end, entries_.size());
  begin = std::min(begin, end);
  std::vector<Entry*> part(entries_.begin() + static_cast<ptrdiff_t>(begin),
                           entries_.begin() + static_cast<ptrdiff_t>(end));
  entries_.erase(entries_.begin() + static_cast<ptrdiff_t>(begin), entries_.begin() + static_cast<ptrdiff_t>(end));
  return PinSet(owner_, std::move(part));
}

void PinSet::Append(PinSet&& other) {
  if (other.entries_.empty()) return;
  if (owner_ == nullptr || entries_.empty()) owner_ = other.owner_;  // an empty set holds nobody's pins
  KVT_CHECK_MSG(owner_ == other.owner_, "PinSet::Append across two TierManagers");
  entries_.insert(entries_.end(), other.entries_.begin(), other.entries_.end());
  other.entries_.clear();
  other.owner_ = nullptr;
}

}  // namespace kvtier
