// MemcpyMover: copies between two memory tiers on the CPU (the emulated HBM tier's mover,
// and any host-memory pair). One worker thread takes batches in order; each batch runs as
// one TBB parallel loop over its segments in the mover's own arena. A batch starts only
// once every fence in its wait_for has signaled (without blocking the worker).
//
// Thread-safe.
#pragma once

#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "kvtier/mover.h"
#include "kvtier/tier.h"

namespace kvtier {

struct MemcpyMoverOptions {
  uint32_t threads = 2;  // copy parallelism (TBB arena size)
};

class MemcpyMover final : public Mover {
 public:
  // Borrows `source` and `destination`: both must outlive the mover and be memory tiers.
  static Result<std::unique_ptr<MemcpyMover>> Create(Tier* source, Tier* destination, MemcpyMoverOptions options);
  ~MemcpyMover() override;  // waits for every submitted batch

  std::string_view name() const override { return name_; }
  TierKind source() const override { return src_->kind(); }
  TierKind destination() const override { return dst_->kind(); }
  Fence Submit(MoveBatch batch) override;
  MoverStats stats() const override;

 private:
  struct Job;
  struct Counters;
  MemcpyMover(Tier* source, Tier* destination, MemcpyMoverOptions options);
  void Enqueue(std::shared_ptr<Job> job);
  void WorkerLoop();
  Status Run(const Job& job);

  Tier* src_;
  Tier* dst_;
  MemcpyMoverOptions options_;
  std::string name_;
  std::unique_ptr<Counters> counters_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  size_t outstanding_ = 0;  // submitted, not yet signaled
  bool stop_ = false;
  std::thread worker_;
};

// Checks every segment of `batch` against the slot bounds of `source` and `destination`.
Status ValidateSegments(const MoveBatch& batch, const Tier& source, const Tier& destination);

}  // namespace kvtier
