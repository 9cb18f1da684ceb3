// LayerPrefill: one layer of staging at a time; each finished layer goes to DRAM blocks of
// the TierManager in one MoveBatch, and its staging is released with the copy's fence.
#include "kvtier/layer_prefill.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <utility>
#include <variant>

namespace kvtier {
namespace {

float Bf16ToFloat(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

float F16ToFloat(uint16_t h) {
  const uint32_t sign = uint32_t{h & 0x8000u} << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0x1f) {
    bits = sign | 0x7f800000u | (mant << 13);  // inf / NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {  // subnormal: normalise
    uint32_t e = 113;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    bits = sign | (e << 23) | ((mant & 0x3ffu) << 13);
  }
  return std::bit_cast<float>(bits);
}

}  // namespace

Status LayerPrefillOptions::Validate() const {
  KVT_RETURN_IF_ERROR(geometry.Validate());
  if (prompt_tokens < geometry.block_tokens) {
    return Status::InvalidArgument(
        fmt::format("prompt_tokens {} is less than one block ({} tokens)", prompt_tokens, geometry.block_tokens));
  }
  if (prompt_tokens / geometry.block_tokens > UINT32_MAX / geometry.kv_heads) {
    return Status::InvalidArgument(fmt::format("prompt_tokens {} is too many blocks", prompt_tokens));
  }
  if (max_layers_in_hbm < 1 || max_layers_in_hbm > geometry.layers) {
    return Status::InvalidArgument(
        fmt::format("max_layers_in_hbm {} is outside [1, {} layers]", max_layers_in_hbm, geometry.layers));
  }
  return Status();
}

Result<std::unique_ptr<LayerPrefill>> LayerPrefill::Create(const LayerPrefillOptions& options, TierManager* tm,
                                                           Tier* hbm, Mover* hbm_to_dram, std::vector<BlockKey> keys,
                                                           LayerKeysFn on_keys) {
  KVT_RETURN_IF_ERROR(options.Validate().Annotate("LayerPrefillOptions"));
  if (tm == nullptr || hbm == nullptr || hbm_to_dram == nullptr) {
    return Status::InvalidArgument("LayerPrefill needs a TierManager, an HBM tier and an HBM -> DRAM mover");
  }
  if (tm->geometry() != options.geometry) return Status::InvalidArgument("LayerPrefill: geometry differs from the TierManager's");
  if (!tm->has_tier(TierKind::kDram)) return Status::InvalidArgument("LayerPrefill: the TierManager has no DRAM tier");
  if (hbm->kind() != TierKind::kHbm || hbm->caps().slot_bytes < options.geometry.slice_bytes()) {
    return Status::InvalidArgument(fmt::format("LayerPrefill: tier {} ({}, {} B slots) is not an HBM tier of {} B slices",
                                               hbm->name(), TierName(hbm->kind()), hbm->caps().slot_bytes,
                                               options.geometry.slice_bytes()));
  }
  if (hbm_to_dram->source() != TierKind::kHbm || hbm_to_dram->destination() != TierKind::kDram) {
    return Status::InvalidArgument(fmt::format("LayerPrefill: mover {} does not copy hbm -> dram", hbm_to_dram->name()));
  }
  const uint64_t blocks = options.prompt_tokens / options.geometry.block_tokens;
  if (keys.size() != blocks * options.geometry.layers) {
    return Status::InvalidArgument(fmt::format("LayerPrefill: {} keys for {} full blocks x {} layers", keys.size(),
                                               blocks, options.geometry.layers));
  }
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].layer.value() != i % options.geometry.layers) {
      return Status::InvalidArgument(fmt::format("LayerPrefill: key {} is of layer {}, expected {} (block-major order)",
                                                 i, keys[i].layer.value(), i % options.geometry.layers));
    }
  }
  return std::unique_ptr<LayerPrefill>(
      new LayerPrefill(options, tm, hbm, hbm_to_dram, std::move(keys), std::move(on_keys)));
}

LayerPrefill::LayerPrefill(const LayerPrefillOptions& options, TierManager* tm, Tier* hbm, Mover* mover,
                           std::vector<BlockKey> keys, LayerKeysFn on_keys)
    : options_(options),
      tm_(tm),
      hbm_(hbm),
      mover_(mover),
      keys_(std::move(keys)),
      on_keys_(std::move(on_keys)),
      blocks_(static_cast<uint32_t>(options.prompt_tokens / options.geometry.block_tokens)),
      shared_(std::make_shared<Shared>()) {}

LayerPrefill::~LayerPrefill() {
  if (open_) hbm_->Release(staging_.slots, Fence());
  std::unique_lock lock(shared_->mu);
  shared_->cv.wait(lock, [&] { return shared_->in_flight == 0; });
  // pins_ release on destruction: committed blocks stay cached, uncommitted are dropped.
}

Result<LayerStaging> LayerPrefill::BeginLayer(LayerId layer) {
  if (open_) return Status::FailedPrecondition(fmt::format("layer {} is still open: FinishLayer it first", staging_.layer.value()));
  if (layer.value() != next_layer_ || next_layer_ >= options_.geometry.layers) {
    return Status::InvalidArgument(fmt::format("BeginLayer({}): the next layer is {} of {}", layer.value(), next_layer_,
                                               options_.geometry.layers));
  }
  const uint64_t slices = uint64_t{blocks_} * options_.geometry.kv_heads;
  const uint64_t bytes = slices * options_.geometry.slice_bytes();
  {
    std::unique_lock lock(shared_->mu);
    if (shared_->layers_in_hbm >= options_.max_layers_in_hbm) ++copy_waits_;
    shared_->cv.wait(lock, [&] { return shared_->layers_in_hbm < options_.max_layers_in_hbm; });
  }
  KVT_ASSIGN_OR_RETURN(std::vector<SlotId> slots, hbm_->Reserve(static_cast<uint32_t>(slices)));
  {
    std::lock_guard lock(shared_->mu);
    ++shared_->layers_in_hbm;
    shared_->hbm_bytes += bytes;
    shared_->peak_hbm_bytes = std::max(shared_->peak_hbm_bytes, shared_->hbm_bytes);
  }
  LayerStaging s;
  s.layer = layer;
  s.blocks = blocks_;
  s.kv_heads = options_.geometry.kv_heads;
  s.pointers.reserve(slots.size());
  for (SlotId slot : slots) {
    const Location loc = hbm_->Locate(slot);
    const auto* mem = std::get_if<MemoryAddress>(&loc);
    s.pointers.push_back(mem != nullptr ? mem->ptr : nullptr);
  }
  s.slots = std::move(slots);
  staging_ = s;
  open_ = true;
  ++next_layer_;
  return s;
}

Result<Fence> LayerPrefill::FinishLayer(Fence written) {
  if (!open_) return Status::FailedPrecondition("FinishLayer without BeginLayer");
  const KvGeometry& g = options_.geometry;
  const uint32_t layer = staging_.layer.value();
  const uint64_t bytes = uint64_t{blocks_} * g.block_bytes();
  // Everything that can fail before the copy; on failure the staging is given back.
  auto give_back = [&](Status s) {
    hbm_->Release(staging_.slots, written);
    std::lock_guard lock(shared_->mu);
    --shared_->layers_in_hbm;
    shared_->hbm_bytes -= bytes;
    shared_->cv.notify_all();
    open_ = false;
    return std::move(s).Annotate(fmt::format("prefill layer {}", layer));
  };
  Fence meta_reads;
  if (on_keys_) {
    Result<Fence> r = on_keys_(staging_, written);
    if (!r.ok()) return give_back(std::move(r).status().Annotate("metadata"));
    meta_reads = std::move(r).value();
  }
  std::vector<BlockKey> layer_keys;
  layer_keys.reserve(blocks_);
  for (uint32_t b = 0; b < blocks_; ++b) layer_keys.push_back(keys_[size_t{b} * g.layers + layer]);
  Result<PinSet> pins = tm_->Allocate(layer_keys, TierKind::kDram);
  if (!pins.ok()) return give_back(std::move(pins).status());
  MoveBatch batch;
  batch.segments.reserve(staging_.slots.size());
  for (uint32_t b = 0; b < blocks_; ++b) {
    Result<SlotId> dram = tm_->SlotOf(*pins, b, TierKind::kDram);
    if (!dram.ok()) {
      (void)tm_->Release(*pins);  // uncommitted: dropped
      return give_back(std::move(dram).status());
    }
    for (uint32_t h = 0; h < g.kv_heads; ++h) {
      batch.segments.push_back(CopySegment{.src = staging_.slots[size_t{b} * g.kv_heads + h],
                                           .dst = *dram,
                                           .src_offset = 0,
                                           .dst_offset = g.SliceOffset(h),
                                           .bytes = g.slice_bytes()});
    }
  }
  batch.wait_for.push_back(written);
  Fence copied = mover_->Submit(std::move(batch));
  // Commit cannot fail here: the blocks were allocated by us, in state writing.
  KVT_CHECK(tm_->Commit(*pins, copied).ok());
  const Fence staging_done = Fence::All(std::vector<Fence>{copied, meta_reads, written});
  hbm_->Release(staging_.slots, staging_done);
  {
    std::lock_guard lock(shared_->mu);
    ++shared_->in_flight;
  }
  staging_done.OnReady([shared = shared_, bytes, copied](const Status&) {
    std::lock_guard lock(shared->mu);
    --shared->layers_in_hbm;
    shared->hbm_bytes -= bytes;
    if (copied.ready() && copied.Wait().ok()) shared->offloaded_bytes += bytes;
    --shared->in_flight;
    shared->cv.notify_all();
  });
  pins_.push_back(std::move(*pins));
  copies_.push_back(copied);
  open_ = false;
  ++layers_finished_;
  return copied;
}

Result<std::vector<PinSet>> LayerPrefill::Finish() {
  if (open_) return Status::FailedPrecondition(fmt::format("layer {} is still open", staging_.layer.value()));
  if (next_layer_ != options_.geometry.layers) {
    return Status::FailedPrecondition(fmt::format("only {} of {} layers prefilled", next_layer_, options_.geometry.layers));
  }
  Status first;
  for (size_t l = 0; l < copies_.size(); ++l) {
    Status s = copies_[l].Wait();
    if (!s.ok() && first.ok()) first = std::move(s).Annotate(fmt::format("prefill layer {} copy to DRAM", l));
  }
  {
    std::unique_lock lock(shared_->mu);
    shared_->cv.wait(lock, [&] { return shared_->in_flight == 0; });
  }
  if (!first.ok()) return first;
  return std::move(pins_);
}

LayerPrefillStats LayerPrefill::Stats() const {
  LayerPrefillStats s;
  s.layer_bytes = uint64_t{blocks_} * options_.geometry.block_bytes();
  std::lock_guard lock(shared_->mu);
  s.peak_hbm_bytes = shared_->peak_hbm_bytes;
  s.hbm_bytes = shared_->hbm_bytes;
  s.offloaded_bytes = shared_->offloaded_bytes;
  s.layers_finished = layers_finished_;
  s.copy_waits = copy_waits_;
  return s;
}

Status GatherLayerKeys(const KvGeometry& g, const LayerStaging& staging, std::vector<float>* keys) {
  const uint32_t e = DTypeBytes(g.dtype);
  if (g.dtype != DType::kF32 && g.dtype != DType::kF16 && g.dtype != DType::kBF16) {
    return Status::Unimplemented(fmt::format("GatherLayerKeys: {} keys", DTypeName(g.dtype)));
  }
  const uint64_t tokens = uint64_t{staging.blocks} * g.block_tokens;
  keys->assign(size_t{g.kv_heads} * tokens * g.head_dim, 0.0f);
  for (uint32_t b = 0; b < staging.blocks; ++b) {
    for (uint32_t h = 0; h < g.kv_heads; ++h) {
      const std::byte* slice = staging.pointers[size_t{b} * g.kv_heads + h];
      if (slice == nullptr) return Status::FailedPrecondition("GatherLayerKeys: the staging is not host-addressable");
      float* out = keys->data() + (size_t{h} * tokens + size_t{b} * g.block_tokens) * g.head_dim;
      const size_t n = size_t{g.block_tokens} * g.head_dim;  // K comes first in a slice
      for (size_t i = 0; i < n; ++i) {
        if (g.dtype == DType::kF32) {
          std::memcpy(&out[i], slice + i * e, 4);
        } else {
          uint16_t v;
          std::memcpy(&v, slice + i * e, 2);
          out[i] = g.dtype == DType::kBF16 ? Bf16ToFloat(v) : F16ToFloat(v);
        }
      }
    }
  }
  return Status();
}

}  // namespace kvtier
