// `kvtier bench decode --sweep` (round 9): after a point's standard rows, the score launch and
// the attention launch over a grid of launch shapes, then the sparse step as one CUDA graph
// for every pair of the fastest few of each, the fastest matching graph kept.
//   sweep_scores     the rules first (`preset`): the default r9w, then r8 and r9; then every
//                    explicit QuestScoreShape instance the sweep keeps (2 or 4 slices per
//                    thread × 2/3/4 tile buffers; the 6-buffer instances, never ahead of the
//                    4-buffer ones on the H100, are left out) × tiles per CTA (0 = one wave,
//                    then 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, ≤ a row); rate = metadata bytes /
//                    time. Each shape's scores (one launch on layer 0, output poisoned first)
//                    must equal the default's bit for bit (`matches`).
//   sweep_attention  the device's default plan first, then the streamed kernel with every
//                    heads per CTA dividing the group × 4 or 8 loads per tile × pages per CTA
//                    (0 = the planner's, then 1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 43, 64, 128, 256
//                    up to the selection's pages); rate = selected K/V bytes / time. Each plan's
//                    output (bf16) must agree with the default plan's within two correct
//                    computations' tolerance (`matches`, `max_abs_diff`).
//   sweep_graph      the sparse_graph step (PDL, `iterations` steps as one graph, median of
//                    `repeats`) for every pair of: the library's default score kernel (the
//                    tensor-core one since round 13, the reference pair; absent under
//                    `--score-*`), the pipelined kernel's default rule, the rules r8 and r9
//                    and the kGraphScores fastest matching shapes (distinct grids) × the
//                    device's default attention plan and the kGraphPlans fastest matching
//                    plans; `sum_single_us` = the pair's single-launch µs + the top-k's. One
//                    step of each (layer 0) must give the default pair's selection exactly and
//                    its output within the attention tolerance (`matches`).
//   sweep_dense      (round 9d; SweepDense, run after the above even if they failed) dense
//                    attention over every block: the `dense` row's plan first (`default`), then
//                    the streamed kernel with every heads per CTA dividing the group × 4 or 8
//                    loads per tile × pages per CTA in {8, 16, 32, 64, 128, 256} ∪ the pieces
//                    the split heuristic gives the default variant (its heads, 4 loads) at
//                    w = 1, 2, 3, 4, 6, 8 waves (4..256 pages, ≤ a row); rate = KV bytes /
//                    time, vs_copy = that over the `copy` row's read+write rate (as `dense`);
//                    `waves` = CTAs / (SMs × that variant's resident CTAs per SM). Each plan's
//                    output (one launch on layer 0, poisoned first) must agree with the default
//                    plan's within the attention tolerance (`matches`). Timed with fewer steps
//                    where a dense step is long: ⌈4 ms / dense µs⌉ steps (at least 3, at most
//                    `iterations`) per repetition (`iterations` field).
//   sparse_graph_tuned  the fastest matching sweep_graph pair (by graph time, not by the
//                    single launches: those did not compose — docs/sparse.md, round 9);
//                    speedup = dense / it, vs_default_graph = the default pair's graph / it.
// Every row carries vs_default = default time / its time. A shape that cannot launch on this
// device (shared memory) is a row with `error` and no time, never a skipped line.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "decode_bench_point.h"

namespace kvtier::cli::decode_internal {
namespace {

constexpr size_t kGraphScores = 4;  // fastest matching score shapes timed in the graph
constexpr size_t kGraphPlans = 3;   // fastest matching attention plans timed in the graph

std::string ScoreLabel(const kernels::QuestScorePlan& p) {
  return fmt::format("{}s {}b {}t x{}", p.tile_slices / 32, p.stages, p.tiles_per_cta, p.ctas_per_row);
}

// The kernel of a plan as the sweep tables name it: "streamed" (4 or 8 loads per tile apart),
// "tensor-core", "balanced" (tensor-core, balanced rows), "bulk", "staged".
const char* SweepKernel(const kernels::SparseAttentionPlan& p) {
  return p.cluster != 0 ? "staged" : p.balance ? "balanced" : p.mma ? "tensor-core" : p.bulk ? "bulk" : "streamed";
}

std::string AttentionLabel(const kernels::SparseAttentionPlan& p) {
  const char* kernel = SweepKernel(p);
  return fmt::format("{}{}h {}l {}p x{}", std::string_view(kernel) == "streamed" ? "" : std::string(kernel) + " ",
                     p.heads_per_cta, p.tile_loads == 8 ? 8 : 4, p.chunk_pages, p.max_splits);
}

bool SamePlan(const kernels::SparseAttentionPlan& a, const kernels::SparseAttentionPlan& b) {
  return a.cluster == b.cluster && a.heads_per_cta == b.heads_per_cta && a.tile_loads == b.tile_loads &&
         a.chunk_pages == b.chunk_pages && a.max_splits == b.max_splits && a.rows == b.rows && a.mma == b.mma &&
         a.bulk == b.bulk && a.balance == b.balance;
}

// The kernels the attention sweeps cover at each (heads per CTA, pages per CTA): the streamed
// kernel at 4 and 8 loads per tile, and (eighth session) the tensor-core kernel, static and
// with balanced rows (block tokens ≥ 16). Overrides on a streamed base plan.
struct SweepKernelVariant {
  uint32_t tile_loads;
  uint8_t mma, balance;  // SparseAttentionPlanOverrides: 0 as planned, 1 yes, 2 no
};
std::vector<SweepKernelVariant> SweepKernelVariants(uint32_t heads, uint32_t block_tokens) {
  std::vector<SweepKernelVariant> v{{4, 2, 2}};
  if (heads <= 4) v.push_back({8, 2, 2});
  v.push_back({4, 1, 2});
  if (block_tokens >= kernels::kSparseAttentionBalanceMinBlockTokens) v.push_back({4, 1, 1});
  return v;
}

bool SameGrid(const kernels::QuestScorePlan& a, const kernels::QuestScorePlan& b) {
  return a.pipelined == b.pipelined && a.tile_slices == b.tile_slices && a.stages == b.stages &&
         a.tiles_per_cta == b.tiles_per_cta && a.ctas_per_row == b.ctas_per_row;
}

}  // namespace

Result<std::vector<float>> Point::ScoresOnce(const kernels::QuestScoreShape& shape, cudaStream_t stream) {
  kernels::QuestSelectDeviceArgs a = SelectArgs(0);
  a.score_shape = shape;
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(scores_.p, 0xff, size_t{slices_} * sizeof(float), stream));  // NaN
  KVT_CUDA_OR_RETURN(kernels::LaunchQuestScores(a, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  std::vector<float> h(slices_);
  KVT_CUDA_OR_RETURN(cudaMemcpy(h.data(), scores_.p, h.size() * sizeof(float), cudaMemcpyDeviceToHost));
  return h;
}

Result<std::vector<uint16_t>> Point::AttentionOnce(const kernels::SparseAttentionPlan& plan, void* workspace,
                                                   cudaStream_t stream) {
  return OutputOnce(AttentionArgs(0), plan, workspace, stream);
}

Status Point::SweepScores(cudaStream_t stream, std::vector<Row>* rows, std::vector<ScoreCandidate>* ranked) {
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  KVT_ASSIGN_OR_RETURN(const std::vector<float> want, ScoresOnce({}, stream));
  // The rules (the default first: the reference of vs_default), then explicit shapes (slices
  // per thread, buffers) × tiles per CTA.
  std::vector<std::pair<kernels::QuestScoreShape, const char*>> shapes{
      {{}, ScorePresetName(kernels::kQuestScoreDefaultPreset)},
      {kernels::kQuestScoreRound8Shape, "r8"},
      {{.preset = kernels::QuestScorePreset::kRound9}, "r9"}};
  const std::pair<uint32_t, uint32_t> instances[] = {{2, 4}, {2, 2}, {2, 3}, {4, 2}, {4, 3}, {4, 4}};
  for (auto [per_thread, stages] : instances) {
    const uint32_t tile = 32 * per_thread, tiles_per_row = (blocks_ + tile - 1) / tile;
    for (uint32_t tpc : {0u, 1u, 2u, 3u, 4u, 6u, 8u, 12u, 16u, 24u, 32u}) {
      if (tpc > tiles_per_row) continue;
      shapes.push_back({{.tiles_per_cta = tpc, .stages = stages, .slices_per_thread = per_thread}, nullptr});
    }
  }
  double t_default = 0;
  std::vector<ScoreCandidate> matching;
  for (const auto& [shape, preset] : shapes) {
    kernels::QuestSelectDeviceArgs args = SelectArgs(0);
    args.score_shape = shape;
    Row row{"sweep_scores",
            preset != nullptr ? fmt::format("rule {}{}", preset, kernels::IsDefault(shape) ? " (default)" : "")
                              : fmt::format("{} slices/thread, {} stages, {} tiles/CTA", shape.slices_per_thread,
                                            shape.stages, shape.tiles_per_cta),
            0, 0, meta,
            {{"slices_per_thread", shape.slices_per_thread}, {"stages", shape.stages},
             {"tiles_per_cta", shape.tiles_per_cta}}};
    if (preset != nullptr) row.extra["preset"] = preset;
    kernels::QuestScorePlan plan;
    if (cudaError_t e = kernels::PlanQuestScores(args, &plan); e != cudaSuccess) {
      (void)cudaGetLastError();
      row.extra["error"] = cudaGetErrorString(e);
      rows->push_back(std::move(row));
      continue;
    }
    KVT_ASSIGN_OR_RETURN(const double t, TimedScores(shape, stream));
    KVT_ASSIGN_OR_RETURN(const std::vector<float> got, ScoresOnce(shape, stream));
    const bool matches = std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0;
    if (t_default == 0) t_default = t;  // the first shape: the default rule
    if (matches) matching.push_back({preset != nullptr ? std::string(preset) : ScoreLabel(plan), shape, plan, t});
    row.what += fmt::format(" = {} x {} CTAs, {} per SM", plan.tiles_per_cta, plan.ctas_per_row, plan.ctas_per_sm);
    row.us = t;
    row.gbps = meta / (t * 1e3);
    if (preset != nullptr) {
      row.extra.update({{"slices_per_thread", plan.tile_slices / 32}, {"stages", plan.stages},
                        {"applied", plan.preset == shape.preset}});
    }
    row.extra.update({{"tiles_per_cta_used", plan.tiles_per_cta}, {"ctas_per_row", plan.ctas_per_row},
                      {"ctas_per_sm", plan.ctas_per_sm}, {"smem_bytes", plan.smem_bytes}, {"matches", matches},
                      {"vs_default", t_default / t}});
    if (!matches) fmt::print(stderr, "bench decode: MISMATCH: scores of sweep shape '{}' differ\n", row.what);
    rows->push_back(std::move(row));
  }
  // The default first (it competes too), then the other rules (one that gives the same grid
  // as an earlier candidate, e.g. r8 where r9w falls back, is left out), then the explicit
  // shapes fastest first; one candidate per grid.
  if (matching.empty() || !kernels::IsDefault(matching.front().shape)) {
    return Status::Internal("sweep: the default score shape did not match itself");
  }
  matching.front().label += " default";
  std::stable_sort(matching.begin() + 1, matching.end(),
                   [](const ScoreCandidate& x, const ScoreCandidate& y) { return x.us < y.us; });
  auto add = [&](ScoreCandidate& c) {
    const bool seen = std::any_of(ranked->begin(), ranked->end(),
                                  [&](const ScoreCandidate& r) { return SameGrid(r.plan, c.plan); });
    if (!seen) ranked->push_back(c);
  };
  for (ScoreCandidate& c : matching) {
    if (!kernels::HasExplicitFields(c.shape)) {  // the rules, the default first
      c.label += " (" + ScoreLabel(c.plan) + ")";
      add(c);
    }
  }
  for (ScoreCandidate& c : matching) {
    if (kernels::HasExplicitFields(c.shape)) add(c);
  }
  return Status::Ok();
}

Status Point::SweepAttention(cudaStream_t stream, std::vector<Row>* rows, std::vector<AttentionCandidate>* ranked) {
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * double(shape_.slice_bytes());
  // The grid: the device's default plan, then the streamed plan with every override.
  kernels::SparseAttentionPlan automatic;
  KVT_CUDA_OR_RETURN(
      kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device, &automatic));
  std::vector<std::pair<kernels::SparseAttentionPlanOverrides, kernels::SparseAttentionPlan>> grid{{{}, automatic}};
  const uint32_t group = o_.q_heads / o_.kv_heads;
  for (uint32_t heads : {8u, 4u, 2u, 1u}) {
    if (group % heads != 0) continue;
    for (const SweepKernelVariant& kind : SweepKernelVariants(heads, o_.block_tokens)) {
      for (uint32_t chunk : {0u, 1u, 2u, 3u, 4u, 6u, 8u, 11u, 16u, 22u, 32u, 43u, 64u, 128u, 256u}) {
        if (chunk > std::max(k_, 1u)) continue;
        const kernels::SparseAttentionPlanOverrides v{.heads_per_cta = heads, .chunk_pages = chunk,
                                                      .tile_loads = kind.tile_loads, .mma = kind.mma,
                                                      .balance = kind.balance};
        kernels::SparseAttentionPlan plan;
        if (const char* e = kernels::ApplySparseAttentionOverrides(shape_, k_, streamed_plan_, v, &plan)) {
          return Status::Internal(fmt::format("sweep attention plan: {}", e));  // the grid is valid by construction
        }
        grid.emplace_back(v, plan);
      }
    }
  }
  size_t ws_bytes = 0;
  for (const auto& [v, plan] : grid) ws_bytes = std::max(ws_bytes, kernels::SparseAttentionWorkspaceBytes(shape_, plan));
  DeviceMem ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, ws_bytes));
  std::vector<uint16_t> want;
  double t_default = 0;
  std::vector<AttentionCandidate> matching;
  for (const auto& [v, plan] : grid) {
    const bool is_default = want.empty();
    // Counters at zero for this plan's layout (another plan may have left partials there).
    KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(ws.p, shape_, plan, stream));
    const std::function<Status()> loop = [&]() -> Status {
      for (uint32_t i = 0; i < std::max(o_.iterations, 1u); ++i) {
        kernels::SparseAttentionDeviceArgs a = AttentionArgs(i % layers_);
        a.workspace = ws.p;
        KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, plan, stream));
      }
      return Status::Ok();
    };
    KVT_ASSIGN_OR_RETURN(const double t, Timed(loop, stream));
    KVT_ASSIGN_OR_RETURN(std::vector<uint16_t> got, AttentionOnce(plan, ws.p, stream));
    if (is_default) {
      want = got;
      t_default = t;
    }
    const Agreement agree = CompareAttention(got, want);
    if (agree.matches) matching.push_back({AttentionLabel(plan), plan, t});
    const uint64_t ctas = uint64_t{plan.rows} * plan.max_splits;
    Row row{"sweep_attention",
            fmt::format("{}{}, {} heads/CTA, {} loads, {} pages x {} pieces ({} CTAs)", is_default ? "default, " : "",
                        SweepKernel(plan), plan.heads_per_cta, plan.tile_loads == 8 ? 8 : 4, plan.chunk_pages,
                        plan.max_splits, ctas),
            t, sparse_kv / (t * 1e3), sparse_kv,
            {{"default", is_default}, {"kernel", SweepKernel(plan)}, {"cluster", plan.cluster},
             {"heads_per_cta", plan.heads_per_cta},
             {"tile_loads", plan.tile_loads == 8 ? 8 : 4}, {"chunk_pages", plan.chunk_pages},
             {"chunk_pages_requested", v.chunk_pages}, {"splits", plan.max_splits}, {"ctas", ctas},
             {"matches", agree.matches}, {"max_abs_diff", agree.max_abs_diff}, {"vs_default", t_default / t}}};
    if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: attention of sweep plan '{}' differs\n", row.what);
    rows->push_back(std::move(row));
  }
  if (matching.empty()) return Status::Internal("sweep: the default attention plan did not match itself");
  matching.front().label = "default (" + matching.front().label + ")";
  std::stable_sort(matching.begin() + 1, matching.end(),
                   [](const AttentionCandidate& x, const AttentionCandidate& y) { return x.us < y.us; });
  for (AttentionCandidate& c : matching) {
    const bool seen = std::any_of(ranked->begin(), ranked->end(),
                                  [&](const AttentionCandidate& r) { return SamePlan(r.plan, c.plan); });
    if (!seen) ranked->push_back(std::move(c));
  }
  return Status::Ok();
}

Status Point::SweepDense(cudaStream_t stream, std::vector<Row>* rows) {
  using kernels::SparseAttentionPlan;
  const double kv = double(kv_bytes_);
  const double copy_rw_gbps = 2.0 * kv / (t_copy_ * 1e3);
  const uint32_t pages = std::max(blocks_, 1u);
  SparseAttentionPlan base;  // the streamed dense plan: what the overrides apply to
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, blocks_, o_.device,
                                                           kernels::SparseAttentionKernels::kStreamed, &base));
  auto ctas_per_sm = [&](const SparseAttentionPlan& p) -> Result<uint32_t> {
    uint32_t n = 0;
    if (p.cluster != 0) return n;  // staged: not this kernel
    KVT_CUDA_OR_RETURN(kernels::SparseAttentionCtasPerSm(shape_, kernels::HalfType::kBf16,
                                                         kernels::AttentionOutput::kInputType, p, &n));
    return n;
  };
  // Columns: powers of two, and the pieces of whole waves of the default variant.
  std::vector<uint32_t> chunks{8, 16, 32, 64, 128, 256};
  KVT_ASSIGN_OR_RETURN(const uint32_t base_per_sm, ctas_per_sm({.heads_per_cta = base.heads_per_cta}));
  for (uint64_t w : {1u, 2u, 3u, 4u, 6u, 8u}) {
    const uint64_t splits = w * sm_count_ * base_per_sm / std::max(base.rows, 1u);
    if (splits == 0) continue;
    const uint64_t chunk = (pages + splits - 1) / splits;
    if (chunk >= kernels::kSparseAttentionMinChunkPages && chunk <= kernels::kSparseAttentionMaxChunkPages) {
      chunks.push_back(static_cast<uint32_t>(chunk));
    }
  }
  std::sort(chunks.begin(), chunks.end());
  chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
  std::vector<std::pair<kernels::SparseAttentionPlanOverrides, SparseAttentionPlan>> grid{{{}, dense_plan_}};
  const uint32_t group = o_.q_heads / o_.kv_heads;
  for (uint32_t heads : {8u, 4u, 2u, 1u}) {
    if (group % heads != 0) continue;
    for (const SweepKernelVariant& kind : SweepKernelVariants(heads, o_.block_tokens)) {
      for (uint32_t chunk : chunks) {
        if (chunk > pages) continue;
        const kernels::SparseAttentionPlanOverrides v{.heads_per_cta = heads, .chunk_pages = chunk,
                                                      .tile_loads = kind.tile_loads, .mma = kind.mma,
                                                      .balance = kind.balance};
        SparseAttentionPlan plan;
        if (const char* e = kernels::ApplySparseAttentionOverrides(shape_, blocks_, base, v, &plan)) {
          return Status::Internal(fmt::format("dense sweep plan: {}", e));  // valid by construction
        }
        grid.emplace_back(v, plan);
      }
    }
  }
  size_t ws_bytes = 0;
  for (const auto& [v, plan] : grid) ws_bytes = std::max(ws_bytes, kernels::SparseAttentionWorkspaceBytes(shape_, plan));
  DeviceMem ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, ws_bytes));
  // Steps per repetition: about 4 ms of the default plan's dense steps (b8/128K: 3 of ~1.5 ms).
  const uint32_t iters = std::min(std::max(o_.iterations, 1u),
                                  std::max(3u, static_cast<uint32_t>(std::ceil(4000.0 / std::max(t_dense_, 1.0)))));
  const uint32_t reps = std::max(o_.repeats, 1u);
  double t_default = 0;
  for (size_t i = 0; i < grid.size(); ++i) {
    const auto& [v, plan] = grid[i];
    const bool is_default = i == 0;
    KVT_ASSIGN_OR_RETURN(const double t, TimedDense(plan, ws.p, iters, reps, stream));
    KVT_ASSIGN_OR_RETURN(const std::vector<uint16_t> got, DenseOnce(plan, ws.p, stream));
    if (is_default) t_default = t;
    const Agreement agree = CompareAttention(got, dense_out_);
    KVT_ASSIGN_OR_RETURN(const uint32_t per_sm, ctas_per_sm(plan));
    const uint64_t ctas = uint64_t{plan.rows} * plan.max_splits;
    const double waves = per_sm == 0 ? 0.0 : double(ctas) / (double(per_sm) * sm_count_);
    const double gbps = kv / (t * 1e3);
    Row row{"sweep_dense",
            fmt::format("{}{}, {} heads/CTA, {} loads, {} pages x {} pieces ({} CTAs, {:.2f} waves)",
                        is_default ? "default, " : "", SweepKernel(plan), plan.heads_per_cta,
                        plan.tile_loads == 8 ? 8 : 4, plan.chunk_pages, plan.max_splits, ctas, waves),
            t, gbps, kv,
            {{"default", is_default}, {"kernel", SweepKernel(plan)}, {"cluster", plan.cluster},
             {"heads_per_cta", plan.heads_per_cta},
             {"tile_loads", plan.tile_loads == 8 ? 8 : 4}, {"chunk_pages", plan.chunk_pages},
             {"chunk_pages_requested", v.chunk_pages}, {"splits", plan.max_splits}, {"ctas", ctas},
             {"ctas_per_sm", per_sm}, {"waves", waves}, {"matches", agree.matches},
             {"max_abs_diff", agree.max_abs_diff}, {"vs_default", t_default / t}, {"vs_copy", gbps / copy_rw_gbps},
             {"iterations", iters}}};
    if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: dense sweep plan '{}' differs\n", row.what);
    rows->push_back(std::move(row));
  }
  return Status::Ok();
}

Status Point::Sweep(cudaStream_t stream, std::vector<Row>* rows) {
  std::vector<ScoreCandidate> scores;
  std::vector<AttentionCandidate> plans;
  {  // The swept score shapes are the pipelined kernel's (its default rule their reference).
    const AlgorithmScope fp32(*this, kernels::QuestScoreAlgorithm::kPipelined);
    KVT_RETURN_IF_ERROR(SweepScores(stream, rows, &scores));
  }
  KVT_RETURN_IF_ERROR(SweepAttention(stream, rows, &plans));
  // Graph candidates: the run's own score kernel first (the library's default, the tensor-core
  // one since round 13 — one fixed shape — or the pipelined one under --score-*), then the
  // pipelined rules (wherever they rank), then the fastest explicit shapes up to kGraphScores;
  // the default plan, then the fastest kGraphPlans others.
  std::vector<ScoreCandidate> score_set;
  if (score_algorithm_ != kernels::QuestScoreAlgorithm::kPipelined) {
    ScoreCandidate own;
    own.label = "tensor-core default";
    own.algorithm = score_algorithm_;
    KVT_CUDA_OR_RETURN(kernels::PlanQuestScores(SelectArgs(0), &own.plan));
    KVT_ASSIGN_OR_RETURN(own.us, TimedScores(own.shape, stream));
    score_set.push_back(own);
  }
  for (const ScoreCandidate& c : scores) {
    if (!kernels::HasExplicitFields(c.shape)) score_set.push_back(c);  // scores.front(): the default
  }
  size_t others = 0;
  for (size_t i = 0; i < scores.size() && others < kGraphScores; ++i) {
    if (!kernels::HasExplicitFields(scores[i].shape)) continue;
    score_set.push_back(scores[i]);
    ++others;
  }
  const std::vector<AttentionCandidate> plan_set(plans.begin(),
                                                 plans.begin() + std::min(plans.size(), kGraphPlans + 1));
  size_t ws_bytes = 0;
  for (const AttentionCandidate& p : plan_set) {
    ws_bytes = std::max(ws_bytes, kernels::SparseAttentionWorkspaceBytes(shape_, p.plan));
  }
  DeviceMem ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, ws_bytes));

  const double slice_bytes = double(shape_.slice_bytes());
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * slice_bytes;
  // The default pair first: the reference of every other pair's output and time.
  StepOutcome ref;
  struct Best {
    double us = INFINITY;
    const ScoreCandidate* score = nullptr;
    const AttentionCandidate* plan = nullptr;
    Agreement agree;
  } best;
  for (size_t si = 0; si < score_set.size(); ++si) {
    for (size_t pi = 0; pi < plan_set.size(); ++pi) {
      const ScoreCandidate& sc = score_set[si];
      const AttentionCandidate& pc = plan_set[pi];
      const AlgorithmScope kernel(*this, sc.algorithm);
      KVT_ASSIGN_OR_RETURN(StepOutcome step, GraphStepWith(sc.shape, pc.plan, ws.p, stream));
      const bool is_default = si == 0 && pi == 0;
      if (is_default) ref = step;
      const bool selection_matches = step.selected == ref.selected;
      const Agreement agree = CompareAttention(step.out, ref.out);
      const bool matches = selection_matches && agree.matches;
      if (matches && step.us < best.us) best = {step.us, &sc, &pc, agree};
      const double sum_single = sc.us + t_topk_ + pc.us;
      Row row{"sweep_graph", fmt::format("scores {}, attention {}", sc.label, pc.label), step.us,
              (meta + sparse_kv) / (step.us * 1e3), meta + sparse_kv,
              {{"score_index", si}, {"attention_index", pi}, {"score_label", sc.label},
               {"attention_label", pc.label}, {"score_tensor_core", sc.plan.tensor_core},
               {"score_slices_per_thread", sc.plan.tile_slices / 32},
               {"score_stages", sc.plan.stages}, {"score_tiles_per_cta", sc.plan.tiles_per_cta},
               {"score_ctas_per_row", sc.plan.ctas_per_row}, {"score_us", sc.us}, {"attention_us", pc.us},
               {"topk_us", t_topk_}, {"sum_single_us", sum_single}, {"cluster", pc.plan.cluster},
               {"heads_per_cta", pc.plan.heads_per_cta}, {"tile_loads", pc.plan.tile_loads == 8 ? 8 : 4},
               {"chunk_pages", pc.plan.chunk_pages}, {"splits", pc.plan.max_splits},
               {"selection_matches", selection_matches}, {"matches", matches},
               {"max_abs_diff", agree.max_abs_diff}, {"vs_default", ref.us / step.us},
               {"speedup", t_dense_ / step.us}}};
      if (!matches) {
        fmt::print(stderr, "bench decode: MISMATCH: sweep graph '{}' differs from the default step\n", row.what);
      }
      rows->push_back(std::move(row));
    }
  }
  if (best.score == nullptr) return Status::Internal("sweep: no graph pair matched the default step");
  const ScoreCandidate& bs = *best.score;
  const kernels::SparseAttentionPlan& bp = best.plan->plan;
  const double t = best.us;
  rows->push_back({"sparse_graph_tuned",
                   fmt::format("graph, fastest matching pair by graph time (scores {}, attention {})", bs.label,
                               best.plan->label),
                   t, (meta + sparse_kv) / (t * 1e3), meta + sparse_kv,
                   {{"speedup", t_dense_ / t}, {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                    {"selected_blocks", k_}, {"score_label", bs.label}, {"score_tensor_core", bs.plan.tensor_core},
                    {"score_preset", ScoreShapeName(bs.shape)},
                    {"score_slices_per_thread", bs.plan.tile_slices / 32}, {"score_stages", bs.plan.stages},
                    {"score_tiles_per_cta", bs.plan.tiles_per_cta}, {"score_ctas_per_row", bs.plan.ctas_per_row},
                    {"attention_label", best.plan->label}, {"heads_per_cta", bp.heads_per_cta},
                    {"tile_loads", bp.tile_loads == 8 ? 8 : 4}, {"chunk_pages", bp.chunk_pages},
                    {"splits", bp.max_splits}, {"cluster", bp.cluster}, {"matches_default", true},
                    {"max_abs_diff", best.agree.max_abs_diff}, {"default_graph_us", ref.us},
                    {"vs_default_graph", ref.us / t}, {"sum_single_us", bs.us + t_topk_ + best.plan->us},
                    {"graph_pairs", score_set.size() * plan_set.size()}}});
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal
