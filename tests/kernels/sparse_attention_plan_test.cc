// The sparse attention planners on their own (kernels/sparse_attention.cuh; no device
// needed): the split heuristic, the deep and staged plans, the overrides of a streamed plan
// (round 9; the bulk and tensor-core kernels, round 10), the candidate rule r9d, and fewer
// heads per CTA when rows are few. The kernels against their reference:
// sparse_attention_gpu_test.cc.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "sparse_attention.cuh"

namespace kvtier::kernels {
namespace {

// The split heuristic on its own (no device needed): pieces ≤ 256 pages, ≥ 4 unless the row
// is shorter, every row covered, and whole waves of the resident CTAs are ≥ 75% used.
TEST(SparseAttentionPlan, FillsWholeWaves) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  for (uint32_t batch : {1u, 3u, 8u, 64u}) {
    for (uint32_t pages : {1u, 3u, 128u, 2048u, 8192u, 65536u}) {
      SparseAttentionShape s = llama;
      s.requests = batch;
      const uint32_t slots = 132 * 3;
      const SparseAttentionPlan p = PlanSparseAttention(s, pages, 132, 3);
      EXPECT_EQ(p.heads_per_cta, 4u);
      EXPECT_EQ(p.rows, batch * 8);
      EXPECT_LE(p.chunk_pages, kSparseAttentionMaxChunkPages);
      EXPECT_GE(p.chunk_pages, std::min(pages, kSparseAttentionMinChunkPages));
      EXPECT_GE(uint64_t{p.chunk_pages} * p.max_splits, pages);
      EXPECT_LT(uint64_t{p.chunk_pages} * (p.max_splits - 1), pages);
      const uint64_t ctas = uint64_t{p.rows} * p.max_splits;
      if (p.chunk_pages > kSparseAttentionMinChunkPages && ctas > slots) {
        const uint64_t waves = (ctas + slots - 1) / slots;
        EXPECT_GE(double(ctas) / double(waves * slots), 0.75) << batch << " x " << pages << ": " << ctas << " CTAs";
      }
    }
  }
  // Llama-3-8B, one request of 32K tokens: one wave of the 396 resident CTAs.
  SparseAttentionPlan p = PlanSparseAttention(llama, 2048, 132, 3);
  EXPECT_LE(uint64_t{p.rows} * p.max_splits, 396u);
  EXPECT_GE(uint64_t{p.rows} * p.max_splits, 300u);
  // group 3: one head per CTA, three chunks per KV head.
  SparseAttentionShape g3 = llama;
  g3.q_heads = 24;
  p = PlanSparseAttention(g3, 100, 132, 3);
  EXPECT_EQ(p.heads_per_cta, 1u);
  EXPECT_EQ(p.rows, 24u);
}

// The deep plan (short page lists): only where one-round pieces fit in one wave and the
// standard pieces are longer than one round.
TEST(SparseAttentionPlan, DeepForShortLists) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  // Budget 2048 at batch 1: 8 rows × 32 pieces of 4 pages (64 tokens) = 256 CTAs ≤ 132 × 2.
  SparseAttentionPlan p = PlanSparseAttention(llama, 128, 132, 3, 2);
  EXPECT_EQ(p.tile_loads, 8u);
  EXPECT_EQ(p.chunk_pages, 4u);
  EXPECT_EQ(p.max_splits, 32u);
  EXPECT_EQ(PlanSparseAttention(llama, 128, 132, 3, 0).tile_loads, 0u);  // no deep occupancy: standard
  SparseAttentionShape b8 = llama;
  b8.requests = 8;  // 64 rows × 32 = 2048 CTAs: more than a wave, standard plan
  p = PlanSparseAttention(b8, 128, 132, 3, 2);
  EXPECT_EQ(p.tile_loads, 0u);
  EXPECT_EQ(p.chunk_pages, PlanSparseAttention(b8, 128, 132, 3).chunk_pages);
  EXPECT_EQ(PlanSparseAttention(llama, 2048, 132, 3, 2).tile_loads, 0u);  // dense 32K
  EXPECT_EQ(PlanSparseAttention(llama, 2, 132, 3, 2).tile_loads, 0u);     // 32 tokens: one standard round
  p = PlanSparseAttention(llama, 3, 132, 3, 2);                            // 48 tokens: one deep round
  EXPECT_EQ(p.tile_loads, 8u);
  EXPECT_EQ(p.max_splits, 1u);
  SparseAttentionShape g1 = llama;
  g1.q_heads = 64;  // group 8: 8 heads per CTA, no deep variant
  EXPECT_EQ(PlanSparseAttention(g1, 128, 132, 3, 2).tile_loads, 0u);
  SparseAttentionShape d64 = llama;
  d64.head_dim = 64;  // standard pieces of 4 pages = 64 tokens: one standard round already
  EXPECT_EQ(PlanSparseAttention(d64, 128, 132, 3, 2).tile_loads, 0u);
  d64.block_tokens = 32;  // 4 pages = 128 tokens: two standard rounds, one deep round
  d64.slot_bytes = 8192;
  p = PlanSparseAttention(d64, 128, 132, 3, 2);
  EXPECT_EQ(p.tile_loads, 8u);
  EXPECT_EQ(p.chunk_pages, 4u);
}

// The staged plan: the largest cluster whose pieces fit a CTA's shared memory and whose CTAs
// are one wave; none for long lists or large batches.
TEST(SparseAttentionPlan, StagedForShortListsAtSmallBatch) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  SparseAttentionStagedLimits h100{.max_cluster = 16, .ctas_per_sm = 2, .smem_per_sm = 228u << 10,
                                   .smem_per_cta = (227u << 10) - 19000, .static_smem = 19000};
  // Budget 2048 at batch 1: 8 rows × 16 CTAs of 8 pages (64 KB).
  SparseAttentionPlan p = PlanStagedSparseAttention(llama, 128, 132, h100);
  EXPECT_EQ(p.cluster, 16u);
  EXPECT_EQ(p.max_splits, 16u);
  EXPECT_EQ(p.chunk_pages, 8u);
  EXPECT_EQ(p.rows, 8u);
  EXPECT_EQ(p.heads_per_cta, 4u);
  SparseAttentionShape b2 = llama;
  b2.requests = 2;  // 256 CTAs of 64 KB ≤ 132 × 2
  EXPECT_EQ(PlanStagedSparseAttention(b2, 128, 132, h100).cluster, 16u);
  SparseAttentionShape b8 = llama;
  b8.requests = 8;  // 1024 CTAs: no wave; clusters of 4 would need 256 KB pieces
  EXPECT_EQ(PlanStagedSparseAttention(b8, 128, 132, h100).cluster, 0u);
  EXPECT_EQ(PlanStagedSparseAttention(llama, 2048, 132, h100).cluster, 0u);  // dense 32K
  SparseAttentionStagedLimits portable = h100;
  portable.max_cluster = 8;  // 8 CTAs of 16 pages (128 KB, one per SM): 64 ≤ 132
  p = PlanStagedSparseAttention(llama, 128, 132, portable);
  EXPECT_EQ(p.cluster, 8u);
  EXPECT_EQ(p.chunk_pages, 16u);
  p = PlanStagedSparseAttention(llama, 3, 132, h100);  // 3 pages: a cluster of 4 (one CTA idle)
  EXPECT_EQ(p.cluster, 4u);
  EXPECT_EQ(p.chunk_pages, 1u);
  SparseAttentionShape g8 = llama;
  g8.q_heads = 64;  // group 8: 4 heads per CTA, 16 rows × 16 = 256 CTAs
  p = PlanStagedSparseAttention(g8, 128, 132, h100);
  EXPECT_EQ(p.heads_per_cta, 4u);
  EXPECT_EQ(p.rows, 16u);
  EXPECT_EQ(p.cluster, 16u);
  EXPECT_EQ(PlanStagedSparseAttention(llama, 128, 132, SparseAttentionStagedLimits{}).cluster, 0u);  // no clusters
}

// Overrides of the streamed plan (round 9, no device needed): applied field by field, rows
// following heads_per_cta, pieces following chunk_pages or splits; every invalid value is a
// message and leaves the output plan alone.
TEST(SparseAttentionPlan, OverridesAreAppliedAndValidated) {
  SparseAttentionShape b8{.requests = 8, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                          .slot_bytes = 8192};
  const SparseAttentionPlan base = PlanSparseAttention(b8, 128, 132, 3);  // 64 rows × 6 pieces of 22 pages
  ASSERT_EQ(base.heads_per_cta, 4u);
  ASSERT_EQ(base.chunk_pages, 22u);
  ASSERT_EQ(base.max_splits, 6u);
  auto apply = [&](const SparseAttentionPlanOverrides& v, SparseAttentionPlan* out, const SparseAttentionShape& s,
                   uint32_t pages, const SparseAttentionPlan& from) {
    const char* e = ApplySparseAttentionOverrides(s, pages, from, v, out);
    return std::string(e == nullptr ? "" : e);
  };
  SparseAttentionPlan p;
  EXPECT_EQ(apply({}, &p, b8, 128, base), "");
  EXPECT_EQ(p.heads_per_cta, base.heads_per_cta);
  EXPECT_EQ(p.chunk_pages, base.chunk_pages);
  EXPECT_EQ(p.max_splits, base.max_splits);
  EXPECT_EQ(p.rows, base.rows);
  EXPECT_EQ(p.tile_loads, base.tile_loads);
  EXPECT_EQ(apply({.heads_per_cta = 2}, &p, b8, 128, base), "");
  EXPECT_EQ(p.rows, 128u);
  EXPECT_EQ(p.chunk_pages, 22u);
  EXPECT_EQ(apply({.heads_per_cta = 1, .chunk_pages = 8, .tile_loads = 8}, &p, b8, 128, base), "");
  EXPECT_EQ(p.rows, 256u);
  EXPECT_EQ(p.chunk_pages, 8u);
  EXPECT_EQ(p.max_splits, 16u);
  EXPECT_EQ(p.tile_loads, 8u);
  EXPECT_EQ(apply({.splits = 5}, &p, b8, 128, base), "");
  EXPECT_EQ(p.chunk_pages, 26u);
  EXPECT_EQ(p.max_splits, 5u);
  EXPECT_EQ(apply({.splits = 100}, &p, b8, 128, base), "");  // chunks of 2 pages: 64 pieces
  EXPECT_EQ(p.chunk_pages, 2u);
  EXPECT_EQ(p.max_splits, 64u);
  EXPECT_EQ(apply({.chunk_pages = 256}, &p, b8, 128, base), "");
  EXPECT_EQ(p.max_splits, 1u);
  EXPECT_EQ(apply({.chunk_pages = 1}, &p, b8, 128, base), "");
  EXPECT_EQ(p.max_splits, 128u);
  EXPECT_FALSE(p.bulk);
  // The bulk kernel (round 10): on, off again, with other fields; the cut is unchanged.
  EXPECT_EQ(apply({.bulk = 1}, &p, b8, 128, base), "");
  EXPECT_TRUE(p.bulk);
  EXPECT_EQ(p.chunk_pages, base.chunk_pages);
  EXPECT_EQ(p.max_splits, base.max_splits);
  const SparseAttentionPlan bulk_base = p;
  EXPECT_EQ(apply({.bulk = 2}, &p, b8, 128, bulk_base), "");
  EXPECT_FALSE(p.bulk);
  EXPECT_EQ(apply({.heads_per_cta = 1, .chunk_pages = 8}, &p, b8, 128, bulk_base), "");
  EXPECT_TRUE(p.bulk);
  SparseAttentionShape b32 = b8;  // 32-token blocks: one slice per 16 KiB stage
  b32.block_tokens = 32;
  b32.slot_bytes = 16384;
  EXPECT_EQ(apply({.bulk = 1}, &p, b32, 64, PlanSparseAttention(b32, 64, 132, 3)), "");
  EXPECT_TRUE(p.bulk);
  // The tensor-core kernel (round 10): on, off again; any head count the streamed plan has.
  EXPECT_EQ(apply({.mma = 1}, &p, b8, 128, base), "");
  EXPECT_TRUE(p.mma);
  EXPECT_FALSE(p.bulk);
  EXPECT_EQ(p.chunk_pages, base.chunk_pages);
  const SparseAttentionPlan mma_base = p;
  EXPECT_EQ(apply({.mma = 2}, &p, b8, 128, mma_base), "");
  EXPECT_FALSE(p.mma);
  // Balanced rows (round 11): on a tensor-core plan (or with mma = 1), off again; the cut is
  // unchanged; the workspace gains one claim counter per row.
  EXPECT_EQ(apply({.balance = 1}, &p, b8, 128, mma_base), "");
  EXPECT_TRUE(p.balance);
  EXPECT_TRUE(p.mma);
  EXPECT_EQ(p.chunk_pages, base.chunk_pages);
  EXPECT_EQ(p.max_splits, base.max_splits);
  EXPECT_EQ(SparseAttentionWorkspaceBytes(b8, p) - SparseAttentionWorkspaceBytes(b8, mma_base),
            (sizeof(uint32_t) * 2 * p.rows + 255) / 256 * 256 - (sizeof(uint32_t) * p.rows + 255) / 256 * 256);
  const SparseAttentionPlan balanced_base = p;
  EXPECT_EQ(apply({.balance = 2}, &p, b8, 128, balanced_base), "");
  EXPECT_FALSE(p.balance);
  EXPECT_EQ(apply({.mma = 1, .balance = 1}, &p, b8, 128, base), "");
  EXPECT_TRUE(p.balance);
  EXPECT_FALSE(IsDefault(SparseAttentionPlanOverrides{.balance = 2}));

  // Errors: the plan is left alone.
  const SparseAttentionPlan sentinel{.heads_per_cta = 77};
  auto refused = [&](const SparseAttentionPlanOverrides& v, const char* word, const SparseAttentionShape& s = {},
                     uint32_t pages = 128, const SparseAttentionPlan* from = nullptr) {
    SparseAttentionPlan out = sentinel;
    const std::string e = apply(v, &out, s.kv_heads == 0 ? b8 : s, pages, from == nullptr ? base : *from);
    EXPECT_NE(e.find(word), std::string::npos) << "'" << e << "' lacks '" << word << "'";
    EXPECT_EQ(out.heads_per_cta, 77u) << e;
  };
  refused({.heads_per_cta = 3}, "heads per CTA");
  refused({.heads_per_cta = 8}, "divide");  // group 4
  refused({.heads_per_cta = 16}, "heads per CTA");
  refused({.chunk_pages = 257}, "chunk pages");
  refused({.chunk_pages = 4, .splits = 4}, "not both");
  refused({.tile_loads = 6}, "tile loads");
  refused({.splits = 1}, "256 pages", {}, 4096);
  SparseAttentionShape g8 = b8;
  g8.q_heads = 64;
  const SparseAttentionPlan g8_base = PlanSparseAttention(g8, 128, 132, 3);
  ASSERT_EQ(g8_base.heads_per_cta, 8u);
  refused({.tile_loads = 8}, "deep tiles", g8, 128, &g8_base);
  refused({.bulk = 3}, "bulk must be");
  refused({.mma = 3}, "mma must be");
  refused({.bulk = 1, .mma = 1}, "pick one");
  refused({.tile_loads = 8, .mma = 1}, "no deep tiles");
  refused({.tile_loads = 8, .bulk = 1}, "standard tiles");
  refused({.balance = 3}, "balance must be");
  refused({.balance = 1}, "tensor-core kernel");                     // base is a streamed plan
  refused({.mma = 2, .balance = 1}, "tensor-core kernel", {}, 128, &mma_base);
  SparseAttentionShape b8t = b8;  // 8-token blocks: a 16-token tile spans two pages
  b8t.block_tokens = 8;
  b8t.slot_bytes = 4096;
  SparseAttentionPlan b8t_base = PlanSparseAttention(b8t, 256, 132, 3);
  b8t_base.mma = true;
  refused({.balance = 1}, "block tokens >= 16", b8t, 256, &b8t_base);
  refused({.bulk = 1}, "heads per CTA <= 4", g8, 128, &g8_base);
  SparseAttentionShape b64 = b8;  // 64-token blocks: a slice is larger than a stage
  b64.block_tokens = 64;
  b64.slot_bytes = 32768;
  const SparseAttentionPlan b64_base = PlanSparseAttention(b64, 32, 132, 3);
  refused({.bulk = 1}, "block tokens", b64, 32, &b64_base);
  SparseAttentionShape huge = b8;
  huge.requests = 4096;  // 4096 × 8 × 4 rows of one head
  const SparseAttentionPlan huge_base = PlanSparseAttention(huge, 128, 132, 3);
  refused({.heads_per_cta = 1}, "65535 rows", huge, 128, &huge_base);
  SparseAttentionPlan staged = base;
  staged.cluster = 16;
  refused({.chunk_pages = 4}, "streamed plan", {}, 128, &staged);
  SparseAttentionShape bad = b8;
  bad.head_dim = 96;
  refused({.chunk_pages = 4}, "shape", bad);
  SparseAttentionPlan out = sentinel;
  EXPECT_NE(ApplySparseAttentionOverrides(b8, 128, base, {}, nullptr), nullptr);
  EXPECT_EQ(out.heads_per_cta, 77u);
}

// The candidate rule r9d (round 9d, no device needed): rows of >= kDenseRuleMinPages pages
// whose default plan is one standard wave get the heuristic from kDenseRuleMinWaves waves on;
// everything else is exactly the default plan.
TEST(SparseAttentionPlan, DenseRuleSplitsLongOneWaveRowsIntoSeveralWaves) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  SparseAttentionOccupancy occ;  // H100-like (as below)
  occ.standard[0] = 6, occ.standard[1] = 4, occ.standard[2] = 3, occ.standard[3] = 2;
  occ.deep[0] = 4, occ.deep[1] = 3, occ.deep[2] = 2;
  occ.l2_bytes = 50u << 20;
  auto same = [](const SparseAttentionPlan& x, const SparseAttentionPlan& y) {
    return x.heads_per_cta == y.heads_per_cta && x.chunk_pages == y.chunk_pages && x.max_splits == y.max_splits &&
           x.rows == y.rows && x.tile_loads == y.tile_loads && x.cluster == y.cluster;
  };
  const SparseAttentionRule r9d = SparseAttentionRule::kRound9Dense;
  // Dense 32K at batch 1: 8 rows × 49 pieces of 42 pages (392 CTAs, one wave of 396) by default;
  // r9d: 3 waves, 8 × 147 pieces of 14 pages (1176 CTAs of 1188).
  const SparseAttentionPlan d32 = PlanSparseAttention(llama, 2048, 132, occ);
  EXPECT_EQ(d32.chunk_pages, 42u);
  EXPECT_EQ(d32.max_splits, 49u);
  EXPECT_TRUE(same(PlanSparseAttention(llama, 2048, 132, occ, SparseAttentionRule::kDefault), d32));
  SparseAttentionPlan p = PlanSparseAttention(llama, 2048, 132, occ, r9d);
  EXPECT_EQ(p.heads_per_cta, 4u);
  EXPECT_EQ(p.rows, 8u);
  EXPECT_EQ(p.chunk_pages, 14u);
  EXPECT_EQ(p.max_splits, 147u);
  EXPECT_EQ(p.tile_loads, 0u);
  EXPECT_EQ(p.cluster, 0u);
  EXPECT_GT(uint64_t{p.rows} * p.max_splits, uint64_t{2} * 132 * 3);
  EXPECT_LE(uint64_t{p.rows} * p.max_splits, uint64_t{kDenseRuleMinWaves} * 132 * 3);
  // Dense 128K at batch 1: 49 × 168 → 147 × 56.
  p = PlanSparseAttention(llama, 8192, 132, occ, r9d);
  EXPECT_EQ(p.chunk_pages, 56u);
  EXPECT_EQ(p.max_splits, 147u);
  // Every piece count covers the row, pieces of 4..256 pages.
  for (uint32_t pages : {1024u, 1500u, 2048u, 4097u, 8192u, 65536u}) {
    p = PlanSparseAttention(llama, pages, 132, occ, r9d);
    EXPECT_GE(uint64_t{p.chunk_pages} * p.max_splits, pages) << pages;
    EXPECT_LT(uint64_t{p.chunk_pages} * (p.max_splits - 1), pages) << pages;
    EXPECT_GE(p.chunk_pages, kSparseAttentionMinChunkPages) << pages;
    EXPECT_LE(p.chunk_pages, kSparseAttentionMaxChunkPages) << pages;
  }
  // Unchanged: batch 8 (several waves already), sparse lists (128 pages), rows just under the
  // threshold, unknown occupancy.
  SparseAttentionShape b8 = llama;
  b8.requests = 8;
  for (uint32_t pages : {2048u, 8192u, 128u}) {
    EXPECT_TRUE(same(PlanSparseAttention(b8, pages, 132, occ, r9d), PlanSparseAttention(b8, pages, 132, occ))) << pages;
  }
  EXPECT_TRUE(same(PlanSparseAttention(llama, 128, 132, occ, r9d), PlanSparseAttention(llama, 128, 132, occ)));
  EXPECT_TRUE(same(PlanSparseAttention(llama, kDenseRuleMinPages - 1, 132, occ, r9d),
                   PlanSparseAttention(llama, kDenseRuleMinPages - 1, 132, occ)));
  SparseAttentionOccupancy unknown = occ;
  unknown.standard[2] = 0;
  EXPECT_TRUE(
      same(PlanSparseAttention(llama, 2048, 132, unknown, r9d), PlanSparseAttention(llama, 2048, 132, unknown)));
  SparseAttentionShape empty = llama;
  empty.kv_heads = 0;
  EXPECT_EQ(PlanSparseAttention(empty, 2048, 132, occ, r9d).rows, 0u);
}

// Round 12c: half the heads per CTA also when both plans keep the same CTAs resident (the
// tensor-core kernel at batch 1: 2 CTAs per SM at 2 and at 4 heads): 16 rows × 16 pieces of 8
// pages instead of 8 rows × 32 pieces of 4, 256 CTAs either way; not when the half plan keeps
// fewer resident, nor when the K/V does not fit in half the L2.
TEST(SparseAttentionPlan, HalfHeadsOnATieOfResidentCtas) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  SparseAttentionOccupancy mma;  // the tensor-core kernel on an H100: 2 per SM whatever the heads
  mma.standard[0] = 2, mma.standard[1] = 2, mma.standard[2] = 2, mma.standard[3] = 2;
  mma.l2_bytes = 50u << 20;
  const SparseAttentionPlan p = PlanSparseAttention(llama, 128, 132, mma);
  EXPECT_EQ(p.heads_per_cta, 2u);
  EXPECT_EQ(p.rows, 16u);
  EXPECT_EQ(p.chunk_pages, 8u);
  EXPECT_EQ(p.max_splits, 16u);
  SparseAttentionOccupancy fewer = mma;
  fewer.standard[1] = 1;  // the half plan would keep 132 resident instead of 256
  EXPECT_EQ(PlanSparseAttention(llama, 128, 132, fewer).heads_per_cta, 4u);
  SparseAttentionOccupancy small_l2 = mma;
  small_l2.l2_bytes = 8u << 20;  // 8.4 MB of K/V: more than half of it
  EXPECT_EQ(PlanSparseAttention(llama, 128, 132, small_l2).heads_per_cta, 4u);
}

// heads_per_cta at batch 1: half the group's largest chunk where the K/V fits in half the L2,
// the largest chunk is one wave and the half chunk is one wave of more CTAs.
TEST(SparseAttentionPlan, FewerHeadsPerCtaWhenRowsAreFew) {
  const SparseAttentionShape llama{.requests = 1, .q_heads = 32, .kv_heads = 8, .head_dim = 128, .block_tokens = 16,
                                   .slot_bytes = 8192};
  SparseAttentionOccupancy occ;  // H100-like: registers of the variants at d 128
  occ.standard[0] = 6, occ.standard[1] = 4, occ.standard[2] = 3, occ.standard[3] = 2;
  occ.deep[0] = 4, occ.deep[1] = 3, occ.deep[2] = 2;
  occ.l2_bytes = 50u << 20;
  // Budget 2048 at batch 1 (8.4 MB): 16 rows × 32 pieces of 4 pages at 2 heads per CTA, standard
  // tiles (512 CTAs ≤ 132 × 4) instead of the deep 256 at 4 heads.
  SparseAttentionPlan p = PlanSparseAttention(llama, 128, 132, occ);
  EXPECT_EQ(p.heads_per_cta, 2u);
  EXPECT_EQ(p.rows, 16u);
  EXPECT_EQ(p.chunk_pages, 4u);
  EXPECT_EQ(p.max_splits, 32u);
  EXPECT_EQ(p.tile_loads, 0u);
  // The largest chunk otherwise, exactly the 5-argument plan.
  auto same_as_full = [&](const SparseAttentionShape& s, uint32_t pages, const SparseAttentionOccupancy& o) {
    const SparseAttentionPlan got = PlanSparseAttention(s, pages, 132, o);
    const uint32_t lg = s.group() >= 8 ? 3 : s.group() % 4 == 0 ? 2 : s.group() % 2 == 0 ? 1 : 0;
    const SparseAttentionPlan want = PlanSparseAttention(s, pages, 132, o.standard[lg], o.deep[lg]);
    EXPECT_EQ(got.heads_per_cta, want.heads_per_cta) << pages;
    EXPECT_EQ(got.rows, want.rows) << pages;
    EXPECT_EQ(got.chunk_pages, want.chunk_pages) << pages;
    EXPECT_EQ(got.max_splits, want.max_splits) << pages;
    EXPECT_EQ(got.tile_loads, want.tile_loads) << pages;
    return got.heads_per_cta;
  };
  EXPECT_EQ(same_as_full(llama, 2048, occ), 4u);  // dense 32K: 134 MB of K/V, more than half the L2
  SparseAttentionShape b8 = llama;
  b8.requests = 8;  // 67 MB, and more than a wave
  EXPECT_EQ(same_as_full(b8, 128, occ), 4u);
  SparseAttentionOccupancy no_l2 = occ;
  no_l2.l2_bytes = 0;
  EXPECT_EQ(same_as_full(llama, 128, no_l2), 4u);
  SparseAttentionOccupancy no_half = occ;
  no_half.standard[1] = 0;  // occupancy of the half chunk unknown
  EXPECT_EQ(same_as_full(llama, 128, no_half), 4u);
  SparseAttentionShape g3 = llama;
  g3.q_heads = 24;  // group 3: one head per CTA already
  EXPECT_EQ(same_as_full(g3, 128, occ), 1u);
  // Group 8: 8 heads (256 CTAs at 2 per SM) → 4 heads, standard: 16 rows × 22 pieces of 6 pages
  // (352 CTAs ≤ 132 × 3).
  SparseAttentionShape g8 = llama;
  g8.q_heads = 64;
  p = PlanSparseAttention(g8, 128, 132, occ);
  EXPECT_EQ(p.heads_per_cta, 4u);
  EXPECT_EQ(p.rows, 16u);
  EXPECT_EQ(p.chunk_pages, 6u);
  EXPECT_EQ(p.max_splits, 22u);
  EXPECT_EQ(p.tile_loads, 0u);
  // One page per row: 8 CTAs of one piece → 16 (both one wave).
  EXPECT_EQ(PlanSparseAttention(llama, 1, 132, occ).heads_per_cta, 2u);
}

}  // namespace
}  // namespace kvtier::kernels
