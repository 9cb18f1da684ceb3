#include "kvtier/keep_warm_policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

namespace kvtier {

Status KeepWarmOptions::Validate() const {
  if (max_chains == 0) return Status::InvalidArgument("keep-warm: max_chains = 0 (the budget must be >= 1)");
  return Status::Ok();
}

Result<std::shared_ptr<KeepWarmHints>> KeepWarmHints::Create(KeepWarmOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return std::shared_ptr<KeepWarmHints>(new KeepWarmHints(options));
}

KeepWarmHints::KeepWarmHints(KeepWarmOptions options)
    : options_(options), map_(std::make_shared<const Map>()) {}

Status KeepWarmHints::Set(std::span<const ResidencyHint> hints) {
  Map merged;
  merged.reserve(hints.size());
  for (size_t i = 0; i < hints.size(); ++i) {
    const double w = hints[i].weight;
    if (!std::isfinite(w) || w <= 0) {
      return Status::InvalidArgument(fmt::format("keep-warm hint {} has weight {} (must be finite and > 0)", i, w));
    }
    merged[hints[i].chain] += w;
  }
  auto out = std::make_shared<Map>();
  if (merged.size() <= options_.max_chains) {
    *out = std::move(merged);
  } else {
    // Over budget: keep the heaviest. Sorting a copy keeps the choice deterministic.
    std::vector<std::pair<ChainHash, double>> all(merged.begin(), merged.end());
    auto heavier = [](const auto& a, const auto& b) {
      if (a.second != b.second) return a.second > b.second;
      return a.first < b.first;
    };
    const auto keep = static_cast<ptrdiff_t>(options_.max_chains);
    std::partial_sort(all.begin(), all.begin() + keep, all.end(), heavier);
    out->reserve(options_.max_chains);
    for (auto it = all.begin(); it != all.begin() + keep; ++it) out->emplace(it->first, it->second);
  }
  std::lock_guard lock(mu_);
  map_ = std::move(out);
  return Status::Ok();
}

void KeepWarmHints::Clear() {
  auto empty = std::make_shared<const Map>();
  std::lock_guard lock(mu_);
  map_ = std::move(empty);
}

std::shared_ptr<const KeepWarmHints::Map> KeepWarmHints::Snapshot() const {
  std::lock_guard lock(mu_);
  return map_;
}

size_t KeepWarmHints::size() const { return Snapshot()->size(); }

KeepWarmPolicy::KeepWarmPolicy(std::unique_ptr<EvictionPolicy> inner, std::shared_ptr<const KeepWarmHints> hints)
    : inner_(inner ? std::move(inner) : MakeLruPolicy()), hints_(std::move(hints)) {
  KVT_CHECK_MSG(hints_ != nullptr, "KeepWarmPolicy needs a hint set");
}

void KeepWarmPolicy::ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) {
  const std::shared_ptr<const KeepWarmHints::Map> hints = hints_->Snapshot();
  if (hints->empty()) {
    last_hinted_ = 0;
    inner_->ChooseVictims(candidates, count);
    return;
  }
  auto unhinted_end = std::stable_partition(candidates.begin(), candidates.end(), [&](const EvictionCandidate& c) {
    return !hints->contains(c.key.chain);
  });
  const auto unhinted = static_cast<size_t>(unhinted_end - candidates.begin());
  last_hinted_ = candidates.size() - unhinted;
  if (count <= unhinted) {
    inner_->ChooseVictims(candidates.first(unhinted), count);
    return;
  }
  // More victims are needed than there are unhinted blocks: the budget is exceeded by
  // demand, so hinted blocks go too, lightest first.
  inner_->ChooseVictims(candidates.first(unhinted), unhinted);
  std::span<EvictionCandidate> hinted = candidates.subspan(unhinted);
  inner_->ChooseVictims(hinted, hinted.size());
  std::stable_sort(hinted.begin(), hinted.end(), [&](const EvictionCandidate& a, const EvictionCandidate& b) {
    return hints->at(a.key.chain) < hints->at(b.key.chain);
  });
}

size_t KeepWarmPolicy::SelectVictims(std::span<EvictionCandidate> candidates, size_t count) {
  const std::shared_ptr<const KeepWarmHints::Map> hints = hints_->Snapshot();
  if (hints->empty()) {
    last_hinted_ = 0;
    return inner_->SelectVictims(candidates, count);
  }
  auto unhinted_end = std::stable_partition(candidates.begin(), candidates.end(), [&](const EvictionCandidate& c) {
    return !hints->contains(c.key.chain);
  });
  const auto unhinted = static_cast<size_t>(unhinted_end - candidates.begin());
  last_hinted_ = candidates.size() - unhinted;
  if (count <= unhinted) return inner_->SelectVictims(candidates.first(unhinted), count);
  const size_t unhinted_going = inner_->SelectVictims(candidates.first(unhinted), unhinted);
  if (unhinted_going < unhinted) return unhinted_going;  // a held unhinted block comes first
  std::span<EvictionCandidate> hinted = candidates.subspan(unhinted);
  const size_t hinted_going = std::min(inner_->SelectVictims(hinted, hinted.size()), hinted.size());
  std::stable_sort(hinted.begin(), hinted.begin() + static_cast<ptrdiff_t>(hinted_going),
                   [&](const EvictionCandidate& a, const EvictionCandidate& b) {
                     return hints->at(a.key.chain) < hints->at(b.key.chain);
                   });
  return unhinted + std::min(hinted_going, count - unhinted);
}

}  // namespace kvtier
