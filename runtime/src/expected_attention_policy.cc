// The policy never sees token positions, only BlockKeys: spans and force-keep marks are
// keyed by chain hash (every layer of a token block shares them), scores by BlockKey (each
// layer has its own statistics).
#include "kvtier/expected_attention_policy.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <iterator>
#include <limits>
#include <vector>

#include "kvtier/fair_budget.h"

namespace kvtier {

bool SpanTag::is_protected() const {
  switch (protection) {
    case SpanProtection::kProtected: return true;
    case SpanProtection::kDroppable: return false;
    case SpanProtection::kDefault: return kind == SpanKind::kSystemPrompt || kind == SpanKind::kToolSchema;
  }
  return true;
}

Result<std::vector<BlockScore>> BlockScoresOfLayer(std::span<const ChainHash> chains, LayerId layer,
                                                   std::span<const float> block_scores, uint32_t kv_heads) {
  if (kv_heads == 0 || block_scores.size() != size_t{kv_heads} * chains.size()) {
    return Status::InvalidArgument(fmt::format("{} block scores for {} KV heads x {} blocks", block_scores.size(),
                                               kv_heads, chains.size()));
  }
  std::vector<BlockScore> out;
  out.reserve(chains.size());
  for (size_t b = 0; b < chains.size(); ++b) {
    double sum = 0;
    for (uint32_t h = 0; h < kv_heads; ++h) sum += block_scores[h * chains.size() + b];
    const auto score = static_cast<float>(sum);
    if (!std::isfinite(score) || score < 0) {
      return Status::InvalidArgument(fmt::format("block {} of layer {} scores {} (must be finite and >= 0)", b,
                                                 layer.value(), score));
    }
    out.push_back(BlockScore{BlockKey{chains[b], layer}, score});
  }
  return out;
}

Status ScoreBoardOptions::Validate() const {
  if (refresh_interval == 0) return Status::InvalidArgument("score board: refresh_interval = 0 (must be >= 1)");
  return Status::Ok();
}

Result<std::shared_ptr<ScoreBoard>> ScoreBoard::Create(ScoreBoardOptions options) {
  KVT_RETURN_IF_ERROR(options.Validate());
  return std::shared_ptr<ScoreBoard>(new ScoreBoard(options));
}

ScoreBoard::ScoreBoard(ScoreBoardOptions options) : options_(options), state_(std::make_shared<const State>()) {}

bool ScoreBoard::DecodeStep() {
  std::lock_guard lock(mu_);
  return steps_++ % options_.refresh_interval == 0;
}

uint64_t ScoreBoard::decode_steps() const {
  std::lock_guard lock(mu_);
  return steps_;
}

template <class F>
void ScoreBoard::Mutate(F&& f) {
  // Copy-on-write: readers keep the snapshot they hold. Writes are rare (a refresh every
  // refresh_interval steps, tags at prefill), reads happen every demotion pass.
  std::lock_guard lock(mu_);
  auto next = std::make_shared<State>(*state_);
  f(*next);
  state_ = std::move(next);
}

Status ScoreBoard::UpdateScores(std::span<const BlockScore> scores) {
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isfinite(scores[i].score) || scores[i].score < 0) {
      return Status::InvalidArgument(
          fmt::format("score {} of block {} is {} (must be finite and >= 0)", i, scores[i].key.ToString(), scores[i].score));
    }
  }
  Mutate([&](State& s) {
    for (const BlockScore& b : scores) s.scores[b.key] = b.score;
  });
  return Status::Ok();
}

void ScoreBoard::TagSpan(std::span<const ChainHash> chains, SpanTag tag) {
  Mutate([&](State& s) {
    for (const ChainHash& c : chains) s.spans[c] = tag;
  });
}

void ScoreBoard::ForceKeep(std::span<const ChainHash> chains) {
  Mutate([&](State& s) { s.force_keep.insert(chains.begin(), chains.end()); });
}

void ScoreBoard::Forget(std::span<const ChainHash> chains) {
  Mutate([&](State& s) {
    std::unordered_set<ChainHash, ChainHashHasher> gone(chains.begin(), chains.end());
    for (const ChainHash& c : chains) {
      s.spans.erase(c);
      s.force_keep.erase(c);
    }
    std::erase_if(s.scores, [&](const auto& kv) { return gone.contains(kv.first.chain); });
  });
}

std::shared_ptr<const ScoreBoard::State> ScoreBoard::Snapshot() const {
  std::lock_guard lock(mu_);
  return state_;
}

ExpectedAttentionPolicy::ExpectedAttentionPolicy(ExpectedAttentionPolicyOptions options,
                                                 std::shared_ptr<const ScoreBoard> board)
    : options_(options), board_(std::move(board)) {}

void ExpectedAttentionPolicy::ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) {
  (void)SelectVictims(candidates, count);
}

namespace {

struct Info {
  float score;  // unscored: +max (after every scored block)
  uint32_t span;
  bool held;  // protected or force-kept
};

}  // namespace

size_t ExpectedAttentionPolicy::SelectVictims(std::span<EvictionCandidate> candidates, size_t count) {
  const auto state = board_->Snapshot();
  const bool holds_here = options_.tier != TierKind::kHbm || Drops();
  std::vector<std::pair<EvictionCandidate, Info>> all;
  all.reserve(candidates.size());
  for (const EvictionCandidate& c : candidates) {
    Info info{std::numeric_limits<float>::max(), kUntaggedSpan, false};
    if (auto it = state->scores.find(c.key); it != state->scores.end()) info.score = it->second;
    if (auto it = state->spans.find(c.key.chain); it != state->spans.end()) {
      info.span = it->second.span_id;
      info.held = it->second.is_protected();
    }
    info.held = info.held || state->force_keep.contains(c.key.chain);
    all.emplace_back(c, info);
  }
  // Best victim first: may leave, not held, lowest score, oldest, free to leave.
  auto better_victim = [&](const auto& a, const auto& b) {
    const bool sa = holds_here && a.second.held, sb = holds_here && b.second.held;
    if (sa != sb) return sb;
    if (a.second.held != b.second.held) return b.second.held;
    if (a.second.score != b.second.score) return a.second.score < b.second.score;
    if (a.first.last_access != b.first.last_access) return a.first.last_access < b.first.last_access;
    return a.first.has_lower_copy > b.first.has_lower_copy;
  };
  std::sort(all.begin(), all.end(), better_victim);
  size_t movable = 0;
  while (movable < all.size() && !(holds_here && all[movable].second.held)) ++movable;
  last_held_ = all.size() - movable;
  const size_t victims = std::min(count, movable);

  if (Drops() && victims > 0 && victims < movable) {
    // Fair drops: each span gives up blocks in proportion to its candidates. Newest first
    // in the plan's input, so that equal scores keep the newer block.
    std::vector<size_t> order(movable);
    for (size_t i = 0; i < movable; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return all[a].first.last_access > all[b].first.last_access;
    });
    std::vector<SpanBlock> blocks(movable);
    for (size_t k = 0; k < movable; ++k) {
      blocks[k] = SpanBlock{all[order[k]].second.span, all[order[k]].second.score, KeepRule::kScored};
    }
    auto keep = PlanFairKeep(blocks, movable - victims);
    KVT_CHECK_MSG(keep.ok(), keep.status().ToString());  // only scored blocks, budget <= size
    std::vector<uint8_t> dropped(movable, 0);
    for (size_t k = 0; k < movable; ++k) dropped[order[k]] = (*keep)[k] ? 0 : 1;
    std::vector<std::pair<EvictionCandidate, Info>> reordered;
    reordered.reserve(all.size());
    for (int pass = 1; pass >= 0; --pass) {
      for (size_t i = 0; i < movable; ++i) {
        if (dropped[i] == pass) reordered.push_back(all[i]);
      }
    }
    std::move(all.begin() + static_cast<ptrdiff_t>(movable), all.end(), std::back_inserter(reordered));
    all = std::move(reordered);
  }
  for (size_t i = 0; i < all.size(); ++i) candidates[i] = all[i].first;
  return victims;
}

}  // namespace kvtier
