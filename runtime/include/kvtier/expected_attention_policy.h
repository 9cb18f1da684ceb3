// Importance-ordered demotion: block scores (Expected Attention, computed by the engine with
// kernels/expected_attention.cuh or its CPU reference), span tags, force-keep whitelists,
// and the EvictionPolicy that orders a tier's victims by them.
//
//   engine, every decode step   ScoreBoard::DecodeStep()  -> true every refresh_interval steps
//   engine, when it returns true  score (kvtier score / the kernel) -> ScoreBoard::UpdateScores
//   engine, at prefill            ScoreBoard::TagSpan (system prompt, tool schema, ...) / ForceKeep
//   TierManager demotion thread   ExpectedAttentionPolicy::SelectVictims (reads a snapshot)
//
// The runtime does not score (no GPU path here): the engine runs LaunchExpectedAttention. The
// configuration measured for the default (docs/scoring.md "Default": covariance_rank =
// DeviceCovarianceRank(kDefaultCovarianceRank, head_dim), i.e. 16, bf16/fp16 keys, value_norms
// from LaunchValueNorms at block write so only the keys are read) is the engine's to set.
//
// Order of victims in a tier: the lowest block score first (unscored blocks after every
// scored one: they are the newest), ties by recency (older first), then a clean copy below
// first. Demotion is preferred to deletion by the TierManager itself; this policy adds:
//   - protected and force-kept blocks leave only from HBM to DRAM: in DRAM, NVMe or a tier
//     that drops (the lowest one), they are never victims (SelectVictims returns fewer);
//   - in the lowest tier, where victims are dropped, the drops are shared fairly: each span
//     gives up blocks in proportion to its candidates, lowest scores inside the span
//     (PlanFairKeep).
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "kvtier/block_key.h"
#include "kvtier/eviction_policy.h"
#include "kvtier/keep_warm_policy.h"
#include "kvtier/status.h"
#include "kvtier/types.h"

namespace kvtier {

enum class SpanKind : uint8_t { kSystemPrompt = 0, kToolSchema = 1, kUserTurn = 2, kCustom = 3 };
enum class SpanProtection : uint8_t {
  kDefault = 0,    // system prompt and tool schema protected, the others not
  kProtected = 1,  // never dropped, demoted only to DRAM
  kDroppable = 2,  // shares fair drop budgets with the other droppable spans
};

struct SpanTag {
  uint32_t span_id = 0;  // the caller's id; blocks never tagged are in span kUntaggedSpan
  SpanKind kind = SpanKind::kCustom;
  SpanProtection protection = SpanProtection::kDefault;
  bool is_protected() const;
};
inline constexpr uint32_t kUntaggedSpan = 0xFFFFFFFFu;

struct BlockScore {
  BlockKey key;
  float score = 0;  // finite, >= 0; e.g. the Expected Attention block score summed over KV heads
};

// The ScoreBoard entries of one layer from a scorer's output: block_scores is
// [kv_heads][chains.size()] (kernels/expected_attention.cuh or its CPU reference, blocks in
// sequence order); a block's score is its sum over the KV heads. kInvalidArgument for a
// size mismatch or a score that is not finite and >= 0.
Result<std::vector<BlockScore>> BlockScoresOfLayer(std::span<const ChainHash> chains, LayerId layer,
                                                   std::span<const float> block_scores, uint32_t kv_heads);

struct ScoreBoardOptions {
  uint32_t refresh_interval = 512;  // decode steps between score refreshes (ea_interval)

  Status Validate() const;  // refresh_interval >= 1
};

// Scores, span tags and the force-keep set. Thread-safe: writers take a mutex and publish an
// immutable snapshot; the policy reads snapshots.
class ScoreBoard {
 public:
  struct State {
    std::unordered_map<BlockKey, float> scores;
    std::unordered_map<ChainHash, SpanTag, ChainHashHasher> spans;
    std::unordered_set<ChainHash, ChainHashHasher> force_keep;
  };

  static Result<std::shared_ptr<ScoreBoard>> Create(ScoreBoardOptions options);

  // Counts one decode step; true when scores are due (the first step, then every
  // refresh_interval steps). The engine scores and calls UpdateScores when it is true.
  bool DecodeStep();
  // Replaces the scores of these keys (others keep theirs). kInvalidArgument for a score
  // that is not finite and >= 0; nothing changes then.
  Status UpdateScores(std::span<const BlockScore> scores);
  // Tags every layer of these token blocks. A chain tagged twice keeps the last tag.
  void TagSpan(std::span<const ChainHash> chains, SpanTag tag);
  void ForceKeep(std::span<const ChainHash> chains);
  // Forgets scores (every layer), tags and force-keep marks of these chains (a finished
  // request).
  void Forget(std::span<const ChainHash> chains);

  std::shared_ptr<const State> Snapshot() const;
  uint64_t decode_steps() const;

 private:
  explicit ScoreBoard(ScoreBoardOptions options);
  template <class F>
  void Mutate(F&& f);
  ScoreBoardOptions options_;
  mutable std::mutex mu_;
  uint64_t steps_ = 0;                  // guarded by mu_
  std::shared_ptr<const State> state_;  // swapped under mu_
};

struct ExpectedAttentionPolicyOptions {
  TierKind tier = TierKind::kHbm;     // the tier this policy orders
  TierKind lowest = TierKind::kNvme;  // the runtime's lowest tier: victims there are dropped
};

// Externally synchronized (the demotion thread), as every EvictionPolicy.
class ExpectedAttentionPolicy final : public EvictionPolicy {
 public:
  ExpectedAttentionPolicy(ExpectedAttentionPolicyOptions options, std::shared_ptr<const ScoreBoard> board);
  std::string_view name() const override { return "expected-attention"; }
  void ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) override;
  size_t SelectVictims(std::span<EvictionCandidate> candidates, size_t count) override;

  // Candidates held back on the last call because they are protected or force-kept.
  size_t last_held() const { return last_held_; }

 private:
  bool Drops() const { return options_.tier == options_.lowest; }
  ExpectedAttentionPolicyOptions options_;
  std::shared_ptr<const ScoreBoard> board_;
  size_t last_held_ = 0;
};

}  // namespace kvtier
