// DeviceSliceMetadata: the Quest slice metadata of one sequence resident in HBM (issue 5,
// docs/sparse.md "Who owns the metadata"), and selection on the GPU over it.
//
// The host SliceMetadata stays the one the engine appends to (it keeps the fp32 running
// bounds of the partial block); this object mirrors its compact form — int8 min/max per
// channel + one fp32 scale per slice — in a metadata arena of the HBM tier
// (Tier::ReserveMetadata, so the bytes show in the tier's usage and statistics), in the
// layout kernels/quest_select.cuh reads: per (layer, KV head) `max_blocks` slots of
// [2][d] int8 (min then max) and `max_blocks` fp32 scales.
//
// Update(layer, host) copies what changed since the last Update of that layer — blocks
// sealed since, and the partial (last) block, whose bounds change with every token — with
// two async copies (cudaMemcpy2DAsync over the KV heads, bounds then scales) on the
// stream, from a pinned host mirror; a sealed block is copied once. The returned fence
// signals when the copies are done; work enqueued later on the same stream (selection) is
// ordered after them anyway. Before it rewrites the partial block's mirror bytes, Update
// waits for the previous copy of that layer (one step old: normally done).
//
// SelectOnDevice(layer, queries, ...) runs LaunchQuestSelect (scores, then top-k) ONCE for
// the layer — every KV head in the same launches, the heads' slices read at their fixed
// capacity (QuestSelectDeviceArgs::head_pitch = max_blocks) — and leaves the selection on
// the device: [kv_heads][per_head] block indices, each row ascending, equal to
// QuestSelector::Select on the same host metadata except where a block's score is a near tie
// of the k-th (the kernel's fixed-point scores against the reference's double ones, within
// the tolerance of kernels/reference/quest_select.h; the tests bound it).
// CopySelectionToHost brings them to host memory (async, with a fence) for the
// SparsePrefetcher, which takes host selections.
//
// The stream is borrowed and must outlive the object; the destructor synchronises it and
// returns the arena. Not thread-safe: one engine thread calls Update and SelectOnDevice.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "cuda_util.h"
#include "kvtier/fence.h"
#include "kvtier/quest_selector.h"
#include "kvtier/slice_metadata.h"
#include "kvtier/status.h"
#include "kvtier/tier.h"
#include "quest_select.cuh"

namespace kvtier {

struct DeviceSliceMetadataOptions {
  uint32_t layers = 0;        // >= 1
  uint32_t kv_heads = 0;      // >= 1
  uint32_t head_dim = 0;      // 64 or 128 (the kernel's)
  uint32_t block_tokens = 16; // must equal the host SliceMetadata's
  uint32_t max_blocks = 0;    // capacity per (layer, KV head), >= 1: the longest sequence / block_tokens
  // SelectOnDevice launches the selection with programmatic dependent launch: behind the
  // engine's kernel that writes the queries, its CTAs start while that kernel finishes, read
  // their metadata before they wait for it (only Update writes the mirror, by copies that are
  // complete before any later kernel starts: QuestSelectDeviceArgs::early_metadata) and the
  // queries after. Same selection. Off: every launch waits for the previous work as usual.
  bool programmatic_dependent_launch = false;

  Status Validate() const;  // kInvalidArgument naming the field
};

// One layer's selection, on the device. `indices` stays valid until the next SelectOnDevice.
struct DeviceSelection {
  LayerId layer{0};
  uint32_t kv_heads = 0;
  uint32_t blocks = 0;    // blocks of the layer mirrored on the device
  uint32_t per_head = 0;  // selected blocks per KV head
  bool dense = false;     // every block selected (a dense layer, or a budget covering all)
  const uint32_t* indices = nullptr;  // device: [kv_heads][per_head], each row ascending
};

class DeviceSliceMetadata {
 public:
  // Bytes of the metadata arena: the mirror plus the selection's scratch and output.
  static uint64_t ArenaBytes(const DeviceSliceMetadataOptions& options);

  // Reserves ArenaBytes from `hbm`'s metadata budget (kExhausted when it does not fit;
  // kInvalidArgument when the arena is not device memory, e.g. the emulated tier).
  static Result<std::unique_ptr<DeviceSliceMetadata>> Create(const DeviceSliceMetadataOptions& options, Tier* hbm,
                                                             cudaStream_t stream);
  ~DeviceSliceMetadata();
  DeviceSliceMetadata(const DeviceSliceMetadata&) = delete;
  DeviceSliceMetadata& operator=(const DeviceSliceMetadata&) = delete;

  // Mirrors `host`'s blocks of `layer` that changed since the last Update of this layer.
  // kInvalidArgument for a layer out of range or a host shape other than the options';
  // kExhausted (nothing copied) when the layer has more than max_blocks blocks;
  // kFailedPrecondition when `host` has fewer tokens than already mirrored. The fence
  // signals when the copies are done (with an error if they failed).
  Result<Fence> Update(LayerId layer, const SliceMetadata& host);

  // `queries`: device memory, [q_heads][head_dim] of `type` (q_heads a positive multiple of
  // kv_heads). options as QuestSelector's (block_tokens must match; compact metadata only).
  // A layer with no blocks gives an empty selection. Enqueued on the stream; read the
  // indices after it (or on it).
  Result<DeviceSelection> SelectOnDevice(LayerId layer, const void* queries, kernels::QuestQueryType type,
                                         uint32_t q_heads, const QuestSelectorOptions& options);

  // Hands a device selection to host code (the SparsePrefetcher, which takes host block
  // indices): one async copy of `selection.indices` ([kv_heads][per_head]) into `out` on the
  // stream, after the SelectOnDevice launches. `out` is host memory of at least kv_heads ×
  // per_head entries; pinned memory keeps the call asynchronous (pageable memory makes it
  // wait for the copy). The fence signals once the indices have landed: then `out` is the
  // `blocks` of a LayerSelection with blocks_per_head = per_head, laid out as
  // Selection::indices (an index equal to the layer's full blocks is the partial block).
  // kInvalidArgument for a selection this object did not produce or an `out` too small; an
  // empty selection copies nothing (a ready fence). Keep `out` alive until the fence signals.
  Result<Fence> CopySelectionToHost(const DeviceSelection& selection, std::span<uint32_t> out);

  uint32_t blocks(LayerId layer) const { return layer.value() < options_.layers ? blocks_[layer.value()] : 0; }
  // Device views of one (layer, KV head): [max_blocks][2][d] int8 and [max_blocks] fp32.
  const int8_t* bounds(LayerId layer, uint32_t kv_head) const;
  const float* scales(LayerId layer, uint32_t kv_head) const;
  uint64_t bytes() const { return arena_.bytes; }
  const DeviceSliceMetadataOptions& options() const { return options_; }

 private:
  DeviceSliceMetadata(const DeviceSliceMetadataOptions& options, Tier* hbm, MetadataArena arena, int device,
                      cudaStream_t stream);
  Status Init();

  DeviceSliceMetadataOptions options_;
  Tier* hbm_;
  MetadataArena arena_;
  int device_;
  cudaStream_t stream_;
  // Arena layout (each part 256-aligned): bounds, scales, scores scratch [kv_heads][max_blocks],
  // selection [kv_heads][max_blocks], offset table: for i in [0, max_blocks] the kv_heads + 1
  // multiples {0, i, 2i, ..., kv_heads·i} (the kernel's block offsets {0, blocks} and
  // selected offsets of per_head entries per KV head).
  int8_t* bounds_ = nullptr;
  float* scales_ = nullptr;
  float* scores_ = nullptr;
  uint32_t* selected_ = nullptr;
  uint32_t* multiples_ = nullptr;
  PinnedBuffer mirror_;             // bounds then scales, as on the device
  std::vector<CudaEvent> copied_;   // per layer: after its last Update's copies
  std::vector<uint64_t> tokens_;    // per layer: mirrored
  std::vector<uint32_t> blocks_;    // per layer: mirrored
};

}  // namespace kvtier
