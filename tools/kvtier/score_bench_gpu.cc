// `kvtier bench score` GPU part: Expected Attention scoring of one long sequence, every
// layer, against a device-to-device copy of the same key bytes in the same run.
//
// One layer's keys and values (fp32 [kv_heads][tokens][d]) are allocated once and scored
// `layers` times (the same bytes per layer as a real model, far larger than L2, so reuse
// across layers buys nothing). The query moments are rotated on the host once (O(d²) per
// head) and uploaded; that is part of a refresh but not of the timed kernel work.
#include <cuda_runtime.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <random>
#include <vector>

#include "expected_attention.cuh"
#include "score_bench.h"

namespace kvtier::cli {
namespace {

#define KVT_CUDA_OR_RETURN(expr)                                                                           \
  do {                                                                                                     \
    if (cudaError_t kvt_e_ = (expr); kvt_e_ != cudaSuccess) {                                              \
      return Status::Internal(fmt::format("{}: {}", #expr, cudaGetErrorString(kvt_e_)));                   \
    }                                                                                                      \
  } while (0)

struct DeviceMem {
  void* p = nullptr;
  ~DeviceMem() { cudaFree(p); }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

Status RunGpuScoreBench(const GpuScoreBenchOptions& o) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices <= o.device) {
    (void)cudaGetLastError();
    return Status::Unavailable("no CUDA device is visible");
  }
  KVT_CUDA_OR_RETURN(cudaSetDevice(o.device));
  cudaDeviceProp prop{};
  KVT_CUDA_OR_RETURN(cudaGetDeviceProperties(&prop, o.device));
  using namespace kernels;
  ExpectedAttentionShape s{.q_heads = o.q_heads, .kv_heads = o.kv_heads, .head_dim = o.head_dim, .tokens = o.tokens,
                           .block_tokens = o.block_tokens, .sink_tokens = 4};
  const size_t kv_floats = size_t{o.kv_heads} * o.tokens * o.head_dim;
  const size_t kbytes = kv_floats * sizeof(float);
  DeviceMem keys, values, copy_dst, mean, cov, ws, out;
  KVT_CUDA_OR_RETURN(cudaMalloc(&keys.p, kbytes));
  KVT_CUDA_OR_RETURN(cudaMalloc(&values.p, kbytes));
  KVT_CUDA_OR_RETURN(cudaMalloc(&copy_dst.p, kbytes));
  const size_t d = o.head_dim;
  KVT_CUDA_OR_RETURN(cudaMalloc(&mean.p, o.q_heads * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&cov.p, o.q_heads * d * d * sizeof(float)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&ws.p, ExpectedAttentionWorkspaceBytes(s)));
  KVT_CUDA_OR_RETURN(cudaMalloc(&out.p, size_t{o.kv_heads} * s.blocks() * sizeof(float)));
  {
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> host(kv_floats);
    for (float& x : host) x = nd(rng);
    KVT_CUDA_OR_RETURN(cudaMemcpy(keys.p, host.data(), kbytes, cudaMemcpyHostToDevice));
    for (float& x : host) x = nd(rng);
    KVT_CUDA_OR_RETURN(cudaMemcpy(values.p, host.data(), kbytes, cudaMemcpyHostToDevice));
    std::vector<float> q(size_t{128} * o.q_heads * d), m(o.q_heads * d), c(o.q_heads * d * d), rm(m.size()),
        rc(c.size()), cb(d / 2), sb(d / 2);
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
  auto score = [&](bool covariance) {
    return [&, covariance]() -> Status {
      ExpectedAttentionDeviceArgs a{.shape = s, .epsilon = 0.02f, .use_covariance = covariance, .use_value_norm = true,
                                    .keys = static_cast<float*>(keys.p), .values = static_cast<float*>(values.p),
                                    .rotated_mean = static_cast<float*>(mean.p), .rotated_cov = static_cast<float*>(cov.p),
                                    .workspace = ws.p, .block_scores = static_cast<float*>(out.p)};
      KVT_CUDA_OR_RETURN(LaunchExpectedAttention(a, stream));
      return Status::Ok();
    };
  };
  auto copy = [&]() -> Status {
    KVT_CUDA_OR_RETURN(cudaMemcpyAsync(copy_dst.p, keys.p, kbytes, cudaMemcpyDeviceToDevice, stream));
    return Status::Ok();
  };
  KVT_ASSIGN_OR_RETURN(double t_copy, timed(copy));
  KVT_ASSIGN_OR_RETURN(double t_full, timed(score(true)));
  KVT_ASSIGN_OR_RETURN(double t_mean, timed(score(false)));
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaStreamDestroy(stream);

  const double key_bytes = static_cast<double>(kbytes) * o.layers;
  const double copy_gbs = key_bytes / t_copy / 1e9;
  // A decode step of the model reads its bf16 weights (~16 GB for Llama-3-8B) and the bf16
  // KV cache of the sequence; at best at 2x the copy rate (a copy reads and writes).
  const double kv_bf16 = 2.0 * 2 * o.layers * o.kv_heads * d * o.tokens;
  const double step_s = (16.06e9 + kv_bf16) / (2 * copy_gbs * 1e9);
  auto row = [&](const char* mode, double t) {
    const double gbs = key_bytes / t / 1e9;
    const double amortised = t / o.refresh_interval;
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "score_gpu"}, {"device", prop.name}, {"mode", mode},
                                        {"tokens", o.tokens}, {"layers", o.layers}, {"key_bytes", key_bytes},
                                        {"seconds", t}, {"key_read_gbs", gbs}, {"copy_gbs", copy_gbs},
                                        {"vs_copy", gbs / copy_gbs}, {"amortised_ms_per_step", amortised * 1e3},
                                        {"decode_step_ms_estimate", step_s * 1e3},
                                        {"fraction_of_decode", amortised / step_s}}
                                .dump());
    } else {
      fmt::print("{:<22} {:>9.2f} ms  keys {:>7.1f} GB/s = {:>5.2f}x copy  amortised /{} steps: {:.4f} ms = {:.2f}% of a ~{:.1f} ms decode step\n",
                 mode, t * 1e3, gbs, gbs / copy_gbs, o.refresh_interval, amortised * 1e3, 100 * amortised / step_s,
                 step_s * 1e3);
    }
  };
  if (!o.json) {
    fmt::print("GPU scoring, {}: {} tokens x {} layers, {} q / {} kv heads, d={} (fp32 K/V, {:.2f} GB of keys)\n",
               prop.name, o.tokens, o.layers, o.q_heads, o.kv_heads, o.head_dim, key_bytes / 1e9);
    fmt::print("{:<22} {:>9.2f} ms  keys {:>7.1f} GB/s (baseline: device-to-device copy of the same key bytes)\n",
               "cudaMemcpyAsync D2D", t_copy * 1e3, copy_gbs);
  }
  row("ea mean+covariance", t_full);
  row("ea mean only", t_mean);
  return Status::Ok();
}

}  // namespace kvtier::cli
