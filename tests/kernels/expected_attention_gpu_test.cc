// The CUDA Expected Attention scorer against its CPU reference
// (kernels/reference/expected_attention.h), on fresh random data with a poisoned output and
// workspace: fp32, bf16 and fp16 keys/values (the reference gets the same rounded values as
// fp32), the exact covariance term (fp32 SIMT; bf16/fp16 tensor cores), the low-rank form
// (the reference scores with the same LowRankCovariance factors) and the mean term alone;
// every head_dim the kernel supports, GQA groups 1 to 8 (query heads split over several
// CTAs when Σ̄ does not fit shared memory), sinks spanning blocks, partial last tiles and
// blocks, CTAs looping over several tiles. Relative error <= 1e-3. The precomputed value-norm
// path (LaunchValueNorms, then the scorer without values): the norms against the CPU
// ValueNorms, per-block strided launches against one whole-sequence launch, and its block
// scores against both the reference and the values path of the same data. The streaming
// logits pass (bf16/fp16 low-rank and mean-only) against the reference and the cp.async-ring
// pass; each case launched twice on the same workspace (same bits). Skips without a device.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "expected_attention.cuh"
#include "kernels/cuda_test_support.h"
#include "reference/expected_attention.h"
#include "reference/low_rank_covariance.h"

namespace kvtier::kernels {
namespace {

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

struct DeviceBytes {
  void* p = nullptr;
  DeviceBytes(const void* host, size_t bytes) {
    if (cudaMalloc(&p, bytes) == cudaSuccess) (void)cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice);
  }
  template <class T>
  explicit DeviceBytes(const std::vector<T>& host) : DeviceBytes(host.data(), host.size() * sizeof(T)) {}
  ~DeviceBytes() { cudaFree(p); }
  DeviceBytes(const DeviceBytes&) = delete;
  DeviceBytes& operator=(const DeviceBytes&) = delete;
  float* f() const { return static_cast<float*>(p); }
};

// Rounds `x` to `dtype` in place and returns the device representation's bytes.
std::vector<unsigned char> RoundTo(KvDType dtype, std::vector<float>& x) {
  std::vector<unsigned char> bytes;
  if (dtype == KvDType::kFp32) {
    bytes.resize(x.size() * 4);
    std::memcpy(bytes.data(), x.data(), bytes.size());
    return bytes;
  }
  bytes.resize(x.size() * 2);
  for (size_t i = 0; i < x.size(); ++i) {
    uint16_t raw;
    if (dtype == KvDType::kBf16) {
      const __nv_bfloat16 h = __float2bfloat16_rn(x[i]);
      x[i] = __bfloat162float(h);
      std::memcpy(&raw, &h, 2);
    } else {
      const __half h = __float2half_rn(x[i]);
      x[i] = __half2float(h);
      std::memcpy(&raw, &h, 2);
    }
    std::memcpy(&bytes[i * 2], &raw, 2);
  }
  return bytes;
}

struct Case {
  uint32_t q_heads, kv_heads, head_dim, tokens, block_tokens, sinks;
  KvDType dtype = KvDType::kFp32;
  uint32_t rank = 0;  // 0: exact covariance term
  bool covariance = true, vnorm = true;
  bool precomputed_norms = false;  // also score from LaunchValueNorms output, values not passed
  uint32_t stages = 0;             // ExpectedAttentionDeviceArgs::logits_stages
  LogitsPass pass = LogitsPass::kAuto;
};

const char* Name(KvDType t) { return t == KvDType::kFp32 ? "fp32" : (t == KvDType::kBf16 ? "bf16" : "fp16"); }

// Checks the scores against the reference (and the norms path against both); the block scores
// of the first launch go to `scores` when given.
void RunCase(const Case& c, uint32_t seed, std::vector<float>* scores = nullptr) {
  SCOPED_TRACE(::testing::Message() << Name(c.dtype) << " rank=" << c.rank << " cov=" << c.covariance
                                    << " vnorm=" << c.vnorm << " q=" << c.q_heads << " kv=" << c.kv_heads
                                    << " d=" << c.head_dim << " tokens=" << c.tokens << " block=" << c.block_tokens
                                    << " sinks=" << c.sinks << " precomputed_norms=" << c.precomputed_norms
                                    << " stages=" << c.stages << " ring=" << (c.pass == LogitsPass::kRing));
  ExpectedAttentionShape s{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.head_dim,
                           .tokens = c.tokens, .block_tokens = c.block_tokens, .sink_tokens = c.sinks};
  ExpectedAttentionParams p{.position = c.tokens, .future = 512, .rope_theta = 500000, .epsilon = 0.02f,
                            .use_covariance = c.covariance, .use_value_norm = c.vnorm, .covariance_rank = c.rank};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const size_t d = c.head_dim;
  std::vector<float> keys(size_t{c.kv_heads} * c.tokens * d), values(keys.size());
  for (float& x : keys) x = nd(rng);
  for (float& x : values) x = nd(rng);
  const std::vector<unsigned char> key_bytes = RoundTo(c.dtype, keys), value_bytes = RoundTo(c.dtype, values);
  const uint32_t n = 32;
  std::vector<float> queries(size_t{n} * c.q_heads * d);
  for (size_t i = 0; i < queries.size(); ++i) queries[i] = nd(rng) + 0.3f * static_cast<float>((i / d) % 4);
  std::vector<float> mean(c.q_heads * d), cov(c.q_heads * d * d), rm(mean.size()), rc(cov.size());
  std::vector<float> cbar(d / 2), sbar(d / 2);
  QueryMoments(queries, n, c.q_heads, c.head_dim, mean, cov);
  AveragedRope(c.head_dim, p, cbar, sbar);
  RotateQueryMoments(c.q_heads, c.head_dim, cbar, sbar, mean, cov, rm, rc);
  std::vector<float> factors(size_t{c.q_heads} * std::max(c.rank, 1u) * d), residual(size_t{c.q_heads} * d);
  std::vector<float> want(size_t{c.kv_heads} * s.blocks()), token(size_t{c.kv_heads} * c.tokens);
  if (c.covariance && c.rank > 0) {
    LowRankCovariance(c.q_heads, c.head_dim, c.rank, rc, factors, residual);
    ExpectedAttentionTokenScoresLowRank(s, p, keys, values, rm, factors, residual, token);
  } else {
    ExpectedAttentionTokenScores(s, p, keys, values, rm, rc, token);
  }
  SumBlockScores(s, token, want);

  DeviceBytes dk(key_bytes), dv(value_bytes), dm(rm), dc(rc), df(factors), dr(residual);
  std::vector<float> poison(want.size(), std::nanf(""));
  DeviceBytes out(poison);
  const size_t ws_bytes = ExpectedAttentionWorkspaceBytes(s);
  void* ws = nullptr;
  ASSERT_CUDA(cudaMalloc(&ws, ws_bytes));
  ASSERT_CUDA(cudaMemset(ws, 0xA5, ws_bytes));
  ExpectedAttentionDeviceArgs a{.shape = s, .epsilon = p.epsilon, .use_covariance = c.covariance,
                                .use_value_norm = c.vnorm, .kv_dtype = c.dtype, .covariance_rank = c.rank,
                                .keys = dk.p, .values = dv.p, .rotated_mean = dm.f(), .rotated_cov = dc.f(),
                                .cov_factors = df.f(), .cov_residual = dr.f(), .workspace = ws,
                                .block_scores = out.f(), .logits_pass = c.pass, .logits_stages = c.stages};
  ASSERT_CUDA(LaunchExpectedAttention(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> got(want.size());
  ASSERT_CUDA(cudaMemcpy(got.data(), out.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::abs(got[i] - want[i]), 1e-3 * std::abs(want[i]) + 1e-12)
        << "block score " << i << " got " << got[i] << " want " << want[i];
  }
  // Again on the used workspace and output (the score pass's best score and CTA ticket must
  // start from zero every launch): the same bits.
  ASSERT_CUDA(LaunchExpectedAttention(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> again(want.size());
  ASSERT_CUDA(cudaMemcpy(again.data(), out.p, again.size() * sizeof(float), cudaMemcpyDeviceToHost));
  ASSERT_EQ(std::memcmp(again.data(), got.data(), got.size() * sizeof(float)), 0) << "second launch differs";
  if (scores != nullptr) *scores = got;
  if (!c.precomputed_norms) {
    cudaFree(ws);
    return;
  }
  // The norms path: ‖v‖ from LaunchValueNorms into a poisoned array, the scorer without values
  // (and with a freshly poisoned workspace and output).
  const uint32_t rows = c.kv_heads * c.tokens;
  std::vector<float> norms_want(rows), norms_poison(rows, std::nanf(""));
  ValueNorms(rows, c.head_dim, values, norms_want);
  DeviceBytes dn(norms_poison);
  ASSERT_CUDA(LaunchValueNorms({.dtype = c.dtype, .head_dim = c.head_dim, .heads = c.kv_heads, .tokens = c.tokens,
                                .values = dv.p, .values_head_stride = size_t{c.tokens} * d, .norms = dn.f(),
                                .norms_head_stride = c.tokens},
                               nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> norms_got(rows);
  ASSERT_CUDA(cudaMemcpy(norms_got.data(), dn.p, rows * sizeof(float), cudaMemcpyDeviceToHost));
  for (uint32_t i = 0; i < rows; ++i) {
    ASSERT_LE(std::abs(norms_got[i] - norms_want[i]), 1e-5 * norms_want[i] + 1e-30)
        << "value norm " << i << " got " << norms_got[i] << " want " << norms_want[i];
  }
  std::vector<float> want_n(want.size());
  if (c.covariance && c.rank > 0) {
    ExpectedAttentionTokenScoresLowRankWithNorms(s, p, keys, norms_want, rm, factors, residual, token);
  } else {
    ExpectedAttentionTokenScoresWithNorms(s, p, keys, norms_want, rm, rc, token);
  }
  SumBlockScores(s, token, want_n);
  ASSERT_CUDA(cudaMemset(ws, 0xA5, ws_bytes));
  ASSERT_CUDA(cudaMemcpy(out.p, poison.data(), poison.size() * sizeof(float), cudaMemcpyHostToDevice));
  a.values = nullptr;
  a.value_norms = dn.f();
  ASSERT_CUDA(LaunchExpectedAttention(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> got_n(want.size());
  ASSERT_CUDA(cudaMemcpy(got_n.data(), out.p, got_n.size() * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(ws);
  for (size_t i = 0; i < got_n.size(); ++i) {
    ASSERT_LE(std::abs(got_n[i] - want_n[i]), 1e-3 * std::abs(want_n[i]) + 1e-12)
        << "norms path: block score " << i << " got " << got_n[i] << " want " << want_n[i];
    ASSERT_LE(std::abs(got_n[i] - got[i]), 1e-5 * std::abs(got[i]) + 1e-12)
        << "norms path vs values path: block score " << i << " norms " << got_n[i] << " values " << got[i];
  }
}

constexpr KvDType kDtypes[] = {KvDType::kFp32, KvDType::kBf16, KvDType::kFp16};

class ExpectedAttentionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceForEveryHeadDimAndKeyType) {
  uint32_t seed = 1;
  for (KvDType t : kDtypes)
    for (uint32_t d : {16u, 32u, 64u, 128u}) {
      RunCase({8, 2, d, 300, 16, 4, t, 0}, seed++);
      RunCase({8, 2, d, 300, 16, 4, t, 8}, seed++);
    }
}

// No device needed: the defaults docs/scoring.md "Default" states for the device arguments.
TEST(ExpectedAttentionDeviceArgsDefaults, AreRankSixteenAndTheAutomaticPass) {
  const ExpectedAttentionDeviceArgs a;
  EXPECT_EQ(a.covariance_rank, kDefaultCovarianceRank);
  EXPECT_EQ(a.covariance_rank, 16u);
  EXPECT_EQ(a.covariance_rank, ExpectedAttentionParams{}.covariance_rank);  // CPU reference agrees
  EXPECT_TRUE(a.use_covariance);
  EXPECT_TRUE(a.use_value_norm);
  EXPECT_EQ(a.logits_pass, LogitsPass::kAuto);
  EXPECT_EQ(a.value_norms, nullptr);  // the caller opts in to key-only by passing its norms
}

TEST_F(ExpectedAttentionGpuTest, DefaultRankWithPrecomputedNormsMatchesReference) {
  // The configuration docs/scoring.md recommends for an engine: covariance_rank =
  // DeviceCovarianceRank(kDefaultCovarianceRank, d) (16; the exact term at d = 16), bf16/fp16
  // keys, value norms precomputed (the scores also checked against the values path).
  uint32_t seed = 700;
  for (KvDType t : {KvDType::kBf16, KvDType::kFp16})
    for (uint32_t d : {16u, 32u, 64u, 128u}) {
      const uint32_t rank = DeviceCovarianceRank(kDefaultCovarianceRank, d);
      ASSERT_EQ(rank, d == 16 ? 0u : 16u);
      RunCase({32, 8, d, 1000, 16, 4, t, rank, true, true, true}, seed++);
    }
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceWithGqaSinksAndPartialBlocks) {
  uint32_t seed = 100;
  for (KvDType t : kDtypes)
    for (uint32_t rank : {0u, 16u})
      for (const Case& shape : {Case{32, 8, 128, 1000, 16, 4}, Case{4, 4, 64, 65, 16, 20}, Case{6, 1, 128, 17, 4, 0},
                                Case{8, 8, 32, 3, 16, 4}, Case{64, 8, 128, 700, 16, 4}, Case{16, 2, 64, 130, 16, 4}}) {
        Case c = shape;
        c.dtype = t;
        c.rank = rank;
        RunCase(c, seed++);
      }
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceWhenCtasLoopOverManyTiles) {
  // 40000 keys = 625 tiles of one KV head: more than one wave of CTAs, so each loops.
  RunCase({4, 1, 128, 40000, 16, 4, KvDType::kBf16, 0}, 201);
  RunCase({4, 1, 128, 40000, 16, 4, KvDType::kBf16, 32}, 202);
  RunCase({4, 1, 128, 40000, 16, 4, KvDType::kFp32, 16}, 203);
  RunCase({4, 1, 128, 40000, 16, 4, KvDType::kFp16, 0}, 204);
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceAtFullRankAndAtRankEight) {
  RunCase({8, 2, 64, 500, 16, 4, KvDType::kBf16, 64}, 301);
  RunCase({8, 2, 128, 500, 16, 4, KvDType::kFp16, 128}, 302);
  RunCase({8, 1, 128, 500, 16, 4, KvDType::kBf16, 8}, 303);
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceWithoutCovarianceOrValueNorm) {
  uint32_t seed = 400;
  for (KvDType t : kDtypes) {
    RunCase({8, 2, 128, 500, 16, 4, t, 0, false, true}, seed++);
    RunCase({8, 2, 128, 500, 16, 4, t, 0, true, false}, seed++);
    RunCase({8, 2, 128, 500, 16, 4, t, 16, true, false}, seed++);
  }
}

TEST_F(ExpectedAttentionGpuTest, PrecomputedValueNormsMatchTheValuesPath) {
  uint32_t seed = 500;
  for (KvDType t : kDtypes) {
    for (uint32_t d : {16u, 32u, 64u, 128u}) {
      RunCase({8, 2, d, 300, 16, 4, t, 0, true, true, true}, seed++);
      RunCase({8, 2, d, 300, 16, 4, t, 8, true, true, true}, seed++);
    }
    RunCase({8, 2, 128, 500, 16, 4, t, 0, false, true, true}, seed++);               // mean only
    RunCase({32, 8, 128, 1000, 16, 4, t, 16, true, true, true}, seed++);             // Llama-3-8B heads
    RunCase({6, 1, 128, 17, 4, 0, t, 0, true, true, true}, seed++);                  // tiny, no sinks
    RunCase({4, 1, 128, 40000, 16, 4, t, t == KvDType::kFp32 ? 16u : 0u, true, true, true}, seed++);  // looping CTAs
  }
}

TEST_F(ExpectedAttentionGpuTest, LogitsRingDepthDoesNotChangeTheScores) {
  // The tensor-core logits pass with 2, 3 and 4 key tiles in its cp.async ring, and the
  // automatic depth: each against the reference, and bit-equal to double buffering (same
  // arithmetic in the same order). Shapes: CTAs looping over many tiles (200000 keys of one
  // KV head at d = 32: ~8 tiles per CTA, the ring wraps), fewer tiles per CTA than ring slots (100 keys = 2 tiles), Llama-3-8B heads, a
  // group whose Σ̄ does not fit one CTA (exact, group 8, d = 128).
  uint32_t seed = 700;
  for (KvDType t : kDtypes)
    for (uint32_t rank : {0u, 8u, 1000u})  // 1000: mean only
      for (const Case& shape : {Case{4, 1, 32, 200000, 16, 4}, Case{8, 2, 64, 100, 16, 4}, Case{32, 8, 128, 1000, 16, 4},
                                Case{64, 8, 128, 700, 16, 4}}) {
        if (t == KvDType::kFp32 && rank == 0) continue;  // the fp32 SIMT kernel: no ring
        Case c = shape;
        c.dtype = t;
        c.covariance = rank != 1000;
        c.rank = rank == 1000 ? 0 : rank;
        c.pass = LogitsPass::kRing;  // kAuto streams 16-bit low-rank / mean-only keys (no ring)
        std::vector<float> base;
        c.stages = 2;
        RunCase(c, seed, &base);
        for (uint32_t stages : {3u, 4u, 0u}) {
          c.stages = stages;
          std::vector<float> got;
          RunCase(c, seed, &got);
          ASSERT_EQ(got.size(), base.size());
          ASSERT_EQ(std::memcmp(got.data(), base.data(), got.size() * sizeof(float)), 0)
              << Name(t) << " rank " << rank << " tokens " << c.tokens << ": " << stages << " stages vs 2";
        }
        ++seed;
      }
}

TEST_F(ExpectedAttentionGpuTest, StreamingPassMatchesReferenceAndRingPass) {
  // The streaming logits pass (kAuto for bf16/fp16 keys with the low-rank or mean-only term)
  // against the reference and against the cp.async-ring pass on the same data: every head_dim
  // (16-byte and 8-byte key chunks), ranks 8 / 16 / d and mean only, heads per CTA 1, 2, 3
  // (padded to 4), 4, 6 (padded to 8) and 8, group 8 at rank d split over two CTAs, partial
  // m-tiles, sinks beyond the first m-tile, warps looping over many m-tiles, the values path
  // (‖v‖ by LaunchValueNorms first) and precomputed norms.
  uint32_t seed = 900;
  for (KvDType t : {KvDType::kBf16, KvDType::kFp16})
    for (uint32_t rank : {1000u, 8u, 16u, 2000u})  // 1000: mean only; 2000: rank = head_dim
      for (const Case& shape :
           {Case{8, 2, 16, 300, 16, 4}, Case{8, 2, 32, 301, 16, 4}, Case{8, 2, 64, 333, 16, 4},
            Case{32, 8, 128, 1000, 16, 4}, Case{3, 1, 128, 77, 4, 20}, Case{6, 1, 64, 129, 16, 0},
            Case{2, 2, 128, 15, 16, 4}, Case{16, 2, 128, 260, 16, 4}, Case{12, 2, 32, 100, 8, 17},
            Case{4, 1, 32, 200000, 16, 4}}) {
        Case c = shape;
        c.dtype = t;
        c.covariance = rank != 1000;
        c.rank = rank == 1000 ? 0 : (rank == 2000 ? c.head_dim : rank);
        if (c.rank > c.head_dim) continue;
        c.precomputed_norms = (seed % 2) == 0;
        std::vector<float> stream, ring;
        c.pass = LogitsPass::kAuto;
        RunCase(c, seed, &stream);
        c.pass = LogitsPass::kRing;
        RunCase(c, seed, &ring);
        ASSERT_EQ(stream.size(), ring.size());
        for (size_t i = 0; i < stream.size(); ++i) {
          ASSERT_LE(std::abs(stream[i] - ring[i]), 1e-4 * std::abs(ring[i]) + 1e-12)
              << Name(t) << " rank " << c.rank << " d " << c.head_dim << " tokens " << c.tokens << " block " << i
              << ": streaming " << stream[i] << " ring " << ring[i];
        }
        ++seed;
      }
}

TEST_F(ExpectedAttentionGpuTest, ValueNormsPerWrittenBlockEqualOneWholeSequenceLaunch) {
  // A sequence of 8 KV heads × 200 tokens (capacity 208): norms written block by block (16
  // tokens, the last block partial) into the sequence layout must equal one launch over the
  // whole sequence, bit for bit, and leave the capacity's tail untouched.
  std::mt19937 rng(600);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (KvDType t : kDtypes)
    for (uint32_t d : {16u, 64u, 128u}) {
      SCOPED_TRACE(::testing::Message() << Name(t) << " d=" << d);
      const uint32_t heads = 8, tokens = 200, capacity = 208, bt = 16;
      std::vector<float> values(size_t{heads} * capacity * d);
      for (float& x : values) x = nd(rng);
      const std::vector<unsigned char> bytes = RoundTo(t, values);
      const size_t elem = t == KvDType::kFp32 ? 4 : 2;
      DeviceBytes dv(bytes);
      std::vector<float> poison(size_t{heads} * capacity, std::nanf(""));
      DeviceBytes whole(poison), blocks(poison);
      ASSERT_CUDA(LaunchValueNorms({.dtype = t, .head_dim = d, .heads = heads, .tokens = tokens, .values = dv.p,
                                    .values_head_stride = size_t{capacity} * d, .norms = whole.f(),
                                    .norms_head_stride = capacity},
                                   nullptr));
      for (uint32_t b0 = 0; b0 < tokens; b0 += bt) {
        ASSERT_CUDA(LaunchValueNorms({.dtype = t, .head_dim = d, .heads = heads, .tokens = std::min(bt, tokens - b0),
                                      .values = static_cast<const char*>(dv.p) + size_t{b0} * d * elem,
                                      .values_head_stride = size_t{capacity} * d, .norms = blocks.f() + b0,
                                      .norms_head_stride = capacity},
                                     nullptr));
      }
      ASSERT_CUDA(cudaDeviceSynchronize());
      std::vector<float> a(poison.size()), b(poison.size()), want(size_t{heads} * capacity);
      ASSERT_CUDA(cudaMemcpy(a.data(), whole.p, a.size() * sizeof(float), cudaMemcpyDeviceToHost));
      ASSERT_CUDA(cudaMemcpy(b.data(), blocks.p, b.size() * sizeof(float), cudaMemcpyDeviceToHost));
      ValueNorms(heads * capacity, d, values, want);
      for (uint32_t h = 0; h < heads; ++h)
        for (uint32_t i = 0; i < capacity; ++i) {
          const size_t k = size_t{h} * capacity + i;
          if (i >= tokens) {
            ASSERT_TRUE(std::isnan(a[k]) && std::isnan(b[k])) << "head " << h << " slot " << i << " written";
            continue;
          }
          ASSERT_EQ(std::memcmp(&a[k], &b[k], sizeof(float)), 0) << "head " << h << " token " << i;
          ASSERT_LE(std::abs(a[k] - want[k]), 1e-5 * want[k]) << "head " << h << " token " << i;
        }
    }
}

TEST_F(ExpectedAttentionGpuTest, RejectsUnsupportedArguments) {
  alignas(16) float dummy[8] = {};
  ExpectedAttentionDeviceArgs a;
  a.shape = {.q_heads = 2, .kv_heads = 1, .head_dim = 96, .tokens = 16};
  a.keys = a.values = dummy;
  a.rotated_mean = a.rotated_cov = a.cov_factors = a.cov_residual = dummy;
  a.block_scores = dummy;
  a.workspace = dummy;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // head_dim 96
  a.shape.head_dim = 64;
  a.covariance_rank = 12;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // not a multiple of 8
  a.covariance_rank = 72;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // above head_dim
  a.covariance_rank = 8;
  a.cov_residual = nullptr;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // low-rank without ρ
  a.cov_residual = dummy;
  a.keys = reinterpret_cast<const char*>(dummy) + 4;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // keys not 16-B aligned
  a.keys = dummy;
  a.kv_dtype = static_cast<KvDType>(7);
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);
  a.kv_dtype = KvDType::kFp32;
  a.values = nullptr;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // value norm: neither values nor norms
  a.value_norms = reinterpret_cast<const float*>(reinterpret_cast<const char*>(dummy) + 2);
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // norms not 4-B aligned
  a.value_norms = nullptr;
  a.values = dummy;
  for (uint32_t stages : {1u, 5u}) {
    a.logits_stages = stages;
    EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue) << "logits_stages " << stages;
  }
  a.logits_stages = 0;
  a.logits_pass = static_cast<LogitsPass>(2);
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);  // unknown logits pass

  ValueNormsArgs v{.dtype = KvDType::kBf16, .head_dim = 96, .heads = 1, .tokens = 1, .values = dummy,
                   .values_head_stride = 96, .norms = dummy, .norms_head_stride = 1};
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);  // head_dim 96
  v.head_dim = 16;
  v.values_head_stride = 4;  // 8 bytes of bf16
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);  // head stride not 16-B
  v.values_head_stride = 16;
  v.values = reinterpret_cast<const char*>(dummy) + 8;
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);  // values not 16-B aligned
  v.values = dummy;
  v.norms = nullptr;
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);
  v.norms = dummy;
  v.tokens = 0;
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);
  v.tokens = 1;
  v.dtype = static_cast<KvDType>(7);
  EXPECT_EQ(LaunchValueNorms(v, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvtier::kernels
