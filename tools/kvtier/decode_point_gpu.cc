// `kvtier bench decode` on CUDA builds (decode_bench_gpu.cc describes the rows): one point's
// set-up (the KV arena, the metadata, the page lists, the plans), the arguments of its
// launches and the steps the rows time.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "quest_select.cuh"
#include "reference/sparse_attention.h"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {
namespace {

Status Alloc(DeviceMem& m, size_t bytes) {
  KVT_CUDA_OR_RETURN(cudaMalloc(&m.p, std::max<size_t>(bytes, 16)));
  return Status::Ok();
}

template <class T>
Status Upload(DeviceMem& m, const std::vector<T>& host) {
  KVT_RETURN_IF_ERROR(Alloc(m, host.size() * sizeof(T)));
  KVT_CUDA_OR_RETURN(cudaMemcpy(m.p, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  return Status::Ok();
}

struct Rng {  // xorshift64*: fast enough to fill a few hundred MB on the host
  uint64_t s;
  uint64_t Next() {
    s ^= s >> 12;
    s ^= s << 25;
    s ^= s >> 27;
    return s * 0x2545F4914F6CDD1DULL;
  }
};

// A finite bf16 of magnitude 2^-4 .. 2^2 and random sign.
uint16_t RandomBf16(Rng& rng) {
  const uint64_t r = rng.Next();
  const auto exp = static_cast<uint16_t>(123 + (r >> 8) % 6);
  return static_cast<uint16_t>(((r >> 16) & 0x8000u) | (exp << 7) | (r & 0x7fu));
}

}  // namespace

Point::~Point() {
  if (e0_ != nullptr) cudaEventDestroy(e0_);
  if (e1_ != nullptr) cudaEventDestroy(e1_);
}

Status Point::Setup(const cudaDeviceProp& prop) {
  const uint32_t d = o_.head_dim, bt = o_.block_tokens;
  blocks_ = (context_ + bt - 1) / bt;
  slices_ = batch_ * o_.kv_heads * blocks_;
  const uint64_t slice_bytes = uint64_t{2} * bt * d * 2;
  kv_bytes_ = size_t{slices_} * slice_bytes;
  params_ = {.budget_tokens = o_.budget, .block_tokens = bt, .sink_blocks = 1, .min_blocks = 3,
             .combine = kernels::GqaCombine::kMax};
  k_ = kernels::QuestBudgetBlocksOf(blocks_, params_);
  const size_t meta_bytes = size_t{slices_} * (2 * d + 4);
  const double step_bytes = double(meta_bytes) + double(batch_) * o_.kv_heads * k_ * slice_bytes;
  layers_ = o_.layers;
  if (layers_ == 0) {
    layers_ = static_cast<uint32_t>(std::clamp(std::ceil(4.0 * prop.l2CacheSize / step_bytes), 1.0, 32.0));
  }
  size_t free_b = 0, total_b = 0;
  KVT_CUDA_OR_RETURN(cudaMemGetInfo(&free_b, &total_b));
  const size_t per_layer = kv_bytes_ + meta_bytes + size_t{slices_} * 4;
  while (layers_ > 1 && layers_ * per_layer + kv_bytes_ > free_b * 7 / 10) --layers_;
  if (layers_ * per_layer + kv_bytes_ > free_b * 9 / 10) {
    return Status::Unavailable(fmt::format("context {} x batch {} needs {:.1f} GB of device memory, {:.1f} GB free",
                                           context_, batch_, (per_layer + kv_bytes_) / 1e9, free_b / 1e9));
  }
  shape_ = {.requests = batch_, .q_heads = o_.q_heads, .kv_heads = o_.kv_heads, .head_dim = d, .block_tokens = bt,
            .slot_bytes = slice_bytes};
  Rng rng{0x9E3779B97F4A7C15ULL ^ (uint64_t{context_} << 20) ^ batch_};

  // Arena: a 64 MiB random pattern copied over every layer's slices.
  KVT_RETURN_IF_ERROR(Alloc(arena_, layers_ * kv_bytes_));
  KVT_RETURN_IF_ERROR(Alloc(copy_dst_, kv_bytes_));
  {
    std::vector<uint16_t> pattern(size_t{32} << 20);
    for (uint16_t& x : pattern) x = RandomBf16(rng);
    const size_t total = layers_ * kv_bytes_, piece = pattern.size() * 2;
    for (size_t at = 0; at < total; at += piece) {
      KVT_CUDA_OR_RETURN(cudaMemcpy(arena_.as<char>() + at, pattern.data(), std::min(piece, total - at),
                                    cudaMemcpyHostToDevice));
    }
  }
  // Slot of every (layer, request, head, block): a random permutation of the arena.
  std::vector<uint32_t> slots(size_t{layers_} * slices_);
  std::iota(slots.begin(), slots.end(), 0u);
  std::shuffle(slots.begin(), slots.end(), std::mt19937_64(rng.Next()));
  KVT_RETURN_IF_ERROR(Upload(block_slots_, slots));
  std::vector<uint16_t> q(size_t{layers_} * batch_ * o_.q_heads * d);
  for (uint16_t& x : q) x = RandomBf16(rng);
  KVT_RETURN_IF_ERROR(Upload(queries_, q));
  // Metadata: random int8 bounds (min ≤ max), positive scales; the same bytes for every layer.
  std::vector<int8_t> bounds(size_t{slices_} * 2 * d);
  for (size_t s = 0; s < slices_; ++s) {
    for (uint32_t i = 0; i < d; ++i) {
      const uint64_t r = rng.Next();
      const auto a = static_cast<int8_t>(static_cast<int>(r % 255) - 127);
      const auto b = static_cast<int8_t>(static_cast<int>((r >> 8) % 255) - 127);
      bounds[s * 2 * d + i] = std::min(a, b);
      bounds[s * 2 * d + d + i] = std::max(a, b);
    }
  }
  std::vector<float> scales(slices_);
  for (float& x : scales) x = 0.01f + static_cast<float>(rng.Next() % 1000) * 1e-5f;
  KVT_RETURN_IF_ERROR(Alloc(bounds_, layers_ * bounds.size()));
  KVT_RETURN_IF_ERROR(Alloc(scales_, layers_ * scales.size() * sizeof(float)));
  for (uint32_t l = 0; l < layers_; ++l) {
    KVT_CUDA_OR_RETURN(cudaMemcpy(bounds_.as<int8_t>() + l * bounds.size(), bounds.data(), bounds.size(),
                                  cudaMemcpyHostToDevice));
    KVT_CUDA_OR_RETURN(cudaMemcpy(scales_.as<float>() + l * scales.size(), scales.data(),
                                  scales.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  // Page lists: dense = every block of a row (its slots are block_slots of the layer); sparse
  // = the selection. Every row's last block is full or the context's tail.
  const uint32_t rows = batch_ * o_.kv_heads;
  std::vector<uint32_t> dense_offsets(rows + 1), last(rows, context_ - (blocks_ - 1) * bt), block_offsets(batch_ + 1);
  for (uint32_t r = 0; r <= rows; ++r) dense_offsets[r] = r * blocks_;
  for (uint32_t r = 0; r <= batch_; ++r) block_offsets[r] = r * blocks_;
  std::vector<uint32_t> blocks(batch_, blocks_), sel_offsets(rows + 1);
  kernels::QuestSelectedOffsets(blocks.data(), batch_, o_.kv_heads, params_, sel_offsets.data());
  KVT_RETURN_IF_ERROR(Upload(dense_offsets_, dense_offsets));
  KVT_RETURN_IF_ERROR(Upload(last_, last));
  KVT_RETURN_IF_ERROR(Upload(block_offsets_, block_offsets));
  KVT_RETURN_IF_ERROR(Upload(sel_offsets_, sel_offsets));
  KVT_RETURN_IF_ERROR(Alloc(scores_, size_t{slices_} * sizeof(float)));
  KVT_RETURN_IF_ERROR(Alloc(selected_, size_t{sel_offsets.back()} * 4));
  KVT_RETURN_IF_ERROR(Alloc(selected_slots_, size_t{sel_offsets.back()} * 4));
  KVT_RETURN_IF_ERROR(Alloc(out_, size_t{batch_} * o_.q_heads * d * 2));
  KVT_RETURN_IF_ERROR(Alloc(row_counters_, size_t{rows} * 4));
  KVT_CUDA_OR_RETURN(cudaMemset(row_counters_.p, 0, size_t{rows} * 4));

  const DecodeBenchOverrides& v = o_.overrides;
  if (!ParseAttentionRule(v.attention_rule, &rule_)) {
    return Status::InvalidArgument(fmt::format("unknown attention rule '{}' (default, r9d)", v.attention_rule));
  }
  using kernels::SparseAttentionKernels;
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, blocks_, o_.device,
                                                           SparseAttentionKernels::kAuto, rule_, &dense_plan_));
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device,
                                                           SparseAttentionKernels::kAuto, rule_, &sparse_plan_));
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device,
                                                           SparseAttentionKernels::kStreamed, rule_,
                                                           &streamed_plan_));
  const kernels::SparseAttentionPlanOverrides attention{.heads_per_cta = v.attention_heads_per_cta,
                                                        .chunk_pages = v.attention_chunk_pages,
                                                        .splits = v.attention_splits,
                                                        .tile_loads = v.attention_tile_loads};
  if (!kernels::IsDefault(attention)) {
    if (const char* e = kernels::ApplySparseAttentionOverrides(shape_, k_, streamed_plan_, attention, &sparse_plan_)) {
      return Status::InvalidArgument(fmt::format("attention overrides: {}", e));
    }
  }
  kernels::QuestScorePreset preset{};
  if (!ParseScorePreset(v.score_preset, &preset)) {
    return Status::InvalidArgument(fmt::format("unknown score preset '{}' (r9w, r8, r9)", v.score_preset));
  }
  score_shape_ = {.tiles_per_cta = v.score_tiles_per_cta, .stages = v.score_stages,
                  .slices_per_thread = v.score_slices_per_thread, .preset = preset};
  if (const char* e = kernels::QuestScoreShapeError(score_shape_, d)) {
    return Status::InvalidArgument(fmt::format("score overrides: {}", e));
  }
  // Score rules and fields are the pipelined kernel's: asking for one times that kernel.
  if (!kernels::IsDefault(score_shape_)) score_algorithm_ = kernels::QuestScoreAlgorithm::kPipelined;
  KVT_RETURN_IF_ERROR(Alloc(streamed_ws_, kernels::SparseAttentionWorkspaceBytes(shape_, streamed_plan_)));
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(streamed_ws_.p, shape_, streamed_plan_, nullptr));
  KVT_RETURN_IF_ERROR(Alloc(dense_ws_, kernels::SparseAttentionWorkspaceBytes(shape_, dense_plan_)));
  KVT_RETURN_IF_ERROR(Alloc(sparse_ws_, kernels::SparseAttentionWorkspaceBytes(shape_, sparse_plan_)));
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(dense_ws_.p, shape_, dense_plan_, nullptr));
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(sparse_ws_.p, shape_, sparse_plan_, nullptr));
  KVT_CUDA_OR_RETURN(cudaDeviceSynchronize());
  return Status::Ok();
}

kernels::SparseAttentionDeviceArgs Point::DenseArgs(uint32_t layer) const {
  const size_t qn = size_t{batch_} * o_.q_heads * o_.head_dim;
  return {.shape = shape_, .type = kernels::HalfType::kBf16, .output = kernels::AttentionOutput::kInputType,
          .arena = arena_.p, .queries = queries_.as<uint16_t>() + layer * qn,
          .page_offsets = dense_offsets_.as<uint32_t>(),
          .page_slots = block_slots_.as<uint32_t>() + size_t{layer} * slices_,
          .last_page_tokens = last_.as<uint32_t>(), .out = out_.p, .workspace = dense_ws_.p};
}

Status Point::DenseStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(DenseArgs(layer), dense_plan_, stream));
  return Status::Ok();
}

// DenseStep with PDL, for dense_graph.
Status Point::DensePdlStep(uint32_t layer, cudaStream_t stream) {
  kernels::SparseAttentionDeviceArgs a = DenseArgs(layer);
  a.programmatic_dependent_launch = true;
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, dense_plan_, stream));
  return Status::Ok();
}

// The copy row's copy of `layer`'s K/V, for copy_graph.
Status Point::CopyStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(cudaMemcpyAsync(copy_dst_.p, arena_.as<char>() + size_t{layer} * kv_bytes_, kv_bytes_,
                                     cudaMemcpyDeviceToDevice, stream));
  return Status::Ok();
}

kernels::QuestSelectDeviceArgs Point::SelectArgs(uint32_t layer) const {
  const size_t qn = size_t{batch_} * o_.q_heads * o_.head_dim;
  return {.requests = batch_, .q_heads = o_.q_heads, .kv_heads = o_.kv_heads, .head_dim = o_.head_dim,
          .max_blocks = blocks_, .params = params_, .query_type = kernels::QuestQueryType::kBf16,
          .queries = queries_.as<uint16_t>() + layer * qn, .block_offsets = block_offsets_.as<uint32_t>(),
          .bounds = bounds_.as<int8_t>() + size_t{layer} * slices_ * 2 * o_.head_dim,
          .scales = scales_.as<float>() + size_t{layer} * slices_, .scores = scores_.as<float>(),
          .selected_offsets = sel_offsets_.as<uint32_t>(), .selected = selected_.as<uint32_t>(),
          .block_slots = block_slots_.as<uint32_t>() + size_t{layer} * slices_,
          .selected_slots = selected_slots_.as<uint32_t>(), .score_algorithm = score_algorithm_,
          .score_shape = score_shape_};
}

kernels::SparseAttentionDeviceArgs Point::AttentionArgs(uint32_t layer) const {
  const size_t qn = size_t{batch_} * o_.q_heads * o_.head_dim;
  return {.shape = shape_, .type = kernels::HalfType::kBf16, .output = kernels::AttentionOutput::kInputType,
          .arena = arena_.p, .queries = queries_.as<uint16_t>() + layer * qn,
          .page_offsets = sel_offsets_.as<uint32_t>(), .page_slots = selected_slots_.as<uint32_t>(),
          .last_page_tokens = last_.as<uint32_t>(), .out = out_.p, .workspace = sparse_ws_.p};
}

// The default select (two launches; the sparse steps use it).
Status Point::SelectStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(SelectArgs(layer), stream));
  return Status::Ok();
}

// Batch 1 only: the select as DeviceSliceMetadata::SelectOnDevice issued it before the head
// pitch (seventh session) — one launch pair per KV head, each a one-request, one-head select
// of the head's GQA group — on the same buffers; the selection lands where `select`'s does.
Status Point::SelectPerHeadStep(uint32_t layer, cudaStream_t stream) {
  const kernels::QuestSelectDeviceArgs all = SelectArgs(layer);
  const uint32_t group = o_.q_heads / o_.kv_heads, n = blocks_;
  for (uint32_t h = 0; h < o_.kv_heads; ++h) {
    kernels::QuestSelectDeviceArgs a = all;
    a.q_heads = group;
    a.kv_heads = 1;
    a.queries = static_cast<const uint16_t*>(all.queries) + size_t{h} * group * o_.head_dim;
    a.bounds += size_t{h} * n * 2 * o_.head_dim;
    a.scales += size_t{h} * n;
    a.scores += size_t{h} * n;
    a.block_slots += size_t{h} * n;
    a.selected += size_t{h} * k_;  // selected_offsets {0, k, ...}: this head's row is row 0
    a.selected_slots += size_t{h} * k_;
    KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(a, stream));
  }
  return Status::Ok();
}

// The fused one (one launch, row_counters).
Status Point::SelectFusedStep(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs a = SelectArgs(layer);
  a.row_counters = row_counters_.as<uint32_t>();
  a.score_shape = {};  // the fused path has its own score kernel (a rule alone falls back to it)
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(a, stream));
  return Status::Ok();
}

Status Point::ScoresStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestScores(SelectArgs(layer), stream));
  return Status::Ok();
}

// The round-4 register-ring score kernel, for comparison.
Status Point::ScoresRingStep(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs a = SelectArgs(layer);
  a.score_algorithm = kernels::QuestScoreAlgorithm::kRegisterRing;
  a.score_shape = {};
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestScores(a, stream));
  return Status::Ok();
}

Status Point::TopKStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestTopK(SelectArgs(layer), stream));
  return Status::Ok();
}

// The round-5 top-k (bisection), for comparison.
Status Point::TopKBisectionStep(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs a = SelectArgs(layer);
  a.topk_algorithm = kernels::QuestTopKAlgorithm::kBisection;
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestTopK(a, stream));
  return Status::Ok();
}

// Over whatever selection the last select left in selected_slots (a fixed page list).
Status Point::AttentionStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(AttentionArgs(layer), sparse_plan_, stream));
  return Status::Ok();
}

// The same selection on the streamed kernel's plan (round 6), for comparison.
Status Point::AttentionStreamedStep(uint32_t layer, cudaStream_t stream) {
  kernels::SparseAttentionDeviceArgs a = AttentionArgs(layer);
  a.workspace = streamed_ws_.p;
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, streamed_plan_, stream));
  return Status::Ok();
}

Status Point::SparseStep(uint32_t layer, cudaStream_t stream) {
  KVT_RETURN_IF_ERROR(SelectStep(layer, stream));
  return AttentionStep(layer, stream);
}

// Each launch reads before its PDL wait what its predecessor does not write: the scores their
// metadata (early_metadata; the predecessor is the previous step's attention), the attention
// its page offsets and queries (early_inputs; only the selection comes from the select).
Status Point::SparsePdlStep(uint32_t layer, cudaStream_t stream) { return SparsePdlStepWith(layer, true, stream); }

// The same reading everything after the waits (round 13's step), for comparison.
Status Point::SparsePdlLateStep(uint32_t layer, cudaStream_t stream) { return SparsePdlStepWith(layer, false, stream); }

// The library's rule (QuestSlicePrefetchForPieces) for the attention on `plan`.
kernels::QuestSelectDeviceArgs::SlicePrefetch Point::PrefetchFor(const kernels::SparseAttentionPlan& plan) const {
  const uint64_t selection = uint64_t{batch_} * o_.kv_heads * k_ * shape_.slot_bytes;
  return kernels::QuestSlicePrefetchForPieces(arena_.p, shape_.slot_bytes, static_cast<uint32_t>(shape_.slot_bytes),
                                              plan.chunk_pages, selection, l2_bytes_);
}

Status Point::SparsePdlStepWith(uint32_t layer, bool early, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs s = SelectArgs(layer);
  s.programmatic_dependent_launch = true;
  s.early_metadata = early;
  if (early) s.prefetch = PrefetchFor(sparse_plan_);
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(s, stream));
  kernels::SparseAttentionDeviceArgs a = AttentionArgs(layer);
  a.programmatic_dependent_launch = true;
  a.early_inputs = early;
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, sparse_plan_, stream));
  return Status::Ok();
}

// SparsePdlStep with the bisection top-k (kBisection), for BisectionRows.
Status Point::SparsePdlBisectionStep(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs s = SelectArgs(layer);
  s.programmatic_dependent_launch = true;
  s.topk_algorithm = kernels::QuestTopKAlgorithm::kBisection;
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(s, stream));
  kernels::SparseAttentionDeviceArgs a = AttentionArgs(layer);
  a.programmatic_dependent_launch = true;
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, sparse_plan_, stream));
  return Status::Ok();
}

// The round-6 sparse step (bisection top-k, streamed attention) with PDL, for comparison.
Status Point::SparsePdlRound6Step(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs s = SelectArgs(layer);
  s.programmatic_dependent_launch = true;
  s.topk_algorithm = kernels::QuestTopKAlgorithm::kBisection;
  s.score_algorithm = kernels::QuestScoreAlgorithm::kRegisterRing;
  s.score_shape = {};
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(s, stream));
  kernels::SparseAttentionDeviceArgs a = AttentionArgs(layer);
  a.programmatic_dependent_launch = true;
  a.workspace = streamed_ws_.p;
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, streamed_plan_, stream));
  return Status::Ok();
}

Status Point::CheckFinite(const DeviceMem& out, const char* what) {
  std::vector<uint16_t> h(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemcpy(h.data(), out.p, h.size() * 2, cudaMemcpyDeviceToHost));
  for (uint16_t x : h) {
    if (!std::isfinite(kernels::Bf16ToFloat(x))) {
      return Status::Internal(fmt::format("{} attention wrote a non-finite output", what));
    }
  }
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal
