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
//   scores / topk   each launch of select alone (breakdown); scores = the default score
//                   kernel (the tensor-core one since round 13; the pipelined one on the
//                   default rule where `--score-*` asks for a shape);
//   scores_r4       the round-4 register-ring score kernel; its scores must equal the pipelined
//                   kernel's bit for bit (checked, matches_pipelined);
//   scores_fp32 / sparse_graph_fp32  the pipelined kernel (fp32, the default until round 13)
//           alone and as the step: the previous default in the same run; the largest score
//           difference over the peak score (max_diff_over_peak; MISMATCH above 1e-4) and
//           whether the selection is the same (near ties may differ: two contracts);
//   topk_bisect     the round-5 top-k (bisection) alone; its selection must equal topk's;
//   attention       sparse attention alone over a fixed selection (the last select's), on the
//                   device's plan (the staged kernel where it fits: batch 1); its output is
//                   compared with attention_streamed's (max_abs_diff_vs_streamed);
//   attention_streamed  the same on the round-6 streamed plan;
//   sparse  select + attention over the selected slices (page list = the selection written
//           as slots); speedup = dense / sparse (target ≥ 8× at 32K; ideal
//           context / (budget + context / 32), the int8 metadata being 1/32 of the KV);
//   sparse_pdl    the same with programmatic dependent launch on both launches (each kernel
//           triggers at its start; the next one's CTAs wait in cudaGridDependencySynchronize;
//           the scores read their metadata before that wait, early_metadata, and the
//           attention its page offsets and queries, early_inputs; the top-k prefetches
//           selected slices into L2 by QuestSlicePrefetchForPieces);
//           its output must equal sparse's bit for bit (checked);
//   sparse_graph  the sparse_pdl steps captured in one CUDA graph;
//   sparse_graph_late  the same with every launch reading everything after its wait (the
//           step before rounds 13b and 14), checked like the other variants;
//   sparse_graph_r6  the round-6 step (register-ring scores, bisection top-k, register-tile
//           streamed attention) as a graph: the earlier configuration in the same run;
//   scores_r8  the pipelined score launch with round 8's rule (QuestScorePreset kRound8, the
//           default until round 9: 4 buffers); bit-equal to the pipelined kernel's (checked);
//   sparse_graph_r8  the sparse_graph step with it (attention as sparse_graph's): the
//           previous default in the same run; one step's selection must equal sparse_graph's
//           and its output agree within AttentionClose (checked, matches_sparse_graph);
//           vs_sparse_graph = sparse_graph's time / its time.
//   dense_bound / dense_merge_bound / dense_cluster*_bound / step_bound / step_bytes_bound
//           read bounds (decode_bound_gpu.cc, kernels/read_bound.cuh): a kernel that only reads and
//           checksums the bytes of the dense step (vs_copy as dense's; vs_dense = dense / it),
//           the same ending with a split-K attention's merge of per-CTA partials (also in
//           thread-block clusters first: dense_cluster{C}x{K}_bound), the sparse
//           step's bytes in its order (metadata, grid barrier, selected K/V: PDL graph like
//           sparse_graph; speedup = dense / it, the most any step reading those bytes so could
//           reach; checksum on layer 0 checked against the host, matches_host), the same
//           bytes without the barrier, and both with the split-K merge (step_*merge_bound).
// options.overrides (round 9) change the launch shape of the scores (scores, select, sparse
// rows) and the attention plan (attention and sparse rows); `--sweep` adds the rows of
// decode_sweep_gpu.cc (a grid of launch shapes, each checked against the default's output).
// The KV arena holds `layers` copies of the layer's slices at a random slot permutation (pages
// are never contiguous) and steps cycle through them, so a step's bytes are never L2 hits
// (a real decode step reads a different layer each time). K/V values are random finite bf16,
// the metadata random int8 bounds with positive scales: the bench measures cost, not quality.
// Files (decode_bench_point.h: the Point class they share): this one, the option checks, the
// loop over the points and the output; decode_point_gpu.cc: a point's set-up, launch arguments
// and steps; decode_timing_gpu.cc: the timing (loops, CUDA graphs, one checked step);
// decode_rows_gpu.cc: the standard rows (Point::Run); decode_sweep_gpu.cc: `--sweep`;
// decode_bound_gpu.cc: the read bounds.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <string>
#include <utility>
#include <vector>

#include "decode_bench.h"
#include "decode_bench_point.h"
#include "gpu_bench_support.h"
#include "quest_select.cuh"
#include "sparse_attention.cuh"

namespace kvtier::cli::decode_internal {

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
                           {"method", r.method}, {"what", r.what}, {"us", r.us}, {"gbps", r.gbps}, {"budget", o.budget},
                           {"block_tokens", o.block_tokens}};
          j.update(r.extra);
          fmt::print("{}\n", j.dump());
        }
        continue;
      }
      fmt::print("{}: context {} x batch {} (one layer: {} q / {} KV heads, d={}, bf16, {}-token blocks; budget {} "
                 "tokens; {} KV copies cycled)\n",
                 prop.name, context, batch, o.q_heads, o.kv_heads, o.head_dim, o.block_tokens, o.budget,
                 rows.empty() ? 0 : rows.front().extra.value("layers", 0u));
      for (const Row& r : rows) fmt::print("{}\n", FormatDecodeRow(r, o.block_tokens));
    }
    if (!result.ok()) break;
  }
  cudaStreamDestroy(stream);
  return result;
}

}  // namespace kvtier::cli
