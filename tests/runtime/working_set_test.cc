// Working-set estimator and admission (runtime/include/kvtier/working_set.h) on scripted
// traces: union sizes per (layer, head), duplicates within a step, window roll-off, per-request
// windows, prefill working sets, and FCFS admission that defers (never skips or rejects).
#include "kvtier/working_set.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

namespace kvtier {
namespace {

// 2 layers, 2 KV heads, d=16, 4-token blocks, f16: 256 B slices, 512 B blocks.
constexpr KvGeometry kGeo{.layers = 2, .kv_heads = 2, .head_dim = 16, .block_tokens = 4, .dtype = DType::kF16};
constexpr uint64_t kSlice = 256;

std::unique_ptr<WorkingSetEstimator> Make(uint32_t window) {
  auto r = WorkingSetEstimator::Create({.geometry = kGeo, .window_steps = window});
  if (!r.ok()) throw std::runtime_error(r.status().ToString());
  return std::move(r).value();
}

TEST(WorkingSetTest, UnionPerLayerAndHeadOverTheWindow) {
  auto ws = Make(3);
  const RequestId r{1};
  // Step 0: layer 0 head 0 {1,2}, head 1 {1,3}; layer 1 head 0 {1,2}, head 1 {5,6}.
  ASSERT_TRUE(ws->Record(r, LayerId{0}, std::vector<uint32_t>{1, 2, 1, 3}, 2).ok());
  ASSERT_TRUE(ws->Record(r, LayerId{1}, std::vector<uint32_t>{1, 2, 5, 6}, 2).ok());
  EXPECT_EQ(ws->UnionSlices(r), 8u);  // same block index in another head or layer is another slice
  ws->EndStep(r);
  // Step 1: layer 0 head 0 {2,4} (4 new), head 1 {1,3} (nothing new).
  ASSERT_TRUE(ws->Record(r, LayerId{0}, std::vector<uint32_t>{2, 4, 1, 3}, 2).ok());
  ws->EndStep(r);
  EXPECT_EQ(ws->UnionSlices(r), 9u);
  EXPECT_EQ(ws->WorkingSet(r), Bytes{9 * kSlice});
  EXPECT_EQ(ws->StepsInWindow(r), 2u);
}

TEST(WorkingSetTest, DuplicatesWithinAStepCountOnce) {
  auto ws = Make(2);
  const RequestId r{1};
  ASSERT_TRUE(ws->Record(r, LayerId{0}, std::vector<uint32_t>{1, 1, 2, 2}, 2).ok());
  ASSERT_TRUE(ws->Record(r, LayerId{0}, std::vector<uint32_t>{1, 7, 2, 8}, 2).ok());  // same layer again
  EXPECT_EQ(ws->UnionSlices(r), 4u);
  ws->EndStep(r);
  ws->EndStep(r);
  // Recorded once in step 0 only: rolls off after two more steps, not three.
  EXPECT_EQ(ws->UnionSlices(r), 4u);
  ws->EndStep(r);
  EXPECT_EQ(ws->UnionSlices(r), 0u);
}

TEST(WorkingSetTest, OldStepsRollOffTheWindow) {
  auto ws = Make(2);
  const RequestId r{3};
  // Head 0 selects block s and block 100 every step s; head 1 always block 0.
  for (uint32_t s = 0; s < 6; ++s) {
    ASSERT_TRUE(ws->Record(r, LayerId{0}, std::vector<uint32_t>{s, 100, 0, 0}, 2).ok());
    // Open step + 2 closed steps: head 0 has {s-2, s-1, s} + 100, head 1 has {0}.
    const uint64_t head0 = std::min<uint64_t>(s + 1, 3) + 1;
    EXPECT_EQ(ws->UnionSlices(r), head0 + 1) << "step " << s;
    ws->EndStep(r);
  }
  // Steps without selections age the rest out.
  ws->EndStep(r);
  ws->EndStep(r);
  EXPECT_EQ(ws->UnionSlices(r), 0u);
}

TEST(WorkingSetTest, EachRequestHasItsOwnWindow) {
  auto ws = Make(1);
  const RequestId a{1}, b{2};
  ASSERT_TRUE(ws->Record(a, LayerId{0}, std::vector<uint32_t>{1, 2}, 1).ok());
  ASSERT_TRUE(ws->Record(b, LayerId{1}, std::vector<uint32_t>{1, 2, 3, 4}, 2).ok());
  ws->EndStep(a);
  ws->EndStep(b);
  ws->EndStep(b);  // b decodes, a is deferred: a keeps its estimate
  EXPECT_EQ(ws->UnionSlices(a), 2u);
  EXPECT_EQ(ws->UnionSlices(b), 0u);
  ws->Remove(a);
  EXPECT_EQ(ws->WorkingSet(a), Bytes{0});
  EXPECT_EQ(ws->WorkingSet(RequestId{99}), Bytes{0});
}

TEST(WorkingSetTest, RejectsBadOptionsAndSelections) {
  EXPECT_EQ(WorkingSetEstimator::Create({.geometry = kGeo, .window_steps = 0}).status().code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(WorkingSetEstimator::Create({.geometry = KvGeometry{}, .window_steps = 12}).status().code(),
            StatusCode::kInvalidArgument);
  auto ws = Make(12);
  EXPECT_EQ(ws->options().window_steps, 12u);
  EXPECT_EQ(ws->Record(RequestId{1}, LayerId{2}, std::vector<uint32_t>{1, 2}, 1).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ws->Record(RequestId{1}, LayerId{0}, std::vector<uint32_t>{1, 2, 3}, 2).code(),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(ws->UnionSlices(RequestId{1}), 0u);
}

TEST(WorkingSetTest, PrefillWorkingSets) {
  // 10 tokens = 3 blocks (the last partial) of 512 B per layer.
  EXPECT_EQ(LayerSegmentedPrefillBytes(kGeo, 10), Bytes{3 * 512});
  EXPECT_EQ(ChunkedPrefillBytes(kGeo, 10), Bytes{2 * 3 * 512});
  EXPECT_EQ(LayerSegmentedPrefillBytes(kGeo, 0), Bytes{0});
}

std::vector<AdmissionCandidate> Candidates(std::initializer_list<uint64_t> sizes) {
  std::vector<AdmissionCandidate> c;
  uint64_t id = 0;
  for (uint64_t s : sizes) c.push_back({RequestId{++id}, Bytes{s}});
  return c;
}
std::vector<uint64_t> Ids(const std::vector<RequestId>& v) {
  std::vector<uint64_t> out;
  for (RequestId r : v) out.push_back(r.value());
  return out;
}

TEST(AdmitBatchTest, AdmitsFcfsWhileItFitsAndDefersTheRest) {
  const auto c = Candidates({30, 40, 20, 15});
  AdmissionDecision d = AdmitBatch(c, Bytes{100});
  EXPECT_EQ(Ids(d.admitted), (std::vector<uint64_t>{1, 2, 3}));
  EXPECT_EQ(Ids(d.deferred), (std::vector<uint64_t>{4}));
  EXPECT_EQ(d.admitted_bytes, Bytes{90});
  // Running requests count: 50 B already in use.
  d = AdmitBatch(c, Bytes{100}, Bytes{50});
  EXPECT_EQ(Ids(d.admitted), (std::vector<uint64_t>{1}));
  // Strict FCFS: 20 would fit after 40 is deferred, but do not overtake it.
  EXPECT_EQ(Ids(d.deferred), (std::vector<uint64_t>{2, 3, 4}));
  EXPECT_FALSE(d.oversized);
  // Exactly full is admitted.
  d = AdmitBatch(Candidates({60, 40}), Bytes{100});
  EXPECT_EQ(d.admitted.size(), 2u);
  EXPECT_TRUE(AdmitBatch({}, Bytes{100}).admitted.empty());
}

TEST(AdmitBatchTest, AnOversizedRequestAloneRunsRatherThanNever) {
  AdmissionDecision d = AdmitBatch(Candidates({150, 10}), Bytes{100});
  EXPECT_EQ(Ids(d.admitted), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Ids(d.deferred), (std::vector<uint64_t>{2}));
  EXPECT_TRUE(d.oversized);
  // Not while others run: it waits for them.
  d = AdmitBatch(Candidates({150, 10}), Bytes{100}, Bytes{10});
  EXPECT_TRUE(d.admitted.empty());
  EXPECT_EQ(d.deferred.size(), 2u);
}

// The estimator feeding admission: a scripted trace where request 2's selection drifts more,
// so its working set is larger and it is the one deferred.
TEST(AdmitBatchTest, EstimatesFeedAdmission) {
  auto ws = Make(4);
  for (uint32_t s = 0; s < 4; ++s) {
    ASSERT_TRUE(ws->Record(RequestId{1}, LayerId{0}, std::vector<uint32_t>{0, 1, 0, 1}, 2).ok());
    ASSERT_TRUE(ws->Record(RequestId{2}, LayerId{0}, std::vector<uint32_t>{0, 10 + s, 0, 20 + s}, 2).ok());
    ws->EndStep(RequestId{1});
    ws->EndStep(RequestId{2});
  }
  EXPECT_EQ(ws->WorkingSet(RequestId{1}), Bytes{4 * kSlice});
  EXPECT_EQ(ws->WorkingSet(RequestId{2}), Bytes{10 * kSlice});
  std::vector<AdmissionCandidate> c = {{RequestId{1}, ws->WorkingSet(RequestId{1})},
                                       {RequestId{2}, ws->WorkingSet(RequestId{2})}};
  AdmissionDecision d = AdmitBatch(c, Bytes{12 * kSlice});
  EXPECT_EQ(Ids(d.admitted), (std::vector<uint64_t>{1}));
  EXPECT_EQ(Ids(d.deferred), (std::vector<uint64_t>{2}));
}

}  // namespace
}  // namespace kvtier
