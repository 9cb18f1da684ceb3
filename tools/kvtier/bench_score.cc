// `kvtier bench score`: how well Expected Attention block scores predict the attention of
// future queries, next to LRU and key-norm scoring in the same run; the fairness of drops
// across tagged spans; and (CUDA builds, --gpu) the scorer's speed against a copy.
//
// Quality (CPU): per trial, a query distribution N(μ, Σ) per head (μ, Σ random), keys
// pre-RoPE with per-token scales and a few planted "heavy" keys aligned with μ, rotated by
// their true position; the statistics are the moments of a window of 128 sampled queries
// (what an engine would have). The truth is the mean attention (softmax over the cache) of
// 512 future queries sampled from N(μ, Σ) and rotated by their true positions P .. P+511,
// averaged over the GQA group, summed per block. Reported: Spearman(block score, truth) and
// the attention mass of the top 50% blocks by score over that of the oracle top 50%, for the
// exact covariance term, the low-rank ranks 8/16/32 (plus the host cost of factoring), the
// same ranks factored once from the pre-RoPE Σ and rotated per refresh (RotateLowRankCovariance;
// host cost of each step) and the mean term alone.
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "commands.h"
#include "kvtier/fair_budget.h"
#include "reference/expected_attention.h"
#include "reference/low_rank_covariance.h"
#include "score_bench.h"

namespace kvtier::cli {
namespace {

struct BenchScoreOptions {
  uint32_t tokens = 4096;
  uint32_t trials = 5;
  bool json = false;
  bool gpu = false;
  bool quick = false;
  GpuScoreBenchOptions gpu_options;
};

void Rope(std::vector<float>& x, uint32_t d, double pos, double theta) {
  const uint32_t h = d / 2;
  for (uint32_t i = 0; i < h; ++i) {
    const double a = std::fmod(pos * std::pow(theta, -2.0 * i / d), 2 * M_PI);
    const double lo = x[i], hi = x[i + h];
    x[i] = static_cast<float>(lo * std::cos(a) - hi * std::sin(a));
    x[i + h] = static_cast<float>(hi * std::cos(a) + lo * std::sin(a));
  }
}

std::vector<double> Ranks(const std::vector<double>& v) {
  std::vector<size_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> r(v.size());
  for (size_t i = 0; i < idx.size();) {
    size_t j = i;
    while (j + 1 < idx.size() && v[idx[j + 1]] == v[idx[i]]) ++j;
    for (size_t k = i; k <= j; ++k) r[idx[k]] = (i + j) / 2.0;
    i = j + 1;
  }
  return r;
}

double Spearman(const std::vector<double>& a, const std::vector<double>& b) {
  const auto ra = Ranks(a), rb = Ranks(b);
  const double ma = std::accumulate(ra.begin(), ra.end(), 0.0) / ra.size();
  const double mb = std::accumulate(rb.begin(), rb.end(), 0.0) / rb.size();
  double num = 0, da = 0, db = 0;
  for (size_t i = 0; i < ra.size(); ++i) {
    num += (ra[i] - ma) * (rb[i] - mb);
    da += (ra[i] - ma) * (ra[i] - ma);
    db += (rb[i] - mb) * (rb[i] - mb);
  }
  return num / std::sqrt(da * db);
}

// Mass of the top half of blocks by `score`, over the oracle's.
double MassCapture(const std::vector<double>& score, const std::vector<double>& truth) {
  const size_t keep = truth.size() / 2;
  auto top = [&](const std::vector<double>& s) {
    std::vector<size_t> idx(s.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::partial_sort(idx.begin(), idx.begin() + static_cast<ptrdiff_t>(keep), idx.end(),
                      [&](size_t a, size_t b) { return s[a] > s[b]; });
    double m = 0;
    for (size_t k = 0; k < keep; ++k) m += truth[idx[k]];
    return m;
  };
  return top(score) / top(truth);
}

// The Expected Attention variants compared: the exact covariance term, low-rank ranks (Σ̄
// factored per refresh), the same ranks factored once pre-RoPE and rotated, mean only.
constexpr uint32_t kRanks[] = {8, 16, 32};
constexpr int kNumRanks = static_cast<int>(std::size(kRanks));
constexpr int kEaVariants = 2 + 2 * kNumRanks;  // exact, kRanks..., pre-RoPE kRanks..., mean only

struct Trial {
  std::vector<double> ea[kEaVariants], lru, knorm, truth;
  double factor_ms_per_head[kNumRanks] = {};      // LowRankCovariance of Σ̄, host (per refresh)
  double pre_factor_ms_per_head[kNumRanks] = {};  // LowRankCovariance + PairResidual of Σ (per statistics update)
  double rotate_ms_per_head[kNumRanks] = {};      // RotateLowRankCovariance (per refresh)
};

Trial RunTrial(uint32_t tokens, uint32_t seed) {
  const uint32_t qh = 4, kvh = 1, d = 128, bt = 16, future = 512, window = 128;
  const double theta = 500000;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> mu(qh * d), chol(size_t{qh} * d * d, 0.0f);
  for (float& x : mu) x = 0.6f * nd(rng);
  for (uint32_t h = 0; h < qh; ++h)  // Σ = L Lᵀ, L lower-triangular, scale ~0.7
    for (uint32_t i = 0; i < d; ++i)
      for (uint32_t j = 0; j <= i; ++j) chol[(size_t{h} * d + i) * d + j] = (i == j ? 0.5f : 0.05f) * nd(rng);
  auto sample = [&](uint32_t h) {
    std::vector<float> z(d), q(d);
    for (float& x : z) x = nd(rng);
    for (uint32_t i = 0; i < d; ++i) {
      double s = mu[h * d + i];
      for (uint32_t j = 0; j <= i; ++j) s += chol[(size_t{h} * d + i) * d + j] * z[j];
      q[i] = static_cast<float>(s);
    }
    return q;
  };
  std::vector<float> keys(size_t{tokens} * d), values(keys.size());
  std::lognormal_distribution<float> scale(0.0f, 0.4f);
  std::uniform_int_distribution<uint32_t> pick(0, 63);
  for (uint32_t t = 0; t < tokens; ++t) {
    std::vector<float> k(d);
    const float s = scale(rng);
    const bool heavy = pick(rng) == 0;  // ~1.5% of tokens align with the query mean
    for (uint32_t i = 0; i < d; ++i) k[i] = s * nd(rng) + (heavy ? 1.5f * mu[i] : 0.0f);
    Rope(k, d, t, theta);
    std::copy(k.begin(), k.end(), keys.begin() + static_cast<ptrdiff_t>(size_t{t} * d));
    for (uint32_t i = 0; i < d; ++i) values[size_t{t} * d + i] = nd(rng);
  }
  // The statistics window: 128 sampled pre-RoPE queries.
  std::vector<float> win(size_t{window} * qh * d), mean(qh * d), cov(size_t{qh} * d * d);
  for (uint32_t s = 0; s < window; ++s)
    for (uint32_t h = 0; h < qh; ++h) {
      auto q = sample(h);
      std::copy(q.begin(), q.end(), win.begin() + static_cast<ptrdiff_t>((size_t{s} * qh + h) * d));
    }
  kernels::QueryMoments(win, window, qh, d, mean, cov);
  kernels::ExpectedAttentionShape shape{.q_heads = qh, .kv_heads = kvh, .head_dim = d, .tokens = tokens,
                                        .block_tokens = bt, .sink_tokens = 0};
  kernels::ExpectedAttentionParams params{.position = tokens, .future = future, .rope_theta = theta,
                                          .epsilon = 0.0f, .use_covariance = true, .use_value_norm = false,
                                          .covariance_rank = 0};  // the exact row; ranks set below
  Trial tr;
  {
    std::vector<float> cb(d / 2), sb(d / 2), rm(mean.size()), rc(cov.size()), token(tokens), blocks(shape.blocks());
    kernels::AveragedRope(d, params, cb, sb);
    kernels::RotateQueryMoments(qh, d, cb, sb, mean, cov, rm, rc);
    auto score = [&](int variant) {
      kernels::SumBlockScores(shape, token, blocks);
      tr.ea[variant].assign(blocks.begin(), blocks.end());
    };
    kernels::ExpectedAttentionTokenScores(shape, params, keys, values, rm, rc, token);
    score(0);
    for (size_t i = 0; i < std::size(kRanks); ++i) {
      const uint32_t r = kRanks[i];
      std::vector<float> factors(size_t{qh} * r * d), residual(size_t{qh} * d);
      const auto t0 = std::chrono::steady_clock::now();
      kernels::LowRankCovariance(qh, d, r, rc, factors, residual);
      tr.factor_ms_per_head[i] =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / qh;
      kernels::ExpectedAttentionParams low = params;
      low.covariance_rank = r;
      kernels::ExpectedAttentionTokenScoresLowRank(shape, low, keys, values, rm, factors, residual, token);
      score(static_cast<int>(i + 1));

      std::vector<float> pre_f(factors.size()), rho0(residual.size()), pair(size_t{qh} * d / 2);
      const auto t1 = std::chrono::steady_clock::now();
      kernels::LowRankCovariance(qh, d, r, cov, pre_f, rho0);
      kernels::PairResidual(qh, d, r, cov, pre_f, pair);
      const auto t2 = std::chrono::steady_clock::now();
      kernels::RotateLowRankCovariance(qh, d, r, cb, sb, pre_f, rho0, pair, factors, residual);
      const auto t3 = std::chrono::steady_clock::now();
      tr.pre_factor_ms_per_head[i] = std::chrono::duration<double, std::milli>(t2 - t1).count() / qh;
      tr.rotate_ms_per_head[i] = std::chrono::duration<double, std::milli>(t3 - t2).count() / qh;
      kernels::ExpectedAttentionTokenScoresLowRank(shape, low, keys, values, rm, factors, residual, token);
      score(static_cast<int>(1 + kNumRanks + i));
    }
    kernels::ExpectedAttentionParams mean_only = params;
    mean_only.use_covariance = false;
    kernels::ExpectedAttentionTokenScores(shape, mean_only, keys, values, rm, rc, token);
    score(kEaVariants - 1);
  }
  tr.truth.assign(shape.blocks(), 0.0);
  std::vector<double> logit(tokens);
  for (uint32_t j = 0; j < future; ++j)
    for (uint32_t h = 0; h < qh; ++h) {
      auto q = sample(h);
      Rope(q, d, tokens + j, theta);
      double m = -1e300;
      for (uint32_t t = 0; t < tokens; ++t) {
        double s = 0;
        for (uint32_t i = 0; i < d; ++i) s += double(q[i]) * keys[size_t{t} * d + i];
        logit[t] = s / std::sqrt(double(d));
        m = std::max(m, logit[t]);
      }
      double z = 0;
      for (uint32_t t = 0; t < tokens; ++t) z += std::exp(logit[t] - m);
      for (uint32_t t = 0; t < tokens; ++t) tr.truth[t / bt] += std::exp(logit[t] - m) / z / (future * qh);
    }
  for (uint32_t b = 0; b < shape.blocks(); ++b) {
    tr.lru.push_back(b);  // newer = more important
    double n = 0;
    for (uint32_t t = b * bt; t < std::min(tokens, (b + 1) * bt); ++t) {
      double s = 0;
      for (uint32_t i = 0; i < d; ++i) s += double(keys[size_t{t} * d + i]) * keys[size_t{t} * d + i];
      n += std::sqrt(s);
    }
    tr.knorm.push_back(-n);  // kvpress KnormPress: low key norm = important
  }
  return tr;
}

void QualityBench(const BenchScoreOptions& o) {
  constexpr int kScorers = kEaVariants + 2;
  std::vector<std::vector<double>> sp(kScorers), cap(kScorers), factor_ms(kNumRanks), pre_ms(kNumRanks),
      rot_ms(kNumRanks);
  const char* names[kScorers] = {"expected-attention",        "expected-attention-r8",
                                 "expected-attention-r16",    "expected-attention-r32",
                                 "expected-attention-r8-pre", "expected-attention-r16-pre",
                                 "expected-attention-r32-pre", "expected-attention-mean-only",
                                 "lru",                       "key-norm"};
  for (uint32_t t = 0; t < o.trials; ++t) {
    Trial tr = RunTrial(o.tokens, 100 + t);
    for (int k = 0; k < kScorers; ++k) {
      const std::vector<double>& s = k < kEaVariants ? tr.ea[k] : (k == kEaVariants ? tr.lru : tr.knorm);
      sp[k].push_back(Spearman(s, tr.truth));
      cap[k].push_back(MassCapture(s, tr.truth));
    }
    for (int i = 0; i < kNumRanks; ++i) {
      factor_ms[i].push_back(tr.factor_ms_per_head[i]);
      pre_ms[i].push_back(tr.pre_factor_ms_per_head[i]);
      rot_ms[i].push_back(tr.rotate_ms_per_head[i]);
    }
  }
  auto med = [](std::vector<double> v) { std::sort(v.begin(), v.end()); return v[v.size() / 2]; };
  auto lo = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
  if (!o.json) {
    fmt::print("Quality: {} tokens (16-token blocks), 4 q heads / 1 kv head, d=128, T=512 future queries, {} trials\n",
               o.tokens, o.trials);
    fmt::print("{:<30} {:>16} {:>16} {:>22} {:>14}\n", "scorer", "spearman median", "spearman min",
               "mass@50% vs oracle med", "mass@50% min");
  }
  for (int k = 0; k < kScorers; ++k) {
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "score_quality"}, {"scorer", names[k]}, {"tokens", o.tokens},
                                        {"trials", o.trials}, {"spearman_median", med(sp[k])}, {"spearman_min", lo(sp[k])},
                                        {"mass_capture_median", med(cap[k])}, {"mass_capture_min", lo(cap[k])}}
                                .dump());
    } else {
      fmt::print("{:<30} {:>16.3f} {:>16.3f} {:>22.3f} {:>14.3f}\n", names[k], med(sp[k]), lo(sp[k]), med(cap[k]), lo(cap[k]));
    }
  }
  for (int i = 0; i < kNumRanks; ++i) {
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "score_factor_host"}, {"rank", kRanks[i]}, {"head_dim", 128},
                                        {"ms_per_query_head_median", med(factor_ms[i])},
                                        {"pre_rope_factor_ms_per_query_head_median", med(pre_ms[i])},
                                        {"rotate_ms_per_query_head_median", med(rot_ms[i])}}
                                .dump());
    } else {
      fmt::print("host LowRankCovariance rank {:>2} (d=128): {:.2f} ms per query head per refresh; pre-RoPE (-pre rows): "
                 "factor {:.2f} ms per statistics update + rotate {:.4f} ms per refresh (medians)\n",
                 kRanks[i], med(factor_ms[i]), med(pre_ms[i]), med(rot_ms[i]));
    }
  }
}

// Three spans whose scores live on different scales (the "defense" span scores lowest): a
// global top-k starves it; the fair plan keeps every span at the same rate.
void FairnessBench(const BenchScoreOptions& o) {
  std::mt19937 rng(5);
  std::lognormal_distribution<float> ln(0.0f, 1.0f);
  const uint32_t lens[3] = {40, 60, 156};
  const float scale[3] = {0.2f, 1.0f, 3.0f};
  std::vector<SpanBlock> blocks;
  for (uint32_t s = 0; s < 3; ++s)
    for (uint32_t i = 0; i < lens[s]; ++i) blocks.push_back({s, scale[s] * ln(rng), KeepRule::kScored});
  for (size_t i = 0; i < 6; ++i) blocks[i].rule = KeepRule::kForceKeep;  // a whitelisted phrase in span 0
  if (!o.json) fmt::print("Fairness: spans of 40/60/156 blocks, score scales 0.2/1/3, 6 force-kept blocks in span 0\n"
                          "{:>6} {:>26} {:>26} {:>14}\n", "drop", "global top-k: keep rates", "fair: keep rates", "max gap g/f");
  for (int r10 = 1; r10 <= 9; ++r10) {
    const double r = r10 / 10.0;
    const size_t keep = blocks.size() - static_cast<size_t>(std::lround(r * blocks.size()));
    std::vector<size_t> idx(blocks.size());
    std::iota(idx.begin(), idx.end(), 0);
    std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return blocks[a].score > blocks[b].score; });
    double g[3] = {}, f[3] = {};
    for (size_t k = 0; k < keep; ++k) g[blocks[idx[k]].span] += 1;
    auto plan = PlanFairKeep(blocks, keep);
    size_t forced_dropped = 0;
    for (size_t i = 0; i < blocks.size(); ++i) {
      if (plan.ok() && (*plan)[i]) f[blocks[i].span] += 1;
      if (plan.ok() && !(*plan)[i] && blocks[i].rule != KeepRule::kScored) ++forced_dropped;
    }
    for (int s = 0; s < 3; ++s) {
      g[s] /= lens[s];
      f[s] /= lens[s];
    }
    auto gap = [](const double* x) { return *std::max_element(x, x + 3) - *std::min_element(x, x + 3); };
    if (o.json) {
      fmt::print("{}\n", nlohmann::json{{"bench", "score_fairness"}, {"drop_ratio", r}, {"plan_ok", plan.ok()},
                                        {"global_keep_rates", {g[0], g[1], g[2]}}, {"fair_keep_rates", {f[0], f[1], f[2]}},
                                        {"global_gap", gap(g)}, {"fair_gap", gap(f)}, {"force_kept_dropped", forced_dropped}}
                                .dump());
    } else if (!plan.ok()) {
      fmt::print("{:>6.1f} {:>14.2f}/{:.2f}/{:.2f}   fair plan refused: {}\n", r, g[0], g[1], g[2], plan.status().message());
    } else {
      fmt::print("{:>6.1f} {:>14.2f}/{:.2f}/{:.2f} {:>14.2f}/{:.2f}/{:.2f} {:>8.2f}/{:.3f}\n", r, g[0], g[1], g[2], f[0], f[1],
                 f[2], gap(g), gap(f));
    }
  }
}

}  // namespace

void AddBenchScoreCommand(CLI::App& bench, int* exit_code) {
  auto o = std::make_shared<BenchScoreOptions>();
  CLI::App* cmd = bench.add_subcommand("score", "Expected Attention quality vs LRU and key-norm, fairness; --gpu: speed vs a copy");
  cmd->add_option("--tokens", o->tokens, "tokens of the synthetic sequence (quality part)")->capture_default_str();
  cmd->add_option("--trials", o->trials, "random trials (quality part)")->capture_default_str();
  cmd->add_flag("--quick", o->quick, "1024 tokens, 2 trials (CI)");
  cmd->add_flag("--gpu", o->gpu, "only the GPU part: 128K tokens, Llama-3-8B shapes, all layers (CUDA builds)");
  cmd->add_option("--gpu-tokens", o->gpu_options.tokens, "tokens of the GPU run")->capture_default_str();
  cmd->add_option("--gpu-ranks", o->gpu_options.ranks, "low-rank covariance ranks of the GPU run (multiples of 8)")
      ->capture_default_str();
  cmd->add_option("--device", o->gpu_options.device, "CUDA device")->capture_default_str();
  cmd->add_flag("--json", o->json, "JSON lines");
  cmd->callback([o, exit_code] {
    if (o->gpu) {
      o->gpu_options.json = o->json;
      if (Status s = RunGpuScoreBench(o->gpu_options); !s.ok()) {
        fmt::print(stderr, "kvtier bench score --gpu: {}\n", s.message());
        *exit_code = 2;
      }
      return;
    }
    if (o->quick) {
      o->tokens = 1024;
      o->trials = 2;
    }
    if (o->tokens < 64 || o->trials == 0) {
      fmt::print(stderr, "kvtier bench score: --tokens must be >= 64 and --trials >= 1\n");
      *exit_code = 2;
      return;
    }
    QualityBench(*o);
    FairnessBench(*o);
  });
}

}  // namespace kvtier::cli
