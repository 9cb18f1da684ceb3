// Fence: a one-shot completion carrying a Status. Every asynchronous kvtier call returns
// one; a tier slot is reused only after the fence of its last use signals.
//
// Thread-safe. A default-constructed Fence is already signaled OK and allocates nothing.
// Producers hold the matching FenceSignal (move-only); dropping a FenceSignal without
// signaling signals kCancelled, so a waiter is never stranded.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <span>
#include <utility>

#include "kvtier/status.h"

namespace kvtier {

class FenceSignal;

class Fence {
 public:
  Fence() = default;  // signaled OK
  static Fence Failed(Status status);
  // A pending fence and the signal that completes it.
  static std::pair<Fence, FenceSignal> Make();
  // Signals once every fence in `fences` has; carries the first error among them.
  static Fence All(std::span<const Fence> fences);

  bool ready() const;
  // Blocks until signaled; returns the outcome.
  Status Wait() const;
  // As Wait, but gives up after `timeout` with kDeadlineExceeded (the fence stays pending).
  Status WaitFor(std::chrono::nanoseconds timeout) const;
  // Runs `fn(outcome)` once signaled: right now on this thread if already signaled, else
  // on the thread that signals. `fn` must not block and must not call back into the
  // producer while holding its locks.
  void OnReady(std::function<void(const Status&)> fn) const;

 private:
  struct State;
  friend class FenceSignal;
  explicit Fence(std::shared_ptr<State> s) : state_(std::move(s)) {}
  std::shared_ptr<State> state_;  // null = signaled OK
};

class FenceSignal {
 public:
  FenceSignal() = default;
  FenceSignal(FenceSignal&&) noexcept = default;
  FenceSignal& operator=(FenceSignal&& other) noexcept;
  FenceSignal(const FenceSignal&) = delete;
  FenceSignal& operator=(const FenceSignal&) = delete;
  ~FenceSignal();

  // Completes the fence with `status` and runs its callbacks on this thread. Once only.
  void Signal(Status status);
  bool armed() const { return state_ != nullptr; }

 private:
  friend class Fence;
  explicit FenceSignal(std::shared_ptr<Fence::State> s) : state_(std::move(s)) {}
  std::shared_ptr<Fence::State> state_;
};

}  // namespace kvtier
