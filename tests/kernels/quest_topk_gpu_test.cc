// The Quest top-k kernels (kernels/quest_select.cuh: QuestTopKAlgorithm) against the CPU
// reference QuestSelectTopK: alone on crafted scores full of ties, ±0, ±inf and NaN (exact
// equality), and the digit and bisection algorithms against each other on the scores of real
// Quest selections. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
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

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

// The top-k kernel alone on crafted scores: few distinct values (ties everywhere), ±0, ±inf,
// NaN; then scores of one sign and exponent (every warp's first digit the same: the
// histogram's one-digit fast path) with many duplicates. Rows on both sides of every path
// boundary (bisection with 1, 2, 4, 8 keys per thread up to 8192 blocks, radix above), and
// budgets with 29 chosen, none chosen (rest = 0) and 1024 chosen. The result must equal the
// reference's exactly, launched plain and with PDL behind a plain launch.
// Each block list runs with both top-k algorithms (QuestTopKAlgorithm): a launch whose rows
// are all ≤ 2048 blocks takes the digit kernel at 2 keys per thread, ≤ 8192 at 8, and a
// launch with a longer row (8193) takes the radix path for every row, whatever the algorithm.
void CraftedTopK(const std::vector<uint32_t>& blocks, QuestTopKAlgorithm algorithm) {
  for (int kind = 0; kind < 6; ++kind) {
    const float inf = std::numeric_limits<float>::infinity();
    const std::vector<float> values{-inf, -1.0f, -0.0f, 0.0f, 0.5f, 1.0f, inf, std::nanf(""), 1e-30f, -1e-30f};
    const uint32_t kv_heads = 3;
    const uint32_t budget = kind / 2 == 0 ? 512 : kind / 2 == 1 ? 16 : 16384;
    const QuestSelectParams params = P(budget, 2, kSum);
    std::mt19937 rng(5);
    std::vector<uint32_t> block_offsets{0};
    for (uint32_t n : blocks) block_offsets.push_back(block_offsets.back() + n);
    std::vector<float> scores(size_t{block_offsets.back()} * kv_heads);
    for (size_t i = 0; i < scores.size(); ++i) {
      scores[i] = kind % 2 == 0 ? values[rng() % (i % 3 == 0 ? 3 : values.size())]
                            : 1.0f + static_cast<float>(rng() % 64) / 64.0f + (i % 7 == 0 ? 1e-7f * (i % 5) : 0.0f);
    }
    const auto requests = static_cast<uint32_t>(blocks.size());
    std::vector<uint32_t> sel_off(size_t{requests} * kv_heads + 1);
    QuestSelectedOffsets(blocks.data(), requests, kv_heads, params, sel_off.data());
    DeviceArray<float> dscores(scores);
    DeviceArray<uint32_t> offsets(block_offsets), dsel_off(sel_off), selected(sel_off.back());
    ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
    QuestSelectDeviceArgs a{.requests = requests, .q_heads = kv_heads, .kv_heads = kv_heads, .head_dim = 128,
                            .max_blocks = *std::max_element(blocks.begin(), blocks.end()), .params = params, .block_offsets = offsets.p, .scores = dscores.p,
                            .selected_offsets = dsel_off.p, .selected = selected.p};
    a.topk_algorithm = algorithm;
    ASSERT_CUDA(LaunchQuestTopK(a, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<uint32_t> got = selected.Get();
    {  // PDL behind a plain launch of the same: bit-identical.
      QuestSelectDeviceArgs pdl = a;
      pdl.programmatic_dependent_launch = true;
      ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
      ASSERT_CUDA(LaunchQuestTopK(a, nullptr));
      ASSERT_CUDA(LaunchQuestTopK(pdl, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      ASSERT_EQ(selected.Get(), got) << "PDL top-k, kind " << kind;
    }
    for (uint32_t r = 0; r < requests; ++r) {
      const QuestShape shape{.q_heads = kv_heads, .kv_heads = kv_heads, .head_dim = 128, .blocks = blocks[r]};
      const uint32_t k = QuestBudgetBlocks(shape, params);
      std::vector<uint32_t> want(size_t{kv_heads} * k);
      const std::span<const float> row_scores(&scores[size_t{block_offsets[r]} * kv_heads],
                                              size_t{kv_heads} * blocks[r]);
      QuestSelectTopK(shape, params, row_scores, want);
      const std::vector<uint32_t> g(got.begin() + sel_off[r * kv_heads], got.begin() + sel_off[(r + 1) * kv_heads]);
      ASSERT_EQ(g, want) << "request " << r << " (" << blocks[r] << " blocks), kind " << kind << ", algorithm "
                         << static_cast<int>(algorithm) << ", max_blocks " << a.max_blocks;
    }
  }
}

TEST(QuestTopKGpu, TiesSignedZerosInfinitiesAndNaNMatchReferenceExactly) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  for (QuestTopKAlgorithm algorithm :
       {QuestTopKAlgorithm::kDigits, QuestTopKAlgorithm::kBisection, QuestTopKAlgorithm::kAuto}) {
    CraftedTopK({5000, 7, 64, 300, 2, 1024, 1025, 2048, 2049, 4097, 8192, 8193}, algorithm);  // radix: 8193
    CraftedTopK({1024, 1025, 2048, 2049, 4097, 8192, 7, 2, 300, 64}, algorithm);  // digits: 8 keys per thread
    CraftedTopK({2048, 2047, 7, 2, 300, 64, 1025, 129, 1}, algorithm);            // digits: 2 keys per thread
  }
}

// The two top-k algorithms on the scores of real Quest selections (Gaussian bounds: keys of
// mixed signs and exponents, the shared-prefix cut at work) at batch 1 and 8, Llama-3-8B rows
// of 2048 blocks and 128K rows of 8192, plus ragged batches: selections and slots identical,
// bit for bit, and equal to the reference on the GPU's scores (RunCase checks the default).
TEST(QuestTopKGpu, DigitsEqualBisectionOnQuestScores) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const std::vector<std::vector<uint32_t>> batches{
      {2048}, {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048}, {8192}, {8192, 8192, 8192, 8192, 8192, 8192, 8192, 8192},
      {2047, 3, 129, 1000, 2048, 16, 17, 500}, {8192, 4097, 2049, 2048, 1}};
  uint32_t seed = 300;
  for (const std::vector<uint32_t>& blocks : batches) {
    const Case c{32, 8, 128, blocks, P(2048, 1, kMax), QuestQueryType::kBf16};
    const Batch b = Build(c, ++seed);
    const auto requests = static_cast<uint32_t>(blocks.size());
    std::vector<uint32_t> sel_off(size_t{requests} * c.kv_heads + 1);
    QuestSelectedOffsets(blocks.data(), requests, c.kv_heads, c.params, sel_off.data());
    DeviceArray<float> scales(b.scales), scores(b.scales.size());
    DeviceArray<uint16_t> queries16(b.queries16);
    DeviceArray<int8_t> bounds(b.bounds);
    DeviceArray<uint32_t> offsets(b.block_offsets), sel_offsets(sel_off), selected(sel_off.back()),
        selected_slots(sel_off.back()), slots(b.slots);
    QuestSelectDeviceArgs a{.requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d,
                            .max_blocks = *std::max_element(blocks.begin(), blocks.end()), .params = c.params,
                            .query_type = c.query_type, .queries = queries16.p, .block_offsets = offsets.p,
                            .bounds = bounds.p, .scales = scales.p, .scores = scores.p,
                            .selected_offsets = sel_offsets.p, .selected = selected.p, .block_slots = slots.p,
                            .selected_slots = selected_slots.p};
    std::vector<uint32_t> sel[2], sl[2];
    for (int i = 0; i < 2; ++i) {
      ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
      ASSERT_CUDA(cudaMemset(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t)));
      a.topk_algorithm = i == 0 ? QuestTopKAlgorithm::kDigits : QuestTopKAlgorithm::kBisection;
      a.programmatic_dependent_launch = i == 0;
      ASSERT_CUDA(LaunchQuestSelect(a, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      sel[i] = selected.Get();
      sl[i] = selected_slots.Get();
    }
    ASSERT_EQ(sel[0], sel[1]) << "batch of " << requests << ", first row " << blocks[0] << " blocks";
    ASSERT_EQ(sl[0], sl[1]);
    const std::vector<float> gpu_scores = scores.Get();
    for (uint32_t r = 0; r < requests; ++r) {
      const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d, .blocks = blocks[r]};
      const uint32_t k = QuestBudgetBlocks(shape, c.params);
      const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads;
      std::vector<uint32_t> want(size_t{c.kv_heads} * k);
      QuestSelectTopK(shape, c.params, std::span<const float>(&gpu_scores[slice0], size_t{c.kv_heads} * blocks[r]),
                      want);
      const std::vector<uint32_t> got(sel[0].begin() + sel_off[r * c.kv_heads],
                                      sel[0].begin() + sel_off[(r + 1) * c.kv_heads]);
      ASSERT_EQ(got, want) << "request " << r;
      for (size_t i = 0; i < got.size(); ++i) {
        const uint32_t h = static_cast<uint32_t>(i / k);
        ASSERT_EQ(sl[0][sel_off[r * c.kv_heads] + i], b.slots[slice0 + size_t{h} * blocks[r] + got[i]]);
      }
    }
  }
}

}  // namespace
}  // namespace kvtier::kernels
