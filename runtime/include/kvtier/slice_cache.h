// SliceCache: HBM holds a cache of slices (one KV head of one block, geometry.slice_bytes())
// for dynamic sparse attention; every block lives in DRAM and HBM copies are clean, so an
// eviction moves no bytes (SparseServe §3.1; docs/sparse.md).
//
// Slices are keyed by (BlockKey, kv head) and held in slots of an HBM-kind Tier sized for
// one slice: slot_bytes = geometry.slice_bytes() (a tier may pad slots to its alignment)
// (GpuHbmTier on GPU, EmulatedHbmTier on CPU).
// Replacement is LRU, except that a slice is never evicted while
//   - it is used by the current step (Acquire with SliceUse::kStep since the last EndStep),
//   - it is being loaded, or
//   - it is protected: one of the first `protect_sink_blocks` blocks, or a block holding
//     one of the last `protect_recent_tokens` tokens, of an active request (SetRequestTokens
//     until EndRequest; a slice belongs to the request that used it last).
// An evicted slot goes back to the tier with Tier::Release and the fence of its last use
// (EndStep's fence), so it is reused only once that use is complete. When the tier has no
// slot free because those fences are still pending, Acquire waits for them (without its
// lock) and counts `fence_waits`.
//
// This class only does bookkeeping; it moves no bytes. The SparsePrefetcher
// (sparse_prefetcher.h) copies the misses an Acquire reports and hands the copy's fence to
// CompleteLoads. A slice whose load fails is forgotten: a miss next time, never served.
//
// Thread-safe: one mutex guards the state; it is never held across a tier call that may
// block, a fence wait, or a fence callback of ours.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/geometry.h"
#include "kvtier/request_id.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"
#include "kvtier/types.h"

namespace kvtier {

struct SliceKey {
  BlockKey block;
  uint32_t head = 0;  // KV head
  friend bool operator==(const SliceKey&, const SliceKey&) = default;
  uint64_t hash64() const { return block.hash64() ^ (0xC2B2AE3D27D4EB4Full * (head + 1)); }
};

struct SliceCacheOptions {
  KvGeometry geometry{};
  // Per active request: blocks [0, protect_sink_blocks) are never evicted (the attention
  // sink; 1 block covers the 4 sink tokens of StreamingLLM/Expected Attention).
  uint32_t protect_sink_blocks = 1;
  // Per active request: blocks holding any of its last `protect_recent_tokens` tokens are
  // never evicted (local attention reads them every step). 0 = none.
  uint32_t protect_recent_tokens = 128;
  // Slices the cache may hold at once; 0 = every slot of the tier. Set it lower when other
  // users (a layer-segmented prefill) reserve slots of the same tier.
  uint32_t capacity_slices = 0;

  // geometry valid; capacity_slices no more than the tier's slots (checked by Create).
  Status Validate() const;
};

// One slice an engine wants, and whose it is.
struct SliceRef {
  SliceKey key;
  RequestId request{};
  uint32_t block_index = 0;  // position of the block in the request's sequence
};

enum class SliceUse : uint8_t {
  kStep,  // attended by the current step: not evictable before EndStep; counts hits/misses
  kHint,  // a predicted selection: loaded and cached (MRU), nothing else; counted apart
};

struct SliceCacheStats {
  uint64_t hits = 0;          // kStep lookups found resident or already loading
  uint64_t misses = 0;        // kStep lookups that had to load
  uint64_t hint_hits = 0;
  uint64_t hint_misses = 0;   // hint lookups that had to load
  uint64_t evictions = 0;     // slices dropped to make room (clean: no bytes moved)
  uint64_t loaded_bytes = 0;  // bytes of loads that completed OK
  uint64_t failed_loads = 0;  // slices whose load failed (forgotten, never served)
  uint64_t fence_waits = 0;   // Acquire waited for last-use fences of evicted slots
  uint64_t resident_slices = 0;  // held now (resident or loading)
  uint64_t peak_slices = 0;
  uint64_t capacity_slices = 0;
  uint64_t slice_bytes = 0;
  uint64_t metadata_bytes = 0;  // the tier's metadata arenas (TierUsage::metadata_bytes)
};

class SliceCache;

// The outcome of one Acquire: a slot per ref, and the refs that miss. Move-only. The caller
// copies the misses into their slots and passes the copy's fence to CompleteLoads; an
// Acquisition destroyed without that counts its loads as failed (cancelled).
class Acquisition {
 public:
  Acquisition() = default;
  Acquisition(Acquisition&&) noexcept = default;
  Acquisition& operator=(Acquisition&&) noexcept;
  Acquisition(const Acquisition&) = delete;
  Acquisition& operator=(const Acquisition&) = delete;
  ~Acquisition();

  std::vector<SlotId> slots;     // one per ref, in order
  std::vector<uint32_t> misses;  // indices into the refs whose slices must be loaded
  uint32_t hits = 0;
  // Signals when every slot holds its slice: the loads of this Acquire (once
  // CompleteLoads) and those of others it hit while still in flight. On error, do not read.
  Fence ready;

 private:
  friend class SliceCache;
  struct Loads;
  SliceCache* cache_ = nullptr;
  std::shared_ptr<Loads> loads_;  // null when nothing was missed or already completed
};

class SliceCache {
 public:
  // Borrows `hbm` (an HBM-kind tier with slot_bytes >= geometry.slice_bytes()); it must
  // outlive the cache. The cache reserves slots as it needs them and releases them all at
  // destruction (after the last loads and uses signal).
  static Result<std::unique_ptr<SliceCache>> Create(const SliceCacheOptions& options, Tier* hbm);
  ~SliceCache();  // waits for loads in flight
  SliceCache(const SliceCache&) = delete;
  SliceCache& operator=(const SliceCache&) = delete;

  const SliceCacheOptions& options() const { return options_; }
  Tier* tier() const { return hbm_; }

  // Slots for `refs` (duplicates allowed: they share a slot). Hits move to the MRU end;
  // misses get a slot (evicting LRU victims as needed) and are marked loading.
  // kExhausted if the misses cannot all be given a slot (too much is in use by the step,
  // protected or loading); nothing is reserved then, but hits stay marked.
  Result<Acquisition> Acquire(std::span<const SliceRef> refs, SliceUse use);
  // The misses of `acq` are being copied; `loaded` signals when they have landed. OK: they
  // become resident. Error: they are forgotten and their slots released; acq.ready fails.
  void CompleteLoads(Acquisition& acq, Fence loaded);

  // Closes the current step: every slice it used has `last_use` as the fence of its last
  // reader (the step's attention), and becomes evictable.
  void EndStep(Fence last_use);
  // The request's length in tokens, for the protection of its recent blocks.
  void SetRequestTokens(RequestId request, uint32_t tokens);
  // The request is done: its slices lose their protection (they stay cached until evicted).
  void EndRequest(RequestId request);

  bool Contains(const SliceKey& key) const;  // resident (not loading)
  SliceCacheStats Stats() const;

  struct Impl;

 private:
  friend class Acquisition;
  SliceCache(const SliceCacheOptions& options, Tier* hbm, uint32_t capacity);
  void Complete(std::shared_ptr<Acquisition::Loads> loads, Fence loaded);

  SliceCacheOptions options_;
  Tier* hbm_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvtier
