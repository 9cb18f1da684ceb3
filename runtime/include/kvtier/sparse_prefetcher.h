// SparsePrefetcher: per decode step and layer, the selected blocks of every request (per KV
// head, from the Quest selector) -> slice-cache lookup -> ONE MoveBatch for all the misses of
// the layer, submitted to the DRAM -> HBM mover -> a page table per request and KV head (the
// HBM slice slots in selection order, what a paged sparse-attention kernel reads) + a Fence.
//
// Overlap (SparseServe §3.2, Quest): an engine may call PrefetchHint for layer l+1 with the
// selection computed from layer l's query before it computes layer l; the loads start while
// layer l runs. Prefetch with the exact selection of layer l+1 then reconciles: slices the
// hint loaded are hits (still in flight: the table's fence waits for them), the rest are
// loaded now. Only the exact selection decides what is attended; hinted slices that turn
// out unneeded just stay cached (LRU).
//
//   for each decode step:
//     for l in layers:
//       sel_l  = selector.Select(l, q_l)                 (exact)
//       tables = prefetcher.Prefetch(batch selections of l)   -> page tables + fence
//       hint   = selector.Select(l + 1, q_l)             (q_l as a proxy of q_{l+1})
//       prefetcher.PrefetchHint(batch hint selections of l + 1)
//       attention(l, tables) after tables.ready
//     prefetcher.EndStep(fence of the step's last attention kernel)
//
// Where the DRAM slots come from: the blocks of a request are pinned in the TierManager
// (Commit of the layer-segmented prefill, or MatchPrefix + Onboard(kDram)); DramSlotsOf
// reads their slots with TierManager::SlotOf. The caller keeps the PinSet (and so the
// slots) until the step's fences have signaled.
//
// A failed load (mover error): the table's fence fails, the slices are forgotten by the
// cache (misses next time, never served). Do not attend a table whose fence failed.
//
// Thread-safe (the SliceCache is; the prefetcher itself holds no mutable state but counters).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/mover.h"
#include "kvtier/request_id.h"
#include "kvtier/slice_cache.h"
#include "kvtier/status.h"
#include "kvtier/tier_manager.h"

namespace kvtier {

// One request's blocks of one layer.
struct SequenceLayer {
  RequestId request{};
  uint32_t tokens = 0;                 // the sequence's length (protection of recent blocks)
  std::span<const BlockKey> keys;      // its full blocks of this layer, by block index
  std::span<const SlotId> dram_slots;  // their DRAM slots, parallel to keys (pinned by the caller)
};

// The selection of one request for one layer: `blocks_per_head` block indices per KV head,
// row h at [h * blocks_per_head, (h + 1) * blocks_per_head) (the selector's layout). An index
// equal to keys.size() is the request's current, partially filled block: the engine holds
// it itself (it has no key yet), so its table entry is kNoSlot.
struct LayerSelection {
  SequenceLayer sequence;
  std::span<const uint32_t> blocks;
  uint32_t blocks_per_head = 0;
};

// Where one request's selected slices of one layer are, per KV head, in selection order.
struct PageTable {
  RequestId request{};
  uint32_t kv_heads = 0;
  uint32_t blocks_per_head = 0;
  std::vector<SlotId> slots;         // [kv_heads][blocks_per_head]; kNoSlot = the tail block
  std::vector<std::byte*> pointers;  // the same as addresses in the HBM tier (null: tail)
  SlotId at(uint32_t head, uint32_t i) const { return slots[size_t{head} * blocks_per_head + i]; }
};

struct LayerPrefetch {
  std::vector<PageTable> tables;  // one per LayerSelection, in order
  Fence ready;                    // every slice of every table has landed (error: don't attend)
  uint32_t hits = 0;
  uint32_t misses = 0;            // slices copied by this call's batch
  uint32_t tail = 0;              // entries naming the tail block
};

struct SparsePrefetcherStats {
  uint64_t layer_calls = 0;   // Prefetch calls
  uint64_t hint_calls = 0;    // PrefetchHint calls
  uint64_t batches = 0;       // MoveBatches submitted (at most one per call)
  uint64_t slices_loaded = 0; // segments submitted (exact + hint)
  uint64_t hint_slices = 0;   // of which by hints
};

class SparsePrefetcher {
 public:
  // Borrows `cache` and `dram_to_hbm` (whose source is the DRAM tier the slots name and whose
  // destination is the cache's HBM tier); both must outlive the prefetcher.
  static Result<std::unique_ptr<SparsePrefetcher>> Create(SliceCache* cache, Mover* dram_to_hbm);

  // The exact selection of one layer for a batch of requests: tables + one load batch.
  // kInvalidArgument for malformed selections (checked before anything is looked up);
  // kExhausted when the misses find no slots (the batch's working set exceeds the cache:
  // admit fewer requests).
  Result<LayerPrefetch> Prefetch(std::span<const LayerSelection> layer);
  // A predicted selection (e.g. layer l+1's from layer l's query): loads its misses in one
  // batch and caches them; nothing is marked as used by the step. The fence is the load's.
  Result<Fence> PrefetchHint(std::span<const LayerSelection> layer);
  // Closes the decode step (SliceCache::EndStep): `last_use` = the step's attention fence.
  void EndStep(Fence last_use) { cache_->EndStep(std::move(last_use)); }

  SparsePrefetcherStats Stats() const;
  SliceCache* cache() const { return cache_; }

 private:
  SparsePrefetcher(SliceCache* cache, Mover* mover) : cache_(cache), mover_(mover) {}
  Status Check(std::span<const LayerSelection> layer) const;
  Result<Acquisition> Load(std::span<const LayerSelection> layer, SliceUse use, std::vector<SliceRef>* refs,
                           uint32_t* tail);

  SliceCache* cache_;
  Mover* mover_;
  struct Counters {
    std::atomic<uint64_t> layer_calls{0}, hint_calls{0}, batches{0}, slices_loaded{0}, hint_slices{0};
  };
  mutable Counters counters_;  // relaxed: statistics only
};

// The DRAM slots of blocks [begin, end) of `pins` (every one resident in DRAM), in order:
// the `dram_slots` of a SequenceLayer.
Status DramSlotsOf(const TierManager& tm, const PinSet& pins, std::vector<SlotId>* out, size_t begin = 0,
                   size_t end = SIZE_MAX);

}  // namespace kvtier
