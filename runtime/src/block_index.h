// The sharded block index (internal to runtime/).
//
// Each shard is a mutex, an open-addressing hash table of Entry pointers and a slab of
// entries that never moves (so a pinned Entry* stays valid). Every field of an Entry is
// guarded by its shard's mutex, except:
//   - pin_word: atomic. Increments only under the mutex (so a check "unpinned" under the
//     mutex cannot race with a new pin); decrements anywhere (a PinSet release).
//   - state[t] / slot[t]: written under the mutex, read without it for *pinned* blocks
//     (a pinned block's resident slots cannot change), hence atomics.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <deque>
#include <mutex>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/types.h"

namespace kvtier::internal {

enum class SlotState : uint8_t {
  kAbsent = 0,
  kWriting,    // the engine is writing the bytes (allocated, not committed)
  kInFlight,   // a mover is copying the bytes in
  kResident,   // valid bytes
  kEvicting,   // valid bytes; being copied down, freed afterwards unless pinned again
};

// Resident for reading: valid bytes that stay while the block is pinned.
inline bool Readable(SlotState s) { return s == SlotState::kResident || s == SlotState::kEvicting; }

// pin_word = pin count | kAttention. kAttention marks a block that needs work when its last
// pin goes: an uncommitted write (abort it) or a block with no tier left (erase it).
inline constexpr uint32_t kAttention = 1u << 31;
inline constexpr uint32_t kPinMask = kAttention - 1;

struct Entry {
  BlockKey key;
  uint64_t hash = 0;
  uint32_t shard = 0;
  std::atomic<uint32_t> pin_word{0};
  std::array<std::atomic<SlotState>, kTierCount> state{};
  std::array<std::atomic<uint32_t>, kTierCount> slot{};
  std::array<Fence, kTierCount> fence{};  // completion of a pending write / copy into the tier
  bool committing = false;                // Commit called, waiting for the engine's fence
  Tick last_access;
  uint32_t access_count = 0;

  uint32_t pins() const { return pin_word.load(std::memory_order_acquire) & kPinMask; }
  SlotState st(TierKind t) const { return state[TierIndex(t)].load(std::memory_order_acquire); }
  void set(TierKind t, SlotState s) { state[TierIndex(t)].store(s, std::memory_order_release); }
  SlotId slot_of(TierKind t) const { return SlotId{slot[TierIndex(t)].load(std::memory_order_acquire)}; }
  void set_slot(TierKind t, SlotId s) { slot[TierIndex(t)].store(s.value(), std::memory_order_release); }
  bool AnyReadable() const;
  bool AllAbsent() const;
  // The fastest tier with readable bytes, or kTierCount when none.
  size_t FastestReadable() const;
};

// Open addressing with linear probing and backward-shift deletion; keys are Entry*.
class FlatMap {
 public:
  FlatMap() : slots_(16), mask_(15) { Publish(); }
  // Starts loading the slot `hash` maps to. May run without the shard lock: it reads only
  // atomics, and a prefetch of memory freed by a concurrent Grow is harmless.
  void Prefetch(uint64_t hash) const {
    const Slot* table = table_.load(std::memory_order_relaxed);
    __builtin_prefetch(table + (hash & prefetch_mask_.load(std::memory_order_relaxed)));
  }
  Entry* Find(const BlockKey& key, uint64_t hash) const {
    for (size_t i = hash & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.entry == nullptr) return nullptr;
      if (s.hash == hash && s.entry->key == key) return s.entry;
    }
  }
  void Insert(Entry* e);  // e->key must be absent
  void Erase(Entry* e);   // e must be present
  size_t size() const { return size_; }
  template <class F>
  void ForEach(F&& fn) const {
    for (const Slot& s : slots_) {
      if (s.entry != nullptr) fn(s.entry);
    }
  }

 private:
  struct Slot {
    uint64_t hash = 0;
    Entry* entry = nullptr;
  };
  void Grow();
  void Publish() {
    table_.store(slots_.data(), std::memory_order_relaxed);
    prefetch_mask_.store(mask_, std::memory_order_relaxed);
  }
  std::vector<Slot> slots_;
  size_t mask_;
  size_t size_ = 0;
  std::atomic<const Slot*> table_{nullptr};   // slots_.data(), for Prefetch
  std::atomic<size_t> prefetch_mask_{0};
};

struct alignas(64) Shard {
  std::mutex mu;
  FlatMap map;
  std::deque<Entry> slab;       // never shrinks or moves: Entry* stay valid
  std::vector<Entry*> free_entries;
  std::array<uint64_t, kTierCount> hits{};
  std::array<uint64_t, kTierCount> misses{};

  Entry* NewEntry(const BlockKey& key, uint64_t hash, uint32_t shard_index);
  void FreeEntry(Entry* e);     // e must already be erased from the map
};

}  // namespace kvtier::internal
