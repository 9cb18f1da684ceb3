// The generator draws keys and queries from separate engines seeded from `seed`, so a run
// with more steps sees the same keys, and a working-set study can extend the query trace
// without regenerating 32K tokens of keys.
#include "sparse_synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

namespace kvtier::synth {
namespace {

constexpr uint64_t kKeyStream = 0x6b657973;    // "keys"
constexpr uint64_t kQueryStream = 0x71756572;  // "quer"

uint64_t StreamSeed(uint64_t seed, uint64_t stream) {
  // splitmix64 of (seed, stream): independent engines from one user seed.
  uint64_t z = seed * 0x9e3779b97f4a7c15ull + stream;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void Normalise(std::span<float> v, double norm) {
  double s = 0;
  for (float x : v) s += double(x) * x;
  const double f = s > 0 ? norm / std::sqrt(s) : 0.0;
  for (float& x : v) x = static_cast<float>(x * f);
}

// b_h(0) per KV head and the fixed in-group offsets o_g, then `steps` query sets.
std::vector<float> DriftTrace(const SparseSynthOptions& o, std::vector<float>* initial_base) {
  const uint32_t d = o.head_dim, qh = o.q_heads();
  const double sqrt_d = std::sqrt(double(d));
  std::mt19937_64 rng(StreamSeed(o.seed, kQueryStream));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> base(size_t{o.kv_heads} * d), offset(size_t{qh} * d);
  for (float& x : base) x = nd(rng);
  for (uint32_t h = 0; h < o.kv_heads; ++h) Normalise({&base[size_t{h} * d], d}, sqrt_d);
  for (float& x : offset) x = o.group_spread * nd(rng);
  if (initial_base != nullptr) *initial_base = base;
  std::vector<float> out(size_t{o.steps} * qh * d), q(d);
  for (uint32_t s = 0; s < o.steps; ++s) {
    if (s > 0) {
      for (float& x : base) x += o.drift * nd(rng);
      for (uint32_t h = 0; h < o.kv_heads; ++h) Normalise({&base[size_t{h} * d], d}, sqrt_d);
    }
    for (uint32_t g = 0; g < qh; ++g) {
      const float* b = &base[size_t{g / o.group} * d];
      for (uint32_t i = 0; i < d; ++i) q[i] = b[i] + offset[size_t{g} * d + i];
      Normalise(q, o.query_scale * sqrt_d);
      std::copy(q.begin(), q.end(), out.begin() + static_cast<ptrdiff_t>((size_t{s} * qh + g) * d));
    }
  }
  return out;
}

// Needle clusters at distinct random positions away from the sink block, the recent tokens
// and each other (at least 4 blocks of 16 apart, so clusters land in different blocks).
std::vector<NeedleCluster> PlaceNeedles(const SparseSynthOptions& o, uint32_t h, std::mt19937_64& rng) {
  const uint32_t lo = 16, hi = o.tokens - o.recency_tokens - o.needle_tokens;
  std::uniform_int_distribution<uint32_t> pick(lo, hi);
  std::vector<NeedleCluster> out;
  while (out.size() < o.needle_clusters) {
    const uint32_t t = pick(rng);
    bool clash = false;
    for (const auto& n : out) clash |= (t + 64 > n.first_token && n.first_token + 64 > t);
    if (!clash) out.push_back({h, t, o.needle_tokens});
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first_token < b.first_token; });
  return out;
}

}  // namespace

Status SparseSynthOptions::Validate() const {
  if (kv_heads == 0 || group == 0 || tokens == 0 || head_dim == 0 || needle_tokens == 0) {
    return Status::InvalidArgument(fmt::format(
        "sparse synth: kv_heads={} group={} tokens={} head_dim={} needle_tokens={} (all must be >= 1)", kv_heads, group,
        tokens, head_dim, needle_tokens));
  }
  const uint64_t need = 2ull * recency_tokens + 64ull * needle_clusters * needle_tokens + 16;
  if (tokens < need) {
    return Status::InvalidArgument(fmt::format(
        "sparse synth: tokens={} is too few for {} needle clusters and {} recent tokens (need >= {})", tokens,
        needle_clusters, recency_tokens, need));
  }
  if (uint64_t{kv_heads} * tokens * head_dim > (uint64_t{1} << 32)) {
    return Status::InvalidArgument("sparse synth: kv_heads·tokens·head_dim exceeds 2^32 floats");
  }
  if (outlier_channels > head_dim) {
    return Status::InvalidArgument(fmt::format("sparse synth: {} outlier channels > head_dim {}", outlier_channels, head_dim));
  }
  if (!(ar_rho >= 0.0f && ar_rho < 1.0f)) return Status::InvalidArgument(fmt::format("sparse synth: rho={} not in [0, 1)", ar_rho));
  for (float x : {needle_strength, sink_strength, recency_strength, query_scale, drift, group_spread}) {
    if (!(x >= 0.0f) || !std::isfinite(x)) return Status::InvalidArgument("sparse synth: strengths, scale, drift and spread must be finite and >= 0");
  }
  return Status::Ok();
}

std::span<const float> SyntheticSequence::StepQueries(uint32_t step) const {
  const size_t n = size_t{options.q_heads()} * options.head_dim;
  return std::span<const float>(queries).subspan(step * n, n);
}

Result<std::vector<float>> GenerateDriftingQueries(const SparseSynthOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return DriftTrace(options, nullptr);
}

Result<SyntheticSequence> GenerateSparseSequence(const SparseSynthOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  const SparseSynthOptions& o = options;
  const uint32_t d = o.head_dim, L = o.tokens;
  SyntheticSequence seq;
  seq.options = o;
  std::vector<float> base;
  seq.queries = DriftTrace(o, &base);  // base = b_h(0), norm √d: û_h·√d

  std::mt19937_64 rng(StreamSeed(o.seed, kKeyStream));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  seq.keys.resize(size_t{o.kv_heads} * L * d);
  seq.values.resize(seq.keys.size());
  const float innovation = std::sqrt(1.0f - o.ar_rho * o.ar_rho);
  std::vector<float> bias(d), x(d);
  std::vector<uint32_t> channels(d);
  for (uint32_t h = 0; h < o.kv_heads; ++h) {
    std::iota(channels.begin(), channels.end(), 0u);
    std::shuffle(channels.begin(), channels.end(), rng);
    std::fill(bias.begin(), bias.end(), 0.0f);
    for (uint32_t c = 0; c < o.outlier_channels; ++c) bias[channels[c]] = o.outlier_bias;
    const float* u = &base[size_t{h} * d];  // √d·û_h
    for (float& v : x) v = nd(rng);
    for (uint32_t t = 0; t < L; ++t) {
      float* k = &seq.keys[(size_t{h} * L + t) * d];
      if (t > 0) {
        for (float& v : x) v = o.ar_rho * v + innovation * nd(rng);
      }
      for (uint32_t i = 0; i < d; ++i) k[i] = bias[i] + x[i];
      if (t == 0) {
        for (uint32_t i = 0; i < d; ++i) k[i] += o.sink_strength * u[i];
      }
      if (t + o.recency_tokens >= L) {
        const float ramp = o.recency_strength * float(t + o.recency_tokens + 1 - L) / float(o.recency_tokens);
        for (uint32_t i = 0; i < d; ++i) k[i] += ramp * u[i];
      }
    }
    for (const NeedleCluster& n : PlaceNeedles(o, h, rng)) {
      for (uint32_t t = n.first_token; t < n.first_token + n.tokens; ++t) {
        float* k = &seq.keys[(size_t{h} * L + t) * d];
        for (uint32_t i = 0; i < d; ++i) k[i] += o.needle_strength * u[i];
      }
      seq.needles.push_back(n);
    }
  }
  for (float& v : seq.values) v = nd(rng);
  return seq;
}

void TrueTokenMass(uint32_t kv_heads, uint32_t q_heads, uint32_t head_dim, uint32_t tokens,
                   std::span<const float> keys, std::span<const float> queries, std::span<double> token_mass) {
  const uint32_t group = q_heads / kv_heads, d = head_dim;
  const double scale = 1.0 / std::sqrt(double(d));
  std::vector<double> logit(tokens);
  std::fill(token_mass.begin(), token_mass.begin() + static_cast<ptrdiff_t>(size_t{kv_heads} * tokens), 0.0);
  for (uint32_t g = 0; g < q_heads; ++g) {
    const uint32_t h = g / group;
    const float* q = &queries[size_t{g} * d];
    double best = -std::numeric_limits<double>::infinity();
    for (uint32_t t = 0; t < tokens; ++t) {
      const float* k = &keys[(size_t{h} * tokens + t) * d];
      float s = 0;  // fp32 dot (vectorises); the softmax is in double
      for (uint32_t i = 0; i < d; ++i) s += q[i] * k[i];
      logit[t] = s * scale;
      best = std::max(best, logit[t]);
    }
    double z = 0;
    for (uint32_t t = 0; t < tokens; ++t) z += (logit[t] = std::exp(logit[t] - best));
    double* out = &token_mass[size_t{h} * tokens];
    for (uint32_t t = 0; t < tokens; ++t) out[t] += logit[t] / z / group;
  }
}

void TrueBlockMass(uint32_t kv_heads, uint32_t tokens, uint32_t block_tokens, std::span<const double> token_mass,
                   std::span<double> block_mass) {
  const uint32_t blocks = (tokens + block_tokens - 1) / block_tokens;
  for (uint32_t h = 0; h < kv_heads; ++h) {
    for (uint32_t b = 0; b < blocks; ++b) {
      double s = 0;
      for (uint32_t t = b * block_tokens; t < std::min(tokens, (b + 1) * block_tokens); ++t) {
        s += token_mass[size_t{h} * tokens + t];
      }
      block_mass[size_t{h} * blocks + b] = s;
    }
  }
}

}  // namespace kvtier::synth
