// TierManager internals shared by tier_manager.cc, moves.cc and demoter.cc.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "block_index.h"
#include "kvtier/tier_manager.h"

namespace kvtier {

// Per-tier counters; relaxed atomics (statistics only).
struct TierCounters {
  std::atomic<uint64_t> evictions{0};
  std::atomic<uint64_t> demoted{0};
  std::atomic<uint64_t> dropped{0};
  std::atomic<uint64_t> reserve_failures{0};
  std::atomic<uint64_t> peak_used{0};
  std::atomic<uint64_t> evicting{0};  // slots being copied down right now
  std::atomic<uint64_t> admitted_bytes{0}, refused_reuse{0}, refused_budget{0};  // persistent tiers
};

// One entry's part in a copy between two tiers.
// Slots reserved for a hop, handed out in the order Reserve returned them: a SlotPool returns
// ascending runs of adjacent slots, so the blocks of one Offload (in the caller's key order) or
// demotion batch land in adjacent DRAM slots, and a later Onboard of the same keys reads them as runs, which
// the GPU movers copy with the copy engines (GpuMoverOptions::engine_run_bytes).
inline std::vector<SlotId> InTakeOrder(std::vector<SlotId> pool) {
  std::reverse(pool.begin(), pool.end());
  return pool;
}

// Takes the next slot of a pool made by InTakeOrder.
inline SlotId Take(std::vector<SlotId>& pool) {
  KVT_CHECK(!pool.empty());
  const SlotId s = pool.back();
  pool.pop_back();
  return s;
}

struct HopItem {
  internal::Entry* entry;
  SlotId src;
  SlotId dst;
};

// What to do with each entry once its copy into `dst` finished (under its shard lock).
enum class HopKind : uint8_t { kOnboard, kOffload, kDemote };

// A copy between two tiers being planned: its fence exists before any entry is marked "in
// flight", so whoever finds the mark can wait for it.
struct PlannedHop {
  std::vector<HopItem> items;
  Fence fence;
  std::shared_ptr<FenceSignal> signal;
  PlannedHop();
};

struct TierManager::Impl {
  Impl(TierManager* owner, const TierManagerOptions& options, TierSet& tiers);

  TierManager* self;
  const TierManagerOptions& options;
  std::vector<std::unique_ptr<internal::Shard>> shards;
  uint64_t shard_mask = 0;
  std::array<Tier*, kTierCount> tier{};
  std::array<std::array<Mover*, kTierCount>, kTierCount> mover{};  // [src][dst]
  std::array<EvictionPolicy*, kTierCount> policy{};
  Clock* clock;
  Logger* logger;

  std::array<TierCounters, kTierCount> counters;
  std::atomic<uint64_t> allocated{0}, committed{0}, aborted{0}, onboarded{0}, offloaded{0}, failed_copies{0};
  uint64_t recovered = 0;  // written once, before the demotion thread starts

  // At construction: indexes the blocks persistent tiers recovered at open (resident in
  // that tier only, unpinned, matchable). Keys outside the geometry or already indexed
  // are released back to their tier.
  void AdoptRecovered();

  // Copies in flight whose callbacks still reference this Impl; the destructor waits for 0.
  std::mutex inflight_mu;
  std::condition_variable inflight_cv;
  int64_t inflight = 0;
  void BeginAsync();
  void EndAsync();

  // Demotion thread.
  std::mutex demote_mu;
  std::condition_variable demote_cv;
  std::condition_variable pass_cv;
  bool stop = false;
  bool kicked = false;
  uint64_t started = 0;  // passes begun
  uint64_t passes = 0;   // passes finished
  std::thread demoter;
  void DemoterLoop();
  void DemotePass();
  // One tier's share of a pass; true when dirty victims found too little room below.
  bool DemoteTier(TierKind t);
  void Kick();
  // Under e's shard lock, on the demotion thread: whether dirty victim `e` may be copied
  // down into `lower` (AdmissionOptions; always for a tier that is not persistent).
  // Charges the write budget when it says yes.
  bool AdmitDown(TierKind lower, const internal::Entry& e);
  Tick budget_window_start{0};   // demotion thread only
  uint64_t budget_window_bytes = 0;

  // --- index helpers ---
  // The shard comes from the chain alone (bits 32.. of its first word), so every layer of a
  // token block lives in one shard; the shard's table uses the low bits of hash64(), which
  // mixes in the layer. The two stay independent.
  uint32_t ShardIndex(const BlockKey& key) const {
    return static_cast<uint32_t>((key.chain.prefix64() >> 32) & shard_mask);
  }
  internal::Shard& ShardOf(const BlockKey& key) { return *shards[ShardIndex(key)]; }
  internal::Shard& ShardOf(const internal::Entry* e) { return *shards[e->shard]; }

  // Releases one pin; the caller holds no shard lock.
  void UnpinOne(internal::Entry* e);
  // Under e's shard lock, with no pins left: aborts uncommitted writes and erases the
  // entry if no tier holds it any more. Slots to release are appended to `releases`.
  void ReapLocked(internal::Shard& shard, internal::Entry* e);
  // Under the shard lock: marks `e` as needing work at its last unpin, or does it now.
  void NeedsAttentionLocked(internal::Shard& shard, internal::Entry* e);
  void NotePeak(TierKind t);
  Result<std::vector<SlotId>> ReserveSlots(TierKind t, uint32_t count);

  // Submits the copy of `hop.items` from tier `src` to `dst` after `wait_for`, publishes
  // (or rolls back) each entry per `kind` when it lands, then signals `hop.fence`. Entries
  // of onboard and offload hops carry one pin taken for the copy, released here.
  void SubmitHop(TierKind src, TierKind dst, PlannedHop& hop, std::vector<Fence> wait_for, HopKind kind);
  void FinishHop(TierKind src, TierKind dst, const std::vector<HopItem>& items, HopKind kind, const Status& s);

  Fence OnboardEntries(std::vector<internal::Entry*> entries, TierKind target);
  Fence OffloadEntries(std::vector<internal::Entry*> entries, TierKind target);
};

}  // namespace kvtier
