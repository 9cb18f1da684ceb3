// Clock: injected time source (steady in production, manual in tests and the planner).
#pragma once

#include <atomic>

#include "kvtier/types.h"

namespace kvtier {

class Clock {  // thread-safe
 public:
  virtual ~Clock() = default;
  virtual Tick Now() const = 0;
};

class SteadyClock final : public Clock {
 public:
  Tick Now() const override;
  static SteadyClock* Instance();  // stateless, so one instance serves everyone
};

// Advances only when told to. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(Tick start = Tick{1}) : now_(start.value()) {}
  Tick Now() const override { return Tick{now_.load(std::memory_order_relaxed)}; }
  void Advance(uint64_t ns) { now_.fetch_add(ns, std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> now_;
};

}  // namespace kvtier
