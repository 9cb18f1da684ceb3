// The CUDA paged decode attention (kernels/sparse_attention.cuh) against its CPU reference
// (kernels/reference/sparse_attention.h), on fresh random data with poisoned outputs and
// workspace: batch 1/3/8, GQA groups 1/2/3/4/8, d 64/128, bf16 and fp16, fp32 and 16-bit
// output, a partial last block, a single block and a single token, 2048- and 4096-page lists
// (also on the candidate rule r9d's plan where it applies), sparse
// page lists, forced small and large pieces (many-piece merges), an empty page list, and a
// second launch on the same workspace (its counters reset themselves; results bit-equal).
// The bulk kernel runs on every streamed cut it takes and must give the streamed kernel's
// bytes exactly; the tensor-core kernel runs on those cuts and on its own plan. The invalid tail of each last page and every unlisted slot hold NaN, so a
// kernel that uses a token it should not produces NaN (the bulk kernel copies whole slices,
// tails included, into shared memory: it must never use them).
//
// Tolerance: |got − want| ≤ 2e-3·|want| + 2e-4 for fp32 output (V ~ N(0,1), so 2e-4 is
// ~2e-4 of a value's magnitude; the two fp32 computations differ by ~1e-6), plus half an
// ulp of the output type for 16-bit output. Skips without a CUDA device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <numeric>
#include <ostream>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "kernels/cuda_test_support.h"
#include "quest_select.cuh"
#include "reference/sparse_attention.h"
#include "sparse_attention.cuh"

namespace kvtier::kernels {
namespace {

bool HaveDevice() { return ::kvtier::testing::HaveCudaDevice(); }

using ::kvtier::testing::DeviceArray;

struct Case {
  uint32_t q_heads, kv_heads, d, bt;
  std::vector<uint32_t> tokens;  // per request
  HalfType type = HalfType::kBf16;
  AttentionOutput output = AttentionOutput::kFloat32;
  bool sparse = false;           // list a random subset of blocks (always the last one)
  uint32_t chunk = 0;            // pages per CTA; 0 = the device plan
  bool empty_first_row = false;  // row 0 lists no page
};

// Readable, deterministic parameter text (ctest shows it; the default prints raw bytes,
// pointers included).
void PrintTo(const Case& c, std::ostream* os) {
  *os << c.q_heads << "q/" << c.kv_heads << "kv d" << c.d << " bt" << c.bt << " tokens";
  for (uint32_t t : c.tokens) *os << ' ' << t;
  *os << (c.type == HalfType::kBf16 ? " bf16" : " fp16") << (c.output == AttentionOutput::kFloat32 ? " out-f32" : " out-half")
      << (c.sparse ? " sparse" : " dense") << " chunk " << c.chunk << (c.empty_first_row ? " empty-row0" : "");
}

constexpr uint16_t kHalfNaN = 0x7fff;  // NaN in both bf16 and fp16

struct Problem {
  SparseAttentionShape shape;
  std::vector<uint16_t> arena, queries;
  std::vector<uint32_t> offsets, slots, last;
  uint32_t max_pages = 0;
};

Problem Build(const Case& c, uint32_t seed) {
  Problem p;
  const auto requests = static_cast<uint32_t>(c.tokens.size());
  p.shape = {.requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = c.d,
             .block_tokens = c.bt, .slot_bytes = (uint64_t{2} * c.bt * c.d * 2 + 255) / 256 * 256 + 256};
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint32_t> blocks(requests);
  uint32_t total = 0;
  for (uint32_t r = 0; r < requests; ++r) total += blocks[r] = (c.tokens[r] + c.bt - 1) / c.bt;
  total *= c.kv_heads;
  std::vector<uint32_t> perm(total + 5);  // spare slots, never listed, all NaN
  std::iota(perm.begin(), perm.end(), 0u);
  std::shuffle(perm.begin(), perm.end(), rng);
  const uint64_t se = p.shape.slot_elems();
  p.arena.assign(perm.size() * se, kHalfNaN);
  p.queries.resize(size_t{requests} * c.q_heads * c.d);
  for (uint16_t& x : p.queries) x = FloatToHalf(c.type, 2.0f * nd(rng));
  uint32_t next = 0;
  p.offsets.push_back(0);
  for (uint32_t r = 0; r < requests; ++r) {
    const uint32_t tail = c.tokens[r] - (blocks[r] - 1) * c.bt;
    for (uint32_t h = 0; h < c.kv_heads; ++h) {
      const bool empty = c.empty_first_row && r == 0 && h == 0;
      for (uint32_t b = 0; b < blocks[r]; ++b) {
        const uint32_t slot = perm[next++];
        const uint32_t valid = b + 1 == blocks[r] ? tail : c.bt;
        for (uint32_t t = 0; t < valid; ++t) {
          for (uint32_t i = 0; i < c.d; ++i) {
            p.arena[slot * se + size_t{t} * c.d + i] = FloatToHalf(c.type, nd(rng));
            p.arena[slot * se + (size_t{c.bt} + t) * c.d + i] = FloatToHalf(c.type, nd(rng));
          }
        }
        const bool listed = !empty && (!c.sparse || b + 1 == blocks[r] || rng() % 4 == 0);
        if (listed) p.slots.push_back(slot);
      }
      p.offsets.push_back(static_cast<uint32_t>(p.slots.size()));
      p.max_pages = std::max(p.max_pages, p.offsets.back() - p.offsets[p.offsets.size() - 2]);
      p.last.push_back(tail);
    }
  }
  return p;
}

// `output`, when given, gets the first launch's output bytes.
void RunPlan(const Case& c, const Problem& p, const std::vector<float>& want, const SparseAttentionPlan& plan,
             std::vector<char>* output = nullptr) {
  const auto& s = p.shape;
  const size_t outs = want.size();
  DeviceArray<uint16_t> arena(p.arena), queries(p.queries);
  DeviceArray<uint32_t> offsets(p.offsets), slots(p.slots), last(p.last);
  const size_t out_bytes = outs * (c.output == AttentionOutput::kFloat32 ? 4 : 2);
  DeviceArray<char> out(out_bytes), ws(SparseAttentionWorkspaceBytes(s, plan));
  ASSERT_NE(out.p, nullptr);
  ASSERT_NE(ws.p, nullptr);
  ASSERT_CUDA(cudaMemset(ws.p, 0xA5, ws.n));
  ASSERT_CUDA(InitSparseAttentionWorkspace(ws.p, s, plan, nullptr));
  SparseAttentionDeviceArgs a{.shape = s, .type = c.type, .output = c.output, .arena = arena.p, .queries = queries.p,
                              .page_offsets = offsets.p, .page_slots = slots.p, .last_page_tokens = last.p,
                              .out = out.p, .workspace = ws.p};
  const double ulp = c.output == AttentionOutput::kFloat32 ? 0.0 : c.type == HalfType::kBf16 ? 1.0 / 256 : 1.0 / 1024;
  auto check = [&](const std::vector<char>& bytes, const char* launch) {
    for (size_t i = 0; i < outs; ++i) {
      float got;
      if (c.output == AttentionOutput::kFloat32) {
        std::memcpy(&got, bytes.data() + 4 * i, 4);
      } else {
        uint16_t h;
        std::memcpy(&h, bytes.data() + 2 * i, 2);
        got = HalfToFloat(c.type, h);
      }
      const double tol = (2e-3 + ulp) * std::fabs(want[i]) + 2e-4;
      ASSERT_LE(std::fabs(double(got) - want[i]), tol)
          << launch << ": request " << i / (size_t{s.q_heads} * s.head_dim) << " head "
          << i / s.head_dim % s.q_heads << " dim " << i % s.head_dim << " got " << got << " want " << want[i]
          << " (plan: chunk " << plan.chunk_pages << ", splits " << plan.max_splits << ", heads/cta "
          << plan.heads_per_cta << ", tile loads " << plan.tile_loads << ", cluster " << plan.cluster << ", balance "
          << plan.balance << ")";
    }
  };
  // Every plan but a balanced one gives the same bytes launch after launch; a balanced one
  // (tiles claimed at run time) is held to the reference each time instead — which also shows
  // that each launch leaves its claim counters at zero for the next.
  auto same = [&](const std::vector<char>& x, const std::vector<char>& y, const char* launch) {
    if (plan.balance) {
      check(y, launch);
    } else {
      EXPECT_EQ(std::memcmp(x.data(), y.data(), out_bytes), 0) << launch << " differs";
    }
  };
  std::vector<char> first(out_bytes), second(out_bytes);
  for (std::vector<char>* run : {&first, &second}) {
    ASSERT_CUDA(cudaMemset(out.p, 0xff, out_bytes));  // NaN in every output type
    ASSERT_CUDA(LaunchSparseAttention(a, plan, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(cudaMemcpy(run->data(), out.p, out_bytes, cudaMemcpyDeviceToHost));
  }
  same(first, second, "a second launch on the same workspace");
  if (output != nullptr) *output = first;
  {  // PDL: a plain launch then a PDL launch right behind it on one stream; bit-identical.
    cudaStream_t stream;
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    ASSERT_CUDA(cudaMemsetAsync(out.p, 0xff, out_bytes, stream));
    SparseAttentionDeviceArgs pdl = a;
    pdl.programmatic_dependent_launch = true;
    ASSERT_CUDA(LaunchSparseAttention(a, plan, stream));
    ASSERT_CUDA(LaunchSparseAttention(pdl, plan, stream));
    ASSERT_CUDA(LaunchSparseAttention(pdl, plan, stream));
    ASSERT_CUDA(cudaStreamSynchronize(stream));
    ASSERT_CUDA(cudaStreamDestroy(stream));
    ASSERT_CUDA(cudaMemcpy(second.data(), out.p, out_bytes, cudaMemcpyDeviceToHost));
    same(first, second, "the PDL launch");
  }
  check(first, "the first launch");
}

void RunCase(const Case& c, uint32_t seed) {
  const Problem p = Build(c, seed);
  const auto& s = p.shape;
  const size_t outs = size_t{s.requests} * s.q_heads * s.head_dim;
  std::vector<float> want(outs, std::nanf(""));
  SparseAttention(s, c.type, p.arena, p.queries, {.offsets = p.offsets, .slots = p.slots, .last_page_tokens = p.last},
                  want);

  // The staged kernel (short lists, small batch): kStaged's choice if it makes one,
  // then forced clusters of 2 and 8 CTAs (portable sizes) at the largest head chunk and a
  // cluster of 4 at half of it, wherever the pieces fit a CTA's shared memory.
  if (c.chunk == 0) {
    SparseAttentionPlan automatic;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, c.type, p.max_pages, 0, SparseAttentionKernels::kStaged, &automatic));
    if (automatic.cluster != 0) RunPlan(c, p, want, automatic);
    const uint32_t group = s.q_heads / s.kv_heads;
    const uint32_t heads = group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
    for (auto [cluster, h] : {std::pair{2u, heads}, std::pair{8u, heads}, std::pair{4u, std::max(heads / 2, 1u)}}) {
      SparseAttentionPlan staged{.heads_per_cta = h, .chunk_pages = (std::max(p.max_pages, 1u) + cluster - 1) / cluster,
                                 .max_splits = cluster, .rows = s.requests * s.kv_heads * (group / h), .cluster = cluster};
      if (staged.chunk_pages > kStagedMaxChunkPages || staged.chunk_pages * s.slice_bytes() > (160u << 10)) continue;
      RunPlan(c, p, want, staged);
    }
  }
  // The streamed kernel (every variant on the same cut, below).
  SparseAttentionPlan plan;
  ASSERT_CUDA(PlanSparseAttentionForDevice(s, c.type, p.max_pages, 0, SparseAttentionKernels::kStreamed, &plan));
  ASSERT_EQ(plan.cluster, 0u);
  if (c.chunk != 0) {
    plan.chunk_pages = c.chunk;
    plan.max_splits = (std::max(p.max_pages, 1u) + c.chunk - 1) / c.chunk;
  }
  RunPlan(c, p, want, plan);
  // The bulk kernel (round 10) on a streamed cut that it takes: against the reference, and the
  // same bytes as the streamed kernel's standard tiles on that cut.
  auto bulk_too = [&](const SparseAttentionPlan& cut) {
    SparseAttentionPlan standard = cut, bulk;
    standard.tile_loads = 0;
    if (ApplySparseAttentionOverrides(s, p.max_pages, standard, {.bulk = 1}, &bulk) != nullptr) return;
    ASSERT_TRUE(bulk.bulk);
    std::vector<char> registers, staged;
    RunPlan(c, p, want, standard, &registers);
    RunPlan(c, p, want, bulk, &staged);
    EXPECT_EQ(registers, staged) << "the bulk kernel differs from the streamed kernel on the same cut";
  };
  bulk_too(plan);
  // The tensor-core kernel (round 10) on a streamed cut and on its own plan: against the
  // reference (it sums in another order: not bit-equal to the streamed kernel).
  auto mma_too = [&](const SparseAttentionPlan& cut) {
    SparseAttentionPlan tc;
    const char* error = ApplySparseAttentionOverrides(s, p.max_pages, cut, {.tile_loads = 4, .mma = 1}, &tc);
    ASSERT_EQ(error, nullptr) << error;
    ASSERT_TRUE(tc.mma);
    RunPlan(c, p, want, tc);
    // Balanced rows (round 11): the same cut, tiles claimed at run time; refused below 16
    // block tokens.
    SparseAttentionPlan balanced;
    error = ApplySparseAttentionOverrides(s, p.max_pages, tc, {.balance = 1}, &balanced);
    if (s.block_tokens < kSparseAttentionBalanceMinBlockTokens) {
      ASSERT_NE(error, nullptr);
      return;
    }
    ASSERT_EQ(error, nullptr) << error;
    ASSERT_TRUE(balanced.balance);
    RunPlan(c, p, want, balanced);
  };
  mma_too(plan);
  if (c.chunk == 0) {
    SparseAttentionPlan own;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, c.type, p.max_pages, 0, SparseAttentionKernels::kMma, &own));
    ASSERT_TRUE(own.mma);
    ASSERT_EQ(own.cluster, 0u);
    RunPlan(c, p, want, own);
    mma_too(own);
  }
  if (plan.heads_per_cta >= 2) {  // half the heads per CTA (the batch-1 plan's cut), twice the rows
    SparseAttentionPlan half = plan;
    half.heads_per_cta /= 2;
    half.rows *= 2;
    RunPlan(c, p, want, half);
    bulk_too(half);
    mma_too(half);
  }
  // Round 9: the streamed plan with overrides (ApplySparseAttentionOverrides, what `kvtier
  // bench decode --sweep` runs): one head per CTA with deep tiles in ≥ 3 pieces per row, and
  // standard tiles of about a fifth of the row per CTA.
  const uint32_t pages = std::max(p.max_pages, 1u);
  for (const SparseAttentionPlanOverrides& v :
       {SparseAttentionPlanOverrides{.heads_per_cta = 1, .splits = std::max(3u, (pages + 255) / 256), .tile_loads = 8},
        SparseAttentionPlanOverrides{.chunk_pages = std::min(256u, 1 + pages / 5), .tile_loads = 4}}) {
    SparseAttentionPlan overridden;
    const char* error = ApplySparseAttentionOverrides(s, p.max_pages, plan, v, &overridden);
    ASSERT_EQ(error, nullptr) << error;
    RunPlan(c, p, want, overridden);
    bulk_too(overridden);
    mma_too(overridden);
  }
  // Round 9d: the candidate rule r9d (SparseAttentionRule::kRound9Dense): where it applies
  // (rows of >= kDenseRuleMinPages pages in one standard wave) a different cut, same output.
  SparseAttentionPlan r9d;
  ASSERT_CUDA(PlanSparseAttentionForDevice(s, c.type, p.max_pages, 0, SparseAttentionKernels::kStreamed,
                                           SparseAttentionRule::kRound9Dense, &r9d));
  ASSERT_EQ(r9d.cluster, 0u);
  if (c.chunk == 0 && (r9d.chunk_pages != plan.chunk_pages || r9d.heads_per_cta != plan.heads_per_cta)) {
    EXPECT_GE(p.max_pages, kDenseRuleMinPages);
    RunPlan(c, p, want, r9d);
  }
  if (plan.heads_per_cta > 4) return;  // no deep variant
  // The other kernel variant on the same cut (the deep one, 8 loads per tile, or the standard
  // one if the planner chose deep), and the deep cut of one round per piece.
  SparseAttentionPlan other = plan;
  other.tile_loads = plan.tile_loads == 8 ? 4 : 8;
  RunPlan(c, p, want, other);
  SparseAttentionPlan deep = plan;
  deep.tile_loads = 8;
  deep.chunk_pages = std::max(1u, (4u * (256u / s.head_dim) * 8u) / s.block_tokens);
  deep.max_splits = (std::max(p.max_pages, 1u) + deep.chunk_pages - 1) / deep.chunk_pages;
  if (deep.chunk_pages != plan.chunk_pages || plan.tile_loads != 8) RunPlan(c, p, want, deep);
}

class SparseAttentionGpu : public ::testing::TestWithParam<Case> {};

TEST_P(SparseAttentionGpu, MatchesReference) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  RunCase(GetParam(), 1234);
}

using HT = HalfType;
using AO = AttentionOutput;

INSTANTIATE_TEST_SUITE_P(
    Shapes, SparseAttentionGpu,
    ::testing::Values(
        // Llama-3-8B shapes (group 4, d 128), dense, one request with a partial block.
        Case{32, 8, 128, 16, {1000}},
        Case{32, 8, 128, 16, {1000}, HT::kFp16, AO::kInputType},
        // a budget-2048 selection at batch 1 (128 pages per row): the planner's half-heads plan
        // (2 heads per CTA; on a device where that is not one wave, the deep plan).
        Case{32, 8, 128, 16, {2048}},
        // the same at group 8: 4 heads per CTA instead of 8.
        Case{64, 8, 128, 16, {2048}, HT::kFp16, AO::kInputType},
        Case{32, 8, 128, 16, {2040}, HT::kFp16, AO::kInputType},
        // batch 3, ragged, fp16; one request of a single token.
        Case{16, 4, 128, 16, {17, 1, 300}, HT::kFp16},
        // batch 8, group 8, d 64, 16-bit output; lengths 1..2000.
        Case{8, 1, 64, 16, {1, 15, 16, 17, 500, 1999, 2000, 64}, HT::kBf16, AO::kInputType},
        Case{8, 1, 128, 16, {700, 33, 1, 16, 1024, 5, 77, 300}, HT::kFp16},
        // group 1, group 2, group 3 (one head per CTA, three chunks).
        Case{4, 4, 128, 16, {16, 33}, HT::kFp16},
        Case{4, 2, 64, 16, {129, 40, 3}},
        Case{12, 4, 128, 16, {250, 251}},
        // a single block, other block sizes.
        Case{32, 8, 128, 16, {5}},
        Case{8, 2, 128, 32, {100, 64}},
        Case{8, 2, 64, 8, {100, 3}, HT::kFp16},
        // long lists: 4096 pages per row (one wave at batch 1: the r9d rule's cut too).
        Case{8, 2, 128, 16, {65536 - 7}},
        Case{32, 8, 128, 16, {65536}, HT::kFp16, AO::kInputType},
        // Llama-3-8B dense 32K at batch 1, bf16 out (the bench's `dense` / `dense_r9d` rows).
        Case{32, 8, 128, 16, {32768 - 3}, HT::kBf16, AO::kInputType},
        // sparse lists.
        Case{32, 8, 128, 16, {4096, 4000, 33, 5000, 70, 4096, 1000, 2048}, HT::kBf16, AO::kFloat32, true},
        Case{16, 2, 64, 16, {30000, 17}, HT::kFp16, AO::kInputType, true},
        // forced piece sizes: 4 pages (many pieces to merge) and 256.
        Case{32, 8, 128, 16, {20000, 3000, 50}, HT::kBf16, AO::kFloat32, false, 4},
        Case{8, 1, 128, 16, {20000, 4097}, HT::kFp16, AO::kFloat32, false, 256},
        Case{16, 2, 64, 16, {9000}, HT::kBf16, AO::kInputType, true, 5},
        // an empty page list gets zeros.
        Case{32, 8, 128, 16, {300, 40}, HT::kBf16, AO::kFloat32, false, 0, true},
        // staged kernel shapes: the budget-2048 page list at batch 1 (the device plan: clusters
        // of 16 CTAs of 8 pages on an H100) with a partial last page, at batch 2 (16 rows) and
        // batch 8 (the streamed plan; forced staged clusters of 8), sparse lists of ~128 pages
        // at batch 1 and 8, d 64, and rows shorter than the cluster (CTAs with no page).
        Case{32, 8, 128, 16, {2047}, HT::kBf16, AO::kInputType},
        Case{32, 8, 128, 16, {2048, 1500}, HT::kFp16},
        Case{32, 8, 128, 16, {2048, 2048, 2048, 2048, 2048, 2048, 2048, 2041}, HT::kBf16, AO::kInputType},
        Case{32, 8, 128, 16, {8192}, HT::kBf16, AO::kFloat32, true},
        Case{32, 8, 128, 16, {8192, 7000, 8192, 100, 8192, 8192, 3000, 8192}, HT::kBf16, AO::kInputType, true},
        Case{16, 2, 64, 16, {2000, 20}, HT::kFp16, AO::kFloat32},
        Case{32, 8, 128, 16, {40, 17, 3}, HT::kBf16}));

// The device's default plan (kAuto, round 12c): exactly the tensor-core plan (kMma) — at batch
// 1 its half-heads short-list plan (round 11c took the streamed kernel's there), sparse at
// batch 8, dense at batch 1 and 8 — Llama-3-8B shapes; kStreamed is the round-6 register
// kernel's plan, kStaged the default of rounds 7-11.
TEST(SparseAttentionGpuApi, AutoPlanIsTheTensorCorePlanWithHalfHeadsForShortLists) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  auto same = [](const SparseAttentionPlan& x, const SparseAttentionPlan& y) {
    return x.heads_per_cta == y.heads_per_cta && x.chunk_pages == y.chunk_pages && x.max_splits == y.max_splits &&
           x.rows == y.rows && x.tile_loads == y.tile_loads && x.cluster == y.cluster && x.mma == y.mma &&
           x.bulk == y.bulk;  // balance is checked on its own
  };
  for (uint32_t batch : {1u, 8u}) {
    const SparseAttentionShape s{.requests = batch, .q_heads = 32, .kv_heads = 8, .head_dim = 128,
                                 .block_tokens = 16, .slot_bytes = 2 * 16 * 128 * 2};
    SparseAttentionPlan dense, sparse, dense_mma, sparse_mma, streamed;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 2048, 0, &dense));
    EXPECT_EQ(dense.cluster, 0u);
    EXPECT_TRUE(dense.mma);
    EXPECT_EQ(dense.heads_per_cta, 4u);
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 2048, 0, SparseAttentionKernels::kMma, &dense_mma));
    EXPECT_TRUE(same(dense, dense_mma)) << "dense, batch " << batch;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 128, 0, &sparse));
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 128, 0, SparseAttentionKernels::kMma, &sparse_mma));
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 128, 0, SparseAttentionKernels::kStreamed, &streamed));
    EXPECT_EQ(streamed.cluster, 0u);
    EXPECT_FALSE(streamed.mma);
    // Round 12c: the tensor-core plan, which takes half the heads per CTA at batch 1 (as the
    // streamed planner does there: its short-list plan, round 11c's default) and the full
    // chunk at batch 8.
    const bool short_list = streamed.tile_loads == 8 || streamed.heads_per_cta < 4;
    EXPECT_EQ(short_list, batch == 1) << "batch " << batch;
    EXPECT_EQ(sparse_mma.heads_per_cta, batch == 1 ? 2u : 4u) << "batch " << batch;
    EXPECT_TRUE(sparse.mma) << "batch " << batch;
    EXPECT_TRUE(same(sparse, sparse_mma)) << "batch " << batch;
    // kStaged (the default of rounds 7-11): the staged kernel's clusters where they fit (batch
    // 1 on an H100), else the tensor-core plan.
    SparseAttentionPlan staged;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 128, 0, SparseAttentionKernels::kStaged, &staged));
    if (staged.cluster != 0) {
      EXPECT_EQ(staged.max_splits, staged.cluster) << "batch " << batch;
    } else {
      EXPECT_TRUE(same(staged, sparse_mma)) << "batch " << batch;
    }
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 2048, 0, SparseAttentionKernels::kStaged, &staged));
    EXPECT_TRUE(same(staged, dense_mma)) << "dense, batch " << batch;
    uint32_t per_sm = 0;  // the tensor-core kernel's own occupancy (2 CTAs per SM at d 128 on sm_90)
    ASSERT_CUDA(SparseAttentionCtasPerSm(s, HalfType::kBf16, AttentionOutput::kFloat32, dense, &per_sm));
    EXPECT_GE(per_sm, 1u);
    // Balanced rows (round 11) only when asked for: kMmaBalanced is the kMma cut with balance
    // set, and no balance below 16 block tokens; no other value plans.
    EXPECT_FALSE(dense.balance);
    EXPECT_FALSE(sparse.balance);
    EXPECT_FALSE(dense_mma.balance);
    SparseAttentionPlan balanced;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 2048, 0, SparseAttentionKernels::kMmaBalanced, &balanced));
    EXPECT_TRUE(same(balanced, dense_mma)) << "batch " << batch;
    EXPECT_TRUE(balanced.balance);
    SparseAttentionShape small = s;
    small.block_tokens = 8;
    small.slot_bytes = 2 * 8 * 128 * 2;
    ASSERT_CUDA(PlanSparseAttentionForDevice(small, HalfType::kBf16, 4096, 0, SparseAttentionKernels::kMmaBalanced, &balanced));
    EXPECT_TRUE(balanced.mma);
    EXPECT_FALSE(balanced.balance);
    EXPECT_EQ(PlanSparseAttentionForDevice(s, HalfType::kBf16, 2048, 0, static_cast<SparseAttentionKernels>(2), &balanced),
              cudaErrorInvalidValue);
  }
}

// Round 13b: early_inputs behind the select that writes the page list, as a decode step
// runs them (LaunchQuestSelect with PDL, then the attention with PDL): the page slots are
// poisoned with other valid slots before the select, so an attention that read them before
// its PDL wait would attend other pages. Five steps on the tensor-core plan (and kAuto's),
// each bit-equal to the select, a synchronize, then a plain launch; five more with the select
// prefetching selected slices into L2 (a hint: the same bytes out).
TEST(SparseAttentionGpuPdl, EarlyInputsReadTheSelectionOnlyAfterTheWait) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  const Case c{32, 8, 128, 16, {4096, 3000}};
  const Problem p = Build(c, 131);
  const SparseAttentionShape& s = p.shape;
  const auto requests = static_cast<uint32_t>(c.tokens.size());
  const uint32_t d = c.d, rows = requests * c.kv_heads;
  // Quest metadata over the same blocks: random int8 bounds (min ≤ max), positive scales; the
  // slot of block b of row r is the dense listing's (p.slots in block order).
  std::mt19937 rng(7);
  std::vector<uint32_t> blocks(requests), block_offsets{0};
  for (uint32_t r = 0; r < requests; ++r) {
    blocks[r] = (c.tokens[r] + c.bt - 1) / c.bt;
    block_offsets.push_back(block_offsets.back() + blocks[r]);
  }
  std::vector<int8_t> bounds(p.slots.size() * 2 * d);
  std::vector<float> scales(p.slots.size());
  for (size_t slice = 0; slice < p.slots.size(); ++slice) {
    for (uint32_t i = 0; i < d; ++i) {
      const int x = static_cast<int>(rng() % 255) - 127, y = static_cast<int>(rng() % 255) - 127;
      bounds[slice * 2 * d + i] = static_cast<int8_t>(std::min(x, y));
      bounds[slice * 2 * d + d + i] = static_cast<int8_t>(std::max(x, y));
    }
    scales[slice] = 1e-3f * static_cast<float>(rng() % 1000 + 1);
  }
  const QuestSelectParams params{.budget_tokens = 512, .block_tokens = c.bt, .sink_blocks = 1};
  std::vector<uint32_t> sel_off(rows + 1);
  QuestSelectedOffsets(blocks.data(), requests, c.kv_heads, params, sel_off.data());
  uint32_t max_pages = 0;
  for (uint32_t row = 0; row < rows; ++row) max_pages = std::max(max_pages, sel_off[row + 1] - sel_off[row]);
  std::vector<uint32_t> poison(sel_off.back());
  for (size_t i = 0; i < poison.size(); ++i) poison[i] = p.slots[i % p.slots.size()];  // valid, mostly wrong

  DeviceArray<uint16_t> arena(p.arena), queries(p.queries);
  DeviceArray<int8_t> bounds_d(bounds);
  DeviceArray<float> scales_d(scales), scores(scales.size());
  DeviceArray<uint32_t> offsets(block_offsets), slots(p.slots), sel_offsets(sel_off), selected(sel_off.back()),
      selected_slots(sel_off.back()), last(p.last);
  QuestSelectDeviceArgs q{.requests = requests, .q_heads = c.q_heads, .kv_heads = c.kv_heads, .head_dim = d,
                          .max_blocks = *std::max_element(blocks.begin(), blocks.end()), .params = params,
                          .query_type = QuestQueryType::kBf16, .queries = queries.p, .block_offsets = offsets.p,
                          .bounds = bounds_d.p, .scales = scales_d.p, .scores = scores.p,
                          .selected_offsets = sel_offsets.p, .selected = selected.p, .block_slots = slots.p,
                          .selected_slots = selected_slots.p};
  const size_t out_bytes = size_t{requests} * c.q_heads * d * sizeof(float);
  DeviceArray<float> out(out_bytes / sizeof(float));
  for (SparseAttentionKernels kernels : {SparseAttentionKernels::kMma, SparseAttentionKernels::kAuto}) {
    SparseAttentionPlan plan;
    ASSERT_CUDA(PlanSparseAttentionForDevice(s, c.type, max_pages, 0, kernels, &plan));
    DeviceArray<char> ws(SparseAttentionWorkspaceBytes(s, plan));
    ASSERT_CUDA(InitSparseAttentionWorkspace(ws.p, s, plan, nullptr));
    SparseAttentionDeviceArgs a{.shape = s, .type = c.type, .output = AttentionOutput::kFloat32, .arena = arena.p,
                                .queries = queries.p, .page_offsets = sel_offsets.p,
                                .page_slots = selected_slots.p, .last_page_tokens = last.p, .out = out.p,
                                .workspace = ws.p};
    // The reference step: select, synchronize, attention.
    ASSERT_CUDA(LaunchQuestSelect(q, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    ASSERT_CUDA(cudaMemset(out.p, 0xff, out_bytes));
    ASSERT_CUDA(LaunchSparseAttention(a, plan, nullptr));
    ASSERT_CUDA(cudaDeviceSynchronize());
    const std::vector<float> want = out.Get();
    for (float x : want) ASSERT_TRUE(std::isfinite(x));
    cudaStream_t stream;
    ASSERT_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    QuestSelectDeviceArgs qp = q;
    qp.programmatic_dependent_launch = true;
    SparseAttentionDeviceArgs early = a;
    early.programmatic_dependent_launch = true;
    early.early_inputs = true;
    for (int step = 0; step < 10; ++step) {  // steps 5-9: the select prefetches the slices into L2 (round 15)
      if (step == 5) {
        qp.prefetch = {.arena = arena.p, .slot_bytes = s.slot_bytes, .bytes = static_cast<uint32_t>(s.slot_bytes),
                       .period = 8, .count = 3};
      }
      ASSERT_CUDA(cudaMemcpyAsync(selected_slots.p, poison.data(), poison.size() * sizeof(uint32_t),
                                  cudaMemcpyHostToDevice, stream));
      ASSERT_CUDA(cudaMemsetAsync(out.p, 0xff, out_bytes, stream));
      ASSERT_CUDA(LaunchQuestSelect(qp, stream));
      ASSERT_CUDA(LaunchSparseAttention(early, plan, stream));
      ASSERT_CUDA(cudaStreamSynchronize(stream));
      const std::vector<float> got = out.Get();
      ASSERT_EQ(std::memcmp(got.data(), want.data(), out_bytes), 0)
          << "step " << step << ", kernels " << static_cast<int>(kernels) << " (mma plan " << plan.mma
          << "): early inputs changed the output";
    }
    ASSERT_CUDA(cudaStreamDestroy(stream));
  }
}

TEST(SparseAttentionGpuApi, RejectsUnsupportedShapes) {
  if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  SparseAttentionShape s{.requests = 1, .q_heads = 8, .kv_heads = 2, .head_dim = 96, .block_tokens = 16,
                         .slot_bytes = 2 * 16 * 96 * 2};
  SparseAttentionPlan plan;
  EXPECT_EQ(PlanSparseAttentionForDevice(s, HalfType::kBf16, 10, 0, &plan), cudaErrorInvalidValue);
  s.head_dim = 128;
  s.block_tokens = 12;  // not a power of two
  s.slot_bytes = 2 * 12 * 128 * 2;
  EXPECT_EQ(PlanSparseAttentionForDevice(s, HalfType::kBf16, 10, 0, &plan), cudaErrorInvalidValue);
  s.block_tokens = 16;
  s.slot_bytes = 2 * 16 * 128 * 2 - 16;  // smaller than a slice
  EXPECT_EQ(PlanSparseAttentionForDevice(s, HalfType::kBf16, 10, 0, &plan), cudaErrorInvalidValue);
  s.slot_bytes = 2 * 16 * 128 * 2;
  ASSERT_CUDA(PlanSparseAttentionForDevice(s, HalfType::kBf16, 10, 0, &plan));
  SparseAttentionDeviceArgs a{.shape = s};  // null pointers
  EXPECT_EQ(LaunchSparseAttention(a, plan, nullptr), cudaErrorInvalidValue);
  // Bulk plans the bulk kernel does not take are refused before anything is launched (the
  // pointers are never dereferenced: aligned placeholders).
  auto* fake = reinterpret_cast<uint32_t*>(uintptr_t{1} << 20);
  a = SparseAttentionDeviceArgs{.shape = s, .arena = fake, .queries = reinterpret_cast<const uint16_t*>(fake),
                                .page_offsets = fake, .page_slots = fake, .last_page_tokens = fake, .out = fake,
                                .workspace = fake};
  SparseAttentionPlan bad = plan;
  bad.cluster = 0;
  bad.bulk = true;
  bad.tile_loads = 8;  // deep tiles
  EXPECT_EQ(LaunchSparseAttention(a, bad, nullptr), cudaErrorInvalidValue);
  SparseAttentionPlan staged{.heads_per_cta = 4, .chunk_pages = 8, .max_splits = 2, .rows = 2, .cluster = 2,
                             .bulk = true};
  EXPECT_EQ(LaunchSparseAttention(a, staged, nullptr), cudaErrorInvalidValue);
  staged.bulk = false;
  staged.mma = true;
  EXPECT_EQ(LaunchSparseAttention(a, staged, nullptr), cudaErrorInvalidValue);
  SparseAttentionPlan both = bad;  // the two round-10 kernels at once
  both.tile_loads = 0;
  both.mma = true;
  EXPECT_EQ(LaunchSparseAttention(a, both, nullptr), cudaErrorInvalidValue);
  a.shape.block_tokens = 64;  // a slice larger than a 16 KiB stage
  a.shape.slot_bytes = 2 * 64 * 128 * 2;
  bad.tile_loads = 0;
  EXPECT_EQ(LaunchSparseAttention(a, bad, nullptr), cudaErrorInvalidValue);
  ASSERT_CUDA(cudaDeviceSynchronize());
}

}  // namespace
}  // namespace kvtier::kernels
