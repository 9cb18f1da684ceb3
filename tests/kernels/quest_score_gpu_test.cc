// The tensor-core Quest score kernel (QuestScoreAlgorithm::kTensorCore) at the ends of the
// exponent range of its fixed-point queries, against its CPU model QuestScoresFixedPoint bit for
// bit. (Its checks on the selection cases — the model, the tolerance against the double
// reference, the selection, PDL, the pitched layout — run with the other score kernels' in
// quest_select_gpu_test.cc.) And its early_metadata read behind a kernel that writes the
// queries. Skips without a CUDA device.
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

// QuestScoresFixedPoint's scores of request r of batch `b` (built from case `c`) for `queries`
// (all requests' queries, b.queries or a scaled copy): [kv_heads][blocks_r].
std::vector<float> ModelScores(const Case& c, const Batch& b, const std::vector<float>& queries, uint32_t r,
                               GqaCombine combine) {
  const uint32_t n = c.blocks[r];
  const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d, .blocks = n};
  const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads, count = size_t{c.kv_heads} * n;
  std::vector<float> model(count);
  QuestScoresFixedPoint(shape, combine,
                        std::span<const float>(&queries[size_t{r} * c.q_heads * c.d], size_t{c.q_heads} * c.d),
                        std::span<const int8_t>(&b.bounds[slice0 * 2 * c.d], count * 2 * c.d),
                        std::span<const float>(&b.scales[slice0], count), model);
  return model;
}

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
        const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads;
        const std::vector<float> model = ModelScores(c, b, queries, r, combine);
        for (size_t i = 0; i < model.size(); ++i) {
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

// The plans whose CTAs get 3–4 tiles take 3 tile buffers (round 15): batches of 8 requests × 8
// KV heads at 1536–2560 blocks (on an H100 2048 does), each bit for bit QuestScoresFixedPoint's
// scores, as the 2-buffer launches are.
TEST(QuestSelectGpuTensorCore, ThreeBufferPlansFollowTheModel) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  int sms = 0;
  ASSERT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
  uint32_t three = 0;
  for (uint32_t blocks : {1536u, 2048u, 2560u}) {
    const Case c{32, 8, 128, std::vector<uint32_t>(8, blocks), P(2048, 1, kMax)};
    const Batch b = Build(c, 53 + blocks);
    DeviceArray<float> q(b.queries), scales(b.scales), scores(b.scales.size());
    DeviceArray<int8_t> bounds(b.bounds);
    DeviceArray<uint32_t> offsets(b.block_offsets);
    ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));
    const QuestSelectDeviceArgs a{.requests = 8, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d,
                                  .max_blocks = blocks, .params = c.params, .query_type = QuestQueryType::kFloat32,
                                  .queries = q.p, .block_offsets = offsets.p, .bounds = bounds.p, .scales = scales.p,
                                  .scores = scores.p};
    QuestScorePlan plan;
    ASSERT_CUDA(PlanQuestScores(a, &plan));
    ASSERT_TRUE(plan.tensor_core);
    ASSERT_TRUE(plan.stages == 2 || plan.stages == 3) << blocks << " blocks: " << plan.stages;
    three += plan.stages == 3;
    ASSERT_CUDA(LaunchQuestScores(a, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = scores.Get();
    for (uint32_t r = 0; r < 8; ++r) {
      const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads;
      const std::vector<float> model = ModelScores(c, b, b.queries, r, kMax);
      for (size_t i = 0; i < model.size(); ++i) {
        ASSERT_TRUE(SameScore(got[slice0 + i], model[i]))
            << blocks << " blocks (" << plan.stages << " buffers), request " << r << " slice " << i;
      }
    }
  }
  if (sms >= 100) {
    EXPECT_GT(three, 0u) << "no case took the 3-buffer plan on " << sms << " SMs";
  }
}

// early_metadata behind a kernel that writes the queries (round 14): a score launch, which
// triggers its successor at its start, writes its scores into the buffer the select then reads
// as fp32 queries; before it the buffer holds other queries. The select, launched with PDL and
// early_metadata, reads its metadata before its wait and the queries only after it: five times
// its scores and selection equal those of the same select launched after a synchronize (the
// other queries are checked to select differently, so reading them would show).
TEST(QuestSelectGpuTensorCore, EarlyMetadataReadsTheQueriesOnlyAfterTheWait) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const Case wc{8, 8, 128, std::vector<uint32_t>(8, 1024), P(512, 1, kMax)};  // the writer: 64K scores
  const Case c{32, 8, 128, {700, 1200}, P(512, 1, kMax)};                      // the select: 8K query values
  const Batch w = Build(wc, 41), b = Build(c, 43);
  const auto requests = static_cast<uint32_t>(c.blocks.size()), rows = requests * c.kv_heads;
  ASSERT_LE(b.queries.size(), w.scales.size());
  DeviceArray<int8_t> w_bounds(w.bounds), bounds(b.bounds);
  DeviceArray<float> w_q(w.queries), w_scales(w.scales), w_scores(w.scales.size()), scales(b.scales),
      scores(b.scales.size());
  std::vector<uint32_t> sel_off(rows + 1);
  QuestSelectedOffsets(c.blocks.data(), requests, c.kv_heads, c.params, sel_off.data());
  DeviceArray<uint32_t> w_offsets(w.block_offsets), offsets(b.block_offsets), sel_offsets(sel_off),
      selected(sel_off.back());
  const QuestSelectDeviceArgs writer{
      .requests = static_cast<uint32_t>(wc.blocks.size()), .q_heads = wc.q_heads, .kv_heads = wc.kv_heads,
      .head_dim = wc.d, .max_blocks = 1024, .params = wc.params, .query_type = QuestQueryType::kFloat32,
      .queries = w_q.p, .block_offsets = w_offsets.p, .bounds = w_bounds.p, .scales = w_scales.p,
      .scores = w_scores.p};
  const QuestSelectDeviceArgs select{
      .requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d, .max_blocks = 1200,
      .params = c.params, .query_type = QuestQueryType::kFloat32, .queries = w_scores.p,
      .block_offsets = offsets.p, .bounds = bounds.p, .scales = scales.p, .scores = scores.p,
      .selected_offsets = sel_offsets.p, .selected = selected.p};
  auto poison_queries = [&](cudaStream_t stream) {
    return cudaMemcpyAsync(w_scores.p, b.queries.data(), b.queries.size() * sizeof(float), cudaMemcpyHostToDevice,
                           stream);
  };
  // What the other queries select, then the reference: writer, synchronize, select.
  ASSERT_CUDA(poison_queries(nullptr));
  ASSERT_CUDA(LaunchQuestSelect(select, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<uint32_t> other = selected.Get();
  ASSERT_CUDA(LaunchQuestScores(writer, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  ASSERT_CUDA(LaunchQuestSelect(select, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<float> want_scores = scores.Get();
  const std::vector<uint32_t> want = selected.Get();
  ASSERT_NE(want, other) << "the test needs queries that select differently";
  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  QuestSelectDeviceArgs early = select;
  early.programmatic_dependent_launch = true;
  early.early_metadata = true;
  for (int step = 0; step < 5; ++step) {
    ASSERT_CUDA(poison_queries(stream));
    ASSERT_CUDA(cudaMemsetAsync(scores.p, 0xff, scores.n * sizeof(float), stream));
    ASSERT_CUDA(cudaMemsetAsync(selected.p, 0xff, selected.n * sizeof(uint32_t), stream));
    ASSERT_CUDA(LaunchQuestScores(writer, stream));
    ASSERT_CUDA(LaunchQuestSelect(early, stream));
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    const std::vector<float> got_scores = scores.Get();
    for (size_t i = 0; i < got_scores.size(); ++i) {
      ASSERT_TRUE(SameScore(got_scores[i], want_scores[i])) << "step " << step << " slice " << i;
    }
    ASSERT_EQ(selected.Get(), want) << "step " << step;
  }
  ASSERT_CUDA(cudaStreamDestroy(stream));
  // An L2 prefetch of selected slices needs the slots and 16-byte units: refused, nothing enqueued.
  QuestSelectDeviceArgs bad = select;
  bad.prefetch = {.arena = bounds.p, .slot_bytes = 256, .bytes = 256};
  EXPECT_EQ(LaunchQuestSelect(bad, nullptr), cudaErrorInvalidValue) << "no block_slots";
  DeviceArray<uint32_t> slots(b.slots), selected_slots(sel_off.back());
  bad.block_slots = slots.p;
  bad.selected_slots = selected_slots.p;
  bad.prefetch.bytes = 200;
  EXPECT_EQ(LaunchQuestSelect(bad, nullptr), cudaErrorInvalidValue) << "bytes not a multiple of 16";
  bad.prefetch.bytes = 256;
  bad.prefetch.arena = bounds.p + 8;
  EXPECT_EQ(LaunchQuestSelect(bad, nullptr), cudaErrorInvalidValue) << "arena not 16-byte aligned";
  bad.prefetch.arena = bounds.p;
  bad.prefetch.period = 4;  // count 0 with a period: nothing would ever be fetched
  EXPECT_EQ(LaunchQuestSelect(bad, nullptr), cudaErrorInvalidValue) << "period without count";
}

}  // namespace
}  // namespace kvtier::kernels
