// `kvtier bench decode --sweep` (round 9): after a point's standard rows, the score launch and
// the attention launch over a grid of launch shapes, then the sparse step as one CUDA graph
// with the fastest shapes whose output matched the default's.
//   sweep_scores     every QuestScoreShape instance (2 or 4 slices per thread × 2/3/4/6 tile
//                    buffers) × tiles per CTA (0 = one wave, then 1, 2, 3, 4, 6, ... up to a
//                    whole row per CTA); rate = metadata bytes / time. Each shape's scores (one
//                    launch on layer 0, output poisoned first) must equal the default's bit for
//                    bit (`matches`).
//   sweep_attention  the device's default plan first, then the streamed kernel with every
//                    heads per CTA dividing the group × 4 or 8 loads per tile × pages per CTA
//                    (0 = the planner's, then 1, 2, 3, 4, 6, 8, 11, 16, 22, 32, 43, 64, 128, 256
//                    up to the selection's pages); rate = selected K/V bytes / time. Each plan's
//                    output (bf16) must agree with the default plan's within two correct
//                    computations' tolerance (`matches`, `max_abs_diff`).
//   sparse_graph_tuned  the sparse_graph step (PDL, one graph of `iterations` steps) with the
//                    fastest matching score shape and attention plan (the default plan
//                    included); speedup = dense / it.
// Every row carries vs_default = default time / its time. A shape that cannot launch on this
// device (shared memory) is a row with `error` and no time, never a skipped line.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <utility>
#include <vector>

#include "decode_bench_point.h"

namespace kvtier::cli::decode_internal {
namespace {

// Two bf16 outputs of correct fp32 computations cut differently: the GPU test's tolerance
// against the reference (2e-3·|x| + 2e-4, plus half a bf16 ulp) for each, so twice it, plus
// one bf16 ulp (2^-7·|x|) for rounding on different sides. Non-finite never matches.
bool AttentionClose(float got, float want) {
  if (!std::isfinite(got) || !std::isfinite(want)) return false;
  return std::fabs(double(got) - want) <= (4e-3 + 1.0 / 256 + 1.0 / 128) * std::fabs(want) + 4e-4;
}

struct Agreement {
  bool matches = true;
  double max_abs_diff = 0;
};

Agreement Compare(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want) {
  Agreement a;
  for (size_t i = 0; i < got.size(); ++i) {
    const float g = kernels::Bf16ToFloat(got[i]), w = kernels::Bf16ToFloat(want[i]);
    if (!AttentionClose(g, w)) a.matches = false;
    const double d = std::fabs(double(g) - w);
    a.max_abs_diff = std::isnan(d) ? INFINITY : std::max(a.max_abs_diff, d);
  }
  return a;
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
  kernels::SparseAttentionDeviceArgs a = AttentionArgs(0);
  a.workspace = workspace;
  std::vector<uint16_t> h(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(out_.p, 0xff, h.size() * 2, stream));  // NaN
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, plan, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  KVT_CUDA_OR_RETURN(cudaMemcpy(h.data(), out_.p, h.size() * 2, cudaMemcpyDeviceToHost));
  return h;
}

Status Point::SweepScores(cudaStream_t stream, std::vector<Row>* rows, kernels::QuestScoreShape* best) {
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  KVT_ASSIGN_OR_RETURN(const std::vector<float> want, ScoresOnce({}, stream));
  const std::pair<uint32_t, uint32_t> instances[] = {{2, 4}, {2, 2}, {2, 3}, {2, 6}, {4, 2}, {4, 3}, {4, 4}, {4, 6}};
  double t_default = 0, t_best = INFINITY;
  for (auto [per_thread, stages] : instances) {
    const uint32_t tile = 32 * per_thread, tiles_per_row = (blocks_ + tile - 1) / tile;
    std::vector<uint32_t> tiles{0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128};
    std::erase_if(tiles, [&](uint32_t t) { return t > tiles_per_row; });
    if (tiles.back() != tiles_per_row) tiles.push_back(tiles_per_row);  // one CTA per row
    for (uint32_t tpc : tiles) {
      const kernels::QuestScoreShape shape{.tiles_per_cta = tpc, .stages = stages, .slices_per_thread = per_thread};
      kernels::QuestSelectDeviceArgs args = SelectArgs(0);
      args.score_shape = shape;
      Row row{"sweep_scores",
              fmt::format("{} slices/thread, {} stages, {} tiles/CTA", per_thread, stages, tpc), 0, 0, meta,
              {{"slices_per_thread", per_thread}, {"stages", stages}, {"tiles_per_cta", tpc}}};
      kernels::QuestScorePlan plan;
      if (cudaError_t e = kernels::PlanQuestScores(args, &plan); e != cudaSuccess) {
        (void)cudaGetLastError();
        row.extra["error"] = cudaGetErrorString(e);
        rows->push_back(std::move(row));
        continue;
      }
      const std::function<Status()> loop = [&]() -> Status {
        for (uint32_t i = 0; i < std::max(o_.iterations, 1u); ++i) {
          kernels::QuestSelectDeviceArgs a = SelectArgs(i % layers_);
          a.score_shape = shape;
          KVT_CUDA_OR_RETURN(kernels::LaunchQuestScores(a, stream));
        }
        return Status::Ok();
      };
      KVT_ASSIGN_OR_RETURN(const double t, Timed(loop, stream));
      KVT_ASSIGN_OR_RETURN(const std::vector<float> got, ScoresOnce(shape, stream));
      const bool matches = std::memcmp(got.data(), want.data(), want.size() * sizeof(float)) == 0;
      if (t_default == 0) t_default = t;  // the first instance and tiles 0: the default shape
      if (matches && t < t_best) {
        t_best = t;
        *best = shape;
      }
      row.what += fmt::format(" = {} x {} CTAs, {} per SM", plan.tiles_per_cta, plan.ctas_per_row, plan.ctas_per_sm);
      row.us = t;
      row.gbps = meta / (t * 1e3);
      row.extra.update({{"tiles_per_cta_used", plan.tiles_per_cta}, {"ctas_per_row", plan.ctas_per_row},
                        {"ctas_per_sm", plan.ctas_per_sm}, {"smem_bytes", plan.smem_bytes}, {"matches", matches},
                        {"vs_default", t_default / t}});
      if (!matches) fmt::print(stderr, "bench decode: MISMATCH: scores of sweep shape '{}' differ\n", row.what);
      rows->push_back(std::move(row));
    }
  }
  return Status::Ok();
}

Status Point::SweepAttention(cudaStream_t stream, std::vector<Row>* rows, kernels::SparseAttentionPlan* best) {
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * double(shape_.slice_bytes());
  // The grid: the device's default plan, then the streamed plan with every override.
  kernels::SparseAttentionPlan automatic;
  KVT_CUDA_OR_RETURN(
      kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device, &automatic));
  std::vector<std::pair<kernels::SparseAttentionPlanOverrides, kernels::SparseAttentionPlan>> grid{{{}, automatic}};
  const uint32_t group = o_.q_heads / o_.kv_heads;
  for (uint32_t heads : {8u, 4u, 2u, 1u}) {
    if (group % heads != 0) continue;
    for (uint32_t loads : {4u, 8u}) {
      if (loads == 8 && heads > 4) continue;
      for (uint32_t chunk : {0u, 1u, 2u, 3u, 4u, 6u, 8u, 11u, 16u, 22u, 32u, 43u, 64u, 128u, 256u}) {
        if (chunk > std::max(k_, 1u)) continue;
        const kernels::SparseAttentionPlanOverrides v{.heads_per_cta = heads, .chunk_pages = chunk,
                                                      .tile_loads = loads};
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
  double t_default = 0, t_best = INFINITY;
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
    const Agreement agree = Compare(got, want);
    if (agree.matches && t < t_best) {  // the default plan competes too (the staged one at b1)
      t_best = t;
      *best = plan;
    }
    const uint64_t ctas = uint64_t{plan.rows} * plan.max_splits;
    Row row{"sweep_attention",
            is_default ? fmt::format("default ({}), {} heads/CTA, {} pages x {} pieces ({} CTAs)",
                                     plan.cluster != 0 ? "staged" : "streamed", plan.heads_per_cta, plan.chunk_pages,
                                     plan.max_splits, ctas)
                       : fmt::format("{} heads/CTA, {} loads, {} pages x {} pieces ({} CTAs)", plan.heads_per_cta,
                                     plan.tile_loads == 8 ? 8 : 4, plan.chunk_pages, plan.max_splits, ctas),
            t, sparse_kv / (t * 1e3), sparse_kv,
            {{"default", is_default}, {"cluster", plan.cluster}, {"heads_per_cta", plan.heads_per_cta},
             {"tile_loads", plan.tile_loads == 8 ? 8 : 4}, {"chunk_pages", plan.chunk_pages},
             {"chunk_pages_requested", v.chunk_pages}, {"splits", plan.max_splits}, {"ctas", ctas},
             {"matches", agree.matches}, {"max_abs_diff", agree.max_abs_diff}, {"vs_default", t_default / t}}};
    if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: attention of sweep plan '{}' differs\n", row.what);
    rows->push_back(std::move(row));
  }
  if (t_best == INFINITY) *best = automatic;
  return Status::Ok();
}

Status Point::Sweep(cudaStream_t stream, std::vector<Row>* rows) {
  kernels::QuestScoreShape best_shape;
  kernels::SparseAttentionPlan best_plan;
  KVT_RETURN_IF_ERROR(SweepScores(stream, rows, &best_shape));
  KVT_RETURN_IF_ERROR(SweepAttention(stream, rows, &best_plan));
  // The sparse step with both winners, as one graph; then one step of it against one default
  // step (the same selection: every score shape gives the same scores).
  const kernels::QuestScoreShape saved_shape = score_shape_;
  const kernels::SparseAttentionPlan saved_plan = sparse_plan_;
  DeviceMem tuned_ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&tuned_ws.p, kernels::SparseAttentionWorkspaceBytes(shape_, best_plan)));
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(tuned_ws.p, shape_, best_plan, stream));
  auto run_tuned = [&]() -> Result<std::pair<double, std::vector<uint16_t>>> {
    score_shape_ = best_shape;
    sparse_plan_ = best_plan;
    std::swap(sparse_ws_.p, tuned_ws.p);
    Result<double> t = TimedGraph(&Point::SparsePdlStep, stream);
    std::vector<uint16_t> out(size_t{batch_} * o_.q_heads * o_.head_dim);
    Status st = t.ok() ? SparsePdlStep(0, stream) : t.status();
    if (st.ok()) st = FromCuda(cudaStreamSynchronize(stream), "tuned step");
    if (st.ok()) st = FromCuda(cudaMemcpy(out.data(), out_.p, out.size() * 2, cudaMemcpyDeviceToHost), "tuned output");
    std::swap(sparse_ws_.p, tuned_ws.p);
    score_shape_ = saved_shape;
    sparse_plan_ = saved_plan;
    if (!st.ok()) return st;
    return std::pair{*t, std::move(out)};
  };
  KVT_ASSIGN_OR_RETURN(auto tuned, run_tuned());
  // The default step (no overrides at all) for the comparison.
  score_shape_ = {};
  kernels::SparseAttentionPlan automatic;
  KVT_CUDA_OR_RETURN(
      kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device, &automatic));
  DeviceMem default_ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&default_ws.p, kernels::SparseAttentionWorkspaceBytes(shape_, automatic)));
  KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(default_ws.p, shape_, automatic, stream));
  sparse_plan_ = automatic;
  std::swap(sparse_ws_.p, default_ws.p);
  Status st = SparsePdlStep(0, stream);
  if (st.ok()) st = FromCuda(cudaStreamSynchronize(stream), "default step");
  std::vector<uint16_t> want(tuned.second.size());
  if (st.ok()) st = FromCuda(cudaMemcpy(want.data(), out_.p, want.size() * 2, cudaMemcpyDeviceToHost), "default output");
  std::swap(sparse_ws_.p, default_ws.p);
  score_shape_ = saved_shape;
  sparse_plan_ = saved_plan;
  KVT_RETURN_IF_ERROR(st);
  const Agreement agree = Compare(tuned.second, want);
  if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: tuned sparse step differs from the default step\n");

  const double slice_bytes = double(shape_.slice_bytes());
  const double meta = double(slices_) * (2.0 * o_.head_dim + 4);
  const double sparse_kv = double(batch_) * o_.kv_heads * k_ * slice_bytes;
  const double t = tuned.first;
  rows->push_back({"sparse_graph_tuned",
                   fmt::format("graph, fastest matching sweep shapes (scores {}/{}/{}, attention {}h {}l {}p)",
                               best_shape.slices_per_thread, best_shape.stages, best_shape.tiles_per_cta,
                               best_plan.heads_per_cta, best_plan.tile_loads == 8 ? 8 : 4, best_plan.chunk_pages),
                   t, (meta + sparse_kv) / (t * 1e3), meta + sparse_kv,
                   {{"speedup", t_dense_ / t}, {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                    {"selected_blocks", k_}, {"score_slices_per_thread", best_shape.slices_per_thread},
                    {"score_stages", best_shape.stages}, {"score_tiles_per_cta", best_shape.tiles_per_cta},
                    {"heads_per_cta", best_plan.heads_per_cta}, {"tile_loads", best_plan.tile_loads == 8 ? 8 : 4},
                    {"chunk_pages", best_plan.chunk_pages}, {"splits", best_plan.max_splits},
                    {"cluster", best_plan.cluster}, {"matches_default", agree.matches},
                    {"max_abs_diff", agree.max_abs_diff}}});
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal
