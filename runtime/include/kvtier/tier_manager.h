// TierManager: the index of every block kvtier holds, its residency per tier, its pins and
// its state; and the operations a serving engine calls each step.
//
//   match    MatchPrefix(chains)      longest resident prefix, pinned (per-tier lengths too)
//   onboard  Onboard(pins)            copy pinned blocks toward HBM (async, returns a Fence)
//   allocate Allocate(keys)           new blocks in state "writing", pinned, with HBM slots
//   write    Locate / BlockTable      device pointers the engine writes and reads
//   commit   Commit(pins, written)    the engine's bytes are valid once `written` signals
//   release  Release(pins)            unpin (an uncommitted block is dropped: an abort)
//   offload  Offload(pins)            copy pinned blocks away from HBM (async)
//   drop     Drop(keys)               forget unpinned blocks in every tier
//
// A background demotion thread keeps every tier between its low and high watermarks,
// choosing victims with the tier's EvictionPolicy: a block with a clean copy below leaves
// without moving bytes; a dirty one is copied down first; a block in the lowest tier is
// dropped. Pinned blocks are never evicted. DRAM is inclusive of HBM for clean blocks.
//
// Thread-safe: every method may be called from any thread. Locks are per index shard, are
// never held across a submit or a callback, and Fence callbacks run on mover threads.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/clock.h"
#include "kvtier/eviction_policy.h"
#include "kvtier/fence.h"
#include "kvtier/geometry.h"
#include "kvtier/logger.h"
#include "kvtier/mover.h"
#include "kvtier/stats.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"

namespace kvtier {

namespace internal {
struct Entry;
class Index;
}  // namespace internal

// The tiers and movers of one runtime. Tiers are declared before movers, so movers (which
// borrow tiers) are destroyed first.
struct TierSet {
  std::array<std::unique_ptr<Tier>, kTierCount> tiers;  // indexed by TierIndex; null = absent
  std::vector<std::unique_ptr<Mover>> movers;           // at most one per (source, destination)
  std::array<std::unique_ptr<EvictionPolicy>, kTierCount> policies;  // null = LRU
};

// Which blocks the demotion thread copies down into a persistent tier (NVMe). A refused
// block is dropped instead (as from the lowest tier) and counted in the tier's TierStats.
// Explicit Offload calls are the engine's choice and are not filtered.
struct AdmissionOptions {
  // 0 = always admit; N = only blocks matched at least N times (EvictionCandidate's
  // access_count), so one-off prefixes never cost drive writes.
  uint32_t min_uses = 0;
  // Drive-write budget in bytes per day of the runtime's clock; 0 = none. Charged when a
  // block is chosen for the copy (a copy that then finds no slot still counts: the budget
  // errs toward fewer writes). The window restarts every 24 h.
  uint64_t write_budget_bytes_per_day = 0;
};

struct TierManagerOptions {
  KvGeometry geometry;
  // Index shards (a power of two). More shards, less contention.
  uint32_t index_shards = 64;
  // Watermarks as fractions of a tier's slots: above `high` the demotion thread evicts
  // down to `low`, so that allocate and onboard find free slots without waiting.
  double high_watermark = 0.92;
  double low_watermark = 0.80;
  // How often the demotion thread looks when nobody kicks it.
  std::chrono::milliseconds demotion_period{10};
  // Copy every committed HBM block to DRAM right away, so that evicting it from HBM moves
  // no bytes (write-through). Off: blocks are copied down when evicted (write-back).
  bool offload_on_commit = true;
  // Admission of demoted blocks into a persistent tier (NVMe): default, always.
  AdmissionOptions admission{};
  Clock* clock = nullptr;    // null = SteadyClock
  Logger* logger = nullptr;  // null = StderrLogger::Default()

  Status Validate() const;
};

class TierManager;

// Pins on a list of blocks, in the caller's order. Move-only; destroying it releases the
// pins (as Release does). While a block is pinned it is never evicted from any tier.
class PinSet {
 public:
  PinSet() = default;
  PinSet(PinSet&& other) noexcept;
  PinSet& operator=(PinSet&& other) noexcept;
  PinSet(const PinSet&) = delete;
  PinSet& operator=(const PinSet&) = delete;
  ~PinSet();

  size_t size() const { return entries_.size(); }
  bool empty() const { return entries_.empty(); }
  const BlockKey& key(size_t i) const;

  // Moves blocks [begin, end) into a PinSet of their own (this one keeps the rest).
  PinSet Split(size_t begin, size_t end);
  // Appends `other`'s pins (same manager).
  void Append(PinSet&& other);

 private:
  friend class TierManager;
  PinSet(TierManager* owner, std::vector<internal::Entry*> entries)
      : owner_(owner), entries_(std::move(entries)) {}
  TierManager* owner_ = nullptr;
  std::vector<internal::Entry*> entries_;
};

struct PrefixMatch {
  PinSet pins;              // the matched blocks (chain blocks × layers, block-major), pinned
  uint32_t blocks = 0;      // token blocks matched (every layer resident somewhere)
  // Per tier: token blocks matched with every layer resident in that tier or a faster one.
  std::array<uint32_t, kTierCount> blocks_at_or_above{};
};

class TierManager {
 public:
  static Result<std::unique_ptr<TierManager>> Create(TierManagerOptions options, TierSet tiers);
  ~TierManager();
  TierManager(const TierManager&) = delete;
  TierManager& operator=(const TierManager&) = delete;

  const KvGeometry& geometry() const { return options_.geometry; }
  bool has_tier(TierKind t) const { return tiers_.tiers[TierIndex(t)] != nullptr; }
  const TierCaps* tier_caps(TierKind t) const;

  // --- match -----------------------------------------------------------------------------
  // The longest prefix of `chains` whose blocks are resident (in any tier) for every one of
  // the geometry's layers; those blocks are pinned. Blocks still being written or in flight
  // into their only tier do not match.
  PrefixMatch MatchPrefix(std::span<const ChainHash> chains);
  // The same over explicit keys: the longest prefix of `keys` resident somewhere, pinned.
  PinSet MatchKeys(std::span<const BlockKey> keys);

  // --- allocate, write, commit ----------------------------------------------------------
  // New blocks for `keys` in state "writing", pinned, with a slot each in `tier` (HBM when
  // the runtime has one, else DRAM). All-or-nothing: kAlreadyExists if any key is indexed
  // (another request may be writing it: match again after it commits), kExhausted if the
  // tier has no room (the demotion thread is kicked; retry), kInvalidArgument for
  // duplicate keys in `keys`.
  Result<PinSet> Allocate(std::span<const BlockKey> keys, TierKind tier = TierKind::kHbm);
  // Blocks `indices` of `pins` (all when empty) hold valid bytes once `written` signals:
  // they become resident and matchable. If `written` fails they are dropped. Only blocks in
  // state "writing" can be committed.
  Status Commit(const PinSet& pins, Fence written, std::span<const uint32_t> indices = {});

  // --- addresses --------------------------------------------------------------------------
  // The location of block `i` of `pins` in `tier`. The block must be resident there (or
  // being written there by this caller).
  Result<Location> Locate(const PinSet& pins, size_t i, TierKind tier) const;
  // Pointers of blocks [begin, end) of `pins` in a memory tier (the device block table of a
  // step). kFailedPrecondition names the first block not resident in `tier`.
  Status BlockTable(const PinSet& pins, TierKind tier, std::vector<std::byte*>* out, size_t begin = 0,
                    size_t end = SIZE_MAX) const;
  // The slot of block `i` of `pins` in `tier` (same conditions as Locate), for callers that
  // copy slices of pinned blocks with a Mover of their own (the sparse prefetcher's
  // DRAM -> HBM slice loads, the layer-segmented prefill's offload into DRAM blocks).
  Result<SlotId> SlotOf(const PinSet& pins, size_t i, TierKind tier) const;

  // --- move ---------------------------------------------------------------------------------
  // Copies every block of `pins` that is not yet in `target` into it, from the fastest
  // tier holding it below (NVMe blocks go through DRAM). The fence signals when all have
  // landed; a failed copy leaves that block out of `target` (a miss, never wrong bytes) and
  // fails the fence. Blocks being written or in flight are waited for.
  [[nodiscard]] Fence Onboard(const PinSet& pins, TierKind target = TierKind::kHbm);
  // Copies every block of `pins` into the slower tier `target` from the fastest tier that
  // holds it above (the upper copy stays, now clean).
  [[nodiscard]] Fence Offload(const PinSet& pins, TierKind target = TierKind::kDram);

  // --- release, drop ------------------------------------------------------------------------
  // Unpins. kFailedPrecondition for an empty (moved-from or released) PinSet.
  Status Release(PinSet& pins);
  // Forgets `keys` in every tier. kNotFound names the first unknown key, kFailedPrecondition
  // the first pinned or busy one; the others are dropped.
  Status Drop(std::span<const BlockKey> keys);

  // Wakes the demotion thread and waits until it has made one full pass. The pass frees the
  // slots of victims that have a copy below at once; the copies it starts for dirty victims
  // may still be in flight when this returns (those blocks stay readable where they were,
  // marked evicting, and their slots free when the copy lands).
  void DemoteNow();

  RuntimeStats Stats() const;

  struct Impl;  // internal (runtime/src/tier_manager_impl.h)

 private:
  friend class PinSet;
  TierManager(TierManagerOptions options, TierSet tiers);
  void Unpin(std::vector<internal::Entry*>& entries);

  TierManagerOptions options_;
  TierSet tiers_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
