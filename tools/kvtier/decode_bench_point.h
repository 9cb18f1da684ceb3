// Internal to `kvtier bench decode` on CUDA builds: one (context, batch) point of the
// benchmark — its device buffers, the steps it times, and the round-9 launch-shape sweep.
// decode_point_gpu.cc: set-up, launch arguments and the steps; decode_timing_gpu.cc: timing
// (loops, graphs, one checked step); decode_rows_gpu.cc: the standard rows (Run);
// decode_sweep_gpu.cc: the sweep (`--sweep`); decode_bench_gpu.cc: the option checks and the
// output (RunDecodeBench). Not thread-safe: one point runs at a time on one stream.
#pragma once

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "decode_bench.h"
#include "decode_table.h"
#include "gpu_bench_support.h"
#include "kvtier/status.h"
#include "quest_select.cuh"
#include "read_bound.cuh"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

using Row = DecodeRow;  // decode_table.h

// "r9w", "r8", "r9" (DecodeBenchOverrides::score_preset) ↔ kernels::QuestScorePreset.
bool ParseScorePreset(const std::string& name, kernels::QuestScorePreset* preset);
// "default", "r9d" (DecodeBenchOverrides::attention_rule) ↔ kernels::SparseAttentionRule.
bool ParseAttentionRule(const std::string& name, kernels::SparseAttentionRule* rule);
const char* ScorePresetName(kernels::QuestScorePreset preset);
// What sets a shape's launch: its rule's name, or "explicit" (fields set).
const char* ScoreShapeName(const kernels::QuestScoreShape& shape);

// Two bf16 outputs of correct fp32 computations cut differently: the GPU test's tolerance
// against the reference (2e-3·|x| + 2e-4, plus half a bf16 ulp) for each, so twice it, plus
// one bf16 ulp (2^-7·|x|) for rounding on different sides. Non-finite never matches.
bool AttentionClose(float got, float want);
struct Agreement {
  bool matches = true;
  double max_abs_diff = 0;
};
// Every element of `got` AttentionClose to `want`'s (bf16 bits), and the largest difference.
Agreement CompareAttention(const std::vector<uint16_t>& got, const std::vector<uint16_t>& want);
// Which kernel a plan runs: "staged", "tensor-core", "bulk", "streamed" or "streamed, deep".
const char* PlanKernelName(const kernels::SparseAttentionPlan& p);

// What one sparse step leaves: the selection (block indices, every row) and the attention
// output (bf16 bits); with the graph time of the configuration that produced it.
struct StepOutcome {
  double us = 0;
  std::vector<uint32_t> selected;
  std::vector<uint16_t> out;
};

// Sweep candidates for the graph stage (decode_sweep_gpu.cc): a label, the setting, its
// single-launch µs.
struct ScoreCandidate {
  std::string label;
  kernels::QuestScoreShape shape;
  kernels::QuestScorePlan plan;
  double us = 0;
  // The kernel: the sweep's shapes are the pipelined kernel's; the graph pairs start with the
  // library's default kernel (tensor core since round 13).
  kernels::QuestScoreAlgorithm algorithm = kernels::QuestScoreAlgorithm::kPipelined;
};
struct AttentionCandidate {
  std::string label;
  kernels::SparseAttentionPlan plan;
  double us = 0;
};

class Point {
 public:
  Point(const DecodeBenchOptions& o, uint32_t context, uint32_t batch) : o_(o), context_(context), batch_(batch) {}
  Point(const Point&) = delete;
  Point& operator=(const Point&) = delete;
  ~Point();

  Status Run(const cudaDeviceProp& prop, cudaStream_t stream, std::vector<Row>* rows);

 private:
  // Bytes a sparse step reads: the int8 metadata (bounds and scale of every slice) and the
  // selected slices' K/V.
  double MetaBytes() const { return double(slices_) * (2.0 * o_.head_dim + 4); }
  double SparseKvBytes() const { return double(batch_) * o_.kv_heads * k_ * double(shape_.slice_bytes()); }
  // Whether `step` agrees with `ref` (sparse_graph's): the same selection and attention
  // within AttentionClose; says so on stderr (MISMATCH, naming sparse_graph_<name>) when not.
  struct StepCheck {
    bool selection_matches = false;
    Agreement attention;
    bool matches() const { return selection_matches && attention.matches; }
  };
  static StepCheck CheckStep(const StepOutcome& step, const StepOutcome& ref, const char* name);
  using Step = Status (Point::*)(uint32_t layer, cudaStream_t stream);

  Status Setup(const cudaDeviceProp& prop);
  Status DenseStep(uint32_t layer, cudaStream_t stream);
  // The dense launch's arguments on `layer` (every block listed; workspace dense_ws_).
  kernels::SparseAttentionDeviceArgs DenseArgs(uint32_t layer) const;
  // µs per step of dense attention with `plan` on workspace `ws` (counters zeroed here):
  // `iters` steps cycling through the layers, median of `reps` (Timed).
  Result<double> TimedDense(const kernels::SparseAttentionPlan& plan, void* ws, uint32_t iters, uint32_t reps,
                            cudaStream_t stream);
  // The output (bf16 bits) of one attention launch of `a` with `plan` on workspace `ws`
  // (output poisoned first, synchronised).
  Result<std::vector<uint16_t>> OutputOnce(kernels::SparseAttentionDeviceArgs a, const kernels::SparseAttentionPlan& plan,
                                           void* ws, cudaStream_t stream);
  // The dense output of one launch on layer 0 with `plan`.
  Result<std::vector<uint16_t>> DenseOnce(const kernels::SparseAttentionPlan& plan, void* ws, cudaStream_t stream);
  // The `dense_r9d` row: dense attention planned with kernels::SparseAttentionRule::kRound9Dense,
  // its output checked against `dense`'s (`want`, one launch on layer 0).
  Status DenseRuleRow(const std::vector<uint16_t>& want, double t_copy, double t_dense, cudaStream_t stream,
                      std::vector<Row>* rows);
  // The other streamed-grid kernels next to the defaults (the tensor-core kernel, or the
  // staged one for short lists at small batch): `dense_streamed` / `sparse_graph_streamed`
  // (the round-6 register kernel on its own plans, SparseAttentionKernels::kStreamed: the
  // default before round 10c) and `dense_bulk` / `sparse_graph_bulk` (the bulk kernel,
  // kernels::SparseAttentionPlan::bulk, on those cuts), then `dense_balanced` /
  // `sparse_graph_balanced` (the tensor-core plans with balanced rows,
  // SparseAttentionKernels::kMmaBalanced; the sparse one at batch 1 too, where the default is
  // staged). Each dense row's output is checked against `want` (dense's), each step against
  // `ref` (sparse_graph's step; t_graph its µs). A row only where the kernel takes the plan.
  Status VariantRows(const std::vector<uint16_t>& want, double t_copy, const StepOutcome& ref, double t_graph,
                     cudaStream_t stream, std::vector<Row>* rows);
  // The rows `dense_<name>` (with `dense`, when not null) and `sparse_graph_<name>` (with
  // `sparse`) of VariantRows.
  Status KernelRows(const char* name, const char* what, const kernels::SparseAttentionPlan* dense,
                    const kernels::SparseAttentionPlan* sparse, const std::vector<uint16_t>& want, double t_copy,
                    const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows);
  Status ScoresRingStep(uint32_t layer, cudaStream_t stream);
  kernels::QuestSelectDeviceArgs SelectArgs(uint32_t layer) const;
  kernels::SparseAttentionDeviceArgs AttentionArgs(uint32_t layer) const;
  Status SelectStep(uint32_t layer, cudaStream_t stream);
  Status SelectFusedStep(uint32_t layer, cudaStream_t stream);
  Status SelectPerHeadStep(uint32_t layer, cudaStream_t stream);
  Status ScoresStep(uint32_t layer, cudaStream_t stream);
  Status TopKStep(uint32_t layer, cudaStream_t stream);
  Status TopKBisectionStep(uint32_t layer, cudaStream_t stream);
  Status AttentionStep(uint32_t layer, cudaStream_t stream);
  Status AttentionStreamedStep(uint32_t layer, cudaStream_t stream);
  Status SparseStep(uint32_t layer, cudaStream_t stream);
  Status SparsePdlStep(uint32_t layer, cudaStream_t stream);
  Status SparsePdlRound6Step(uint32_t layer, cudaStream_t stream);
  Status CheckFinite(const DeviceMem& out, const char* what);

  // µs per step of `enqueue` (which enqueues `iterations` steps): the median of `repeats`
  // timed repetitions after one warm-up.
  Result<double> Timed(const std::function<Status()>& enqueue, cudaStream_t stream);
  // The same with `iters` steps per repetition (what `enqueue` enqueues) and `reps` repetitions.
  Result<double> Timed(const std::function<Status()>& enqueue, cudaStream_t stream, uint32_t iters, uint32_t reps);
  // Enqueues `iterations` steps of `step`, cycling through the layers from layer 0.
  std::function<Status()> Loop(Step step, cudaStream_t stream);
  // `iterations` steps of `step` captured as one CUDA graph, timed like Timed.
  Result<double> TimedGraph(Step step, cudaStream_t stream);
  // One SparsePdlStep on layer 0 as configured now; its selection and output (us = 0).
  Result<StepOutcome> OneStep(cudaStream_t stream);
  // The sparse_graph step (SparsePdlStep: PDL, `iterations` steps as one graph, TimedGraph)
  // with score shape `shape` and attention plan `plan` on workspace `ws` (counters zeroed
  // here; enough bytes for `plan`), then OneStep; the members are restored afterwards.
  Result<StepOutcome> GraphStepWith(const kernels::QuestScoreShape& shape, const kernels::SparseAttentionPlan& plan,
                                    void* ws, cudaStream_t stream);
  // One step of `step` on layer 0 as configured now; its selection and output (us = 0).
  Result<StepOutcome> OneStepOf(Step step, cudaStream_t stream);
  // decode_split_gpu.cc: the sparse step with the batch in request groups, each group's select
  // and attention on its own stream (forked from and joined back to the step's stream), each
  // group with its own plan (the device's, for its requests) and workspace.
  struct Split {
    std::vector<uint32_t> first;  // group g: requests [first[g], first[g + 1])
    std::vector<cudaStream_t> side;
    std::vector<cudaEvent_t> join;
    cudaEvent_t fork = nullptr;
    std::vector<kernels::SparseAttentionPlan> plans;
    std::unique_ptr<DeviceMem[]> ws;  // one per group
    ~Split();
  };
  Status SetUpSplit(uint32_t groups);
  Status SparseSplitStep(uint32_t layer, cudaStream_t stream);
  // `sparse_graph_split2` (batch ≥ 2), checked against `ref` (sparse_graph's step: the same
  // selection, attention within AttentionClose).
  Status SplitRows(const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows);
  // decode_rows_gpu.cc: `sparse_graph_bisect`, the sparse_graph step with the round-5
  // bisection top-k — kAuto's choice above 2048 blocks per row until the eighth session — where
  // the default takes the digits (rows ≤ 8192 blocks).
  Status BisectionRows(const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows);
  // `sparse_graph_<name>`: the step with another step function `variant`, as a graph, one step
  // checked against `ref` (same selection, attention within AttentionClose).
  Status StepVariantRow(const char* name, const char* what, Step variant, const StepOutcome& ref, double t_graph,
                        cudaStream_t stream, std::vector<Row>* rows);
  Status SparsePdlLateStep(uint32_t layer, cudaStream_t stream);
  // early: the scores with early_metadata and the attention with early_inputs (SparsePdlStep),
  // or neither (SparsePdlLateStep).
  Status SparsePdlStepWith(uint32_t layer, bool early, cudaStream_t stream);
  // The select's L2 prefetch of the selected slices for the attention on `plan` (round 15).
  kernels::QuestSelectDeviceArgs::SlicePrefetch PrefetchFor(const kernels::SparseAttentionPlan& plan) const;
  Status SparsePdlBisectionStep(uint32_t layer, cudaStream_t stream);
  // decode_rows_gpu.cc: the baselines as the sparse step is timed (eighth session): `copy_graph`
  // (the copy row's copies as one CUDA graph) and `dense_graph` (dense with PDL, as one graph;
  // its output checked bit for bit against dense's; vs_copy against the faster of the two
  // copies), and sparse_graph's speedup against it.
  Status GraphBaselineRows(double t_graph, cudaStream_t stream, std::vector<Row>* rows);
  Status DensePdlStep(uint32_t layer, cudaStream_t stream);
  // decode_bound_gpu.cc: the read bounds (`dense_bound`, `dense_merge_bound`,
  // `dense_cluster*_bound`, `step_bound`, `step_bytes_bound` and their `_merge` forms;
  // kernels/read_bound.cuh) next to `copy` (t_copy), `dense` (t_dense) and `sparse_graph`
  // (t_graph; `ref` its selection, which the step bounds read through every layer's slots).
  Status BoundRows(const StepOutcome& ref, double t_copy, double t_dense, double t_graph, cudaStream_t stream,
                   std::vector<Row>* rows);
  // The step bound's launch on `layer`: the layer's metadata, the barrier where `barrier`, the
  // layer's selected slices (row by row, then the split-K merge, where `merge`); PDL.
  kernels::ReadBoundArgs StepBoundArgs(uint32_t layer, bool barrier, bool merge = false) const;
  // The dense bound's launch on `layer`: every slice of the layer through its slots.
  kernels::ReadBoundArgs DenseBoundArgs(uint32_t layer) const;
  // The split-K merge's fields (rows = KV heads of the batch, partials, counters) set on `a`.
  void WithMerge(kernels::ReadBoundArgs& a) const;
  // A merge partial the size of the attention's: per query head of the group, d fp32 sums,
  // the max and the weight sum, padded to 16 bytes.
  uint32_t BoundPartialBytes() const;
  Status DenseBoundStep(uint32_t layer, cudaStream_t stream);
  Status DenseMergeBoundStep(uint32_t layer, cudaStream_t stream);
  Status StepBoundStep(uint32_t layer, cudaStream_t stream);
  Status StepBytesBoundStep(uint32_t layer, cudaStream_t stream);
  Status StepMergeBoundStep(uint32_t layer, cudaStream_t stream);
  Status StepBytesMergeBoundStep(uint32_t layer, cudaStream_t stream);
  // One step_bound launch on `layer` (with the merge where `merge`): its checksum equals the
  // host's over the same bytes.
  Result<bool> StepBoundChecksumMatches(uint32_t layer, bool merge, cudaStream_t stream);
  Status CopyStep(uint32_t layer, cudaStream_t stream);
  // µs per launch of the score launch alone with `shape` (the `scores` row's loop).
  Result<double> TimedScores(const kernels::QuestScoreShape& shape, cudaStream_t stream);
  // The standard rows' comparison rule (`scores_r8`, `sparse_graph_r8`: round 8's default):
  // the pipelined score launch and the sparse_graph step with score_shape_ = {.preset =
  // preset}, checked against `scores` (the pipelined kernel's output on the default rule, bit
  // for bit; t_scores its µs) and `ref` (sparse_graph's step: same selection, attention within
  // AttentionClose; t_graph its µs).
  Status PresetRows(kernels::QuestScorePreset preset, const char* name, const std::vector<float>& scores,
                    double t_scores, const StepOutcome& ref, double t_graph, cudaStream_t stream,
                    std::vector<Row>* rows);
  // Round 13: the rows of the score kernel `alg` (`scores_fp32`, `sparse_graph_fp32`:
  // kPipelined, the default until round 13; the score shape the default rule): its score
  // launch, already timed by Run (`alg_scores` its output, t_alg its µs), next to `scores` (the
  // default kernel's output from the same layers; t_scores its µs), and its sparse_graph step
  // next to `ref` (sparse_graph's step; t_graph its µs). Kernels of the two contracts (fp32,
  // fixed point) differ within their tolerance, so the rows report the largest score
  // difference over the largest |score| (a MISMATCH above 1e-4) and whether the selection is
  // the same; the attention is compared where it is.
  Status AlgorithmRows(kernels::QuestScoreAlgorithm alg, const char* name, const std::vector<float>& alg_scores,
                       double t_alg, const std::vector<float>& scores, double t_scores, const StepOutcome& ref,
                       double t_graph, cudaStream_t stream, std::vector<Row>* rows);

  // decode_sweep_gpu.cc: the score launch and the attention launch on a grid of launch shapes
  // (each checked against the default's output), then the sparse step as a graph for every
  // pair of the fastest few of each (`sweep_graph`), the fastest matching graph kept
  // (`sparse_graph_tuned`). Needs Run's rows done (t_dense_, t_topk_, the selection in
  // selected_slots_).
  Status Sweep(cudaStream_t stream, std::vector<Row>* rows);
  // Appends the matching shapes (default first, then fastest first, distinct grids).
  Status SweepScores(cudaStream_t stream, std::vector<Row>* rows, std::vector<ScoreCandidate>* ranked);
  // Appends the matching plans (the device's default first, then fastest first, distinct).
  Status SweepAttention(cudaStream_t stream, std::vector<Row>* rows, std::vector<AttentionCandidate>* ranked);
  // Dense attention (every block) over a grid of streamed plans (`sweep_dense`): the device's
  // default plan first (the reference of every output and of vs_default), then heads per CTA ×
  // 4/8 loads × pages per CTA; rate = KV bytes / time, vs_copy as the `dense` row's.
  Status SweepDense(cudaStream_t stream, std::vector<Row>* rows);
  // The scores of one launch on layer 0 with `shape` (output poisoned first).
  Result<std::vector<float>> ScoresOnce(const kernels::QuestScoreShape& shape, cudaStream_t stream);
  // The attention output (bf16 bits) of one launch on layer 0 with `plan` and `workspace`.
  Result<std::vector<uint16_t>> AttentionOnce(const kernels::SparseAttentionPlan& plan, void* workspace,
                                              cudaStream_t stream);

  const DecodeBenchOptions& o_;
  uint32_t context_, batch_;
  uint32_t blocks_ = 0, slices_ = 0, layers_ = 0, k_ = 0;
  size_t kv_bytes_ = 0;
  double t_dense_ = 0, t_topk_ = 0, t_copy_ = 0;  // µs, set by Run
  uint32_t sm_count_ = 1;
  uint64_t l2_bytes_ = 0;  // the device's L2
  std::vector<uint16_t> dense_out_;  // the `dense` plan's output on layer 0 (bf16 bits), set by Run
  kernels::SparseAttentionRule rule_ = kernels::SparseAttentionRule::kDefault;  // options.overrides.attention_rule
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
  kernels::SparseAttentionShape shape_;
  // sparse_plan_: the plan of the `attention` row and of the sparse steps — the device's
  // choice (the staged kernel where it fits), or the streamed plan with the attention
  // overrides applied (options.overrides); streamed_plan_: the streamed kernel's plan (round 6),
  // for the comparison rows. score_shape_: the score launch shape of the `scores`, `select` and
  // sparse rows (options.overrides; default: the kRound9Wave rule).
  kernels::SparseAttentionPlan dense_plan_, sparse_plan_, streamed_plan_;
  kernels::QuestScoreShape score_shape_;
  // The score kernel of SelectArgs: the library's default, or kPipelined where a score shape
  // other than the default rule is asked for (its rules and fields are that kernel's: `--score-*`,
  // PresetRows, the sweep) and in AlgorithmRows. AlgorithmScope sets it for a scope.
  kernels::QuestScoreAlgorithm score_algorithm_ = kernels::QuestSelectDeviceArgs{}.score_algorithm;
  class AlgorithmScope {
   public:
    AlgorithmScope(Point& p, kernels::QuestScoreAlgorithm alg) : p_(p), saved_(p.score_algorithm_) {
      p.score_algorithm_ = alg;
    }
    ~AlgorithmScope() { p_.score_algorithm_ = saved_; }
    AlgorithmScope(const AlgorithmScope&) = delete;
    AlgorithmScope& operator=(const AlgorithmScope&) = delete;

   private:
    Point& p_;
    kernels::QuestScoreAlgorithm saved_;
  };
  kernels::QuestSelectParams params_;
  DeviceMem arena_, copy_dst_, queries_, bounds_, scales_, block_slots_, dense_offsets_, last_, scores_,
      block_offsets_, sel_offsets_, selected_, selected_slots_, out_, dense_ws_, sparse_ws_,
      streamed_ws_, row_counters_;
  // BoundRows: the selected slots of every layer ([layer][entry]); the sink (8 bytes) and the
  // barrier's two words; the merge bound's partials and row counters.
  DeviceMem bound_slots_, bound_state_, bound_partials_, bound_counters_;
  // The cluster shape DenseMergeBoundStep launches ({0, 0}: no clusters, the default CTAs per row).
  struct BoundCluster {
    uint32_t cluster = 0, ctas_per_row = 0;
  };
  BoundCluster bound_cluster_;
  std::unique_ptr<Split> split_;  // while SplitRows runs
};

}  // namespace kvtier::cli::decode_internal
