// `kvtier bench decode` on CUDA builds: the read bounds (kernels/read_bound.cuh), how fast the
// card merely reads what a step reads, timed in the same run as the steps — measured floors of
// a plain streaming read, not theorems:
//   dense_bound       every slice of the layer through its slot list (the dense step's bytes),
//                     plain launches like `dense`;
//   step_bound        the layer's Quest metadata, a grid-wide barrier, then the selected
//                     slices (the blocks sparse_graph selected on layer 0, through each layer's
//                     slots), one launch per step with PDL as one CUDA graph like
//                     `sparse_graph`: the floor of a step, fused or not, that reads the metadata
//                     before the K/V it selects; its checksum is checked against the host;
//   step_bytes_bound  the same bytes without the barrier: what the dependency costs;
//   step_merge_bound, step_bytes_merge_bound  the two with the selected K/V read row by row
//                     and the split-K merge of dense_merge_bound at the end;
//   dense_merge_bound  dense_bound with the end of a split-K attention: each KV head's row read
//                     by its own CTAs, each CTA writing a partial the size of the attention's
//                     (BoundPartialBytes) and the row's last CTA reading them back;
//   dense_cluster{C}x{K}_bound  the same with K CTAs per row in clusters of C that merge in
//                     distributed shared memory first (only the clusters' partials go through
//                     memory; none where a row is one cluster): 16×16, 16×48 and 8×48.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstddef>
#include <iterator>
#include <span>
#include <vector>

#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "read_bound.cuh"
#include "reference/read_bound.h"

namespace kvtier::cli::decode_internal {

kernels::ReadBoundArgs Point::StepBoundArgs(uint32_t layer, bool barrier, bool merge) const {
  const size_t bounds = size_t{slices_} * 2 * o_.head_dim, scales = size_t{slices_} * sizeof(float);
  const uint32_t n = batch_ * o_.kv_heads * k_;
  kernels::ReadBoundArgs a{.first = {bounds_.as<int8_t>() + layer * bounds, scales_.as<char>() + layer * scales},
                           .first_bytes = {bounds, scales},
                           .barrier = barrier ? bound_state_.as<uint32_t>() + 2 : nullptr,
                           .arena = arena_.p,
                           .slots = bound_slots_.as<uint32_t>() + size_t{layer} * n,
                           .count = n,
                           .slot_bytes = static_cast<uint32_t>(shape_.slot_bytes),
                           .sink = bound_state_.as<unsigned long long>(),
                           .programmatic_dependent_launch = true};
  if (merge) WithMerge(a);  // the selection is k_ entries per row, row after row
  return a;
}

uint32_t Point::BoundPartialBytes() const { return o_.q_heads / o_.kv_heads * (o_.head_dim * 4 + 16); }

void Point::WithMerge(kernels::ReadBoundArgs& a) const {
  a.rows = batch_ * o_.kv_heads;
  a.partial_bytes = BoundPartialBytes();
  a.partials = bound_partials_.p;
  a.row_counters = bound_counters_.as<uint32_t>();
}

kernels::ReadBoundArgs Point::DenseBoundArgs(uint32_t layer) const {
  return {.arena = arena_.p,
          .slots = block_slots_.as<uint32_t>() + size_t{layer} * slices_,
          .count = slices_,
          .slot_bytes = static_cast<uint32_t>(shape_.slot_bytes),
          .sink = bound_state_.as<unsigned long long>()};
}

Status Point::DenseBoundStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(DenseBoundArgs(layer), stream));
  return Status::Ok();
}

Status Point::DenseMergeBoundStep(uint32_t layer, cudaStream_t stream) {
  kernels::ReadBoundArgs a = DenseBoundArgs(layer);
  WithMerge(a);
  a.ctas_per_row = bound_cluster_.ctas_per_row;
  a.cluster = bound_cluster_.cluster;
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(a, stream));
  return Status::Ok();
}

Status Point::StepBoundStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(StepBoundArgs(layer, true), stream));
  return Status::Ok();
}

Status Point::StepBytesBoundStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(StepBoundArgs(layer, false), stream));
  return Status::Ok();
}

Status Point::StepMergeBoundStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(StepBoundArgs(layer, true, true), stream));
  return Status::Ok();
}

Status Point::StepBytesMergeBoundStep(uint32_t layer, cudaStream_t stream) {
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(StepBoundArgs(layer, false, true), stream));
  return Status::Ok();
}

Result<bool> Point::StepBoundChecksumMatches(uint32_t layer, bool merge, cudaStream_t stream) {
  const kernels::ReadBoundArgs a = StepBoundArgs(layer, true, merge);
  KVT_CUDA_OR_RETURN(cudaMemsetAsync(bound_state_.p, 0, 8, stream));
  KVT_CUDA_OR_RETURN(kernels::LaunchReadBound(a, stream));
  unsigned long long got = 0;
  KVT_CUDA_OR_RETURN(cudaMemcpyAsync(&got, bound_state_.p, 8, cudaMemcpyDeviceToHost, stream));
  KVT_CUDA_OR_RETURN(cudaStreamSynchronize(stream));
  std::vector<std::byte> first[2], slices(size_t{a.count} * a.slot_bytes);
  for (int r = 0; r < 2; ++r) {
    first[r].resize(a.first_bytes[r]);
    KVT_CUDA_OR_RETURN(cudaMemcpy(first[r].data(), a.first[r], a.first_bytes[r], cudaMemcpyDeviceToHost));
  }
  std::vector<uint32_t> slots(a.count), listed(a.count);
  KVT_CUDA_OR_RETURN(cudaMemcpy(slots.data(), a.slots, a.count * 4, cudaMemcpyDeviceToHost));
  for (uint32_t i = 0; i < a.count; ++i) {  // the slices, packed: entry i at i · slot_bytes
    KVT_CUDA_OR_RETURN(cudaMemcpy(slices.data() + size_t{i} * a.slot_bytes,
                                  arena_.as<char>() + size_t{slots[i]} * a.slot_bytes, a.slot_bytes,
                                  cudaMemcpyDeviceToHost));
    listed[i] = i;
  }
  const std::span<const std::byte> ranges[2] = {first[0], first[1]};
  return got == kernels::ReadBoundReference(ranges, slices.data(), listed, a.slot_bytes);
}

Status Point::BoundRows(const StepOutcome& ref, double t_copy, double t_dense, double t_graph, cudaStream_t stream,
                        std::vector<Row>* rows) {
  // sparse_graph's selection (block indices, k_ per row) through every layer's slots.
  const uint32_t n = batch_ * o_.kv_heads * k_;
  if (ref.selected.size() != n) return Status::Internal("bench decode: bound rows: selection of the wrong size");
  std::vector<uint32_t> block_slots(size_t{layers_} * slices_), table(size_t{layers_} * n);
  KVT_CUDA_OR_RETURN(
      cudaMemcpy(block_slots.data(), block_slots_.p, block_slots.size() * 4, cudaMemcpyDeviceToHost));
  for (uint32_t l = 0; l < layers_; ++l) {
    for (uint32_t e = 0; e < n; ++e) {
      const uint32_t row = e / k_, block = ref.selected[e];
      if (block >= blocks_) return Status::Internal(fmt::format("bench decode: bound rows: block {} selected", block));
      table[size_t{l} * n + e] = block_slots[size_t{l} * slices_ + size_t{row} * blocks_ + block];
    }
  }
  KVT_CUDA_OR_RETURN(cudaMalloc(&bound_slots_.p, table.size() * 4));
  KVT_CUDA_OR_RETURN(cudaMemcpy(bound_slots_.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  KVT_CUDA_OR_RETURN(cudaMalloc(&bound_state_.p, 16));  // sink, then the barrier's two words
  KVT_CUDA_OR_RETURN(cudaMemset(bound_state_.p, 0, 16));
  uint32_t ctas = 0;
  KVT_CUDA_OR_RETURN(kernels::ReadBoundCtas(&ctas));
  const uint32_t rows_n = batch_ * o_.kv_heads, partial_bytes = BoundPartialBytes();
  // The merge launches' CTAs per row: ⌊CTAs / rows⌋, at least one (several waves where the rows
  // outnumber the CTAs; the step merge rows wait at the barrier, so they need every row's CTA
  // resident at once: rows ≤ CTAs).
  const uint32_t merge_per_row = std::max(ctas / rows_n, 1u);
  const bool step_merge = rows_n <= ctas;
  const BoundCluster clusters[] = {{16, 16}, {16, 48}, {8, 48}};  // (CTAs per cluster, per row)
  size_t partial_count = size_t{rows_n} * merge_per_row;  // one partial per CTA, or per cluster
  for (const BoundCluster& c : clusters) {
    partial_count = std::max<size_t>(partial_count, size_t{rows_n} * c.ctas_per_row / c.cluster);
  }
  KVT_CUDA_OR_RETURN(cudaMalloc(&bound_partials_.p, partial_count * partial_bytes));
  KVT_CUDA_OR_RETURN(cudaMalloc(&bound_counters_.p, size_t{rows_n} * 4));
  KVT_CUDA_OR_RETURN(cudaMemset(bound_counters_.p, 0, size_t{rows_n} * 4));

  KVT_ASSIGN_OR_RETURN(const double t_dense_bound, Timed(Loop(&Point::DenseBoundStep, stream), stream));
  bound_cluster_ = {};
  KVT_ASSIGN_OR_RETURN(const double t_merge_bound, Timed(Loop(&Point::DenseMergeBoundStep, stream), stream));
  std::vector<double> t_cluster;
  for (const BoundCluster& c : clusters) {
    bound_cluster_ = c;
    Result<double> t = Timed(Loop(&Point::DenseMergeBoundStep, stream), stream);
    if (!t.ok()) {  // a device that cannot run the cluster size: say so, keep the other rows
      (void)cudaGetLastError();
      fmt::print(stderr, "bench decode: dense_cluster{}x{}_bound not run: {}\n", c.cluster, c.ctas_per_row,
                 t.status().ToString());
    }
    t_cluster.push_back(t.ok() ? *t : 0);
  }
  bound_cluster_ = {};
  KVT_ASSIGN_OR_RETURN(const double t_step, TimedGraph(&Point::StepBoundStep, stream));
  KVT_ASSIGN_OR_RETURN(const double t_bytes, TimedGraph(&Point::StepBytesBoundStep, stream));
  double t_step_merge = 0;
  if (step_merge) {
    KVT_ASSIGN_OR_RETURN(t_step_merge, TimedGraph(&Point::StepMergeBoundStep, stream));
  } else {
    fmt::print(stderr, "bench decode: step_merge_bound not run: {} rows, {} resident CTAs\n", rows_n, ctas);
  }
  KVT_ASSIGN_OR_RETURN(const double t_bytes_merge, TimedGraph(&Point::StepBytesMergeBoundStep, stream));
  // The checksum against the host's over the same bytes: layer 0, and the last layer with
  // the merge (where the rows allow the barrier).
  KVT_ASSIGN_OR_RETURN(bool checksum, StepBoundChecksumMatches(0, false, stream));
  if (step_merge) {
    KVT_ASSIGN_OR_RETURN(const bool merged, StepBoundChecksumMatches(layers_ - 1, true, stream));
    checksum = checksum && merged;
  }
  if (!checksum) fmt::print(stderr, "bench decode: MISMATCH: step_bound's checksum differs from the host's\n");

  const double copy_rw_gbps = 2.0 * kv_bytes_ / (t_copy * 1e3), dense_gbps = kv_bytes_ / (t_dense_bound * 1e3);
  rows->push_back({"dense_bound", "read bound: the dense step's bytes, read and nothing else", t_dense_bound,
                   dense_gbps, double(kv_bytes_),
                   {{"vs_copy", dense_gbps / copy_rw_gbps}, {"vs_dense", t_dense / t_dense_bound},
                    {"ctas", ctas}}});
  const double merge_gbps = kv_bytes_ / (t_merge_bound * 1e3);
  rows->push_back({"dense_merge_bound", "read bound + split-K merge: each row's CTAs write partials, the last merges",
                   t_merge_bound, merge_gbps, double(kv_bytes_),
                   {{"vs_copy", merge_gbps / copy_rw_gbps}, {"vs_dense", t_dense / t_merge_bound},
                    {"ctas", rows_n * merge_per_row}, {"ctas_per_row", merge_per_row}}});
  for (size_t i = 0; i < std::size(clusters); ++i) {
    if (t_cluster[i] <= 0) continue;
    const double gbps = kv_bytes_ / (t_cluster[i] * 1e3);
    rows->push_back({fmt::format("dense_cluster{}x{}_bound", clusters[i].cluster, clusters[i].ctas_per_row),
                     "read bound + split-K merge in clusters (distributed shared memory), then memory", t_cluster[i],
                     gbps, double(kv_bytes_),
                     {{"vs_copy", gbps / copy_rw_gbps}, {"vs_dense", t_dense / t_cluster[i]},
                      {"ctas", rows_n * clusters[i].ctas_per_row}, {"ctas_per_row", clusters[i].ctas_per_row},
                      {"cluster", clusters[i].cluster}}});
  }
  const double step_bytes = MetaBytes() + SparseKvBytes();
  auto step_row = [&](const char* name, const char* what, double t) -> Row {
    return {name, what, t, step_bytes / (t * 1e3), step_bytes,
            {{"speedup", t_dense / t}, {"vs_sparse_graph", t_graph / t}, {"ctas", ctas},
             {"eight_x_needs_us", t_dense / 8}}};
  };
  rows->push_back(step_row("step_bound", "read bound: metadata, grid barrier, selected K/V; PDL graph", t_step));
  rows->back().extra["matches_host"] = checksum;
  rows->push_back(step_row("step_bytes_bound", "read bound: the same bytes without the barrier; PDL graph", t_bytes));
  if (step_merge) {
    rows->push_back(
        step_row("step_merge_bound", "step_bound, K/V read row by row, then the split-K merge", t_step_merge));
    rows->back().extra["ctas"] = rows_n * merge_per_row;
  }
  rows->push_back(step_row("step_bytes_merge_bound", "step_bytes_bound, K/V read row by row, then the split-K merge",
                           t_bytes_merge));
  rows->back().extra["ctas"] = rows_n * merge_per_row;
  return Status::Ok();
}

}  // namespace kvtier::cli::decode_internal
