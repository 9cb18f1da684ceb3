// `kvtier bench decode` on CUDA builds: one layer of Llama-3-8B decode attention (32 q / 8 KV
// heads, d = 128, bf16, 16-token blocks) for each (context, batch):
//   copy    cudaMemcpyAsync D2D of a buffer the size of the layer's KV: the baseline; its
//           rate counts bytes read + written (2 × size / time);
//   dense   the attention kernel over every block on the device's plan (the round-6 streamed
//           kernel at the default contexts: the staged one needs ≤ 1024 pages per row); rate =
//           K/V bytes read / time; vs_copy = that rate over the copy's read+write rate (target ≥ 0.9);
//   dense_r9d  the same planned with the candidate rule r9d (SparseAttentionRule::kRound9Dense:
//           several waves of short pieces for dense-length rows at small batch; where it does
//           not apply, the dense plan again: applied = false); vs_copy as dense's, vs_dense =
//           dense / it; its output (one launch on layer 0) must agree with dense's within
//           AttentionClose (checked, matches_dense). `--attention-rule r9d` plans every row with it;
//   select  Quest scores on the int8 metadata + top-k as LaunchQuestSelect does by default:
//           two launches, the top-k riding PDL behind the scores; compared with dense /
//           block_tokens (Quest's estimate target: ≤ 1.1×). The sparse steps use it;
//   select_fused  the same as ONE launch (row_counters: the last score CTA of a row runs its
//           top-k); its selection must equal select's exactly (checked);
//   scores / topk   each launch of select alone (breakdown); scores = the pipelined score
//                   kernel on the default rule (QuestScorePreset kRound9Wave since round 9);
//   scores_r4       the round-4 register-ring score kernel; its scores must equal scores' bit
//                   for bit (checked, matches_pipelined);
//   topk_bisect     the round-5 top-k (bisection) alone; its selection must equal topk's;
//   attention       sparse attention alone over a fixed selection (the last select's), on the
//                   device's plan (the staged kernel where it fits: batch 1); its output is
//                   compared with attention_streamed's (max_abs_diff_vs_streamed);
//   attention_streamed  the same on the round-6 streamed plan;
//   sparse  select + attention over the selected slices (page list = the selection written
//           as slots); speedup = dense / sparse (target ≥ 8× at 32K; ideal
//           context / (budget + context / 32), the int8 metadata being 1/32 of the KV);
//   sparse_pdl    the same with programmatic dependent launch on both launches (each kernel
//           triggers at its start; the next one's CTAs wait in cudaGridDependencySynchronize);
//           its output must equal sparse's bit for bit (checked);
//   sparse_graph  the sparse_pdl steps captured in one CUDA graph;
//   sparse_graph_r6  the round-6 step (register-ring scores, bisection top-k, register-tile
//           streamed attention) as a graph: the earlier configuration in the same run;
//   scores_r8  the score launch with round 8's rule (QuestScorePreset kRound8, the default
//           until round 9: 4 buffers); bit-equal to `scores` (checked);
//   sparse_graph_r8  the sparse_graph step with it (attention as sparse_graph's): the
//           previous default in the same run; one step's selection must equal sparse_graph's
//           and its output agree within AttentionClose (checked, matches_sparse_graph);
//           vs_sparse_graph = sparse_graph's time / its time.
// options.overrides (round 9) change the launch shape of the scores (scores, select, sparse
// rows) and the attention plan (attention and sparse rows); `--sweep` adds the rows of
// decode_sweep_gpu.cc (a grid of launch shapes, each checked against the default's output).
// The KV arena holds `layers` copies of the layer's slices at a random slot permutation (pages
// are never contiguous) and steps cycle through them, so a step's bytes are never L2 hits
// (a real decode step reads a different layer each time). K/V values are random finite bf16,
// the metadata random int8 bounds with positive scales: the bench measures cost, not quality.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "decode_bench.h"
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

bool ParseScorePreset(const std::string& name, kernels::QuestScorePreset* preset) {
  if (name == "r9w") *preset = kernels::QuestScorePreset::kRound9Wave;
  else if (name == "r8") *preset = kernels::QuestScorePreset::kRound8;
  else if (name == "r9") *preset = kernels::QuestScorePreset::kRound9;
  else return false;
  return true;
}

bool ParseAttentionRule(const std::string& name, kernels::SparseAttentionRule* rule) {
  if (name == "default") *rule = kernels::SparseAttentionRule::kDefault;
  else if (name == "r9d") *rule = kernels::SparseAttentionRule::kRound9Dense;
  else return false;
  return true;
}

const char* ScorePresetName(kernels::QuestScorePreset preset) {
  switch (preset) {
    case kernels::QuestScorePreset::kRound9Wave: return "r9w";
    case kernels::QuestScorePreset::kRound8: return "r8";
    case kernels::QuestScorePreset::kRound9: return "r9";
  }
  return "unknown";
}

const char* ScoreShapeName(const kernels::QuestScoreShape& shape) {
  return kernels::HasExplicitFields(shape) ? "explicit" : ScorePresetName(shape.preset);
}

bool AttentionClose(float got, float want) {
  if (!std::isfinite(got) || !std::isfinite(want)) return false;
  return std::fabs(double(got) - want) <= (4e-3 + 1.0 / 256 + 1.0 / 128) * std::fabs(want) + 4e-4;
}

Agreement CompareAttention(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want) {
  Agreement a;
  if (got.size() != want.size()) return {false, INFINITY};
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = kernels::Bf16ToFloat(got[i]), w = kernels::Bf16ToFloat(want[i]);
    if (!AttentionClose(g, w)) a.matches = false;
    const double d = std::fabs(double(g) - w);
    a.max_abs_diff = std::isnan(d) ? INFINITY : std::max(a.max_abs_diff, d);
  }
  return a;
}

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

Result<double> Point::TimedDense(const kernels::SparseAttentionPlan& plan, void* ws, uint32_t iters, uint32_t reps,
                                 cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(ws, shape_, plan, stream));
  return Timed(
      [&]() -> Status {
        for (uint32_t i = 0; i < iters; ++i) {
          kernels::SparseAttentionDeviceArgs a = DenseArgs(i % layers_);
          a.workspace = ws;
          KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, plan, stream));
        }
        return Status::Ok();
      },
      stream, iters, reps);
}

Result<std::vector<uint16_t>> Point::DenseOnce(const kernels::SparseAttentionPlan& plan, void* ws,
                                               cudaStream_t stream) {
  kernels::SparseAttentionDeviceArgs a = DenseArgs(0);
  a.workspace = ws;
  std::vector<uint16_t> h(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(out_.p, 0xff, h.size() * 2, stream));  // NaN
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, plan, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  KVT_CUDA_OR_RETURN(cudaMemcpy(h.data(), out_.p, h.size() * 2, cudaMemcpyDeviceToHost));
  return h;
}

Status Point::DenseRuleRow(const std::vector<uint16_t>& want, double t_copy, double t_dense, cudaStream_t stream,
                           std::vector<Row>* rows) {
  kernels::SparseAttentionPlan plan;
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, blocks_, o_.device,
                                                           kernels::SparseAttentionKernels::kAuto,
                                                           kernels::SparseAttentionRule::kRound9Dense, &plan));
  DeviceMem ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, kernels::SparseAttentionWorkspaceBytes(shape_, plan)));
  KVT_ASSIGN_OR_RETURN(const double t, TimedDense(plan, ws.p, std::max(o_.iterations, 1u),
                                                  std::max(o_.repeats, 1u), stream));
  KVT_ASSIGN_OR_RETURN(const std::vector<uint16_t> got, DenseOnce(plan, ws.p, stream));
  const Agreement agree = CompareAttention(got, want);
  if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: dense_r9d output differs from dense's\n");
  const bool applied = plan.heads_per_cta != dense_plan_.heads_per_cta || plan.chunk_pages != dense_plan_.chunk_pages ||
                       plan.tile_loads != dense_plan_.tile_loads || plan.cluster != dense_plan_.cluster;
  const double copy_rw_gbps = 2.0 * kv_bytes_ / (t_copy * 1e3), gbps = double(kv_bytes_) / (t * 1e3);
  uint32_t per_sm = 0;
  if (plan.cluster == 0) {
    KVT_CUDA_OR_RETURN(kernels::SparseAttentionCtasPerSm(shape_, kernels::HalfType::kBf16,
                                                         kernels::AttentionOutput::kInputType, plan.heads_per_cta,
                                                         plan.tile_loads, &per_sm));
  }
  const uint64_t ctas = uint64_t{plan.rows} * plan.max_splits;
  rows->push_back({"dense_r9d",
                   fmt::format("dense, attention rule r9d ({} heads, {} pages x {}{})", plan.heads_per_cta,
                               plan.chunk_pages, plan.max_splits, applied ? "" : ": as dense"),
                   t, gbps, double(kv_bytes_),
                   {{"vs_copy", gbps / copy_rw_gbps}, {"vs_dense", t_dense / t}, {"rule", "r9d"},
                    {"applied", applied}, {"heads_per_cta", plan.heads_per_cta},
                    {"tile_loads", plan.tile_loads == 8 ? 8 : 4}, {"chunk_pages", plan.chunk_pages},
                    {"splits", plan.max_splits}, {"cluster", plan.cluster}, {"ctas", ctas},
                    {"waves", per_sm == 0 ? 0.0 : double(ctas) / (double(per_sm) * sm_count_)},
                    {"matches_dense", agree.matches}, {"max_abs_diff", agree.max_abs_diff}}});
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
          .selected_slots = selected_slots_.as<uint32_t>(), .score_shape = score_shape_};
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

Status Point::SparsePdlStep(uint32_t layer, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs s = SelectArgs(layer);
  s.programmatic_dependent_launch = true;
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

Result<double> Point::Timed(const std::function<Status()>& enqueue, cudaStream_t stream) {
  return Timed(enqueue, stream, std::max(o_.iterations, 1u), std::max(o_.repeats, 1u));
}

Result<double> Point::Timed(const std::function<Status()>& enqueue, cudaStream_t stream, uint32_t iters,
                            uint32_t reps) {
  iters = std::max(iters, 1u);
  reps = std::max(reps, 1u);
  std::vector<double> t;
  for (uint32_t r = 0; r <= reps; ++r) {  // r = 0 warms up
    KVT_CUDA_OR_RETURN(cudaEventRecord(e0_, stream));
    KVT_RETURN_IF_ERROR(enqueue());
    KVT_CUDA_OR_RETURN(cudaEventRecord(e1_, stream));
    KVT_CUDA_OR_RETURN(cudaEventSynchronize(e1_));
    float ms = 0;
    KVT_CUDA_OR_RETURN(cudaEventElapsedTime(&ms, e0_, e1_));
    if (r > 0) t.push_back(ms * 1e3 / iters);
  }
  return Median(t);
}

std::function<Status()> Point::Loop(Step step, cudaStream_t stream) {
  return [this, step, stream]() -> Status {
    for (uint32_t i = 0; i < std::max(o_.iterations, 1u); ++i) KVT_RETURN_IF_ERROR((this->*step)(i % layers_, stream));
    return Status::Ok();
  };
}

Result<double> Point::TimedGraph(Step step, cudaStream_t stream) {
  cudaGraph_t graph = nullptr;
  KVT_CUDA_OR_RETURN(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
  Status captured = Loop(step, stream)();
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);
  if (!captured.ok() || ended != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    (void)cudaGetLastError();
    if (!captured.ok()) return captured;
    KVT_CUDA_OR_RETURN(ended);
  }
  cudaGraphExec_t exec = nullptr;
  if (cudaError_t e = cudaGraphInstantiate(&exec, graph, 0); e != cudaSuccess) {
    cudaGraphDestroy(graph);
    KVT_CUDA_OR_RETURN(e);
  }
  Result<double> t = Timed(
      [&]() -> Status {
        KVT_CUDA_OR_RETURN(cudaGraphLaunch(exec, stream));
        return Status::Ok();
      },
      stream);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  return t;
}

Result<StepOutcome> Point::OneStep(cudaStream_t stream) {
  StepOutcome o;
  o.selected.resize(size_t{batch_} * o_.kv_heads * k_);
  o.out.resize(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(selected_.p, 0xff, o.selected.size() * 4, stream));
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(out_.p, 0xff, o.out.size() * 2, stream));  // NaN
  KVT_RETURN_IF_ERROR(SparsePdlStep(0, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  KVT_CUDA_OR_RETURN(cudaMemcpy(o.selected.data(), selected_.p, o.selected.size() * 4, cudaMemcpyDeviceToHost));
  KVT_CUDA_OR_RETURN(cudaMemcpy(o.out.data(), out_.p, o.out.size() * 2, cudaMemcpyDeviceToHost));
  return o;
}

Result<StepOutcome> Point::GraphStepWith(const kernels::QuestScoreShape& shape,
                                         const kernels::SparseAttentionPlan& plan, void* ws, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(ws, shape_, plan, stream));
  const kernels::QuestScoreShape saved_shape = score_shape_;
  const kernels::SparseAttentionPlan saved_plan = sparse_plan_;
  void* const saved_ws = sparse_ws_.p;
  score_shape_ = shape;
  sparse_plan_ = plan;
  sparse_ws_.p = ws;
  Result<double> t = TimedGraph(&Point::SparsePdlStep, stream);
  Result<StepOutcome> o = t.ok() ? OneStep(stream) : Result<StepOutcome>(t.status());
  score_shape_ = saved_shape;
  sparse_plan_ = saved_plan;
  sparse_ws_.p = saved_ws;
  if (!o.ok()) return o;
  o->us = *t;
  return o;
}

Result<double> Point::TimedScores(const kernels::QuestScoreShape& shape, cudaStream_t stream) {
  const kernels::QuestScoreShape saved = score_shape_;
  score_shape_ = shape;
  Result<double> t = Timed(Loop(&Point::ScoresStep, stream), stream);
  score_shape_ = saved;
  return t;
}

Status Point::PresetRows(kernels::QuestScorePreset preset, const char* name, const std::vector<float>& scores,
                         double t_scores_ref, const StepOutcome& ref, double t_graph, cudaStream_t stream,
                         std::vector<Row>* rows) {
  const kernels::QuestScoreShape shape{.preset = preset};
  kernels::QuestSelectDeviceArgs args = SelectArgs(0);
  args.score_shape = shape;
  kernels::QuestScorePlan plan;
  KVT_CUDA_OR_RETURN(kernels::PlanQuestScores(args, &plan));
  // Scores alone: the loop ends on the layer the `scores` row's did, so bit-equal scores.
  KVT_ASSIGN_OR_RETURN(const double t_scores, TimedScores(shape, stream));
  std::vector<float> got(slices_);
  KVT_CUDA_OR_RETURN(cudaMemcpy(got.data(), scores_.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  const bool scores_match = std::memcmp(got.data(), scores.data(), got.size() * sizeof(float)) == 0;
  if (!scores_match) fmt::print(stderr, "bench decode: MISMATCH: {} scores differ from the default's\n", name);
  // The whole step as a graph, attention plan and workspace as sparse_graph's.
  KVT_ASSIGN_OR_RETURN(const StepOutcome step, GraphStepWith(shape, sparse_plan_, sparse_ws_.p, stream));
  const bool selection_match = step.selected == ref.selected;
  const Agreement agree = CompareAttention(step.out, ref.out);
  if (!selection_match || !agree.matches) {
    fmt::print(stderr, "bench decode: MISMATCH: sparse_graph_{} step differs from sparse_graph's\n", name);
  }
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * double(shape_.slice_bytes());
  const bool applied = plan.preset == preset;
  const nlohmann::json grid{{"preset", name},
                            {"applied", applied},
                            {"score_stages", plan.stages},
                            {"score_slices_per_thread", plan.tile_slices / 32},
                            {"score_tiles_per_cta", plan.tiles_per_cta},
                            {"score_ctas_per_row", plan.ctas_per_row},
                            {"score_ctas_per_sm", plan.ctas_per_sm}};
  Row scores_row{fmt::format("scores_{}", name), fmt::format("Quest scores alone, score rule {}", name),
                 t_scores, meta / (t_scores * 1e3), meta, grid};
  scores_row.extra["matches_default"] = scores_match;
  scores_row.extra["vs_scores"] = t_scores_ref / t_scores;
  rows->push_back(std::move(scores_row));
  Row graph_row{fmt::format("sparse_graph_{}", name), fmt::format("sparse_graph, score rule {}", name), step.us,
                (meta + sparse_kv) / (step.us * 1e3), meta + sparse_kv, grid};
  graph_row.extra.update({{"speedup", t_dense_ / step.us}, {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                          {"selected_blocks", k_}, {"chunk_pages", sparse_plan_.chunk_pages},
                          {"splits", sparse_plan_.max_splits}, {"vs_sparse_graph", t_graph / step.us},
                          {"selection_matches", selection_match}, {"max_abs_diff", agree.max_abs_diff},
                          {"matches_sparse_graph", selection_match && agree.matches}});
  rows->push_back(std::move(graph_row));
  return Status::Ok();
}

Status Point::Run(const cudaDeviceProp& prop, cudaStream_t stream, std::vector<Row>* rows) {
  KVT_RETURN_IF_ERROR(Setup(prop));
  sm_count_ = static_cast<uint32_t>(std::max(prop.multiProcessorCount, 1));
  KVT_CUDA_OR_RETURN(cudaEventCreate(&e0_));
  KVT_CUDA_OR_RETURN(cudaEventCreate(&e1_));
  const uint32_t iters = std::max(o_.iterations, 1u);
  auto timed = [&](const std::function<Status()>& enqueue) { return Timed(enqueue, stream); };
  auto loop = [&](Step step) { return Loop(step, stream); };
  auto copy = [&]() -> Status {
    for (uint32_t i = 0; i < iters; ++i) {
      KVT_CUDA_OR_RETURN(cudaMemcpyAsync(copy_dst_.p, arena_.as<char>() + (i % layers_) * kv_bytes_, kv_bytes_,
                                         cudaMemcpyDeviceToDevice, stream));
    }
    return Status::Ok();
  };
  KVT_ASSIGN_OR_RETURN(const double t_copy, timed(copy));
  KVT_ASSIGN_OR_RETURN(const double t_dense, timed(loop(&Point::DenseStep)));
  KVT_RETURN_IF_ERROR(CheckFinite(out_, "dense"));
  // dense's output on layer 0: the reference of dense_r9d and of the dense sweep.
  KVT_ASSIGN_OR_RETURN(dense_out_, DenseOnce(dense_plan_, dense_ws_.p, stream));
  // Two correct fp32 computations cut differently: equal up to a few bf16 ulps of the output.
  auto max_diff = [](const std::vector<uint16_t>& x, const std::vector<uint16_t>& y) {
    double d = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      d = std::max(d, std::fabs(double(kernels::Bf16ToFloat(x[i])) - kernels::Bf16ToFloat(y[i])));
    }
    return d;
  };
  // Breakdown: each launch alone, then the fused select (its selection must equal the two
  // launches' exactly: same scores, same top-k algorithm).
  KVT_ASSIGN_OR_RETURN(const double t_scores_ring, timed(loop(&Point::ScoresRingStep)));
  std::vector<float> scores_ring(slices_), scores_pipelined(slices_);
  KVT_CUDA_OR_RETURN(cudaMemcpy(scores_ring.data(), scores_.p, slices_ * sizeof(float), cudaMemcpyDeviceToHost));
  KVT_ASSIGN_OR_RETURN(const double t_scores, timed(loop(&Point::ScoresStep)));
  KVT_CUDA_OR_RETURN(
      cudaMemcpy(scores_pipelined.data(), scores_.p, slices_ * sizeof(float), cudaMemcpyDeviceToHost));
  // Both loops end on the same layer (iters steps from layer 0): the same scores, bit for bit.
  const bool scores_match =
      std::memcmp(scores_ring.data(), scores_pipelined.data(), scores_ring.size() * sizeof(float)) == 0;
  if (!scores_match) fmt::print(stderr, "bench decode: MISMATCH: pipelined Quest scores differ from the register ring\n");
  KVT_ASSIGN_OR_RETURN(const double t_topk, timed(loop(&Point::TopKStep)));
  KVT_ASSIGN_OR_RETURN(const double t_topk_bisection, timed(loop(&Point::TopKBisectionStep)));
  std::vector<uint32_t> sel_bisection(size_t{batch_} * o_.kv_heads * k_);
  KVT_CUDA_OR_RETURN(cudaMemcpy(sel_bisection.data(), selected_.p, sel_bisection.size() * 4, cudaMemcpyDeviceToHost));
  KVT_ASSIGN_OR_RETURN(const double t_select_fused, timed(loop(&Point::SelectFusedStep)));
  std::vector<uint32_t> sel_unfused(size_t{batch_} * o_.kv_heads * k_), sel_fused(sel_unfused.size());
  KVT_CUDA_OR_RETURN(cudaMemcpy(sel_fused.data(), selected_.p, sel_fused.size() * 4, cudaMemcpyDeviceToHost));
  // The default select last: the attention rows below read its selection.
  KVT_ASSIGN_OR_RETURN(const double t_select, timed(loop(&Point::SelectStep)));
  KVT_CUDA_OR_RETURN(cudaMemcpy(sel_unfused.data(), selected_.p, sel_unfused.size() * 4, cudaMemcpyDeviceToHost));
  const bool fused_matches = sel_fused == sel_unfused;  // else: a bug, reported loudly below
  if (!fused_matches) fmt::print(stderr, "bench decode: MISMATCH: fused Quest select differs from two launches\n");
  const bool bisection_matches = sel_bisection == sel_unfused;  // the same scores (ScoresStep's and select's)
  if (!bisection_matches) fmt::print(stderr, "bench decode: MISMATCH: bisection top-k differs from the digit top-k\n");
  KVT_ASSIGN_OR_RETURN(const double t_attention_streamed, timed(loop(&Point::AttentionStreamedStep)));
  std::vector<uint16_t> out_streamed(size_t{batch_} * o_.q_heads * o_.head_dim), out_staged(out_streamed.size());
  KVT_CUDA_OR_RETURN(cudaMemcpy(out_streamed.data(), out_.p, out_streamed.size() * 2, cudaMemcpyDeviceToHost));
  KVT_ASSIGN_OR_RETURN(const double t_attention, timed(loop(&Point::AttentionStep)));
  KVT_CUDA_OR_RETURN(cudaMemcpy(out_staged.data(), out_.p, out_staged.size() * 2, cudaMemcpyDeviceToHost));
  const double attention_max_diff = max_diff(out_staged, out_streamed);
  KVT_ASSIGN_OR_RETURN(const double t_sparse, timed(loop(&Point::SparseStep)));
  KVT_RETURN_IF_ERROR(CheckFinite(out_, "sparse"));
  std::vector<uint16_t> out_plain(size_t{batch_} * o_.q_heads * o_.head_dim), out_pdl(out_plain.size());
  KVT_CUDA_OR_RETURN(cudaMemcpy(out_plain.data(), out_.p, out_plain.size() * 2, cudaMemcpyDeviceToHost));
  KVT_ASSIGN_OR_RETURN(const double t_pdl, timed(loop(&Point::SparsePdlStep)));
  KVT_CUDA_OR_RETURN(cudaMemcpy(out_pdl.data(), out_.p, out_pdl.size() * 2, cudaMemcpyDeviceToHost));
  const bool pdl_matches = out_pdl == out_plain;
  if (!pdl_matches) fmt::print(stderr, "bench decode: MISMATCH: sparse step with PDL differs from plain launches\n");
  // The PDL sparse step captured in one graph of `iters` steps (the plain step if the PDL
  // capture fails: graph_pdl = false).
  bool graph_pdl = true;
  Result<double> graph_time = TimedGraph(&Point::SparsePdlStep, stream);
  if (!graph_time.ok()) {
    fmt::print(stderr, "bench decode: PDL graph capture failed ({}); graph of plain steps\n",
               graph_time.status().ToString());
    graph_pdl = false;
    graph_time = TimedGraph(&Point::SparseStep, stream);
  }
  KVT_ASSIGN_OR_RETURN(const double t_graph, std::move(graph_time));
  // sparse_graph's outputs (one step on layer 0), for the round-9 rows' check.
  KVT_ASSIGN_OR_RETURN(const StepOutcome graph_ref, OneStep(stream));
  // The round-6 step (bisection top-k + streamed attention) as a graph too, same run.
  double t_graph_r6 = 0;
  if (graph_pdl) {
    KVT_ASSIGN_OR_RETURN(t_graph_r6, TimedGraph(&Point::SparsePdlRound6Step, stream));
  }
  t_dense_ = t_dense;
  t_topk_ = t_topk;
  t_copy_ = t_copy;

  const double slice_bytes = double(shape_.slice_bytes());
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * slice_bytes;
  const double copy_rw_gbps = 2.0 * kv_bytes_ / (t_copy * 1e3);
  const double dense_gbps = double(kv_bytes_) / (t_dense * 1e3);
  const double ideal = double(kv_bytes_) / (sparse_kv + meta);
  rows->push_back({"copy", "cudaMemcpyAsync D2D, KV-sized (read+write)", t_copy, copy_rw_gbps, 2.0 * kv_bytes_, {}});
  rows->push_back({"dense", "attention over every block", t_dense, dense_gbps, double(kv_bytes_),
                   {{"vs_copy", dense_gbps / copy_rw_gbps},
                    {"chunk_pages", dense_plan_.chunk_pages},
                    {"splits", dense_plan_.max_splits},
                    {"cluster", dense_plan_.cluster},
                    {"heads_per_cta", dense_plan_.heads_per_cta},
                    {"tile_loads", dense_plan_.tile_loads == 8 ? 8 : 4},
                    {"rule", o_.overrides.attention_rule}}});
  KVT_RETURN_IF_ERROR(DenseRuleRow(dense_out_, t_copy, t_dense, stream, rows));
  kernels::QuestScorePlan score_plan;
  KVT_CUDA_OR_RETURN(kernels::PlanQuestScores(SelectArgs(0), &score_plan));
  rows->push_back({"scores", "Quest scores alone (int8 metadata, pipelined)", t_scores, meta / (t_scores * 1e3), meta,
                   {{"tiles_per_cta", score_plan.tiles_per_cta}, {"ctas_per_row", score_plan.ctas_per_row},
                    {"stages", score_plan.stages}, {"tile_slices", score_plan.tile_slices},
                    {"ctas_per_sm", score_plan.ctas_per_sm}, {"score_preset", ScoreShapeName(score_shape_)},
                    {"score_rule_applied",
                     !kernels::HasExplicitFields(score_shape_) && score_plan.preset == score_shape_.preset}}});
  rows->push_back({"scores_r4", "Quest scores alone (round-4 register ring)", t_scores_ring,
                   meta / (t_scores_ring * 1e3), meta, {{"matches_pipelined", scores_match}}});
  rows->push_back(
      {"topk", "Quest top-k alone (default: digits up to 2048 blocks per row, else bisection)", t_topk, 0, 0, {}});
  rows->push_back({"topk_bisect", "Quest top-k alone (round-5 bisection)", t_topk_bisection, 0, 0,
                   {{"matches_digits", bisection_matches}}});
  rows->push_back({"select", "Quest scores + top-k, two launches (top-k PDL)", t_select, meta / (t_select * 1e3),
                   meta, {{"vs_dense_over_block_tokens", t_select / (t_dense / o_.block_tokens)}}});
  rows->push_back({"select_fused", "Quest scores + top-k fused (one launch)", t_select_fused,
                   meta / (t_select_fused * 1e3), meta,
                   {{"vs_dense_over_block_tokens", t_select_fused / (t_dense / o_.block_tokens)},
                    {"matches_2launch", fused_matches}}});
  rows->push_back({"attention", sparse_plan_.cluster != 0 ? "sparse attention alone (staged, cluster merge)"
                                                       : "sparse attention alone (streamed)",
                   t_attention, sparse_kv / (t_attention * 1e3), sparse_kv,
                   {{"chunk_pages", sparse_plan_.chunk_pages}, {"splits", sparse_plan_.max_splits},
                    {"tile_loads", sparse_plan_.tile_loads}, {"cluster", sparse_plan_.cluster},
                    {"heads_per_cta", sparse_plan_.heads_per_cta}, {"max_abs_diff_vs_streamed", attention_max_diff}}});
  rows->push_back({"attention_streamed", "sparse attention alone (round-6 streamed plan)", t_attention_streamed,
                   sparse_kv / (t_attention_streamed * 1e3), sparse_kv,
                   {{"chunk_pages", streamed_plan_.chunk_pages}, {"splits", streamed_plan_.max_splits},
                    {"tile_loads", streamed_plan_.tile_loads}, {"heads_per_cta", streamed_plan_.heads_per_cta}}});
  std::vector<std::tuple<const char*, const char*, double>> steps{
      {"sparse", "select + attention over the selection", t_sparse},
      {"sparse_pdl", "the same, PDL between launches", t_pdl},
      {"sparse_graph", "sparse_pdl steps as one CUDA graph", t_graph}};
  if (t_graph_r6 > 0) steps.emplace_back("sparse_graph_r6", "round 6 (bisection, streamed) as a graph", t_graph_r6);
  for (auto [name, what, t] : steps) {
    rows->push_back({name, what, t, (meta + sparse_kv) / (t * 1e3), meta + sparse_kv,
                     {{"speedup", t_dense / t}, {"ideal_speedup", ideal}, {"selected_blocks", k_},
                      {"chunk_pages", sparse_plan_.chunk_pages}, {"splits", sparse_plan_.max_splits}}});
  }
  for (Row& r : *rows) {
    if (r.method == "sparse_pdl") r.extra["matches_plain"] = pdl_matches;
    if (r.method == "sparse_graph") {
      r.extra["graph_pdl"] = graph_pdl;
      r.extra["score_preset"] = ScoreShapeName(score_shape_);
    }
  }
  // Round 8's score rule (the default until round 9) next to the default: scores_r8 after
  // scores_r4, sparse_graph_r8 after sparse_graph.
  if (graph_pdl) {
    std::vector<Row> preset_rows;
    KVT_RETURN_IF_ERROR(PresetRows(kernels::QuestScorePreset::kRound8, "r8", scores_pipelined, t_scores, graph_ref,
                                   t_graph, stream, &preset_rows));
    auto insert_after = [&](const char* anchor, bool scores) {
      std::vector<Row> kind;
      for (Row& r : preset_rows) {
        if (r.method.starts_with("scores_") == scores) kind.push_back(std::move(r));
      }
      auto at = std::find_if(rows->begin(), rows->end(), [&](const Row& x) { return x.method == anchor; });
      rows->insert(at == rows->end() ? at : at + 1, std::make_move_iterator(kind.begin()),
                   std::make_move_iterator(kind.end()));
    };
    insert_after("scores_r4", true);
    insert_after("sparse_graph", false);
  }
  if (o_.sweep) {  // a failed sweep keeps the rows above (RunDecodeBench then exits non-zero)
    if (Status st = Sweep(stream, rows); !st.ok()) {
      (void)cudaGetLastError();
      fmt::print(stderr, "bench decode: sweep failed: {}\n", st.ToString());
      rows->push_back({"sweep_failed", st.ToString(), 0, 0, 0, {{"error", st.ToString()}}});
    }
    if (Status st = SweepDense(stream, rows); !st.ok()) {
      (void)cudaGetLastError();
      fmt::print(stderr, "bench decode: dense sweep failed: {}\n", st.ToString());
      const std::string what = "dense sweep: " + st.ToString();
      rows->push_back({"sweep_failed", what, 0, 0, 0, {{"error", what}}});
    }
  }
  for (Row& r : *rows) {
    r.extra["layers"] = layers_;
    r.extra["bytes"] = r.bytes;
  }
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal

namespace kvtier::cli {

using decode_internal::Point;
using decode_internal::Row;

Status RunDecodeBench(const DecodeBenchOptions& o) {
  const DecodeBenchOverrides& v = o.overrides;
  kernels::QuestScorePreset preset{};
  if (!decode_internal::ParseScorePreset(v.score_preset, &preset)) {
    return Status::InvalidArgument(fmt::format("unknown score preset '{}' (r9w, r8, r9)", v.score_preset));
  }
  if (const char* e = kernels::QuestScoreShapeError({.tiles_per_cta = v.score_tiles_per_cta, .stages = v.score_stages,
                                                     .slices_per_thread = v.score_slices_per_thread, .preset = preset},
                                                    o.head_dim)) {
    return Status::InvalidArgument(fmt::format("score overrides: {}", e));
  }
  if (kernels::SparseAttentionRule rule{}; !decode_internal::ParseAttentionRule(v.attention_rule, &rule)) {
    return Status::InvalidArgument(fmt::format("unknown attention rule '{}' (default, r9d)", v.attention_rule));
  }
  if (v.attention_chunk_pages != 0 && v.attention_splits != 0) {
    return Status::InvalidArgument("give --attention-chunk-pages or --attention-splits, not both");
  }
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices <= o.device) {
    (void)cudaGetLastError();
    return Status::Unavailable("needs a CUDA build and a GPU: no CUDA device is visible");
  }
  if (o.head_dim != 64 && o.head_dim != 128) return Status::InvalidArgument("head_dim must be 64 or 128");
  if (o.kv_heads == 0 || o.q_heads % o.kv_heads != 0) {
    return Status::InvalidArgument("q_heads must be a multiple of kv_heads");
  }
  if (o.block_tokens == 0 || (o.block_tokens & (o.block_tokens - 1)) != 0 || o.block_tokens > 256) {
    return Status::InvalidArgument("block_tokens must be a power of two <= 256");
  }
  for (uint32_t c : o.contexts) {
    if (c == 0) return Status::InvalidArgument("contexts must be > 0");
  }
  for (uint32_t b : o.batches) {
    if (b == 0) return Status::InvalidArgument("batches must be > 0");
  }
  KVT_CUDA_OR_RETURN(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  KVT_CUDA_OR_RETURN(cudaGetDeviceProperties(&prop, o.device));
  cudaStream_t stream;
  KVT_CUDA_OR_RETURN(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  Status result = Status::Ok();
  for (uint32_t context : o.contexts) {
    for (uint32_t batch : o.batches) {
      std::vector<Row> rows;
      Point point(o, context, batch);
      if (Status s = point.Run(prop, stream, &rows); !s.ok()) {
        result = std::move(s).Annotate(fmt::format("context {} batch {}", context, batch));
        break;
      }
      for (const Row& r : rows) {
        if (r.method == "sweep_failed") {
          result = Status::Internal(fmt::format("context {} batch {}: sweep failed: {}", context, batch, r.what));
        }
      }
      if (o.json) {
        for (const Row& r : rows) {
          nlohmann::json j{{"bench", "decode"}, {"device", prop.name}, {"context", context}, {"batch", batch},
                           {"method", r.method}, {"us", r.us}, {"gbps", r.gbps}, {"budget", o.budget}};
          j.update(r.extra);
          fmt::print("{}\n", j.dump());
        }
        continue;
      }
      fmt::print("{}: context {} x batch {} (one layer: {} q / {} KV heads, d={}, bf16, {}-token blocks; budget {} "
                 "tokens; {} KV copies cycled)\n",
                 prop.name, context, batch, o.q_heads, o.kv_heads, o.head_dim, o.block_tokens, o.budget,
                 rows.front().extra["layers"].get<uint32_t>());
      for (const Row& r : rows) {
        std::string note;
        if (r.method == "dense") note = fmt::format("{:.2f}x copy (target >= 0.9)", r.extra["vs_copy"].get<double>());
        if (r.method == "dense_r9d") {
          note = fmt::format("{:.2f}x copy, {:.3f}x dense{}", r.extra["vs_copy"].get<double>(),
                             r.extra["vs_dense"].get<double>(),
                             r.extra["matches_dense"].get<bool>() ? "" : "  MISMATCH");
        }
        if (r.method.starts_with("select")) {
          note = fmt::format("{:.2f}x dense/{} (target <= 1.1)", r.extra["vs_dense_over_block_tokens"].get<double>(),
                             o.block_tokens);
        }
        if (r.method.starts_with("sparse")) {
          note = fmt::format("speedup {:.2f}x (ideal {:.1f}x; target >= 8x at 32K)", r.extra["speedup"].get<double>(),
                             r.extra["ideal_speedup"].get<double>());
        }
        if (r.method.starts_with("sweep_")) {
          note = r.extra.contains("error")
                     ? fmt::format("not launched: {}", r.extra["error"].get<std::string>())
                     : fmt::format("{:.2f}x default{}", r.extra["vs_default"].get<double>(),
                                   r.extra["matches"].get<bool>() ? "" : "  MISMATCH");
        }
        if (r.method == "scores") {  // the grid the default (or --score-*) gave
          const std::string rule = r.extra["score_preset"].get<std::string>();
          const bool fell_back = rule != "explicit" && !r.extra["score_rule_applied"].get<bool>();
          note = fmt::format("{}: {} buffers, {} tiles x {} CTAs/row{}", rule, r.extra["stages"].get<uint32_t>(),
                             r.extra["tiles_per_cta"].get<uint32_t>(), r.extra["ctas_per_row"].get<uint32_t>(),
                             fell_back ? " (falls back to r8)" : "");
        }
        if (r.method == "sparse_graph_tuned" && !r.extra["matches_default"].get<bool>()) note += "  MISMATCH";
        if (!r.method.starts_with("sweep_") && r.extra.contains("preset")) {  // scores_r8, sparse_graph_r8
          const std::string rule =
              r.extra["applied"].get<bool>()
                  ? fmt::format("{} buffers, {} tiles x {} CTAs/row", r.extra["score_stages"].get<uint32_t>(),
                                r.extra["score_tiles_per_cta"].get<uint32_t>(),
                                r.extra["score_ctas_per_row"].get<uint32_t>())
                  : std::string("falls back to r8");
          if (r.method.starts_with("scores")) {
            note = fmt::format("{:.3f}x scores; {}{}", r.extra["vs_scores"].get<double>(), rule,
                               r.extra["matches_default"].get<bool>() ? "" : "  MISMATCH");
          } else {
            note += fmt::format("; {:.3f}x sparse_graph; {}{}", r.extra["vs_sparse_graph"].get<double>(), rule,
                                r.extra["matches_sparse_graph"].get<bool>() ? "" : "  MISMATCH");
          }
        }
        if (r.method.starts_with("sweep_")) {  // long descriptions: the setting
          fmt::print("  {:<19} {:<70} {:>10.1f} us {:>8.1f} GB/s  {}\n", r.method, r.what, r.us, r.gbps, note);
          continue;
        }
        fmt::print("  {:<19} {:<46} {:>10.1f} us {:>8.1f} GB/s  {}\n", r.method, r.what, r.us, r.gbps, note);
      }
    }
    if (!result.ok()) break;
  }
  cudaStreamDestroy(stream);
  return result;
}

}  // namespace kvtier::cli
