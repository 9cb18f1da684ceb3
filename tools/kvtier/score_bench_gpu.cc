// `kvtier bench score` GPU part: Expected Attention scoring of one long sequence, every
// layer, against a device-to-device copy of the same key bytes in the same run.
//
// One layer's keys and values ([kv_heads][tokens][d], fp32 and bf16 copies) are allocated
// once and scored `layers` times (the same bytes per layer as a real model, far larger than
// L2, so reuse across layers buys nothing). Rows: the exact covariance term on fp32 keys
// (fp32 SIMT) and on bf16 keys (cp.async-ring tensor-core pass), the low-rank form at each
// --gpu-ranks rank (bf16) and the mean term alone (bf16), those two on the streaming logits
// pass; each bf16 row also "key-only": ‖v‖ precomputed by LaunchValueNorms (as an engine
// does when it writes a block), so the scorer reads only the keys instead of keys and
// values. The first rank's key-only row and the mean-only key-only row run once more on the
// cp.async-ring pass ("ring", LogitsPass::kRing: the pass before the streaming one) for an
// A/B in the same run. Each row is compared with a copy of its own key bytes (fp32 or bf16).
// The one-time cost of the norms is timed too: one launch per written block (8 KV heads ×
// block_tokens tokens of one layer, strided into the sequence's norms) and one launch over a
// whole sequence (every layer). The query moments are rotated (and factored, for the
// low-rank rows) on the host once; that is part of a refresh but not of the timed kernel
// work — its host time is printed separately.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "expected_attention.cuh"
#include "gpu_bench_support.h"
#include "reference/low_rank_covariance.h"
#include "score_bench.h"

namespace kvtier::cli {

Status RunGpuScoreBench(const GpuScoreBenchOptions& o) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices <= o.device) {
    (void)cudaGetLastError();
    return Status::Unavailable("no CUDA device is visible");
  }
  for (uint32_t r : o.ranks) {
    if (r == 0 || r % 8 != 0 || r > o.head_dim) {
      return Status::InvalidArgument(fmt::format("--gpu-ranks: {} is not a multiple of 8 in [8, {}]", r, o.head_dim));
    }
  }
  KVT_CUDA_OR_RETURN(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  KVT_CUDA_OR_RETURN(cudaGetDeviceProperties(&prop, o.device));
  using namespace kernels;
  ExpectedAttentionShape s{.q_heads = o.q_heads, .kv_heads = o.kv_heads, .head_dim = o.head_dim, .tokens = o.tokens,
                           .block_tokens = o.block_tokens, .sink_tokens = 4};
  const size_t d = o.head_dim;
  const size_t kv_elems = size_t{o.kv_heads} * o.tokens * d;
  const size_t bytes32 = kv_elems * sizeof(float), bytes16 = kv_elems * 2;
  const uint32_t max_rank = o.ranks.empty() ? 8 : *std::max_element(o.ranks.begin(), o.ranks.end());
  DeviceMem k32, v32, k16, v16, copy_dst, mean, cov, factors, residual, ws, out, vnorms;
  KVT_CUDA_OR_RETURN(cudaMalloc(&k32.p, bytes32));
  KVT_CUDA_OR_RETURN(cudaMalloc(&v32.p, bytes32));
  KVT_CUDA_OR_RETURN(cudaMalloc(&k16.p, bytes16));
  KVT_CUDA_OR_RETURN(cudaMalloc(&v16.p, bytes16));
  KVT_CUDA_OR_RETURN(cudaMalloc(&copy_dst.p, bytes32));
  KVT_CUDA_OR_RETURN(cudaMalloc(&mean.p, o.q_heads * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&cov.p, o.q_heads * d * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&factors.p, o.q_heads * size_t{max_rank} * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&residual.p, o.q_heads * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, ExpectedAttentionWorkspaceBytes(s)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&out.p, size_t{o.kv_heads} * s.blocks() * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&vnorms.p, size_t{o.kv_heads} * o.tokens * sizeof(float)));
  std::vector<float> rm(o.q_heads * d), rc(o.q_heads * d * d);
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> host(kv_elems);
    std::vector<__nv_bfloat16> half(kv_elems);
    for (DeviceMem* dst : {&k32, &v32}) {
      for (float& x : host) x = nd(rng);
      KVT_CUDA_OR_RETURN(cudaMemcpy(dst->p, host.data(), bytes32, cudaMemcpyHostToDevice));
      for (size_t i = 0; i < kv_elems; ++i) half[i] = __float2bfloat16_rn(host[i]);
      KVT_CUDA_OR_RETURN(cudaMemcpy(dst == &k32 ? k16.p : v16.p, half.data(), bytes16, cudaMemcpyHostToDevice));
    }
    std::vector<float> q(size_t{128} * o.q_heads * d), m(o.q_heads * d), c(o.q_heads * d * d), cb(d / 2), sb(d / 2);
    for (float& x : q) x = nd(rng);
    QueryMoments(q, 128, o.q_heads, o.head_dim, m, c);
    AveragedRope(o.head_dim, {.position = o.tokens}, cb, sb);
    RotateQueryMoments(o.q_heads, o.head_dim, cb, sb, m, c, rm, rc);
    KVT_CUDA_OR_RETURN(cudaMemcpy(mean.p, rm.data(), rm.size() * sizeof(float), cudaMemcpyHostToDevice));
    KVT_CUDA_OR_RETURN(cudaMemcpy(cov.p, rc.data(), rc.size() * sizeof(float), cudaMemcpyHostToDevice));
  }
  cudaStream_t stream;
  KVT_CUDA_OR_RETURN(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  KVT_CUDA_OR_RETURN(cudaEventCreate(&e0));
  KVT_CUDA_OR_RETURN(cudaEventCreate(&e1));
  auto timed = [&](auto&& body) -> Result<double> {  // seconds for all layers, median
    std::vector<double> t;
    for (uint32_t r = 0; r <= o.repeats; ++r) {  // the first run warms up
      KVT_CUDA_OR_RETURN(cudaEventRecord(e0, stream));
      for (uint32_t l = 0; l < o.layers; ++l) KVT_RETURN_IF_ERROR(body());
      KVT_CUDA_OR_RETURN(cudaEventRecord(e1, stream));
      KVT_CUDA_OR_RETURN(cudaEventSynchronize(e1));
      float ms = 0;
      KVT_CUDA_OR_RETURN(cudaEventElapsedTime(&ms, e0, e1));
      if (r > 0) t.push_back(ms / 1e3);
    }
    return Median(t);
  };
  struct Variant {
    std::string mode;
    KvDType dtype;
    bool covariance;
    uint32_t rank;
    bool key_only = false;  // ‖v‖ from value_norms (precomputed), values not read
    LogitsPass pass = LogitsPass::kAuto;
  };
  auto pass_name = [](const Variant& v) {
    if (v.covariance && v.rank == 0) return v.dtype == KvDType::kFp32 ? "simt" : "ring";
    return v.pass == LogitsPass::kRing || v.dtype == KvDType::kFp32 ? "ring" : "stream";
  };
  auto score = [&](const Variant& v) {
    return [&, v]() -> Status {
      const bool fp32 = v.dtype == KvDType::kFp32;
      ExpectedAttentionDeviceArgs a{.shape = s, .epsilon = 0.02f, .use_covariance = v.covariance,
                                    .use_value_norm = true, .kv_dtype = v.dtype, .covariance_rank = v.rank,
                                    .keys = fp32 ? k32.p : k16.p,
                                    .values = v.key_only ? nullptr : (fp32 ? v32.p : v16.p),
                                    .value_norms = v.key_only ? static_cast<float*>(vnorms.p) : nullptr,
                                    .rotated_mean = static_cast<float*>(mean.p),
                                    .rotated_cov = static_cast<float*>(cov.p),
                                    .cov_factors = static_cast<float*>(factors.p),
                                    .cov_residual = static_cast<float*>(residual.p), .workspace = ws.p,
                                    .block_scores = static_cast<float*>(out.p), .logits_pass = v.pass};
      KVT_CUDA_OR_RETURN(LaunchExpectedAttention(a, stream));
      return Status::Ok();
    };
  };
  auto copy = [&](size_t bytes) {
    return [&, bytes]() -> Status {
      KVT_CUDA_OR_RETURN(cudaMemcpyAsync(copy_dst.p, k32.p, bytes, cudaMemcpyDeviceToDevice, stream));
      return Status::Ok();
    };
  };
  KVT_ASSIGN_OR_RETURN(double t_copy32, timed(copy(bytes32)));
  KVT_ASSIGN_OR_RETURN(double t_copy16, timed(copy(bytes16)));

  // ‖v‖ once per written block: one launch per block of one layer (every KV head, strided
  // into the sequence's [kv_heads][tokens] norms), over the first `norm_blocks` blocks, timed
  // as `layers` × that (each layer writes its own block); and once over a whole sequence.
  auto norms_of = [&](uint32_t first, uint32_t count) {
    return ValueNormsArgs{.dtype = KvDType::kBf16, .head_dim = o.head_dim, .heads = o.kv_heads, .tokens = count,
                          .values = static_cast<const __nv_bfloat16*>(v16.p) + size_t{first} * d,
                          .values_head_stride = size_t{o.tokens} * d,
                          .norms = static_cast<float*>(vnorms.p) + first, .norms_head_stride = o.tokens};
  };
  const uint32_t norm_blocks = std::min<uint32_t>(s.blocks(), 1024);
  KVT_ASSIGN_OR_RETURN(double t_norm_blocks, timed([&]() -> Status {
                         for (uint32_t b = 0; b < norm_blocks; ++b) {
                           const uint32_t first = b * o.block_tokens;
                           KVT_CUDA_OR_RETURN(LaunchValueNorms(
                               norms_of(first, std::min(o.block_tokens, o.tokens - first)), stream));
                         }
                         return Status::Ok();
                       }));
  const double t_norm_block = t_norm_blocks / (static_cast<double>(norm_blocks) * o.layers);  // one block of one layer
  KVT_ASSIGN_OR_RETURN(double t_norm_seq, timed([&]() -> Status {
                         KVT_CUDA_OR_RETURN(LaunchValueNorms(norms_of(0, o.tokens), stream));
                         return Status::Ok();
                       }));  // all layers; leaves the norms of the whole sequence for the key-only rows

  // The first rank's and the mean-only key-only rows once more on the cp.async-ring pass.
  std::vector<Variant> variants = {{"exact fp32 (simt)", KvDType::kFp32, true, 0},
                                   {"exact bf16 (ring)", KvDType::kBf16, true, 0},
                                   {"exact bf16 key-only (ring)", KvDType::kBf16, true, 0, true}};
  for (uint32_t r : o.ranks) {
    variants.push_back({fmt::format("rank {} bf16", r), KvDType::kBf16, true, r});
    variants.push_back({fmt::format("rank {} bf16 key-only", r), KvDType::kBf16, true, r, true});
    if (r == o.ranks.front()) {
      variants.push_back({fmt::format("rank {} bf16 key-only (ring)", r), KvDType::kBf16, true, r, true,
                          LogitsPass::kRing});
    }
  }
  variants.push_back({"mean only bf16", KvDType::kBf16, false, 0});
  variants.push_back({"mean only bf16 key-only", KvDType::kBf16, false, 0, true});
  variants.push_back({"mean only bf16 key-only (ring)", KvDType::kBf16, false, 0, true, LogitsPass::kRing});
  struct Row {
    const Variant* v;
    double seconds, factor_ms;
  };
  std::vector<Row> rows;
  for (const Variant& v : variants) {
    double factor_ms = 0;
    if (v.rank > 0) {  // host factorisation of one layer's heads, then upload (not timed on the GPU)
      std::vector<float> f(o.q_heads * size_t{v.rank} * d), r(o.q_heads * d);
      const auto t0 = std::chrono::steady_clock::now();
      LowRankCovariance(o.q_heads, o.head_dim, v.rank, rc, f, r);
      factor_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      KVT_CUDA_OR_RETURN(cudaMemcpy(factors.p, f.data(), f.size() * sizeof(float), cudaMemcpyHostToDevice));
      KVT_CUDA_OR_RETURN(cudaMemcpy(residual.p, r.data(), r.size() * sizeof(float), cudaMemcpyHostToDevice));
    }
    KVT_ASSIGN_OR_RETURN(double t, timed(score(v)));
    rows.push_back({&v, t, factor_ms});
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);

  const double copy_gbs = static_cast<double>(bytes16) * o.layers / t_copy16 / 1e9;
  // A decode step of the model reads its bf16 weights (~16 GB for Llama-3-8B) and the bf16
  // KV cache of the sequence; at best at 2x the copy rate (a copy reads and writes).
  const double kv_bf16 = 2.0 * 2 * o.layers * o.kv_heads * d * o.tokens;
  const double step_s = (16.06e9 + kv_bf16) / (2 * copy_gbs * 1e9);
  if (!o.json) {
    fmt::print("GPU scoring, {}: {} tokens x {} layers, {} q / {} kv heads, d={} ({:.2f} GB of fp32 / {:.2f} GB of bf16 keys)\n",
               prop.name, o.tokens, o.layers, o.q_heads, o.kv_heads, o.head_dim, bytes32 * o.layers / 1e9,
               bytes16 * o.layers / 1e9);
    for (auto [name, t, bytes] : {std::tuple{"copy fp32 keys (D2D)", t_copy32, bytes32},
                                  std::tuple{"copy bf16 keys (D2D)", t_copy16, bytes16}}) {
      fmt::print("{:<34} {:>9.2f} ms = {:>6.1f} us/layer  keys {:>7.1f} GB/s (baseline: cudaMemcpyAsync of the same key bytes)\n",
                 name, t * 1e3, t * 1e6 / o.layers, static_cast<double>(bytes) * o.layers / t / 1e9);
    }
  }
  for (const Row& row : rows) {
    const bool fp32 = row.v->dtype == KvDType::kFp32;
    const double key_bytes = static_cast<double>(fp32 ? bytes32 : bytes16) * o.layers;
    const double t_copy = fp32 ? t_copy32 : t_copy16;
    const double gbs = key_bytes / row.seconds / 1e9;
    const double vs_copy = t_copy / row.seconds;
    const double amortised = row.seconds / o.refresh_interval;
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "score_gpu"}, {"device", prop.name}, {"mode", row.v->mode},
                                        {"key_dtype", fp32 ? "fp32" : "bf16"}, {"covariance_rank", row.v->rank},
                                        {"covariance", row.v->covariance}, {"tokens", o.tokens}, {"layers", o.layers},
                                        {"key_bytes", key_bytes}, {"seconds", row.seconds}, {"key_read_gbs", gbs},
                                        {"copy_seconds", t_copy}, {"copy_gbs", key_bytes / t_copy / 1e9},
                                        {"vs_copy", vs_copy}, {"amortised_ms_per_step", amortised * 1e3},
                                        {"decode_step_ms_estimate", step_s * 1e3},
                                        {"fraction_of_decode", amortised / step_s},
                                        {"host_factor_ms_per_layer", row.factor_ms},
                                        {"value_norms", row.v->key_only ? "precomputed" : "from values"},
                                        {"logits_pass", pass_name(*row.v)}}
                                .dump());
    } else {
      fmt::print("{:<34} {:>9.2f} ms = {:>6.1f} us/layer  keys {:>7.1f} GB/s = {:>5.2f}x copy  amortised /{} steps: {:.4f} ms = {:.2f}% of a ~{:.1f} ms decode step{}\n",
                 row.v->mode, row.seconds * 1e3, row.seconds * 1e6 / o.layers, gbs, vs_copy, o.refresh_interval, amortised * 1e3,
                 100 * amortised / step_s, step_s * 1e3,
                 row.factor_ms > 0 ? fmt::format("  (host factoring {:.1f} ms/layer)", row.factor_ms) : "");
    }
  }
  // Amortised: every layer writes one block per block_tokens decode steps.
  const double norm_per_step = t_norm_block * o.layers / o.block_tokens;
  const double values_bytes = static_cast<double>(bytes16) * o.layers;
  if (o.json) {
    fmt::print("{}\n", nlohmann::json{{"bench", "score_gpu_value_norms"}, {"device", prop.name},
                                      {"block_tokens", o.block_tokens}, {"kv_heads", o.kv_heads},
                                      {"seconds_per_block_launch", t_norm_block},
                                      {"amortised_ms_per_step", norm_per_step * 1e3},
                                      {"fraction_of_decode", norm_per_step / step_s},
                                      {"whole_sequence_seconds", t_norm_seq},
                                      {"whole_sequence_values_gbs", values_bytes / t_norm_seq / 1e9}}
                           .dump());
  } else {
    fmt::print("value norms (LaunchValueNorms, once per cached token; the key-only rows' input):\n"
               "  per written block ({} kv heads x {} tokens, one layer, one launch): {:.2f} us; every layer writes one "
               "per {} decode steps: {:.4f} ms = {:.3f}% of a decode step\n"
               "  whole sequence (all {} layers, one launch each): {:.2f} ms, values {:.1f} GB/s\n",
               o.kv_heads, o.block_tokens, t_norm_block * 1e6, o.block_tokens, norm_per_step * 1e3,
               100 * norm_per_step / step_s, o.layers, t_norm_seq * 1e3, values_bytes / t_norm_seq / 1e9);
  }
  return Status::Ok();
}

}  // namespace kvtier::cli
