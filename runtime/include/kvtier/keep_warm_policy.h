// Keep-warm residency hints: a budgeted set of chains whose blocks a tier should keep
// resident, weighted (e.g. by how often a precomputed query store entry that references
// the prefix was hit), and the EvictionPolicy decorator that applies them.
//
//   producer (e.g. QueryStore::ResidencyHints)  -->  KeepWarmHints::Set(hints)
//   TierManager demotion thread  -->  KeepWarmPolicy::ChooseVictims (reads a snapshot)
//
// A hint never pins: a hinted block is only ordered after every unhinted candidate, so it
// leaves a tier when the tier must shed more blocks than it has unhinted candidates. The
// set is bounded by KeepWarmOptions::max_chains (the budget), so a flood of hints cannot
// turn into unbounded residency.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <unordered_map>

#include "kvtier/block_key.h"
#include "kvtier/eviction_policy.h"
#include "kvtier/status.h"

namespace kvtier {

// Keep every layer of the block with chain hash `chain` warm, with importance `weight`.
struct ResidencyHint {
  ChainHash chain;
  double weight = 0;  // > 0; larger = kept longer
  friend bool operator==(const ResidencyHint&, const ResidencyHint&) = default;
};

struct KeepWarmOptions {
  // The budget: at most this many chains (token blocks; each covers all layers) are hinted
  // at once. Set() keeps the heaviest ones.
  uint32_t max_chains = 4096;

  Status Validate() const;  // max_chains >= 1
};

struct ChainHashHasher {
  size_t operator()(const ChainHash& c) const noexcept { return c.prefix64(); }
};

// The current hint set. Thread-safe: Set() may run on any thread while policies read.
class KeepWarmHints {
 public:
  using Map = std::unordered_map<ChainHash, double, ChainHashHasher>;

  // kInvalidArgument if the options are invalid.
  static Result<std::shared_ptr<KeepWarmHints>> Create(KeepWarmOptions options);

  // Replaces the set with the `max_chains` heaviest of `hints` (weights of repeated chains
  // add up; ties broken by chain order, so the result is deterministic). kInvalidArgument
  // for a weight that is not finite and > 0; the set is then unchanged.
  Status Set(std::span<const ResidencyHint> hints);
  void Clear();

  // An immutable view of the set at this moment (never null).
  std::shared_ptr<const Map> Snapshot() const;
  size_t size() const;
  const KeepWarmOptions& options() const { return options_; }

 private:
  explicit KeepWarmHints(KeepWarmOptions options);
  KeepWarmOptions options_;
  mutable std::mutex mu_;  // guards the pointer swap only; readers copy the shared_ptr
  std::shared_ptr<const Map> map_;
};

// Orders candidates as: unhinted ones in `inner`'s order, then hinted ones lightest
// first (ties in `inner`'s order). Called by the TierManager's demotion thread only, as
// every EvictionPolicy (externally synchronized); the hint set may change concurrently.
class KeepWarmPolicy final : public EvictionPolicy {
 public:
  KeepWarmPolicy(std::unique_ptr<EvictionPolicy> inner, std::shared_ptr<const KeepWarmHints> hints);
  std::string_view name() const override { return "keep-warm"; }
  void ChooseVictims(std::span<EvictionCandidate> candidates, size_t count) override;
  // As ChooseVictims, and keeps `inner`'s hold-backs: the unhinted part goes through
  // inner->SelectVictims; if it holds any unhinted block back, no hinted block leaves this
  // pass; hinted blocks `inner` holds back stay behind the ones it lets go.
  size_t SelectVictims(std::span<EvictionCandidate> candidates, size_t count) override;

  // How many candidates were hinted on the last call (for tests and metrics).
  size_t last_hinted() const { return last_hinted_; }

 private:
  std::unique_ptr<EvictionPolicy> inner_;
  std::shared_ptr<const KeepWarmHints> hints_;
  size_t last_hinted_ = 0;
};

}  // namespace kvtier
