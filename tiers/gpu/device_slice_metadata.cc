#include "device_slice_metadata.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace kvtier {

namespace {

constexpr uint64_t kAlign = 256;
uint64_t Up(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

struct Layout {
  uint64_t bounds, scales, scores, selected, multiples, total;
};

Layout LayoutOf(const DeviceSliceMetadataOptions& o) {
  const uint64_t slices = uint64_t{o.layers} * o.kv_heads * o.max_blocks;
  Layout l{};
  l.bounds = 0;
  l.scales = l.bounds + Up(slices * 2 * o.head_dim);
  l.scores = l.scales + Up(slices * sizeof(float));
  l.selected = l.scores + Up(uint64_t{o.kv_heads} * o.max_blocks * sizeof(float));
  l.multiples = l.selected + Up(uint64_t{o.kv_heads} * o.max_blocks * sizeof(uint32_t));
  l.total = l.multiples + Up((uint64_t{o.kv_heads} + 1) * (uint64_t{o.max_blocks} + 1) * sizeof(uint32_t));
  return l;
}

// Signals the fence once the work enqueued before it on the stream is done.
void CUDART_CB SignalFence(void* p) {
  auto* signal = static_cast<FenceSignal*>(p);
  signal->Signal(Status::Ok());
  delete signal;
}

}  // namespace

Status DeviceSliceMetadataOptions::Validate() const {
  if (layers == 0 || kv_heads == 0 || block_tokens == 0 || max_blocks == 0) {
    return Status::InvalidArgument(fmt::format(
        "device slice metadata: layers={} kv_heads={} block_tokens={} max_blocks={} (all must be >= 1)", layers,
        kv_heads, block_tokens, max_blocks));
  }
  if (head_dim != 64 && head_dim != 128) {
    return Status::InvalidArgument(fmt::format("device slice metadata: head_dim={} (the kernel takes 64 or 128)", head_dim));
  }
  if (uint64_t{layers} * kv_heads * max_blocks > (uint64_t{1} << 40)) {
    return Status::InvalidArgument("device slice metadata: layers x kv_heads x max_blocks is absurd");
  }
  return Status::Ok();
}

uint64_t DeviceSliceMetadata::ArenaBytes(const DeviceSliceMetadataOptions& options) { return LayoutOf(options).total; }

Result<std::unique_ptr<DeviceSliceMetadata>> DeviceSliceMetadata::Create(const DeviceSliceMetadataOptions& options,
                                                                         Tier* hbm, cudaStream_t stream) {
  KVT_RETURN_IF_ERROR(options.Validate());
  if (hbm == nullptr) return Status::InvalidArgument("device slice metadata: no HBM tier");
  KVT_ASSIGN_OR_RETURN(MetadataArena arena, hbm->ReserveMetadata(ArenaBytes(options)));
  if (arena.address.device.value() < 0) {
    hbm->ReleaseMetadata(arena);
    return Status::InvalidArgument(fmt::format("device slice metadata: tier {} hands out host memory, not device memory",
                                               hbm->name()));
  }
  std::unique_ptr<DeviceSliceMetadata> m(
      new DeviceSliceMetadata(options, hbm, arena, arena.address.device.value(), stream));
  KVT_RETURN_IF_ERROR(m->Init());  // on failure the destructor returns the arena
  return m;
}

DeviceSliceMetadata::DeviceSliceMetadata(const DeviceSliceMetadataOptions& options, Tier* hbm, MetadataArena arena,
                                         int device, cudaStream_t stream)
    : options_(options),
      hbm_(hbm),
      arena_(arena),
      device_(device),
      stream_(stream),
      tokens_(options.layers, 0),
      blocks_(options.layers, 0) {
  const Layout l = LayoutOf(options);
  std::byte* base = arena.address.ptr;
  bounds_ = reinterpret_cast<int8_t*>(base + l.bounds);
  scales_ = reinterpret_cast<float*>(base + l.scales);
  scores_ = reinterpret_cast<float*>(base + l.scores);
  selected_ = reinterpret_cast<uint32_t*>(base + l.selected);
  multiples_ = reinterpret_cast<uint32_t*>(base + l.multiples);
}

Status DeviceSliceMetadata::Init() {
  DeviceGuard guard(device_);
  const Layout l = LayoutOf(options_);
  KVT_ASSIGN_OR_RETURN(mirror_, PinnedBuffer::Allocate(l.scores));  // bounds + scales
  copied_.reserve(options_.layers);
  for (uint32_t i = 0; i < options_.layers; ++i) {
    KVT_ASSIGN_OR_RETURN(CudaEvent e, CudaEvent::Create(device_));
    copied_.push_back(std::move(e));
  }
  // The offset table: row i = {0, i, 2i, ..., kv_heads·i} — {0, blocks} is the one request's
  // block range, {0, k, 2k, ...} the selected offsets of k entries per KV head.
  const size_t width = size_t{options_.kv_heads} + 1;
  std::vector<uint32_t> multiples(width * (size_t{options_.max_blocks} + 1));
  for (uint32_t i = 0; i <= options_.max_blocks; ++i) {
    for (uint32_t j = 0; j < width; ++j) multiples[i * width + j] = i * j;
  }
  // On the stream (which need not synchronise with the legacy one), and waited for:
  // `multiples` is a local.
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(multiples_, multiples.data(), multiples.size() * sizeof(uint32_t),
                                           cudaMemcpyHostToDevice, stream_),
                           "device slice metadata: offset table upload");
  KVT_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream_), "device slice metadata: init");
  return Status::Ok();
}

DeviceSliceMetadata::~DeviceSliceMetadata() {
  {
    DeviceGuard guard(device_);
    (void)cudaStreamSynchronize(stream_);  // nothing may still read or write the arena
  }
  hbm_->ReleaseMetadata(arena_);
}

const int8_t* DeviceSliceMetadata::bounds(LayerId layer, uint32_t kv_head) const {
  const uint64_t slice = (uint64_t{layer.value()} * options_.kv_heads + kv_head) * options_.max_blocks;
  return bounds_ + slice * 2 * options_.head_dim;
}

const float* DeviceSliceMetadata::scales(LayerId layer, uint32_t kv_head) const {
  return scales_ + (uint64_t{layer.value()} * options_.kv_heads + kv_head) * options_.max_blocks;
}

Result<Fence> DeviceSliceMetadata::Update(LayerId layer, const SliceMetadata& host) {
  const SliceMetadataOptions& ho = host.options();
  const uint32_t l = layer.value(), kv = options_.kv_heads, d = options_.head_dim, cap = options_.max_blocks;
  if (l >= options_.layers) {
    return Status::InvalidArgument(fmt::format("device slice metadata: layer {} of {}", l, options_.layers));
  }
  if (ho.layers != options_.layers || ho.kv_heads != kv || ho.head_dim != d || ho.block_tokens != options_.block_tokens) {
    return Status::InvalidArgument(fmt::format(
        "device slice metadata: host metadata is {} layers x {} kv heads x d {} x {}-token blocks, the device's {} x {} x "
        "{} x {}",
        ho.layers, ho.kv_heads, ho.head_dim, ho.block_tokens, options_.layers, kv, d, options_.block_tokens));
  }
  const uint64_t tokens = host.tokens(layer);
  const uint32_t blocks = host.blocks(layer);
  if (tokens < tokens_[l]) {
    return Status::FailedPrecondition(fmt::format(
        "device slice metadata: layer {} has {} tokens on the host, fewer than the {} already mirrored", l, tokens,
        tokens_[l]));
  }
  if (blocks > cap) {
    return Status::Exhausted(fmt::format("device slice metadata: layer {} has {} blocks, the arena holds {} per KV head", l,
                                         blocks, cap));
  }
  if (tokens == tokens_[l]) return Fence();
  const uint32_t first = static_cast<uint32_t>(tokens_[l] / options_.block_tokens);  // sealed blocks already mirrored
  DeviceGuard guard(device_);
  if (tokens_[l] % options_.block_tokens != 0) {
    // The mirror bytes of block `first` (the old partial block) may still be in flight.
    KVT_RETURN_IF_CUDA_ERROR(cudaEventSynchronize(copied_[l].get()), "device slice metadata: previous copy");
  }
  const uint64_t row = uint64_t{cap} * 2 * d;  // bytes of one (layer, head)'s bounds
  const uint64_t head0 = uint64_t{l} * kv;
  auto* mirror_bounds = reinterpret_cast<int8_t*>(mirror_.data());
  auto* mirror_scales = reinterpret_cast<float*>(mirror_.data() + LayoutOf(options_).scales);
  for (uint32_t h = 0; h < kv; ++h) {
    KVT_ASSIGN_OR_RETURN(SliceBoundsView v, host.Bounds(layer, h));
    std::memcpy(mirror_bounds + (head0 + h) * row + size_t{first} * 2 * d, v.compact.data() + size_t{first} * 2 * d,
                size_t{blocks - first} * 2 * d);
    std::memcpy(mirror_scales + (head0 + h) * cap + first, v.scales.data() + first,
                size_t{blocks - first} * sizeof(float));
  }
  const size_t bounds_offset = head0 * row + size_t{first} * 2 * d;
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(bounds_ + bounds_offset, row, mirror_bounds + bounds_offset, row,
                                             size_t{blocks - first} * 2 * d, kv, cudaMemcpyHostToDevice, stream_),
                           "device slice metadata: bounds copy");
  const size_t scales_offset = head0 * cap + first;
  KVT_RETURN_IF_CUDA_ERROR(cudaMemcpy2DAsync(scales_ + scales_offset, size_t{cap} * sizeof(float),
                                             mirror_scales + scales_offset, size_t{cap} * sizeof(float),
                                             size_t{blocks - first} * sizeof(float), kv, cudaMemcpyHostToDevice, stream_),
                           "device slice metadata: scales copy");
  KVT_RETURN_IF_CUDA_ERROR(cudaEventRecord(copied_[l].get(), stream_), "device slice metadata: event");
  tokens_[l] = tokens;
  blocks_[l] = blocks;
  auto [fence, signal] = Fence::Make();
  auto* heap = new FenceSignal(std::move(signal));
  if (const cudaError_t e = cudaLaunchHostFunc(stream_, SignalFence, heap); e != cudaSuccess) {
    delete heap;  // signals kCancelled; the copies are enqueued, report the error
    return FromCuda(e, "device slice metadata: fence");
  }
  return fence;
}

Result<DeviceSelection> DeviceSliceMetadata::SelectOnDevice(LayerId layer, const void* queries,
                                                            kernels::QuestQueryType type, uint32_t q_heads,
                                                            const QuestSelectorOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  const uint32_t l = layer.value(), kv = options_.kv_heads, d = options_.head_dim;
  if (l >= options_.layers) {
    return Status::InvalidArgument(fmt::format("device slice metadata: layer {} of {}", l, options_.layers));
  }
  if (options.block_tokens != options_.block_tokens) {
    return Status::InvalidArgument(fmt::format("device slice metadata: selector block_tokens {} != the metadata's {}",
                                               options.block_tokens, options_.block_tokens));
  }
  if (!options.use_compact_metadata) {
    return Status::FailedPrecondition("device slice metadata: holds the compact (int8) bounds only");
  }
  if (q_heads == 0 || q_heads % kv != 0) {
    return Status::InvalidArgument(fmt::format("device slice metadata: {} query heads for {} kv heads", q_heads, kv));
  }
  if (queries == nullptr) return Status::InvalidArgument("device slice metadata: null queries");
  const uint32_t blocks = blocks_[l];
  const bool dense_layer = l < options.dense_layers;
  kernels::QuestSelectParams params{.budget_tokens = options.budget_tokens, .block_tokens = options.block_tokens,
                                    .sink_blocks = options.sink_blocks,
                                    // A dense layer: a minimum of every block selects them all.
                                    .min_blocks = dense_layer ? std::numeric_limits<uint32_t>::max() : options.min_blocks,
                                    .combine = static_cast<kernels::GqaCombine>(options.combine)};
  DeviceSelection out{.layer = layer, .kv_heads = kv, .blocks = blocks, .indices = selected_};
  if (blocks == 0) return out;
  out.per_head = kernels::QuestBudgetBlocksOf(blocks, params);
  out.dense = out.per_head == blocks;
  DeviceGuard guard(device_);
  const size_t width = size_t{kv} + 1;
  kernels::QuestSelectDeviceArgs a;
  a.requests = 1;
  a.q_heads = q_heads;
  a.kv_heads = kv;
  a.head_dim = d;
  a.max_blocks = blocks;
  a.params = params;
  a.query_type = type;
  a.queries = queries;
  a.block_offsets = multiples_ + blocks * width;  // {0, blocks}
  a.bounds = bounds(layer, 0);                    // head h at h · max_blocks slices
  a.scales = scales(layer, 0);
  a.scores = scores_;
  a.head_pitch = options_.max_blocks;
  a.selected_offsets = multiples_ + out.per_head * width;  // {0, k, 2k, ...}
  a.selected = selected_;
  a.programmatic_dependent_launch = options_.programmatic_dependent_launch;
  a.early_metadata = options_.programmatic_dependent_launch;  // Update's copies are never the kernel waited for
  // row_counters stays null: the kernel's owner measured the fused form no faster
  // (kernels/quest_select.cuh); the top-k rides PDL behind the scores instead.
  KVT_RETURN_IF_CUDA_ERROR(kernels::LaunchQuestSelect(a, stream_),
                           fmt::format("device slice metadata: quest select, layer {}", l));
  return out;
}

Result<Fence> DeviceSliceMetadata::CopySelectionToHost(const DeviceSelection& selection, std::span<uint32_t> out) {
  if (selection.indices != selected_ || selection.kv_heads != options_.kv_heads ||
      selection.per_head > options_.max_blocks) {
    return Status::InvalidArgument("device slice metadata: the selection is not one of this object's");
  }
  const size_t n = size_t{selection.kv_heads} * selection.per_head;
  if (out.size() < n) {
    return Status::InvalidArgument(
        fmt::format("device slice metadata: {} host entries for a selection of {} kv heads x {}", out.size(),
                    selection.kv_heads, selection.per_head));
  }
  if (n == 0) return Fence();
  DeviceGuard guard(device_);
  KVT_RETURN_IF_CUDA_ERROR(
      cudaMemcpyAsync(out.data(), selected_, n * sizeof(uint32_t), cudaMemcpyDeviceToHost, stream_),
      "device slice metadata: selection copy");
  auto [fence, signal] = Fence::Make();
  auto* heap = new FenceSignal(std::move(signal));
  if (const cudaError_t e = cudaLaunchHostFunc(stream_, SignalFence, heap); e != cudaSuccess) {
    delete heap;  // signals kCancelled; the copy is enqueued, report the error
    return FromCuda(e, "device slice metadata: selection fence");
  }
  return fence;
}

}  // namespace kvtier
