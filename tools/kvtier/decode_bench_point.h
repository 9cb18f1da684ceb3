// Internal to `kvtier bench decode` on CUDA builds: one (context, batch) point of the
// benchmark — its device buffers, the steps it times, and the round-9 launch-shape sweep.
// decode_bench_gpu.cc: set-up, the steps and the standard rows; decode_sweep_gpu.cc: the sweep
// (`--sweep`). Not thread-safe: one point runs at a time on one stream.
#pragma once

#include <cuda_runtime.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "decode_bench.h"
#include "gpu_bench_support.h"
#include "kvtier/status.h"
#include "quest_select.cuh"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

// One output row: a method, what it is, µs per step, the rate it is judged by and extra
// JSON fields (ratios, the plan, checks).
struct Row {
  std::string method, what;
  double us = 0, gbps = 0, bytes = 0;
  nlohmann::json extra = nlohmann::json::object();
};

class Point {
 public:
  Point(const DecodeBenchOptions& o, uint32_t context, uint32_t batch) : o_(o), context_(context), batch_(batch) {}
  Point(const Point&) = delete;
  Point& operator=(const Point&) = delete;
  ~Point();

  Status Run(const cudaDeviceProp& prop, cudaStream_t stream, std::vector<Row>* rows);

 private:
  using Step = Status (Point::*)(uint32_t layer, cudaStream_t stream);

  Status Setup(const cudaDeviceProp& prop);
  Status DenseStep(uint32_t layer, cudaStream_t stream);
  Status ScoresRingStep(uint32_t layer, cudaStream_t stream);
  kernels::QuestSelectDeviceArgs SelectArgs(uint32_t layer) const;
  kernels::SparseAttentionDeviceArgs AttentionArgs(uint32_t layer) const;
  Status SelectStep(uint32_t layer, cudaStream_t stream);
  Status SelectFusedStep(uint32_t layer, cudaStream_t stream);
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
  // Enqueues `iterations` steps of `step`, cycling through the layers from layer 0.
  std::function<Status()> Loop(Step step, cudaStream_t stream);
  // `iterations` steps of `step` captured as one CUDA graph, timed like Timed.
  Result<double> TimedGraph(Step step, cudaStream_t stream);

  // decode_sweep_gpu.cc: the score launch and the attention launch on a grid of launch shapes
  // (each checked against the default's output), then the sparse step as a graph with the
  // fastest matching pair (`sparse_graph_tuned`). Needs Run's rows done (t_dense_, the
  // selection in selected_slots_).
  Status Sweep(cudaStream_t stream, std::vector<Row>* rows);
  Status SweepScores(cudaStream_t stream, std::vector<Row>* rows, kernels::QuestScoreShape* best);
  Status SweepAttention(cudaStream_t stream, std::vector<Row>* rows, kernels::SparseAttentionPlan* best);
  // The scores of one launch on layer 0 with `shape` (output poisoned first).
  Result<std::vector<float>> ScoresOnce(const kernels::QuestScoreShape& shape, cudaStream_t stream);
  // The attention output (bf16 bits) of one launch on layer 0 with `plan` and `workspace`.
  Result<std::vector<uint16_t>> AttentionOnce(const kernels::SparseAttentionPlan& plan, void* workspace,
                                              cudaStream_t stream);

  const DecodeBenchOptions& o_;
  uint32_t context_, batch_;
  uint32_t blocks_ = 0, slices_ = 0, layers_ = 0, k_ = 0;
  size_t kv_bytes_ = 0;
  double t_dense_ = 0;  // µs, set by Run
  cudaEvent_t e0_ = nullptr, e1_ = nullptr;
  kernels::SparseAttentionShape shape_;
  // sparse_plan_: the plan of the `attention` row and of the sparse steps — the device's
  // choice (the staged kernel where it fits), or the streamed plan with the attention
  // overrides applied (options.overrides); streamed_plan_: the streamed kernel's plan (round 6),
  // for the comparison rows. score_shape_: the score launch shape of the `scores`, `select` and
  // sparse rows (options.overrides; default = round 8's).
  kernels::SparseAttentionPlan dense_plan_, sparse_plan_, streamed_plan_;
  kernels::QuestScoreShape score_shape_;
  kernels::QuestSelectParams params_;
  DeviceMem arena_, copy_dst_, queries_, bounds_, scales_, block_slots_, dense_offsets_, last_, scores_,
      block_offsets_, sel_offsets_, selected_, selected_slots_, out_, dense_ws_, sparse_ws_,
      streamed_ws_, row_counters_;
};

}  // namespace kvtier::cli::decode_internal
