// `kvtier bench decode`: the sparse step with the batch split into request groups, each group
// (its select, then its attention) on its own stream inside the step's graph, so one group's
// attention can run beside another group's select instead of every launch of the step waiting
// for the whole batch's previous launch (the `sparse_graph_split2` row).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <memory>
#include <string>
#include <vector>

#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "quest_select.cuh"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

Point::Split::~Split() {
  for (cudaStream_t s : side) {
    if (s != nullptr) cudaStreamDestroy(s);
  }
  for (cudaEvent_t e : join) {
    if (e != nullptr) cudaEventDestroy(e);
  }
  if (fork != nullptr) cudaEventDestroy(fork);
}

Status Point::SetUpSplit(uint32_t groups) {
  split_ = std::make_unique<Split>();
  Split& sp = *split_;
  const uint32_t per = (batch_ + groups - 1) / groups;
  for (uint32_t r0 = 0; r0 < batch_; r0 += per) sp.first.push_back(r0);
  sp.first.push_back(batch_);
  const size_t n = sp.first.size() - 1;
  KVT_CUDA_OR_RETURN(cudaEventCreateWithFlags(&sp.fork, cudaEventDisableTiming));
  sp.side.resize(n - 1, nullptr);
  sp.join.resize(n - 1, nullptr);
  for (size_t g = 0; g + 1 < n; ++g) {
    KVT_CUDA_OR_RETURN(cudaStreamCreateWithFlags(&sp.side[g], cudaStreamNonBlocking));
    KVT_CUDA_OR_RETURN(cudaEventCreateWithFlags(&sp.join[g], cudaEventDisableTiming));
  }
  sp.plans.resize(n);
  sp.ws = std::make_unique<DeviceMem[]>(n);
  for (size_t g = 0; g < n; ++g) {
    kernels::SparseAttentionShape s = shape_;
    s.requests = sp.first[g + 1] - sp.first[g];
    KVT_CUDA_OR_RETURN(
        kernels::PlanSparseAttentionForDevice(s, kernels::HalfType::kBf16, k_, o_.device, &sp.plans[g]));
    KVT_CUDA_OR_RETURN(cudaMalloc(&sp.ws[g].p, kernels::SparseAttentionWorkspaceBytes(s, sp.plans[g])));
    KVT_CUDA_OR_RETURN(kernels::InitSparseAttentionWorkspace(sp.ws[g].p, s, sp.plans[g], nullptr));
  }
  KVT_CUDA_OR_RETURN(cudaDeviceSynchronize());
  return Status::Ok();
}

// Group g: requests [first[g], first[g+1]) — their queries, metadata rows, selection rows,
// page lists and outputs are slices of the whole batch's (every offset array holds absolute
// positions), so the launches read and write exactly what the whole-batch step does.
Status Point::SparseSplitStep(uint32_t layer, cudaStream_t stream) {
  const Split& sp = *split_;
  const size_t n = sp.first.size() - 1;
  KVT_CUDA_OR_RETURN(cudaEventRecord(sp.fork, stream));
  for (cudaStream_t s : sp.side) KVT_CUDA_OR_RETURN(cudaStreamWaitEvent(s, sp.fork, 0));
  for (size_t g = 0; g < n; ++g) {
    cudaStream_t s = g == 0 ? stream : sp.side[g - 1];
    const uint32_t r0 = sp.first[g], requests = sp.first[g + 1] - r0;
    const size_t q0 = size_t{r0} * o_.q_heads * o_.head_dim, rows0 = size_t{r0} * o_.kv_heads;
    kernels::QuestSelectDeviceArgs a = SelectArgs(layer);
    a.requests = requests;
    a.queries = static_cast<const uint16_t*>(a.queries) + q0;
    a.block_offsets += r0;
    a.selected_offsets += rows0;
    KVT_CUDA_OR_RETURN(kernels::LaunchQuestSelect(a, s));
    kernels::SparseAttentionDeviceArgs b = AttentionArgs(layer);
    b.shape.requests = requests;
    b.queries += q0;
    b.page_offsets += rows0;
    b.last_page_tokens += rows0;
    b.out = static_cast<uint16_t*>(b.out) + q0;
    b.workspace = sp.ws[g].p;
    b.programmatic_dependent_launch = true;
    KVT_CUDA_OR_RETURN(kernels::LaunchSparseAttention(b, sp.plans[g], s));
  }
  for (size_t g = 0; g + 1 < n; ++g) {
    KVT_CUDA_OR_RETURN(cudaEventRecord(sp.join[g], sp.side[g]));
    KVT_CUDA_OR_RETURN(cudaStreamWaitEvent(stream, sp.join[g], 0));
  }
  return Status::Ok();
}

Status Point::SplitRows(const StepOutcome& ref, double t_graph, cudaStream_t stream, std::vector<Row>* rows) {
  // Two groups only: 4 and 8 groups (with the device's plans or tensor-core plans) were slower
  // than the whole-batch step on the H100 (docs/sparse.md, round 11).
  constexpr uint32_t kGroups = 2;
  if (batch_ < kGroups) return Status::Ok();
  KVT_RETURN_IF_ERROR(SetUpSplit(kGroups));
  KVT_ASSIGN_OR_RETURN(const double t, TimedGraph(&Point::SparseSplitStep, stream));
  KVT_ASSIGN_OR_RETURN(const StepOutcome step, OneStepOf(&Point::SparseSplitStep, stream));
  const std::string name = fmt::format("split{}", kGroups);
  const StepCheck check = CheckStep(step, ref, name.c_str());
  const double meta = MetaBytes(), sparse_kv = SparseKvBytes();
  std::vector<std::string> kernels_used;
  for (const kernels::SparseAttentionPlan& p : split_->plans) kernels_used.emplace_back(PlanKernelName(p));
  rows->push_back({fmt::format("sparse_graph_{}", name),
                   fmt::format("sparse_graph with the batch in {} request groups on their own streams", kGroups), t,
                   (meta + sparse_kv) / (t * 1e3), meta + sparse_kv,
                   {{"speedup", t_dense_ / t},
                    {"ideal_speedup", double(kv_bytes_) / (sparse_kv + meta)},
                    {"vs_sparse_graph", t_graph / t},
                    {"groups", kGroups},
                    {"attention_kernels", kernels_used},
                    {"selection_matches", check.selection_matches},
                    {"max_abs_diff", check.attention.max_abs_diff},
                    {"matches_sparse_graph", check.matches()}}});
  split_.reset();
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal
