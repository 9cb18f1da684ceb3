// Seeded fault injection for tests: decorators that wrap a real Tier or Mover and make a
// chosen fraction of calls fail, half-finish or run late. The same seed replays the same
// faults for the same sequence of calls.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <thread>

#include "kvtier/mover.h"
#include "kvtier/tier.h"

namespace kvtier {

struct FaultOptions {
  uint64_t seed = 1;
  double reserve_failure = 0.0;  // Tier::Reserve returns kExhausted
  double copy_failure = 0.0;     // Mover::Submit fails the batch with kIoError, nothing copied
  double partial_copy = 0.0;     // the first half of the segments is copied, then kIoError
  double delay = 0.0;            // completion is held back by up to max_delay
  std::chrono::microseconds max_delay{0};
};

struct FaultCounters {
  std::atomic<uint64_t> reserve_failures{0};
  std::atomic<uint64_t> copy_failures{0};
  std::atomic<uint64_t> partial_copies{0};
  std::atomic<uint64_t> delays{0};
};

// Draws seeded decisions; shared by the decorators of one test.
class FaultPlan {
 public:
  explicit FaultPlan(FaultOptions options) : options_(options), rng_(options.seed) {}
  const FaultOptions& options() const { return options_; }
  bool Draw(double p);
  std::chrono::microseconds DrawDelay();
  FaultCounters& counters() { return counters_; }

 private:
  FaultOptions options_;
  std::mutex mu_;
  std::mt19937_64 rng_;
  FaultCounters counters_;
};

class FaultyTier final : public Tier {
 public:
  FaultyTier(std::unique_ptr<Tier> inner, std::shared_ptr<FaultPlan> plan)
      : inner_(std::move(inner)), plan_(std::move(plan)) {}
  std::string_view name() const override { return inner_->name(); }
  const TierCaps& caps() const override { return inner_->caps(); }
  Result<std::vector<SlotId>> Reserve(uint32_t count) override;
  void Release(std::span<const SlotId> slots, Fence last_use) override { inner_->Release(slots, last_use); }
  Location Locate(SlotId slot) const override { return inner_->Locate(slot); }
  TierUsage usage() const override { return inner_->usage(); }
  Result<MetadataArena> ReserveMetadata(uint64_t bytes) override { return inner_->ReserveMetadata(bytes); }
  void ReleaseMetadata(const MetadataArena& arena) override { inner_->ReleaseMetadata(arena); }
  Tier* inner() const { return inner_.get(); }

 private:
  std::unique_ptr<Tier> inner_;
  std::shared_ptr<FaultPlan> plan_;
};

class FaultyMover final : public Mover {
 public:
  FaultyMover(std::unique_ptr<Mover> inner, std::shared_ptr<FaultPlan> plan);
  ~FaultyMover() override;  // delivers every delayed completion first
  std::string_view name() const override { return inner_->name(); }
  TierKind source() const override { return inner_->source(); }
  TierKind destination() const override { return inner_->destination(); }
  Fence Submit(MoveBatch batch) override;
  MoverStats stats() const override { return inner_->stats(); }

 private:
  struct Delayed {
    std::chrono::steady_clock::time_point due;
    std::shared_ptr<FenceSignal> signal;
    Status status;
    bool operator>(const Delayed& o) const { return due > o.due; }
  };
  void DelayLoop();
  Fence Deliver(Fence inner);

  std::unique_ptr<Mover> inner_;
  std::shared_ptr<FaultPlan> plan_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::priority_queue<Delayed, std::vector<Delayed>, std::greater<>> delayed_;
  size_t pending_ = 0;  // delayed completions not yet delivered
  bool stop_ = false;
  std::thread delayer_;
};

}  // namespace kvtier
