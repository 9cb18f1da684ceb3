// `kvtier bench decode` on CUDA builds: a point's standard rows (Point::Run; the rows are
// described in decode_bench_gpu.cc), with the dense_r9d row and the rows of round 8's score
// rule, and the attention tolerance the checks use.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <iterator>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "quest_select.cuh"
#include "reference/sparse_attention.h"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

const char* PlanKernelName(const kernels::SparseAttentionPlan& p) {
  return p.cluster != 0 ? "staged" : p.mma ? "tensor-core" : p.bulk ? "bulk" : p.tile_loads == 8 ? "streamed, deep" : "streamed";
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
                                                         kernels::AttentionOutput::kInputType, plan, &per_sm));
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

Point::StepCheck Point::CheckStep(const StepOutcome& step, const StepOutcome& ref, const char* name) {
  StepCheck c{step.selected == ref.selected, CompareAttention(step.out, ref.out)};
  if (!c.matches()) fmt::print(stderr, "bench decode: MISMATCH: sparse_graph_{} step differs from sparse_graph's\n", name);
  return c;
}

Status Point::KernelRows(const char* name, const char* what, const kernels::SparseAttentionPlan* dense,
                         const kernels::SparseAttentionPlan* sparse, const std::vector<uint16_t>& want, double t_copy,
                         const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows) {
  double t_dense_variant = 0;
  if (dense != nullptr) {
    DeviceMem ws;
    KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, kernels::SparseAttentionWorkspaceBytes(shape_, *dense)));
    KVT_ASSIGN_OR_RETURN(const double t, TimedDense(*dense, ws.p, std::max(o_.iterations, 1u),
                                                    std::max(o_.repeats, 1u), stream));
    KVT_ASSIGN_OR_RETURN(const std::vector<uint16_t> got, DenseOnce(*dense, ws.p, stream));
    const Agreement agree = CompareAttention(got, want);
    if (!agree.matches) fmt::print(stderr, "bench decode: MISMATCH: dense_{} output differs from dense's\n", name);
    t_dense_variant = t;
    const double copy_rw_gbps = 2.0 * kv_bytes_ / (t_copy * 1e3), gbps = double(kv_bytes_) / (t * 1e3);
    rows->push_back({fmt::format("dense_{}", name),
                     fmt::format("dense, {} ({} heads, {} pages x {})", what, dense->heads_per_cta, dense->chunk_pages,
                                 dense->max_splits),
                     t, gbps, double(kv_bytes_),
                     {{"vs_copy", gbps / copy_rw_gbps}, {"vs_dense", t_dense_ / t}, {"heads_per_cta", dense->heads_per_cta},
                      {"chunk_pages", dense->chunk_pages}, {"splits", dense->max_splits},
                      {"matches_dense", agree.matches}, {"bit_equal", got == want},
                      {"max_abs_diff", agree.max_abs_diff}}});
  }
  if (sparse == nullptr) return Status::Ok();
  DeviceMem ws;
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, kernels::SparseAttentionWorkspaceBytes(shape_, *sparse)));
  KVT_ASSIGN_OR_RETURN(const StepOutcome step, GraphStepWith(score_shape_, *sparse, ws.p, stream));
  const StepCheck check = CheckStep(step, ref, name);
  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
  nlohmann::json extra{{"speedup", t_dense_ / step.us}, {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                       {"vs_sparse_graph", t_graph / step.us}, {"selected_blocks", k_},
                       {"chunk_pages", sparse->chunk_pages}, {"splits", sparse->max_splits},
                       {"heads_per_cta", sparse->heads_per_cta}, {"selection_matches", check.selection_matches},
                       {"max_abs_diff", check.attention.max_abs_diff}, {"matches_sparse_graph", check.matches()}};
  if (t_dense_variant > 0) extra[fmt::format("speedup_vs_dense_{}", name)] = t_dense_variant / step.us;
  rows->push_back({fmt::format("sparse_graph_{}", name), fmt::format("sparse_graph with the {}", what), step.us,
                   (meta + sparse_kv) / (step.us * 1e3), meta + sparse_kv, std::move(extra)});
  return Status::Ok();
}

Status Point::StepVariantRow(const char* name, const char* what, Step variant, const StepOutcome& ref, double t_graph,
                             cudaStream_t stream, std::vector<Row>* rows) {
  KVT_ASSIGN_OR_RETURN(const double t, TimedGraph(variant, stream));
  KVT_ASSIGN_OR_RETURN(const StepOutcome step, OneStepOf(variant, stream));
  const StepCheck check = CheckStep(step, ref, name);
  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
  rows->push_back({fmt::format("sparse_graph_{}", name), what, t, (meta + sparse_kv) / (t * 1e3), meta + sparse_kv,
                   {{"speedup", t_dense_ / t},
                    {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                    {"vs_sparse_graph", t_graph / t},
                    {"selection_matches", check.selection_matches},
                    {"max_abs_diff", check.attention.max_abs_diff},
                    {"matches_sparse_graph", check.matches()}}});
  return Status::Ok();
}

Status Point::BisectionRows(const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows) {
  if (blocks_ > kernels::kDigitTopKAutoMaxBlocks) return Status::Ok();  // the default is not the digits here
  return StepVariantRow("bisect", "sparse_graph with the bisection top-k", &Point::SparsePdlBisectionStep, ref, t_graph,
                        stream, rows);
}

Status Point::GraphBaselineRows(double t_graph, cudaStream_t stream, std::vector<Row>* rows) {
  KVT_ASSIGN_OR_RETURN(const double t_copy_graph, TimedGraph(&Point::CopyStep, stream));
  KVT_ASSIGN_OR_RETURN(const double t_dense_graph, TimedGraph(&Point::DensePdlStep, stream));
  kernels::SparseAttentionDeviceArgs a = DenseArgs(0);
  a.programmatic_dependent_launch = true;
  KVT_ASSIGN_OR_RETURN(const std::vector<uint16_t> got, OutputOnce(a, dense_plan_, dense_ws_.p, stream));
  const bool same = got == dense_out_;
  if (!same) fmt::print(stderr, "bench decode: MISMATCH: dense with PDL differs from dense\n");
  const double kv = double(kv_bytes_);
  const double copy_gbps = 2.0 * kv / (t_copy_graph * 1e3), dense_gbps = kv / (t_dense_graph * 1e3);
  // Against the faster copy of the two (a graph's copies were slower for large layers).
  const double best_copy_gbps = 2.0 * kv / (std::min(t_copy_, t_copy_graph) * 1e3);
  rows->push_back({"copy_graph", "the copy row's copies as one CUDA graph", t_copy_graph, copy_gbps, 2.0 * kv, {}});
  rows->push_back({"dense_graph", "dense with PDL, its steps as one CUDA graph", t_dense_graph, dense_gbps, kv,
                   {{"vs_copy", dense_gbps / best_copy_gbps}, {"vs_dense", t_dense_ / t_dense_graph},
                    {"matches_dense", same}, {"bit_equal", same}}});
  for (Row& r : *rows) {
    if (r.method == "sparse_graph") r.extra["speedup_vs_dense_graph"] = t_dense_graph / t_graph;
  }
  return Status::Ok();
}

Status Point::VariantRows(const std::vector<uint16_t>& want, double t_copy, const StepOutcome& ref, double t_graph,
                          cudaStream_t stream, std::vector<Row>* rows) {
  // The round-6 streamed kernel (the default before round 10c) on its own plans.
  kernels::SparseAttentionPlan dense_streamed;
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, blocks_, o_.device,
                                                           kernels::SparseAttentionKernels::kStreamed, rule_,
                                                           &dense_streamed));
  KVT_RETURN_IF_ERROR(KernelRows("streamed", "round-6 streamed kernel", &dense_streamed, &streamed_plan_, want, t_copy,
                                 ref, t_graph, stream, rows));
  // The bulk kernel on the streamed cuts.
  const kernels::SparseAttentionPlanOverrides make_bulk{.bulk = 1};
  kernels::SparseAttentionPlan dense_bulk, sparse_bulk;
  const char* dense_why = kernels::ApplySparseAttentionOverrides(shape_, blocks_, dense_streamed, make_bulk, &dense_bulk);
  if (dense_why != nullptr) fmt::print(stderr, "bench decode: no dense_bulk row: {}\n", dense_why);
  const char* sparse_why = kernels::ApplySparseAttentionOverrides(shape_, k_, streamed_plan_, make_bulk, &sparse_bulk);
  if (sparse_why != nullptr) fmt::print(stderr, "bench decode: no sparse_graph_bulk row: {}\n", sparse_why);
  KVT_RETURN_IF_ERROR(KernelRows("bulk", "bulk kernel", dense_why == nullptr ? &dense_bulk : nullptr,
                                 sparse_why == nullptr ? &sparse_bulk : nullptr, want, t_copy, ref, t_graph, stream,
                                 rows));
  // The tensor-core kernel's own sparse plan (round 11): the default's kernel at batch 8, here
  // also at batch 1, where the default is the streamed kernel (its dense plan is `dense`'s).
  kernels::SparseAttentionPlan sparse_mma, sparse_staged;
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device,
                                                           kernels::SparseAttentionKernels::kMma, rule_, &sparse_mma));
  KVT_RETURN_IF_ERROR(KernelRows("mma", "tensor-core kernel", nullptr, &sparse_mma, want, t_copy, ref, t_graph, stream,
                                 rows));
  // The staged kernel where it fits (batch 1): the default of rounds 7-11 (round 11c).
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device,
                                                           kernels::SparseAttentionKernels::kStaged, rule_,
                                                           &sparse_staged));
  if (sparse_staged.cluster != 0) {
    KVT_RETURN_IF_ERROR(KernelRows("staged", "staged kernel", nullptr, &sparse_staged, want, t_copy, ref, t_graph,
                                   stream, rows));
  }
  // Balanced rows (round 11): the tensor-core kernel's plans with each row's tiles claimed by
  // its CTAs (kernels::SparseAttentionPlan::balance) — the sparse one also at batch 1, where
  // the default is the staged kernel.
  kernels::SparseAttentionPlan dense_balanced, sparse_balanced;
  const auto balanced = kernels::SparseAttentionKernels::kMmaBalanced;
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, blocks_, o_.device,
                                                           balanced, rule_, &dense_balanced));
  KVT_CUDA_OR_RETURN(kernels::PlanSparseAttentionForDevice(shape_, kernels::HalfType::kBf16, k_, o_.device, balanced,
                                                           rule_, &sparse_balanced));
  if (!dense_balanced.balance) fmt::print(stderr, "bench decode: no balanced rows: block tokens below 16\n");
  return dense_balanced.balance ? KernelRows("balanced", "balanced tensor-core kernel", &dense_balanced,
                                             &sparse_balanced, want, t_copy, ref, t_graph, stream, rows)
                                : Status::Ok();
}

Status Point::PresetRows(kernels::QuestScorePreset preset, const char* name, const std::vector<float>& scores,
                         double t_scores_ref, const StepOutcome& ref, double t_graph, cudaStream_t stream,
                         std::vector<Row>* rows) {
  const kernels::QuestScoreShape shape{.preset = preset};
  const AlgorithmScope scope(*this, kernels::QuestScoreAlgorithm::kPipelined);  // the rules' kernel
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
  const StepCheck check = CheckStep(step, ref, name);
  const bool selection_match = check.selection_matches;
  const Agreement agree = check.attention;
  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
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

Status Point::AlgorithmRows(kernels::QuestScoreAlgorithm alg, const char* name, const std::vector<float>& alg_scores,
                            double t_alg, const std::vector<float>& scores, double t_scores, const StepOutcome& ref,
                            double t_graph, cudaStream_t stream, std::vector<Row>* rows) {
  const AlgorithmScope scope(*this, alg);
  kernels::QuestScorePlan plan;
  KVT_CUDA_OR_RETURN(kernels::PlanQuestScores(SelectArgs(0), &plan));
  KVT_ASSIGN_OR_RETURN(const StepOutcome step,
                       GraphStepWith(kernels::QuestScoreShape{}, sparse_plan_, sparse_ws_.p, stream));
  double peak = 0, diff = 0;
  for (size_t i = 0; i < alg_scores.size(); ++i) {
    peak = std::max(peak, std::fabs(double(scores[i])));
    diff = std::max(diff, std::fabs(double(alg_scores[i]) - scores[i]));
  }
  const double rel = peak > 0 ? diff / peak : diff;
  if (!(rel <= 1e-4)) fmt::print(stderr, "bench decode: MISMATCH: {} scores differ from the default's by {}\n", name, rel);
  const bool selection_match = step.selected == ref.selected;
  const Agreement agree = CompareAttention(step.out, ref.out);
  if (selection_match && !agree.matches) {
    fmt::print(stderr, "bench decode: MISMATCH: sparse_graph_{} attention differs on the same selection\n", name);
  }
  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
  const nlohmann::json grid{{"score_kernel", name},
                            {"tensor_core", plan.tensor_core},
                            {"score_tiles_per_cta", plan.tiles_per_cta},
                            {"score_ctas_per_row", plan.ctas_per_row},
                            {"score_ctas_per_sm", plan.ctas_per_sm}};
  Row scores_row{fmt::format("scores_{}", name), fmt::format("Quest scores alone, {} kernel", name), t_alg,
                 meta / (t_alg * 1e3), meta, grid};
  scores_row.extra["vs_scores"] = t_scores / t_alg;
  scores_row.extra["max_diff_over_peak"] = rel;
  rows->push_back(std::move(scores_row));
  Row graph_row{fmt::format("sparse_graph_{}", name), fmt::format("sparse_graph, {} score kernel", name), step.us,
                (meta + sparse_kv) / (step.us * 1e3), meta + sparse_kv, grid};
  graph_row.extra.update({{"speedup", t_dense_ / step.us}, {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                          {"selected_blocks", k_}, {"vs_sparse_graph", t_graph / step.us},
                          {"same_selection", selection_match}});
  if (selection_match) {
    graph_row.extra["max_abs_diff"] = agree.max_abs_diff;
    graph_row.extra["matches_sparse_graph"] = agree.matches;
  }
  rows->push_back(std::move(graph_row));
  return Status::Ok();
}

Status Point::Run(const cudaDeviceProp& prop, cudaStream_t stream, std::vector<Row>* rows) {
  KVT_RETURN_IF_ERROR(Setup(prop));
  sm_count_ = static_cast<uint32_t>(std::max(prop.multiProcessorCount, 1));
  l2_bytes_ = static_cast<uint64_t>(std::max(prop.l2CacheSize, 0));
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
  // The default score kernel, then (where it is another) the pipelined one: the fp32
  // contract the ring shares.
  KVT_ASSIGN_OR_RETURN(const double t_scores, timed(loop(&Point::ScoresStep)));
  std::vector<float> scores_default(slices_);
  KVT_CUDA_OR_RETURN(cudaMemcpy(scores_default.data(), scores_.p, slices_ * sizeof(float), cudaMemcpyDeviceToHost));
  double t_scores_pipelined = t_scores;
  scores_pipelined = scores_default;
  if (score_algorithm_ != kernels::QuestScoreAlgorithm::kPipelined) {
    const AlgorithmScope fp32(*this, kernels::QuestScoreAlgorithm::kPipelined);
    KVT_ASSIGN_OR_RETURN(t_scores_pipelined, TimedScores(score_shape_, stream));
    KVT_CUDA_OR_RETURN(
        cudaMemcpy(scores_pipelined.data(), scores_.p, slices_ * sizeof(float), cudaMemcpyDeviceToHost));
  }
  // The loops end on the same layer (iters steps from layer 0): the same scores, bit for bit.
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

  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
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
                    {"kernel", PlanKernelName(dense_plan_)},
                    {"rule", o_.overrides.attention_rule}}});
  KVT_RETURN_IF_ERROR(DenseRuleRow(dense_out_, t_copy, t_dense, stream, rows));
  kernels::QuestScorePlan score_plan;
  KVT_CUDA_OR_RETURN(kernels::PlanQuestScores(SelectArgs(0), &score_plan));
  {
    const char* kernel = score_plan.tensor_core ? "tensor-core" : score_plan.pipelined ? "pipelined" : "register ring";
    Row row{"scores", fmt::format("Quest scores alone (int8 metadata, {})", kernel), t_scores,
            meta / (t_scores * 1e3), meta,
            {{"tiles_per_cta", score_plan.tiles_per_cta}, {"ctas_per_row", score_plan.ctas_per_row},
             {"stages", score_plan.stages}, {"tile_slices", score_plan.tile_slices},
             {"ctas_per_sm", score_plan.ctas_per_sm}, {"score_kernel", kernel}}};
    if (!score_plan.tensor_core) {  // the rules are the pipelined kernel's
      row.extra["score_preset"] = ScoreShapeName(score_shape_);
      row.extra["score_rule_applied"] =
          !kernels::HasExplicitFields(score_shape_) && score_plan.preset == score_shape_.preset;
    }
    rows->push_back(std::move(row));
  }
  rows->push_back({"scores_r4", "Quest scores alone (round-4 register ring)", t_scores_ring,
                   meta / (t_scores_ring * 1e3), meta, {{"matches_pipelined", scores_match}}});
  rows->push_back(
      {"topk", "Quest top-k alone (default: digits up to 8192 blocks per row, else radix)", t_topk, 0, 0, {}});
  rows->push_back({"topk_bisect", "Quest top-k alone (round-5 bisection)", t_topk_bisection, 0, 0,
                   {{"matches_digits", bisection_matches}}});
  rows->push_back({"select", "Quest scores + top-k, two launches (top-k PDL)", t_select, meta / (t_select * 1e3),
                   meta, {{"vs_dense_over_block_tokens", t_select / (t_dense / o_.block_tokens)}}});
  if (batch_ == 1) {  // the runtime's device selection before the head pitch: a launch pair per KV head
    KVT_ASSIGN_OR_RETURN(const double t_per_head, timed(loop(&Point::SelectPerHeadStep)));
    std::vector<uint32_t> sel_per_head(sel_unfused.size());
    KVT_CUDA_OR_RETURN(
        cudaMemcpy(sel_per_head.data(), selected_.p, sel_per_head.size() * 4, cudaMemcpyDeviceToHost));
    const bool per_head_matches = sel_per_head == sel_unfused;
    if (!per_head_matches) fmt::print(stderr, "bench decode: MISMATCH: per-head select differs from one launch\n");
    rows->push_back({"select_per_head", "Quest select as one launch pair per KV head (the runtime before)",
                     t_per_head, meta / (t_per_head * 1e3), meta,
                     {{"vs_select", t_per_head / t_select}, {"matches_select", per_head_matches}}});
    // The attention rows below read the selection: the per-head one is the same (checked).
  }
  rows->push_back({"select_fused", "Quest scores + top-k fused (one launch)", t_select_fused,
                   meta / (t_select_fused * 1e3), meta,
                   {{"vs_dense_over_block_tokens", t_select_fused / (t_dense / o_.block_tokens)},
                    {"matches_2launch", fused_matches}}});
  rows->push_back({"attention", fmt::format("sparse attention alone ({})", PlanKernelName(sparse_plan_)),
                   t_attention, sparse_kv / (t_attention * 1e3), sparse_kv,
                   {{"chunk_pages", sparse_plan_.chunk_pages}, {"splits", sparse_plan_.max_splits},
                    {"kernel", PlanKernelName(sparse_plan_)},
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
    KVT_RETURN_IF_ERROR(PresetRows(kernels::QuestScorePreset::kRound8, "r8", scores_pipelined, t_scores_pipelined,
                                   graph_ref, t_graph, stream, &preset_rows));
    if (score_algorithm_ != kernels::QuestScoreAlgorithm::kPipelined) {  // the default until round 13
      KVT_RETURN_IF_ERROR(AlgorithmRows(kernels::QuestScoreAlgorithm::kPipelined, "fp32", scores_pipelined,
                                        t_scores_pipelined, scores_default, t_scores, graph_ref, t_graph, stream,
                                        &preset_rows));
    }
    // Each preset row is moved out once (a second pass over moved-from rows once added an
    // empty-named copy of scores_r8 after sparse_graph).
    std::vector<Row> score_rows, step_rows;
    for (Row& r : preset_rows) (r.method.starts_with("scores_") ? score_rows : step_rows).push_back(std::move(r));
    auto insert_after = [&](const char* anchor, std::vector<Row>& kind) {
      auto at = std::find_if(rows->begin(), rows->end(), [&](const Row& x) { return x.method == anchor; });
      rows->insert(at == rows->end() ? at : at + 1, std::make_move_iterator(kind.begin()),
                   std::make_move_iterator(kind.end()));
    };
    insert_after("scores_r4", score_rows);
    insert_after("sparse_graph", step_rows);
    KVT_RETURN_IF_ERROR(VariantRows(dense_out_, t_copy, graph_ref, t_graph, stream, rows));
    KVT_RETURN_IF_ERROR(SplitRows(graph_ref, t_graph, stream, rows));
    KVT_RETURN_IF_ERROR(BisectionRows(graph_ref, t_graph, stream, rows));
    KVT_RETURN_IF_ERROR(StepVariantRow("late", "sparse_graph, every launch reads everything after its wait",
                                       &Point::SparsePdlLateStep, graph_ref, t_graph, stream, rows));
    KVT_RETURN_IF_ERROR(GraphBaselineRows(t_graph, stream, rows));
    KVT_RETURN_IF_ERROR(BoundRows(graph_ref, t_copy, t_dense, t_graph, stream, rows));
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
