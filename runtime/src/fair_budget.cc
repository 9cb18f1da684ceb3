#include "kvtier/fair_budget.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

namespace kvtier {

Result<std::vector<uint8_t>> PlanFairKeep(std::span<const SpanBlock> blocks, size_t keep_budget) {
  if (keep_budget > blocks.size()) {
    return Status::InvalidArgument(fmt::format("keep budget {} exceeds the {} blocks", keep_budget, blocks.size()));
  }
  std::vector<uint8_t> keep(blocks.size(), 0);
  // Spans in id order (std::map): deterministic rounding.
  std::map<uint32_t, std::vector<size_t>> spans;
  size_t protected_blocks = 0;
  for (size_t i = 0; i < blocks.size(); ++i) {
    if (!std::isfinite(blocks[i].score)) {
      return Status::InvalidArgument(fmt::format("block {} has a non-finite score {}", i, blocks[i].score));
    }
    if (blocks[i].rule == KeepRule::kProtected) {
      keep[i] = 1;
      ++protected_blocks;
    } else {
      spans[blocks[i].span].push_back(i);
    }
  }
  if (protected_blocks > keep_budget) {
    return Status::FailedPrecondition(fmt::format(
        "protected spans hold {} blocks but the keep budget is {}: protected blocks are never dropped",
        protected_blocks, keep_budget));
  }
  const size_t budget = keep_budget - protected_blocks;
  const size_t droppable = blocks.size() - protected_blocks;
  if (droppable == 0) return keep;

  // Largest remainder: floor shares, then one more to the largest fractional parts.
  struct Share {
    uint32_t span;
    size_t quota;
    double frac;
  };
  std::vector<Share> shares;
  size_t given = 0;
  for (const auto& [span, idx] : spans) {
    const double exact = static_cast<double>(budget) * static_cast<double>(idx.size()) / static_cast<double>(droppable);
    const auto q = static_cast<size_t>(std::floor(exact));
    shares.push_back({span, q, exact - static_cast<double>(q)});
    given += q;
  }
  std::vector<size_t> order(shares.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return shares[a].frac > shares[b].frac; });
  for (size_t k = 0; given < budget; ++k, ++given) ++shares[order[k % order.size()]].quota;

  for (const Share& sh : shares) {
    std::vector<size_t>& idx = spans[sh.span];
    size_t forced = 0;
    for (size_t i : idx) forced += blocks[i].rule == KeepRule::kForceKeep ? 1 : 0;
    if (forced > sh.quota) {
      return Status::InvalidArgument(fmt::format(
          "span {}: {} force-kept blocks exceed its fair budget of {} (of {} blocks kept in all); "
          "keep more blocks or force-keep fewer",
          sh.span, forced, sh.quota, keep_budget));
    }
    // Force-kept first, then by score (higher first), then earlier first.
    std::stable_sort(idx.begin(), idx.end(), [&](size_t a, size_t b) {
      const bool fa = blocks[a].rule == KeepRule::kForceKeep, fb = blocks[b].rule == KeepRule::kForceKeep;
      if (fa != fb) return fa;
      return blocks[a].score > blocks[b].score;
    });
    for (size_t k = 0; k < sh.quota; ++k) keep[idx[k]] = 1;
  }
  return keep;
}

Status HeadBudgetOptions::Validate() const {
  if (!(alpha_safeguard >= 0 && alpha_safeguard <= 1)) {
    return Status::InvalidArgument(fmt::format("alpha_safeguard = {} is outside [0, 1]", alpha_safeguard));
  }
  return Status::Ok();
}

Result<std::vector<uint8_t>> AllocateHeadBudgets(std::span<const float> scores, uint32_t heads, uint32_t n,
                                                 uint32_t kept_per_head, const HeadBudgetOptions& options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  if (scores.size() != size_t{heads} * n) {
    return Status::InvalidArgument(fmt::format("{} scores for {} heads x {} entries", scores.size(), heads, n));
  }
  if (kept_per_head > n) {
    return Status::InvalidArgument(fmt::format("kept_per_head {} exceeds the {} entries per head", kept_per_head, n));
  }
  std::vector<uint8_t> keep(scores.size(), 0);
  const auto safe = static_cast<uint32_t>(std::floor(options.alpha_safeguard * kept_per_head));
  std::vector<uint32_t> idx(n);
  for (uint32_t h = 0; h < heads; ++h) {
    std::iota(idx.begin(), idx.end(), 0u);
    const float* row = &scores[size_t{h} * n];
    std::partial_sort(idx.begin(), idx.begin() + safe, idx.end(), [&](uint32_t a, uint32_t b) {
      return row[a] != row[b] ? row[a] > row[b] : a < b;
    });
    for (uint32_t k = 0; k < safe; ++k) keep[size_t{h} * n + idx[k]] = 1;
  }
  // The rest by one global ranking over the entries not yet kept.
  std::vector<size_t> rest;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (!keep[i]) rest.push_back(i);
  }
  const size_t more = size_t{heads} * kept_per_head - size_t{heads} * safe;
  std::partial_sort(rest.begin(), rest.begin() + static_cast<ptrdiff_t>(more), rest.end(), [&](size_t a, size_t b) {
    return scores[a] != scores[b] ? scores[a] > scores[b] : a < b;
  });
  for (size_t k = 0; k < more; ++k) keep[rest[k]] = 1;
  return keep;
}

}  // namespace kvtier
