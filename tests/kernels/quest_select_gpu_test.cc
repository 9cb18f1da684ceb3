// The CUDA Quest selection (kernels/quest_select.cuh) against the CPU reference
// (kernels/reference/quest_select.h: QuestScoresQuantized then QuestSelectTopK), batched
// over requests of different lengths, on fresh random bounds with poisoned outputs.
//
// Checks, per (request, KV head):
//   scores     |gpu − cpu| ≤ 1e-5 · Σ_g Σ_i |q_gi| · scale · max(|m_q,i|, |M_q,i|) (the
//              magnitude of the summed terms: fp32 vs double accumulation differ by
//              ~20 ulp of it at most);
//   top-k      the GPU selection equals QuestSelectTopK run on the GPU's own scores, exactly
//              (same scores ⇒ same set, same order, same tie breaks);
//   vs CPU     the GPU selection equals QuestSelectTopK on the CPU scores except for blocks
//              b whose CPU score is within tol_b + max(tol over the row) of the CPU k-th
//              selected candidate score — the only blocks whose rank two correct fp32/double
//              computations may swap (b can trade places with some y only if
//              |cpu_b − cpu_y| ≤ tol_b + tol_y, and the k-th score lies between them);
//   slots      selected_slots[i] = the slot of block selected[i].
//   tensor core  (QuestScoreAlgorithm::kTensorCore) QuestScoresFixedPoint bit for bit, within
//              the tolerance above plus the fixed-point term of the CPU scores; its selection
//              the top-k of its own scores (CheckTensorCore).
// Plus budget/offset edge cases (k ≥ blocks, one block) and the API's refusals; the top-k
// kernels alone are in quest_topk_gpu_test.cc, the cases' builder in quest_select_gpu_cases.h.
// The tensor-core score kernel at the ends of its exponent range: quest_score_gpu_test.cc.
// Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "kernels/cuda_test_support.h"
#include "quest_select.cuh"
#include "quest_select_gpu_cases.h"
#include "reference/quest_select.h"
#include "reference/sparse_attention.h"

namespace kvtier::kernels {
namespace {

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

using ::kvtier::testing::DeviceArray;
using quest_gpu_test::Batch;
using quest_gpu_test::BoundMagnitude;
using quest_gpu_test::Build;
using quest_gpu_test::Case;
using quest_gpu_test::kMax;
using quest_gpu_test::kSum;
using quest_gpu_test::P;
using quest_gpu_test::SameScore;

// The packed launch `a` (its scores, selection and slots: `gpu_*`) again with the same
// metadata at a head pitch (QuestSelectDeviceArgs::head_pitch): (request r, head h) at slice
// (r·kv_heads + h)·pitch, the padding filled with other random bounds, scales and slots. Every
// score kernel and top-k: the same scores (at the pitched places), selection and slots, bit
// for bit, and no score written into the padding. `selected` / `selected_slots`: a's outputs.
void CheckPitchedLayout(const Case& c, const Batch& b, const QuestSelectDeviceArgs& a, uint32_t seed,
                        const std::vector<float>& gpu_scores, const std::vector<uint32_t>& gpu_sel,
                        const std::vector<uint32_t>& gpu_slots, DeviceArray<uint32_t>& selected,
                        DeviceArray<uint32_t>& selected_slots) {
  const auto requests = static_cast<uint32_t>(c.blocks.size());
  const uint32_t d = c.d;
  const uint32_t pitch = a.max_blocks + 3;
  const size_t pitched_slices = size_t{requests} * c.kv_heads * pitch;
  std::mt19937 junk(seed + 1);
  std::vector<int8_t> pbounds(pitched_slices * 2 * d);
  for (int8_t& x : pbounds) x = static_cast<int8_t>(junk());
  std::vector<float> pscales(pitched_slices);
  for (float& x : pscales) x = 1e-3f * static_cast<float>(junk() % 1000 + 1);
  std::vector<uint32_t> pslots(pitched_slices);
  for (uint32_t& x : pslots) x = junk();
  for (uint32_t r = 0; r < requests; ++r) {
    const uint32_t n = c.blocks[r];
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      const size_t from = size_t{b.block_offsets[r]} * c.kv_heads + size_t{h} * n;
      const size_t to = (size_t{r} * c.kv_heads + h) * pitch;
      std::copy_n(b.bounds.begin() + from * 2 * d, size_t{n} * 2 * d, pbounds.begin() + to * 2 * d);
      std::copy_n(b.scales.begin() + from, n, pscales.begin() + to);
      std::copy_n(b.slots.begin() + from, n, pslots.begin() + to);
    }
  }
  DeviceArray<int8_t> pitched_bounds(pbounds);
  DeviceArray<float> pitched_scales(pscales), pitched_scores(pitched_slices);
  DeviceArray<uint32_t> pitched_slots(pslots);
  DeviceArray<uint32_t> pitched_counters(size_t{requests} * c.kv_heads);
  ASSERT_CUDA(cudaMemset(pitched_counters.p, 0, pitched_counters.n * sizeof(uint32_t)));
  // The fp32 kernels' variants (pipelined, register ring, bisection, fused), or for the
  // tensor-core kernel (`a` runs it) its own with either top-k.
  const bool tensor_core = a.score_algorithm == QuestScoreAlgorithm::kTensorCore;
  for (int variant = 0; variant < 4; ++variant) {
    if (tensor_core && (variant == 1 || variant == 3)) continue;
    QuestSelectDeviceArgs t = a;
    t.bounds = pitched_bounds.p;
    t.scales = pitched_scales.p;
    t.scores = pitched_scores.p;
    t.block_slots = pitched_slots.p;
    t.head_pitch = pitch;
    if (variant == 1) t.score_algorithm = QuestScoreAlgorithm::kRegisterRing;
    if (variant == 2) t.topk_algorithm = QuestTopKAlgorithm::kBisection;
    if (variant == 3) t.row_counters = pitched_counters.p;  // fused
    ASSERT_CUDA(cudaMemset(pitched_scores.p, 0xff, pitched_scores.n * sizeof(float)));  // NaN
    ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
    ASSERT_CUDA(cudaMemset(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t)));
    ASSERT_CUDA(LaunchQuestSelect(t, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = pitched_scores.Get();
    for (uint32_t r = 0; r < requests; ++r) {
      const uint32_t n = c.blocks[r];
      for (uint32_t h = 0; h < c.kv_heads; ++h) {
        const size_t from = size_t{b.block_offsets[r]} * c.kv_heads + size_t{h} * n;
        const size_t to = (size_t{r} * c.kv_heads + h) * pitch;
        ASSERT_EQ(std::memcmp(&got[to], &gpu_scores[from], size_t{n} * sizeof(float)), 0)
            << "pitched scores, variant " << variant << ", request " << r << " head " << h;
        for (uint32_t blk = n; blk < pitch; ++blk) {
          ASSERT_TRUE(std::isnan(got[to + blk])) << "a score written into the padding, variant " << variant;
        }
      }
    }
    ASSERT_EQ(selected.Get(), gpu_sel) << "pitched selection, variant " << variant;
    ASSERT_EQ(selected_slots.Get(), gpu_slots) << "pitched slots, variant " << variant;
  }
  // A pitch below max_blocks is refused.
  QuestSelectDeviceArgs narrow = a;
  narrow.head_pitch = a.max_blocks - 1;
  if (narrow.head_pitch != 0) {
    EXPECT_EQ(LaunchQuestSelect(narrow, nullptr), cudaErrorInvalidValue);
  }
}

// Round 13: the tensor-core score kernel (the default) through LaunchQuestSelect (plain and with PDL),
// poisoned first. Where it applies (kSum, or a kMax group ≤ kTensorCoreScoreMaxGroup): its
// scores are QuestScoresFixedPoint's bit for bit and within the fp32 tolerance plus the
// fixed-point term of QuestScoresQuantized; elsewhere the register ring runs (the fp32
// scores `fp32_scores`, bit for bit). Either way the selection is the top-k of its own
// scores, with slots; then the pitched layout gives the same.
void CheckTensorCore(const Case& c, const Batch& b, const QuestSelectDeviceArgs& a, uint32_t seed,
                     const std::vector<uint32_t>& sel_off, const std::vector<float>& fp32_scores,
                     DeviceArray<float>& scores, DeviceArray<uint32_t>& selected,
                     DeviceArray<uint32_t>& selected_slots) {
  const auto requests = static_cast<uint32_t>(c.blocks.size());
  const uint32_t d = c.d, group = c.q_heads / c.kv_heads;
  const bool applies = c.params.combine == kSum || group <= kTensorCoreScoreMaxGroup;
  QuestSelectDeviceArgs t = a;
  t.score_algorithm = QuestSelectDeviceArgs{}.score_algorithm;  // the default
  ASSERT_EQ(t.score_algorithm, QuestScoreAlgorithm::kTensorCore);
  QuestScorePlan plan;
  ASSERT_CUDA(PlanQuestScores(t, &plan));
  EXPECT_EQ(plan.tensor_core, applies);
  if (applies) {
    EXPECT_EQ(plan.tile_slices, 64u);
    EXPECT_GE(uint64_t{plan.ctas_per_row} * plan.tiles_per_cta, plan.tiles_per_row);
  }
  std::vector<float> tc_scores;
  std::vector<uint32_t> tc_sel, tc_slots;
  for (bool pdl : {false, true}) {
    t.programmatic_dependent_launch = pdl;
    ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));
    ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
    ASSERT_CUDA(cudaMemset(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t)));
    ASSERT_CUDA(LaunchQuestSelect(t, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> got = scores.Get();
    if (pdl) {
      for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(SameScore(got[i], tc_scores[i])) << "PDL changed " << i;
      ASSERT_EQ(selected.Get(), tc_sel);
      continue;
    }
    tc_scores = got;
    tc_sel = selected.Get();
    tc_slots = selected_slots.Get();
  }
  for (uint32_t r = 0; r < requests; ++r) {
    const uint32_t n = c.blocks[r];
    const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = d, .blocks = n};
    const uint32_t k = QuestBudgetBlocks(shape, c.params);
    const size_t slice0 = size_t{b.block_offsets[r]} * c.kv_heads, count = size_t{c.kv_heads} * n;
    std::span<const float> qr(&b.queries[size_t{r} * c.q_heads * d], size_t{c.q_heads} * d);
    std::span<const int8_t> br(&b.bounds[slice0 * 2 * d], count * 2 * d);
    std::span<const float> sr(&b.scales[slice0], count);
    if (applies) {
      std::vector<float> model(count), cpu(count);
      QuestScoresFixedPoint(shape, c.params.combine, qr, br, sr, model);
      QuestScoresQuantized(shape, c.params.combine, qr, br, sr, cpu);
      for (uint32_t h = 0; h < c.kv_heads; ++h) {
        const double quantum = QuestFixedPointQuantum(shape, c.params.combine, qr, h);
        for (uint32_t blk = 0; blk < n; ++blk) {
          const size_t s = size_t{h} * n + blk;
          ASSERT_TRUE(SameScore(tc_scores[slice0 + s], model[s]))
              << "request " << r << " head " << h << " block " << blk << ": gpu " << tc_scores[slice0 + s]
              << " model " << model[s];
          double bytes = 0;
          for (uint32_t j = 0; j < 2 * d; ++j) bytes += std::abs(int(br[s * 2 * d + j]));
          const double mag = BoundMagnitude(qr, br, sr[s], s, h, group, d);
          ASSERT_LE(std::fabs(double(model[s]) - cpu[s]), 1e-5 * mag + quantum * bytes * sr[s] + 1e-30)
              << "request " << r << " head " << h << " block " << blk;
        }
      }
    } else {
      for (size_t s = 0; s < count; ++s) ASSERT_TRUE(SameScore(tc_scores[slice0 + s], fp32_scores[slice0 + s])) << s;
    }
    std::vector<uint32_t> own(size_t{c.kv_heads} * k);
    QuestSelectTopK(shape, c.params, std::span<const float>(&tc_scores[slice0], count), own);
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      const uint32_t row = r * c.kv_heads + h;
      ASSERT_EQ(sel_off[row + 1] - sel_off[row], k);
      for (uint32_t i = 0; i < k; ++i) {
        ASSERT_EQ(tc_sel[sel_off[row] + i], own[size_t{h} * k + i]) << "request " << r << " head " << h << " at " << i;
        ASSERT_EQ(tc_slots[sel_off[row] + i], b.slots[slice0 + size_t{h} * n + own[size_t{h} * k + i]]) << i;
      }
    }
  }
  if (applies) CheckPitchedLayout(c, b, t, seed, tc_scores, tc_sel, tc_slots, selected, selected_slots);
}

void RunCase(const Case& c, uint32_t seed) {
  const Batch b = Build(c, seed);
  const auto requests = static_cast<uint32_t>(c.blocks.size());
  const uint32_t d = c.d, group = c.q_heads / c.kv_heads;
  std::vector<uint32_t> sel_off(size_t{requests} * c.kv_heads + 1);
  QuestSelectedOffsets(c.blocks.data(), requests, c.kv_heads, c.params, sel_off.data());

  DeviceArray<float> queries32(b.queries), scales(b.scales), scores(b.scales.size());
  DeviceArray<uint16_t> queries16(b.queries16);
  DeviceArray<int8_t> bounds(b.bounds);
  DeviceArray<uint32_t> offsets(b.block_offsets), sel_offsets(sel_off), selected(sel_off.back()),
      selected_slots(sel_off.back()), slots(b.slots);
  ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));  // NaN
  ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
  ASSERT_CUDA(cudaMemset(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t)));
  QuestSelectDeviceArgs a{.requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = d,
                          .max_blocks = *std::max_element(c.blocks.begin(), c.blocks.end()), .params = c.params,
                          .query_type = c.query_type,
                          .queries = c.query_type == QuestQueryType::kFloat32 ? static_cast<const void*>(queries32.p)
                                                                               : static_cast<const void*>(queries16.p),
                          .block_offsets = offsets.p, .bounds = bounds.p, .scales = scales.p, .scores = scores.p,
                          .selected_offsets = sel_offsets.p, .selected = selected.p, .block_slots = slots.p,
                          .selected_slots = selected_slots.p};
  // The fp32 kernels first (kPipelined and the variants that must equal it bit for bit); the
  // default, kTensorCore, in CheckTensorCore at the end.
  a.score_algorithm = QuestScoreAlgorithm::kPipelined;
  ASSERT_CUDA(LaunchQuestSelect(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  const std::vector<float> gpu_scores = scores.Get();
  const std::vector<uint32_t> gpu_sel = selected.Get(), gpu_slots = selected_slots.Get();

  for (uint32_t r = 0; r < requests; ++r) {
    const uint32_t n = c.blocks[r], first = b.block_offsets[r];
    const QuestShape shape{.q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = d, .blocks = n};
    const uint32_t k = QuestBudgetBlocks(shape, c.params);
    ASSERT_EQ(k, QuestBudgetBlocksOf(n, c.params));
    const size_t slice0 = size_t{first} * c.kv_heads;
    std::span<const float> qr(&b.queries[size_t{r} * c.q_heads * d], size_t{c.q_heads} * d);
    std::span<const int8_t> br(&b.bounds[slice0 * 2 * d], size_t{c.kv_heads} * n * 2 * d);
    std::span<const float> sr(&b.scales[slice0], size_t{c.kv_heads} * n);
    std::vector<float> cpu(size_t{c.kv_heads} * n);
    QuestScoresQuantized(shape, c.params.combine, qr, br, sr, cpu);
    std::vector<float> tol(cpu.size());
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      for (uint32_t blk = 0; blk < n; ++blk) {
        const size_t s = size_t{h} * n + blk;
        tol[s] = static_cast<float>(1e-5 * BoundMagnitude(qr, br, sr[s], s, h, group, d) + 1e-30);
        ASSERT_LE(std::fabs(gpu_scores[slice0 + s] - cpu[s]), tol[s])
            << "request " << r << " head " << h << " block " << blk << " gpu " << gpu_scores[slice0 + s] << " cpu "
            << cpu[s];
      }
    }
    std::vector<uint32_t> from_gpu(size_t{c.kv_heads} * k), from_cpu(from_gpu.size());
    QuestSelectTopK(shape, c.params, std::span<const float>(&gpu_scores[slice0], cpu.size()), from_gpu);
    QuestSelectTopK(shape, c.params, cpu, from_cpu);
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      const uint32_t row = r * c.kv_heads + h;
      ASSERT_EQ(sel_off[row + 1] - sel_off[row], k);
      const std::vector<uint32_t> got(gpu_sel.begin() + sel_off[row], gpu_sel.begin() + sel_off[row + 1]);
      const std::vector<uint32_t> exact(from_gpu.begin() + size_t{h} * k, from_gpu.begin() + size_t{h} * k + k);
      ASSERT_EQ(got, exact) << "request " << r << " head " << h << ": top-k of the GPU's own scores";
      for (uint32_t i = 0; i < k; ++i) {
        ASSERT_EQ(gpu_slots[sel_off[row] + i], b.slots[slice0 + size_t{h} * n + got[i]]) << i;
      }
      // Against the CPU scores: differences only at the k-th score, within tolerance.
      const std::set<uint32_t> gs(got.begin(), got.end());
      const std::set<uint32_t> cs(from_cpu.begin() + size_t{h} * k, from_cpu.begin() + size_t{h} * k + k);
      const uint32_t sinks = std::min(c.params.sink_blocks, n);
      float kth = std::numeric_limits<float>::infinity(), max_tol = 0;
      for (uint32_t blk : cs) {
        if (blk >= sinks && blk + 1 < n) kth = std::min(kth, cpu[size_t{h} * n + blk]);
      }
      for (uint32_t blk = 0; blk < n; ++blk) max_tol = std::max(max_tol, tol[size_t{h} * n + blk]);
      for (uint32_t blk = 0; blk < n; ++blk) {
        if (gs.count(blk) == cs.count(blk)) continue;
        ASSERT_TRUE(blk >= sinks && blk + 1 < n) << "forced block " << blk << " differs";
        ASSERT_LE(std::fabs(cpu[size_t{h} * n + blk] - kth), tol[size_t{h} * n + blk] + max_tol)
            << "request " << r << " head " << h << " block " << blk << " is not a near-tie with the k-th score";
      }
    }
  }
  // The round-4 register-ring score kernel, plain and with PDL: the same scores as the
  // pipelined kernel, bit for bit (same lane → channel split, same order of sums).
  for (bool pdl : {false, true}) {
    ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));
    QuestSelectDeviceArgs ring = a;
    ring.score_algorithm = QuestScoreAlgorithm::kRegisterRing;
    ring.programmatic_dependent_launch = pdl;
    ASSERT_CUDA(LaunchQuestScores(ring, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> ring_scores = scores.Get();
    ASSERT_EQ(std::memcmp(ring_scores.data(), gpu_scores.data(), gpu_scores.size() * sizeof(float)), 0)
        << "register-ring scores differ from the pipelined kernel's (pdl " << pdl << ")";
  }
  // Round 9: the score rules (any d: round 8's shape where they do not apply) — the default
  // (kRound9Wave; `a` above, checked against the CPU, planned here), round 8's rule asked for
  // explicitly and kRound9 — and other launch shapes of the pipelined kernel (explicit
  // fields, d 128 only): the same scores bit for bit and the same selection as the default,
  // through LaunchQuestSelect, poisoned first. The round-9 rules apply (2 buffers, ≥ 3 tiles
  // per CTA) to the long-row and many-row d-128 cases (on an H100: b8/32K, the ragged b8 up to
  // 8192 blocks, the 16384-block max case, 65536 and 32768 blocks), else fall back (e.g. one
  // 2048-block request: 1 tile per CTA).
  {
    std::vector<QuestScoreShape> shapes{QuestScoreShape{}, kQuestScoreRound8Shape,
                                        {.preset = QuestScorePreset::kRound9}};
    if (d == 128) {
      shapes.insert(shapes.end(), {{.tiles_per_cta = 1, .stages = 2, .slices_per_thread = 2},
                                   {.tiles_per_cta = 3, .stages = 3, .slices_per_thread = 4},
                                   {.tiles_per_cta = 0, .stages = 6, .slices_per_thread = 4},
                                   {.tiles_per_cta = 1u << 20, .stages = 6, .slices_per_thread = 2},
                                   {.tiles_per_cta = 2, .stages = 4, .slices_per_thread = 4},
                                   {.tiles_per_cta = 5, .stages = 0, .slices_per_thread = 0}});
    }
    int device = 0, sms = 0;
    ASSERT_CUDA(cudaGetDevice(&device));
    ASSERT_CUDA(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    for (const QuestScoreShape& shape : shapes) {
      QuestSelectDeviceArgs t = a;
      t.score_shape = shape;
      t.programmatic_dependent_launch = shape.stages == 3 || shape.preset == QuestScorePreset::kRound8;
      // What a rule resolves to on this device (the 2-buffer instance's occupancy).
      QuestScoreShape expect = shape;
      if (!HasExplicitFields(shape)) {
        uint32_t per_sm = 0;
        if (d == 128) {
          QuestSelectDeviceArgs probe = a;
          probe.score_shape = {.stages = 2, .slices_per_thread = 2};
          QuestScorePlan p2;
          ASSERT_CUDA(PlanQuestScores(probe, &p2));
          per_sm = p2.ctas_per_sm;
        }
        expect = QuestScoreShapeOfPreset(shape.preset, requests * c.kv_heads, a.max_blocks, d,
                                         static_cast<uint32_t>(sms), per_sm);
        if (d != 128 || shape.preset == QuestScorePreset::kRound8) {
          EXPECT_FALSE(HasExplicitFields(expect));
        }
        if (HasExplicitFields(expect)) {
          EXPECT_EQ(expect.stages, 2u);
          EXPECT_GE(expect.tiles_per_cta, kQuestScorePresetMinTilesPerCta);
        } else {
          EXPECT_EQ(expect.preset, QuestScorePreset::kRound8);  // round 8's shape
        }
      }
      QuestScorePlan plan;
      ASSERT_CUDA(PlanQuestScores(t, &plan));
      const bool applies = !HasExplicitFields(shape) && HasExplicitFields(expect);
      EXPECT_EQ(plan.preset, applies ? shape.preset : QuestScorePreset::kRound8);
      const uint32_t per_thread = expect.slices_per_thread == 0 ? 2 : expect.slices_per_thread;
      EXPECT_TRUE(plan.pipelined);
      EXPECT_EQ(plan.tile_slices, 32 * per_thread);
      EXPECT_EQ(plan.stages, expect.stages == 0 ? 4u : expect.stages);
      EXPECT_EQ(plan.tiles_per_row, (t.max_blocks + plan.tile_slices - 1) / plan.tile_slices);
      EXPECT_GE(uint64_t{plan.ctas_per_row} * plan.tiles_per_cta, plan.tiles_per_row);
      EXPECT_LT(uint64_t{plan.ctas_per_row - 1} * plan.tiles_per_cta, plan.tiles_per_row);
      if (expect.tiles_per_cta != 0) {
        EXPECT_EQ(plan.tiles_per_cta, std::min(expect.tiles_per_cta, plan.tiles_per_row));
      }
      ASSERT_CUDA(cudaMemset(scores.p, 0xff, scores.n * sizeof(float)));
      ASSERT_CUDA(cudaMemset(selected.p, 0xAA, selected.n * sizeof(uint32_t)));
      ASSERT_CUDA(cudaMemset(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t)));
      ASSERT_CUDA(LaunchQuestSelect(t, nullptr));
      ASSERT_CUDA(cudaDeviceSynchronize());
      const std::vector<float> shaped = scores.Get();
      ASSERT_EQ(std::memcmp(shaped.data(), gpu_scores.data(), gpu_scores.size() * sizeof(float)), 0)
          << "scores of shape (tiles/CTA " << shape.tiles_per_cta << ", stages " << shape.stages
          << ", slices/thread " << shape.slices_per_thread << ", rule " << static_cast<int>(shape.preset)
          << " -> tiles/CTA " << plan.tiles_per_cta << ", stages " << plan.stages << ") differ from the default's";
      ASSERT_EQ(selected.Get(), gpu_sel) << "selection, shape stages " << shape.stages;
      ASSERT_EQ(selected_slots.Get(), gpu_slots) << "slots, shape stages " << shape.stages;
    }
  }
  // Fused (one launch, the last score CTA of a row runs its top-k) with PDL, twice (the row
  // counters must come back to zero): scores and selection bit-identical to the two launches.
  DeviceArray<uint32_t> counters(size_t{requests} * c.kv_heads);
  ASSERT_CUDA(cudaMemset(counters.p, 0, counters.n * sizeof(uint32_t)));
  cudaStream_t stream;
  ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int round = 0; round < 2; ++round) {
    ASSERT_CUDA(cudaMemsetAsync(scores.p, 0xff, scores.n * sizeof(float), stream));
    ASSERT_CUDA(cudaMemsetAsync(selected.p, 0xAA, selected.n * sizeof(uint32_t), stream));
    ASSERT_CUDA(cudaMemsetAsync(selected_slots.p, 0xAA, selected_slots.n * sizeof(uint32_t), stream));
    QuestSelectDeviceArgs fused = a;
    fused.row_counters = counters.p;
    fused.programmatic_dependent_launch = round == 1;
    ASSERT_CUDA(LaunchQuestSelect(fused, stream));
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    ASSERT_EQ(scores.Get(), gpu_scores) << "fused scores, round " << round;
    ASSERT_EQ(selected.Get(), gpu_sel) << "fused selection, round " << round;
    ASSERT_EQ(selected_slots.Get(), gpu_slots) << "fused slots, round " << round;
    for (uint32_t x : counters.Get()) ASSERT_EQ(x, 0u) << "row counters not reset";
  }
  ASSERT_CUDA(cudaStreamDestroy(stream));

  CheckPitchedLayout(c, b, a, seed, gpu_scores, gpu_sel, gpu_slots, selected, selected_slots);
  CheckTensorCore(c, b, a, seed, sel_off, gpu_scores, scores, selected, selected_slots);
}

class QuestSelectGpu : public ::testing::TestWithParam<Case> {};

TEST_P(QuestSelectGpu, MatchesReference) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  RunCase(GetParam(), 99);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, QuestSelectGpu,
    ::testing::Values(
        Case{32, 8, 128, {2048}, P(2048, 1, kSum)},                       // Llama-3-8B, 32K tokens
        Case{32, 8, 128, {2048}, P(2048, 1, kMax), QuestQueryType::kBf16},
        Case{32, 8, 128, {8192, 17, 2048, 129, 4096, 1, 300, 5000}, P(2048, 1, kSum), QuestQueryType::kBf16},
        Case{8, 1, 64, {1, 2, 3, 4, 100}, P(64, 1, kMax)},                // k ≥ blocks, tiny rows, group 8
        Case{8, 1, 64, {1000, 999, 3}, P(512, 4, kSum), QuestQueryType::kFp16},
        Case{4, 4, 128, {777, 64, 2}, P(256, 0, kSum)},                   // group 1, no sinks
        Case{4, 4, 128, {777}, P(100000, 1, kMax)},                       // budget above every block
        Case{12, 4, 64, {300, 301, 302}, P(48, 2, kMax)},                 // group 3, budget = min_blocks
        Case{16, 2, 128, {65536}, P(4096, 1, kSum)},                      // 1M tokens, 256 selected
        // Max with many passes per score CTA (the register ring wraps, partial last tiles) and
        // a group that is not a multiple of the 4-head chunk (zero-padded heads, masked out of the max).
        Case{40, 8, 128, {16384, 33, 4000}, P(2048, 1, kMax), QuestQueryType::kFp16},
        Case{16, 2, 64, {20000, 7}, P(1024, 2, kMax)},                    // group 8: two chunks
        Case{2, 1, 128, {9000}, P(512, 1, kMax)},                         // group 2: half a chunk
        // Top-k path boundaries: the 1024-thread kernel bisects rows of ≤ 1024/2048/4096/8192
        // blocks with 1/2/4/8 keys per thread, radix-selects longer ones; the fused 256-thread
        // top-k bisects ≤ 2048 (here 256·k ± 1) and radix-selects above.
        Case{8, 2, 64, {1024, 1025, 2049, 257, 2048, 513}, P(4096, 1, kSum)},
        Case{8, 2, 64, {8192, 8193, 4097}, P(2048, 3, kMax)},
        // Round 8 (pipelined scores, tiles of 64 slices, 4 buffers): Llama-3-8B at batch 8, a
        // ragged batch 8, rows at the tile boundaries (64·k ± 1), and a long max row whose
        // CTAs loop over many tiles (the buffer ring wraps).
        Case{32, 8, 128, {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2048}, P(2048, 1, kMax), QuestQueryType::kBf16},
        Case{32, 8, 128, {2047, 3, 129, 1000, 2048, 16, 17, 65}, P(2048, 1, kMax), QuestQueryType::kBf16},
        Case{8, 2, 128, {63, 64, 65, 127, 128, 129, 1537}, P(256, 1, kMax)},
        Case{8, 2, 64, {63, 64, 65, 1537}, P(256, 1, kSum), QuestQueryType::kFp16},
        Case{32, 8, 128, {32768}, P(2048, 1, kMax), QuestQueryType::kBf16},
        // The tensor-core kernel's largest kMax group (4 chunks of columns), and one past it
        // (the register ring runs).
        Case{16, 1, 128, {3000, 129}, P(512, 1, kMax)},
        Case{17, 1, 64, {700}, P(256, 1, kMax), QuestQueryType::kFp16}));

// A non-default score shape is refused wherever it would not be what runs: the register-ring
// kernel, the fused path, misaligned metadata, d 64; and an invalid shape everywhere.
TEST(QuestSelectGpuApi, RefusesScoreShapesThatWouldNotApply) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const Case c{32, 8, 128, {100}, P(512, 1, kMax)};
  const Batch b = Build(c, 7);
  std::vector<uint32_t> sel_off(c.kv_heads + 1);
  QuestSelectedOffsets(c.blocks.data(), 1, c.kv_heads, c.params, sel_off.data());
  DeviceArray<float> queries(b.queries), scales(b.scales), scores(b.scales.size());
  DeviceArray<int8_t> bounds(b.bounds.size() + 16);
  DeviceArray<uint32_t> offsets(b.block_offsets), sel_offsets(sel_off), selected(sel_off.back()),
      counters(c.kv_heads);
  ASSERT_CUDA(cudaMemcpy(bounds.p, b.bounds.data(), b.bounds.size(), cudaMemcpyHostToDevice));
  ASSERT_CUDA(cudaMemset(counters.p, 0, counters.n * sizeof(uint32_t)));
  QuestSelectDeviceArgs a{.requests = 1, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d,
                          .max_blocks = 100, .params = c.params, .queries = queries.p, .block_offsets = offsets.p,
                          .bounds = bounds.p, .scales = scales.p, .scores = scores.p,
                          .selected_offsets = sel_offsets.p, .selected = selected.p};
  a.score_algorithm = QuestScoreAlgorithm::kPipelined;  // explicit fields are the pipelined kernel's
  a.score_shape = {.tiles_per_cta = 1, .stages = 2, .slices_per_thread = 4};
  QuestScorePlan plan;
  ASSERT_CUDA(PlanQuestScores(a, &plan));  // valid as given
  ASSERT_CUDA(LaunchQuestSelect(a, nullptr));
  ASSERT_CUDA(cudaDeviceSynchronize());
  QuestSelectDeviceArgs x = a;
  x.score_algorithm = QuestScoreAlgorithm::kRegisterRing;
  EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(PlanQuestScores(x, &plan), cudaErrorInvalidValue);
  x.score_algorithm = QuestScoreAlgorithm::kTensorCore;  // its own fixed shape
  EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(PlanQuestScores(x, &plan), cudaErrorInvalidValue);
  x = a;
  x.row_counters = counters.p;
  EXPECT_EQ(LaunchQuestSelect(x, nullptr), cudaErrorInvalidValue);
  x = a;
  x.bounds = bounds.p + 8;  // not 16-byte aligned: the default shape would fall back to the ring
  EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
  x = a;
  x.score_shape.stages = 5;
  EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(LaunchQuestSelect(x, nullptr), cudaErrorInvalidValue);
  x = a;
  x.head_dim = 64;
  x.q_heads = 8;
  x.kv_heads = 2;
  EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
  EXPECT_EQ(PlanQuestScores(a, nullptr), cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
  // A rule alone (the default included) is never refused: round 8's shape where it does not
  // apply, the other kernels where the pipelined one does not run (the register ring, the
  // fused path, misaligned metadata); kRound8 / kRound9 with explicit fields are invalid
  // everywhere (with the default value, explicit fields replace the rule: `a` above).
  for (QuestScorePreset p : {QuestScorePreset::kRound9Wave, QuestScorePreset::kRound8, QuestScorePreset::kRound9}) {
    x = a;
    x.score_shape = {.preset = p};
    ASSERT_CUDA(PlanQuestScores(x, &plan));
    EXPECT_EQ(plan.preset, QuestScorePreset::kRound8) << "100 blocks: 2 tiles per row, too few for the rule";
    x.score_algorithm = QuestScoreAlgorithm::kRegisterRing;
    ASSERT_CUDA(LaunchQuestScores(x, nullptr));
    ASSERT_CUDA(PlanQuestScores(x, &plan));
    EXPECT_FALSE(plan.pipelined);
    x = a;
    x.score_shape = {.preset = p};
    x.row_counters = counters.p;
    ASSERT_CUDA(LaunchQuestSelect(x, nullptr));
    x = a;
    x.score_shape = {.preset = p};
    x.bounds = bounds.p + 8;  // planned only: the ring's 16-byte loads need aligned bounds too
    ASSERT_CUDA(PlanQuestScores(x, &plan));
    EXPECT_FALSE(plan.pipelined);
    if (p == kQuestScoreDefaultPreset) continue;
    x = a;
    x.score_shape = {.tiles_per_cta = 4, .preset = p};
    EXPECT_EQ(LaunchQuestScores(x, nullptr), cudaErrorInvalidValue);
    EXPECT_EQ(LaunchQuestSelect(x, nullptr), cudaErrorInvalidValue);
    EXPECT_EQ(PlanQuestScores(x, &plan), cudaErrorInvalidValue);
  }
  ASSERT_CUDA(cudaDeviceSynchronize());
}

TEST(QuestSelectGpuApi, RejectsBadArguments) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  QuestSelectDeviceArgs a{.requests = 1, .q_heads = 8, .kv_heads = 2, .head_dim = 96, .max_blocks = 10, .params = {}};
  EXPECT_EQ(LaunchQuestSelect(a, nullptr), cudaErrorInvalidValue);
  a.head_dim = 128;
  EXPECT_EQ(LaunchQuestSelect(a, nullptr), cudaErrorInvalidValue);  // null pointers
  a.q_heads = 7;
  EXPECT_EQ(LaunchQuestTopK(a, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvtier::kernels
