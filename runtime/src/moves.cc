// TierManager copies: onboard (toward HBM), offload (away from HBM) and the hop machinery
// the demotion thread shares. A copy publishes its destination only after the mover's fence
// signals OK; a failed copy leaves the block out of the destination (a miss, never wrong
// bytes) and counts in failed_copies.
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include "tier_manager_impl.h"

namespace kvtier {

using internal::Entry;
using internal::Readable;
using internal::Shard;
using internal::SlotState;

PlannedHop::PlannedHop() {
  auto [f, s] = Fence::Make();
  fence = std::move(f);
  signal = std::make_shared<FenceSignal>(std::move(s));
}

void TierManager::Impl::SubmitHop(TierKind src, TierKind dst, PlannedHop& hop, std::vector<Fence> wait_for,
                                  HopKind kind) {
  if (hop.items.empty()) return;
  Mover* m = mover[TierIndex(src)][TierIndex(dst)];
  // Between HBM and DRAM the segments go in the order of their DRAM slots, so blocks in
  // adjacent DRAM slots are consecutive segments whatever order the caller named them in
  // (blocks offloaded layer by layer and onboarded block-major, say): the GPU movers copy
  // such runs with the copy engines.
  const bool from_dram = src == TierKind::kDram && dst == TierKind::kHbm;
  const bool to_dram = src == TierKind::kHbm && dst == TierKind::kDram;
  if (from_dram || to_dram) {
    std::sort(hop.items.begin(), hop.items.end(), [from_dram](const HopItem& a, const HopItem& b) {
      return from_dram ? a.src.value() < b.src.value() : a.dst.value() < b.dst.value();
    });
  }
  MoveBatch batch;
  batch.segments.reserve(hop.items.size());
  const uint64_t bytes = options.geometry.block_bytes();
  for (const HopItem& it : hop.items) batch.segments.push_back(CopySegment{it.src, it.dst, 0, 0, bytes});
  if (tier[TierIndex(dst)]->caps().persistent || tier[TierIndex(src)]->caps().persistent) {
    // Into a persistent tier, the keys are recorded with the blocks, so they survive a
    // restart (AdoptRecovered); out of one, the mover checks it read the block asked for.
    // An entry's key never changes while a copy holds it.
    batch.keys.reserve(hop.items.size());
    for (const HopItem& it : hop.items) batch.keys.push_back(it.entry->key);
  }
  batch.wait_for = std::move(wait_for);
  BeginAsync();
  Fence copied = m != nullptr ? m->Submit(std::move(batch))
                              : Fence::Failed(Status::Unimplemented(
                                    fmt::format("no mover {} -> {}", TierName(src), TierName(dst))));
  copied.OnReady([this, src, dst, kind, items = std::move(hop.items), signal = hop.signal](const Status& s) {
    FinishHop(src, dst, items, kind, s);
    signal->Signal(s);
    EndAsync();
  });
}

void TierManager::Impl::FinishHop(TierKind src, TierKind dst, const std::vector<HopItem>& items, HopKind kind,
                                  const Status& s) {
  std::vector<Entry*> unpin;
  std::vector<SlotId> free_src, free_dst;
  uint64_t evicted = 0, doubtful = 0;
  // A persistent tier failed to verify what it read (a torn, stale or corrupt block after a
  // crash): its copies of this batch's blocks are doubtful and dropped, so that they are
  // misses from now on instead of matches that fail every onboard. The batch's status does
  // not say which block was bad; all of them go (a cache may lose blocks, never serve
  // wrong ones). Other readers of those slots check the key they asked for.
  const bool drop_source = !s.ok() && s.code() == StatusCode::kDataLoss && kind == HopKind::kOnboard &&
                           tier[TierIndex(src)]->caps().persistent;
  for (const HopItem& it : items) {
    Entry* e = it.entry;
    Shard& shard = ShardOf(e);
    std::lock_guard lock(shard.mu);
    e->fence[TierIndex(dst)] = Fence();
    if (s.ok()) {
      e->set(dst, SlotState::kResident);
    } else {
      e->set(dst, SlotState::kAbsent);
      e->set_slot(dst, kNoSlot);
      free_dst.push_back(it.dst);
    }
    if (kind == HopKind::kDemote) {
      if (s.ok() && e->pins() == 0) {
        e->set(src, SlotState::kAbsent);
        e->set_slot(src, kNoSlot);
        free_src.push_back(it.src);
        ++evicted;
      } else {
        e->set(src, SlotState::kResident);  // pinned meanwhile, or the copy failed: stay
      }
    } else {
      if (drop_source && e->st(src) == SlotState::kResident && e->slot_of(src) == it.src) {
        e->set(src, SlotState::kAbsent);
        e->set_slot(src, kNoSlot);
        free_src.push_back(it.src);
        ++doubtful;
        if (e->AllAbsent()) NeedsAttentionLocked(shard, e);  // erased at its last unpin
      }
      unpin.push_back(e);
    }
  }
  if (doubtful > 0) counters[TierIndex(src)].dropped.fetch_add(doubtful, std::memory_order_relaxed);
  if (!free_dst.empty()) tier[TierIndex(dst)]->Release(free_dst, Fence());
  if (!free_src.empty()) tier[TierIndex(src)]->Release(free_src, Fence());
  if (s.ok()) {
    if (kind == HopKind::kOnboard) onboarded.fetch_add(items.size(), std::memory_order_relaxed);
    if (kind == HopKind::kOffload || kind == HopKind::kDemote) offloaded.fetch_add(items.size(), std::memory_order_relaxed);
  } else {
    failed_copies.fetch_add(items.size(), std::memory_order_relaxed);
    logger->Log(LogLevel::kWarning, "copy of {} blocks {} -> {} failed; they stay out of {}: {}", items.size(),
                TierName(src), TierName(dst), TierName(dst), s.ToString());
  }
  if (kind == HopKind::kDemote) {
    TierCounters& c = counters[TierIndex(src)];
    c.evictions.fetch_add(evicted, std::memory_order_relaxed);
    c.demoted.fetch_add(evicted, std::memory_order_relaxed);
    c.evicting.fetch_sub(items.size(), std::memory_order_relaxed);
  }
  for (Entry* e : unpin) UnpinOne(e);
}

Fence TierManager::Impl::OnboardEntries(std::vector<Entry*> entries, TierKind target) {
  const size_t ti = TierIndex(target);
  if (tier[ti] == nullptr) return Fence::Failed(Status::InvalidArgument(fmt::format("no {} tier", TierName(target))));

  // Plan from the (atomic) states of pinned entries; re-checked under the locks below.
  uint32_t need_target = 0, need_mid = 0;
  for (Entry* e : entries) {
    const SlotState st = e->st(target);
    if (st != SlotState::kAbsent) continue;
    const size_t src = e->FastestReadable();
    if (src <= ti || src == kTierCount) continue;
    ++need_target;
    if (src > ti + 1) ++need_mid;
  }
  const TierKind mid = ti + 1 < kTierCount ? static_cast<TierKind>(ti + 1) : target;
  if (need_mid > 0 && (TierIndex(mid) + 1 >= kTierCount || tier[TierIndex(mid)] == nullptr ||
                       mover[TierIndex(mid) + 1][TierIndex(mid)] == nullptr)) {
    return Fence::Failed(Status::Unimplemented(fmt::format("no mover into {} for a two-tier onboard", TierName(mid))));
  }
  std::vector<SlotId> target_pool, mid_pool;
  if (need_target > 0) {
    auto r = ReserveSlots(target, need_target);
    if (!r.ok()) return Fence::Failed(std::move(r).status().Annotate("Onboard"));
    target_pool = InTakeOrder(std::move(r).value());
  }
  if (need_mid > 0) {
    auto r = ReserveSlots(mid, need_mid);
    if (!r.ok()) {
      tier[ti]->Release(target_pool, Fence());
      return Fence::Failed(std::move(r).status().Annotate("Onboard (staging)"));
    }
    mid_pool = InTakeOrder(std::move(r).value());
  }

  // One hop per (source tier -> target); two-tier onboards chain source -> mid -> target.
  std::array<PlannedHop, kTierCount> direct;  // indexed by source tier
  PlannedHop first_leg, second_leg;           // NVMe -> DRAM, DRAM -> HBM of two-tier onboards
  std::vector<Fence> waits;
  std::vector<Entry*> retry;
  Status error;
  for (Entry* e : entries) {
    Shard& shard = ShardOf(e);
    std::lock_guard lock(shard.mu);
    const SlotState st = e->st(target);
    if (Readable(st)) continue;
    if (st == SlotState::kInFlight || st == SlotState::kWriting) {
      waits.push_back(e->fence[ti]);
      continue;
    }
    const size_t src = e->FastestReadable();
    if (src == kTierCount || src < ti) {
      // Not readable below: maybe it is on its way into a lower tier; else it is gone.
      bool pending = false;
      for (size_t t = ti + 1; t < kTierCount; ++t) {
        const SlotState s = e->state[t].load(std::memory_order_acquire);
        if (s == SlotState::kInFlight || s == SlotState::kWriting) {
          waits.push_back(e->fence[t]);
          pending = true;
        }
      }
      if (pending) {
        e->pin_word.fetch_add(1, std::memory_order_acq_rel);
        retry.push_back(e);
      } else if (error.ok()) {
        error = Status::NotFound(fmt::format("block {} is no longer held by any tier", e->key.ToString()));
      }
      continue;
    }
    if (target_pool.empty() || (src > ti + 1 && mid_pool.empty())) {
      if (error.ok()) error = Status::Unavailable("Onboard raced with another copy; retry");
      continue;
    }
    const SlotId dst_slot = Take(target_pool);
    e->set_slot(target, dst_slot);
    e->set(target, SlotState::kInFlight);
    e->pin_word.fetch_add(1, std::memory_order_acq_rel);
    if (src == ti + 1) {
      direct[src].items.push_back(HopItem{e, e->slot_of(static_cast<TierKind>(src)), dst_slot});
      e->fence[ti] = direct[src].fence;
    } else {
      const SlotId mid_slot = Take(mid_pool);
      e->set_slot(mid, mid_slot);
      e->set(mid, SlotState::kInFlight);
      e->pin_word.fetch_add(1, std::memory_order_acq_rel);
      first_leg.items.push_back(HopItem{e, e->slot_of(static_cast<TierKind>(src)), mid_slot});
      second_leg.items.push_back(HopItem{e, mid_slot, dst_slot});
      e->fence[TierIndex(mid)] = first_leg.fence;
      e->fence[ti] = second_leg.fence;
    }
  }
  if (!target_pool.empty()) tier[ti]->Release(target_pool, Fence());
  if (!mid_pool.empty()) tier[TierIndex(mid)]->Release(mid_pool, Fence());

  std::vector<Fence> all = waits;
  for (size_t src = ti + 1; src < kTierCount; ++src) {
    if (direct[src].items.empty()) continue;
    all.push_back(direct[src].fence);
    SubmitHop(static_cast<TierKind>(src), target, direct[src], {}, HopKind::kOnboard);
  }
  if (!first_leg.items.empty()) {
    all.push_back(second_leg.fence);
    const Fence leg1 = first_leg.fence;
    SubmitHop(static_cast<TierKind>(TierIndex(mid) + 1), mid, first_leg, {}, HopKind::kOnboard);
    SubmitHop(mid, target, second_leg, {leg1}, HopKind::kOnboard);
  }
  if (!retry.empty()) {
    // Blocks still arriving in a lower tier: onboard them once they land.
    auto [f, sig] = Fence::Make();
    auto signal = std::make_shared<FenceSignal>(std::move(sig));
    BeginAsync();
    Fence::All(waits).OnReady([this, retry = std::move(retry), target, signal](const Status&) {
      Fence again = OnboardEntries(retry, target);
      for (Entry* e : retry) UnpinOne(e);
      again.OnReady([signal](const Status& s) { signal->Signal(s); });
      EndAsync();
    });
    all.push_back(f);
  }
  if (!error.ok()) all.push_back(Fence::Failed(std::move(error)));
  return Fence::All(all);
}

Fence TierManager::Impl::OffloadEntries(std::vector<Entry*> entries, TierKind target) {
  // The caller holds a pin on every entry for the duration of this call.
  const size_t ti = TierIndex(target);
  if (ti == 0 || tier[ti] == nullptr || tier[ti - 1] == nullptr) {
    return Fence::Failed(Status::InvalidArgument(fmt::format("cannot offload into {}", TierName(target))));
  }
  const TierKind src = static_cast<TierKind>(ti - 1);
  if (mover[ti - 1][ti] == nullptr) {
    return Fence::Failed(Status::Unimplemented(fmt::format("no mover {} -> {}", TierName(src), TierName(target))));
  }
  uint32_t need = 0;
  for (Entry* e : entries) need += e->st(target) == SlotState::kAbsent ? 1 : 0;
  std::vector<SlotId> pool;
  if (need > 0) {
    auto r = ReserveSlots(target, need);
    if (!r.ok()) return Fence::Failed(std::move(r).status().Annotate("Offload"));
    pool = InTakeOrder(std::move(r).value());
  }
  PlannedHop hop;
  std::vector<Fence> waits;
  Status error;
  for (Entry* e : entries) {
    Shard& shard = ShardOf(e);
    std::lock_guard lock(shard.mu);
    const SlotState st = e->st(target);
    if (Readable(st)) continue;
    if (st == SlotState::kInFlight) {
      waits.push_back(e->fence[ti]);
      continue;
    }
    if (!Readable(e->st(src))) {
      if (error.ok()) {
        error = Status::FailedPrecondition(fmt::format("block {} has no committed copy in {} to offload",
                                                       e->key.ToString(), TierName(src)));
      }
      continue;
    }
    if (pool.empty()) {
      if (error.ok()) error = Status::Unavailable("Offload raced with another copy; retry");
      continue;
    }
    const SlotId dst = Take(pool);
    e->set_slot(target, dst);
    e->set(target, SlotState::kInFlight);
    e->fence[ti] = hop.fence;
    e->pin_word.fetch_add(1, std::memory_order_acq_rel);
    hop.items.push_back(HopItem{e, e->slot_of(src), dst});
  }
  if (!pool.empty()) tier[ti]->Release(pool, Fence());
  std::vector<Fence> all = waits;
  if (!hop.items.empty()) {
    all.push_back(hop.fence);
    SubmitHop(src, target, hop, {}, HopKind::kOffload);
  }
  if (!error.ok()) all.push_back(Fence::Failed(std::move(error)));
  return Fence::All(all);
}

Fence TierManager::Onboard(const PinSet& pins, TierKind target) {
  if (pins.owner_ != this || pins.entries_.empty()) return Fence::Failed(Status::FailedPrecondition("Onboard of an empty PinSet"));
  return impl_->OnboardEntries(pins.entries_, target);
}

Fence TierManager::Offload(const PinSet& pins, TierKind target) {
  if (pins.owner_ != this || pins.entries_.empty()) return Fence::Failed(Status::FailedPrecondition("Offload of an empty PinSet"));
  return impl_->OffloadEntries(pins.entries_, target);
}

}  // namespace kvtier
