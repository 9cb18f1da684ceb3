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

#include <algorithm>
#include <array>
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
  // The first pass that starts after this call is number `started + 1`; passes run one at
  // a time, so once `passes` reaches it, that pass has finished. (A pass already running
  // may have looked at the tiers before this call: it does not count.)
  const uint64_t target = impl_->started + 1;
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
    ++started;
    lock.unlock();
    DemotePass();
    lock.lock();
    ++passes;
    pass_cv.notify_all();
  }
  pass_cv.notify_all();
}

void TierManager::Impl::DemotePass() {
  std::array<bool, kTierCount> starved{};
  for (TierKind t : kAllTiers) {
    if (tier[TierIndex(t)] != nullptr) starved[TierIndex(t)] = DemoteTier(t);
  }
  // A tier that found no room below for its dirty victims tries once more, now that the
  // tiers below have made room (without this it would wait for the next period).
  for (TierKind t : kAllTiers) {
    if (starved[TierIndex(t)]) (void)DemoteTier(t);
  }
}

namespace {

// Up to `want` slots of `t` (as many as are free), never waiting and never kicking the
// demotion thread (the caller is the demotion thread).
std::vector<SlotId> ReserveUpTo(Tier* t, uint32_t want) {
  uint32_t n = std::min(want, t->usage().free_slots);
  while (n > 0) {
    auto r = t->Reserve(n);
    if (r.ok()) return std::move(r).value();
    n /= 2;  // raced with another reservation (or a reserve failed): ask for less
  }
  return {};
}

}  // namespace

bool TierManager::Impl::AdmitDown(TierKind lower, const Entry& e) {
  Tier* below = tier[TierIndex(lower)];
  if (!below->caps().persistent) return true;
  const AdmissionOptions& a = options.admission;
  TierCounters& c = counters[TierIndex(lower)];
  if (e.access_count < a.min_uses) {
    c.refused_reuse.fetch_add(1, std::memory_order_relaxed);
    return false;
  }
  const uint64_t bytes = options.geometry.block_bytes();
  if (a.write_budget_bytes_per_day != 0) {
    constexpr uint64_t kDayNs = 86'400'000'000'000ull;
    const Tick now = clock->Now();
    if (budget_window_start.value() == 0 || now.value() - budget_window_start.value() >= kDayNs) {
      budget_window_start = now;
      budget_window_bytes = 0;
    }
    if (budget_window_bytes + bytes > a.write_budget_bytes_per_day) {
      c.refused_budget.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    budget_window_bytes += bytes;
  }
  c.admitted_bytes.fetch_add(bytes, std::memory_order_relaxed);
  return true;
}

bool TierManager::Impl::DemoteTier(TierKind t) {
  const size_t ti = TierIndex(t);
  Tier* tr = tier[ti];
  const TierCaps& caps = tr->caps();
  const TierUsage usage = tr->usage();
  const uint64_t used = caps.slot_count - usage.free_slots;
  const auto high = static_cast<uint64_t>(std::floor(options.high_watermark * caps.slot_count));
  const auto low = static_cast<uint64_t>(std::floor(options.low_watermark * caps.slot_count));
  if (used <= high) return false;
  const uint64_t leaving = usage.fenced_slots + counters[ti].evicting.load(std::memory_order_relaxed);
  if (used <= low + leaving) return false;
  const uint64_t want = used - low - leaving;

  // Candidates: unpinned, readable here, not busy. Taken shard by shard, briefly locked.
  // DRAM keeps the blocks HBM holds (inclusive): they are not DRAM candidates.
  auto evictable = [t](const Entry* e) {
    if (e->st(t) != SlotState::kResident || e->pins() != 0 || e->committing) return false;
    return !(t == TierKind::kDram && e->st(TierKind::kHbm) != SlotState::kAbsent);
  };
  auto has_lower_copy = [ti](const Entry* e) {
    for (size_t l = ti + 1; l < kTierCount; ++l) {
      if (Readable(e->state[l].load(std::memory_order_acquire))) return true;
    }
    return false;
  };
  std::vector<EvictionCandidate> candidates;
  for (auto& shard : shards) {
    std::lock_guard lock(shard->mu);
    shard->map.ForEach([&](const Entry* e) {
      if (evictable(e)) candidates.push_back(EvictionCandidate{e->key, e->last_access, e->access_count, has_lower_copy(e)});
    });
  }
  if (candidates.empty()) return false;
  const size_t count = policy[ti]->SelectVictims(candidates, std::min<size_t>(want, candidates.size()));

  // 1. Victims that leave without moving bytes go now; dirty ones are only noted: they are
  //    marked (under their lock, together with their destination) once slots below exist,
  //    so nobody ever sees a block "evicting" without its copy being planned.
  const size_t lower = ti + 1;
  const bool can_demote = lower < kTierCount && tier[lower] != nullptr && mover[ti][lower] != nullptr;
  std::vector<BlockKey> dirty;
  std::vector<SlotId> free_now;
  uint64_t evicted = 0, dropped = 0;
  for (size_t i = 0; i < count; ++i) {
    const BlockKey& key = candidates[i].key;
    const uint64_t h = key.hash64();
    Shard& shard = ShardOf(key);
    std::lock_guard lock(shard.mu);
    Entry* e = shard.map.Find(key, h);
    if (e == nullptr || !evictable(e)) continue;  // changed since it was gathered
    if (has_lower_copy(e)) {
      free_now.push_back(e->slot_of(t));
      e->set(t, SlotState::kAbsent);
      e->set_slot(t, kNoSlot);
      ++evicted;
    } else if (can_demote && (e->st(static_cast<TierKind>(lower)) != SlotState::kAbsent ||
                              AdmitDown(static_cast<TierKind>(lower), *e))) {
      if (e->st(static_cast<TierKind>(lower)) == SlotState::kAbsent) dirty.push_back(key);
    } else {
      // The lowest tier, or the tier below refused it (admission): the block is gone.
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
  if (dirty.empty()) return false;

  // 2. Room below for as many dirty victims as fit (all-or-nothing would starve: a tier
  //    below its own high watermark never frees the few slots a big batch lacks).
  const TierKind lower_kind = static_cast<TierKind>(lower);
  std::vector<SlotId> slots = InTakeOrder(ReserveUpTo(tier[lower], static_cast<uint32_t>(dirty.size())));
  const bool starved = slots.size() < dirty.size();
  if (starved) counters[lower].reserve_failures.fetch_add(1, std::memory_order_relaxed);
  if (slots.empty()) return starved;
  NotePeak(lower_kind);

  // 3. Mark and plan, re-checking each victim: it may have been pinned, dropped, or given
  //    a copy below (an Offload) since step 1.
  PlannedHop hop;
  hop.items.reserve(slots.size());
  for (const BlockKey& key : dirty) {
    if (slots.empty()) break;
    const uint64_t h = key.hash64();
    Shard& shard = ShardOf(key);
    std::lock_guard lock(shard.mu);
    Entry* e = shard.map.Find(key, h);
    if (e == nullptr || !evictable(e) || e->st(lower_kind) != SlotState::kAbsent) continue;
    const SlotId dst = Take(slots);
    e->set(t, SlotState::kEvicting);
    e->set_slot(lower_kind, dst);
    e->set(lower_kind, SlotState::kInFlight);
    e->fence[TierIndex(lower_kind)] = hop.fence;
    hop.items.push_back(HopItem{e, e->slot_of(t), dst});
  }
  if (!slots.empty()) tier[lower]->Release(slots, Fence());
  counters[ti].evicting.fetch_add(hop.items.size(), std::memory_order_relaxed);
  SubmitHop(t, lower_kind, hop, {}, HopKind::kDemote);
  return starved;
}

}  // namespace kvtier
