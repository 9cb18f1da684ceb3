// The CUDA Expected Attention scorer against its CPU reference
// (kernels/reference/expected_attention.h), on fresh random data with a poisoned output and
// workspace: every head_dim the kernel supports, GQA groups, sinks spanning blocks, a
// partial last tile and block, and the covariance / value-norm switches. Relative error
// <= 1e-3. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <tuple>
#include <vector>

#include "expected_attention.cuh"
#include "kernels/cuda_test_support.h"
#include "reference/expected_attention.h"

namespace kvtier::kernels {
namespace {

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

struct DeviceArray {
  float* p = nullptr;
  explicit DeviceArray(const std::vector<float>& host) {
    if (cudaMalloc(&p, host.size() * sizeof(float)) == cudaSuccess) {
      (void)cudaMemcpy(p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice);
    }
  }
  ~DeviceArray() { cudaFree(p); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
};

struct Case {
  uint32_t q_heads, kv_heads, head_dim, tokens, block_tokens, sinks;
  bool covariance, vnorm;
};

void RunCase(const Case& c, uint32_t seed) {
  ExpectedAttentionShape s{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.head_dim,
                           .tokens = c.tokens, .block_tokens = c.block_tokens, .sink_tokens = c.sinks};
  ExpectedAttentionParams p{.position = c.tokens, .future = 512, .rope_theta = 500000, .epsilon = 0.02f,
                            .use_covariance = c.covariance, .use_value_norm = c.vnorm};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const size_t d = c.head_dim;
  std::vector<float> keys(size_t{c.kv_heads} * c.tokens * d), values(keys.size());
  for (float& x : keys) x = nd(rng);
  for (float& x : values) x = nd(rng);
  const uint32_t n = 32;
  std::vector<float> queries(size_t{n} * c.q_heads * d);
  for (size_t i = 0; i < queries.size(); ++i) queries[i] = nd(rng) + 0.3f * static_cast<float>((i / d) % 4);
  std::vector<float> mean(c.q_heads * d), cov(c.q_heads * d * d), rm(mean.size()), rc(cov.size());
  std::vector<float> cbar(d / 2), sbar(d / 2);
  QueryMoments(queries, n, c.q_heads, c.head_dim, mean, cov);
  AveragedRope(c.head_dim, p, cbar, sbar);
  RotateQueryMoments(c.q_heads, c.head_dim, cbar, sbar, mean, cov, rm, rc);
  std::vector<float> want(size_t{c.kv_heads} * s.blocks()), token(size_t{c.kv_heads} * c.tokens);
  ExpectedAttentionTokenScores(s, p, keys, values, rm, rc, token);
  SumBlockScores(s, token, want);

  DeviceArray dk(keys), dv(values), dm(rm), dc(rc);
  std::vector<float> poison(want.size(), std::nanf(""));
  DeviceArray out(poison);
  const size_t ws_bytes = ExpectedAttentionWorkspaceBytes(s);
  void* ws = nullptr;
  ASSERT_CUDA(cudaMalloc(&ws, ws_bytes));
  ASSERT_CUDA(cudaMemset(ws, 0xA5, ws_bytes));
  ExpectedAttentionDeviceArgs a{.shape = s, .epsilon = p.epsilon, .use_covariance = c.covariance,
                                .use_value_norm = c.vnorm, .keys = dk.p, .values = dv.p, .rotated_mean = dm.p,
                                .rotated_cov = dc.p, .workspace = ws, .block_scores = out.p};
  ASSERT_CUDA(LaunchExpectedAttention(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  std::vector<float> got(want.size());
  ASSERT_CUDA(cudaMemcpy(got.data(), out.p, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  cudaFree(ws);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::abs(got[i] - want[i]), 1e-3 * std::abs(want[i]) + 1e-12)
        << "block score " << i << " got " << got[i] << " want " << want[i];
  }
}

class ExpectedAttentionGpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceForEveryHeadDim) {
  uint32_t seed = 1;
  for (uint32_t d : {16u, 32u, 64u, 128u}) {
    SCOPED_TRACE(::testing::Message() << "d=" << d);
    RunCase({8, 2, d, 300, 16, 4, true, true}, seed++);
  }
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceWithGqaSinksAndPartialBlocks) {
  uint32_t seed = 10;
  for (const Case& c : {Case{32, 8, 128, 1000, 16, 4, true, true}, Case{4, 4, 64, 65, 16, 20, true, true},
                        Case{6, 1, 128, 17, 4, 0, true, true}, Case{8, 8, 32, 3, 16, 4, true, true}}) {
    SCOPED_TRACE(::testing::Message() << "q=" << c.q_heads << " kv=" << c.kv_heads << " tokens=" << c.tokens
                                      << " sinks=" << c.sinks);
    RunCase(c, seed++);
  }
}

TEST_F(ExpectedAttentionGpuTest, MatchesReferenceWithoutCovarianceOrValueNorm) {
  RunCase({8, 2, 128, 500, 16, 4, false, true}, 21);
  RunCase({8, 2, 128, 500, 16, 4, true, false}, 22);
}

TEST_F(ExpectedAttentionGpuTest, RejectsUnsupportedHeadDim) {
  ExpectedAttentionDeviceArgs a;
  a.shape = {.q_heads = 2, .kv_heads = 1, .head_dim = 96, .tokens = 16};
  float dummy = 0;
  a.keys = a.values = a.rotated_mean = a.rotated_cov = &dummy;
  a.block_scores = &dummy;
  a.workspace = &dummy;
  EXPECT_EQ(LaunchExpectedAttention(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvtier::kernels
