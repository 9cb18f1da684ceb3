// The demotion thread: keeps every tier between its watermarks so that Allocate and Onboard
// find free slots without waiting for an eviction.
//
// Per pass, fastest tier first: when used slots exceed the high watermark, gather the
// unpinned readable blocks of the tier, let the tier's policy order them, and evict down to
// the low watermark:
//   - a block with a readable copy in a lower tier leaves at once (no bytes move);
//   - a dirty block is copied one tier down first ("evicting"), and leaves when the copy
//     lands, unless it was pinned again meanwhile;
//   - a block in the lowest tier is dropped.
// DRAM keeps the blocks HBM holds (inclusive): they are not DRAM candidates.
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "tier_manager_impl.h"

namespace kvtier {

using internal::Entry;
using internal::Readable;
using internal::Shard;
using internal::SlotState;

void TierManager::Impl::Kick() {
  {
    std::lock_guard lock(demote_mu);
    kicked = true;
  }
  demote_cv.notify_one();
}

void TierManager::DemoteNow() {
  std::unique_lock lock(impl_->demote_mu);
  const uint64_t target = impl_->passes + 2;  // a pass that started after this call
  impl_->kicked = true;
  impl_->demote_cv.notify_one();
  impl_->pass_cv.wait(lock, [&] { return impl_->passes >= target || impl_->stop; });
}

void TierManager::Impl::DemoterLoop() {
  std::unique_lock lock(demote_mu);
  while (!stop) {
    demote_cv.wait_for(lock, options.demotion_period, [&] { return stop || kicked; });
    if (stop) break;
    kicked = false;
    lock.unlock();
    DemotePass();
    lock.lock();
    ++passes;
    pass_cv.notify_all();
  }
  pass_cv.notify_all();
}

void TierManager::Impl::DemotePass() {
  for (TierKind t : kAllTiers) {
    if (tier[TierIndex(t)] != nullptr) DemoteTier(t);
  }
}

void TierManager::Impl::DemoteTier(TierKind t) {
  const size_t ti = TierIndex(t);
  Tier* tr = tier[ti];
  const TierCaps& caps = tr->caps();
  const TierUsage usage = tr->usage();
  const uint64_t used = caps.slot_count - usage.free_slots;
  const auto high = static_cast<uint64_t>(std::floor(options.high_watermark * caps.slot_count));
  const auto low = static_cast<uint64_t>(std::floor(options.low_watermark * caps.slot_count));
  if (used <= high) return;
  const uint64_t leaving = usage.fenced_slots + counters[ti].evicting.load(std::memory_order_relaxed);
  if (used <= low + leaving) return;
  const uint64_t want = used - low - leaving;

  // Candidates: unpinned, readable here, not busy. Taken shard by shard, briefly locked.
  std::vector<EvictionCandidate> candidates;
  for (auto& shard : shards) {
    std::lock_guard lock(shard->mu);
    shard->map.ForEach([&](const Entry* e) {
      if (e->st(t) != SlotState::kResident || e->pins() != 0 || e->committing) return;
      if (t == TierKind::kDram && e->st(TierKind::kHbm) != SlotState::kAbsent) return;  // inclusive
      bool lower_copy = false;
      for (size_t l = ti + 1; l < kTierCount; ++l) lower_copy = lower_copy || Readable(e->state[l].load(std::memory_order_acquire));
      candidates.push_back(EvictionCandidate{e->key, e->last_access, e->access_count, lower_copy});
    });
  }
  if (candidates.empty()) return;
  const size_t count = std::min<size_t>(want, candidates.size());
  policy[ti]->ChooseVictims(candidates, count);

  const size_t lower = ti + 1;
  const bool can_demote = lower < kTierCount && tier[lower] != nullptr && mover[ti][lower] != nullptr;
  std::vector<Entry*> to_copy;
  std::vector<SlotId> free_now;
  uint64_t evicted = 0, dropped = 0;
  for (size_t i = 0; i < count; ++i) {
    const BlockKey& key = candidates[i].key;
    const uint64_t h = key.hash64();
    Shard& shard = ShardOf(h);
    std::lock_guard lock(shard.mu);
    Entry* e = shard.map.Find(key, h);
    if (e == nullptr || e->st(t) != SlotState::kResident || e->pins() != 0 || e->committing) continue;
    bool lower_copy = false;
    for (size_t l = ti + 1; l < kTierCount; ++l) lower_copy = lower_copy || Readable(e->state[l].load(std::memory_order_acquire));
    if (lower_copy) {
      free_now.push_back(e->slot_of(t));
      e->set(t, SlotState::kAbsent);
      e->set_slot(t, kNoSlot);
      ++evicted;
    } else if (can_demote && e->st(static_cast<TierKind>(lower)) == SlotState::kAbsent) {
      e->set(t, SlotState::kEvicting);
      to_copy.push_back(e);
    } else if (!can_demote) {
      // The lowest tier: the block is gone from kvtier.
      free_now.push_back(e->slot_of(t));
      e->set(t, SlotState::kAbsent);
      e->set_slot(t, kNoSlot);
      ++dropped;
      if (e->AllAbsent()) {
        shard.map.Erase(e);
        shard.FreeEntry(e);
      }
    }
  }
  if (!free_now.empty()) tr->Release(free_now, Fence());
  counters[ti].evictions.fetch_add(evicted + dropped, std::memory_order_relaxed);
  counters[ti].dropped.fetch_add(dropped, std::memory_order_relaxed);

  if (to_copy.empty()) return;
  const TierKind lower_kind = static_cast<TierKind>(lower);
  auto slots = ReserveSlots(lower_kind, static_cast<uint32_t>(to_copy.size()));
  if (!slots.ok()) {
    // The tier below is full: its own pass frees room; these stay for the next pass.
    for (Entry* e : to_copy) {
      Shard& shard = ShardOf(e);
      std::lock_guard lock(shard.mu);
      e->set(t, SlotState::kResident);
    }
    return;
  }
  PlannedHop hop;
  hop.items.reserve(to_copy.size());
  for (size_t i = 0; i < to_copy.size(); ++i) {
    Entry* e = to_copy[i];
    Shard& shard = ShardOf(e);
    std::lock_guard lock(shard.mu);
    const SlotId dst = (*slots)[i];
    e->set_slot(lower_kind, dst);
    e->set(lower_kind, SlotState::kInFlight);
    e->fence[TierIndex(lower_kind)] = hop.fence;
    hop.items.push_back(HopItem{e, e->slot_of(t), dst});
  }
  counters[ti].evicting.fetch_add(hop.items.size(), std::memory_order_relaxed);
  SubmitHop(t, lower_kind, hop, {}, HopKind::kDemote);
}

}  // namespace kvtier
