// `kvtier bench decode` on CUDA builds: how a point times its steps (a loop of `iterations`
// steps, the median of `repeats`; the same captured as one CUDA graph) and the single checked
// launches the rows compare (one dense launch, one sparse step).
#include <cuda_runtime.h>

#include <algorithm>
#include <functional>
#include <vector>

#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "quest_select.cuh"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

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

Result<std::vector<uint16_t>> Point::OutputOnce(kernels::SparseAttentionDeviceArgs a,
                                                const kernels::SparseAttentionPlan& plan, void* ws,
                                                cudaStream_t stream) {
  a.workspace = ws;
  std::vector<uint16_t> h(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(out_.p, 0xff, h.size() * 2, stream));  // NaN
  KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(a, plan, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  KVT_CUDA_OR_RETURN(cudaMemcpy(h.data(), out_.p, h.size() * 2, cudaMemcpyDeviceToHost));
  return h;
}

Result<std::vector<uint16_t>> Point::DenseOnce(const kernels::SparseAttentionPlan& plan, void* ws,
                                               cudaStream_t stream) {
  return OutputOnce(DenseArgs(0), plan, ws, stream);
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

Result<StepOutcome> Point::OneStep(cudaStream_t stream) { return OneStepOf(&Point::SparsePdlStep, stream); }

Result<StepOutcome> Point::OneStepOf(Step step, cudaStream_t stream) {
  StepOutcome o;
  o.selected.resize(size_t{batch_} * o_.kv_heads * k_);
  o.out.resize(size_t{batch_} * o_.q_heads * o_.head_dim);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(selected_.p, 0xff, o.selected.size() * 4, stream));
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(out_.p, 0xff, o.out.size() * 2, stream));  // NaN
  KVT_RETURN_IF_ERROR((this->*step)(0, stream));
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

}  // namespace kvtier::cli::decode_internal
