#include "block_index.h"

namespace kvtier::internal {

bool Entry::AnyReadable() const { return FastestReadable() < kTierCount; }

bool Entry::AllAbsent() const {
  for (TierKind t : kAllTiers) {
    if (st(t) != SlotState::kAbsent) return false;
  }
  return true;
}

size_t Entry::FastestReadable() const {
  for (TierKind t : kAllTiers) {
    if (Readable(st(t))) return TierIndex(t);
  }
  return kTierCount;
}

void FlatMap::Insert(Entry* e) {
  if ((size_ + 1) * 4 > slots_.size() * 3) Grow();  // load factor <= 0.75
  for (size_t i = e->hash & mask_;; i = (i + 1) & mask_) {
    if (slots_[i].entry == nullptr) {
      slots_[i] = Slot{e->hash, e};
      ++size_;
      return;
    }
  }
}

void FlatMap::Erase(Entry* e) {
  size_t i = e->hash & mask_;
  while (slots_[i].entry != e) {
    KVT_CHECK(slots_[i].entry != nullptr);
    i = (i + 1) & mask_;
  }
  // Backward shift: move later members of the probe run into the hole so lookups that
  // passed through it still find them.
  size_t hole = i;
  for (size_t j = (i + 1) & mask_; slots_[j].entry != nullptr; j = (j + 1) & mask_) {
    const size_t home = slots_[j].hash & mask_;
    const bool movable = (hole <= j) ? (home <= hole || home > j) : (home <= hole && home > j);
    if (movable) {
      slots_[hole] = slots_[j];
      hole = j;
    }
  }
  slots_[hole] = Slot{};
  --size_;
}

void FlatMap::Grow() {
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(old.size() * 2, Slot{});
  mask_ = slots_.size() - 1;
  size_ = 0;
  for (const Slot& s : old) {
    if (s.entry != nullptr) Insert(s.entry);
  }
  Publish();
}

Entry* Shard::NewEntry(const BlockKey& key, uint64_t hash, uint32_t shard_index) {
  Entry* e;
  if (!free_entries.empty()) {
    e = free_entries.back();
    free_entries.pop_back();
  } else {
    e = &slab.emplace_back();
  }
  e->key = key;
  e->hash = hash;
  e->shard = shard_index;
  e->pin_word.store(0, std::memory_order_relaxed);
  for (TierKind t : kAllTiers) {
    e->set(t, SlotState::kAbsent);
    e->set_slot(t, kNoSlot);
    e->fence[TierIndex(t)] = Fence();
  }
  e->committing = false;
  e->access_count = 0;
  return e;
}

void Shard::FreeEntry(Entry* e) {
  for (Fence& f : e->fence) f = Fence();
  free_entries.push_back(e);
}

}  // namespace kvtier::internal
