// Guardrails for dropping KV blocks ("The Pitfalls of KV Cache Compression", Chen et al.,
// arXiv 2510.00231): fair per-span keep budgets with span-local scoring, force-keep
// whitelists and protected spans; and AdaKV-style per-head budgets (kvpress adakv_press.py).
//
// Pure functions over caller-owned arrays: no state, no locks (thread-safe).
//
// PlanFairKeep, given blocks tagged with a span, a score (higher = more important) and a
// rule, and a keep budget b (blocks kept in all):
//   1. protected blocks are always kept; b' = b − #protected (kFailedPrecondition if < 0);
//   2. the droppable spans share b' in proportion to their lengths, b_X = b'·n_X/n' rounded
//      by largest remainder (ties to the lower span id), so Σ b_X = b';
//   3. inside each span: its force-kept blocks first (kInvalidArgument naming the span when
//      they exceed b_X), then its highest scores (ties: the earlier block) up to b_X.
// So for every drop ratio the keep rates of the droppable spans differ only by rounding.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kvtier/status.h"

namespace kvtier {

enum class KeepRule : uint8_t {
  kScored = 0,     // kept or dropped by score within its span's budget
  kForceKeep = 1,  // whitelisted: kept, counted against its span's budget
  kProtected = 2,  // a protected span (system prompt, tool schema, caller-tagged): never dropped
};

struct SpanBlock {
  uint32_t span = 0;  // a caller's span id (dense ids keep the plan cheap; any value works)
  float score = 0;
  KeepRule rule = KeepRule::kScored;
};

// keep[i] = 1 for the blocks kept. kInvalidArgument for keep_budget > blocks.size() or a
// non-finite score; see the header comment for the other errors.
Result<std::vector<uint8_t>> PlanFairKeep(std::span<const SpanBlock> blocks, size_t keep_budget);

struct HeadBudgetOptions {
  // Each head first keeps its top alpha_safeguard · kept_per_head entries; the rest of the
  // total (heads · kept_per_head) goes to the highest scores across all heads.
  double alpha_safeguard = 0.20;

  Status Validate() const;  // 0 <= alpha_safeguard <= 1
};

// AdaKV allocation over `scores` [heads][n] (row major): keep[h·n + i] = 1 for kept
// entries; exactly heads · kept_per_head are kept. kInvalidArgument for a size mismatch,
// kept_per_head > n or bad options.
Result<std::vector<uint8_t>> AllocateHeadBudgets(std::span<const float> scores, uint32_t heads, uint32_t n,
                                                 uint32_t kept_per_head, const HeadBudgetOptions& options = {});

}  // namespace kvtier
