// LayerPrefill: a long prefill run one layer at a time (SparseServe §3.4), so that HBM holds
// at most one layer of the prompt's KV instead of every layer of every chunk so far.
//
//   auto p = LayerPrefill::Create(options, &tm, slice_tier, hbm_to_dram, keys, on_keys);
//   for l in layers:
//     LayerStaging s = p->BeginLayer(LayerId{l})    HBM slots for one layer of the prompt
//     ... the engine runs layer l over the whole prompt, writing K/V into s.pointers ...
//     p->FinishLayer(written)                       metadata hook, copy to DRAM, HBM freed
//   std::vector<PinSet> dram = p->Finish()         the blocks, in DRAM, pinned, per layer
//
// Staging is in slice-sized slots of an HBM tier (the SliceCache's tier: prefill and the
// slice cache share one HBM pool; size the cache's capacity_slices to leave the prefill its
// layer). Slice (block b, head h) is at pointers[b * kv_heads + h], laid out [K|V][token][dim].
// FinishLayer allocates the layer's blocks in the TierManager's DRAM tier, copies every
// slice into its block (at geometry.SliceOffset(h)) in one MoveBatch that waits for the
// engine's `written` fence, commits them with the copy's fence, and releases the staging
// with that fence. With max_layers_in_hbm = 1 (default) BeginLayer waits for the previous
// layer's copy, so the KV in HBM never exceeds one layer; 2 lets layer l+1 be written while
// layer l is copied out (two layers at peak).
//
// Only the prompt's full blocks (prompt_tokens / block_tokens) are keyed and offloaded; the
// tail (prompt_tokens % block_tokens tokens) has no key yet and is the engine's to keep (its
// decode tail buffer).
//
// Metadata: `on_keys(layer, staging, written)` runs in FinishLayer before the copy is
// submitted and returns the fence of its reads of the staging (released only after it). A
// GPU engine enqueues its min/max kernel and returns that kernel's fence; on host-addressable
// tiers GatherLayerKeys turns the staging into fp32 keys for SliceMetadata::Append.
//
// Externally synchronized: one engine thread drives a prefill. Counters are atomics.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/fence.h"
#include "kvtier/geometry.h"
#include "kvtier/mover.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"
#include "kvtier/tier_manager.h"

namespace kvtier {

struct LayerPrefillOptions {
  KvGeometry geometry{};
  uint64_t prompt_tokens = 0;      // >= block_tokens (at least one full block)
  // Layers whose staging may be in HBM at once: 1 = the one-layer bound (BeginLayer waits
  // for the previous layer's copy to DRAM); 2 = overlap writing with the copy.
  uint32_t max_layers_in_hbm = 1;
  Status Validate() const;
};

// One layer's staging in HBM.
struct LayerStaging {
  LayerId layer{};
  uint32_t blocks = 0;               // full blocks of the prompt
  uint32_t kv_heads = 0;
  std::vector<SlotId> slots;         // [block][head] slice slots of the HBM tier
  std::vector<std::byte*> pointers;  // their addresses (device pointers on a GPU tier)
};

// The metadata hook (see above). Returns the fence of its reads of the staging.
using LayerKeysFn = std::function<Result<Fence>(const LayerStaging& staging, const Fence& written)>;

struct LayerPrefillStats {
  uint64_t layer_bytes = 0;      // one layer of the prompt's full blocks
  uint64_t peak_hbm_bytes = 0;   // most staging bytes held at once (reserved until the copy signals)
  uint64_t hbm_bytes = 0;        // held now
  uint64_t offloaded_bytes = 0;  // copied to DRAM (OK)
  uint32_t layers_finished = 0;
  uint32_t copy_waits = 0;       // BeginLayer waited for an earlier layer's copy
};

class LayerPrefill {
 public:
  // Borrows `tm` (its DRAM tier receives the blocks), `hbm` (slot_bytes >= slice_bytes,
  // kind HBM) and `hbm_to_dram` (a mover from `hbm` to tm's DRAM tier); they must outlive
  // the prefill. `keys`: the prompt's full blocks x layers, block-major as KeyDeriver::Keys
  // gives them ((block b, layer l) at b * layers + l).
  static Result<std::unique_ptr<LayerPrefill>> Create(const LayerPrefillOptions& options, TierManager* tm,
                                                      Tier* hbm, Mover* hbm_to_dram, std::vector<BlockKey> keys,
                                                      LayerKeysFn on_keys = {});
  ~LayerPrefill();  // waits for copies in flight; unfinished layers' blocks are aborted

  // HBM for the next layer (layers go 0, 1, ... in order). kExhausted if the tier has no
  // room (the slice cache holds it: lower its capacity_slices).
  Result<LayerStaging> BeginLayer(LayerId layer);
  // The engine's writes of the open layer complete with `written`. Returns the copy's fence.
  // kAlreadyExists if the layer's blocks are already indexed (match the prefix first).
  Result<Fence> FinishLayer(Fence written);
  // Waits for every copy. The blocks in DRAM, pinned, one PinSet per layer in block order;
  // the first failed copy's status if any failed (its blocks are not in DRAM).
  Result<std::vector<PinSet>> Finish();

  LayerPrefillStats Stats() const;

 private:
  LayerPrefill(const LayerPrefillOptions& options, TierManager* tm, Tier* hbm, Mover* mover,
               std::vector<BlockKey> keys, LayerKeysFn on_keys);

  LayerPrefillOptions options_;
  TierManager* tm_;
  Tier* hbm_;
  Mover* mover_;
  std::vector<BlockKey> keys_;
  LayerKeysFn on_keys_;
  uint32_t blocks_ = 0;
  uint32_t next_layer_ = 0;
  bool open_ = false;
  LayerStaging staging_;
  std::vector<PinSet> pins_;     // per finished layer
  std::vector<Fence> copies_;    // per finished layer

  struct Shared {  // touched by copy callbacks on mover threads
    std::mutex mu;
    std::condition_variable cv;
    uint32_t layers_in_hbm = 0;
    uint64_t hbm_bytes = 0;
    uint64_t peak_hbm_bytes = 0;
    uint64_t offloaded_bytes = 0;
    uint32_t in_flight = 0;
  };
  std::shared_ptr<Shared> shared_;
  uint32_t copy_waits_ = 0;
  uint32_t layers_finished_ = 0;
};

// Keys of a host-addressable staging as fp32, head-major [kv_heads][blocks * block_tokens]
// [head_dim] (SliceMetadata::Append with KeyLayout::kHeadMajor). kUnimplemented for fp8,
// kFailedPrecondition if a pointer is null.
Status GatherLayerKeys(const KvGeometry& geometry, const LayerStaging& staging, std::vector<float>* keys);

}  // namespace kvtier
