// TierManager: index operations (match, allocate, commit, locate, release, drop, stats).
// Copies live in moves.cc, the demotion thread in demoter.cc.
#include "kvtier/tier_manager.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <unordered_set>

#include "tier_manager_impl.h"

namespace kvtier {

using internal::Entry;
using internal::kAttention;
using internal::kPinMask;
using internal::Shard;
using internal::SlotState;

Status TierManagerOptions::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  if (index_shards == 0 || index_shards > 4096 || !std::has_single_bit(index_shards)) {
    return Status::InvalidArgument(
        fmt::format("index_shards = {} must be a power of two in [1, 4096]", index_shards));
  }
  if (!(low_watermark > 0.0 && low_watermark < high_watermark && high_watermark <= 1.0)) {
    return Status::InvalidArgument(fmt::format(
        "watermarks must satisfy 0 < low < high <= 1 (low = {}, high = {})", low_watermark, high_watermark));
  }
  if (demotion_period.count() <= 0) return Status::InvalidArgument("demotion_period must be positive");
  return Status();
}

// --- construction -------------------------------------------------------------------------

TierManager::Impl::Impl(TierManager* owner, const TierManagerOptions& opts, TierSet& tiers)
    : self(owner),
      options(opts),
      clock(opts.clock ? opts.clock : SteadyClock::Instance()),
      logger(opts.logger ? opts.logger : StderrLogger::Default()) {
  shards.reserve(opts.index_shards);
  for (uint32_t i = 0; i < opts.index_shards; ++i) shards.push_back(std::make_unique<Shard>());
  shard_mask = opts.index_shards - 1;
  for (TierKind t : kAllTiers) {
    tier[TierIndex(t)] = tiers.tiers[TierIndex(t)].get();
    if (!tiers.policies[TierIndex(t)]) tiers.policies[TierIndex(t)] = MakeLruPolicy();
    policy[TierIndex(t)] = tiers.policies[TierIndex(t)].get();
  }
  for (auto& m : tiers.movers) mover[TierIndex(m->source())][TierIndex(m->destination())] = m.get();
}

Result<std::unique_ptr<TierManager>> TierManager::Create(TierManagerOptions options, TierSet tiers) {
  KVT_RETURN_IF_ERROR(options.Validate().Annotate("TierManagerOptions"));
  bool any = false;
  for (TierKind t : kAllTiers) {
    const Tier* tier = tiers.tiers[TierIndex(t)].get();
    if (tier == nullptr) continue;
    any = true;
    if (tier->kind() != t) {
      return Status::InvalidArgument(
          fmt::format("tier '{}' is a {} tier but was given as {}", tier->name(), TierName(tier->kind()), TierName(t)));
    }
    if (tier->caps().slot_bytes < options.geometry.block_bytes()) {
      return Status::InvalidArgument(fmt::format("tier '{}' has {} B slots, smaller than a {} B block",
                                                 tier->name(), tier->caps().slot_bytes,
                                                 options.geometry.block_bytes()));
    }
  }
  if (!any) return Status::InvalidArgument("TierSet has no tier");
  std::array<std::array<bool, kTierCount>, kTierCount> seen{};
  for (const auto& m : tiers.movers) {
    if (m == nullptr) return Status::InvalidArgument("TierSet holds a null mover");
    const size_t s = TierIndex(m->source()), d = TierIndex(m->destination());
    if (!tiers.tiers[s] || !tiers.tiers[d] || s == d) {
      return Status::InvalidArgument(fmt::format("mover '{}' ({} -> {}) does not join two tiers of this set",
                                                 m->name(), TierName(m->source()), TierName(m->destination())));
    }
    if (seen[s][d]) {
      return Status::InvalidArgument(
          fmt::format("two movers for {} -> {}", TierName(m->source()), TierName(m->destination())));
    }
    seen[s][d] = true;
  }
  std::unique_ptr<TierManager> tm(new TierManager(std::move(options), std::move(tiers)));
  return tm;
}

TierManager::TierManager(TierManagerOptions options, TierSet tiers)
    : options_(std::move(options)), tiers_(std::move(tiers)) {
  impl_ = std::make_unique<Impl>(this, options_, tiers_);
  impl_->AdoptRecovered();
  impl_->demoter = std::thread([impl = impl_.get()] { impl->DemoterLoop(); });
}

void TierManager::Impl::AdoptRecovered() {
  const Tick now = clock->Now();
  for (TierKind t : kAllTiers) {
    Tier* tr = tier[TierIndex(t)];
    if (tr == nullptr) continue;
    std::vector<SlotId> refused;
    uint64_t adopted = 0;
    for (const auto& [key, slot] : tr->TakeRecovered()) {
      const uint64_t h = key.hash64();
      const uint32_t si = ShardIndex(key);
      Shard& shard = *shards[si];
      std::lock_guard lock(shard.mu);
      if (key.layer.value() >= options.geometry.layers || shard.map.Find(key, h) != nullptr) {
        refused.push_back(slot);
        continue;
      }
      Entry* e = shard.NewEntry(key, h, si);
      e->set_slot(t, slot);
      e->set(t, SlotState::kResident);
      e->last_access = now;
      shard.map.Insert(e);
      ++adopted;
    }
    if (!refused.empty()) tr->Release(refused, Fence());
    if (adopted + refused.size() > 0) {
      logger->Log(LogLevel::kInfo, "{} tier: adopted {} blocks recovered at open ({} refused)", TierName(t), adopted,
                  refused.size());
    }
    recovered += adopted;
    if (adopted > 0) NotePeak(t);
  }
}

TierManager::~TierManager() {
  {
    std::lock_guard lock(impl_->demote_mu);
    impl_->stop = true;
  }
  impl_->demote_cv.notify_all();
  impl_->demoter.join();
  {
    std::unique_lock lock(impl_->inflight_mu);
    impl_->inflight_cv.wait(lock, [&] { return impl_->inflight == 0; });
  }
  uint64_t leaked = 0;
  for (auto& shard : impl_->shards) {
    std::lock_guard lock(shard->mu);
    shard->map.ForEach([&](Entry* e) { leaked += e->pins(); });
  }
  if (leaked != 0) {
    impl_->logger->Log(LogLevel::kError, "TierManager destroyed with {} pins still held (a PinSet outlived it)",
                       leaked);
  }
}

const TierCaps* TierManager::tier_caps(TierKind t) const {
  const Tier* tier = tiers_.tiers[TierIndex(t)].get();
  return tier ? &tier->caps() : nullptr;
}

// --- async bookkeeping --------------------------------------------------------------------

void TierManager::Impl::BeginAsync() {
  std::lock_guard lock(inflight_mu);
  ++inflight;
}

void TierManager::Impl::EndAsync() {
  std::lock_guard lock(inflight_mu);
  if (--inflight == 0) inflight_cv.notify_all();
}

void TierManager::Impl::NotePeak(TierKind t) {
  const Tier* tr = tier[TierIndex(t)];
  const TierUsage u = tr->usage();
  const uint64_t used = tr->caps().slot_count - u.free_slots;
  auto& peak = counters[TierIndex(t)].peak_used;
  uint64_t cur = peak.load(std::memory_order_relaxed);
  while (used > cur && !peak.compare_exchange_weak(cur, used, std::memory_order_relaxed)) {
  }
}

Result<std::vector<SlotId>> TierManager::Impl::ReserveSlots(TierKind t, uint32_t count) {
  Tier* tr = tier[TierIndex(t)];
  auto slots = tr->Reserve(count);
  if (!slots.ok()) {
    counters[TierIndex(t)].reserve_failures.fetch_add(1, std::memory_order_relaxed);
    Kick();
    return std::move(slots).status().Annotate(fmt::format("reserving {} slots in {}", count, TierName(t)));
  }
  NotePeak(t);
  const TierCaps& caps = tr->caps();
  if (caps.slot_count - tr->usage().free_slots > options.high_watermark * caps.slot_count) Kick();
  return slots;
}

// --- pins ---------------------------------------------------------------------------------

void TierManager::Impl::ReapLocked(Shard& shard, Entry* e) {
  std::vector<std::pair<TierKind, SlotId>> releases;
  for (TierKind t : kAllTiers) {
    if (e->st(t) == SlotState::kWriting && !e->committing) {
      releases.emplace_back(t, e->slot_of(t));
      e->set(t, SlotState::kAbsent);
      e->set_slot(t, kNoSlot);
      aborted.fetch_add(1, std::memory_order_relaxed);
    }
  }
  for (auto [t, s] : releases) tier[TierIndex(t)]->Release(std::span(&s, 1), Fence());
  if (e->AllAbsent() && !e->committing) {
    shard.map.Erase(e);
    shard.FreeEntry(e);
  } else {
    e->pin_word.fetch_and(~kAttention, std::memory_order_acq_rel);
  }
}

void TierManager::Impl::NeedsAttentionLocked(Shard& shard, Entry* e) {
  // The pin count and the flag change in one atomic step: either the last unpinner sees the
  // flag (and reaps), or we see no pins left (and reap now). Never both, never neither.
  const uint32_t prev = e->pin_word.fetch_or(kAttention, std::memory_order_acq_rel);
  if ((prev & kPinMask) == 0) ReapLocked(shard, e);
}

void TierManager::Impl::UnpinOne(Entry* e) {
  const uint32_t prev = e->pin_word.fetch_sub(1, std::memory_order_acq_rel);
  KVT_CHECK_MSG((prev & kPinMask) != 0, "unpin of a block with no pins");
  if ((prev & kPinMask) == 1 && (prev & kAttention) != 0) {
    // We released the last pin of a flagged block: nobody else touches it now.
    Shard& shard = ShardOf(e);
    std::lock_guard lock(shard.mu);
    if (e->pins() == 0 && (e->pin_word.load(std::memory_order_acquire) & kAttention) != 0) ReapLocked(shard, e);
  }
}

void TierManager::Unpin(std::vector<Entry*>& entries) {
  for (Entry* e : entries) impl_->UnpinOne(e);
  entries.clear();
}

Status TierManager::Release(PinSet& pins) {
  if (pins.owner_ == nullptr || pins.entries_.empty()) {
    return Status::FailedPrecondition("Release of an empty PinSet (already released or moved from)");
  }
  if (pins.owner_ != this) return Status::InvalidArgument("Release of a PinSet from another TierManager");
  Unpin(pins.entries_);
  pins.owner_ = nullptr;
  return Status();
}

// --- match --------------------------------------------------------------------------------

namespace {

// Walks groups of `group` keys (all layers of one token block, or single keys); a group
// matches only when every key in it is readable somewhere. Pins matched entries. A shard's
// lock is held across consecutive keys of that shard (all layers of a token block share
// one), so a chain of L layers costs one lock per token block, not L.
template <class KeyAt>
void MatchWalk(TierManager::Impl& impl, size_t groups, uint32_t group, KeyAt&& key_at, std::vector<Entry*>& out,
               std::array<uint32_t, kTierCount>* at_or_above) {
  const Tick now = impl.clock->Now();
  std::array<bool, kTierCount> prefix_alive{true, true, true};
  out.reserve(groups * group);
  std::unique_lock<std::mutex> lock;
  uint32_t locked = UINT32_MAX;
  // Keys are at random places of a large table: prefetch a few ahead so their cache misses
  // overlap instead of queueing.
  constexpr size_t kAhead = 8;
  const size_t keys = groups * group;
  auto prefetch = [&](size_t j) {
    if (j >= keys) return;
    const BlockKey key = key_at(j / group, static_cast<uint32_t>(j % group));
    impl.shards[impl.ShardIndex(key)]->map.Prefetch(key.hash64());
  };
  for (size_t j = 0; j < std::min(kAhead, keys); ++j) prefetch(j);
  for (size_t g = 0; g < groups; ++g) {
    size_t slowest = 0;
    bool complete = true;
    for (uint32_t k = 0; k < group; ++k) {
      prefetch(g * group + k + kAhead);
      const BlockKey key = key_at(g, k);
      const uint32_t si = impl.ShardIndex(key);
      Shard& shard = *impl.shards[si];
      if (si != locked) {
        if (lock.owns_lock()) lock.unlock();
        lock = std::unique_lock(shard.mu);
        locked = si;
      }
      Entry* e = shard.map.Find(key, key.hash64());
      const size_t best = e ? e->FastestReadable() : kTierCount;
      for (size_t t = 0; t < std::min(best + 1, kTierCount); ++t) ++(t == best ? shard.hits[t] : shard.misses[t]);
      if (best == kTierCount) {
        complete = false;
        break;
      }
      e->pin_word.fetch_add(1, std::memory_order_acq_rel);
      e->last_access = now;
      ++e->access_count;
      out.push_back(e);
      slowest = std::max(slowest, best);
    }
    if (!complete) {
      if (lock.owns_lock()) lock.unlock();  // UnpinOne may take shard locks
      const size_t keep = g * group;        // drop the pins of the partial group
      for (size_t i = keep; i < out.size(); ++i) impl.UnpinOne(out[i]);
      out.resize(keep);
      return;
    }
    if (at_or_above) {
      for (size_t t = 0; t < kTierCount; ++t) {
        prefix_alive[t] = prefix_alive[t] && slowest <= t;
        if (prefix_alive[t]) ++(*at_or_above)[t];
      }
    }
  }
}

}  // namespace

PrefixMatch TierManager::MatchPrefix(std::span<const ChainHash> chains) {
  PrefixMatch m;
  std::vector<Entry*> entries;
  const uint32_t layers = options_.geometry.layers;
  MatchWalk(
      *impl_, chains.size(), layers, [&](size_t g, uint32_t k) { return BlockKey{chains[g], LayerId{k}}; }, entries,
      &m.blocks_at_or_above);
  m.blocks = static_cast<uint32_t>(entries.size() / layers);
  m.pins = PinSet(this, std::move(entries));
  return m;
}

PinSet TierManager::MatchKeys(std::span<const BlockKey> keys) {
  std::vector<Entry*> entries;
  MatchWalk(*impl_, keys.size(), 1, [&](size_t g, uint32_t) { return keys[g]; }, entries, nullptr);
  return PinSet(this, std::move(entries));
}

// --- allocate and commit ------------------------------------------------------------------

Result<PinSet> TierManager::Allocate(std::span<const BlockKey> keys, TierKind where) {
  if (keys.empty()) return Status::InvalidArgument("Allocate of no keys");
  // The contract: HBM when the runtime has one, else DRAM.
  if (where == TierKind::kHbm && !has_tier(TierKind::kHbm)) where = TierKind::kDram;
  if (!has_tier(where)) return Status::InvalidArgument(fmt::format("Allocate in {}: no such tier", TierName(where)));
  if (keys.size() > tiers_.tiers[TierIndex(where)]->caps().slot_count) {
    return Status::InvalidArgument(fmt::format("Allocate of {} blocks: the {} tier has only {} slots", keys.size(),
                                               TierName(where), tiers_.tiers[TierIndex(where)]->caps().slot_count));
  }
  {
    std::unordered_set<BlockKey> unique(keys.begin(), keys.end());
    if (unique.size() != keys.size()) return Status::InvalidArgument("Allocate: the same key is given twice");
  }
  KVT_ASSIGN_OR_RETURN(std::vector<SlotId> slots,
                       impl_->ReserveSlots(where, static_cast<uint32_t>(keys.size())));
  const Tick now = impl_->clock->Now();
  std::vector<Entry*> entries;
  entries.reserve(keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    const uint64_t h = keys[i].hash64();
    const uint32_t si = impl_->ShardIndex(keys[i]);
    Shard& shard = *impl_->shards[si];
    std::unique_lock lock(shard.mu);
    if (shard.map.Find(keys[i], h) != nullptr) {
      lock.unlock();
      // Undo: nothing of this call stays behind.
      for (Entry* e : entries) {
        Shard& s = impl_->ShardOf(e);
        std::lock_guard l(s.mu);
        s.map.Erase(e);
        s.FreeEntry(e);
      }
      tiers_.tiers[TierIndex(where)]->Release(slots, Fence());
      return Status::AlreadyExists(fmt::format(
          "block {} is already indexed (resident, or being written by another request)", keys[i].ToString()));
    }
    Entry* e = shard.NewEntry(keys[i], h, si);
    e->set_slot(where, slots[i]);
    e->set(where, SlotState::kWriting);
    e->last_access = now;
    e->pin_word.store(1 | kAttention, std::memory_order_release);  // uncommitted: abort at last unpin
    shard.map.Insert(e);
    entries.push_back(e);
  }
  impl_->allocated.fetch_add(keys.size(), std::memory_order_relaxed);
  return PinSet(this, std::move(entries));
}

Status TierManager::Commit(const PinSet& pins, Fence written, std::span<const uint32_t> indices) {
  if (pins.owner_ != this || pins.entries_.empty()) return Status::FailedPrecondition("Commit of an empty PinSet");
  std::vector<Entry*> targets;
  if (indices.empty()) {
    targets = pins.entries_;
  } else {
    for (uint32_t i : indices) {
      if (i >= pins.entries_.size()) {
        return Status::InvalidArgument(fmt::format("Commit index {} is past the {} pinned blocks", i, pins.size()));
      }
      targets.push_back(pins.entries_[i]);
    }
  }
  // Check everything first: a bad call changes nothing.
  for (size_t i = 0; i < targets.size(); ++i) {
    Entry* e = targets[i];
    Shard& shard = impl_->ShardOf(e);
    std::lock_guard lock(shard.mu);
    bool writing = false;
    for (TierKind t : kAllTiers) writing = writing || e->st(t) == SlotState::kWriting;
    if (!writing || e->committing) {
      return Status::FailedPrecondition(
          fmt::format("block {} is not awaiting a commit (already committed, or not allocated by this caller)",
                      e->key.ToString()));
    }
  }
  for (Entry* e : targets) {
    Shard& shard = impl_->ShardOf(e);
    std::lock_guard lock(shard.mu);
    e->committing = true;
    for (TierKind t : kAllTiers) {
      if (e->st(t) == SlotState::kWriting) e->fence[TierIndex(t)] = written;
    }
    e->pin_word.fetch_add(1, std::memory_order_acq_rel);  // the commit's own pin, until it lands
    e->pin_word.fetch_and(~kAttention, std::memory_order_acq_rel);
  }
  impl_->BeginAsync();
  written.OnReady([impl = impl_.get(), targets = std::move(targets)](const Status& s) {
    std::vector<Entry*> to_offload;
    for (Entry* e : targets) {
      Shard& shard = impl->ShardOf(e);
      std::lock_guard lock(shard.mu);
      e->committing = false;
      for (TierKind t : kAllTiers) {
        if (e->st(t) != SlotState::kWriting) continue;
        e->fence[TierIndex(t)] = Fence();
        if (s.ok()) {
          e->set(t, SlotState::kResident);
          e->last_access = impl->clock->Now();  // a commit counts as a use (EvictionCandidate)
          impl->committed.fetch_add(1, std::memory_order_relaxed);
          if (impl->options.offload_on_commit && t == TierKind::kHbm && impl->tier[TierIndex(TierKind::kDram)] &&
              impl->mover[TierIndex(TierKind::kHbm)][TierIndex(TierKind::kDram)]) {
            to_offload.push_back(e);
          }
        } else {
          const SlotId slot = e->slot_of(t);
          e->set(t, SlotState::kAbsent);
          e->set_slot(t, kNoSlot);
          impl->tier[TierIndex(t)]->Release(std::span(&slot, 1), Fence());
          impl->aborted.fetch_add(1, std::memory_order_relaxed);
        }
      }
      if (e->AllAbsent()) impl->NeedsAttentionLocked(shard, e);
    }
    if (!to_offload.empty()) {
      // Fire and forget, before our pins go: the hop takes pins of its own.
      (void)impl->OffloadEntries(std::move(to_offload), TierKind::kDram);
    }
    for (Entry* e : targets) impl->UnpinOne(e);
    impl->EndAsync();
  });
  return Status();
}

// --- addresses ----------------------------------------------------------------------------

Result<Location> TierManager::Locate(const PinSet& pins, size_t i, TierKind tier) const {
  if (pins.owner_ != this) return Status::InvalidArgument("Locate on a PinSet of another TierManager");
  if (i >= pins.size()) return Status::InvalidArgument(fmt::format("Locate index {} of {} blocks", i, pins.size()));
  if (!has_tier(tier)) return Status::InvalidArgument(fmt::format("Locate in {}: no such tier", TierName(tier)));
  const Entry* e = pins.entries_[i];
  const SlotState st = e->st(tier);
  if (!internal::Readable(st) && st != SlotState::kWriting) {
    return Status::FailedPrecondition(
        fmt::format("block {} is not resident in {} (Onboard it first)", e->key.ToString(), TierName(tier)));
  }
  return tiers_.tiers[TierIndex(tier)]->Locate(e->slot_of(tier));
}

Result<SlotId> TierManager::SlotOf(const PinSet& pins, size_t i, TierKind tier) const {
  if (pins.owner_ != this) return Status::InvalidArgument("SlotOf on a PinSet of another TierManager");
  if (i >= pins.size()) return Status::InvalidArgument(fmt::format("SlotOf index {} of {} blocks", i, pins.size()));
  if (!has_tier(tier)) return Status::InvalidArgument(fmt::format("SlotOf in {}: no such tier", TierName(tier)));
  const Entry* e = pins.entries_[i];
  const SlotState st = e->st(tier);
  if (!internal::Readable(st) && st != SlotState::kWriting) {
    return Status::FailedPrecondition(
        fmt::format("block {} is not resident in {} (Onboard it first)", e->key.ToString(), TierName(tier)));
  }
  return e->slot_of(tier);
}

Status TierManager::BlockTable(const PinSet& pins, TierKind tier, std::vector<std::byte*>* out, size_t begin,
                               size_t end) const {
  if (pins.owner_ != this) return Status::InvalidArgument("BlockTable on a PinSet of another TierManager");
  if (!has_tier(tier)) return Status::InvalidArgument(fmt::format("BlockTable in {}: no such tier", TierName(tier)));
  end = std::min(end, pins.size());
  if (begin > end) return Status::InvalidArgument(fmt::format("BlockTable range [{}, {}) is empty", begin, end));
  const Tier* tr = tiers_.tiers[TierIndex(tier)].get();
  out->clear();
  out->reserve(end - begin);
  for (size_t i = begin; i < end; ++i) {
    const Entry* e = pins.entries_[i];
    const SlotState st = e->st(tier);
    if (!internal::Readable(st) && st != SlotState::kWriting) {
      out->clear();
      return Status::FailedPrecondition(fmt::format("block {} (#{}) is not resident in {} (Onboard it first)",
                                                    e->key.ToString(), i, TierName(tier)));
    }
    const Location loc = tr->Locate(e->slot_of(tier));
    const auto* mem = std::get_if<MemoryAddress>(&loc);
    if (mem == nullptr) {
      out->clear();
      return Status::InvalidArgument(fmt::format("the {} tier is not memory: it has no block table", TierName(tier)));
    }
    out->push_back(mem->ptr);
  }
  return Status();
}

// --- drop ---------------------------------------------------------------------------------

Status TierManager::Drop(std::span<const BlockKey> keys) {
  Status first;
  for (const BlockKey& key : keys) {
    const uint64_t h = key.hash64();
    Shard& shard = impl_->ShardOf(key);
    std::vector<std::pair<TierKind, SlotId>> releases;
    {
      std::lock_guard lock(shard.mu);
      Entry* e = shard.map.Find(key, h);
      if (e == nullptr) {
        if (first.ok()) first = Status::NotFound(fmt::format("Drop: block {} is not indexed", key.ToString()));
        continue;
      }
      // A flagged block with no pins left belongs to its last unpinner, which is reaping it
      // right now (UnpinOne drops the pin before it takes this lock). Erasing it here would
      // free the entry under that thread's feet; when no tier holds it, it is as good as
      // dropped already.
      const bool flagged = (e->pin_word.load(std::memory_order_acquire) & kAttention) != 0;
      if (flagged && e->pins() == 0 && e->AllAbsent() && !e->committing) continue;
      bool busy = e->pins() != 0 || e->committing || flagged;
      for (TierKind t : kAllTiers) busy = busy || (!internal::Readable(e->st(t)) && e->st(t) != SlotState::kAbsent);
      for (TierKind t : kAllTiers) busy = busy || e->st(t) == SlotState::kEvicting;
      if (busy) {
        if (first.ok()) {
          first = Status::FailedPrecondition(
              fmt::format("Drop: block {} is pinned or being moved; release it first", key.ToString()));
        }
        continue;
      }
      for (TierKind t : kAllTiers) {
        if (e->st(t) == SlotState::kResident) releases.emplace_back(t, e->slot_of(t));
        e->set(t, SlotState::kAbsent);
      }
      shard.map.Erase(e);
      shard.FreeEntry(e);
    }
    for (auto [t, s] : releases) impl_->tier[TierIndex(t)]->Release(std::span(&s, 1), Fence());
  }
  return first;
}

// --- stats --------------------------------------------------------------------------------

RuntimeStats TierManager::Stats() const {
  RuntimeStats st;
  for (auto& shard : impl_->shards) {
    std::lock_guard lock(shard->mu);
    st.indexed_blocks += shard->map.size();
    for (size_t t = 0; t < kTierCount; ++t) {
      st.tiers[t].hits += shard->hits[t];
      st.tiers[t].misses += shard->misses[t];
    }
    shard->map.ForEach([&](const Entry* e) { st.pins += e->pins(); });
  }
  for (TierKind t : kAllTiers) {
    TierStats& ts = st.tiers[TierIndex(t)];
    ts.tier = t;
    const Tier* tr = impl_->tier[TierIndex(t)];
    if (tr == nullptr) continue;
    const TierCounters& c = impl_->counters[TierIndex(t)];
    ts.present = true;
    ts.capacity_slots = tr->caps().slot_count;
    ts.slot_bytes = tr->caps().slot_bytes;
    const TierUsage usage = tr->usage();
    ts.used_slots = tr->caps().slot_count - usage.free_slots;
    ts.metadata_bytes = usage.metadata_bytes;
    ts.metadata_capacity_bytes = usage.metadata_capacity_bytes;
    ts.peak_used_slots = std::max(c.peak_used.load(std::memory_order_relaxed), ts.used_slots);
    ts.evictions = c.evictions.load(std::memory_order_relaxed);
    ts.demoted_blocks = c.demoted.load(std::memory_order_relaxed);
    ts.dropped_blocks = c.dropped.load(std::memory_order_relaxed);
    ts.reserve_failures = c.reserve_failures.load(std::memory_order_relaxed);
    ts.admitted_bytes = c.admitted_bytes.load(std::memory_order_relaxed);
    ts.refused_reuse = c.refused_reuse.load(std::memory_order_relaxed);
    ts.refused_budget = c.refused_budget.load(std::memory_order_relaxed);
  }
  for (const auto& m : tiers_.movers) st.movers.push_back(m->stats());
  st.blocks_allocated = impl_->allocated.load(std::memory_order_relaxed);
  st.blocks_committed = impl_->committed.load(std::memory_order_relaxed);
  st.blocks_aborted = impl_->aborted.load(std::memory_order_relaxed);
  st.onboard_blocks = impl_->onboarded.load(std::memory_order_relaxed);
  st.offload_blocks = impl_->offloaded.load(std::memory_order_relaxed);
  st.failed_copies = impl_->failed_copies.load(std::memory_order_relaxed);
  st.recovered_blocks = impl_->recovered;
  return st;
}

}  // namespace kvtier
