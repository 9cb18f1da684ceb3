#include "kvtier/fence.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <vector>

namespace kvtier {

struct Fence::State {
  std::mutex mu;
  std::condition_variable cv;
  // Release-stored after `status` is written under `mu`, so a reader that acquires `done`
  // may read `status` without the lock.
  std::atomic<bool> done{false};
  Status status;
  std::vector<std::function<void(const Status&)>> callbacks;
};

Fence Fence::Failed(Status status) {
  auto [fence, signal] = Make();
  signal.Signal(std::move(status));
  return fence;
}

std::pair<Fence, FenceSignal> Fence::Make() {
  auto state = std::make_shared<State>();
  return {Fence(state), FenceSignal(state)};
}

bool Fence::ready() const { return !state_ || state_->done.load(std::memory_order_acquire); }

Status Fence::Wait() const {
  if (!state_) return Status();
  if (!state_->done.load(std::memory_order_acquire)) {
    std::unique_lock lock(state_->mu);
    state_->cv.wait(lock, [&] { return state_->done.load(std::memory_order_relaxed); });
  }
  return state_->status;
}

Status Fence::WaitFor(std::chrono::nanoseconds timeout) const {
  if (!state_) return Status();
  if (!state_->done.load(std::memory_order_acquire)) {
    std::unique_lock lock(state_->mu);
    if (!state_->cv.wait_for(lock, timeout, [&] { return state_->done.load(std::memory_order_relaxed); })) {
      return Status::DeadlineExceeded("fence not signaled within the timeout");
    }
  }
  return state_->status;
}

void Fence::OnReady(std::function<void(const Status&)> fn) const {
  if (state_) {
    std::unique_lock lock(state_->mu);
    if (!state_->done.load(std::memory_order_relaxed)) {
      state_->callbacks.push_back(std::move(fn));
      return;
    }
  }
  fn(state_ ? state_->status : Status());
}

Fence Fence::All(std::span<const Fence> fences) {
  // An error that is already known does not end the wait: the join still signals only once
  // every fence has, because a slot released on it may still be in use by the others.
  Status first_error;
  std::vector<Fence> pending;
  for (const Fence& f : fences) {
    if (!f.ready()) {
      pending.push_back(f);
    } else if (Status s = f.Wait(); !s.ok() && first_error.ok()) {
      first_error = std::move(s);
    }
  }
  if (pending.empty()) return first_error.ok() ? Fence() : Fence::Failed(std::move(first_error));
  if (pending.size() == 1 && first_error.ok()) return pending.front();

  struct Join {
    std::mutex mu;
    Status first_error;
    std::atomic<size_t> remaining;
    FenceSignal signal;
  };
  auto [fence, signal] = Make();
  auto join = std::make_shared<Join>();
  join->first_error = std::move(first_error);
  join->remaining.store(pending.size(), std::memory_order_relaxed);
  join->signal = std::move(signal);
  for (const Fence& f : pending) {
    f.OnReady([join](const Status& s) {
      if (!s.ok()) {
        std::lock_guard lock(join->mu);
        if (join->first_error.ok()) join->first_error = s;
      }
      // acq_rel: the last decrement must see every earlier error write.
      if (join->remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) {
        Status out;
        {
          std::lock_guard lock(join->mu);
          out = join->first_error;
        }
        join->signal.Signal(std::move(out));
      }
    });
  }
  return fence;
}

FenceSignal& FenceSignal::operator=(FenceSignal&& other) noexcept {
  if (this != &other) {
    if (state_) Signal(Status::Cancelled("fence producer replaced before signaling"));
    state_ = std::move(other.state_);
  }
  return *this;
}

FenceSignal::~FenceSignal() {
  if (state_) Signal(Status::Cancelled("fence producer went away before signaling"));
}

void FenceSignal::Signal(Status status) {
  KVT_CHECK_MSG(state_ != nullptr, "FenceSignal signaled twice or after a move");
  std::shared_ptr<Fence::State> state = std::move(state_);
  std::vector<std::function<void(const Status&)>> callbacks;
  {
    std::lock_guard lock(state->mu);
    state->status = std::move(status);
    state->done.store(true, std::memory_order_release);
    callbacks.swap(state->callbacks);
  }
  state->cv.notify_all();
  for (auto& cb : callbacks) cb(state->status);
}

}  // namespace kvtier
