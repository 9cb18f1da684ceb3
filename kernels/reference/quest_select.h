// CPU reference of Quest page selection (Tang et al., ICML 2024; arXiv 2406.10774), the
// selector of kvtier's sparse-attention path. The CUDA kernel (kernels/quest_select.cuh)
// computes the same selection and is tested against this; the runtime's QuestSelector and
// `kvtier select` call these functions directly.
//
// Per slice (one KV head of one block) the metadata is the per-channel minimum m and
// maximum M of the slice's keys (keys as cached, i.e. after RoPE). For a query q the bound
//     U = Σ_i max(q_i·m_i, q_i·M_i)   ≥   max over the slice's keys k of q·k
// ranks blocks. With GQA the query heads of a group are combined per KV head: the sum of
// their bounds or the maximum (the default: docs/sparse.md measures both).
//
// Compact metadata (what lives in HBM): int8 per channel plus one fp32 scale per slice,
//     scale = max_i(|m_i|, |M_i|) / 127   (1.0 when every bound is 0)
//     m_q = floor(m / scale),  M_q = ceil(M / scale)   clamped to [-127, 127]
// so scale·m_q ≤ m and scale·M_q ≥ M: the dequantised bound is never below the true one
// (selection stays conservative), at 2·d + 4 bytes per slice instead of 2·d·2 (bf16).
// In fp32 (as the reference computes it): scale is raised ulp by ulp while 127·scale < max,
// and m_q (M_q) is lowered (raised) by one where the fp32 product scale·m_q > m
// (scale·M_q < M), so the promise holds for the rounded products, not only in exact arithmetic.
//
// Selection per KV head: the first `sink_blocks` blocks and the last block (the current,
// possibly partially filled one) are always selected; the remaining budget goes to the
// highest scores, ties to the lower block index. The result is sorted ascending and has
// exactly BudgetBlocks() entries. Arrays are C order, dense; functions run on the calling
// thread, allocate at most their own scratch and borrow their inputs. Shapes are checked by
// the binding layers (the runtime, `kvtier select`), not here.
#pragma once

#include <cstdint>
#include <span>

namespace kvtier::kernels {

enum class GqaCombine : uint8_t { kSum = 0, kMax = 1 };

struct QuestShape {
  uint32_t q_heads = 0;   // a multiple of kv_heads
  uint32_t kv_heads = 0;
  uint32_t head_dim = 0;
  uint32_t blocks = 0;    // blocks of the sequence; the last one may be partial

  uint32_t group() const { return q_heads / kv_heads; }
};

struct QuestSelectParams {
  uint32_t budget_tokens = 2048;  // selected blocks = budget_tokens / block_tokens (forced included)
  uint32_t block_tokens = 16;
  uint32_t sink_blocks = 1;       // always selected, from block 0
  uint32_t min_blocks = 3;        // Quest's evaluation selects at least max(3, budget / page)
  GqaCombine combine = GqaCombine::kMax;  // the measured default (docs/sparse.md)
};

// min(blocks, max(min_blocks, budget_tokens / block_tokens, sink_blocks + 1)).
uint32_t QuestBudgetBlocks(const QuestShape& shape, const QuestSelectParams& params);

// bounds [kv_heads][blocks][2][d] (min then max) → q [..][2][d] int8 and scales [kv_heads][blocks].
void QuantizeQuestBounds(const QuestShape& shape, std::span<const float> bounds, std::span<int8_t> q,
                         std::span<float> scales);

// queries [q_heads][d]; bounds [kv_heads][blocks][2][d] → scores [kv_heads][blocks].
void QuestScores(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                 std::span<const float> bounds, std::span<float> scores);

// The same on the compact form: the bound is computed on scale·m_q, scale·M_q.
void QuestScoresQuantized(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                          std::span<const int8_t> q, std::span<const float> scales, std::span<float> scores);

// The fixed-point form of QuestScoresQuantized that the tensor-core score kernel
// (QuestScoreAlgorithm::kTensorCore) computes, bit for bit. Per query head g (per KV head
// with kSum: one column P_i = Σ_g max(q_gi, 0), N_i = Σ_g min(q_gi, 0), summed in fp32 in
// g order) the 2d weights w = (min(q_i, 0) for the d min bounds, max(q_i, 0) for the d max
// bounds) are rounded to integers on one power-of-two grid:
//     E = QuestFixedPointExponent(w)      (2^(E−1) ≤ max|w| < 2^E; 0 when w is all zeros)
//     W_j = rint(w_j · 2^(22 − E))        (|W_j| ≤ 2^22: 23 significant bits, like fp32)
// and the bound is the exact integer sum S = Σ_j W_j · b_j over the int8 bounds b, read back
// as f = float(S) · 2^(E − 22) (one rounding). The score is f (kSum: one column) or the
// largest f of the group (kMax), times the slice's scale in fp32. A head whose
// query has a non-finite value (or whose kSum column overflows) makes the score NaN, which
// ranks last. Against QuestScoresQuantized the rounding of w adds at most
//     Σ_heads 2^(E − 23) · scale · Σ_j |b_j|
// to the fp32-vs-double difference (tests/kernels/quest_select_reference_test.cc checks it).
inline constexpr int kQuestFixedPointBits = 22;
// E for a weight vector (see above); kQuestNonFinite when a value is NaN or infinite.
inline constexpr int kQuestNonFinite = -1000000;
int QuestFixedPointExponent(std::span<const float> w);
void QuestScoresFixedPoint(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                           std::span<const int8_t> q, std::span<const float> scales, std::span<float> scores);
// Σ over KV head h's columns of 2^(E − 23): times scale · Σ_j |b_j| of a slice, the most the
// fixed-point rounding of the queries moves its score (the tolerance term tests add).
// Infinity when a column is not finite.
double QuestFixedPointQuantum(const QuestShape& shape, GqaCombine combine, std::span<const float> queries,
                              uint32_t h);

// scores [kv_heads][blocks] → selected [kv_heads][QuestBudgetBlocks()] block indices, each
// row sorted ascending.
void QuestSelectTopK(const QuestShape& shape, const QuestSelectParams& params, std::span<const float> scores,
                     std::span<uint32_t> selected);

}  // namespace kvtier::kernels
