// The tensor-core Quest score kernel (QuestScoreAlgorithm::kTensorCore) at the ends of the
// exponent range of its fixed-point queries, against its CPU model QuestScoresFixedPoint bit for
// bit. (Its checks on the selection cases — the model, the tolerance against the double
// reference, the selection, PDL, the pitched layout — run with the other score kernels' in
// quest_select_gpu_test.cc.) Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "kernels/cuda_test_support.h"
#include "quest_select.cuh"
#include "quest_select_gpu_cases.h"
#include "reference/quest_select.h"

namespace kvtier::kernels {
namespace {

using ::kvtier::testing::DeviceArray;
using quest_gpu_test::Batch;
using quest_gpu_test::Build;
using quest_gpu_test::Case;
using quest_gpu_test::kMax;
using quest_gpu_test::kSum;
using quest_gpu_test::P;
using quest_gpu_test::SameScore;

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

// The tensor-core kernel's power-of-two scaling (two exact factors each way, no ldexpf) at
// the ends of the exponent range: fp32 queries scaled by 2^-125 (many of them subnormal),
// 2^-100, 2^60 and 2^100, one head made non-finite in the last case. Bit for bit
// QuestScoresFixedPoint's scores, NaN where the model has NaN.
TEST(QuestSelectGpuTensorCore, FollowsTheModelAtTheEndsOfTheExponentRange) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  for (GqaCombine combine : {kMax, kSum}) {
    const Case c{8, 2, 128, {300, 77}, P(256, 1, combine)};
    Batch b = Build(c, 29);
    const auto requests = static_cast<uint32_t>(c.blocks.size());
    for (float factor : {std::ldexp(1.0f, -125), std::ldexp(1.0f, -100), std::ldexp(1.0f, 60), std::ldexp(1.0f, 100)}) {
      std::vector<float> queries = b.queries;
      for (float& x : queries) x *= factor;
      if (factor > 1e30f) queries[5 * c.d + 3] = std::numeric_limits<float>::infinity();  // request 0, head 5
      DeviceArray<float> q(queries), scales(b.scales), scores(b.scales.size());
      DeviceArray<int8_t> bounds(b.bounds);
      DeviceArray<uint32_t> offsets(b.block_offsets);
      ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));
      const QuestSelectDeviceArgs a{.requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads,
                                    .head_dim = c.d, .max_blocks = 300, .params = c.params,
                                    .query_type = QuestQueryType::kFloat32, .queries = q.p,
                                    .block_offsets = offsets.p, .bounds = bounds.p, .scales = scales.p,
                                    .scores = scores.p, .score_algorithm = QuestScoreAlgorithm::kTensorCore};
      ASSERT_CUDA(LaunchQuestScores(a, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      const std::vector<float> got = scores.Get();
      size_t nans = 0;
      for (uint32_t r = 0; r < requests; ++r) {
        const uint32_t n = c.blocks[r];
        const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d, .blocks = n};
        const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads, count = size_t{c.kv_heads} * n;
        std::vector<float> model(count);
        QuestScoresFixedPoint(shape, combine,
                              std::span<const float>(&queries[size_t{r} * c.q_heads * c.d], size_t{c.q_heads} * c.d),
                              std::span<const int8_t>(&b.bounds[slice0 * 2 * c.d], count * 2 * c.d),
                              std::span<const float>(&b.scales[slice0], count), model);
        for (size_t i = 0; i < count; ++i) {
          nans += std::isnan(model[i]);
          ASSERT_TRUE(SameScore(got[slice0 + i], model[i]))
              << "factor " << factor << " combine " << int(combine) << " request " << r << " slice " << i << ": gpu "
              << got[slice0 + i] << " model " << model[i];
        }
      }
      EXPECT_EQ(nans, factor > 1e30f ? size_t{300} : 0u) << "the infinite query head's KV head only";
    }
  }
}

}  // namespace
}  // namespace kvtier::kernels
